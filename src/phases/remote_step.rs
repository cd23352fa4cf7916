//! What the remote phases share: take the part of each node's bundle a phase owns (its units, the
//! files that restart them, its path prefixes) plus the binaries of its artifacts, push it with the
//! executor (checksums first, atomic, restart only what changed), and turn the executor's report
//! into the phase summary.

use std::collections::BTreeMap;
use std::time::Instant;

use super::{Context, Outcome, PhaseError, PhaseName, PhaseSummary};
use crate::artifacts::{self, images, ArtifactSource, ClusterImage, Component};
use crate::inventory::Node;
use crate::remote::sync::{FileSource, NodePlan, SyncFile};
use crate::remote::{Executor, ExecutorOptions, PhaseReport};
use crate::render::node::IMAGES_UNIT;

/// The slice of the cluster one phase is responsible for.
pub struct RemoteStep {
    pub phase: PhaseName,
    /// Which nodes take part.
    pub nodes: fn(&Node) -> bool,
    /// Units this phase owns, in start order.
    pub units: &'static [&'static str],
    /// Files under these prefixes belong to the phase even when they restart nothing.
    pub path_prefixes: &'static [&'static str],
    /// Artifacts whose binaries the phase installs, with the units each restarts on change.
    pub components: &'static [(Component, &'static [&'static str])],
    /// Ship the cluster's image archives (imported by `k8sforge-images.service`).
    pub images: bool,
}

impl RemoteStep {
    fn owns(&self, f: &crate::render::BundleFile) -> bool {
        f.restarts.iter().any(|u| self.units.contains(&u.as_str()))
            || self.path_prefixes.iter().any(|p| f.path.starts_with(p))
    }
}

pub fn executor(ctx: &Context) -> Result<Executor, PhaseError> {
    let opts = ExecutorOptions {
        progress: ctx.progress,
        ..ExecutorOptions::default()
    };
    Executor::new(&ctx.dir.root, opts).map_err(|e| PhaseError::Failed(e.to_string()))
}

/// The profile's pinned release and the artifact source (profile + `--mirror` flags).
fn release_and_source(
    ctx: &Context,
) -> Result<(&'static artifacts::Release, ArtifactSource), PhaseError> {
    let p = &ctx.loaded.profile;
    let release = artifacts::release(&p.kubernetes.version).ok_or_else(|| {
        PhaseError::Failed(format!(
            "no pinned release for Kubernetes {}",
            p.kubernetes.version
        ))
    })?;
    let source = ArtifactSource::from_profile(
        &p.artifacts,
        ctx.mirror.as_deref(),
        ctx.trust_mirror_checksums,
    )
    .map_err(|e| PhaseError::Failed(e.to_string()))?;
    Ok((release, source))
}

/// Fetch (cached, verified) and extract the artifacts of `components`.
fn artifact_files(
    ctx: &Context,
    components: &[(Component, &[&str])],
) -> Result<Vec<(Component, SyncFile)>, PhaseError> {
    if components.is_empty() {
        return Ok(Vec::new());
    }
    let (release, source) = release_and_source(ctx)?;
    let wanted: Vec<Component> = components.iter().map(|(c, _)| *c).collect();
    let home = ctx.dir.root.parent().unwrap_or(&ctx.dir.root);
    let prepared = artifacts::prepare(home, release, &source, &wanted)
        .map_err(|e| PhaseError::Failed(e.to_string()))?;
    let mut files = Vec::new();
    for (art, installed) in &prepared {
        let restarts = components
            .iter()
            .find(|(c, _)| *c == art.component)
            .map(|(_, r)| *r)
            .unwrap_or(&[]);
        files.extend(
            artifacts::extract::sync_files(installed, restarts)
                .into_iter()
                .map(|f| (art.component, f)),
        );
    }
    Ok(files)
}

