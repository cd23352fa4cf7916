//! Where machines come from. Every provider turns a profile into an `Inventory` (provision) and
//! removes exactly what it created (teardown). Cloud providers find their resources by the tag
//! `k8sforge.io/cluster=<name>` (GCP label `k8sforge-io-cluster`), never by name alone.
//!
//! One trait, [`Provider`], for every kind (local, static, aws, gcp); the verbs and the provision
//! phase reach it only through [`facade`], which picks the provider by the profile's kind and
//! runs its (async) methods to completion.

use std::future::Future;
use std::path::PathBuf;
use std::pin::Pin;

use crate::inventory::Inventory;
use crate::profile::Profile;

pub mod aws;
pub mod drift;
pub mod facade;
pub mod gcp;
pub mod host_keys;
pub mod local;
pub mod static_hosts;
pub mod static_teardown;

/// Tag key on every cloud resource k8sforge creates.
pub const CLUSTER_TAG: &str = "k8sforge.io/cluster";
/// GCP label keys allow no dots or slashes.
pub const CLUSTER_LABEL_GCP: &str = "k8sforge-io-cluster";

pub type ProviderError = Box<dyn std::error::Error + Send + Sync + 'static>;

/// What a provider method returns: a future borrowing the provider and the context, boxed so
/// that the trait stays object-safe (`Box<dyn Provider>`) while cloud providers stay async.
pub type ProviderFuture<'a, T> = Pin<Box<dyn Future<Output = Result<T, ProviderError>> + 'a>>;

/// What a provider needs to know besides the profile.
pub struct ProvisionContext<'a> {
    pub profile: &'a Profile,
    /// The nodes the profile asks for, with names, roles and pod CIDRs already decided.
    pub planned: &'a Inventory,
    /// `$K8SFORGE_HOME/<cluster>`.
    pub cluster_dir: PathBuf,
    /// The cluster's SSH public key (OpenSSH format) to install on machines.
    pub ssh_public_key: String,
    /// Replace adopted machines that differ from the profile (instance type, image, disk)
    /// instead of refusing (`up --replace-drifted`). Never implied.
    pub replace_drifted: bool,
}

impl<'a> ProvisionContext<'a> {
    pub fn new(
        profile: &'a Profile,
        planned: &'a Inventory,
        cluster_dir: PathBuf,
        ssh_public_key: String,
    ) -> ProvisionContext<'a> {
        ProvisionContext {
            profile,
            planned,
            cluster_dir,
            ssh_public_key,
            replace_drifted: false,
        }
    }
}

/// What one provision did.
#[derive(Debug, Clone)]
pub struct Provisioned {
    /// The real machines: addresses, SSH endpoints, pod CIDRs, API endpoint.
    pub inventory: Inventory,
    /// One line for the phase summary, e.g. "3 nodes, 0 resources created".
    pub detail: String,
    /// `(resource type, id)` of everything this run created (empty on a converged re-run).
    pub created: Vec<(String, String)>,
    /// `(resource type, id)` of everything this run replaced because it drifted from the profile.
    pub replaced: Vec<(String, String)>,
}

impl Provisioned {
    /// The summary line cloud providers share: nodes, what was created and replaced, the API.
    pub fn cloud(
        inventory: Inventory,
        created: Vec<(String, String)>,
        replaced: Vec<(String, String)>,
    ) -> Provisioned {
        let mut detail = format!(
            "{} nodes, {} resources created",
            inventory.nodes.len(),
            created.len()
        );
        if !replaced.is_empty() {
            detail.push_str(&format!(", {} replaced (drifted)", replaced.len()));
        }
        detail.push_str(&format!("; API {}", inventory.api.url()));
        Provisioned {
            inventory,
            detail,
            created,
            replaced,
        }
    }
}

/// What teardown removed (or, with dry-run, would remove): `(resource type, id)`.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct TeardownReport {
    pub deleted: Vec<(String, String)>,
    pub dry_run: bool,
}

/// A provider operation this version does not have (exit status 3, nothing changed).
#[derive(Debug, thiserror::Error)]
#[error("{0} is not implemented yet in this version")]
pub struct NotImplemented(pub String);

/// Where machines come from: the one interface every provider kind implements.
pub trait Provider {
    fn name(&self) -> &'static str;
    /// Whether machines get the cluster's SSH key (generated on first provision); false where
    /// the hosts file names each machine's own key.
    fn installs_cluster_key(&self) -> bool {
        true
    }
    /// Checks that must pass before anything is created, the cluster key included (root and
    /// tools, credentials, quotas, offerings). Callers run it before `provision`.
    fn preflight<'a>(&'a self, ctx: &'a ProvisionContext<'a>) -> ProviderFuture<'a, ()>;
    /// Create what is missing and adopt what exists (comparing it with the
    /// profile: drift is refused unless `ctx.replace_drifted`); returns the real inventory.
    fn provision<'a>(&'a self, ctx: &'a ProvisionContext<'a>) -> ProviderFuture<'a, Provisioned>;
    /// Remove everything the cluster owns and nothing else; with `dry_run`, only list it.
    fn teardown<'a>(
        &'a self,
        ctx: &'a ProvisionContext<'a>,
        dry_run: bool,
    ) -> ProviderFuture<'a, TeardownReport>;
}
