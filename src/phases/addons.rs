//! Phase `addons` (Hard Way: "Deploying the DNS Cluster Add-on", plus the RBAC for kubelet
//! access and the NVIDIA device plugin): render the add-on manifests for the profile, validate
//! them against the typed API, server-side apply them through the admin kubeconfig on this
//! host, and wait for CoreDNS and the device plugin to roll out.
//!
//! With `monitoring` enabled it also applies the monitoring add-on's own objects
//! (`monitoring::render`, `monitoring::tls_secret`), then the in-cluster stack: kube-prometheus's
//! pinned release files fetched through the artifact source, overlaid (`monitoring::stack`),
//! CRDs Established before the custom resources, workloads awaited.
//!
//! No fingerprint: applying unchanged manifests is a cheap no-op on the API server, and running
//! every time also repairs objects someone edited or deleted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::{gpu_health, Context, Outcome, Phase, PhaseError, PhaseName, PhaseSummary};
use crate::addons::{self, AddonImages};
use crate::inventory::Role;
use crate::kube::{self, Change};
use crate::pki::layout;

/// How long workloads get to roll out: image import already happened, so this covers
/// scheduling, container start and readiness probes on a busy node.
pub const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(300);

/// How long GPU nodes get, once the device plugin is rolled out, to advertise their GPUs
/// (`K8SFORGE_GPU_GATE_TIMEOUT` seconds overrides it).
pub const GPU_GATE_TIMEOUT: Duration = Duration::from_secs(120);

fn gpu_gate_timeout() -> Duration {
    std::env::var("K8SFORGE_GPU_GATE_TIMEOUT")
        .ok()
        .and_then(|v| v.parse().ok())
        .map(Duration::from_secs)
        .unwrap_or(GPU_GATE_TIMEOUT)
}

pub struct Addons;

/// The add-on images the nodes hold: the release's defaults, or what the mirror's list says
/// (the same references the runtime phase imported into containerd).
fn images(ctx: &Context) -> Result<AddonImages, PhaseError> {
    let p = &ctx.loaded.profile;
    let (pinned, source) = ctx.release_and_source()?;
    let refs = crate::artifacts::ImageRefs::for_source(pinned, &p.artifacts.images, &source)
        .map_err(|e| PhaseError::Failed(e.to_string()))?;
    Ok(AddonImages::from(&refs))
}

impl Phase for Addons {
    fn name(&self) -> PhaseName {
        PhaseName::Addons
    }

    fn title(&self) -> &'static str {
        "Installing add-ons"
    }

    fn run(&self, ctx: &mut Context) -> Result<PhaseSummary, PhaseError> {
        let started = Instant::now();
        let images = images(ctx)?;
        let mut manifests = addons::render(&ctx.loaded.profile, &images)
            .map_err(|e| PhaseError::Failed(e.to_string()))?;
        manifests.extend(monitoring_manifests(ctx)?);
        let objects = kube::validate_all(manifests.iter().map(|m| (m.name, m.yaml.as_str())))
            .map_err(|e| PhaseError::Failed(e.to_string()))?;
        let stack = monitoring_stack(ctx)?;
        let kubeconfig = layout::kubeconfig_path(&ctx.dir.root, layout::ADMIN);
        // The admin kubeconfig names the load balancer or one control plane: when that does not
        // answer from this host, try each apiserver directly (their certificate carries the
        // node addresses).
        let fallbacks: Vec<String> = ctx
            .inventory
            .iter()
            .flat_map(|inv| inv.with_role(Role::ControlPlane))
            .map(|n| {
                format!(
                    "https://{}:{}",
                    n.internal_ip, ctx.loaded.profile.api_server.port
                )
            })
            .collect();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| PhaseError::Failed(format!("cannot start the async runtime: {e}")))?;
        // GPU nodes and the nvidia.com/gpu count each must advertise.
        let expected: BTreeMap<String, u32> = ctx
            .inventory
            .iter()
            .flat_map(gpu_health::gpu_nodes)
            .map(|n| (n.name.clone(), n.gpus))
            .collect();
        let (cluster, report, workloads, stack) = rt
            .block_on(async {
                let cluster = kube::connect_with_fallbacks(&kubeconfig, &fallbacks).await?;
                let report = kube::apply(&cluster, &objects).await?;
                let workloads = kube::wait_ready(&cluster, &objects, ROLLOUT_TIMEOUT).await?;
                kube::gpu::wait_gpus(&cluster, &expected, gpu_gate_timeout()).await?;
                let stack = match &stack {
                    Some((release, objs)) => Some((
                        *release,
                        crate::monitoring::install::install(&cluster, objs, true).await?,
                    )),
                    None => None,
                };
                Ok::<_, kube::KubeError>((cluster, report, workloads, stack))
            })
            .map_err(|e| PhaseError::Failed(e.to_string()))?;
        let gpu = gpu_gate(ctx, &rt, &cluster)?;
        let (created, changed, unchanged) = (
            report.count(Change::Created),
            report.count(Change::Changed),
            report.count(Change::Unchanged),
        );
        let gpu_detail = if gpu.total == 0 {
            String::new()
        } else {
            format!(
                "; {} of {} GPU nodes verified ({} untainted now)",
                gpu.total - gpu.failed.len(),
                gpu.total,
                gpu.lifted
            )
        };
        let (stack_written, stack_detail) = match &stack {
            Some((release, r)) => {
                let written = r.applied.count(Change::Created) + r.applied.count(Change::Changed);
                (
                    written,
                    format!(
                        "; monitoring stack ({release}): {} objects, {written} written, {} CRDs established, {} workloads ready",
                        r.applied.objects.len(),
                        r.crds,
                        r.workloads
                    ),
                )
            }
            None => (0, String::new()),
        };
        Ok(PhaseSummary {
            phase: PhaseName::Addons,
            outcome: if gpu.failed.is_empty() {
                Outcome::Done
            } else {
                Outcome::Failed
            },
            // Objects written on the API server: 0 on a re-run with nothing to do.
            files_changed: created + changed + stack_written,
            units_restarted: 0,
            failed_nodes: gpu.failed,
            nodes_changed: Default::default(),
            warnings: Vec::new(),
            detail: format!(
                "{} add-ons applied: {created} created, {changed} changed, {unchanged} unchanged; {workloads} workloads ready{gpu_detail}{stack_detail}",
                manifests.len()
            ),
            bytes_sent: Default::default(),
            bytes_fetched: 0,
            elapsed: started.elapsed(),
        })
    }
}

