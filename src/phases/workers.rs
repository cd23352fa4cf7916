//! Phase `workers` (Hard Way: the second half of "Bootstrapping the Kubernetes Worker Nodes"):
//! kubelet and kube-proxy on every node that runs pods. Control planes register too, tainted so
//! ordinary workloads stay off them. Done when every node is registered and Ready.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::control_plane::local_kubectl;
use super::remote_step::{self, RemoteStep};
use super::{Context, Outcome, Phase, PhaseError, PhaseName, PhaseSummary};
use crate::artifacts::Component;
use crate::inventory::Role;

pub struct Workers;

const STEP: RemoteStep = RemoteStep {
    phase: PhaseName::Workers,
    nodes: |n| n.has(Role::Worker) || n.has(Role::ControlPlane),
    units: &[
        "kubelet.service",
        "kube-proxy.service",
        crate::render::local_volumes::UNIT,
    ],
    path_prefixes: &[],
    components: &[
        (Component::Kubelet, &["kubelet.service"]),
        (Component::KubernetesServer, &["kube-proxy.service"]),
        (Component::Kubectl, &[]),
    ],
    images: false,
};

/// A fresh kubelet registers within seconds; the node turns Ready once the runtime and CNI
/// config are seen (the `runtime` phase put them in place).
const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// The label kubeadm puts on control planes; a kubelet may not set `node-role.*` labels on
/// itself (NodeRestriction), so the admin credentials do it.
const CONTROL_PLANE_ROLE_LABEL: &str = "node-role.kubernetes.io/control-plane";

impl Phase for Workers {
    fn name(&self) -> PhaseName {
        PhaseName::Workers
    }

    fn title(&self) -> &'static str {
        "Joining nodes"
    }

    fn run(&self, ctx: &mut Context) -> Result<PhaseSummary, PhaseError> {
        let started = Instant::now();
        let (exec, report) = remote_step::apply(ctx, &STEP)?;
        let mut summary = remote_step::summary(PhaseName::Workers, &report, started, String::new());
        if summary.outcome != Outcome::Done {
            return Ok(summary);
        }
        let inv = ctx.inventory.as_ref().ok_or(PhaseError::NoInventory {
            phase: PhaseName::Workers,
        })?;
        let expected: Vec<String> = inv
            .nodes
            .iter()
            .filter(|n| (STEP.nodes)(n))
            .map(|n| n.name.clone())
            .collect();
        let cps: Vec<String> = inv
            .with_role(Role::ControlPlane)
            .map(|n| n.name.clone())
            .collect();
        // Any reachable control plane will do: one may be down in an HA cluster.
        let mut errors = Vec::new();
        let conn = inv
            .with_role(Role::ControlPlane)
            .find_map(|cp| match exec.connect(cp) {
                Ok(c) => Some(c),
                Err(e) => {
                    errors.push(format!("{}: {e}", cp.name));
                    None
                }
            })
            .ok_or_else(|| {
                PhaseError::Failed(if errors.is_empty() {
                    "the inventory has no control plane".into()
                } else {
                    format!("no control plane reachable: {}", errors.join("; "))
                })
            })?;
        let port = ctx.loaded.profile.api_server.port;

        // Wait until every node is registered and Ready.
        let deadline = Instant::now() + READY_TIMEOUT;
        let get = local_kubectl(port, "get nodes -o json");
        let not_ready = loop {
            let pending = match conn.exec_status(&get, Duration::from_secs(20)) {
                Ok(out) if out.status == 0 => not_ready_nodes(&out.stdout, &expected)?,
                Ok(out) => expected
                    .iter()
                    .map(|n| (n.clone(), format!("API: {}", out.stderr.trim())))
                    .collect(),
                Err(e) => expected
                    .iter()
                    .map(|n| (n.clone(), format!("API: {e}")))
                    .collect(),
            };
            if pending.is_empty() || Instant::now() >= deadline {
                break pending;
            }
            std::thread::sleep(Duration::from_secs(1));
        };
        summary.elapsed = started.elapsed();
        if !not_ready.is_empty() {
            summary.outcome = Outcome::Failed;
            summary.detail = format!(
                "{} of {} nodes not Ready after {} s",
                not_ready.len(),
                expected.len(),
                READY_TIMEOUT.as_secs()
            );
            summary.failed_nodes = not_ready.into_iter().collect();
            return Ok(summary);
        }
        // Role label on control planes (idempotent: --overwrite of the same value changes nothing).
        let label = local_kubectl(
            port,
            &format!(
                "label node --overwrite {} {CONTROL_PLANE_ROLE_LABEL}=",
                cps.join(" ")
            ),
        );
        conn.exec(&label, Duration::from_secs(30))
            .map_err(|e| PhaseError::Failed(format!("labelling control planes: {e}")))?;
        summary.detail = format!(
            "{} nodes Ready; {} files changed, {} restarts",
            expected.len(),
            report.files_changed,
            report.units_restarted
        );
        Ok(summary)
    }
}

/// `(node, why)` for each expected node that is missing from `kubectl get nodes -o json` output or
/// not Ready.
fn not_ready_nodes(
    json: &str,
    expected: &[String],
) -> Result<BTreeMap<String, String>, PhaseError> {
    let v: serde_json::Value = serde_json::from_str(json)
        .map_err(|e| PhaseError::Failed(format!("cannot parse the node list: {e}")))?;
    let mut ready: BTreeMap<String, Result<(), String>> = BTreeMap::new();
    for item in v["items"].as_array().into_iter().flatten() {
        let name = item["metadata"]["name"].as_str().unwrap_or_default();
        let cond = item["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|c| c["type"] == "Ready");
        let state = match cond {
            Some(c) if c["status"] == "True" => Ok(()),
            Some(c) => Err(format!(
                "NotReady: {}",
                c["message"].as_str().unwrap_or("no message")
            )),
            None => Err("no Ready condition yet".to_string()),
        };
        ready.insert(name.to_string(), state);
    }
    Ok(expected
        .iter()
        .filter_map(|n| match ready.get(n) {
            Some(Ok(())) => None,
            Some(Err(why)) => Some((n.clone(), why.clone())),
            None => Some((
                n.clone(),
                "not registered (journalctl -u kubelet on the node says why)".to_string(),
            )),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn node_readiness_is_read_from_the_node_list() {
        let json = r#"{"items":[
          {"metadata":{"name":"a"},"status":{"conditions":[{"type":"Ready","status":"True"}]}},
          {"metadata":{"name":"b"},"status":{"conditions":[{"type":"Ready","status":"False","message":"cni config uninitialized"}]}}
        ]}"#;
        let want = ["a", "b", "c"].map(String::from);
        let r = not_ready_nodes(json, &want).unwrap();
        assert_eq!(r.len(), 2);
        assert!(r["b"].contains("cni config uninitialized"));
        assert!(r["c"].contains("not registered"));
    }
}
