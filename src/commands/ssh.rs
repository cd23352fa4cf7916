//! `ssh NODE [COMMAND…]`: a shell or a command on a node, with the cluster's key and pinned host
//! keys.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use super::inputs::load_profile;
use crate::cli::ProfileArgs;

pub fn run(home: &Path, args: &ProfileArgs, node: &str, command: &[String]) -> Result<ExitCode> {
    let loaded = load_profile(args)?;
    crate::ssh_command::run(home, &loaded.profile.name, node, command)
}