/// The monitoring add-on's own objects (scrape RBAC, scrape configuration, the certificates
/// Secret) when the profile enables monitoring; nothing otherwise.
fn monitoring_manifests(ctx: &Context) -> Result<Vec<addons::Manifest>, PhaseError> {
    let p = &ctx.loaded.profile;
    let Some(inv) = ctx.inventory.as_ref() else {
        return Ok(Vec::new());
    };
    if !p.monitoring_enabled() {
        return Ok(Vec::new());
    }
    let mut out =
        crate::monitoring::render(p, inv).map_err(|e| PhaseError::Failed(e.to_string()))?;
    out.push(
        crate::monitoring::tls_secret(&layout::pki_dir(&ctx.dir.root))
            .map_err(|e| PhaseError::Failed(e.to_string()))?,
    );
    Ok(out)
}

/// The in-cluster monitoring stack, validated (None when monitoring is off): the pinned
/// kube-prometheus release for the cluster's Kubernetes, fetched through the artifact source.
#[allow(clippy::type_complexity)]
fn monitoring_stack(
    ctx: &Context,
) -> Result<Option<(crate::monitoring::upstream::Release, Vec<kube::Object>)>, PhaseError> {
    use crate::monitoring::{install, stack, upstream};
    let p = &ctx.loaded.profile;
    if !p.monitoring_enabled() || ctx.inventory.is_none() {
        return Ok(None);
    }
    let fail = |e: &dyn std::fmt::Display| PhaseError::Failed(format!("monitoring stack: {e}"));
    let release = upstream::Release::for_kubernetes(&p.kubernetes.version).map_err(|e| fail(&e))?;
    let (_, source) = ctx.release_and_source()?;
    let home = ctx.dir.root.parent().unwrap_or(&ctx.dir.root);
    let local = upstream::materialize(home, &source.mirror, release).map_err(|e| fail(&e))?;
    let rendered = stack::render(&local, p).map_err(|e| fail(&e))?;
    let objects = install::validate(&rendered).map_err(|e| fail(&e))?;
    Ok(Some((release, objects)))
}

/// What the GPU health gate did.
struct GpuGate {
    total: usize,
    lifted: usize,
    /// (node, what failed) for every GPU node whose preflight did not pass; it stays tainted.
    failed: Vec<(String, String)>,
}

/// Run every GPU node's preflight and lift the unverified taint of those that pass.
fn gpu_gate(
    ctx: &Context,
    rt: &tokio::runtime::Runtime,
    cluster: &kube::Cluster,
) -> Result<GpuGate, PhaseError> {
    let Some(inv) = ctx.inventory.as_ref() else {
        return Ok(GpuGate {
            total: 0,
            lifted: 0,
            failed: Vec::new(),
        });
    };
    let nodes = gpu_health::gpu_nodes(inv);
    if nodes.is_empty() {
        return Ok(GpuGate {
            total: 0,
            lifted: 0,
            failed: Vec::new(),
        });
    }
    let exec = super::remote_step::executor(ctx)?;
    let command = gpu_health::command(ctx.loaded.profile.gpu.health.preflight_command.as_deref());
    let results = gpu_health::run(&exec, &nodes, &command);
    let mut gate = GpuGate {
        total: nodes.len(),
        lifted: 0,
        failed: Vec::new(),
    };
    for p in results {
        if !p.passed {
            gate.failed.push((
                p.node.clone(),
                format!(
                    "GPU preflight failed, node stays tainted {}: {}",
                    crate::render::gpu::UNVERIFIED_TAINT,
                    p.failures.join("; ")
                ),
            ));
            continue;
        }
        let lifted = rt
            .block_on(kube::gpu::remove_taint(
                cluster,
                &p.node,
                crate::render::gpu::UNVERIFIED_TAINT,
            ))
            .map_err(|e| PhaseError::Failed(e.to_string()))?;
        if lifted {
            tracing::info!(node = %p.node, "GPU preflight passed; taint lifted");
            gate.lifted += 1;
        }
    }
    Ok(gate)
}
