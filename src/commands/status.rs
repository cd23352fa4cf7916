//! `status`: each node's reachability, applied phases, unit states, deployed-certificate expiry
//! and apiserver health.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;

use super::inputs::load_profile;
use crate::cli::{OutputFormat, ProfileArgs};
use crate::inventory::Inventory;
use crate::remote::{Executor, ExecutorOptions};
use crate::state::State;
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
    let mut status = crate::status::collect(&root, &inv, &st, progress)?;
    add_certs_and_api(&mut status, &loaded.profile, &inv, &root, &st)?;
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

/// Add each node's deployed-certificate expiry (and problems) and each running apiserver's
/// `/readyz` answer.
fn add_certs_and_api(
    status: &mut crate::status::ClusterStatus,
    profile: &crate::profile::Profile,
    inv: &Inventory,
    cluster_dir: &Path,
    state: &State,
) -> anyhow::Result<()> {
    let read = crate::deployed_certs::reader(profile, inv, cluster_dir, state, 30)?;
    let certs = read(time::OffsetDateTime::now_utc());
    let exec = Executor::new(
        cluster_dir,
        ExecutorOptions {
            progress: false,
            retries: 1,
            connect_timeout: Duration::from_secs(5),
            ..ExecutorOptions::default()
        },
    )?;
    let cmd =
        crate::phases::control_plane::local_kubectl(profile.api_server.port, "get --raw=/readyz");
    for n in status.nodes.iter_mut() {
        if let Some(c) = certs.iter().find(|c| c.node == n.node && c.reachable) {
            n.cert_days_left = c.min_days_left();
            n.cert_problems = c
                .certificates
                .iter()
                .filter(|x| x.status != crate::deployed_certs::DeployedStatus::Ok)
                .map(|x| format!("{} {}", x.path, x.status.as_str()))
                .collect();
        }
        if n.units.get("kube-apiserver.service").map(String::as_str) == Some("active") {
            if let Some(node) = inv.node(&n.node) {
                n.api_ready = Some(
                    exec.connect(node)
                        .and_then(|c| c.exec_status(&cmd, Duration::from_secs(15)))
                        .is_ok_and(|o| o.status == 0 && o.stdout.trim() == "ok"),
                );
            }
        }
    }
    Ok(())
}
