//! The rollout plan of a rotation: from the files that differ between the bundle rendered with
//! the old certificates and the one rendered with the new, which units on which nodes must
//! restart, grouped into stages in the order that keeps the cluster serving:
//!
//! 1. etcd members, one at a time (quorum holds; health of every member checked after each);
//! 2. apiservers, one at a time (the API endpoint sends new connections to the others; /readyz
//!    on the restarted one before the next);
//! 3. controller-manager and scheduler, one control plane at a time (leader election hands over);
//! 4. kubelet and kube-proxy, in batches (pods keep running across a kubelet restart).
//!
//! A file goes out with the first stage on its node that restarts one of its units; a later
//! stage on the same node restarts its units even though its files were pushed earlier (the
//! plan knows they changed). Files that restart nothing (the admin kubeconfig, the etcd health
//! client) go with the node's first stage, or a files-only stage at the end.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::inventory::{Inventory, Role};
use crate::render::Bundle;

pub const ETCD: &str = "etcd.service";
pub const APISERVER: &str = "kube-apiserver.service";
pub const CONTROLLER_MANAGER: &str = "kube-controller-manager.service";
pub const SCHEDULER: &str = "kube-scheduler.service";
pub const KUBELET: &str = "kubelet.service";
pub const KUBE_PROXY: &str = "kube-proxy.service";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StageKind {
    Etcd,
    ApiServer,
    ControllerManagerScheduler,
    NodeAgents,
    /// Files that restart nothing, on nodes no other stage visits.
    FilesOnly,
}

impl StageKind {
    /// How the stage is verified, for the plan and the messages.
    pub fn check(self) -> &'static str {
        match self {
            StageKind::Etcd => "every etcd member healthy over TLS",
            StageKind::ApiServer => "/readyz ok on the restarted apiserver",
            StageKind::ControllerManagerScheduler => "units active and not restarting",
            StageKind::NodeAgents => "units active and not restarting, kubelet /healthz ok",
            StageKind::FilesOnly => "files in place",
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            StageKind::Etcd => "etcd",
            StageKind::ApiServer => "kube-apiserver",
            StageKind::ControllerManagerScheduler => "controller-manager/scheduler",
            StageKind::NodeAgents => "kubelet/kube-proxy",
            StageKind::FilesOnly => "files",
        }
    }
}

