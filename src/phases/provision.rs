//! Phase `provision`: machines, network and load balancer from the provider; the result is the
//! inventory every later phase works on. Always runs: providers adopt what exists (comparing it
//! with the profile) and create only what is missing, so a re-run is cheap and creates nothing.
//! Every provider kind goes through the same `provider::facade::provision`.

use std::time::Instant;

use super::{Context, Outcome, Phase, PhaseError, PhaseName, PhaseSummary};
use crate::provider::facade::{self, ProvisionRequest};

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
        let out = facade::provision(&ProvisionRequest {
            loaded: ctx.loaded,
            cluster_dir: &ctx.dir.root,
            pod_cidrs: &ctx.state.pod_cidrs,
            replace_drifted: ctx.replace_drifted,
        })?;
        let inv = out.inventory;
        ctx.state.profile_source = ctx.loaded.source_name.clone();
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
            detail: out.detail,
            bytes_sent: Default::default(),
            bytes_fetched: 0,
            elapsed: started.elapsed(),
        })
    }
}
