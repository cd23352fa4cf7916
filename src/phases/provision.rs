//! Phase `provision`: machines, network and load balancer from the provider; the result is the
//! inventory every later phase works on. Always runs: providers adopt what exists and create only
//! what is missing, so a re-run is cheap and repairs drift.

use std::time::Instant;

use super::{Context, Outcome, Phase, PhaseError, PhaseName, PhaseSummary};
use crate::inventory;
use crate::profile::ProviderKind;
use crate::provider::static_hosts;

pub struct Provision;

impl Phase for Provision {
    fn name(&self) -> PhaseName {
        PhaseName::Provision
    }

    fn title(&self) -> &'static str {
        "Provisioning machines"
    }

    fn run(&self, ctx: &mut Context) -> Result<PhaseSummary, PhaseError> {
        let started = Instant::now();
        let p = &ctx.loaded.profile;
        let mut local_detail = None;
        let inv = match p.provider.kind {
            ProviderKind::Static => {
                let spec = p
                    .provider
                    .static_hosts
                    .as_ref()
                    .ok_or_else(|| PhaseError::Failed("provider.static is missing".into()))?;
                let path = ctx.loaded.base_dir.join(&spec.inventory);
                static_hosts::load(&path, p, &ctx.state.pod_cidrs)
                    .map_err(|e| PhaseError::Failed(e.to_string()))?
            }
            ProviderKind::Local => {
                let (inv, report) = crate::provider::local::verbs::provision_phase(
                    ctx.loaded,
                    &ctx.dir.root,
                    &ctx.state.pod_cidrs,
                )?;
                local_detail = Some(report.detail(inv.nodes.len()));
                inv
            }
            ProviderKind::Gcp => crate::provider::gcp::cli::provision(
                ctx.loaded,
                &ctx.dir.root,
                &ctx.state.pod_cidrs,
            )?,
            ProviderKind::Aws => {
                // Validate the plan (names, pod CIDRs) before reporting what is missing.
                inventory::planned(p, &ctx.state.pod_cidrs)
                    .map_err(|e| PhaseError::Failed(e.to_string()))?;
                return Err(PhaseError::NotImplemented(PhaseName::Provision));
            }
        };
        let detail = local_detail.unwrap_or_else(|| format!("{} nodes", inv.nodes.len()));
        ctx.state.pod_cidrs = inv
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.pod_cidr))
            .collect();
        ctx.state.inventory = Some(inv.clone());
        ctx.inventory = Some(inv);
        ctx.dir.save_state(&ctx.state)?;
        Ok(PhaseSummary {
            phase: PhaseName::Provision,
            outcome: Outcome::Done,
            files_changed: 0,
            units_restarted: 0,
            failed_nodes: Vec::new(),
            warnings: Vec::new(),
            detail,
            elapsed: started.elapsed(),
        })
    }
}
