//! Render: Profile + Inventory + PKI → Bundle, the exact files and commands each node receives.

pub mod bundle;
pub mod routes;

use std::path::Path;

pub use bundle::{Bundle, BundleFile, NodeBundle};

use crate::inventory::Inventory;
use crate::profile::Profile;

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("rendering is not built yet in this version")]
    NotBuilt,
}

/// Render every node's files from the profile, the inventory and the PKI in `cluster_dir`.
pub fn render(
    _profile: &Profile,
    _inventory: &Inventory,
    _cluster_dir: &Path,
) -> Result<Bundle, RenderError> {
    Err(RenderError::NotBuilt)
}
