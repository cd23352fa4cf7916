//! `k8sforge upgrade --to vX.Y.Z`: move a running cluster to another Kubernetes release, one
//! minor at a time, in the order the version-skew policy allows.
//!
//! 1. Preflight (`preflight`): the versions running now, read live (each apiserver's `/version`,
//!    each node's kubelet); the skew rules for the target; deprecated APIs clients still request
//!    that the target no longer serves.
//! 2. Plan (`plan`): etcd if the target row pairs another etcd, control planes one by one, then
//!    the node agents (control planes first, workers in batches, cordoned and drained), add-ons
//!    if their row changes.
//! 3. Record the plan in the state file and run the steps (`steps`), recording each one done.
//!    A crash or a failed step leaves the record: the next `upgrade --to` the same version
//!    resumes at the first step not done (a half-done step is run again: every step converges).
//!
//! The steps are the phases of `up` limited to the step's nodes, so binaries reach the nodes
//! exactly as at install time (pushed or fetched on the node, verified by checksum).

pub mod plan;
pub mod preflight;
pub mod steps;
pub mod version;

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use crate::inventory::Inventory;
use crate::profile::LoadedProfile;
use crate::remote::{Executor, ExecutorOptions};
use crate::state::{ClusterDir, State};
use plan::UpgradePlan;
use preflight::{DeprecatedApi, LiveVersions};
use steps::{StepResult, StepRunner};
use version::Version;

/// An upgrade in progress, kept in the state file until every step is done.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeRecord {
    /// RFC 3339.
    pub started_at: String,
    pub from: String,
    pub to: String,
    pub plan: UpgradePlan,
    /// Steps completed, from the start of `plan.steps`.
    pub steps_done: usize,
}

impl UpgradeRecord {
    pub fn of(state: &State) -> anyhow::Result<Option<UpgradeRecord>> {
        state
            .upgrade
            .clone()
            .map(serde_json::from_value)
            .transpose()
            .map_err(|e| {
                anyhow::anyhow!(
                    "the state file's `upgrade` record is unreadable ({e}); restore state.json from a backup or remove the record to start over"
                )
            })
    }

    fn store(&self, state: &mut State) -> anyhow::Result<()> {
        state.upgrade = Some(serde_json::to_value(self)?);
        Ok(())
    }
}

/// Why `verb` must not run on this cluster now, if it must not: an upgrade in progress, or a
/// profile naming another version than the one the last upgrade left the cluster on.
pub fn refusal(
    state: &State,
    loaded: &LoadedProfile,
    verb: &str,
) -> anyhow::Result<Option<String>> {
    let name = &loaded.profile.name;
    let profile_arg = loaded.cli_arg();
    if let Some(rec) = UpgradeRecord::of(state)? {
        return Ok(Some(format!(
            "cluster {name} has an upgrade from {} to {} in progress (started {}, {} of {} steps done).\n  `{verb}` would install {} on every node at once. Finish it first: `k8sforge upgrade --profile {profile_arg} --to {}` resumes where it stopped; then run `{verb}` again.",
            rec.from, rec.to, rec.started_at, rec.steps_done, rec.plan.steps.len(),
            loaded.profile.kubernetes.version, rec.to
        )));
    }
    if let Some(v) = &state.kubernetes_version {
        if *v != loaded.profile.kubernetes.version {
            return Ok(Some(format!(
                "cluster {name} runs Kubernetes {v} (since `k8sforge upgrade`), but the profile says {}.\n  `{verb}` would move every node to {} at once. Set kubernetes.version: {v} in the profile (or --set kubernetes.version={v}); to move to {} use `k8sforge upgrade --to {}`.",
                loaded.profile.kubernetes.version,
                loaded.profile.kubernetes.version,
                loaded.profile.kubernetes.version,
                loaded.profile.kubernetes.version
            )));
        }
    }
    Ok(None)
}

