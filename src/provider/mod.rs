//! Where machines come from. Every provider turns a profile into an `Inventory` (provision) and
//! removes exactly what it created (teardown). Cloud providers find their resources by the tag
//! `k8sforge.io/cluster=<name>` (GCP label `k8sforge-io-cluster`), never by name alone.

use std::path::PathBuf;

use crate::inventory::Inventory;
use crate::profile::Profile;

pub mod aws;
mod by_kind;
pub mod gcp;
pub mod local;
pub mod static_hosts;

pub use by_kind::{teardown, TeardownOutcome};

/// Tag key on every cloud resource k8sforge creates.
pub const CLUSTER_TAG: &str = "k8sforge.io/cluster";
/// GCP label keys allow no dots or slashes.
pub const CLUSTER_LABEL_GCP: &str = "k8sforge-io-cluster";

pub type ProviderError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a provider needs to know besides the profile.
pub struct ProvisionContext<'a> {
    pub profile: &'a Profile,
    /// The nodes the profile asks for, with names, roles and pod CIDRs already decided.
    pub planned: &'a Inventory,
    /// `$K8SFORGE_HOME/<cluster>`.
    pub cluster_dir: PathBuf,
    /// The cluster's SSH public key (OpenSSH format) to install on machines.
    pub ssh_public_key: String,
}

/// What teardown removed (or, with dry-run, would remove): `(resource type, id)`.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TeardownReport {
    pub deleted: Vec<(String, String)>,
    pub dry_run: bool,
}

#[allow(async_fn_in_trait)]
pub trait Provider {
    fn name(&self) -> &'static str;
    /// Checks that must pass before anything is created (quotas, offerings, permissions).
    async fn preflight(&self, ctx: &ProvisionContext<'_>) -> Result<(), ProviderError>;
    /// Create what is missing, adopt what exists; returns the real inventory.
    async fn provision(&self, ctx: &ProvisionContext<'_>) -> Result<Inventory, ProviderError>;
    async fn teardown(
        &self,
        ctx: &ProvisionContext<'_>,
        dry_run: bool,
    ) -> Result<TeardownReport, ProviderError>;
}
