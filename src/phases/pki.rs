//! Phase `pki`: the CAs, every certificate of the table, kubeconfigs and the encryption config,
//! in the cluster's state directory. Always runs: `pki::ensure` keeps every valid file and issues
//! only what is missing or wrong, so a re-run issues nothing. It never renews a certificate for
//! nearing its expiry: it warns and names `certs rotate`, which renews without downtime.

use std::time::Instant;

use super::{Context, Outcome, Phase, PhaseError, PhaseName, PhaseSummary};
use crate::pki;

pub struct Pki;

impl Phase for Pki {
    fn name(&self) -> PhaseName {
        PhaseName::Pki
    }

    fn title(&self) -> &'static str {
        "Issuing certificates"
    }

    fn run(&self, ctx: &mut Context) -> Result<PhaseSummary, PhaseError> {
        let started = Instant::now();
        let inv = ctx.inventory.as_ref().ok_or(PhaseError::NoInventory {
            phase: PhaseName::Pki,
        })?;
        let report = pki::ensure(&ctx.loaded.profile, inv, &ctx.dir.root)
            .map_err(|e| PhaseError::Failed(e.to_string()))?;
        Ok(PhaseSummary {
            phase: PhaseName::Pki,
            outcome: Outcome::Done,
            files_changed: report.issued.len() + report.written.len(),
            units_restarted: 0,
            failed_nodes: Vec::new(),
            warnings: report
                .due_warning(&ctx.loaded.cli_arg())
                .into_iter()
                .collect(),
            detail: if report.due.is_empty() {
                format!("{} issued, {} reused", report.issued.len(), report.reused)
            } else {
                format!(
                    "{} issued, {} reused, {} due for renewal",
                    report.issued.len(),
                    report.reused,
                    report.due.len()
                )
            },
            bytes_sent: Default::default(),
            bytes_fetched: 0,
            elapsed: started.elapsed(),
        })
    }
}
