//! One entry point per provider step for every provider kind: the verbs call these, and only
//! this file picks the provider implementation by `provider.kind`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use crate::profile::{LoadedProfile, ProviderKind};

/// How a provider's teardown ended.
#[derive(Debug)]
pub enum TeardownOutcome {
    /// The provider ran (or dry-ran) its teardown and printed what it removed.
    Finished(ExitCode),
    /// This provider kind has no teardown (nothing was changed).
    NotSupported,
}

/// Remove every resource the cluster owns (`dry_run`: only list them), with the provider the
/// profile names.
pub fn teardown(home: &Path, loaded: &LoadedProfile, dry_run: bool) -> Result<TeardownOutcome> {
    let code = match loaded.profile.provider.kind {
        ProviderKind::Local => super::local::verbs::teardown(home, loaded, dry_run)?,
        ProviderKind::Gcp => super::gcp::cli::teardown(home, loaded, dry_run)?,
        ProviderKind::Aws => super::aws::cli::teardown(home, loaded, dry_run)?,
        // Static hosts are the operator's machines: nothing to delete yet.
        ProviderKind::Static => return Ok(TeardownOutcome::NotSupported),
    };
    Ok(TeardownOutcome::Finished(code))
}
