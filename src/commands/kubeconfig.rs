//! `kubeconfig`: merge the cluster's admin kubeconfig into ~/.kube/config (or `--out`).
//!
//! With several control planes the recorded endpoint may be down: a static cluster without a load
//! balancer names its first control plane, as kubespray's admin.conf and `k0sctl kubeconfig` do.
//! So the verb asks each control plane (the recorded endpoint first) for `/version` with the
//! admin credentials and writes the first that answers, saying when that is not the recorded one.
//! Nothing answering is a warning, not an error: the file is still written as recorded.

use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;

use super::inputs::load_profile;
use crate::cli::ProfileArgs;
use crate::inventory::Role;
use crate::kube;
use crate::kubeconfig_merge;
use crate::pki::layout;
use crate::state::ClusterDir;

pub fn run(home: &Path, args: &ProfileArgs, out: Option<PathBuf>) -> Result<ExitCode> {
    let loaded = load_profile(args)?;
    let root = ClusterDir::existing(home, &loaded.profile.name)?;
    let admin = layout::kubeconfig_path(&root, layout::ADMIN);
    if !admin.exists() {
        anyhow::bail!(
            "cluster {} has no admin kubeconfig yet ({}): run `k8sforge up` (or `k8sforge plan`) first",
            loaded.profile.name,
            admin.display()
        );
    }
    let server = live_server(&root, &admin, loaded.profile.api_server.port);
    let target = out.unwrap_or_else(kubeconfig_merge::default_target);
    let context = kubeconfig_merge::merge_into_with_server(&admin, &target, server.as_deref())?;
    eprintln!("Set kubectl context to {context:?} in {}", target.display());
    Ok(ExitCode::SUCCESS)
}

/// A live API server when the cluster has several control planes and the recorded endpoint does
/// not answer from here; `None`: keep the recorded one.
fn live_server(root: &Path, admin: &Path, port: u16) -> Option<String> {
    let inv = crate::state::load_state_at(&root.join("state.json"))
        .ok()?
        .inventory?;
    let cps: Vec<&crate::inventory::Node> = inv.with_role(Role::ControlPlane).collect();
    if cps.len() < 2 {
        return None;
    }
    let fallbacks: Vec<String> = cps
        .iter()
        .map(|n| {
            let addr = n.external_ip.unwrap_or(IpAddr::V4(n.internal_ip));
            format!("https://{}", SocketAddr::new(addr, port))
        })
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .ok()?;
    match rt.block_on(kube::connect_with_fallbacks(admin, &fallbacks)) {
        Ok(cluster) => {
            let recorded = recorded_server(admin);
            if recorded.as_deref() == Some(cluster.url.as_str()) {
                return None;
            }
            eprintln!(
                "The recorded API endpoint {} does not answer; using control plane {}",
                recorded.as_deref().unwrap_or("?"),
                cluster.url
            );
            Some(cluster.url)
        }
        Err(e) => {
            eprintln!("warning: no control plane answers from here, the kubeconfig names the recorded endpoint: {e}");
            None
        }
    }
}

/// The first cluster's `server:` of a kubeconfig.
fn recorded_server(kubeconfig: &Path) -> Option<String> {
    let text = std::fs::read_to_string(kubeconfig).ok()?;
    text.lines()
        .find_map(|l| l.trim().strip_prefix("server: "))
        .map(|s| s.trim().trim_end_matches('/').to_string())
}
