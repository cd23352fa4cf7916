//! Kubernetes API client for the add-ons: manifests → typed validation → server-side apply (field
//! manager `k8sforge`) in dependency order → wait for rollout, with errors that name the file,
//! the object and the reason.

pub mod apply;
pub mod client;
pub mod crd_schema;
pub mod crds;
pub mod gpu;
pub mod manifest;
pub mod ready;

use std::path::PathBuf;

pub use apply::{apply, Applied, ApplyReport, Change};
pub use client::{connect, connect_with_fallbacks, Cluster};
pub use manifest::{
    parse, parse_with, validate_all, validate_all_with, KindSpec, Object, ObjectRef,
};
pub use ready::wait_ready;

/// Field manager of every object k8sforge applies.
pub const FIELD_MANAGER: &str = "k8sforge";

#[derive(Debug, thiserror::Error)]
pub enum KubeError {
    #[error(
        "kubeconfig {path} does not exist: run `k8sforge up --only pki` (or `k8sforge plan`) first"
    )]
    NoKubeconfig { path: PathBuf },
    #[error("kubeconfig {path}: {message}")]
    Kubeconfig { path: PathBuf, message: String },
    #[error(
        "cannot reach the API at {url} with {path}: {message}; is the API reachable at {url}?"
    )]
    Unreachable {
        url: String,
        path: PathBuf,
        message: String,
    },
    #[error("{source_name}: {message}")]
    Manifest {
        source_name: String,
        message: String,
    },
    #[error("applying {object}: {message}")]
    Apply { object: ObjectRef, message: String },
    #[error("not ready after {waited_secs} s:\n  {}", not_ready.join("\n  "))]
    NotReady {
        waited_secs: u64,
        /// One line per object that is not ready, with the reason as far as the API says.
        not_ready: Vec<String>,
    },
    #[error("GPU nodes do not advertise their GPUs after {waited_secs} s:\n  {}", nodes.join("\n  "))]
    GpuShortfall {
        waited_secs: u64,
        /// One line per GPU node: its name, what it advertises, what its profile expects.
        nodes: Vec<String>,
    },
    #[error("the cluster lacks what this needs:\n  {}", .0.join("\n  "))]
    Missing(Vec<String>),
    #[error("reading {what}: {message}")]
    Read { what: String, message: String },
}
