//! `certs check` and `certs rotate`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use super::exit::not_implemented;
use super::inputs::{inventory_for, load_profile};
use crate::cli::{OutputFormat, ProfileArgs};
use crate::pki;
use crate::state::{self, ClusterDir};

/// `certs check`: reads the cluster's PKI without creating or locking anything.
pub fn check(
    home: &Path,
    args: &ProfileArgs,
    warn_days: u32,
    output: OutputFormat,
) -> Result<ExitCode> {
    let loaded = load_profile(args)?;
    let root = ClusterDir::existing(home, &loaded.profile.name)?;
    let st = state::load_state_at(&root.join("state.json"))?;
    let inv = inventory_for(&loaded, &st)?;
    Ok(pki::check::run(
        &loaded.profile,
        &inv,
        &root,
        warn_days,
        output == OutputFormat::Json,
    )?)
}

/// `certs rotate`: not built yet.
pub fn rotate() -> Result<ExitCode> {
    not_implemented("`certs rotate`")
}
