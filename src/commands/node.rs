//! `node add` and `node remove`: change a worker group's size on a running cluster without
//! re-running it. The new group size is recorded in the state file (it wins over the profile's
//! count from then on); the phases the cluster has completed then run on the new nodes only,
//! except `network`, which reaches every node so the peers learn (or forget) the routes.
//!
//! Local provider only in this version: its nodes are addressed by position in the profile, so
//! a node is added at the end of a group whose addresses do not move the others, and removed
//! from the end of its group.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use serde::Serialize;

use super::exit;
use super::inputs::{apply_worker_counts, load_profile};
use crate::cli::{OutputFormat, ProfileArgs};
use crate::inventory::{self, Inventory, Role};
use crate::phases::{PhaseName, PhaseSummary, UpOptions};
use crate::profile::{LoadedProfile, ProviderKind};
use crate::remote::{Executor, ExecutorOptions};
use crate::state::{ClusterDir, State};

/// Flags shared by `node add` and `node remove`.
pub struct NodeArgs<'a> {
    pub profile: &'a ProfileArgs,
    pub mirror: Option<&'a str>,
    pub trust_mirror_checksums: bool,
    pub output: OutputFormat,
}

#[derive(Debug, Serialize)]
#[serde(rename_all = "camelCase")]
struct NodeReport {
    cluster: String,
    group: String,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    added: Vec<String>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    removed: Vec<String>,
    /// Removed nodes that were drained through the API first.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    drained: Vec<String>,
    phases: Vec<PhaseSummary>,
    ok: bool,
    elapsed_secs: f64,
}

/// The cluster as the state directory has it: locked dir, state, provisioned inventory, and
/// the profile with the recorded group sizes applied.
struct Opened {
    loaded: LoadedProfile,
    dir: ClusterDir,
    state: State,
    inventory: Inventory,
}

fn open(home: &Path, args: &NodeArgs, verb: &str) -> Result<Option<Opened>> {
    let mut loaded = load_profile(args.profile)?;
    if loaded.profile.provider.kind != ProviderKind::Local {
        exit::not_implemented(&format!(
            "`{verb}` on the {} provider",
            loaded.profile.provider.kind.as_str()
        ))?;
        return Ok(None);
    }
    let name = loaded.profile.name.clone();
    ClusterDir::existing(home, &name)?;
    let dir = ClusterDir::open(home, &name)?;
    let state = dir.load_state()?;
    if let Some(rec) = crate::rotate::RotationRecord::of(&state)? {
        bail!(rec.refusal(&name, verb, &loaded.cli_arg()));
    }
    if let Some(why) = crate::upgrade::refusal(&state, &loaded, verb)? {
        bail!(why);
    }
    let provisioned = state.phases.contains_key(PhaseName::Provision.as_str());
    let Some(inventory) = state
        .inventory
        .clone()
        .filter(|i| provisioned && !i.planned)
    else {
        bail!("cluster {name} has no provisioned nodes yet: run `k8sforge up` first");
    };
    apply_worker_counts(&mut loaded, &state);
    Ok(Some(Opened {
        loaded,
        dir,
        state,
        inventory,
    }))
}

fn group_names(loaded: &LoadedProfile) -> String {
    loaded
        .profile
        .workers
        .iter()
        .map(|g| g.name.as_str())
        .collect::<Vec<_>>()
        .join(", ")
}

/// The phases the cluster has completed, in order (provision always: it makes the machines).
fn completed_phases(state: &State, but: &[PhaseName]) -> Vec<PhaseName> {
    PhaseName::ALL
        .into_iter()
        .filter(|p| *p == PhaseName::Provision || state.phases.contains_key(p.as_str()))
        .filter(|p| !but.contains(p))
        .collect()
}

fn up_options(args: &NodeArgs, phases: Vec<PhaseName>, limit: BTreeSet<String>) -> UpOptions {
    UpOptions {
        phases,
        mirror: args.mirror.map(str::to_string),
        trust_mirror_checksums: args.trust_mirror_checksums,
        progress: args.output == OutputFormat::Text
            && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        force: false,
        replace_drifted: false,
        limit_nodes: Some(limit),
    }
}