pub struct UpgradeOptions {
    /// Worker nodes per batch.
    pub batch: usize,
    pub dry_run: bool,
    pub mirror: Option<String>,
    pub trust_mirror_checksums: bool,
    pub progress: bool,
    /// How long a step's verification may take.
    pub verify_timeout: Duration,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct UpgradeReport {
    pub cluster: String,
    pub from: String,
    pub to: String,
    pub dry_run: bool,
    /// True when this run finished an upgrade an earlier run started.
    pub resumed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub live: Option<LiveVersions>,
    /// Deprecated APIs requested since the apiservers started (all of them, removed by the
    /// target or not).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub deprecated_apis: Vec<DeprecatedApi>,
    pub plan: UpgradePlan,
    pub steps_done_before: usize,
    /// Steps run by this invocation.
    pub steps: Vec<StepResult>,
    pub ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    pub elapsed_secs: f64,
}

fn now_rfc3339() -> String {
    OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Run (or resume) the upgrade of the locked cluster `dir` to `loaded`'s version (the command
/// sets the profile's `kubernetes.version` to the target).
pub fn run(
    loaded: &LoadedProfile,
    dir: &ClusterDir,
    opts: &UpgradeOptions,
) -> anyhow::Result<UpgradeReport> {
    let started = Instant::now();
    let profile = &loaded.profile;
    let to = profile.kubernetes.version.clone();
    let target = Version::parse(&to)
        .ok_or_else(|| anyhow::anyhow!("--to {to:?}: not a version of the form vX.Y.Z"))?;
    let to_row = crate::artifacts::release(&to).ok_or_else(|| {
        anyhow::anyhow!(
            "no release row for Kubernetes {to}: built-in rows are {}; a site's own builds need a kubernetes.extraReleases entry in the profile",
            crate::artifacts::known_kubernetes_versions().join(", ")
        )
    })?;
    let state = dir.load_state()?;
    if let Some(rec) = crate::rotate::RotationRecord::of(&state)? {
        anyhow::bail!(rec.refusal(&profile.name, "upgrade", &loaded.cli_arg()));
    }
    let provisioned = state
        .phases
        .contains_key(crate::phases::PhaseName::Provision.as_str());
    let Some(inventory): Option<Inventory> = state
        .inventory
        .clone()
        .filter(|i| provisioned && !i.planned)
    else {
        anyhow::bail!(
            "cluster {} has no provisioned nodes yet: nothing to upgrade (run `k8sforge up` first)",
            profile.name
        );
    };
    let exec = Executor::new(
        &dir.root,
        ExecutorOptions {
            progress: false,
            ..ExecutorOptions::default()
        },
    )?;
    let port = profile.api_server.port;
    let mut report = UpgradeReport {
        cluster: profile.name.clone(),
        from: String::new(),
        to: to.clone(),
        dry_run: opts.dry_run,
        resumed: false,
        live: None,
        deprecated_apis: Vec::new(),
        plan: UpgradePlan::default(),
        steps_done_before: 0,
        steps: Vec::new(),
        ok: true,
        message: None,
        elapsed_secs: 0.0,
    };

    let record = match UpgradeRecord::of(&state)? {
        Some(rec) if rec.to != to => anyhow::bail!(
            "cluster {} has an upgrade from {} to {} in progress ({} of {} steps done): finish it with `k8sforge upgrade --profile {} --to {}` before moving to {to}",
            profile.name, rec.from, rec.to, rec.steps_done, rec.plan.steps.len(), loaded.cli_arg(), rec.to
        ),
        Some(rec) => {
            report.resumed = true;
            report.steps_done_before = rec.steps_done;
            eprintln!(
                "Resuming the upgrade from {} to {} started at {} ({} of {} steps done).",
                rec.from,
                rec.to,
                rec.started_at,
                rec.steps_done,
                rec.plan.steps.len()
            );
            rec
        }
        None => {
            let live = preflight::live_versions(&exec, &inventory, port)
                .map_err(|e| anyhow::anyhow!("preflight: {e}"))?;
            let problems = preflight::skew_problems(&live, target);
            if !problems.is_empty() {
                anyhow::bail!(
                    "preflight refuses the upgrade of cluster {} to {to}:\n    {}",
                    profile.name,
                    problems.join("\n    ")
                );
            }
            let deprecated = preflight::deprecated_in_use(&exec, &inventory, port)
                .map_err(|e| anyhow::anyhow!("preflight (deprecated APIs): {e}"))?;
            let gone: Vec<String> = deprecated
                .iter()
                .filter(|d| d.gone_in(target))
                .map(DeprecatedApi::describe)
                .collect();
            report.deprecated_apis = deprecated;
            if !gone.is_empty() {
                anyhow::bail!(
                    "preflight refuses the upgrade of cluster {} to {to}: clients requested APIs that {to} no longer serves (apiserver_requested_deprecated_apis since each apiserver started):\n    {}\n  Move those clients and stored manifests to the replacement APIs (kubectl convert, the Kubernetes deprecated-API migration guide), restart the apiservers to reset the gauge, then run the upgrade again.",
                    profile.name,
                    gone.join("\n    ")
                );
            }
            let oldest = live
                .apiservers
                .values()
                .filter_map(|v| Version::parse(v).map(|p| (p, v.clone())))
                .min()
                .map(|(_, v)| v)
                .ok_or_else(|| anyhow::anyhow!("preflight: no apiserver reported its version"))?;
            report.from = oldest.clone();
            let everything_at_target = live.apiservers.values().all(|v| *v == to)
                && live.kubelets.values().all(|v| *v == to);
            report.live = Some(live);
            if everything_at_target {
                report.message = Some(format!("every apiserver and kubelet already runs {to}: nothing to do"));
                if !opts.dry_run {
                    let mut st = dir.load_state()?;
                    st.kubernetes_version = Some(to.clone());
                    dir.save_state(&st)?;
                }
                report.elapsed_secs = started.elapsed().as_secs_f64();
                return Ok(report);
            }
            let from_row = match crate::artifacts::release(&oldest) {
                Some(r) => r,
                None => {
                    eprintln!("note: the cluster runs {oldest}, for which this profile has no release row: etcd, the runtime and add-ons are compared with {to}'s row only");
                    to_row
                }
            };
            let plan = plan::build(&inventory, from_row, to_row, opts.batch);
            let rec = UpgradeRecord {
                started_at: now_rfc3339(),
                from: oldest,
                to: to.clone(),
                plan,
                steps_done: 0,
            };
            if !opts.dry_run {
                let mut st = dir.load_state()?;
                rec.store(&mut st)?;
                dir.save_state(&st)?;
            }
            rec
        }
    };
    report.from = record.from.clone();
    report.plan = record.plan.clone();
    if opts.dry_run {
        report.elapsed_secs = started.elapsed().as_secs_f64();
        return Ok(report);
    }

    let runner = StepRunner {
        loaded,
        dir,
        exec: &exec,
        inventory: &inventory,
        target: &to,
        mirror: opts.mirror.clone(),
        trust_mirror_checksums: opts.trust_mirror_checksums,
        verify_timeout: opts.verify_timeout,
    };
    let total = record.plan.steps.len();
    for (i, step) in record.plan.steps.iter().enumerate().skip(record.steps_done) {
        let title = format!(
            "[{}/{total}] {} {}",
            i + 1,
            step.kind.title(),
            if step.nodes.is_empty() {
                String::new()
            } else {
                format!("on {}", step.nodes.join(", "))
            }
        );
        let line = opts
            .progress
            .then(|| crate::phases::status::StatusLine::start(&title));
        if line.is_none() {
            eprintln!(" … {title}");
        }
        let result = runner.run(step);
        match line {
            Some(l) => l.finish(result.ok, &result.detail),
            None => eprintln!(
                " {} {title} ({:.1} s: {})",
                if result.ok { "✓" } else { "✗" },
                result.elapsed_secs,
                result.detail
            ),
        }
        let ok = result.ok;
        // The phases saved their own records into the state file: read it back before adding ours.
        let mut st = dir.load_state()?;
        if ok {
            let mut rec = record.clone();
            rec.steps_done = i + 1;
            rec.store(&mut st)?;
            dir.save_state(&st)?;
        } else {
            report.ok = false;
            report.message = Some(format!(
                "upgrade stopped at step {}/{total} ({title}):\n    {}\n  The steps before it are done and the cluster serves with mixed versions inside the skew policy. Fix the cause and run `k8sforge upgrade --profile {} --to {to}` again: it resumes at this step.",
                i + 1,
                result.detail,
                loaded.cli_arg()
            ));
            report.steps.push(result);
            break;
        }
        report.steps.push(result);
    }
    if report.ok {
        let mut st = dir.load_state()?;
        st.upgrade = None;
        st.kubernetes_version = Some(to.clone());
        dir.save_state(&st)?;
        report.message = Some(format!(
            "cluster {} upgraded from {} to {to}: {total} step(s)",
            profile.name, record.from
        ));
    }
    report.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(report)
}
