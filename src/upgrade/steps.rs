//! Carrying out one upgrade step: the phases of `up` (the same artifact delivery, checksums
//! first, restart only what changed) limited to the step's nodes, with the target's release
//! row; around them cordon/drain/uncordon for node steps; after them the step's verification.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::plan::{Step, StepKind};
use crate::inventory::{Inventory, Node, Role};
use crate::phases::control_plane::local_kubectl;
use crate::phases::{PhaseSummary, UpOptions};
use crate::profile::LoadedProfile;
use crate::remote::{Conn, Executor};
use crate::rotate::rollout::wait_until;
use crate::state::ClusterDir;

/// What one step did.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepResult {
    pub kind: StepKind,
    pub nodes: Vec<String>,
    pub ok: bool,
    pub detail: String,
    pub phases: Vec<PhaseSummary>,
    pub elapsed_secs: f64,
}

pub struct StepRunner<'a> {
    /// The profile at the target version.
    pub loaded: &'a LoadedProfile,
    pub dir: &'a ClusterDir,
    pub exec: &'a Executor,
    pub inventory: &'a Inventory,
    pub target: &'a str,
    pub mirror: Option<String>,
    pub trust_mirror_checksums: bool,
    pub verify_timeout: Duration,
}

impl StepRunner<'_> {
    pub fn run(&self, step: &Step) -> StepResult {
        let started = Instant::now();
        let mut phases = Vec::new();
        let outcome = self.run_inner(step, &mut phases);
        StepResult {
            kind: step.kind,
            nodes: step.nodes.clone(),
            ok: outcome.is_ok(),
            detail: outcome.unwrap_or_else(|e| e),
            phases,
            elapsed_secs: started.elapsed().as_secs_f64(),
        }
    }

    fn run_inner(&self, step: &Step, phases: &mut Vec<PhaseSummary>) -> Result<String, String> {
        let api = if step.drain {
            Some(self.api_conn()?)
        } else {
            None
        };
        if let Some(conn) = &api {
            for n in &step.nodes {
                self.kubectl(conn, &format!("cordon {n}"), 60)
                    .map_err(|e| format!("cordoning {n}: {e}"))?;
            }
            for n in &step.nodes {
                // No --force: a pod no controller re-creates would be lost; the operator decides.
                self.kubectl(
                    conn,
                    &format!("drain {n} --ignore-daemonsets --delete-emptydir-data --timeout=300s"),
                    360,
                )
                .map_err(|e| {
                    format!("draining {n} (it stays cordoned; the re-run drains it again): {e}")
                })?;
            }
        }
        let limit: Option<BTreeSet<String>> =
            (!step.nodes.is_empty()).then(|| step.nodes.iter().cloned().collect());
        let report = crate::phases::run_up(
            self.loaded,
            self.dir,
            &UpOptions {
                phases: step.phases.clone(),
                mirror: self.mirror.clone(),
                trust_mirror_checksums: self.trust_mirror_checksums,
                progress: false,
                // The phases converge by checksum: forcing only skips the "unchanged" shortcut.
                force: true,
                replace_drifted: false,
                limit_nodes: limit,
            },
        )
        .map_err(|e| format!("{e:#}"))?;
        let ok = report.ok();
        phases.extend(report.phases);
        if !ok {
            let failed: Vec<String> = phases
                .iter()
                .filter(|p| p.outcome == crate::phases::Outcome::Failed)
                .map(|p| {
                    let nodes: Vec<String> = p
                        .failed_nodes
                        .iter()
                        .map(|(n, e)| format!("{n}: {e}"))
                        .collect();
                    format!(
                        "phase {} failed: {} {}",
                        p.phase,
                        p.detail,
                        nodes.join("; ")
                    )
                })
                .collect();
            return Err(failed.join("\n    "));
        }
        let detail = match step.kind {
            StepKind::Etcd | StepKind::Addons => "phases done".to_string(),
            StepKind::ControlPlane => {
                let node = self.node(&step.nodes[0])?;
                self.verify_control_plane(node)?
            }
            StepKind::Nodes => {
                let conn = match api {
                    Some(c) => c,
                    None => self.api_conn()?,
                };
                let d = self.verify_nodes(&conn, &step.nodes)?;
                for n in &step.nodes {
                    self.kubectl(&conn, &format!("uncordon {n}"), 60)
                        .map_err(|e| format!("uncordoning {n}: {e}"))?;
                }
                d
            }
        };
        let files: usize = phases.iter().map(|p| p.files_changed).sum();
        let restarts: usize = phases.iter().map(|p| p.units_restarted).sum();
        Ok(format!("{files} files, {restarts} restarts; {detail}"))
    }

    fn node(&self, name: &str) -> Result<&Node, String> {
        self.inventory
            .node(name)
            .ok_or_else(|| format!("node {name} is in the upgrade plan but not in the inventory"))
    }

    /// A connection to the first control plane that answers, for cluster-wide kubectl.
    fn api_conn(&self) -> Result<Conn, String> {
        let mut errors = Vec::new();
        for cp in self.inventory.with_role(Role::ControlPlane) {
            match self.exec.connect(cp) {
                Ok(c) => return Ok(c),
                Err(e) => errors.push(format!("{}: {e}", cp.name)),
            }
        }
        Err(format!("no control plane reachable: {}", errors.join("; ")))
    }

    fn kubectl(&self, conn: &Conn, args: &str, secs: u64) -> Result<String, String> {
        let port = self.loaded.profile.api_server.port;
        let o = conn
            .exec_status(&local_kubectl(port, args), Duration::from_secs(secs))
            .map_err(|e| e.to_string())?;
        if o.status != 0 {
            return Err(o.stderr.trim().chars().take(600).collect());
        }
        Ok(o.stdout)
    }

    /// The node's own apiserver reports the target, and the API endpoint (the admin
    /// kubeconfig's server) answers /readyz.
    fn verify_control_plane(&self, node: &Node) -> Result<String, String> {
        let port = self.loaded.profile.api_server.port;
        let conn = self.exec.connect(node).map_err(|e| e.to_string())?;
        let own = local_kubectl(port, "get --raw=/version");
        let through_endpoint =
            "kubectl --kubeconfig=/etc/kubernetes/admin.kubeconfig --request-timeout=10s get --raw=/readyz";
        wait_until(self.verify_timeout, || {
            let o = conn
                .exec_status(&own, Duration::from_secs(20))
                .map_err(|e| e.to_string())?;
            let v: serde_json::Value = serde_json::from_str(&o.stdout).unwrap_or_default();
            let gv = v["gitVersion"].as_str().unwrap_or_default();
            if gv != self.target {
                return Ok((false, format!("apiserver on {} reports {gv:?}", node.name)));
            }
            let o = conn
                .exec_status(through_endpoint, Duration::from_secs(20))
                .map_err(|e| e.to_string())?;
            Ok((
                o.status == 0 && o.stdout.trim() == "ok",
                format!("/readyz through the API endpoint: {}{}", o.stdout, o.stderr),
            ))
        })
        .map_err(|last| {
            format!(
                "control plane {} not verified {} s after its upgrade: {}",
                node.name,
                self.verify_timeout.as_secs(),
                last.trim()
            )
        })?;
        Ok(format!(
            "apiserver {} ready through the API endpoint",
            self.target
        ))
    }

    /// Every node of the step Ready with the target kubelet.
    fn verify_nodes(&self, conn: &Conn, nodes: &[String]) -> Result<String, String> {
        wait_until(self.verify_timeout, || {
            let out = self.kubectl(conn, "get nodes -o json", 30)?;
            let v: serde_json::Value =
                serde_json::from_str(&out).map_err(|e| format!("node list: {e}"))?;
            let mut pending = Vec::new();
            for n in nodes {
                let item = v["items"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .find(|i| i["metadata"]["name"] == n.as_str());
                let Some(item) = item else {
                    pending.push(format!("{n}: not registered"));
                    continue;
                };
                let kv = item["status"]["nodeInfo"]["kubeletVersion"]
                    .as_str()
                    .unwrap_or_default();
                let ready = item["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                if kv != self.target || !ready {
                    pending.push(format!("{n}: kubelet {kv}, Ready={ready}"));
                }
            }
            Ok((pending.is_empty(), pending.join("; ")))
        })
        .map_err(|last| {
            format!(
                "nodes not Ready at {} after {} s: {last}",
                self.target,
                self.verify_timeout.as_secs()
            )
        })?;
        Ok(format!("Ready at kubelet {}", self.target))
    }
}
