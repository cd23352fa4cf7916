//! Nodes over SSH: sessions with pinned host keys, idempotent file sync, unit restarts, and
//! fan-out over many nodes with bounded concurrency.
//!
//! ```text
//! Executor::new(cluster_dir, opts)
//!   .apply(&inventory, &bundle, "etcd")   -> PhaseReport (files changed, units restarted, failures)
//!   .run_all(&nodes, "cmd", timeout)      -> per-node ExecOutput or error
//! ```

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::inventory::{Inventory, Node};
use crate::render::bundle::Bundle;

pub mod as_found;
pub mod bastion;
pub mod fanout;
pub mod fetch;
pub mod known_hosts;
pub mod session;
pub mod shell;
pub mod sync;
pub mod uninstall;

pub use known_hosts::KnownHosts;
pub use session::{Conn, ExecOutput, Target};
pub use sync::{FileSource, NodePlan, SyncFile};

#[derive(Debug, thiserror::Error)]
pub enum RemoteError {
    #[error("node {node}: cannot connect to {addr}: {reason}")]
    Connect {
        node: String,
        addr: SocketAddr,
        reason: String,
    },
    #[error("node {node}: SSH authentication as {user} with key {} failed: {reason}", key.display())]
    Auth {
        node: String,
        user: String,
        key: PathBuf,
        reason: String,
    },
    #[error(
        "node {node}: SSH HOST KEY CHANGED for {host}: it presented {presented}, but {pinned} is pinned in {}. \
         Refusing to connect: this can be a machine-in-the-middle. If the node was really rebuilt, \
         remove its line from that file and run again.",
        known_hosts.display()
    )]
    HostKeyChanged {
        node: String,
        host: String,
        presented: String,
        pinned: String,
        known_hosts: PathBuf,
    },
    #[error(
        "node {node}: no SSH host key is pinned for {host} in {} (it presents {presented}), and this \
         command is read-only: it pins nothing. Run `k8sforge up` first, which pins keys the provider \
         reports or, failing that, on first contact.",
        known_hosts.display()
    )]
    HostKeyUnknown {
        node: String,
        host: String,
        presented: String,
        known_hosts: PathBuf,
    },
    #[error(
        "node {node}: user {user} cannot run commands as root without a password (`sudo -n` said: \
         {reason}). k8sforge logs in as {user} and elevates with `sudo -n`: give {user} passwordless \
         sudo (e.g. `{user} ALL=(ALL) NOPASSWD:ALL` in /etc/sudoers.d/), or set ssh.user to root"
    )]
    Sudo {
        node: String,
        user: String,
        reason: String,
    },
    #[error("node {node}: through bastion {bastion}: {reason}")]
    Bastion {
        node: String,
        bastion: String,
        reason: String,
    },
    #[error("node {node}: {what} timed out after {secs:.1}s")]
    Timeout {
        node: String,
        what: String,
        secs: f64,
    },
    #[error("node {node}: command `{cmd}` exited with status {status}{}", if stderr.is_empty() { String::new() } else { format!(": {stderr}") })]
    Command {
        node: String,
        cmd: String,
        status: i32,
        stderr: String,
    },
    #[error("node {node}: {what}: {reason}")]
    Ssh {
        node: String,
        what: String,
        reason: String,
    },
    #[error("node {node}: cannot read local file {}: {source}", path.display())]
    Local {
        node: String,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("node {node}: {reason}")]
    Config { node: String, reason: String },
    #[error("node {node}: {reason}")]
    Fetch { node: String, reason: String },
    #[error(transparent)]
    KnownHosts(#[from] known_hosts::KnownHostsError),
    #[error("{0}")]
    Internal(String),
}

impl RemoteError {
    /// Worth another try: the machine may still be booting or its key not yet installed.
    pub fn is_retryable(&self) -> bool {
        matches!(self, RemoteError::Connect { .. } | RemoteError::Auth { .. })
    }

    pub fn is_timeout(&self) -> bool {
        matches!(self, RemoteError::Timeout { .. })
    }
}

