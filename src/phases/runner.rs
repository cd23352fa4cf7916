//! Runs the selected phases in order: one status line each, skip when the inputs are unchanged,
//! record completion in the state file after each success, stop at the first failure (a re-run
//! resumes there, because only completed phases are recorded).

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use serde::Serialize;

use super::status::StatusLine;
use super::{Context, Outcome, Phase, PhaseError, PhaseName, PhaseSummary};
use crate::profile::LoadedProfile;
use crate::state::{ClusterDir, PhaseRecord};

pub struct UpOptions {
    pub phases: Vec<PhaseName>,
    pub mirror: Option<String>,
    pub trust_mirror_checksums: bool,
    /// Progress bars on stderr (off for `--output json` consumers that want quiet stderr).
    pub progress: bool,
    /// Run phases even when their inputs are unchanged (re-converge nodes).
    pub force: bool,
    /// Replace adopted machines that drifted from the profile instead of refusing.
    pub replace_drifted: bool,
    /// Remote phases touch only these nodes, the network phase excepted (`node add`).
    pub limit_nodes: Option<std::collections::BTreeSet<String>>,
}

#[derive(Debug, Clone, Serialize)]
pub struct UpReport {
    pub cluster: String,
    pub phases: Vec<PhaseSummary>,
}

impl UpReport {
    pub fn ok(&self) -> bool {
        self.phases
            .iter()
            .all(|p| matches!(p.outcome, Outcome::Done | Outcome::Unchanged))
    }

    pub fn not_implemented(&self) -> bool {
        self.phases
            .iter()
            .any(|p| p.outcome == Outcome::NotImplemented)
    }
}

fn phase_for(name: PhaseName) -> Option<Box<dyn Phase>> {
    match name {
        PhaseName::Provision => Some(Box::new(super::provision::Provision)),
        PhaseName::Pki => Some(Box::new(super::pki::Pki)),
        PhaseName::Etcd => Some(Box::new(super::etcd::Etcd)),
        PhaseName::Runtime => Some(Box::new(super::runtime::Runtime)),
        PhaseName::Workers => Some(Box::new(super::workers::Workers)),
        PhaseName::Network => Some(Box::new(super::network::Network)),
        PhaseName::ControlPlane => Some(Box::new(super::control_plane::ControlPlane)),
        PhaseName::Addons => Some(Box::new(super::addons::Addons)),
        PhaseName::Training => Some(Box::new(super::training::Training)),
    }
}

/// Test builds only: `K8SFORGE_TEST_KILL_AFTER_WORK=<phase>` SIGKILLs this process once that
/// phase has done its work on the nodes and before its completion is recorded, the worst moment
/// for a crash (the failure-matrix test re-runs `up` from there). Release builds ignore it.
fn crash_hook(name: PhaseName) {
    if cfg!(debug_assertions)
        && std::env::var("K8SFORGE_TEST_KILL_AFTER_WORK").is_ok_and(|v| v == name.as_str())
    {
        eprintln!("K8SFORGE_TEST_KILL_AFTER_WORK={name}: killing k8sforge now (test hook)");
        // SAFETY: kill(2) of our own process id.
        unsafe {
            libc::kill(libc::getpid(), libc::SIGKILL);
        }
    }
}

fn now() -> String {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs().to_string())
        .unwrap_or_default()
}

pub fn run_up(
    loaded: &LoadedProfile,
    dir: &ClusterDir,
    opts: &UpOptions,
) -> anyhow::Result<UpReport> {
    let state = dir.load_state()?;
    let inventory = state.inventory.clone().filter(|i| !i.planned);
    let mut ctx = Context {
        loaded,
        dir,
        state,
        inventory,
        mirror: opts.mirror.clone(),
        trust_mirror_checksums: opts.trust_mirror_checksums,
        progress: opts.progress,
        replace_drifted: opts.replace_drifted,
        limit_nodes: opts.limit_nodes.clone(),
        bundle: None,
    };
    let mut report = UpReport {
        cluster: loaded.profile.name.clone(),
        phases: Vec::new(),
    };
    for &name in &opts.phases {
        let started = Instant::now();
        let summary = |outcome, detail: String| PhaseSummary {
            phase: name,
            outcome,
            files_changed: 0,
            units_restarted: 0,
            failed_nodes: Vec::new(),
            nodes_changed: Default::default(),
            warnings: Vec::new(),
            detail,
            bytes_sent: Default::default(),
            bytes_fetched: 0,
            elapsed: started.elapsed(),
        };
        let Some(phase) = phase_for(name) else {
            let line = StatusLine::start(name.as_str());
            line.finish(false, "not implemented yet");
            report.phases.push(summary(
                Outcome::NotImplemented,
                "not implemented yet".into(),
            ));
            // Later phases that do not depend on it still run; the run's exit status says
            // plainly that something was not done.
            continue;
        };
        let line = StatusLine::start(phase.title());
        let result = (|| -> Result<PhaseSummary, PhaseError> {
            let fp = phase.fingerprint(&ctx)?;
            if let (Some(fp), false) = (&fp, opts.force) {
                if ctx
                    .state
                    .phases
                    .get(name.as_str())
                    .is_some_and(|r| &r.inputs == fp)
                {
                    return Ok(summary(Outcome::Unchanged, "unchanged".into()));
                }
            }
            let s = phase.run(&mut ctx)?;
            crash_hook(name);
            if s.outcome == Outcome::Done {
                ctx.state.phases.insert(
                    name.as_str().to_string(),
                    PhaseRecord {
                        inputs: fp.unwrap_or_default(),
                        completed_at: now(),
                    },
                );
            }
            // Also after a failure: what the healthy nodes now hold is recorded.
            dir.save_state(&ctx.state)?;
            Ok(s)
        })();
        let s = match result {
            Ok(s) => s,
            Err(PhaseError::NotImplemented(_)) => {
                summary(Outcome::NotImplemented, "not implemented yet".into())
            }
            Err(e) => summary(Outcome::Failed, format!("{e:#}")),
        };
        let ok = matches!(s.outcome, Outcome::Done | Outcome::Unchanged);
        line.finish(ok, &s.detail);
        for (node, err) in &s.failed_nodes {
            eprintln!("     {node}: {err}");
        }
        for w in &s.warnings {
            for l in w.lines() {
                eprintln!("   {l}");
            }
        }
        let failed = s.outcome == Outcome::Failed;
        report.phases.push(s);
        if failed {
            break;
        }
    }
    Ok(report)
}
