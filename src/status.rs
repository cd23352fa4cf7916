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
];

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
        + "; true";
    let nodes: Vec<_> = inv.nodes.iter().collect();
    let results = exec.run_all(&nodes, &script, Duration::from_secs(20));
    let nodes = results
        .into_iter()
        .map(|o| match o.result {
            Ok(out) => NodeStatus {
                node: o.node,
                reachable: true,
                error: None,
                cert_days_left: None,
                cert_problems: Vec::new(),
                api_ready: None,
                units: out
                    .stdout
                    .lines()
                    .filter_map(|l| l.split_once(' '))
                    .map(|(u, s)| (u.to_string(), s.to_string()))
                    .collect(),
            },
            Err(e) => NodeStatus {
                node: o.node,
                reachable: false,
                error: Some(e.to_string()),
                units: BTreeMap::new(),
                cert_days_left: None,
                cert_problems: Vec::new(),
                api_ready: None,
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

/// Add each node's deployed-certificate expiry (and problems) and each running apiserver's
/// `/readyz` answer.
pub fn add_certs_and_api(
    status: &mut ClusterStatus,
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
        })
    }
}
