//! Phase `network` (Hard Way: "Provisioning Pod Network Routes"): every node reaches each other
//! node's pod CIDR, from a oneshot unit so the routes survive reboots. `network.podRouting`
//! chooses how: host routes via the owning node (local, static), or a static VXLAN overlay
//! (AWS's default: encapsulated traffic passes EC2's source/destination check, so no
//! per-instance call is needed); AWS route tables and GCP alias ranges are set up by the
//! provider at provision time.

use std::time::Instant;

use super::remote_step::{self, RemoteStep};
use super::{Context, Phase, PhaseError, PhaseName, PhaseSummary};
use crate::render::routes::ROUTES_UNIT;

pub struct Network;

const STEP: RemoteStep = RemoteStep {
    phase: PhaseName::Network,
    nodes: |_| true,
    units: &[ROUTES_UNIT],
    path_prefixes: &[],
    components: &[],
    images: false,
};

impl Phase for Network {
    fn name(&self) -> PhaseName {
        PhaseName::Network
    }

    fn title(&self) -> &'static str {
        "Routing pod networks"
    }

    fn run(&self, ctx: &mut Context) -> Result<PhaseSummary, PhaseError> {
        let started = Instant::now();
        let (_, report) = remote_step::apply(ctx, &STEP)?;
        let routes = report.nodes_total.saturating_sub(1);
        let detail = format!("{} nodes, {routes} routes each", report.nodes_total);
        Ok(remote_step::summary(
            PhaseName::Network,
            &report,
            started,
            detail,
        ))
    }
}
