//! `completion SHELL`: the shell completion script, generated from the command definitions.

use std::process::ExitCode;

use anyhow::Result;
use clap::CommandFactory;

use crate::cli::Cli;

pub fn run(shell: clap_complete::Shell) -> Result<ExitCode> {
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "k8sforge", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}
