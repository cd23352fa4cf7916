//! Phase `addons` (Hard Way: "Deploying the DNS Cluster Add-on", plus the RBAC for kubelet
//! access and the NVIDIA device plugin): render the add-on manifests for the profile, validate
//! them against the typed API, server-side apply them through the admin kubeconfig on this
//! host, and wait for CoreDNS and the device plugin to roll out.
//!
//! No fingerprint: applying unchanged manifests is a cheap no-op on the API server, and running
//! every time also repairs objects someone edited or deleted.

use std::time::{Duration, Instant};

use super::{Context, Outcome, Phase, PhaseError, PhaseName, PhaseSummary};
use crate::addons::{self, AddonImages};
use crate::inventory::Role;
use crate::kube::{self, Change};
use crate::pki::layout;

/// How long workloads get to roll out: image import already happened, so this covers
/// scheduling, container start and readiness probes on a busy node.
pub const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(300);

pub struct Addons;

/// The add-on images the nodes hold: the release's defaults, or what the mirror's list says
/// (the same references the runtime phase imported into containerd).
fn images(ctx: &Context) -> Result<AddonImages, PhaseError> {
    let p = &ctx.loaded.profile;
    let pinned = crate::artifacts::release(&p.kubernetes.version).ok_or_else(|| {
        PhaseError::Failed(format!(
            "no pinned release for Kubernetes {}",
            p.kubernetes.version
        ))
    })?;
    let source = crate::artifacts::ArtifactSource::from_profile(
        &p.artifacts,
        ctx.mirror.as_deref(),
        ctx.trust_mirror_checksums,
    )
    .map_err(|e| PhaseError::Failed(e.to_string()))?;
    let refs = crate::artifacts::ImageRefs::for_source(pinned, &source)
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
        let manifests = addons::render(&ctx.loaded.profile, &images)
            .map_err(|e| PhaseError::Failed(e.to_string()))?;
        let objects = kube::validate_all(manifests.iter().map(|m| (m.name, m.yaml.as_str())))
            .map_err(|e| PhaseError::Failed(e.to_string()))?;
        let kubeconfig = layout::kubeconfig_path(&ctx.dir.root, layout::ADMIN);
        // With several control planes and no load balancer the admin kubeconfig names the
        // per-node API proxy on 127.0.0.1, which exists only on the nodes: from this host, try
        // each apiserver directly (their certificate carries the node addresses).
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
        let (report, workloads) = rt
            .block_on(async {
                let cluster = kube::connect_with_fallbacks(&kubeconfig, &fallbacks).await?;
                let report = kube::apply(&cluster, &objects).await?;
                let workloads = kube::wait_ready(&cluster, &objects, ROLLOUT_TIMEOUT).await?;
                Ok::<_, kube::KubeError>((report, workloads))
            })
            .map_err(|e| PhaseError::Failed(e.to_string()))?;
        let (created, changed, unchanged) = (
            report.count(Change::Created),
            report.count(Change::Changed),
            report.count(Change::Unchanged),
        );
        Ok(PhaseSummary {
            phase: PhaseName::Addons,
            outcome: Outcome::Done,
            // Objects written on the API server: 0 on a re-run with nothing to do.
            files_changed: created + changed,
            units_restarted: 0,
            failed_nodes: Vec::new(),
            warnings: Vec::new(),
            detail: format!(
                "{} add-ons applied: {created} created, {changed} changed, {unchanged} unchanged; {workloads} workloads ready",
                manifests.len()
            ),
            elapsed: started.elapsed(),
        })
    }
}
