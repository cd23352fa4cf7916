//! Installing the rendered stack through the Kubernetes API: refuse what the server's version
//! cannot run, server-side apply everything but custom resources, wait for the CRDs to be
//! Established, apply the custom resources (Trainer's runtimes), then wait for the controllers
//! to become Available unless the caller explicitly opts out.

use std::time::Duration;

use crate::kube::{self, ApplyReport, Change, Cluster, KubeError, Object};

use super::stack::Component;
use super::Rendered;

/// CRDs are established within seconds of creation; a minute covers a loaded apiserver.
pub const CRD_TIMEOUT: Duration = Duration::from_secs(60);
/// Controllers: image already on the node, so scheduling, start, leader election and webhook
/// certificate generation.
pub const CONTROLLER_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum InstallError {
    #[error(
        "the cluster's Kubernetes is too old for part of the training stack:\n  {}\nChoose what it \
         can run in the profile's training section (operators: [v1], kueue: false), or upgrade \
         the cluster",
        .0.join("\n  ")
    )]
    TooOld(Vec<String>),
    #[error(transparent)]
    Kube(#[from] KubeError),
}

/// Components `server_version` (e.g. `v1.28.7`) cannot run, each with the reason.
pub fn refusals(components: &[Component], server_version: &str) -> Vec<String> {
    components
        .iter()
        .filter_map(|c| c.refusal(server_version))
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect()
}

/// Validate every rendered component offline (Kubernetes types; custom resources against the
/// CRDs rendered beside them), in apply order.
pub fn validate(rendered: &[Rendered]) -> Result<Vec<Object>, KubeError> {
    let mut objects = kube::validate_all_with(
        rendered.iter().map(|r| (r.name.as_str(), r.yaml.as_str())),
        &[],
    )?;
    // kustomize's secretGenerator renders `data: {}` for the webhook certificate Secrets the
    // controllers fill in themselves; applying an empty map bumps the object on every apply
    // (seen against a real apiserver), so k8sforge does not claim `data` at all.
    for o in &mut objects {
        if let Some(map) = o.object.data.as_object_mut() {
            if map
                .get("data")
                .is_some_and(|d| d.as_object().is_some_and(|m| m.is_empty()))
            {
                map.remove("data");
            }
        }
    }
    Ok(objects)
}

#[derive(Debug, Clone, Default)]
pub struct InstallReport {
    pub applied: ApplyReport,
    pub crds: usize,
    /// Deployments awaited (0 when the wait was skipped).
    pub controllers: usize,
    pub controllers_awaited: bool,
}

impl InstallReport {
    pub fn written(&self) -> usize {
        self.applied.count(Change::Created) + self.applied.count(Change::Changed)
    }
}

/// The git version the API server reports (`v1.28.7`).
pub async fn server_version(cluster: &Cluster) -> Result<String, KubeError> {
    cluster
        .client
        .apiserver_version()
        .await
        .map(|i| i.git_version)
        .map_err(|e| KubeError::Read {
            what: "the API server's version".into(),
            message: crate::kube::client::error_chain(&e),
        })
}

/// Apply `objects` (validated, in apply order) for `components` on `cluster`.
pub async fn install(
    cluster: &Cluster,
    components: &[Component],
    objects: &[Object],
    wait_for_controllers: bool,
) -> Result<InstallReport, InstallError> {
    let version = server_version(cluster).await?;
    let refused = refusals(components, &version);
    if !refused.is_empty() {
        return Err(InstallError::TooOld(refused));
    }
    let done = kube::crds::apply_crds_first(
        cluster,
        objects,
        CRD_TIMEOUT,
        wait_for_controllers.then_some(CONTROLLER_TIMEOUT),
    )
    .await?;
    Ok(InstallReport {
        applied: done.applied,
        crds: done.crds,
        controllers: done.workloads,
        controllers_awaited: wait_for_controllers,
    })
}
