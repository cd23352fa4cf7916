//! Adopt-or-create for named Compute resources, shared by the network and load-balancer steps of
//! provisioning.

use reqwest::Method;
use serde::Serialize;

use super::names::Names;
use super::types::Labels;
use super::{GcpError, GcpProvider};

/// Get a global/regional resource by name; insert it (and wait) when missing. Unlabelled kinds
/// must carry our ownership marker to be adopted.
pub(super) async fn get_or_insert<T: Serialize>(
    p: &GcpProvider,
    names: &Names,
    kind: &'static str,
    collection: &str,
    api: &str,
    body: &T,
    name: &str,
) -> Result<String, GcpError> {
    #[derive(serde::Deserialize)]
    #[serde(rename_all = "camelCase")]
    struct Existing {
        #[serde(default)]
        description: Option<String>,
        #[serde(default)]
        labels: Labels,
        #[serde(default)]
        self_link: String,
    }
    let rest = format!("{collection}/{name}");
    if let Some(e) = p
        .api
        .get_opt::<Existing>(&format!("compute.{api}.get"), &rest)
        .await?
    {
        let labelled = e.labels.get(crate::provider::CLUSTER_LABEL_GCP) == Some(&names.cluster);
        if !labelled && !names.owns(name, e.description.as_deref()) {
            return Err(GcpError::NotOwned {
                kind,
                name: name.to_string(),
                cluster: names.cluster.clone(),
            });
        }
        tracing::debug!("adopting {kind} {name}");
        return Ok(if e.self_link.is_empty() {
            p.api.url(&rest)
        } else {
            e.self_link
        });
    }
    tracing::debug!("creating {kind} {name}");
    p.api.note_created(kind, name);
    let op = p
        .api
        .mutate(
            &format!("compute.{api}.insert"),
            Method::POST,
            collection,
            Some(body),
        )
        .await?;
    p.api.wait(op).await?;
    Ok(p.api.url(&rest))
}
