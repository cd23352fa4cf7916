//! Fixtures shared by the integration tests and benches.
#![allow(dead_code, unused_imports)]

pub mod placeholder_pki;
pub mod sshd;

pub use placeholder_pki::*;
pub mod aws;
pub mod cloud_nodes;
pub mod etcd_loop;
pub mod kube_checks;
pub mod kubectl;
pub mod local_cluster;
pub mod mirror_source;
pub mod stand_ins;
pub mod static_cluster;
pub mod subnet;
