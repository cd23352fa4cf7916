//! Applying the in-cluster stack: everything but custom resources server-side applied first
//! (the operator's CRDs among them), the CRDs awaited until Established, then the custom
//! resources (Prometheus, Alertmanager, ServiceMonitors, PrometheusRules), then the workloads
//! awaited until Available, naming those that are not.

use std::time::Duration;

use crate::kube::{self, ApplyReport, Cluster, KubeError, Object};

use super::stack::Rendered;

/// CRDs are established within seconds of creation; a minute covers a loaded apiserver.
pub const CRD_TIMEOUT: Duration = Duration::from_secs(60);
/// The operator, kube-state-metrics, Grafana and node-exporter: image pull and start.
pub const ROLLOUT_TIMEOUT: Duration = Duration::from_secs(300);

/// Validate the rendered stack offline: Kubernetes kinds against their typed API, the custom
/// resources against the openAPIV3Schema of the operator's CRDs among the files.
pub fn validate(rendered: &[Rendered]) -> Result<Vec<Object>, KubeError> {
    kube::validate_all_with(
        rendered.iter().map(|r| (r.name.as_str(), r.yaml.as_str())),
        &[],
    )
}

#[derive(Debug, Clone, Default)]
pub struct InstallReport {
    pub applied: ApplyReport,
    pub crds: usize,
    /// Workloads awaited (0 when the wait was skipped).
    pub workloads: usize,
}

/// Apply `objects` (validated, in apply order); wait for the workloads when `wait`.
pub async fn install(
    cluster: &Cluster,
    objects: &[Object],
    wait: bool,
) -> Result<InstallReport, KubeError> {
    let done = kube::crds::apply_crds_first(
        cluster,
        objects,
        CRD_TIMEOUT,
        wait.then_some(ROLLOUT_TIMEOUT),
    )
    .await?;
    Ok(InstallReport {
        applied: done.applied,
        crds: done.crds,
        workloads: done.workloads,
    })
}
