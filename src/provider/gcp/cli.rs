//! The synchronous edge for GCP: the provision phase and `teardown [--dry-run]` call in here;
//! this builds the tokio runtime and installs the cluster's SSH key (see `sshkeys`).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use std::collections::BTreeMap;

use ipnet::Ipv4Net;

use super::{GcpConfig, GcpProvider};
use crate::inventory::{self, Inventory};
use crate::profile::LoadedProfile;
use crate::provider::{Provider, ProvisionContext};
use crate::state::ClusterDir;

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// Preflight and provision on GCP; returns the real inventory. The phase runner records it.
pub fn provision(
    loaded: &LoadedProfile,
    cluster_dir: &Path,
    pod_cidrs: &BTreeMap<String, Ipv4Net>,
) -> Result<Inventory> {
    let profile = &loaded.profile;
    let cfg = GcpConfig::from_profile(profile)?;
    let planned = inventory::planned(profile, pod_cidrs)?;
    let ssh_public_key =
        crate::sshkeys::ensure_cluster_key(cluster_dir, &profile.name)?.public_openssh;
    let ctx = ProvisionContext {
        profile,
        planned: &planned,
        cluster_dir: cluster_dir.to_path_buf(),
        ssh_public_key,
    };
    tracing::debug!(
        "GCP project {}, zone {}: {} node(s)",
        cfg.project,
        cfg.zone,
        planned.nodes.len()
    );
    let provider = GcpProvider::new(cfg)?;
    let inv = runtime()?.block_on(async {
        provider
            .preflight(&ctx)
            .await
            .map_err(|e| anyhow::anyhow!("preflight: {e}"))?;
        provider
            .provision(&ctx)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))
    })?;
    let calls = provider.api.call_counts();
    tracing::debug!(
        "{} API calls: {}",
        calls.values().sum::<u64>(),
        calls
            .iter()
            .map(|(k, v)| format!("{}={v}", k.trim_start_matches("compute.")))
            .collect::<Vec<_>>()
            .join(" ")
    );
    Ok(inv)
}

pub fn teardown(home: &Path, loaded: &LoadedProfile, dry_run: bool) -> Result<ExitCode> {
    let profile = &loaded.profile;
    let cfg = GcpConfig::from_profile(profile)?;
    let dir = ClusterDir::open(home, &profile.name)?;
    let planned = inventory::planned(profile, &Default::default())?;
    let ctx = ProvisionContext {
        profile,
        planned: &planned,
        cluster_dir: dir.root.clone(),
        ssh_public_key: String::new(),
    };
    let provider = GcpProvider::new(cfg)?;
    let report = runtime()?
        .block_on(provider.teardown(&ctx, dry_run))
        .map_err(|e| anyhow::anyhow!("{e}"))?;
    let verb = if dry_run { "would delete" } else { "deleted" };
    let mut counts: std::collections::BTreeMap<&str, usize> = Default::default();
    for (kind, name) in &report.deleted {
        *counts.entry(kind.as_str()).or_default() += 1;
        if report.deleted.len() <= 50 || kind != "instance" {
            println!("{verb} {kind} {name}");
        }
    }
    eprintln!(
        "teardown {}: {verb} {} resource(s) ({})",
        profile.name,
        report.deleted.len(),
        counts
            .iter()
            .map(|(k, v)| format!("{v} {k}"))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !dry_run {
        let mut st = dir.load_state()?;
        st.inventory = None;
        st.phases.clear();
        dir.save_state(&st)?;
    }
    Ok(ExitCode::SUCCESS)
}
