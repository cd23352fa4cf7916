//! Fixtures shared by k8sforge's integration tests and benches: a test artifact mirror built from
//! Debian packages, OCI image archives, and the layout of user-supplied Kubernetes binaries.
//!
//! A crate of its own (a dev-dependency of `k8sforge`) so that none of it, nor what it runs
//! (`apt-get`, `rustc`), is part of the library or the binary users install. It uses only
//! k8sforge's public API.

pub mod http;
pub mod kube;
pub mod mirror;
pub mod oci;
pub mod registry;
pub mod training;
