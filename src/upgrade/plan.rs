//! The order an upgrade moves a cluster in, as the skew policy requires: etcd members one at a
//! time when the target's release row pairs a different etcd; control planes one at a time
//! (apiserver, controller-manager, scheduler); then the node agents (kubelet, kube-proxy, and the
//! runtime when its row changes), control planes first, workers in batches, each batch cordoned
//! and drained first; add-ons last when the row's CoreDNS changes.

use serde::{Deserialize, Serialize};

use crate::artifacts::Release;
use crate::inventory::{Inventory, Role};
use crate::phases::PhaseName;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum StepKind {
    Etcd,
    ControlPlane,
    /// kubelet and kube-proxy (and the runtime when the row changes it), drained first.
    Nodes,
    Addons,
}

impl StepKind {
    pub fn title(self) -> &'static str {
        match self {
            StepKind::Etcd => "etcd",
            StepKind::ControlPlane => "control plane",
            StepKind::Nodes => "kubelet/kube-proxy",
            StepKind::Addons => "add-ons",
        }
    }

    /// How the step is verified.
    pub fn check(self) -> &'static str {
        match self {
            StepKind::Etcd => "every etcd member healthy over TLS",
            StepKind::ControlPlane => {
                "the node's apiserver reports the target; /readyz ok through the API endpoint"
            }
            StepKind::Nodes => {
                "cordoned and drained; nodes Ready at the target kubelet version; uncordoned"
            }
            StepKind::Addons => "add-ons applied and ready",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Step {
    pub kind: StepKind,
    pub nodes: Vec<String>,
    /// The phases of `up` the step runs on its nodes, in order.
    pub phases: Vec<PhaseName>,
    /// Cordon and drain the nodes first, uncordon after.
    pub drain: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct UpgradePlan {
    pub steps: Vec<Step>,
}

/// The steps from `from` to `to` on `inv`; worker batches of `batch` nodes.
pub fn build(inv: &Inventory, from: &Release, to: &Release, batch: usize) -> UpgradePlan {
    let mut steps = Vec::new();
    if from.etcd != to.etcd {
        for n in inv.with_role(Role::Etcd) {
            steps.push(Step {
                kind: StepKind::Etcd,
                nodes: vec![n.name.clone()],
                phases: vec![PhaseName::Etcd],
                drain: false,
            });
        }
    }
    for n in inv.with_role(Role::ControlPlane) {
        steps.push(Step {
            kind: StepKind::ControlPlane,
            nodes: vec![n.name.clone()],
            phases: vec![PhaseName::ControlPlane],
            drain: false,
        });
    }
    let runtime_changes = (from.containerd, from.runc, from.cni_plugins, from.crictl)
        != (to.containerd, to.runc, to.cni_plugins, to.crictl);
    let mut node_phases = Vec::new();
    if runtime_changes {
        node_phases.push(PhaseName::Runtime);
    }
    node_phases.push(PhaseName::Workers);
    let (cps, workers): (Vec<_>, Vec<_>) = inv
        .nodes
        .iter()
        .filter(|n| n.has(Role::Worker) || n.has(Role::ControlPlane))
        .partition(|n| n.has(Role::ControlPlane));
    // Control planes' kubelets one at a time (they run the apiserver's node), workers in batches.
    for n in cps {
        steps.push(Step {
            kind: StepKind::Nodes,
            nodes: vec![n.name.clone()],
            phases: node_phases.clone(),
            drain: true,
        });
    }
    for chunk in workers.chunks(batch.max(1)) {
        steps.push(Step {
            kind: StepKind::Nodes,
            nodes: chunk.iter().map(|n| n.name.clone()).collect(),
            phases: node_phases.clone(),
            drain: true,
        });
    }
    if (from.coredns, from.pause) != (to.coredns, to.pause) {
        steps.push(Step {
            kind: StepKind::Addons,
            nodes: Vec::new(),
            phases: vec![PhaseName::Addons],
            drain: false,
        });
    }
    UpgradePlan { steps }
}

/// The plan as text, one numbered line per step (what `--dry-run` prints).
pub fn describe(plan: &UpgradePlan) -> String {
    let mut s = String::new();
    for (i, st) in plan.steps.iter().enumerate() {
        let phases: Vec<&str> = st.phases.iter().map(|p| p.as_str()).collect();
        s.push_str(&format!(
            "  {:>3}. {:<20} {:<30} phases: {}\n       then: {}\n",
            i + 1,
            st.kind.title(),
            if st.nodes.is_empty() {
                "(cluster)".to_string()
            } else {
                st.nodes.join(", ")
            },
            phases.join(", "),
            st.kind.check()
        ));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn inv(profile: &str) -> Inventory {
        let p = crate::profile::load(profile, &[]).unwrap().profile;
        crate::inventory::planned(&p, &Default::default()).unwrap()
    }

    #[test]
    fn patch_upgrade_orders_control_planes_then_batched_drained_nodes() {
        let inv = inv("local-ha");
        let r = crate::artifacts::release("v1.28.7").unwrap();
        let plan = build(&inv, r, r, 2);
        let kinds: Vec<StepKind> = plan.steps.iter().map(|s| s.kind).collect();
        let cps = inv.with_role(Role::ControlPlane).count();
        let workers = inv
            .nodes
            .iter()
            .filter(|n| n.has(Role::Worker) && !n.has(Role::ControlPlane))
            .count();
        let mut want = vec![StepKind::ControlPlane; cps];
        want.extend(vec![StepKind::Nodes; cps + workers.div_ceil(2)]);
        assert_eq!(kinds, want, "{}", describe(&plan));
        assert!(plan.steps[..cps]
            .iter()
            .all(|s| s.nodes.len() == 1 && !s.drain));
        assert!(plan.steps[cps..]
            .iter()
            .all(|s| s.drain && s.phases == [PhaseName::Workers]));
        assert!(plan.steps.last().unwrap().nodes.len() <= 2);
    }

    #[test]
    fn a_new_row_adds_etcd_runtime_and_addons_steps() {
        let inv = inv("local-3");
        let a = crate::artifacts::release("v1.28.7").unwrap();
        let b = crate::artifacts::release("v1.34.2").unwrap();
        let plan = build(&inv, a, b, 1);
        assert_eq!(plan.steps[0].kind, StepKind::Etcd);
        assert_eq!(plan.steps.last().unwrap().kind, StepKind::Addons);
        let nodes = plan
            .steps
            .iter()
            .find(|s| s.kind == StepKind::Nodes)
            .unwrap();
        assert_eq!(nodes.phases, [PhaseName::Runtime, PhaseName::Workers]);
    }
}
