//! Phase `control-plane` (Hard Way: "Bootstrapping the Kubernetes Control Plane"): kube-apiserver,
//! kube-controller-manager and kube-scheduler on every control-plane node, from the generated
//! certificates, kubeconfigs, encryption config and audit policy; then a health gate: each
//! apiserver must answer `/readyz` through the admin credentials before the phase counts as done.

use std::time::{Duration, Instant};

use super::remote_step::{self, RemoteStep};
use super::{Context, Outcome, Phase, PhaseError, PhaseName, PhaseSummary};
use crate::artifacts::Component;
use crate::inventory::Role;
use crate::remote::Executor;

pub struct ControlPlane;

const STEP: RemoteStep = RemoteStep {
    phase: PhaseName::ControlPlane,
    nodes: |n| n.has(Role::ControlPlane),
    units: &[
        "kube-apiserver.service",
        "kube-controller-manager.service",
        "kube-scheduler.service",
    ],
    // Restart nothing but belong here: the admin credentials used by the health gate.
    path_prefixes: &["/etc/kubernetes/admin.kubeconfig"],
    components: &[
        (
            Component::KubernetesServer,
            &[
                "kube-apiserver.service",
                "kube-controller-manager.service",
                "kube-scheduler.service",
            ],
        ),
        (Component::Kubectl, &[]),
    ],
    images: false,
};

/// How long an apiserver may take to become ready after its unit starts (it opens etcd, loads
/// every resource type and runs post-start hooks; a few seconds on a warm node).
const READY_TIMEOUT: Duration = Duration::from_secs(120);

/// `kubectl get --raw` against the apiserver on this node, with the admin credentials (the
/// kubeconfig's own server may be a load balancer that is not up yet).
pub fn local_kubectl(port: u16, args: &str) -> String {
    format!(
        "kubectl --kubeconfig=/etc/kubernetes/admin.kubeconfig --server=https://127.0.0.1:{port} \
         --request-timeout=10s {args}"
    )
}

impl Phase for ControlPlane {
    fn name(&self) -> PhaseName {
        PhaseName::ControlPlane
    }

    fn title(&self) -> &'static str {
        "Starting control-plane"
    }

    fn run(&self, ctx: &mut Context) -> Result<PhaseSummary, PhaseError> {
        let started = Instant::now();
        let (exec, report) = remote_step::apply(ctx, &STEP)?;
        let mut summary =
            remote_step::summary(PhaseName::ControlPlane, &report, started, String::new());
        if summary.outcome != Outcome::Done {
            return Ok(summary);
        }
        let cps: Vec<_> = ctx
            .inventory
            .as_ref()
            .map(|i| i.with_role(Role::ControlPlane).cloned().collect())
            .unwrap_or_default();
        let port = ctx.loaded.profile.api_server.port;
        let failures = wait_ready(&exec, &cps, port);
        summary.elapsed = started.elapsed();
        if failures.is_empty() {
            summary.detail = format!(
                "{} apiservers ready; {} files changed, {} restarts",
                cps.len(),
                report.files_changed,
                report.units_restarted
            );
        } else {
            summary.outcome = Outcome::Failed;
            summary.detail = format!(
                "{} of {} apiservers not ready after {} s (journalctl -u kube-apiserver on the node says why)",
                failures.len(),
                cps.len(),
                READY_TIMEOUT.as_secs()
            );
            summary.failed_nodes = failures;
        }
        Ok(summary)
    }
}

/// Poll `/readyz` on every control plane in parallel; returns `(node, last answer)` of those that
/// never said ok.
fn wait_ready(exec: &Executor, cps: &[crate::inventory::Node], port: u16) -> Vec<(String, String)> {
    let cmd = local_kubectl(port, "get --raw=/readyz");
    std::thread::scope(|s| {
        let handles: Vec<_> = cps
            .iter()
            .map(|n| {
                let cmd = &cmd;
                s.spawn(move || {
                    let deadline = Instant::now() + READY_TIMEOUT;
                    let mut last = String::from("no answer");
                    while Instant::now() < deadline {
                        match exec
                            .connect(n)
                            .and_then(|c| c.exec_status(cmd, Duration::from_secs(15)))
                        {
                            Ok(out) if out.status == 0 && out.stdout.trim() == "ok" => return None,
                            Ok(out) => last = format!("{}{}", out.stdout, out.stderr),
                            Err(e) => last = e.to_string(),
                        }
                        std::thread::sleep(Duration::from_secs(1));
                    }
                    Some((n.name.clone(), last.trim().chars().take(400).collect()))
                })
            })
            .collect();
        handles
            .into_iter()
            .filter_map(|h| h.join().ok().flatten())
            .collect()
    })
}