/// One node's part of a stage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StageNode {
    pub node: String,
    /// Units to restart, in order.
    pub units: Vec<String>,
    /// Files to push first (paths on the node).
    pub files: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Stage {
    pub kind: StageKind,
    pub nodes: Vec<StageNode>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutPlan {
    pub stages: Vec<Stage>,
}

impl RolloutPlan {
    pub fn files(&self) -> usize {
        self.stages
            .iter()
            .flat_map(|s| &s.nodes)
            .map(|n| n.files.len())
            .sum()
    }

    pub fn restarts(&self) -> usize {
        self.stages
            .iter()
            .flat_map(|s| &s.nodes)
            .map(|n| n.units.len())
            .sum()
    }
}

/// `(path, units it restarts)` of every file that differs between `old` and `new` on each node
/// (added files count; removed ones do not happen in a rotation).
pub fn changed_files(old: &Bundle, new: &Bundle) -> BTreeMap<String, Vec<(String, Vec<String>)>> {
    let mut out = BTreeMap::new();
    for (node, nb) in &new.nodes {
        let before: BTreeMap<&str, &[u8]> = old
            .nodes
            .get(node)
            .map(|o| {
                o.files
                    .iter()
                    .map(|f| (f.path.as_str(), f.content.as_slice()))
                    .collect()
            })
            .unwrap_or_default();
        let changed: Vec<(String, Vec<String>)> = nb
            .files
            .iter()
            .filter(|f| before.get(f.path.as_str()) != Some(&f.content.as_slice()))
            .map(|f| (f.path.clone(), f.restarts.clone()))
            .collect();
        if !changed.is_empty() {
            out.insert(node.clone(), changed);
        }
    }
    out
}

/// Order the restarts that `changed` (from `changed_files`) calls for into stages; node agents
/// go `batch` nodes at a time.
pub fn build(
    inventory: &Inventory,
    changed: &BTreeMap<String, Vec<(String, Vec<String>)>>,
    batch: usize,
) -> RolloutPlan {
    let dirty = |node: &str| -> BTreeSet<&str> {
        changed
            .get(node)
            .map(|files| {
                files
                    .iter()
                    .flat_map(|(_, r)| r.iter().map(String::as_str))
                    .collect()
            })
            .unwrap_or_default()
    };
    // (kind, node, units) in rollout order; single-node stages except node agents.
    let mut steps: Vec<(StageKind, String, Vec<String>)> = Vec::new();
    let with = |role: Role| inventory.nodes.iter().filter(move |n| n.has(role));
    for n in with(Role::Etcd) {
        if dirty(&n.name).contains(ETCD) {
            steps.push((StageKind::Etcd, n.name.clone(), vec![ETCD.into()]));
        }
    }
    for n in with(Role::ControlPlane) {
        if dirty(&n.name).contains(APISERVER) {
            steps.push((StageKind::ApiServer, n.name.clone(), vec![APISERVER.into()]));
        }
    }
    for n in with(Role::ControlPlane) {
        let d = dirty(&n.name);
        let units: Vec<String> = [CONTROLLER_MANAGER, SCHEDULER]
            .into_iter()
            .filter(|u| d.contains(u))
            .map(String::from)
            .collect();
        if !units.is_empty() {
            steps.push((StageKind::ControllerManagerScheduler, n.name.clone(), units));
        }
    }
    for n in &inventory.nodes {
        let d = dirty(&n.name);
        let units: Vec<String> = [KUBELET, KUBE_PROXY]
            .into_iter()
            .filter(|u| d.contains(u))
            .map(String::from)
            .collect();
        if !units.is_empty() {
            steps.push((StageKind::NodeAgents, n.name.clone(), units));
        }
    }
    // Hand each changed file to the first step on its node that restarts one of its units;
    // files nobody restarts go with the node's first step.
    let mut assigned: BTreeSet<(String, String)> = BTreeSet::new();
    let mut files_of: Vec<Vec<String>> = vec![Vec::new(); steps.len()];
    for (i, (_, node, units)) in steps.iter().enumerate() {
        let first_on_node = steps.iter().position(|(_, n, _)| n == node) == Some(i);
        for (path, restarts) in changed.get(node).into_iter().flatten() {
            let mine = restarts.iter().any(|r| units.contains(r));
            let orphan = first_on_node && !restarts.iter().any(|r| is_rollout_unit(r));
            if (mine || orphan) && assigned.insert((node.clone(), path.clone())) {
                files_of[i].push(path.clone());
            }
        }
    }
    let mut plan = RolloutPlan::default();
    let mut agents: Vec<StageNode> = Vec::new();
    for ((kind, node, units), files) in steps.into_iter().zip(files_of) {
        let sn = StageNode { node, units, files };
        if kind == StageKind::NodeAgents {
            agents.push(sn);
        } else {
            plan.stages.push(Stage {
                kind,
                nodes: vec![sn],
            });
        }
    }
    for chunk in agents.chunks(batch.max(1)) {
        plan.stages.push(Stage {
            kind: StageKind::NodeAgents,
            nodes: chunk.to_vec(),
        });
    }
    // Whatever is left: files on nodes no step visits (or restarting units outside the rollout).
    let mut leftover: Vec<StageNode> = Vec::new();
    for (node, files) in changed {
        let rest: Vec<String> = files
            .iter()
            .filter(|(p, _)| !assigned.contains(&(node.clone(), p.clone())))
            .map(|(p, _)| p.clone())
            .collect();
        if !rest.is_empty() {
            leftover.push(StageNode {
                node: node.clone(),
                units: Vec::new(),
                files: rest,
            });
        }
    }
    if !leftover.is_empty() {
        plan.stages.push(Stage {
            kind: StageKind::FilesOnly,
            nodes: leftover,
        });
    }
    plan
}

fn is_rollout_unit(u: &str) -> bool {
    [
        ETCD,
        APISERVER,
        CONTROLLER_MANAGER,
        SCHEDULER,
        KUBELET,
        KUBE_PROXY,
    ]
    .contains(&u)
}

/// The plan as text, one numbered line per node step (what `--dry-run` prints).
pub fn describe(plan: &RolloutPlan) -> String {
    let mut s = String::new();
    for (i, st) in plan.stages.iter().enumerate() {
        for n in &st.nodes {
            s.push_str(&format!(
                "  {:>3}. {:<28} {:<16} restart: {}\n       files: {}\n       then: {}\n",
                i + 1,
                st.kind.title(),
                n.node,
                if n.units.is_empty() {
                    "-".to_string()
                } else {
                    n.units.join(", ")
                },
                n.files.join(", "),
                st.kind.check(),
            ));
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv() -> Inventory {
        let p = crate::profile::load("local-ha", &[]).unwrap().profile;
        crate::inventory::planned(&p, &Default::default()).unwrap()
    }

    fn ch(entries: &[(&str, &str, &[&str])]) -> BTreeMap<String, Vec<(String, Vec<String>)>> {
        let mut m: BTreeMap<String, Vec<(String, Vec<String>)>> = BTreeMap::new();
        for (node, path, restarts) in entries {
            m.entry(node.to_string()).or_default().push((
                path.to_string(),
                restarts.iter().map(|s| s.to_string()).collect(),
            ));
        }
        m
    }

    #[test]
    fn stages_follow_the_safe_order_and_files_go_once() {
        let inv = inv();
        let cps: Vec<String> = inv
            .with_role(Role::ControlPlane)
            .map(|n| n.name.clone())
            .collect();
        let workers: Vec<String> = inv
            .nodes
            .iter()
            .filter(|n| !n.has(Role::ControlPlane))
            .map(|n| n.name.clone())
            .collect();
        let mut e: Vec<(&str, &str, &[&str])> = Vec::new();
        for cp in &cps {
            e.push((cp, "/etc/etcd/server.crt", &[ETCD]));
            e.push((cp, "/etc/etcd/healthcheck-client.crt", &[]));
            e.push((cp, "/etc/kubernetes/pki/apiserver.crt", &[APISERVER]));
            // Shared by two stages on the node: pushed with the first, both restart.
            e.push((
                cp,
                "/etc/kubernetes/pki/sa.key",
                &[APISERVER, CONTROLLER_MANAGER],
            ));
            e.push((cp, "/etc/kubernetes/scheduler.kubeconfig", &[SCHEDULER]));
            e.push((cp, "/etc/kubernetes/kubelet.kubeconfig", &[KUBELET]));
        }
        for w in &workers {
            e.push((w, "/etc/kubernetes/kubelet.kubeconfig", &[KUBELET]));
            e.push((w, "/etc/kubernetes/kube-proxy.kubeconfig", &[KUBE_PROXY]));
        }
        let plan = build(&inv, &ch(&e), 2);
        let kinds: Vec<StageKind> = plan.stages.iter().map(|s| s.kind).collect();
        let n = cps.len();
        let agents = (cps.len() + workers.len()).div_ceil(2);
        let mut want = vec![StageKind::Etcd; n];
        want.extend(vec![StageKind::ApiServer; n]);
        want.extend(vec![StageKind::ControllerManagerScheduler; n]);
        want.extend(vec![StageKind::NodeAgents; agents]);
        assert_eq!(kinds, want);
        // One node per stage before the agents, in inventory order.
        for (i, cp) in cps.iter().enumerate() {
            assert_eq!(plan.stages[i].nodes[0].node, *cp);
            assert_eq!(
                plan.stages[i].nodes[0].files,
                ["/etc/etcd/server.crt", "/etc/etcd/healthcheck-client.crt"]
            );
        }
        let api = &plan.stages[n].nodes[0];
        assert_eq!(
            api.files,
            [
                "/etc/kubernetes/pki/apiserver.crt",
                "/etc/kubernetes/pki/sa.key"
            ]
        );
        let cm = &plan.stages[2 * n].nodes[0];
        assert_eq!(cm.units, [CONTROLLER_MANAGER, SCHEDULER]);
        assert_eq!(cm.files, ["/etc/kubernetes/scheduler.kubeconfig"]);
        // Every changed file goes out exactly once.
        assert_eq!(plan.files(), e.len());
        assert!(plan.stages[3 * n..].iter().all(|s| s.nodes.len() <= 2));
    }

    #[test]
    fn files_of_nodes_without_restarts_get_a_files_stage() {
        let inv = inv();
        let node = inv.nodes[0].name.clone();
        let plan = build(
            &inv,
            &ch(&[(&node, "/etc/kubernetes/admin.kubeconfig", &[])]),
            10,
        );
        assert_eq!(plan.stages.len(), 1);
        assert_eq!(plan.stages[0].kind, StageKind::FilesOnly);
        assert_eq!(plan.restarts(), 0);
        assert!(describe(&plan).contains("admin.kubeconfig"));
    }
}
