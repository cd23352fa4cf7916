//! Carrying out a rollout plan: stage by stage, node by node within a stage's batch, push the
//! stage's files (checksums first, atomic), restart its units, and verify before going on. The
//! first failed verification stops the rollout: the stages before it are done, the nodes after
//! it still run their old certificates — valid and signed by the same CA, so the cluster keeps
//! working — and a re-run resumes at the failed stage. Progress is recorded after every stage.

use std::time::{Duration, Instant};

use serde::Serialize;

use super::plan::{Stage, StageKind, StageNode, APISERVER, ETCD, KUBELET};
use crate::inventory::{Inventory, Node, Role};
use crate::phases::{control_plane, etcd};
use crate::remote::sync::{FileSource, NodePlan, SyncFile};
use crate::remote::{Conn, Executor};
use crate::render::Bundle;

/// How long one verification may take.
#[derive(Debug, Clone)]
pub struct Timeouts {
    pub etcd_health: Duration,
    pub apiserver_ready: Duration,
    /// A restarted unit must stay active (no restart loop) this long.
    pub settle: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Timeouts {
            etcd_health: Duration::from_secs(90),
            apiserver_ready: Duration::from_secs(120),
            settle: Duration::from_secs(3),
        }
    }
}

/// What happened on one node of a stage.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeResult {
    pub node: String,
    pub files_changed: usize,
    pub restarted: Vec<String>,
    /// Units the plan names that were not running on the node: files updated, not restarted.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_running: Vec<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StageResult {
    pub kind: StageKind,
    pub nodes: Vec<NodeResult>,
    pub ok: bool,
    pub elapsed_secs: f64,
}

/// Everything a stage needs.
pub struct Rollout<'a> {
    pub exec: &'a Executor,
    pub inventory: &'a Inventory,
    /// Rendered with the new certificates.
    pub bundle: &'a Bundle,
    pub api_port: u16,
    pub timeouts: Timeouts,
    /// The etcd members the plan restarts, in order: leadership is handed to one that has
    /// restarted already (or restarts last), so a rotation costs one election, not one per
    /// member that happens to lead when its turn comes.
    pub etcd_order: Vec<String>,
}

