//! Phase `workers` (Hard Way: "Bootstrapping the Kubernetes Worker Nodes"): on every node that runs
//! pods (workers, and control planes, which register as tainted nodes) the container runtime —
//! containerd with the systemd cgroup driver, runc, the CNI plugins and the bridge + loopback
//! configuration for the node's pod CIDR.
//!
//! kubelet and kube-proxy join this phase with the control plane (the next issue); until then the
//! phase says so in its summary rather than pretending.

use std::time::Instant;

use super::remote_step::{self, RemoteStep};
use super::{Context, Phase, PhaseError, PhaseName, PhaseSummary};
use crate::artifacts::Component;
use crate::inventory::Role;

pub struct Workers;

const STEP: RemoteStep = RemoteStep {
    phase: PhaseName::Workers,
    nodes: |n| n.has(Role::Worker) || n.has(Role::ControlPlane),
    units: &["k8sforge-node-prep.service", "containerd.service"],
    path_prefixes: &["/etc/cni/", "/etc/systemd/system.conf.d/"],
    components: &[
        (Component::Containerd, &["containerd.service"]),
        (Component::Runc, &[]),
        (Component::CniPlugins, &[]),
    ],
};

impl Phase for Workers {
    fn name(&self) -> PhaseName {
        PhaseName::Workers
    }

    fn title(&self) -> &'static str {
        "Preparing worker nodes"
    }

    fn run(&self, ctx: &mut Context) -> Result<PhaseSummary, PhaseError> {
        let started = Instant::now();
        let (_, report) = remote_step::apply(ctx, &STEP)?;
        let detail = format!(
            "containerd, runc, CNI on {} nodes; {} files changed, {} restarts; kubelet and kube-proxy not built yet",
            report.nodes_ok, report.files_changed, report.units_restarted
        );
        Ok(remote_step::summary(
            PhaseName::Workers,
            &report,
            started,
            detail,
        ))
    }
}
