//! k8sforge: a Kubernetes cluster for GPU training, built the hard way, automated.
//!
//! Data flow (see design.md): profile → inventory → PKI → rendered bundle → nodes.
//!
//! Modules import only from lower layers (README.md "Layout"; checked by `tests/layers.rs`).

pub mod addons;
pub mod airgap;
pub mod artifacts;
pub mod cli;
pub mod cluster_lock;
pub mod commands;
pub mod deployed_certs;
pub mod fsutil;
pub mod inventory;
pub mod kube;
pub mod kubeconfig_merge;
pub mod monitoring;
pub mod netprobe;
pub mod phases;
pub mod pki;
pub mod profile;
pub mod provider;
pub mod remote;
pub mod render;
pub mod rotate;
pub mod ssh_command;
pub mod sshkeys;
pub mod state;
pub mod status;
pub mod training;
pub mod upgrade;
