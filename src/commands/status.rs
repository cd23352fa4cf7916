//! `status`: each node's reachability, applied phases and unit states.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use super::inputs::load_profile;
use crate::cli::{OutputFormat, ProfileArgs};
use crate::state::{self, ClusterDir};

pub fn run(home: &Path, args: &ProfileArgs, output: OutputFormat) -> Result<ExitCode> {
    let loaded = load_profile(args)?;
    let root = ClusterDir::existing(home, &loaded.profile.name)?;
    let st = state::load_state_at(&root.join("state.json"))?;
    let Some(inv) = st.inventory.clone().filter(|i| !i.planned) else {
        anyhow::bail!(
            "cluster {} has no provisioned nodes yet: run `k8sforge up` first",
            loaded.profile.name
        );
    };
    let progress =
        output == OutputFormat::Text && std::io::IsTerminal::is_terminal(&std::io::stderr());
    let status = crate::status::collect(&root, &inv, &st, progress)?;
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&status)?),
        OutputFormat::Text => crate::status::print_table(&status),
    }
    Ok(if status.healthy() {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
