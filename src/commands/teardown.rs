//! `teardown`: the same provider entry point for every provider kind.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use super::exit::not_implemented;
use super::inputs::load_profile;
use crate::cli::ProfileArgs;
use crate::provider::{self, TeardownOutcome};

pub fn run(home: &Path, args: &ProfileArgs, dry_run: bool) -> Result<ExitCode> {
    let loaded = load_profile(args)?;
    match provider::teardown(home, &loaded, dry_run)? {
        TeardownOutcome::Finished(code) => Ok(code),
        TeardownOutcome::NotSupported => not_implemented(&format!(
            "`teardown` for the {} provider",
            loaded.profile.provider.kind.as_str()
        )),
    }
}