/// The image archives every pod-running node holds: the pause image always (no pod starts
/// without it), and the add-on images the mirror lists (the `addons` phase says which one is
/// missing when it needs it).
fn image_files(ctx: &Context) -> Result<Vec<SyncFile>, PhaseError> {
    let (release, source) = release_and_source(ctx)?;
    let fail = |e: artifacts::ArtifactError| PhaseError::Failed(e.to_string());
    let listed = artifacts::source::load_manifest(&source.mirror)
        .map_err(fail)?
        .map(|(_, m)| m.images)
        .unwrap_or_default();
    let wanted: Vec<ClusterImage> = ClusterImage::ALL
        .into_iter()
        .filter(|i| *i == ClusterImage::Pause || listed.iter().any(|e| e.name == i.name()))
        .collect();
    let home = ctx.dir.root.parent().unwrap_or(&ctx.dir.root);
    let prepared = images::prepare(home, release, &source, &wanted).map_err(fail)?;
    prepared
        .into_iter()
        .map(|(img, local)| {
            // The cache verified the archive against its SHA-256 before naming it by it.
            let sha256 = img.digest.hex().to_string();
            Ok(SyncFile {
                path: img.image.node_path(),
                mode: crate::fsutil::PUBLIC,
                owner: "root:root".into(),
                sha256,
                source: FileSource::Local(local),
                restarts: vec![IMAGES_UNIT.to_string()],
            })
        })
        .collect()
}

/// Build every participating node's plan for `step`.
pub fn plans(
    ctx: &mut Context,
    step: &RemoteStep,
) -> Result<BTreeMap<String, NodePlan>, PhaseError> {
    let binaries = artifact_files(ctx, step.components)?;
    let images = if step.images {
        image_files(ctx)?
    } else {
        Vec::new()
    };
    let inv = ctx
        .inventory
        .clone()
        .ok_or(PhaseError::NoInventory { phase: step.phase })?;
    let bundle = ctx.bundle()?;
    let mut plans = BTreeMap::new();
    for node in inv.nodes.iter().filter(|n| (step.nodes)(n)) {
        let Some(nb) = bundle.nodes.get(&node.name) else {
            continue;
        };
        let mut files: Vec<SyncFile> = nb
            .files
            .iter()
            .filter(|f| step.owns(f))
            .map(SyncFile::from_bundle)
            .collect();
        // The server tarball holds every control-plane binary: a node gets the Kubernetes
        // binaries its role needs (the bundle lists them), not the whole release.
        files.extend(
            binaries
                .iter()
                .filter(|(c, f)| {
                    !matches!(
                        c,
                        Component::KubernetesServer | Component::Kubelet | Component::Kubectl
                    ) || nb.binaries.iter().any(|b| b.path == f.path)
                })
                .map(|(_, f)| f.clone()),
        );
        files.extend(images.iter().cloned());
        let units = nb
            .units
            .iter()
            .filter(|u| step.units.contains(&u.as_str()))
            .cloned()
            .collect();
        plans.insert(
            node.name.clone(),
            NodePlan {
                files,
                units,
                commands: Vec::new(),
            },
        );
    }
    Ok(plans)
}

/// Push the plans and summarise. Nodes that fail are listed; the others complete.
pub fn apply(ctx: &mut Context, step: &RemoteStep) -> Result<(Executor, PhaseReport), PhaseError> {
    let plans = plans(ctx, step)?;
    let exec = executor(ctx)?;
    let inv = ctx
        .inventory
        .as_ref()
        .ok_or(PhaseError::NoInventory { phase: step.phase })?;
    let report = exec.apply_plans(inv, &plans, step.phase.as_str());
    // Record what the nodes that succeeded now hold (rendered files; binaries are pinned).
    for nr in &report.nodes {
        if let Some(plan) = plans.get(&nr.node) {
            for f in plan
                .files
                .iter()
                .filter(|f| matches!(f.source, FileSource::Bytes(_)))
            {
                ctx.state
                    .applied_digests
                    .insert(format!("{}{}", nr.node, f.path), f.sha256.clone());
            }
        }
    }
    Ok((exec, report))
}

pub fn summary(
    phase: PhaseName,
    report: &PhaseReport,
    started: Instant,
    detail: String,
) -> PhaseSummary {
    PhaseSummary {
        phase,
        outcome: if report.ok() {
            Outcome::Done
        } else {
            Outcome::Failed
        },
        files_changed: report.files_changed,
        units_restarted: report.units_restarted,
        failed_nodes: report.failed_pairs(),
        warnings: Vec::new(),
        detail: if report.ok() {
            detail
        } else {
            format!(
                "{} of {} nodes failed",
                report.failed.len(),
                report.nodes_total
            )
        },
        elapsed: started.elapsed(),
    }
}
