//! `certs rotate --ca` and `certs rotate --sa-keys [--finish]`: rotations in steps, each step a
//! change of the PKI material (`pki::ca_rotate`) rolled out with the same plan, order and
//! checks as a leaf rotation (`plan`, `rollout`).
//!
//! CA (`--ca`, all CAs or `--only-ca`):
//! 1. generate — new CA beside the old one, nothing deployed;
//! 2. trust-both — every trust bundle holds old + new, rolled out;
//! 3. reissue — the new CA signs, every leaf it signs is re-issued and rolled out;
//! 4. drop-old — the old CA leaves every bundle, rolled out; then the record is cleared (done).
//!
//! Service-account keys (`--sa-keys`): sa-generate, sa-trust-both (apiservers accept both
//! public keys), sa-switch (the new key signs). The old public key stays accepted until
//! `--sa-keys --finish` (sa-finish): tokens signed by it keep working until then.
//!
//! Each step: (a) prepare in a staging copy of the material (`STAGED` under the cluster
//! directory), render old and new, plan; record the plan with `committed: false`; (b) commit the
//! staged files into the state directory and record `committed: true`; (c) run the stages,
//! recording each; (d) record the next step. A crash anywhere resumes: before (a) is recorded
//! the step is prepared again; between (a) and (b) the same staged files are committed; after
//! (b) the recorded plan's remaining stages run.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::plan::{self, RolloutPlan};
use super::rollout::StageResult;
use super::{crashpoint, RotateOptions, RotationRecord};
use crate::inventory::Inventory;
use crate::pki::ca_rotate;
use crate::pki::rotate::{self as pki_rotate, Renewed};
use crate::pki::table::CaId;
use crate::profile::LoadedProfile;
use crate::state::ClusterDir;

/// Staging directory of a step, under the cluster directory (0700).
pub const STAGED: &str = ".ca-rotate-staged";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Flow {
    Ca,
    SaKeys,
    SaFinish,
}

impl Flow {
    pub fn steps(self) -> &'static [Step] {
        match self {
            Flow::Ca => &[
                Step::Generate,
                Step::TrustBoth,
                Step::Reissue,
                Step::DropOld,
            ],
            Flow::SaKeys => &[Step::SaGenerate, Step::SaTrustBoth, Step::SaSwitch],
            Flow::SaFinish => &[Step::SaFinish],
        }
    }

    /// The flags that resume this flow.
    pub fn resume_flags(self) -> &'static str {
        match self {
            Flow::Ca => " --ca",
            Flow::SaKeys => " --sa-keys",
            Flow::SaFinish => " --sa-keys --finish",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Step {
    Generate,
    TrustBoth,
    Reissue,
    DropOld,
    SaGenerate,
    SaTrustBoth,
    SaSwitch,
    SaFinish,
}

impl Step {
    pub fn name(self) -> &'static str {
        match self {
            Step::Generate => "generate",
            Step::TrustBoth => "trust-both",
            Step::Reissue => "reissue",
            Step::DropOld => "drop-old",
            Step::SaGenerate => "sa-generate",
            Step::SaTrustBoth => "sa-trust-both",
            Step::SaSwitch => "sa-switch",
            Step::SaFinish => "sa-finish",
        }
    }

    pub fn describe(self) -> &'static str {
        match self {
            Step::Generate => "generate the new CA (state directory only, key 0600)",
            Step::TrustBoth => "trust old + new CA in every bundle (etcd, apiserver, kubelet, front-proxy, kubeconfigs, tokens' ca.crt)",
            Step::Reissue => "the new CA signs: re-issue and roll out every leaf it signs",
            Step::DropOld => "remove the old CA from every bundle",
            Step::SaGenerate => "generate the new service-account signing key (state directory only, 0600)",
            Step::SaTrustBoth => "apiservers accept the current and the new public key",
            Step::SaSwitch => "the new key signs tokens; the previous public key stays accepted until --finish",
            Step::SaFinish => "apiservers accept only the signing key's public key",
        }
    }
}

/// Where a CA or service-account rotation is, inside the rotation record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CaProgress {
    pub flow: Flow,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub cas: Vec<CaId>,
    /// Index into `flow.steps()` of the step in progress.
    pub step: usize,
    /// The step's material is in the state directory (its plan is being rolled out).
    pub committed: bool,
    /// The prepared step's staging directory (name under the cluster directory), until committed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub staged: Option<String>,
}

