//! The GPU gates of the `addons` phase: every GPU node advertises exactly the `nvidia.com/gpu`
//! count its profile group promises (the device plugin found every GPU), and a node's
//! `k8sforge.io/gpu-unverified` taint is removed only after its health preflight passed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use ::kube::api::{Api, Patch, PatchParams};
use k8s_openapi::api::core::v1::Node;

use super::client::{error_chain, Cluster};
use super::KubeError;

/// The extended resource the NVIDIA device plugin advertises.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
const POLL: Duration = Duration::from_secs(2);

/// What `node` advertises as allocatable `nvidia.com/gpu` (None: the resource is absent).
pub fn advertised_gpus(node: &Node) -> Option<String> {
    let status = node.status.as_ref()?;
    status
        .allocatable
        .as_ref()
        .and_then(|a| a.get(GPU_RESOURCE))
        .or_else(|| status.capacity.as_ref().and_then(|c| c.get(GPU_RESOURCE)))
        .map(|q| q.0.clone())
}

/// One line per GPU node that does not advertise what its profile expects (`expected`: node
/// name → GPUs per node), naming the node, what it advertises and what was expected.
pub fn gpu_shortfalls(nodes: &[Node], expected: &BTreeMap<String, u32>) -> Vec<String> {
    expected
        .iter()
        .filter_map(|(name, want)| {
            let Some(node) = nodes
                .iter()
                .find(|n| n.metadata.name.as_deref() == Some(name.as_str()))
            else {
                return Some(format!(
                    "node {name}: not registered with the API (expected {want} {GPU_RESOURCE})"
                ));
            };
            match advertised_gpus(node) {
                Some(have) if have.parse::<u32>().ok() == Some(*want) => None,
                Some(have) => Some(format!(
                    "node {name}: advertises {have} {GPU_RESOURCE}, its profile group expects {want} (gpusPerNode)"
                )),
                None => Some(format!(
                    "node {name}: advertises no {GPU_RESOURCE}, its profile group expects {want} (gpusPerNode): is the device plugin running there and the driver loaded?"
                )),
            }
        })
        .collect()
}

/// Wait until every GPU node advertises its expected count, or fail after `timeout` with one
/// line per node that does not.
pub async fn wait_gpus(
    cluster: &Cluster,
    expected: &BTreeMap<String, u32>,
    timeout: Duration,
) -> Result<(), KubeError> {
    if expected.is_empty() {
        return Ok(());
    }
    let api: Api<Node> = Api::all(cluster.client.clone());
    let started = Instant::now();
    loop {
        let nodes = api
            .list(&Default::default())
            .await
            .map_err(|e| KubeError::Read {
                what: "nodes".into(),
                message: error_chain(&e),
            })?
            .items;
        let short = gpu_shortfalls(&nodes, expected);
        if short.is_empty() {
            return Ok(());
        }
        if started.elapsed() >= timeout {
            return Err(KubeError::GpuShortfall {
                waited_secs: started.elapsed().as_secs(),
                nodes: short,
            });
        }
        tokio::time::sleep(POLL).await;
    }
}

/// The node's taints with `key` removed, or None when it has no such taint.
pub fn without_taint(node: &Node, key: &str) -> Option<Vec<serde_json::Value>> {
    let taints = node.spec.as_ref()?.taints.clone().unwrap_or_default();
    if !taints.iter().any(|t| t.key == key) {
        return None;
    }
    Some(
        taints
            .iter()
            .filter(|t| t.key != key)
            .filter_map(|t| serde_json::to_value(t).ok())
            .collect(),
    )
}

/// Whether node `name` currently carries a taint `key`.
pub async fn has_taint(cluster: &Cluster, name: &str, key: &str) -> Result<bool, KubeError> {
    let api: Api<Node> = Api::all(cluster.client.clone());
    let node = api.get(name).await.map_err(|e| KubeError::Read {
        what: format!("node {name}"),
        message: error_chain(&e),
    })?;
    Ok(without_taint(&node, key).is_some())
}

/// Remove taint `key` from node `name`; false when it had none.
pub async fn remove_taint(cluster: &Cluster, name: &str, key: &str) -> Result<bool, KubeError> {
    let api: Api<Node> = Api::all(cluster.client.clone());
    let node = api.get(name).await.map_err(|e| KubeError::Read {
        what: format!("node {name}"),
        message: error_chain(&e),
    })?;
    let Some(rest) = without_taint(&node, key) else {
        return Ok(false);
    };
    // Merge patch replaces the list; the resourceVersion makes a concurrent change of the node
    // a conflict instead of an overwrite.
    let patch = serde_json::json!({
        "metadata": {"resourceVersion": node.metadata.resource_version},
        "spec": {"taints": rest},
    });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| KubeError::Read {
            what: format!("removing taint {key} from node {name}"),
            message: error_chain(&e),
        })?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str, gpus: Option<&str>) -> Node {
        let mut status = serde_json::json!({});
        if let Some(g) = gpus {
            status = serde_json::json!({"capacity": {GPU_RESOURCE: g}, "allocatable": {GPU_RESOURCE: g}});
        }
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {"taints": [
                {"key": "k8sforge.io/gpu-unverified", "effect": "NoSchedule"},
                {"key": "nvidia.com/gpu", "value": "present", "effect": "NoSchedule"}
            ]},
            "status": status
        }))
        .unwrap()
    }

    #[test]
    fn shortfalls_name_the_node_and_what_it_advertises() {
        let expected = BTreeMap::from([
            ("gpu-1".to_string(), 8),
            ("gpu-2".to_string(), 8),
            ("gpu-3".to_string(), 8),
            ("gpu-4".to_string(), 8),
        ]);
        let nodes = [
            node("gpu-1", Some("8")),
            node("gpu-2", Some("4")),
            node("gpu-3", None),
        ];
        let s = gpu_shortfalls(&nodes, &expected);
        assert_eq!(s.len(), 3, "{s:?}");
        assert_eq!(
            s[0],
            "node gpu-2: advertises 4 nvidia.com/gpu, its profile group expects 8 (gpusPerNode)"
        );
        assert!(
            s[1].starts_with("node gpu-3: advertises no nvidia.com/gpu"),
            "{}",
            s[1]
        );
        assert!(s[2].starts_with("node gpu-4: not registered"), "{}", s[2]);
        assert!(gpu_shortfalls(&nodes[..1], &BTreeMap::from([("gpu-1".into(), 8)])).is_empty());
    }

    #[test]
    fn taint_removal_keeps_the_others() {
        let n = node("gpu-1", None);
        let rest = without_taint(&n, "k8sforge.io/gpu-unverified").unwrap();
        assert_eq!(rest.len(), 1);
        assert_eq!(rest[0]["key"], "nvidia.com/gpu");
        assert!(without_taint(&n, "absent").is_none());
    }
}
