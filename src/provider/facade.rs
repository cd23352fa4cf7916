//! The synchronous edge of every provider: picks the provider by the profile's kind (the only
//! place that looks at it), runs the async trait methods on a runtime of its own, and keeps the
//! state file in step. The provision phase and `teardown` call these two functions and nothing
//! provider-specific.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{anyhow, Context, Result};
use ipnet::Ipv4Net;

use super::{NotImplemented, Provider, ProvisionContext, Provisioned, TeardownReport};
use crate::inventory;
use crate::profile::{LoadedProfile, ProviderKind};
use crate::state::ClusterDir;

/// Exit status for "this verb or phase does not exist yet": distinct from failures.
const NOT_IMPLEMENTED: u8 = 3;

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The provider the profile names.
pub async fn open(
    loaded: &LoadedProfile,
    previous: &BTreeMap<String, Ipv4Net>,
) -> Result<Box<dyn Provider>> {
    let p = &loaded.profile;
    Ok(match p.provider.kind {
        ProviderKind::Local => Box::new(super::local::LocalProvider::from_profile(p)?),
        ProviderKind::Static => Box::new(super::static_hosts::StaticHosts::from_profile(
            loaded,
            previous.clone(),
        )?),
        ProviderKind::Aws => Box::new(super::aws::AwsProvider::from_environment(p).await),
        ProviderKind::Gcp => Box::new(super::gcp::GcpProvider::new(
            super::gcp::GcpConfig::from_profile(p)?,
        )?),
    })
}

/// The cluster's SSH public key: the profile's `ssh.privateKey` (its `.pub` beside it), else the
/// cluster key in the state directory, generated on first use (private key 0600, never printed).
fn cluster_public_key(loaded: &LoadedProfile, cluster_dir: &Path) -> Result<String> {
    match &loaded.profile.ssh.private_key {
        Some(k) => {
            let public = PathBuf::from(format!("{}.pub", loaded.base_dir.join(k).display()));
            Ok(std::fs::read_to_string(&public)
                .with_context(|| {
                    format!(
                        "ssh.privateKey: reading its public key {} (install it beside the private key)",
                        public.display()
                    )
                })?
                .trim()
                .to_string())
        }
        None => Ok(
            crate::sshkeys::ensure_cluster_key(cluster_dir, &loaded.profile.name)?.public_openssh,
        ),
    }
}

/// What the provision phase asks of the provider.
pub struct ProvisionRequest<'a> {
    pub loaded: &'a LoadedProfile,
    pub cluster_dir: &'a Path,
    /// Pod CIDRs handed out so far (state), kept per node.
    pub pod_cidrs: &'a BTreeMap<String, Ipv4Net>,
    pub replace_drifted: bool,
}

/// Preflight (before any key or resource exists), then provision. Returns the real inventory.
pub fn provision(req: &ProvisionRequest<'_>) -> Result<Provisioned> {
    let p = &req.loaded.profile;
    let planned = inventory::planned(p, req.pod_cidrs)?;
    let rt = runtime()?;
    rt.block_on(async {
        let provider = open(req.loaded, req.pod_cidrs).await?;
        let mut ctx =
            ProvisionContext::new(p, &planned, req.cluster_dir.to_path_buf(), String::new());
        ctx.replace_drifted = req.replace_drifted;
        provider
            .preflight(&ctx)
            .await
            .map_err(|e| anyhow!("{} preflight: {e}", provider.name()))?;
        if provider.installs_cluster_key() {
            ctx.ssh_public_key = cluster_public_key(req.loaded, req.cluster_dir)?;
        }
        provider.provision(&ctx).await.map_err(|e| anyhow!("{e}"))
    })
}

/// `teardown [--dry-run]`: every provider through the same path; the state forgets the machines
/// (and every phase record) only after a real teardown succeeded.
pub fn teardown(home: &Path, loaded: &LoadedProfile, dry_run: bool) -> Result<ExitCode> {
    let p = &loaded.profile;
    let rt = runtime()?;
    // The provider first: a provider that cannot tear down (or a local one without root) says
    // so before the state directory is touched.
    let provider = rt.block_on(open(loaded, &BTreeMap::new()))?;
    let dir = ClusterDir::open(home, &p.name)?;
    let mut st = dir.load_state()?;
    let planned = inventory::planned(p, &st.pod_cidrs)?;
    let ctx = ProvisionContext::new(p, &planned, dir.root.clone(), String::new());
    let report = match rt.block_on(provider.teardown(&ctx, dry_run)) {
        Ok(r) => r,
        Err(e) => {
            if let Some(ni) = e.downcast_ref::<NotImplemented>() {
                eprintln!(
                    "k8sforge: {} is not implemented yet in this version; nothing was changed.",
                    ni.0
                );
                return Ok(ExitCode::from(NOT_IMPLEMENTED));
            }
            return Err(anyhow!("{e}")).with_context(|| format!("teardown of cluster {}", p.name));
        }
    };
    if !dry_run {
        st.inventory = None;
        st.phases.clear();
        // Nothing of the cluster is on any machine now: the next `up` installs everything.
        st.applied_digests.clear();
        st.installed_artifacts.clear();
        dir.save_state(&st)?;
    }
    print_teardown(&p.name, provider.name(), &report);
    Ok(ExitCode::SUCCESS)
}

/// One line per resource on stdout (machines and processes by count when there are many), and
/// a summary on stderr.
fn print_teardown(cluster: &str, provider: &str, report: &TeardownReport) {
    let verb = if report.dry_run {
        "would delete"
    } else {
        "deleted"
    };
    let mut counts: BTreeMap<&str, usize> = BTreeMap::new();
    for (kind, _) in &report.deleted {
        *counts.entry(kind.as_str()).or_default() += 1;
    }
    // Host-side plumbing of local nodes, and instances of large clusters, by count only.
    let by_count = |kind: &str| {
        matches!(kind, "process" | "mount" | "cgroup")
            || counts.get(kind).copied().unwrap_or(0) > 50
    };
    for (kind, id) in &report.deleted {
        if !by_count(kind) {
            println!("{verb} {kind} {id}");
        }
    }
    let summary = counts
        .iter()
        .map(|(k, v)| format!("{v} {k}"))
        .collect::<Vec<_>>()
        .join(", ");
    if report.dry_run {
        eprintln!(
            "teardown {cluster} ({provider}, dry run): would delete {} resource(s) ({summary})",
            report.deleted.len()
        );
    } else {
        eprintln!(
            "✓ teardown {cluster} ({provider}): deleted {} resource(s) ({summary}); nothing tagged for the cluster is left",
            report.deleted.len()
        );
    }
}