impl CaProgress {
    pub fn describe(&self) -> String {
        match self.flow {
            Flow::Ca => format!("CA rotation ({})", ca_names(&self.cas)),
            Flow::SaKeys => "service-account key rotation".into(),
            Flow::SaFinish => "service-account key rotation finish".into(),
        }
    }

    fn current(&self) -> Option<Step> {
        self.flow.steps().get(self.step).copied()
    }
}

fn ca_names(cas: &[CaId]) -> String {
    cas.iter().map(|c| c.name()).collect::<Vec<_>>().join(", ")
}

/// One step in the report.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct StepReport {
    pub step: Step,
    pub description: String,
    /// Done by an earlier run.
    pub done_before: bool,
    pub plan: RolloutPlan,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub certificates: Vec<Renewed>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub stages: Vec<StageResult>,
    /// The monitoring scrape certificates Secret, brought to this step's material before its
    /// stages (when the profile enables monitoring).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scrape_secret: Option<super::monitoring::Outcome>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CaReport {
    pub cluster: String,
    pub flow: Flow,
    pub cas: Vec<String>,
    pub dry_run: bool,
    pub resumed: bool,
    pub steps: Vec<StepReport>,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub elapsed_secs: f64,
}

/// Run, resume or (dry run) plan a CA or service-account key rotation, locked by `dir`.
pub fn run(
    loaded: &LoadedProfile,
    dir: &ClusterDir,
    flow: Flow,
    cas: &[CaId],
    opts: &RotateOptions,
) -> anyhow::Result<CaReport> {
    let started = Instant::now();
    let profile = &loaded.profile;
    let mut state = dir.load_state()?;
    let Some(inventory) = state.inventory.clone().filter(|i| !i.planned) else {
        anyhow::bail!(
            "cluster {} has no provisioned nodes yet: nothing to rotate (run `k8sforge up` first)",
            profile.name
        );
    };
    let mut report = CaReport {
        cluster: profile.name.clone(),
        flow,
        cas: cas.iter().map(|c| c.name().to_string()).collect(),
        dry_run: opts.dry_run,
        resumed: false,
        steps: Vec::new(),
        ok: true,
        message: None,
        elapsed_secs: 0.0,
    };
    let arg = loaded.cli_arg();
    let mut record = match RotationRecord::of(&state)? {
        Some(rec) => match &rec.ca {
            None => anyhow::bail!(
                "cluster {} has a certificate rotation in progress: finish it first with `k8sforge certs rotate --profile {arg}`",
                profile.name
            ),
            Some(p) if p.flow != flow => anyhow::bail!(
                "cluster {} has a {} in progress (step {}): finish it first with `k8sforge certs rotate --profile {arg}{}`",
                profile.name,
                p.describe(),
                p.current().map(Step::name).unwrap_or("done"),
                p.flow.resume_flags()
            ),
            Some(p) => {
                report.resumed = true;
                report.cas = p.cas.iter().map(|c| c.name().to_string()).collect();
                if flow == Flow::Ca && p.cas != cas {
                    eprintln!(
                        "  (resuming the rotation of {}; the CA selection of this command is not used)",
                        ca_names(&p.cas)
                    );
                }
                eprintln!(
                    "Resuming the {} started at {} at step {} ({}).",
                    p.describe(),
                    rec.started_at,
                    p.step + 1,
                    p.current().map(Step::name).unwrap_or("done")
                );
                rec
            }
        },
        None => {
            preflight(loaded, dir, &inventory, flow, opts.dry_run)?;
            RotationRecord {
                started_at: super::now_rfc3339(),
                certificates: Vec::new(),
                plan: RolloutPlan::default(),
                stages_done: 0,
                ca: Some(CaProgress {
                    flow,
                    cas: if flow == Flow::Ca {
                        cas.to_vec()
                    } else {
                        Vec::new()
                    },
                    step: 0,
                    committed: false,
                    staged: None,
                }),
            }
        }
    };
    let Some(progress) = record.ca.clone() else {
        anyhow::bail!("internal error: CA rotation record without progress");
    };
    for step in flow.steps().iter().take(progress.step) {
        report.steps.push(StepReport {
            step: *step,
            description: step.describe().into(),
            done_before: true,
            plan: RolloutPlan::default(),
            certificates: Vec::new(),
            stages: Vec::new(),
            scrape_secret: None,
        });
    }
    if opts.dry_run {
        dry_run(
            loaded,
            dir,
            &inventory,
            &record,
            &progress,
            opts,
            &mut report,
        )?;
        report.elapsed_secs = started.elapsed().as_secs_f64();
        return Ok(report);
    }

    while let Some(step) = record.ca.as_ref().and_then(CaProgress::current) {
        let p = record.ca.clone().unwrap_or(progress.clone());
        if !p.committed {
            let staged_ok = p
                .staged
                .as_deref()
                .is_some_and(|s| dir.root.join(s).is_dir());
            if !staged_ok {
                prepare_step(loaded, dir, &inventory, &mut record, step, opts)?;
                record.store(&mut state)?;
                dir.save_state(&state)?;
                crashpoint::hit(&format!("{}:prepared", step.name()));
            }
            commit_step(dir, &mut record)?;
            record.store(&mut state)?;
            dir.save_state(&state)?;
            let _ = std::fs::remove_dir_all(dir.root.join(STAGED));
            crashpoint::hit(&format!("{}:committed", step.name()));
        }
        let mut sr = StepReport {
            step,
            description: step.describe().into(),
            done_before: false,
            plan: record.plan.clone(),
            certificates: if step == Step::Reissue {
                record.certificates.clone()
            } else {
                Vec::new()
            },
            stages: Vec::new(),
            scrape_secret: None,
        };
        if !record.plan.stages.is_empty() {
            eprintln!(
                "step {}/{} {}: {} ({} stage(s))",
                p.step + 1,
                flow.steps().len(),
                step.name(),
                step.describe(),
                record.plan.stages.len()
            );
        }
        let failed = super::roll_out(
            loaded,
            dir,
            &mut state,
            &inventory,
            &mut record,
            opts,
            &mut sr.stages,
            &mut sr.scrape_secret,
            step.name(),
        )?;
        report.steps.push(sr);
        if let Some(m) = failed {
            report.ok = false;
            report.message = Some(format!("{} step {}: {m}", p.describe(), step.name()));
            report.elapsed_secs = started.elapsed().as_secs_f64();
            return Ok(report);
        }
        // Next step.
        if let Some(p) = record.ca.as_mut() {
            p.step += 1;
            p.committed = false;
            p.staged = None;
        }
        record.plan = RolloutPlan::default();
        record.stages_done = 0;
        record.store(&mut state)?;
        dir.save_state(&state)?;
        crashpoint::hit(&format!("{}:done", step.name()));
    }
    state.rotation = None;
    dir.save_state(&state)?;
    let _ = std::fs::remove_dir_all(dir.root.join(STAGED));
    let restarts: usize = report.steps.iter().map(|s| s.plan.restarts()).sum();
    report.message = Some(match flow {
        Flow::Ca => format!(
            "CA rotation of {} done: {} certificate(s) re-issued, {} unit restart(s)",
            report.cas.join(", "),
            record.certificates.len(),
            restarts
        ),
        Flow::SaKeys => format!(
            "service-account signing key rotated ({restarts} unit restart(s)); the previous public key is still accepted: run `k8sforge certs rotate --profile {arg} --sa-keys --finish` once tokens signed by it are no longer used"
        ),
        Flow::SaFinish => format!(
            "the previous service-account public key is no longer accepted ({restarts} unit restart(s))"
        ),
    });
    report.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(report)
}

