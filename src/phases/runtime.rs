//! Phase `runtime` (Hard Way: the first half of "Bootstrapping the Kubernetes Worker Nodes", kind's
//! "Preparing nodes"): on every node that runs pods — workers, and control planes, which register
//! as tainted nodes — the container runtime: containerd with the systemd cgroup driver, runc, the
//! CNI plugins with the bridge + loopback configuration for the node's pod CIDR, and the OCI image
//! archives (pause and add-on images) imported into containerd, so nothing is pulled at run time.
//!
//! It comes before the control plane so that a node's runtime can be checked (and re-run) without
//! any Kubernetes binary; kubelet and kube-proxy are the `workers` phase.

use std::time::Instant;

use super::node_prep;
use super::remote_step::{self, RemoteStep};
use super::{Context, Phase, PhaseError, PhaseName, PhaseSummary};
use crate::artifacts::Component;
use crate::inventory::Role;
use crate::render::node::IMAGES_UNIT;

pub struct Runtime;

pub const STEP: RemoteStep = RemoteStep {
    phase: PhaseName::Runtime,
    nodes: |n| n.has(Role::Worker) || n.has(Role::ControlPlane),
    units: &[
        "k8sforge-node-prep.service",
        crate::render::gpu::GPU_UNIT,
        crate::render::api_proxy::API_PROXY_UNIT,
        "containerd.service",
        IMAGES_UNIT,
    ],
    path_prefixes: &[
        "/etc/cni/",
        "/etc/systemd/system.conf.d/",
        crate::render::registry_hosts::CERTS_D_PREFIX,
        crate::render::gpu::PATH_PREFIXES[0],
        crate::render::gpu::PATH_PREFIXES[1],
    ],
    components: &[
        (Component::Containerd, &["containerd.service"]),
        (Component::Runc, &[]),
        (Component::CniPlugins, &[]),
    ],
    images: true,
};

impl Phase for Runtime {
    fn name(&self) -> PhaseName {
        PhaseName::Runtime
    }

    fn title(&self) -> &'static str {
        "Preparing nodes"
    }

    fn run(&self, ctx: &mut Context) -> Result<PhaseSummary, PhaseError> {
        let started = Instant::now();
        let exec = remote_step::executor(ctx)?;
        let kernel = node_prep::run(ctx, &exec)?;
        let refused = kernel.failed_pairs();
        if !refused.is_empty() {
            // The nodes that are ready still get their runtime (a re-run then only has the
            // failed ones left); the phase fails naming the others.
            let bad: std::collections::BTreeSet<&str> =
                refused.iter().map(|(n, _)| n.as_str()).collect();
            let rest: std::collections::BTreeSet<String> = ctx
                .inventory
                .iter()
                .flat_map(|i| &i.nodes)
                .filter(|n| ctx.in_scope(&n.name) && !bad.contains(n.name.as_str()))
                .map(|n| n.name.clone())
                .collect();
            let mut s = node_prep::summary(&kernel, started);
            if !rest.is_empty() {
                let saved = ctx.limit_nodes.replace(rest);
                let applied = remote_step::apply_with(ctx, &STEP, &exec);
                ctx.limit_nodes = saved;
                let report = applied?;
                s.files_changed += report.files_changed;
                s.units_restarted += report.units_restarted;
                s.failed_nodes.extend(report.failed_pairs());
                s.detail = format!(
                    "{}; containerd, runc, CNI on the {} other nodes",
                    s.detail, report.nodes_ok
                );
            }
            return Ok(s);
        }
        let mut report = remote_step::apply_with(ctx, &STEP, &exec)?;
        remote_step::prepull_images(ctx, &exec, &mut report)?;
        let detail = format!(
            "kernel settings read back on {} nodes; containerd, runc, CNI, images on {} nodes; {} files changed, {} restarts",
            kernel.nodes.len(), report.nodes_ok, report.files_changed + kernel.files_changed, report.units_restarted
        );
        let mut s = remote_step::summary(PhaseName::Runtime, &report, started, detail);
        s.files_changed += kernel.files_changed;
        for (node, b) in &kernel.bytes_sent {
            *s.bytes_sent.entry(node.clone()).or_default() += b;
        }
        Ok(s)
    }
}
