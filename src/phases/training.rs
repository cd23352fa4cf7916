//! Phase `training`: the training stack the profile chooses (training-operator v1, Trainer v2 on
//! JobSet, Kueue), rendered from the pinned upstream kustomize trees by a real kustomize plus
//! k8sforge's overlays, validated offline, server-side applied through the admin kubeconfig,
//! and awaited: CRDs Established, controllers Available (the latter skippable only by
//! `training.waitForControllers: false`, for tests whose controller images cannot run).
//!
//! No fingerprint, as for add-ons: an unchanged apply is a no-op on the API server (0 objects
//! written), and running every time repairs drift.

use std::time::Instant;

use super::{Context, Outcome, Phase, PhaseError, PhaseName, PhaseSummary};
use crate::inventory::Role;
use crate::kube;
use crate::pki::layout;
use crate::training::{self, install, stack, Kustomize};

pub struct Training;

impl Phase for Training {
    fn name(&self) -> PhaseName {
        PhaseName::Training
    }

    fn title(&self) -> &'static str {
        "Installing the training stack"
    }

    fn run(&self, ctx: &mut Context) -> Result<PhaseSummary, PhaseError> {
        let started = Instant::now();
        let p = &ctx.loaded.profile;
        let fail = |e: &dyn std::fmt::Display| PhaseError::Failed(e.to_string());
        let components = stack::selected(&p.training, &p.kubernetes.version);
        let summary = |files_changed, detail: String| PhaseSummary {
            phase: PhaseName::Training,
            outcome: Outcome::Done,
            files_changed,
            units_restarted: 0,
            failed_nodes: Vec::new(),
            nodes_changed: Default::default(),
            warnings: Vec::new(),
            detail,
            bytes_sent: Default::default(),
            bytes_fetched: 0,
            elapsed: started.elapsed(),
        };
        if components.is_empty() {
            return Ok(summary(
                0,
                "training stack disabled (training.enabled: false)".into(),
            ));
        }
        let (pinned, source) = ctx.release_and_source()?;
        let images = crate::artifacts::ImageRefs::for_source(pinned, &p.artifacts.images, &source)
            .map_err(|e| fail(&e))?;
        let kustomize = Kustomize::locate().map_err(|e| fail(&e))?;
        let home = ctx.dir.root.parent().unwrap_or(&ctx.dir.root);
        let rendered = training::render(home, &source.mirror, &kustomize, &components, &images)
            .map_err(|e| fail(&e))?;
        let objects = install::validate(&rendered).map_err(|e| fail(&e))?;
        let cloud = crate::profile::storage_check::cloud(p.provider.kind);
        let workers: Vec<String> = ctx
            .inventory
            .iter()
            .flat_map(|inv| inv.with_role(Role::Worker))
            .map(|n| n.name.clone())
            .collect();
        let storage_yaml = training::storage::render(&p.training.storage, cloud, &workers);
        let storage_objects =
            kube::validate_all([("training/storage.yaml", storage_yaml.as_str())])
                .map_err(|e| fail(&e))?;
        let backends = p.training.storage.backends(cloud);

        let kubeconfig = layout::kubeconfig_path(&ctx.dir.root, layout::ADMIN);
        let fallbacks: Vec<String> = ctx
            .inventory
            .iter()
            .flat_map(|inv| inv.with_role(Role::ControlPlane))
            .map(|n| format!("https://{}:{}", n.internal_ip, p.api_server.port))
            .collect();
        let wait = p.training.wait_for_controllers;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| PhaseError::Failed(format!("cannot start the async runtime: {e}")))?;
        let report = rt
            .block_on(async {
                let cluster = kube::connect_with_fallbacks(&kubeconfig, &fallbacks)
                    .await
                    .map_err(install::InstallError::from)?;
                let mut report = install::install(&cluster, &components, &objects, wait).await?;
                training::storage_apply::check_drivers(&cluster, &backends).await?;
                let applied = kube::apply(&cluster, &storage_objects).await?;
                report.applied.objects.extend(applied.objects);
                Ok::<_, install::InstallError>(report)
            })
            .map_err(|e| fail(&e))?;
        let names: Vec<&str> = components.iter().map(|c| c.name()).collect();
        let controllers = if report.controllers_awaited {
            format!("{} controllers available", report.controllers)
        } else {
            "controllers NOT awaited (training.waitForControllers: false)".into()
        };
        Ok(summary(
            report.written(),
            format!(
                "{}: {} objects, {} written; {} CRDs established; {controllers}; storage: {}",
                names.join(", "),
                objects.len() + storage_objects.len(),
                report.written(),
                report.crds,
                if backends.is_empty() {
                    "none (training.storage)".to_string()
                } else {
                    backends
                        .iter()
                        .map(|b| b.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                }
            ),
        ))
    }
}