fn finish(report: &NodeReport, output: OutputFormat) -> Result<ExitCode> {
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(report)?),
        OutputFormat::Text => {}
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `node add --group NAME --count N`.
pub fn add(home: &Path, args: &NodeArgs, group: &str, count: u32) -> Result<ExitCode> {
    if count == 0 {
        bail!("--count must be at least 1");
    }
    let Some(Opened {
        mut loaded,
        dir,
        mut state,
        inventory: old,
    }) = open(home, args, "node add")?
    else {
        return Ok(ExitCode::from(exit::NOT_IMPLEMENTED));
    };
    let started = Instant::now();
    let groups = group_names(&loaded);
    let source = loaded.source_name.clone();
    let Some(g) = loaded.profile.workers.iter_mut().find(|g| g.name == group) else {
        bail!("worker group {group:?} is not in profile {source}: its groups are {groups}");
    };
    g.count += count;
    let new_count = g.count;
    let planned = inventory::planned(&loaded.profile, &state.pod_cidrs)?;
    // Existing nodes must keep their addresses (local nodes are numbered in profile order).
    for n in &old.nodes {
        match planned.node(&n.name) {
            Some(p) if p.internal_ip == n.internal_ip => {}
            Some(p) => bail!(
                "adding to group {group} would move node {} from {} to {}: local nodes are addressed in profile order, so only the last worker group ({}) can grow on a running cluster",
                n.name,
                n.internal_ip,
                p.internal_ip,
                loaded.profile.workers.last().map(|g| g.name.as_str()).unwrap_or("-")
            ),
            None => bail!(
                "node {} of cluster {} is not in the plan of profile {source}: run `k8sforge up` to converge first",
                n.name,
                old.cluster
            ),
        }
    }
    if let Some(last) = planned.nodes.last() {
        let subnet = loaded.profile.network.node_cidr;
        if !subnet.contains(&last.internal_ip) || last.internal_ip == subnet.broadcast() {
            bail!(
                "no address left for node {} in network.nodeCIDR {subnet}",
                last.name
            );
        }
    }
    let added: BTreeSet<String> = planned
        .nodes
        .iter()
        .filter(|n| old.node(&n.name).is_none())
        .map(|n| n.name.clone())
        .collect();
    // Recorded first: a failed run is finished by `k8sforge up` (or `node remove`).
    state.worker_counts.insert(group.to_string(), new_count);
    dir.save_state(&state)?;
    let phases = completed_phases(&state, &[]);
    eprintln!(
        "Adding {} to cluster {:?} (group {group}, now {new_count} node(s)); phases {} on the new node(s), routes on every node ...",
        added.iter().cloned().collect::<Vec<_>>().join(", "),
        loaded.profile.name,
        phases
            .iter()
            .map(|p| p.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    );
    let up = crate::phases::run_up(&loaded, &dir, &up_options(args, phases, added.clone()))?;
    let ok = up.ok();
    if !ok {
        eprintln!(
            "k8sforge: node add did not finish; the new group size ({new_count}) is recorded: `k8sforge up --profile {}` completes it, `k8sforge node remove` takes the node(s) out again",
            loaded.cli_arg()
        );
    } else if args.output == OutputFormat::Text {
        eprintln!(
            "{} node(s) added in {:.1} s",
            added.len(),
            started.elapsed().as_secs_f64()
        );
    }
    finish(
        &NodeReport {
            cluster: loaded.profile.name.clone(),
            group: group.to_string(),
            added: added.into_iter().collect(),
            removed: Vec::new(),
            drained: Vec::new(),
            phases: up.phases,
            ok,
            elapsed_secs: started.elapsed().as_secs_f64(),
        },
        args.output,
    )
}

/// `node remove NAME…`.
pub fn remove(home: &Path, args: &NodeArgs, names: &[String]) -> Result<ExitCode> {
    let Some(Opened {
        mut loaded,
        dir,
        mut state,
        inventory: inv,
    }) = open(home, args, "node remove")?
    else {
        return Ok(ExitCode::from(exit::NOT_IMPLEMENTED));
    };
    let started = Instant::now();
    let wanted: BTreeSet<&str> = names.iter().map(String::as_str).collect();
    // Per group, how many go; each must be a worker of the cluster.
    let mut per_group: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for name in &wanted {
        let Some(n) = inv.node(name) else {
            let all: Vec<&str> = inv.nodes.iter().map(|n| n.name.as_str()).collect();
            bail!(
                "node {name} is not in cluster {}: its nodes are {}",
                inv.cluster,
                all.join(", ")
            );
        };
        if n.has(Role::ControlPlane) || n.has(Role::Etcd) {
            bail!("node {name} is a control plane or etcd member: `node remove` removes workers only in this version");
        }
        per_group
            .entry(n.group.clone())
            .or_default()
            .insert(n.name.clone());
    }
    for (group, gone) in &per_group {
        let Some(g) = loaded.profile.workers.iter_mut().find(|g| &g.name == group) else {
            bail!("node group {group} is not a worker group of the profile");
        };
        let keep = g.count.saturating_sub(gone.len() as u32);
        // Local nodes are named and addressed by position: only the last ones can go.
        let last: BTreeSet<String> = (keep + 1..=g.count)
            .map(|i| crate::profile::validate::worker_node_name(group, i))
            .collect();
        if &last != gone {
            bail!(
                "local nodes are named and addressed by their position in the group: remove the last {} node(s) of group {group} ({}), not {}",
                gone.len(),
                last.iter().cloned().collect::<Vec<_>>().join(", "),
                gone.iter().cloned().collect::<Vec<_>>().join(", ")
            );
        }
        g.count = keep;
    }
    let removed: Vec<String> = wanted.iter().map(|s| s.to_string()).collect();
    let exec = Executor::new(
        &dir.root,
        ExecutorOptions {
            progress: false,
            retries: 1,
            connect_timeout: Duration::from_secs(5),
            ..ExecutorOptions::default()
        },
    )?;

    // 1. Drain through the API when the nodes joined (a failed drain stops here, nothing removed).
    let mut drained = Vec::new();
    if state.phases.contains_key(PhaseName::Workers.as_str()) {
        let cp = inv
            .nodes
            .iter()
            .find(|n| n.has(Role::ControlPlane))
            .ok_or_else(|| anyhow::anyhow!("cluster {} has no control plane", inv.cluster))?;
        let conn = exec.connect(cp)?;
        let port = loaded.profile.api_server.port;
        for name in &removed {
            eprintln!("Draining {name} ...");
            let drain = crate::phases::control_plane::local_kubectl(
                port,
                &format!("drain {name} --ignore-daemonsets --delete-emptydir-data --force --timeout=180s"),
            );
            let o = conn.exec_status(&drain, Duration::from_secs(240))?;
            if o.status != 0 && !o.stderr.contains("NotFound") {
                bail!(
                    "draining {name} failed (nothing was removed): {}",
                    o.stderr.trim()
                );
            }
            let del = crate::phases::control_plane::local_kubectl(
                port,
                &format!("delete node {name} --ignore-not-found"),
            );
            let o = conn.exec_status(&del, Duration::from_secs(60))?;
            if o.status != 0 {
                bail!("deleting node object {name} failed: {}", o.stderr.trim());
            }
            drained.push(name.clone());
        }
    }

    // 2. Record the new sizes, then provision (stops and deprovisions the nodes no longer
    //    planned) and network (the others' route units without them).
    for group in per_group.keys() {
        if let Some(g) = loaded.profile.workers.iter().find(|g| &g.name == group) {
            state.worker_counts.insert(group.clone(), g.count);
        }
    }
    for name in &removed {
        let prefix = format!("{name}/");
        state.applied_digests.retain(|k, _| !k.starts_with(&prefix));
        state.bundle_digests.retain(|k, _| !k.starts_with(&prefix));
        for a in state.installed_artifacts.values_mut() {
            a.nodes.remove(name);
        }
    }
    dir.save_state(&state)?;
    let mut phases = vec![PhaseName::Provision];
    if state.phases.contains_key(PhaseName::Network.as_str()) {
        phases.push(PhaseName::Network);
    }
    eprintln!(
        "Removing {} from cluster {:?} ...",
        removed.join(", "),
        loaded.profile.name
    );
    let up = crate::phases::run_up(&loaded, &dir, &up_options(args, phases, BTreeSet::new()))?;
    let mut ok = up.ok();

    // 3. Host routes are only ever replaced by the route unit: delete the removed nodes' pod
    //    routes on every remaining node (VXLAN entries the unit itself already removed).
    if ok && state.phases.contains_key(PhaseName::Network.as_str()) {
        let cidrs: Vec<String> = removed
            .iter()
            .filter_map(|n| inv.node(n))
            .map(|n| n.pod_cidr.to_string())
            .collect();
        let script = cidrs
            .iter()
            .map(|c| format!("ip route del {c} 2>/dev/null || true"))
            .collect::<Vec<_>>()
            .join("; ");
        let remaining: Vec<_> = inv
            .nodes
            .iter()
            .filter(|n| !wanted.contains(n.name.as_str()))
            .collect();
        for r in exec.run_all(&remaining, &script, Duration::from_secs(30)) {
            if let Err(e) = r.result {
                eprintln!(
                    "k8sforge: {}: removing the routes to the removed nodes failed: {e}",
                    r.node
                );
                ok = false;
            }
        }
    }
    if ok && args.output == OutputFormat::Text {
        eprintln!(
            "{} node(s) removed in {:.1} s",
            removed.len(),
            started.elapsed().as_secs_f64()
        );
    }
    finish(
        &NodeReport {
            cluster: loaded.profile.name.clone(),
            group: per_group.keys().cloned().collect::<Vec<_>>().join(","),
            added: Vec::new(),
            removed,
            drained,
            phases: up.phases,
            ok,
            elapsed_secs: started.elapsed().as_secs_f64(),
        },
        args.output,
    )
}
