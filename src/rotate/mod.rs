//! `k8sforge certs rotate`: renew leaf certificates and roll them out without downtime.
//!
//! 1. Select the leaves (`pki::rotate::select`) and re-issue them in a staging copy of the PKI.
//! 2. Render the bundle with the old and with the new PKI; the files that differ say which units
//!    on which nodes must restart (`plan`), ordered etcd → apiservers → controller-manager and
//!    scheduler → kubelets and kube-proxy in batches.
//! 3. Commit the new PKI to the state directory and record the plan in the state file, then run
//!    the stages (`rollout`), recording each one done. A crash or a failed stage leaves the record:
//!    the next `certs rotate` resumes at the first stage not done, without re-issuing.
//!
//! `--dry-run` stops after 2 and deletes the staging copy: nothing changes anywhere.

pub mod ca;
pub mod crashpoint;
pub mod monitoring;
pub mod plan;
pub mod rollout;

use std::time::Instant;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::inventory::Inventory;
use crate::pki::rotate::{self as pki_rotate, Renewed, Selection};
use crate::profile::LoadedProfile;
use crate::remote::{Executor, ExecutorOptions};
use crate::state::ClusterDir;
use plan::RolloutPlan;
use rollout::{Rollout, StageResult, Timeouts};

/// A rotation in progress, kept in the state file until every stage is done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct RotationRecord {
    /// RFC 3339.
    pub started_at: String,
    pub certificates: Vec<Renewed>,
    pub plan: RolloutPlan,
    /// Stages completed, from the start of `plan.stages`.
    pub stages_done: usize,
    /// Set for a CA or service-account key rotation: which step `plan` belongs to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca: Option<ca::CaProgress>,
}

impl RotationRecord {
    /// The rotation in progress recorded in `state`, if any.
    pub fn of(state: &crate::state::State) -> anyhow::Result<Option<RotationRecord>> {
        state
            .rotation
            .clone()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| {
                anyhow::anyhow!(
                    "the state file's `rotation` record is unreadable ({e}); restore state.json from a backup or remove the record to start over"
                )
            })
    }

    /// Why `verb` refuses to run now and how to finish the rotation (the certificates are
    /// already new in the state directory: `verb` would push them to every node at once).
    pub fn refusal(&self, cluster: &str, verb: &str, profile_arg: &str) -> String {
        let total = self.plan.stages.len();
        let next = self
            .plan
            .stages
            .get(self.stages_done)
            .map(|s| {
                let nodes: Vec<&str> = s.nodes.iter().map(|n| n.node.as_str()).collect();
                format!(
                    "; next: stage {}/{total}, {} on {}",
                    self.stages_done + 1,
                    s.kind.title(),
                    nodes.join(", ")
                )
            })
            .unwrap_or_default();
        let (what, flags) = match &self.ca {
            Some(p) => (p.describe(), p.flow.resume_flags()),
            None => ("certificate rotation".to_string(), ""),
        };
        format!(
            "cluster {cluster} has a {what} in progress (started {}, {} of {total} stages done{next}).\n  `{verb}` would install the renewed certificates on every node at once and restart etcd and the apiservers together. Finish the rotation first: `k8sforge certs rotate --profile {profile_arg}{flags}` resumes where it stopped (`--dry-run` shows the remaining plan); then run `{verb}` again.",
            self.started_at, self.stages_done
        )
    }

    pub(crate) fn store(&self, state: &mut crate::state::State) -> anyhow::Result<()> {
        state.rotation = Some(serde_json::to_value(self)?);
        Ok(())
    }
}

