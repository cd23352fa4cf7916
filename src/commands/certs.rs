//! `certs check` and `certs rotate`.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

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
    textfile_dir: Option<&Path>,
) -> Result<ExitCode> {
    let loaded = load_profile(args)?;
    let root = ClusterDir::existing(home, &loaded.profile.name)?;
    let st = state::load_state_at(&root.join("state.json"))?;
    let inv = inventory_for(&loaded, &st)?;
    if let Some(dir) = textfile_dir {
        // The same inspection as the report below, as metrics (see monitoring::certs_metric).
        let report = pki::check::inspect(
            &loaded.profile,
            &inv,
            &root,
            warn_days,
            time::OffsetDateTime::now_utc(),
        )?;
        let path = dir.join(crate::monitoring::certs_metric::TEXTFILE_NAME);
        crate::fsutil::write_if_changed(
            &path,
            crate::monitoring::certs_metric::textfile(&report).as_bytes(),
            0o644,
        )
        .with_context(|| format!("writing {}", path.display()))?;
    }
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
