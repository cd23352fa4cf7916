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