impl Rollout<'_> {
    /// Run one stage: its nodes in parallel (a batch), each push → restart → verify.
    pub fn run_stage(&self, stage: &Stage) -> StageResult {
        let started = Instant::now();
        let nodes: Vec<NodeResult> = std::thread::scope(|s| {
            let handles: Vec<_> = stage
                .nodes
                .iter()
                .map(|sn| s.spawn(move || self.run_node(sn)))
                .collect();
            handles
                .into_iter()
                .zip(&stage.nodes)
                .map(|(h, sn)| {
                    h.join().unwrap_or_else(|_| NodeResult {
                        node: sn.node.clone(),
                        files_changed: 0,
                        restarted: Vec::new(),
                        not_running: Vec::new(),
                        error: Some("internal error: the worker thread panicked".into()),
                    })
                })
                .collect()
        });
        StageResult {
            kind: stage.kind,
            ok: nodes.iter().all(|n| n.error.is_none()),
            nodes,
            elapsed_secs: started.elapsed().as_secs_f64(),
        }
    }

    fn run_node(&self, sn: &StageNode) -> NodeResult {
        let mut r = NodeResult {
            node: sn.node.clone(),
            files_changed: 0,
            restarted: Vec::new(),
            not_running: Vec::new(),
            error: None,
        };
        if let Err(e) = self.push_restart_verify(sn, &mut r) {
            r.error = Some(e);
        }
        r
    }

    fn push_restart_verify(&self, sn: &StageNode, r: &mut NodeResult) -> Result<(), String> {
        let node = self.inventory.node(&sn.node).ok_or_else(|| {
            format!(
                "node {} is in the rotation plan but not in the inventory",
                sn.node
            )
        })?;
        let nb = self
            .bundle
            .nodes
            .get(&sn.node)
            .ok_or_else(|| format!("node {} has no rendered files", sn.node))?;
        let mut files = Vec::new();
        for path in &sn.files {
            let f = nb
                .files
                .iter()
                .find(|f| &f.path == path)
                .ok_or_else(|| format!("{path} is no longer rendered for {}", sn.node))?;
            let mut sf = SyncFile::from_bundle(f);
            // Restarts are this module's business: in stage order, never as a side effect.
            sf.restarts.clear();
            files.push(sf);
        }
        debug_assert!(files
            .iter()
            .all(|f| matches!(f.source, FileSource::Bytes(_))));
        let conn = self.exec.connect(node).map_err(|e| e.to_string())?;
        // Which of the stage's units run now (decided before the push: a unit that was not
        // running is not started by a rotation).
        let mut running = Vec::new();
        for u in &sn.units {
            if is_active(&conn, u)? {
                running.push(u.clone());
            } else {
                r.not_running.push(u.clone());
            }
        }
        let restarts_before: Vec<u64> = running
            .iter()
            .map(|u| n_restarts(&conn, u))
            .collect::<Result<_, _>>()?;
        drop(conn);
        let plan = NodePlan {
            files,
            units: Vec::new(),
            commands: Vec::new(),
            fetch: Default::default(),
        };
        let pushed = self
            .exec
            .apply_node(node, &plan)
            .map_err(|e| format!("pushing files: {e}"))?;
        r.files_changed = pushed.files_changed;
        let conn = self.exec.connect(node).map_err(|e| e.to_string())?;
        for u in &running {
            if u == ETCD {
                // In-flight requests to a stopped leader time out until a new one is elected
                // (seconds on a loaded machine): hand leadership over first, as etcd's own
                // operators do. A member that is not the leader restarts without notice.
                let pos = self.etcd_order.iter().position(|n| *n == node.name);
                let later: &[String] = match pos {
                    Some(i) => &self.etcd_order[i + 1..],
                    None => &[],
                };
                if let Err(e) = hand_over_etcd_leadership(&conn, later) {
                    tracing::warn!(node = %node.name, "etcd leadership not handed over before restart: {e}");
                }
            }
            let drained = u == ETCD && drain_etcd_clients(&conn, &node.name);
            let restarted = conn
                .exec(&format!("systemctl restart {u}"), Duration::from_secs(180))
                .map_err(|e| format!("restarting {u}: {e}"));
            if drained {
                // Before the health check: it dials the member's own address too.
                undrain_etcd_clients(&conn, &node.name);
            }
            restarted?;
            r.restarted.push(u.clone());
            // Wait for the service's own health before the next unit on this node.
            self.verify_unit(&conn, node, u)?;
        }
        // No restart loop: each restarted unit still active, restarted once by us only.
        if !running.is_empty() {
            std::thread::sleep(self.timeouts.settle);
        }
        for (u, before) in running.iter().zip(restarts_before) {
            if !is_active(&conn, u)? {
                return Err(format!(
                    "{u} is not active after its restart (journalctl -u {u} on {} says why)",
                    node.name
                ));
            }
            let after = n_restarts(&conn, u)?;
            if after > before {
                return Err(format!(
                    "{u} restarted by systemd {} time(s) since the rotation restarted it: it is failing with the new files (journalctl -u {u} on {})",
                    after - before,
                    node.name
                ));
            }
        }
        Ok(())
    }

    fn verify_unit(&self, conn: &Conn, node: &Node, unit: &str) -> Result<(), String> {
        match unit {
            ETCD => self.wait_etcd(conn, node),
            APISERVER => self.wait_readyz(conn, node),
            KUBELET => wait_until(Duration::from_secs(60), || {
                conn.exec_status(
                    "curl -sf --max-time 5 http://127.0.0.1:10248/healthz",
                    Duration::from_secs(15),
                )
                .map(|o| {
                    (
                        o.status == 0 && o.stdout.trim() == "ok",
                        o.stdout + &o.stderr,
                    )
                })
                .map_err(|e| e.to_string())
            })
            .map_err(|last| format!("kubelet /healthz not ok after 60 s: {last}")),
            _ => Ok(()),
        }
    }

    /// Every member healthy (asked through the restarted member's own client port).
    fn wait_etcd(&self, conn: &Conn, node: &Node) -> Result<(), String> {
        let members = self.inventory.with_role(Role::Etcd).count();
        wait_until(self.timeouts.etcd_health, || {
            conn.exec_status(etcd::HEALTH_CMD, Duration::from_secs(30))
                .map(|o| {
                    let text = format!("{}{}", o.stdout, o.stderr);
                    let healthy = text.matches("is healthy").count();
                    (o.status == 0 && healthy >= members, text)
                })
                .map_err(|e| e.to_string())
        })
        .map_err(|last| {
            format!(
                "etcd on {} is not healthy {} s after its restart: {}",
                node.name,
                self.timeouts.etcd_health.as_secs(),
                last.trim()
            )
        })
    }

    fn wait_readyz(&self, conn: &Conn, node: &Node) -> Result<(), String> {
        let cmd = control_plane::local_kubectl(self.api_port, "get --raw=/readyz");
        wait_until(self.timeouts.apiserver_ready, || {
            conn.exec_status(&cmd, Duration::from_secs(15))
                .map(|o| {
                    (
                        o.status == 0 && o.stdout.trim() == "ok",
                        o.stdout + &o.stderr,
                    )
                })
                .map_err(|e| e.to_string())
        })
        .map_err(|last| {
            format!(
                "kube-apiserver on {} not ready {} s after its restart: {}",
                node.name,
                self.timeouts.apiserver_ready.as_secs(),
                last.trim().chars().take(400).collect::<String>()
            )
        })
    }
}