/// Refusals before a new rotation starts. The PKI's completeness is checked in a copy, so a
/// refusal (or a dry run) writes nothing into the state directory.
fn preflight(
    loaded: &LoadedProfile,
    dir: &ClusterDir,
    inventory: &Inventory,
    flow: Flow,
    dry_run: bool,
) -> anyhow::Result<()> {
    let profile = &loaded.profile;
    let arg = loaded.cli_arg();
    let check = super::staging_dir(dir, dry_run, ".ca-rotate-check-")?;
    pki_rotate::copy_material(&dir.root, check.path())?;
    super::require_complete_pki(profile, inventory, check.path())?;
    drop(check);
    if !dry_run {
        // Complete: this only rewrites derived files (kubeconfigs) whose content is stale, so
        // the first step's "old" render is what `up` would install.
        crate::pki::ensure(profile, inventory, &dir.root)?;
    }
    let accepted = ca_rotate::sa_accepted_keys(&dir.root);
    match flow {
        Flow::SaKeys if accepted > 1 => anyhow::bail!(
            "the apiservers of cluster {} still accept the previous service-account key ({accepted} public keys in pki/sa.pub): finish that rotation first with `k8sforge certs rotate --profile {arg} --sa-keys --finish`",
            profile.name
        ),
        Flow::SaFinish if accepted <= 1 => anyhow::bail!(
            "cluster {}: no service-account key rotation to finish (pki/sa.pub holds only the signing key's public key)",
            profile.name
        ),
        _ => Ok(()),
    }
}

