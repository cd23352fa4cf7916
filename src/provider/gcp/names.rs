//! Names and ownership marks of the cluster's Compute Engine resources.
//!
//! Instances, addresses and forwarding rules take labels and carry
//! `k8sforge-io-cluster=<cluster>`. Networks, subnetworks, firewalls, health checks, backend
//! services and instance groups take no labels in Compute v1, so they carry the marker
//! `k8sforge.io/cluster=<cluster>` as their whole description and a `<cluster>-` name.
//! Teardown and adoption treat a resource as ours only if it has the label, or both the exact
//! description and the name prefix: a same-named resource someone else made is refused.

use crate::provider::{CLUSTER_LABEL_GCP, CLUSTER_TAG};

/// Label key holding the node name on each instance (instance names carry the cluster prefix).
pub const NODE_LABEL: &str = "k8sforge-io-node";
/// Label key holding the node's group (`controlplane` or the worker group name).
pub const GROUP_LABEL: &str = "k8sforge-io-group";
/// Secondary range of the subnetwork that pods' alias ranges come from.
pub const POD_RANGE_NAME: &str = "pods";
/// Network tag on control-plane instances: the API and health-check rules target it.
pub const CONTROL_PLANE_TAG: &str = "k8sforge-controlplane";

/// Where Google's health checks for external passthrough network load balancers come from;
/// they must reach the API port on the control planes.
pub const HEALTH_CHECK_RANGES: [&str; 3] = ["35.191.0.0/16", "209.85.152.0/22", "209.85.204.0/22"];

/// Resource labels (the library takes any `(key, value)` iterator).
pub type Labels = std::collections::BTreeMap<String, String>;

#[derive(Debug, Clone)]
pub struct Names {
    pub cluster: String,
}

impl Names {
    pub fn new(cluster: &str) -> Names {
        Names {
            cluster: cluster.to_string(),
        }
    }

    pub fn marker(&self) -> String {
        format!("{CLUSTER_TAG}={}", self.cluster)
    }

    pub fn labels(&self) -> Labels {
        Labels::from([(CLUSTER_LABEL_GCP.to_string(), self.cluster.clone())])
    }

    /// List filter for labelled resources.
    pub fn label_filter(&self) -> String {
        format!("labels.{CLUSTER_LABEL_GCP} = \"{}\"", self.cluster)
    }

    /// List filter for resources that only carry the description marker.
    pub fn description_filter(&self) -> String {
        format!("description = \"{}\"", self.marker())
    }

    /// Whether an unlabelled resource is ours: exact marker and our name prefix.
    pub fn owns(&self, name: &str, description: Option<&str>) -> bool {
        description == Some(self.marker().as_str())
            && name.starts_with(&format!("{}-", self.cluster))
    }

    pub fn network(&self) -> String {
        format!("{}-net", self.cluster)
    }
    pub fn subnetwork(&self) -> String {
        format!("{}-nodes", self.cluster)
    }
    pub fn firewall_internal(&self) -> String {
        format!("{}-allow-internal", self.cluster)
    }
    pub fn firewall_admin(&self) -> String {
        format!("{}-allow-admin", self.cluster)
    }
    pub fn firewall_health(&self) -> String {
        format!("{}-allow-health-checks", self.cluster)
    }
    pub fn health_check(&self) -> String {
        format!("{}-api-hc", self.cluster)
    }
    pub fn instance_group(&self) -> String {
        format!("{}-controlplanes", self.cluster)
    }
    pub fn backend_service(&self) -> String {
        format!("{}-api", self.cluster)
    }
    pub fn address(&self) -> String {
        format!("{}-api", self.cluster)
    }
    pub fn forwarding_rule(&self) -> String {
        format!("{}-api", self.cluster)
    }
    /// GPU NIC network `i` (1-based); its subnetwork and firewall rule share the name.
    pub fn gpu_network(&self, i: usize) -> String {
        format!("{}-gpunet-{i}", self.cluster)
    }
    pub fn placement_policy(&self) -> String {
        format!("{}-compact", self.cluster)
    }
    pub fn instance(&self, node: &str) -> String {
        format!("{}-{node}", self.cluster)
    }
}

/// Last path segment of a resource URL (`.../zones/us-central1-a` → `us-central1-a`).
pub fn last_segment(url: &str) -> &str {
    url.rsplit('/').next().unwrap_or(url)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ownership_needs_marker_and_prefix() {
        let n = Names::new("c1");
        assert!(n.owns("c1-net", Some("k8sforge.io/cluster=c1")));
        assert!(!n.owns("c1-net", None));
        assert!(!n.owns("c1-net", Some("k8sforge.io/cluster=c10")));
        assert!(!n.owns("other-net", Some("k8sforge.io/cluster=c1")));
        assert_eq!(
            last_segment("https://x/zones/us-central1-a"),
            "us-central1-a"
        );
    }
}
