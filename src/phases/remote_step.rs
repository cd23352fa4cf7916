//! What the remote phases share: take the part of each node's bundle a phase owns (its units, the
//! files that restart them, its path prefixes) plus the binaries of its artifacts, push it with the
//! executor (checksums first, atomic, restart only what changed), and turn the executor's report
//! into the phase summary.

use std::collections::BTreeMap;
use std::time::Instant;

use super::{Context, Outcome, PhaseError, PhaseName, PhaseSummary};
use crate::artifacts::{self, images, ClusterImage, Component};
use crate::profile::schema::Delivery;
use crate::remote::sync::{FileSource, NodePlan, SyncFile};
use crate::remote::{Executor, PhaseReport};
use crate::render::node::IMAGES_UNIT;

pub use super::step::{executor, RemoteStep};

/// Fetch (cached, verified) and extract the artifacts of `components`.
fn artifact_files(
    ctx: &Context,
    components: &[(Component, &[&str])],
) -> Result<Vec<(Component, SyncFile)>, PhaseError> {
    if components.is_empty() {
        return Ok(Vec::new());
    }
    let (release, source) = ctx.release_and_source()?;
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
            installed
                .iter()
                .map(|f| (art.component, SyncFile::from_installed(f, restarts))),
        );
    }
    Ok(files)
}

/// The image archives every pod-running node holds: those the mirror lists. Images it does not
/// list are pulled online by digest (through `artifacts.registryMirrors` when set).
fn image_files(ctx: &Context) -> Result<Vec<SyncFile>, PhaseError> {
    let (release, source) = ctx.release_and_source()?;
    let fail = |e: artifacts::ArtifactError| PhaseError::Failed(e.to_string());
    let listed = artifacts::source::load_manifest(&source.mirror)
        .map_err(fail)?
        .map(|(_, m)| m.images)
        .unwrap_or_default();
    let wanted: Vec<ClusterImage> = ClusterImage::ALL
        .into_iter()
        .filter(|i| listed.iter().any(|e| e.name == i.name()))
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

/// Build every participating node's plan for `step`; with nodes that fetch for themselves,
/// also the report of seeding the seed nodes (seed mode).
pub fn plans(
    ctx: &mut Context,
    step: &RemoteStep,
) -> Result<(BTreeMap<String, NodePlan>, Option<PhaseReport>), PhaseError> {
    let (release, source) = ctx.release_and_source()?;
    let push = super::node_fetch::delivery(ctx, &source) == Delivery::Push;
    let binaries = if push {
        artifact_files(ctx, step.components)?
    } else {
        Vec::new()
    };
    let images = if step.images && push {
        image_files(ctx)?
    } else {
        Vec::new()
    };
    let inv = ctx
        .inventory
        .clone()
        .ok_or(PhaseError::NoInventory { phase: step.phase })?;
    // Peers must learn a new node's routes: the network phase is never limited.
    let limit = ctx
        .limit_nodes
        .clone()
        .filter(|_| step.phase != PhaseName::Network);
    let bundle = ctx.bundle()?;
    let mut plans = BTreeMap::new();
    for node in inv
        .nodes
        .iter()
        .filter(|n| (step.nodes)(n) && limit.as_ref().is_none_or(|l| l.contains(&n.name)))
    {
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
                ..NodePlan::default()
            },
        );
    }
    let seeding = super::node_fetch::attach(ctx, step, release, &source, &mut plans)?;
    Ok((plans, seeding))
}

/// Push the plans and summarise. Nodes that fail are listed; the others complete.
pub fn apply(ctx: &mut Context, step: &RemoteStep) -> Result<(Executor, PhaseReport), PhaseError> {
    let exec = executor(ctx)?;
    let report = apply_with(ctx, step, &exec)?;
    Ok((exec, report))
}

/// [`apply`] with an executor the phase already holds (one bastion connection for the phase).
pub fn apply_with(
    ctx: &mut Context,
    step: &RemoteStep,
    exec: &Executor,
) -> Result<PhaseReport, PhaseError> {
    let (plans, seeding) = plans(ctx, step)?;
    let inv = ctx
        .inventory
        .as_ref()
        .ok_or(PhaseError::NoInventory { phase: step.phase })?;
    let mut report = exec.apply_plans(inv, &plans, step.phase.as_str());
    if let Some(seeding) = seeding {
        // The seeds' bytes are part of the phase's cost.
        for s in seeding.nodes {
            match report.nodes.iter_mut().find(|n| n.node == s.node) {
                Some(n) => {
                    n.bytes_sent += s.bytes_sent;
                    n.bytes_fetched += s.bytes_fetched;
                }
                None => report.nodes.push(s),
            }
        }
    }
    // Record what the nodes that succeeded now hold (rendered files; binaries are pinned).
    for nr in &report.nodes {
        if let Some(plan) = plans.get(&nr.node) {
            let rec = ctx
                .state
                .installed_artifacts
                .entry(step.phase.as_str().to_string())
                .or_default();
            rec.nodes.insert(nr.node.clone());
            rec.paths.extend(
                plan.files
                    .iter()
                    .filter(|f| matches!(f.source, FileSource::Local(_)))
                    .map(|f| f.path.clone()),
            );
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
    Ok(report)
}

/// Pull the online images on the nodes the step succeeded on (see `image_pull`).
pub fn prepull_images(
    ctx: &Context,
    exec: &Executor,
    report: &mut PhaseReport,
) -> Result<(), PhaseError> {
    let (release, source) = ctx.release_and_source()?;
    super::image_pull::prepull(ctx, exec, release, &source, report)
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
        nodes_changed: report
            .nodes
            .iter()
            .filter(|n| n.files_changed > 0)
            .map(|n| (n.node.clone(), n.files_changed))
            .collect(),
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
        bytes_sent: report
            .nodes
            .iter()
            .map(|n| (n.node.clone(), n.bytes_sent))
            .collect(),
        bytes_fetched: report.nodes.iter().map(|n| n.bytes_fetched).sum(),
        elapsed: started.elapsed(),
    }
}