/// Knobs of the executor. Defaults are sized for 1000 nodes.
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// SSH sessions in flight at once (`ssh.concurrency`; like ansible's forks and k0sctl's
    /// `--concurrency`). A node queued behind the others starts its clocks when its turn comes.
    pub concurrency: usize,
    pub connect_timeout: Duration,
    /// Extra connect attempts after the first, on connection or authentication failure.
    pub retries: u32,
    pub backoff_base: Duration,
    pub backoff_max: Duration,
    /// Bound of each remote command WITHOUT PROGRESS (no output for this long, counted from
    /// when the command starts on the node); its total run time is capped at
    /// `session::HARD_CAP_FACTOR` times this. The systemd step and the nodes' downloads
    /// (`unit_timeout`, `fetch_timeout`) are bounded the same way.
    pub command_timeout: Duration,
    /// Bound of each SFTP operation (one chunk write, fsync, close) during uploads.
    pub transfer_timeout: Duration,
    /// Bound of the systemd step (restarts can take a while).
    pub unit_timeout: Duration,
    /// Bound of a node's own downloads of its artifacts (hundreds of MiB on a slow link).
    pub fetch_timeout: Duration,
    /// Draw indicatif bars on stderr.
    pub progress: bool,
    /// Draw them under this MultiProgress (shared with the caller's status lines).
    pub multi_progress: Option<indicatif::MultiProgress>,
    /// Directory on the nodes for the sync's digest cache (see `sync::state_script`); one file
    /// per node name, so logical nodes sharing a host do not collide.
    pub digest_cache_dir: String,
    /// Pin the host key of a host seen for the first time (trust on first use, with a line
    /// saying so). Off for read-only commands (`status`): an unknown host is an error there.
    pub pin_unknown_hosts: bool,
}

impl Default for ExecutorOptions {
    fn default() -> Self {
        ExecutorOptions {
            concurrency: 128,
            connect_timeout: Duration::from_secs(10),
            retries: 4,
            backoff_base: Duration::from_millis(500),
            backoff_max: Duration::from_secs(10),
            command_timeout: Duration::from_secs(120),
            transfer_timeout: Duration::from_secs(60),
            unit_timeout: Duration::from_secs(180),
            fetch_timeout: Duration::from_secs(900),
            progress: true,
            multi_progress: None,
            digest_cache_dir: "/var/lib/k8sforge/digests".into(),
            pin_unknown_hosts: true,
        }
    }
}

/// What one node got in a phase.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NodeReport {
    pub node: String,
    pub files: usize,
    pub files_changed: usize,
    pub bytes_uploaded: u64,
    /// Every payload byte sent to the node over SSH in this phase (scripts and uploads).
    pub bytes_sent: u64,
    /// Bytes the node downloaded itself (from the artifact source or a seed node).
    pub bytes_fetched: u64,
    pub changed_paths: Vec<String>,
    pub units_restarted: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeFailure {
    pub node: String,
    pub error: String,
}

/// Outcome of one phase over all its nodes (`--output json` prints this).
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct PhaseReport {
    pub phase: String,
    pub nodes_total: usize,
    pub nodes_ok: usize,
    pub files_changed: usize,
    pub units_restarted: usize,
    pub failed: Vec<NodeFailure>,
    pub nodes: Vec<NodeReport>,
    pub elapsed_secs: f64,
}

impl PhaseReport {
    pub fn ok(&self) -> bool {
        self.failed.is_empty()
    }

    /// `(node, error)` for every failed node, the shape of `phases::PhaseSummary::failed_nodes`.
    pub fn failed_pairs(&self) -> Vec<(String, String)> {
        self.failed
            .iter()
            .map(|f| (f.node.clone(), f.error.clone()))
            .collect()
    }

    /// The one-line summary printed at the end of a phase.
    pub fn summary_line(&self) -> String {
        let mut s = format!(
            "{}: {}/{} nodes ok, {} files changed, {} units restarted, {} failed ({:.1}s)",
            self.phase,
            self.nodes_ok,
            self.nodes_total,
            self.files_changed,
            self.units_restarted,
            self.failed.len(),
            self.elapsed_secs
        );
        for f in &self.failed {
            s.push_str(&format!("\n  ✗ {}: {}", f.node, f.error));
        }
        s
    }
}

/// Outcome of a command on one node.
#[derive(Debug)]
pub struct NodeOutcome<T> {
    pub node: String,
    pub result: Result<T, RemoteError>,
}

/// Runs phases and commands on nodes of one cluster.
pub struct Executor {
    cluster_dir: PathBuf,
    known: KnownHosts,
    opts: ExecutorOptions,
    /// One connection per jump host (by its spec), opened by the first node that needs it.
    bastions: std::sync::Mutex<BTreeMap<String, Result<std::sync::Arc<bastion::Bastion>, String>>>,
}

impl Executor {
    /// Uses `<cluster_dir>/known_hosts` for host keys and the cluster key
    /// (`sshkeys::cluster_key_path`, `<cluster_dir>/ssh/id_ed25519`) for nodes that name none.
    pub fn new(cluster_dir: &Path, opts: ExecutorOptions) -> Result<Executor, RemoteError> {
        let known = KnownHosts::load(&crate::sshkeys::known_hosts_path(cluster_dir))?;
        Ok(Executor {
            cluster_dir: cluster_dir.to_path_buf(),
            known,
            opts,
            bastions: std::sync::Mutex::new(BTreeMap::new()),
        })
    }