/// Apply `step` to the material under `cluster_dir`; the certificates re-issued, if any.
fn transform(
    loaded: &LoadedProfile,
    inventory: &Inventory,
    cluster_dir: &Path,
    step: Step,
    cas: &[CaId],
) -> anyhow::Result<Vec<Renewed>> {
    let profile = &loaded.profile;
    let now = OffsetDateTime::now_utc();
    match step {
        Step::Generate => ca_rotate::generate(profile, inventory, cluster_dir, cas, now)?,
        Step::TrustBoth => ca_rotate::trust_both(profile, inventory, cluster_dir, cas, now)?,
        Step::Reissue => {
            return Ok(ca_rotate::promote(
                profile,
                inventory,
                cluster_dir,
                cas,
                now,
            )?)
        }
        Step::DropOld => ca_rotate::drop_old(profile, inventory, cluster_dir, cas, now)?,
        Step::SaGenerate => ca_rotate::sa_generate(profile, cluster_dir)?,
        Step::SaTrustBoth => ca_rotate::sa_trust_both(cluster_dir)?,
        Step::SaSwitch => ca_rotate::sa_switch(cluster_dir)?,
        Step::SaFinish => ca_rotate::sa_finish(cluster_dir)?,
    }
    Ok(Vec::new())
}

/// Prepare `step` in `<cluster>/STAGED` and put its plan into `record` (not committed).
fn prepare_step(
    loaded: &LoadedProfile,
    dir: &ClusterDir,
    inventory: &Inventory,
    record: &mut RotationRecord,
    step: Step,
    opts: &RotateOptions,
) -> anyhow::Result<()> {
    let staged = dir.root.join(STAGED);
    if staged.exists() {
        std::fs::remove_dir_all(&staged)?;
    }
    crate::fsutil::ensure_dir(&staged, crate::fsutil::PRIVATE_DIR)?;
    let cas = record
        .ca
        .as_ref()
        .map(|p| p.cas.clone())
        .unwrap_or_default();
    let plan = plan_step(loaded, inventory, &dir.root, &staged, step, &cas, opts)?;
    record.plan = plan.0;
    if step == Step::Reissue {
        record.certificates = plan.1;
    }
    record.stages_done = 0;
    if let Some(p) = record.ca.as_mut() {
        p.staged = Some(STAGED.into());
        p.committed = false;
    }
    Ok(())
}

/// Copy `from`'s material into `staged`, apply `step` there, and plan the rollout from the
/// difference of the two renders.
fn plan_step(
    loaded: &LoadedProfile,
    inventory: &Inventory,
    from: &Path,
    staged: &Path,
    step: Step,
    cas: &[CaId],
    opts: &RotateOptions,
) -> anyhow::Result<(RolloutPlan, Vec<Renewed>)> {
    let profile = &loaded.profile;
    pki_rotate::copy_material(from, staged)?;
    let old = crate::render::render(profile, inventory, from)?;
    let renewed = transform(loaded, inventory, staged, step, cas)?;
    let new = crate::render::render(profile, inventory, staged)?;
    let changed = plan::changed_files(&old, &new);
    Ok((plan::build(inventory, &changed, opts.batch), renewed))
}

/// Move the staged material into the state directory: changed files in one atomic batch, then
/// files the step removed.
fn commit_step(dir: &ClusterDir, record: &mut RotationRecord) -> anyhow::Result<()> {
    let staged = dir.root.join(STAGED);
    let writes = pki_rotate::changed_material(&staged, &dir.root)?;
    let removed = removed_material(&staged, &dir.root)?;
    crate::fsutil::write_batch_atomic(&writes)?;
    for p in removed {
        match std::fs::remove_file(&p) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(anyhow::anyhow!("removing {}: {e}", p.display())),
        }
    }
    if let Some(p) = record.ca.as_mut() {
        p.committed = true;
        p.staged = None;
    }
    Ok(())
}

