//! Exit statuses shared by the verbs.

use std::process::ExitCode;

use anyhow::Result;

/// Exit status for "this verb or phase does not exist yet": distinct from failures.
pub const NOT_IMPLEMENTED: u8 = 3;

/// Say that `what` does not exist yet, change nothing, and exit with [`NOT_IMPLEMENTED`].
pub fn not_implemented(what: &str) -> Result<ExitCode> {
    eprintln!("k8sforge: {what} is not implemented yet in this version; nothing was changed.");
    Ok(ExitCode::from(NOT_IMPLEMENTED))
}