    pub fn options(&self) -> &ExecutorOptions {
        &self.opts
    }

    /// The pin store, for providers that know their machines' host keys up front.
    pub fn known_hosts(&self) -> &KnownHosts {
        &self.known
    }

    /// How to reach `node` (as the bastion sees it, when it has one).
    pub fn target(&self, node: &Node) -> Result<Target, RemoteError> {
        Ok(Target {
            node: node.name.clone(),
            addr: SocketAddr::new(node.ssh.host, node.ssh.port),
            user: node.ssh.user.clone(),
            key: self.key_of(node),
        })
    }

    fn key_of(&self, node: &Node) -> PathBuf {
        match &node.ssh.key {
            Some(k) => expand_home(k),
            None => crate::sshkeys::cluster_key_path(&self.cluster_dir),
        }
    }

    /// The jump host of `node`, connected once and shared by every node behind it.
    pub fn bastion_for(
        &self,
        node: &Node,
    ) -> Result<Option<std::sync::Arc<bastion::Bastion>>, RemoteError> {
        let Some(spec_text) = &node.ssh.bastion else {
            return Ok(None);
        };
        let fail = |reason: String| RemoteError::Bastion {
            node: node.name.clone(),
            bastion: spec_text.clone(),
            reason,
        };
        let spec = bastion::BastionSpec::parse(spec_text).map_err(fail)?;
        // Held while connecting: the nodes waiting for it would only open more connections.
        let mut map = self.bastions.lock().unwrap_or_else(|e| e.into_inner());
        match map.get(spec_text) {
            Some(Ok(b)) => return Ok(Some(b.clone())),
            // Failed once (after its retries): the nodes behind it fail fast with the same reason.
            Some(Err(reason)) => return Err(fail(reason.clone())),
            None => {}
        }
        let addr = spec.resolve().map_err(fail)?;
        let target = Target {
            node: format!("bastion {spec_text}"),
            addr,
            user: spec.user.clone().unwrap_or_else(|| node.ssh.user.clone()),
            key: self.key_of(node),
        };
        match session::connect_bastion(&target, &self.known, &self.opts) {
            Ok(b) => {
                tracing::debug!(bastion = %spec_text, "connected to bastion");
                let b = std::sync::Arc::new(b);
                map.insert(spec_text.clone(), Ok(b.clone()));
                Ok(Some(b))
            }
            Err(e) => {
                let reason = e.to_string();
                map.insert(spec_text.clone(), Err(reason.clone()));
                Err(fail(reason))
            }
        }
    }

    pub fn connect(&self, node: &Node) -> Result<Conn, RemoteError> {
        let via = self.bastion_for(node)?;
        session::connect(&self.target(node)?, &self.known, &self.opts, via.as_deref())
    }

    /// Push every node's part of `bundle` and start/restart its units.
    pub fn apply(&self, inventory: &Inventory, bundle: &Bundle, phase: &str) -> PhaseReport {
        let plans: BTreeMap<String, NodePlan> = bundle
            .nodes
            .iter()
            .map(|(n, nb)| (n.clone(), NodePlan::from(nb)))
            .collect();
        self.apply_plans(inventory, &plans, phase)
    }

    /// Like `apply`, for plans that also carry streamed files (artifacts).
    pub fn apply_plans(
        &self,
        inventory: &Inventory,
        plans: &BTreeMap<String, NodePlan>,
        phase: &str,
    ) -> PhaseReport {
        let started = Instant::now();
        let items: Vec<(&String, &NodePlan, Option<&Node>)> = plans
            .iter()
            .map(|(name, plan)| (name, plan, inventory.node(name)))
            .collect();
        let results = fanout::parallel_each(
            &items,
            self.opts.concurrency,
            phase,
            self.opts.progress,
            self.opts.multi_progress.as_ref(),
            |(name, plan, node)| match node {
                Some(node) => self.apply_node(node, plan),
                None => Err(RemoteError::Config {
                    node: (*name).clone(),
                    reason: "is in the bundle but not in the inventory".into(),
                }),
            },
        );
        let mut report = PhaseReport {
            phase: phase.to_string(),
            nodes_total: items.len(),
            ..PhaseReport::default()
        };
        for ((name, _, _), r) in items.iter().zip(results) {
            match r {
                Ok(nr) => {
                    report.nodes_ok += 1;
                    report.files_changed += nr.files_changed;
                    report.units_restarted += nr.units_restarted.len();
                    report.nodes.push(nr);
                }
                Err(e) => report.failed.push(NodeFailure {
                    node: (*name).clone(),
                    error: e.to_string(),
                }),
            }
        }
        report.elapsed_secs = started.elapsed().as_secs_f64();
        report
    }

