//! PKI: CAs, the certificate table, issue, check and rotate. Files live in the cluster's state
//! directory (see `layout`).

pub mod layout;

use std::path::Path;

use crate::inventory::Inventory;
use crate::profile::Profile;

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("PKI is not built yet in this version")]
    NotBuilt,
}

/// What `ensure` did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PkiReport {
    /// Certificates (table names) issued by this run; empty on a re-run with valid certs.
    pub issued: Vec<String>,
    /// Valid certificates found and kept.
    pub reused: usize,
    /// Kubeconfigs and other derived files written because their content changed.
    pub written: Vec<String>,
}

/// Make sure every CA, certificate, key, kubeconfig and the encryption config exist under
/// `cluster_dir` and are valid for this profile and inventory; issue only what is missing or wrong.
pub fn ensure(
    _profile: &Profile,
    _inventory: &Inventory,
    _cluster_dir: &Path,
) -> Result<PkiReport, PkiError> {
    Err(PkiError::NotBuilt)
}