/// Files under `root`'s pki/ and kubeconfigs/ that `staged` no longer has.
fn removed_material(staged: &Path, root: &Path) -> std::io::Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    let mut stack = vec![root.join("pki"), root.join("kubeconfigs")];
    while let Some(d) = stack.pop() {
        if !d.exists() {
            continue;
        }
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let p = e.path();
            if e.file_type()?.is_dir() {
                stack.push(p);
                continue;
            }
            let name = e.file_name();
            // Temp files of an interrupted atomic write are not material.
            if name.to_string_lossy().starts_with('.') {
                continue;
            }
            let rel = p.strip_prefix(root).unwrap_or(&p);
            if !staged.join(rel).exists() {
                out.push(p);
            }
        }
    }
    Ok(out)
}

/// The remaining steps and their plans, computed in a throw-away copy of the material.
fn dry_run(
    loaded: &LoadedProfile,
    dir: &ClusterDir,
    inventory: &Inventory,
    record: &RotationRecord,
    progress: &CaProgress,
    opts: &RotateOptions,
    report: &mut CaReport,
) -> anyhow::Result<()> {
    let steps = progress.flow.steps();
    let mut first = progress.step;
    if progress.committed {
        if let Some(step) = progress.current() {
            let mut plan = record.plan.clone();
            plan.stages
                .drain(..record.stages_done.min(plan.stages.len()));
            report.steps.push(StepReport {
                step,
                description: step.describe().into(),
                done_before: false,
                plan,
                certificates: Vec::new(),
                stages: Vec::new(),
                scrape_secret: None,
            });
        }
        first += 1;
    }
    // Outside the state directory (`staging_dir`): a dry run writes nothing there.
    let scratch = super::staging_dir(dir, true, ".ca-rotate-dry-run-")?;
    // Each simulated step starts from the previous one's result; the first from a copy of the
    // state directory's material, completed as a real run's preflight would (derived files).
    let mut from = scratch.path().join("base");
    crate::fsutil::ensure_dir(&from, crate::fsutil::PRIVATE_DIR)?;
    pki_rotate::copy_material(&dir.root, &from)?;
    if record.stages_done == 0 && progress.step == 0 && !progress.committed {
        super::require_complete_pki(&loaded.profile, inventory, &from)?;
    }
    for (i, step) in steps.iter().enumerate().skip(first) {
        let staged = scratch.path().join(format!("step-{i}"));
        crate::fsutil::ensure_dir(&staged, crate::fsutil::PRIVATE_DIR)?;
        let (plan, certificates) = plan_step(
            loaded,
            inventory,
            &from,
            &staged,
            *step,
            &progress.cas,
            opts,
        )?;
        report.steps.push(StepReport {
            step: *step,
            description: step.describe().into(),
            done_before: false,
            plan,
            certificates,
            stages: Vec::new(),
            scrape_secret: None,
        });
        from = staged;
    }
    Ok(())
}

/// The plan as text (what `--dry-run` prints).
pub fn describe(report: &CaReport) -> String {
    let total = report.steps.len();
    let mut s = String::new();
    for (i, st) in report.steps.iter().enumerate() {
        if st.done_before {
            s.push_str(&format!(
                "step {}/{total} {}: done\n",
                i + 1,
                st.step.name()
            ));
            continue;
        }
        s.push_str(&format!(
            "step {}/{total} {}: {}\n",
            i + 1,
            st.step.name(),
            st.description
        ));
        if !st.certificates.is_empty() {
            s.push_str(&format!(
                "  {} certificate(s) re-issued\n",
                st.certificates.len()
            ));
        }
        if st.plan.stages.is_empty() {
            s.push_str("  nothing to push or restart\n");
        } else {
            s.push_str(&format!(
                "  {} stage(s), {} file push(es), {} unit restart(s):\n",
                st.plan.stages.len(),
                st.plan.files(),
                st.plan.restarts()
            ));
            for line in plan::describe(&st.plan).lines() {
                s.push_str("  ");
                s.push_str(line);
                s.push('\n');
            }
        }
    }
    s
}