    /// Sync one node: one call to read the current state, uploads of what differs, one call to
    /// verify+install them, the plan's commands, then systemd.
    pub fn apply_node(&self, node: &Node, plan: &NodePlan) -> Result<NodeReport, RemoteError> {
        sync::validate(plan).map_err(|reason| RemoteError::Config {
            node: node.name.clone(),
            reason,
        })?;
        let mut conn = self.connect(node)?;
        let paths: Vec<&str> = plan.files.iter().map(|f| f.path.as_str()).collect();
        let mut report = NodeReport {
            node: node.name.clone(),
            files: plan.files.len(),
            ..NodeReport::default()
        };
        let mut uploads = Vec::new();
        let mut fix_meta = Vec::new();
        if !paths.is_empty() {
            let cache = format!("{}/{}", self.opts.digest_cache_dir, node.name);
            // How the units' state directories were found, before this plan writes anything
            // (teardown restores it); silent, so it can lead the state listing.
            let record = as_found::record_script(&as_found::state_dirs(&plan.units));
            let out = conn.exec(
                &format!(
                    "{}{}",
                    record.unwrap_or_default(),
                    sync::state_script(&paths, &cache)
                ),
                self.opts.command_timeout,
            )?;
            let state = sync::parse_state(&out.stdout).map_err(|reason| RemoteError::Ssh {
                node: node.name.clone(),
                what: "reading current files".into(),
                reason,
            })?;
            for f in &plan.files {
                match sync::decide(f, state.get(&f.path)) {
                    sync::FileAction::Skip => {}
                    sync::FileAction::Upload => uploads.push(f),
                    sync::FileAction::FixMeta => fix_meta.push(f),
                }
            }
        }
        for f in &uploads {
            report.bytes_uploaded += conn.upload(
                &f.source,
                &sync::temp_path(&f.path),
                self.opts.transfer_timeout,
            )?;
        }
        let staged = conn.take_staged();
        if !uploads.is_empty() || !fix_meta.is_empty() {
            conn.exec(
                &sync::finalize_script(&staged, &uploads, &fix_meta),
                self.opts.command_timeout,
            )?;
        }
        let changed: std::collections::BTreeSet<String> = uploads
            .iter()
            .chain(fix_meta.iter())
            .map(|f| f.path.clone())
            .collect();
        let mut changed = changed;
        let mut fetched_restarts: Vec<String> = Vec::new();
        if !plan.fetch.items.is_empty() {
            let script = fetch::script(&plan.fetch);
            let out = conn.exec_status(&script, self.opts.fetch_timeout)?;
            if out.status != 0 {
                return Err(RemoteError::Fetch {
                    node: node.name.clone(),
                    reason: out.stderr.trim().to_string(),
                });
            }
            let outcome = fetch::parse(&out.stdout);
            for i in &outcome.installed {
                if let Some(item) = plan.fetch.items.get(*i) {
                    changed.extend(item.paths());
                    for u in &item.restarts {
                        if !fetched_restarts.contains(u) {
                            fetched_restarts.push(u.clone());
                        }
                    }
                }
            }
            report.bytes_fetched = outcome.downloads.iter().map(|(b, _)| b).sum();
        }
        report.files_changed = changed.len();
        report.changed_paths = changed.iter().cloned().collect();
        if !plan.commands.is_empty() {
            let script = format!("set -eu\n{}\n", plan.commands.join("\n"));
            conn.exec(&script, self.opts.command_timeout)?;
        }
        let mut rp = sync::restart_plan(&plan.files, &changed, &plan.units);
        for u in fetched_restarts {
            if !rp.restart.contains(&u) {
                rp.restart.push(u);
            }
        }
        if let Some(script) = sync::units_script(&rp, &plan.units) {
            conn.exec(&script, self.opts.unit_timeout)?;
        }
        report.units_restarted = rp.restart;
        report.bytes_sent = conn.bytes_sent();
        Ok(report)
    }

    /// Run `cmd` on every node (bounded concurrency); non-zero exit is an error for that node.
    pub fn run_all(
        &self,
        nodes: &[&Node],
        cmd: &str,
        timeout: Duration,
    ) -> Vec<NodeOutcome<ExecOutput>> {
        let results = fanout::parallel_each(
            nodes,
            self.opts.concurrency,
            "exec",
            self.opts.progress,
            self.opts.multi_progress.as_ref(),
            |node| self.connect(node)?.exec(cmd, timeout),
        );
        nodes
            .iter()
            .zip(results)
            .map(|(n, result)| NodeOutcome {
                node: n.name.clone(),
                result,
            })
            .collect()
    }
}

fn expand_home(p: &str) -> PathBuf {
    match (p.strip_prefix("~/"), std::env::var_os("HOME")) {
        (Some(rest), Some(home)) => PathBuf::from(home).join(rest),
        _ => PathBuf::from(p),
    }
}
