//! Wait until every CustomResourceDefinition among a set of objects is Established (its API is
//! served), naming each one that is not and why (e.g. NamesAccepted false: a conflicting name).

use std::time::{Duration, Instant};

use ::kube::api::Api;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;

use super::client::{error_chain, Cluster};
use super::manifest::Object;
use super::KubeError;

const POLL: Duration = Duration::from_millis(500);

/// Why a CRD is not established, or None when it is.
pub fn not_established(crd: &CustomResourceDefinition) -> Option<String> {
    let conditions = crd
        .status
        .as_ref()
        .and_then(|s| s.conditions.clone())
        .unwrap_or_default();
    if conditions
        .iter()
        .any(|c| c.type_ == "Established" && c.status == "True")
    {
        return None;
    }
    let bad: Vec<String> = conditions
        .iter()
        .filter(|c| c.status != "True" && c.type_ != "Terminating")
        .map(|c| {
            format!(
                "{} {}: {}",
                c.type_,
                c.status,
                c.message.clone().unwrap_or_default()
            )
        })
        .collect();
    Some(if bad.is_empty() {
        "not Established yet".into()
    } else {
        bad.join("; ")
    })
}

/// Wait for every CRD among `objects`; returns how many were awaited.
pub async fn wait_established(
    cluster: &Cluster,
    objects: &[Object],
    timeout: Duration,
) -> Result<usize, KubeError> {
    let names: Vec<String> = objects
        .iter()
        .filter(|o| o.spec.resource.kind == "CustomResourceDefinition")
        .map(|o| o.reference().name)
        .collect();
    let api: Api<CustomResourceDefinition> = Api::all(cluster.client.clone());
    let started = Instant::now();
    loop {
        let mut pending = Vec::new();
        for n in &names {
            match api.get(n).await {
                Ok(crd) => {
                    if let Some(why) = not_established(&crd) {
                        pending.push(format!("CustomResourceDefinition {n}: {why}"));
                    }
                }
                Err(e) => pending.push(format!(
                    "CustomResourceDefinition {n}: cannot read it: {}",
                    error_chain(&e)
                )),
            }
        }
        if pending.is_empty() {
            return Ok(names.len());
        }
        if started.elapsed() >= timeout {
            return Err(KubeError::NotReady {
                waited_secs: started.elapsed().as_secs(),
                not_ready: pending,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// What [`apply_crds_first`] did.
#[derive(Debug, Clone, Default)]
pub struct CrdsFirst {
    pub applied: super::ApplyReport,
    /// CRDs awaited until Established.
    pub crds: usize,
    /// Workloads awaited (0 when the wait was skipped).
    pub workloads: usize,
}

/// Apply a set whose custom resources need CRDs from the same set: everything else first (the
/// CRDs among it), the CRDs awaited until Established, then the custom resources; then the
/// workloads awaited until ready when `rollout` is given.
pub async fn apply_crds_first(
    cluster: &Cluster,
    objects: &[Object],
    crd_timeout: Duration,
    rollout: Option<Duration>,
) -> Result<CrdsFirst, KubeError> {
    let (custom, builtin): (Vec<Object>, Vec<Object>) = objects
        .iter()
        .cloned()
        .partition(|o| o.spec.rank == super::manifest::CUSTOM_RESOURCE_RANK);
    let mut applied = super::apply(cluster, &builtin).await?;
    let crds = wait_established(cluster, &builtin, crd_timeout).await?;
    applied
        .objects
        .extend(super::apply(cluster, &custom).await?.objects);
    let workloads = match rollout {
        Some(timeout) => super::wait_ready(cluster, &builtin, timeout).await?,
        None => 0,
    };
    Ok(CrdsFirst {
        applied,
        crds,
        workloads,
    })
}
