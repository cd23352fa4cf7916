//! `k8sforge status`: per node, whether it answers over SSH and the state of every unit its
//! bundle starts; plus which phases completed, from the state file. Reads only.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde::Serialize;

use crate::inventory::Inventory;
use crate::remote::{Executor, ExecutorOptions};
use crate::state::State;

/// The units k8sforge may start on a node, in start order.
pub const UNITS: &[&str] = &[
    "etcd.service",
    "kube-apiserver.service",
    "kube-controller-manager.service",
    "kube-scheduler.service",
    "containerd.service",
    "kubelet.service",
    "kube-proxy.service",
    "k8sforge-pod-routes.service",
    crate::render::gpu::GPU_UNIT,
];

/// Prefix of the status line carrying the GPU health file.
const GPU_HEALTH: &str = "gpu-health";

#[derive(Debug, Clone, Serialize)]
pub struct NodeStatus {
    pub node: String,
    pub reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// unit → `systemctl is-active` answer, for units installed on the node.
    pub units: BTreeMap<String, String>,
    /// Days until the first certificate deployed on the node expires.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cert_days_left: Option<i64>,
    /// Deployed certificates that are not ok (expiring, expired, missing, drift), `path status`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub cert_problems: Vec<String>,
    /// `/readyz` of the apiserver on this node (control planes with a running apiserver).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_ready: Option<bool>,
    /// GPU nodes: the last GPU preflight's result (`passed`, `failed: …`), or `unverified`
    /// before the addons phase ran it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub gpu_health: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterStatus {
    pub cluster: String,
    /// Completed phases and when (unix seconds).
    pub phases: BTreeMap<String, String>,
    pub nodes: Vec<NodeStatus>,
}

/// Ask every node (bounded fan-out) for its units' states.
pub fn collect(
    cluster_dir: &Path,
    inv: &Inventory,
    state: &State,
    progress: bool,
) -> Result<ClusterStatus, crate::remote::RemoteError> {
    let exec = Executor::new(
        cluster_dir,
        ExecutorOptions {
            progress,
            retries: 1,
            connect_timeout: Duration::from_secs(5),
            // Read-only: never writes known_hosts; an unpinned host is reported, not trusted.
            pin_unknown_hosts: false,
            ..ExecutorOptions::default()
        },
    )?;
    // Only units whose file exists are reported, so a worker does not list etcd as missing.
    let script = UNITS
        .iter()
        .map(|u| {
            format!("[ -e /etc/systemd/system/{u} ] && echo \"{u} $(systemctl is-active {u})\"")
        })
        .collect::<Vec<_>>()
        .join("; ")
        + &format!(
            "; [ -e {f} ] && echo \"{GPU_HEALTH} $(head -n1 {f})\"; true",
            f = crate::render::gpu::HEALTH_FILE
        );
    let nodes: Vec<_> = inv.nodes.iter().collect();
    let results = exec.run_all(&nodes, &script, Duration::from_secs(20));
    let nodes = results
        .into_iter()
        .zip(&nodes)
        .map(|(o, n)| match o.result {
            Ok(out) => {
                let mut units: BTreeMap<String, String> = out
                    .stdout
                    .lines()
                    .filter_map(|l| l.split_once(' '))
                    .map(|(u, s)| (u.to_string(), s.to_string()))
                    .collect();
                let health = units.remove(GPU_HEALTH);
                NodeStatus {
                    node: o.node,
                    reachable: true,
                    error: None,
                    units,
                    cert_days_left: None,
                    cert_problems: Vec::new(),
                    api_ready: None,
                    gpu_health: (n.gpus > 0)
                        .then(|| health.unwrap_or_else(|| "unverified".to_string())),
                }
            }
            Err(e) => NodeStatus {
                node: o.node,
                reachable: false,
                error: Some(e.to_string()),
                units: BTreeMap::new(),
                cert_days_left: None,
                cert_problems: Vec::new(),
                api_ready: None,
                gpu_health: None,
            },
        })
        .collect();
    Ok(ClusterStatus {
        cluster: inv.cluster.clone(),
        phases: state
            .phases
            .iter()
            .map(|(k, v)| (k.clone(), v.completed_at.clone()))
            .collect(),
        nodes,
    })
}

/// Human table: one line per node.
pub fn print_table(s: &ClusterStatus) {
    let phases: Vec<&str> = s.phases.keys().map(String::as_str).collect();
    println!(
        "cluster {}: phases completed: {}",
        s.cluster,
        if phases.is_empty() {
            "none".into()
        } else {
            phases.join(", ")
        }
    );
    println!(
        "{:<24} {:<10} {:<10} {:<8} UNITS",
        "NODE", "SSH", "CERTS", "API"
    );
    for n in &s.nodes {
        let certs = match (n.cert_days_left, n.cert_problems.len()) {
            (Some(d), 0) => format!("{d}d"),
            (Some(d), p) => format!("{d}d,{p}!"),
            (None, _) => "-".into(),
        };
        let api = match n.api_ready {
            Some(true) => "ready",
            Some(false) => "NOT-READY",
            None => "-",
        };
        let units = if n.reachable {
            n.units
                .iter()
                .map(|(u, st)| format!("{}={st}", u.trim_end_matches(".service")))
                .collect::<Vec<_>>()
                .join(" ")
        } else {
            n.error.clone().unwrap_or_default()
        };
        let units = match &n.gpu_health {
            Some(h) => format!("{units} gpu={h}"),
            None => units,
        };
        println!(
            "{:<24} {:<10} {certs:<10} {api:<8} {units}",
            n.node,
            if n.reachable { "ok" } else { "DOWN" }
        );
        for p in &n.cert_problems {
            println!("{:<24}   certificate {p}", "");
        }
    }
}

impl ClusterStatus {
    /// Healthy: every node answers and every installed unit is active.
    pub fn healthy(&self) -> bool {
        self.nodes.iter().all(|n| {
            n.reachable
                && n.units.values().all(|s| s == "active")
                && n.api_ready != Some(false)
                && n.cert_problems.is_empty()
                && n.gpu_health.as_deref().is_none_or(|h| h == "passed")
        })
    }
}
