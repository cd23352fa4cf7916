//! `profiles list` and `profiles show`.

use std::process::ExitCode;

use anyhow::Result;

use crate::profile::{self, builtin};

pub fn list() -> Result<ExitCode> {
    for name in builtin::names() {
        let desc = profile::load(name, &[])
            .ok()
            .and_then(|p| p.profile.description)
            .unwrap_or_default();
        println!("{name:<10} {desc}");
    }
    Ok(ExitCode::SUCCESS)
}

pub fn show(name: &str, sets: &[String]) -> Result<ExitCode> {
    let loaded = profile::load(name, sets)?;
    print!("{}", loaded.canonical_yaml);
    Ok(ExitCode::SUCCESS)
}