/// etcdctl against the node's own member, with the health-check client certificate.
const LOCAL_ETCDCTL: &str = "ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 \
     --cacert=/etc/etcd/ca.crt --cert=/etc/etcd/healthcheck-client.crt \
     --key=/etc/etcd/healthcheck-client.key --command-timeout=5s";

/// The rule that turns new client connections to the member's address away while it restarts
/// (loopback, i.e. this node's own tools, is let through).
const ETCD_DRAIN_RULE: &str = "INPUT -p tcp --dport 2379 ! -s 127.0.0.0/8 --syn \
     -m comment --comment k8sforge-etcd-drain -j REJECT --reject-with tcp-reset";

/// How long connections made before the drain get to finish their requests.
const ETCD_DRAIN_GRACE: Duration = Duration::from_secs(2);

/// Stop new client connections to the member before it restarts, then give the requests in
/// flight a moment. Why: an etcd member with client TLS serves gRPC through its HTTP server and
/// on SIGTERM stops gRPC before the HTTP side (no graceful stop with TLS), so a request that
/// reaches it in that moment fails with "missing content-type field" and clients do not retry
/// writes. Refused, a client's balancer uses the other members meanwhile. Best effort: without
/// iptables on the node the restart goes ahead undrained, with a warning. A transient timer
/// removes the rule after two minutes whatever happens to this run (e.g. SIGKILL).
fn drain_etcd_clients(conn: &Conn, node: &str) -> bool {
    let cmd = format!(
        "command -v iptables >/dev/null || exit 3; \
         systemd-run --quiet --on-active=120 --unit=k8sforge-etcd-undrain-$(date +%s%N) \
           /bin/sh -c 'while iptables -w -D {ETCD_DRAIN_RULE}; do :; done' || true; \
         iptables -w -C {ETCD_DRAIN_RULE} 2>/dev/null || iptables -w -I {ETCD_DRAIN_RULE}"
    );
    match conn.exec_status(&cmd, Duration::from_secs(30)) {
        Ok(o) if o.status == 0 => {
            std::thread::sleep(ETCD_DRAIN_GRACE);
            true
        }
        Ok(o) => {
            tracing::warn!(%node, "etcd clients not drained before the restart (exit {}): {}", o.status, o.stderr.trim());
            false
        }
        Err(e) => {
            tracing::warn!(%node, "etcd clients not drained before the restart: {e}");
            false
        }
    }
}

