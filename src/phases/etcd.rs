//! Phase `etcd` (Hard Way: "Bootstrapping the etcd Cluster"): etcd binaries, certificates and unit
//! on every member, TLS on client and peer ports with client-certificate auth, then a health check
//! of the whole cluster over TLS with the etcd client certificate.

use std::time::{Duration, Instant};

use super::remote_step::{self, RemoteStep};
use super::{Context, Outcome, Phase, PhaseError, PhaseName, PhaseSummary};
use crate::artifacts::Component;
use crate::inventory::Role;

pub struct Etcd;

const STEP: RemoteStep = RemoteStep {
    phase: PhaseName::Etcd,
    nodes: |n| n.has(Role::Etcd),
    units: &["etcd.service"],
    path_prefixes: &["/etc/etcd/"],
    components: &[(Component::Etcd, &["etcd.service"])],
    images: false,
};

/// `etcdctl endpoint health --cluster` over TLS with the health-check client certificate.
pub const HEALTH_CMD: &str = "ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 \
     --cacert=/etc/etcd/ca.crt --cert=/etc/etcd/healthcheck-client.crt \
     --key=/etc/etcd/healthcheck-client.key --command-timeout=5s endpoint health --cluster";

impl Phase for Etcd {
    fn name(&self) -> PhaseName {
        PhaseName::Etcd
    }

    fn title(&self) -> &'static str {
        "Bootstrapping etcd"
    }

    fn run(&self, ctx: &mut Context) -> Result<PhaseSummary, PhaseError> {
        let started = Instant::now();
        let (exec, report) = remote_step::apply(ctx, &STEP)?;
        let members: Vec<_> = ctx
            .inventory
            .as_ref()
            .map(|i| i.with_role(Role::Etcd).cloned().collect())
            .unwrap_or_default();
        let mut summary = remote_step::summary(PhaseName::Etcd, &report, started, String::new());
        if summary.outcome != Outcome::Done {
            return Ok(summary);
        }
        // Members elect a leader within seconds of the last one starting; allow for a slow start.
        let Some(first) = members.first() else {
            return Err(PhaseError::Failed(
                "the inventory has no etcd member".into(),
            ));
        };
        let deadline = Instant::now() + Duration::from_secs(90);
        let mut last;
        loop {
            match exec
                .connect(first)
                .and_then(|c| c.exec(HEALTH_CMD, Duration::from_secs(30)))
            {
                Ok(out) => {
                    let healthy = out.stdout.matches("is healthy").count()
                        + out.stderr.matches("is healthy").count();
                    if healthy >= members.len() {
                        summary.detail =
                            format!("{healthy} of {} members healthy over TLS", members.len());
                        return Ok(summary);
                    }
                    last = format!("{}{}", out.stdout, out.stderr);
                }
                Err(e) => last = e.to_string(),
            }
            if Instant::now() >= deadline {
                summary.outcome = Outcome::Failed;
                summary.detail = "etcd cluster not healthy after 90 s".into();
                summary
                    .failed_nodes
                    .push((first.name.clone(), last.trim().to_string()));
                summary.elapsed = started.elapsed();
                return Ok(summary);
            }
            std::thread::sleep(Duration::from_secs(2));
        }
    }
}
