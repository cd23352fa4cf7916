//! Carrying out the parsed command line: one module per verb. Human progress goes to stderr,
//! machine output to stdout. This file only dispatches.

use std::process::ExitCode;

use anyhow::Result;

use crate::cli::{CertsCommand, Cli, Command, NodeCommand, ProfilesCommand};
use crate::phases::PhaseName;
use crate::state;

mod certs;
mod completion;
mod exit;
mod hidden;
mod inputs;
mod kubeconfig;
mod mirror;
mod node;
mod plan;
mod profiles;
pub mod smoke;
mod ssh;
mod status;
pub mod team;
mod teardown;
mod up;
mod upgrade;

pub use inputs::{inventory_for, load_profile};

pub fn run(cli: Cli) -> Result<ExitCode> {
    let home = cli.home.clone().unwrap_or_else(state::default_home);
    match cli.command {
        Command::Plan {
            profile,
            out,
            output,
        } => plan::run(&home, &profile, out.as_deref(), output),
        Command::Up {
            profile,
            only,
            from,
            mirror,
            force,
            trust_mirror_checksums,
            replace_drifted,
            output,
        } => up::run(
            &home,
            &profile,
            PhaseName::selection(only, from),
            mirror,
            trust_mirror_checksums,
            force,
            replace_drifted,
            output,
        ),
        Command::Mirror {
            profile,
            out,
            from,
            trust_mirror_checksums,
            output,
        } => mirror::run(
            &profile,
            &out,
            from.as_deref(),
            trust_mirror_checksums,
            output,
        ),
        Command::Certs(CertsCommand::Check {
            profile,
            warn_days,
            offline,
            output,
            textfile_dir,
        }) => certs::check(
            &home,
            &profile,
            warn_days,
            offline,
            output,
            textfile_dir.as_deref(),
        ),
        Command::Certs(CertsCommand::Rotate {
            profile,
            only,
            within,
            ca,
            only_ca,
            sa_keys,
            finish,
            dry_run,
            batch,
            output,
        }) => certs::rotate(
            &home,
            &certs::RotateArgs {
                profile: &profile,
                only: &only,
                within: within.as_deref(),
                ca,
                only_ca: &only_ca,
                sa_keys,
                finish,
                dry_run,
                batch,
                output,
            },
        ),
        Command::Node(NodeCommand::Add {
            profile,
            group,
            count,
            mirror,
            trust_mirror_checksums,
            output,
        }) => node::add(
            &home,
            &node::NodeArgs {
                profile: &profile,
                mirror: mirror.as_deref(),
                trust_mirror_checksums,
                output,
            },
            &group,
            count,
        ),
        Command::Node(NodeCommand::Remove {
            profile,
            nodes,
            mirror,
            trust_mirror_checksums,
            output,
        }) => node::remove(
            &home,
            &node::NodeArgs {
                profile: &profile,
                mirror: mirror.as_deref(),
                trust_mirror_checksums,
                output,
            },
            &nodes,
        ),
        Command::Upgrade {
            profile,
            to,
            batch,
            dry_run,
            mirror,
            trust_mirror_checksums,
            output,
        } => upgrade::run(
            &home,
            &upgrade::UpgradeArgs {
                profile: &profile,
                to: &to,
                batch,
                dry_run,
                mirror,
                trust_mirror_checksums,
                output,
            },
        ),
        Command::Teardown { profile, dry_run } => teardown::run(&home, &profile, dry_run),
        Command::Status { profile, output } => status::run(&home, &profile, output),
        Command::Kubeconfig { profile, out } => kubeconfig::run(&home, &profile, out),
        Command::Ssh {
            profile,
            node,
            command,
        } => ssh::run(&home, &profile, &node, &command),
        Command::LocalApiProxy { listen, backends } => hidden::local_api_proxy(listen, backends),
        Command::LocalNodeLauncher { node_dir } => hidden::local_node_launcher(&node_dir),
        Command::Profiles(ProfilesCommand::List) => profiles::list(),
        Command::Profiles(ProfilesCommand::Show { name, sets }) => profiles::show(&name, &sets),
        Command::Team(cmd) => team::team_command(&home, cmd),
        Command::User(cmd) => team::user_command(&home, cmd),
        Command::Smoke(args) => smoke::run(&home, &args),
        Command::Completion { shell } => completion::run(shell),
    }
}
