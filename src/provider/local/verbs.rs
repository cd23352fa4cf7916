//! CLI glue for the local provider: `up --only provision` and `teardown`. Kept here so
//! `commands.rs` only dispatches.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use std::collections::BTreeMap;

use ipnet::Ipv4Net;

use super::{block_on, LocalProvider, ProvisionReport};
use crate::inventory::{self, Inventory};
use crate::profile::LoadedProfile;
use crate::provider::{Provider, ProvisionContext};
use crate::sshkeys;
use crate::state::ClusterDir;

/// The `provision` phase for the local provider: generate the cluster key if missing, boot
/// what is missing, keep what runs. Returns the real inventory and a one-line detail.
pub fn provision_phase(
    loaded: &LoadedProfile,
    cluster_dir: &Path,
    pod_cidrs: &BTreeMap<String, Ipv4Net>,
) -> Result<(Inventory, ProvisionReport)> {
    let p = &loaded.profile;
    let provider = LocalProvider::from_profile(p)?;
    // Refuse early (before generating keys) when not root or tools are missing.
    provider.check("up")?;
    let key = sshkeys::ensure_cluster_key(cluster_dir, &p.name)?;
    let planned = inventory::planned(p, pod_cidrs)?;
    let ctx = ProvisionContext {
        profile: p,
        planned: &planned,
        cluster_dir: cluster_dir.to_path_buf(),
        ssh_public_key: key.public_openssh.clone(),
    };
    Ok(provider.provision_nodes(&ctx)?)
}

impl ProvisionReport {
    /// "3 nodes: 1 booted, 2 kept, 1 replaced (worker-1), 0 removed".
    pub fn detail(&self, nodes: usize) -> String {
        let list = |v: &[String]| {
            if v.is_empty() || v.len() > 5 {
                String::new()
            } else {
                format!(" ({})", v.join(", "))
            }
        };
        format!(
            "{nodes} local nodes: {} booted, {} kept, {} replaced{}, {} removed{}{}",
            self.booted.len(),
            self.kept.len(),
            self.replaced.len(),
            list(&self.replaced),
            self.removed.len(),
            list(&self.removed),
            if self.image_built {
                "; node image built"
            } else {
                ""
            }
        )
    }
}

/// Remove every local node of the cluster and what surrounds it.
pub fn teardown(home: &Path, loaded: &LoadedProfile, dry_run: bool) -> Result<ExitCode> {
    let p = &loaded.profile;
    let provider = LocalProvider::from_profile(p)?;
    provider.check_root("teardown")?;
    let dir = ClusterDir::open(home, &p.name)?;
    let mut st = dir.load_state()?;
    let planned = inventory::planned(p, &st.pod_cidrs)?;
    let ctx = ProvisionContext {
        profile: p,
        planned: &planned,
        cluster_dir: dir.root.clone(),
        ssh_public_key: String::new(),
    };
    let report = block_on(provider.teardown(&ctx, dry_run))
        .map_err(|e| anyhow::anyhow!(e))
        .with_context(|| format!("teardown of cluster {}", p.name))?;
    if !dry_run {
        st.inventory = None;
        st.phases.clear();
        dir.save_state(&st)?;
    }
    let verb = if dry_run { "would remove" } else { "removed" };
    // Nodes and network by name; processes, mounts and cgroup directories by count.
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (kind, id) in &report.deleted {
        match kind.as_str() {
            "process" | "mount" | "cgroup" => *counts.entry(kind.as_str()).or_default() += 1,
            _ => eprintln!("  {verb} {kind} {id}"),
        }
    }
    for (kind, n) in counts {
        eprintln!("  {verb} {n} {kind}(s)");
    }
    if dry_run {
        eprintln!(
            "teardown {} (dry run): would remove {} resource(s)",
            p.name,
            report.deleted.len()
        );
    } else {
        eprintln!(
            "✓ teardown {}: removed {} resource(s); no node, namespace, mount, cgroup or bridge of it is left",
            p.name,
            report.deleted.len()
        );
    }
    Ok(ExitCode::SUCCESS)
}
