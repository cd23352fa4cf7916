//! `teardown`: the same provider entry point for every provider kind.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use super::inputs::load_profile;
use crate::cli::ProfileArgs;

pub fn run(home: &Path, args: &ProfileArgs, dry_run: bool) -> Result<ExitCode> {
    crate::provider::facade::teardown(home, &load_profile(args)?, dry_run)
}