fn undrain_etcd_clients(conn: &Conn, node: &str) {
    let cmd = format!("while iptables -w -D {ETCD_DRAIN_RULE} 2>/dev/null; do :; done");
    if let Err(e) = conn.exec_status(&cmd, Duration::from_secs(30)) {
        tracing::warn!(%node, "etcd drain rule not removed (a timer removes it within two minutes): {e}");
    }
}

/// When the node's etcd member leads, move leadership to another started member, preferring
/// one not in `later` (members still to be restarted).
fn hand_over_etcd_leadership(conn: &Conn, later: &[String]) -> Result<(), String> {
    let run = |args: &str| -> Result<serde_json::Value, String> {
        let o = conn
            .exec_status(&format!("{LOCAL_ETCDCTL} {args}"), Duration::from_secs(30))
            .map_err(|e| e.to_string())?;
        if o.status != 0 {
            return Err(format!("etcdctl {args}: {}", o.stderr.trim()));
        }
        serde_json::from_str(&o.stdout).map_err(|e| format!("etcdctl {args}: {e}"))
    };
    let status = run("endpoint status -w json")?;
    let own = status[0]["Status"]["header"]["member_id"].as_u64();
    let leader = status[0]["Status"]["leader"].as_u64();
    let (Some(own), Some(leader)) = (own, leader) else {
        return Err(format!("unexpected endpoint status: {status}"));
    };
    if own != leader {
        return Ok(());
    }
    let members = run("member list -w json")?;
    // Started members have a name; learners cannot lead.
    let candidates: Vec<(u64, String)> = members["members"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|m| !m["isLearner"].as_bool().unwrap_or(false))
        .filter_map(|m| {
            let name = m["name"].as_str().filter(|n| !n.is_empty())?;
            Some((m["ID"].as_u64()?, name.to_string()))
        })
        .filter(|(id, _)| *id != own)
        .collect();
    let next = candidates
        .iter()
        .find(|(_, name)| !later.contains(name))
        .or_else(|| {
            candidates
                .iter()
                .find(|(_, name)| later.last() == Some(name))
        })
        .or(candidates.first())
        .map(|(id, _)| *id)
        .ok_or("no other started member to lead")?;
    let o = conn
        .exec_status(
            &format!("{LOCAL_ETCDCTL} move-leader {next:x}"),
            Duration::from_secs(30),
        )
        .map_err(|e| e.to_string())?;
    if o.status != 0 {
        return Err(format!("etcdctl move-leader: {}", o.stderr.trim()));
    }
    // move-leader answers when the transfer started; stop the member only once it follows the
    // new leader, so its own shutdown does not start another transfer (etcd hands leadership
    // over on SIGTERM too) and no write is proposed to a member that is about to go.
    wait_until(Duration::from_secs(10), || {
        let s = run("endpoint status -w json")?;
        let leader = s[0]["Status"]["leader"].as_u64();
        Ok((
            leader == Some(next),
            format!("leader is {leader:?}, want {next:x}"),
        ))
    })
    .map_err(|last| format!("leadership not moved within 10 s: {last}"))
}

fn is_active(conn: &Conn, unit: &str) -> Result<bool, String> {
    conn.exec_status(
        &format!("systemctl is-active -q {unit}"),
        Duration::from_secs(30),
    )
    .map(|o| o.status == 0)
    .map_err(|e| e.to_string())
}

fn n_restarts(conn: &Conn, unit: &str) -> Result<u64, String> {
    let o = conn
        .exec_status(
            &format!("systemctl show -p NRestarts --value {unit}"),
            Duration::from_secs(30),
        )
        .map_err(|e| e.to_string())?;
    Ok(o.stdout.trim().parse().unwrap_or(0))
}

/// Poll `check` (ok, detail) every second until ok or `limit`; Err carries the last detail.
pub fn wait_until(
    limit: Duration,
    mut check: impl FnMut() -> Result<(bool, String), String>,
) -> Result<(), String> {
    let deadline = Instant::now() + limit;
    loop {
        let last = match check() {
            Ok((true, _)) => return Ok(()),
            Ok((false, detail)) => detail,
            Err(e) => e,
        };
        if Instant::now() >= deadline {
            return Err(last);
        }
        std::thread::sleep(Duration::from_secs(1));
    }
}