pub struct RotateOptions {
    pub selection: Selection,
    /// Nodes per kubelet/kube-proxy batch.
    pub batch: usize,
    pub dry_run: bool,
    pub timeouts: Timeouts,
    pub progress: bool,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct RotateReport {
    pub cluster: String,
    pub dry_run: bool,
    /// True when this run finished a rotation an earlier run started.
    pub resumed: bool,
    pub certificates: Vec<Renewed>,
    pub plan: RolloutPlan,
    /// Stages run by this invocation (after those an earlier run finished).
    pub stages: Vec<StageResult>,
    pub stages_done_before: usize,
    /// The monitoring scrape certificates Secret, when the profile enables monitoring.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scrape_secret: Option<monitoring::Outcome>,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub elapsed_secs: f64,
}

pub(crate) fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Run (or resume) a rotation on the cluster whose state directory `dir` is, locked.
pub fn run(
    loaded: &LoadedProfile,
    dir: &ClusterDir,
    opts: &RotateOptions,
) -> anyhow::Result<RotateReport> {
    let started = Instant::now();
    let profile = &loaded.profile;
    let mut state = dir.load_state()?;
    let Some(inventory) = state.inventory.clone().filter(|i| !i.planned) else {
        anyhow::bail!(
            "cluster {} has no provisioned nodes yet: nothing to rotate (run `k8sforge up` first)",
            profile.name
        );
    };
    let mut report = RotateReport {
        cluster: profile.name.clone(),
        dry_run: opts.dry_run,
        resumed: false,
        certificates: Vec::new(),
        plan: RolloutPlan::default(),
        stages: Vec::new(),
        stages_done_before: 0,
        scrape_secret: None,
        ok: true,
        message: None,
        elapsed_secs: 0.0,
    };

    let record = match RotationRecord::of(&state)? {
        Some(rec) if rec.ca.is_some() => {
            let p = rec
                .ca
                .as_ref()
                .map(|p| (p.describe(), p.flow.resume_flags()));
            let (what, flags) = p.unwrap_or_default();
            anyhow::bail!(
                "cluster {} has a {what} in progress: finish it first with `k8sforge certs rotate --profile {}{flags}`",
                profile.name,
                loaded.cli_arg()
            );
        }
        Some(rec) => {
            report.resumed = true;
            report.stages_done_before = rec.stages_done;
            eprintln!(
                "Resuming the rotation started at {} ({} of {} stages done); new certificates are not issued again.",
                rec.started_at,
                rec.stages_done,
                rec.plan.stages.len()
            );
            if opts.selection != Selection::All {
                eprintln!("  (the certificate selection of this command applies after the resumed rotation finishes: run it again then)");
            }
            rec
        }
        None => {
            let Some((renewed, plan, staging)) = prepare(loaded, dir, &inventory, opts)? else {
                report.message = Some("no certificate matches the selection: nothing to do".into());
                report.elapsed_secs = started.elapsed().as_secs_f64();
                return Ok(report);
            };
            if opts.dry_run {
                report.certificates = renewed;
                report.plan = plan;
                report.elapsed_secs = started.elapsed().as_secs_f64();
                return Ok(report);
            }
            // New PKI into the state directory (one atomic batch), then the record: a crash in
            // between leaves new files and no record, and the next run simply issues again.
            let writes = pki_rotate::changed_material(staging.path(), &dir.root)?;
            crate::fsutil::write_batch_atomic(&writes)?;
            drop(staging);
            let rec = RotationRecord {
                started_at: now_rfc3339(),
                certificates: renewed,
                plan,
                stages_done: 0,
                ca: None,
            };
            rec.store(&mut state)?;
            dir.save_state(&state)?;
            rec
        }
    };
    report.certificates = record.certificates.clone();
    report.plan = record.plan.clone();
    if opts.dry_run {
        report.elapsed_secs = started.elapsed().as_secs_f64();
        return Ok(report);
    }

    let mut record = record;
    roll_out(
        loaded,
        dir,
        &mut state,
        &inventory,
        &mut record,
        opts,
        &mut report.stages,
        &mut report.scrape_secret,
        "leaf",
    )
    .map(|failed| {
        if let Some(m) = failed {
            report.ok = false;
            report.message = Some(m);
        }
    })?;
    let total = record.plan.stages.len();
    if report.ok {
        state.rotation = None;
        dir.save_state(&state)?;
        report.message = Some(format!(
            "{} certificate(s) renewed; {} stage(s), {} unit restart(s)",
            report.certificates.len(),
            total,
            record.plan.restarts()
        ));
    }
    report.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Run the stages of `record.plan` not done yet, recording each one done in the state file.
/// Returns the message of the stage that failed, if one did (the record then stays, and a
/// re-run resumes at that stage). `point` names the crash points (`crashpoint`).
///
/// First, on every run and resume, the monitoring scrape Secret is brought to the committed
/// material (`monitoring`: why this order is safe); `secret` says what that did.
#[allow(clippy::too_many_arguments)]
pub(crate) fn roll_out(
    loaded: &LoadedProfile,
    dir: &ClusterDir,
    state: &mut crate::state::State,
    inventory: &Inventory,
    record: &mut RotationRecord,
    opts: &RotateOptions,
    results: &mut Vec<StageResult>,
    secret: &mut Option<monitoring::Outcome>,
    point: &str,
) -> anyhow::Result<Option<String>> {
    let profile = &loaded.profile;
    let flags = record
        .ca
        .as_ref()
        .map(|p| p.flow.resume_flags())
        .unwrap_or_default();
    // Service-account keys are not in the Secret.
    let sa_only = record.ca.as_ref().is_some_and(|p| p.flow != ca::Flow::Ca);
    if !sa_only {
        match monitoring::refresh(profile, inventory, &dir.root) {
            Ok(outcome) => *secret = outcome,
            Err(e) => {
                return Ok(Some(format!(
                    "rotation stopped before stage {} of {}: the monitoring scrape certificates Secret {}/{} could not be brought to the new certificates: {e}\n  Without it Prometheus keeps scraping with the certificates of before. The cluster keeps serving; fix the API access and run `k8sforge certs rotate --profile {}{flags}` again: it resumes here.",
                    record.stages_done + 1,
                    record.plan.stages.len(),
                    crate::monitoring::NAMESPACE,
                    crate::monitoring::scrape::TLS_SECRET,
                    loaded.cli_arg()
                )))
            }
        }
    }
    if record.stages_done >= record.plan.stages.len() {
        return Ok(None);
    }
    let bundle = crate::render::render(profile, inventory, &dir.root)?;
    let exec = Executor::new(
        &dir.root,
        ExecutorOptions {
            progress: false,
            ..ExecutorOptions::default()
        },
    )?;
    let rollout = Rollout {
        exec: &exec,
        inventory,
        bundle: &bundle,
        api_port: profile.api_server.port,
        timeouts: opts.timeouts.clone(),
        etcd_order: record
            .plan
            .stages
            .iter()
            .filter(|s| s.kind == plan::StageKind::Etcd)
            .flat_map(|s| s.nodes.iter().map(|n| n.node.clone()))
            .collect(),
    };
    let total = record.plan.stages.len();
    let stages = record.plan.stages.clone();
    for (i, stage) in stages.iter().enumerate().skip(record.stages_done) {
        let names: Vec<&str> = stage.nodes.iter().map(|n| n.node.as_str()).collect();
        let title = format!(
            "[{}/{total}] {} on {}",
            i + 1,
            stage.kind.title(),
            names.join(", ")
        );
        let line = opts
            .progress
            .then(|| crate::phases::status::StatusLine::start(&title));
        let result = rollout.run_stage(stage);
        let detail = stage_detail(&result);
        match line {
            Some(l) => l.finish(result.ok, &detail),
            None => eprintln!(" {} {title} ({detail})", if result.ok { "✓" } else { "✗" }),
        }
        if !result.ok {
            let failed: Vec<String> = result
                .nodes
                .iter()
                .filter_map(|n| n.error.as_ref().map(|e| format!("{}: {e}", n.node)))
                .collect();
            results.push(result);
            return Ok(Some(format!(
                "rotation stopped at stage {}/{total} ({title}):\n    {}\n  Stages before it are done; the nodes after it still use their previous files, which stay trusted, so the cluster keeps serving. Fix the cause and run `k8sforge certs rotate --profile {}{flags}` again: it resumes at this stage.",
                i + 1,
                failed.join("\n    "),
                loaded.cli_arg()
            )));
        }
        // What the nodes now hold, for `plan` to compare with.
        for sn in &stage.nodes {
            if let Some(nb) = bundle.nodes.get(&sn.node) {
                for f in nb.files.iter().filter(|f| sn.files.contains(&f.path)) {
                    state
                        .applied_digests
                        .insert(format!("{}{}", sn.node, f.path), f.sha256());
                }
            }
        }
        record.stages_done = i + 1;
        record.store(state)?;
        dir.save_state(state)?;
        results.push(result);
        crashpoint::hit(&format!("{point}:stage-{}", i + 1));
    }
    Ok(None)
}

fn stage_detail(r: &StageResult) -> String {
    let restarted: usize = r.nodes.iter().map(|n| n.restarted.len()).sum();
    let files: usize = r.nodes.iter().map(|n| n.files_changed).sum();
    let not_running: Vec<String> = r
        .nodes
        .iter()
        .flat_map(|n| {
            n.not_running
                .iter()
                .map(move |u| format!("{u} on {}", n.node))
        })
        .collect();
    let mut s = format!(
        "{files} files, {restarted} restarts, {:.1} s",
        r.elapsed_secs
    );
    if !not_running.is_empty() {
        s.push_str(&format!(
            "; not running, so not restarted: {}",
            not_running.join(", ")
        ));
    }
    s
}

/// Select, re-issue in a staging copy, and plan. None when the selection is empty.
///
/// Everything happens in the staging copy: the state directory is only read, so a dry run
/// writes nothing there and a refused run (incomplete PKI) leaves it as it was.
fn prepare(
    loaded: &LoadedProfile,
    dir: &ClusterDir,
    inventory: &Inventory,
    opts: &RotateOptions,
) -> anyhow::Result<Option<(Vec<Renewed>, RolloutPlan, tempfile::TempDir)>> {
    let profile = &loaded.profile;
    let now = OffsetDateTime::now_utc();
    let certs = pki_rotate::certificates(profile, inventory);
    let selected = pki_rotate::select(&certs, &dir.root, &opts.selection, now)?;
    if selected.is_empty() {
        return Ok(None);
    }
    let staging = staging_dir(dir, opts.dry_run, ".rotate-")?;
    pki_rotate::copy_material(&dir.root, staging.path())?;
    // The copy must hold a complete, current PKI before anything is compared.
    require_complete_pki(profile, inventory, staging.path())?;
    let old = crate::render::render(profile, inventory, staging.path())?;
    let renewed = pki_rotate::reissue(profile, inventory, staging.path(), &selected, now)?;
    let new = crate::render::render(profile, inventory, staging.path())?;
    let changed = plan::changed_files(&old, &new);
    let plan = plan::build(inventory, &changed, opts.batch);
    Ok(Some((renewed, plan, staging)))
}

/// A private scratch directory for a copy of the PKI. A real run stages beside the state (the
/// same file system as what it commits to); a dry run stages in the system's temporary
/// directory, so that not even a crash of it leaves anything in the state directory. Both are
/// 0700 and removed when dropped.
pub(crate) fn staging_dir(
    dir: &ClusterDir,
    dry_run: bool,
    prefix: &str,
) -> std::io::Result<tempfile::TempDir> {
    let mut b = tempfile::Builder::new();
    b.prefix(prefix);
    if dry_run {
        b.tempdir()
    } else {
        b.tempdir_in(&dir.root)
    }
}

/// `pki::ensure` on a copy of the material at `staged`: refuse (naming what is missing or
/// invalid) when it had to issue anything. Derived files it rewrites (kubeconfigs) stay in the
/// copy and are committed with the rotation.
pub(crate) fn require_complete_pki(
    profile: &crate::profile::Profile,
    inventory: &Inventory,
    staged: &std::path::Path,
) -> anyhow::Result<()> {
    let report = crate::pki::ensure(profile, inventory, staged)?;
    if !report.issued.is_empty() {
        anyhow::bail!(
            "the PKI of cluster {} is incomplete ({} missing or invalid: {}); run `k8sforge up` to install it before rotating (nothing was changed)",
            profile.name,
            report.issued.len(),
            report.issued.join(", ")
        );
    }
    Ok(())
}
