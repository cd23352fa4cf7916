//! The GPU network of A3 High machines (`a3-highgpu-8g`): 4 extra gVNICs, each on its own VPC
//! network and subnetwork (GPUDirect-TCPX moves NCCL traffic over them), and a compact placement
//! policy that keeps the cluster's GPU instances close. Provision creates them (networks with
//! MTU 8244, one subnetwork and one all-internal firewall rule each, the resource policy) and
//! teardown removes them with the rest (they carry the ownership marker and name prefix).
//!
//! Facts (Google Cloud, "Maximize GPU network bandwidth with GPUDirect-TCPX and multi-networking":
//! A3 High has 5 NICs, nic0 for ordinary traffic and 4 for GPU traffic, each on a separate VPC
//! network, gVNIC (`nicType: GVNIC`) on every NIC, MTU 8244 on the GPU networks; "Compact
//! placement policies": `groupPlacementPolicy.collocation = COLLOCATED`). The subnetworks are the
//! four blocks of the node CIDR's size that follow it (gpu-1000: 10.0.16.0/20 … 10.0.64.0/20).

use google_cloud_compute_v1::model::{
    firewall::Allowed, Firewall, Network, NetworkInterface, ResourcePolicy,
    ResourcePolicyGroupPlacementPolicy, Subnetwork,
};
use ipnet::Ipv4Net;

use super::adopt::{get_or_insert, Body};
use super::names::Names;
use super::{GcpError, GcpProvider};
use crate::profile::Profile;
use crate::provider::ProvisionContext;

pub use crate::profile::gpu_nic_layout::{has_gpu_nics, GPU_NICS};
/// MTU Google documents for the GPU NIC networks.
pub const GPU_NETWORK_MTU: i32 = 8244;

/// Whether any worker group of `profile` runs such machines.
pub fn cluster_needs(profile: &Profile) -> bool {
    profile.workers.iter().any(|w| {
        w.gpus_per_node > 0
            && w.gcp
                .as_ref()
                .is_some_and(|g| has_gpu_nics(&g.machine_type))
    })
}

/// The GPU NIC subnetworks' ranges: the `GPU_NICS` blocks of the node CIDR's size after it. An
/// overlap with the pod or service range is a profile error, named.
pub fn gpu_cidrs(profile: &Profile) -> Result<Vec<Ipv4Net>, GcpError> {
    let nw = &profile.network;
    let node = nw.node_cidr;
    let size = 1u64 << (32 - u32::from(node.prefix_len()));
    let mut out = Vec::new();
    for i in 1..=GPU_NICS as u64 {
        let start = u64::from(u32::from(node.network())) + i * size;
        let net = u32::try_from(start)
            .ok()
            .and_then(|s| Ipv4Net::new(std::net::Ipv4Addr::from(s), node.prefix_len()).ok())
            .ok_or_else(|| {
                GcpError::Config(format!(
                    "network.nodeCIDR {node}: the GPU NIC subnetworks (the {GPU_NICS} blocks of its size after it) run past 255.255.255.255"
                ))
            })?;
        for (what, other) in [
            ("network.podCIDR", nw.pod_cidr),
            ("network.serviceCIDR", nw.service_cidr),
        ] {
            if net.contains(&other.network()) || other.contains(&net.network()) {
                return Err(GcpError::Config(format!(
                    "GPU NIC subnetwork {i} would be {net} (the blocks of network.nodeCIDR's size after {node}), which overlaps {what} {other}: move {what} or network.nodeCIDR"
                )));
            }
        }
        out.push(net);
    }
    Ok(out)
}

/// What the instances of A3 groups attach to.
#[derive(Debug, Clone)]
pub struct GpuFabric {
    /// Subnetwork URLs of nic1..nic4.
    pub subnetworks: Vec<String>,
    /// Name of the compact placement policy (bulkInsert takes names).
    pub placement_policy: String,
}

impl GpuFabric {
    /// nic1..nic4 of an A3 High instance (no external address: GPU traffic stays inside).
    pub fn interfaces(&self) -> Vec<NetworkInterface> {
        self.subnetworks
            .iter()
            .map(|s| {
                NetworkInterface::new()
                    .set_subnetwork(s.clone())
                    .set_nic_type("GVNIC")
            })
            .collect()
    }
}

/// Create (or adopt) the GPU networks, subnetworks, firewall rules and the placement policy.
pub async fn ensure(
    p: &GcpProvider,
    ctx: &ProvisionContext<'_>,
    names: &Names,
) -> Result<Option<GpuFabric>, GcpError> {
    if !cluster_needs(ctx.profile) {
        return Ok(None);
    }
    let cidrs = gpu_cidrs(ctx.profile)?;
    let mut subnetworks = Vec::new();
    for (i, cidr) in cidrs.iter().enumerate() {
        let i = i + 1;
        let net = Network::new()
            .set_name(names.gpu_network(i))
            .set_description(names.marker())
            .set_auto_create_subnetworks(false)
            .set_mtu(GPU_NETWORK_MTU);
        let net_url = get_or_insert(p, names, "network", Body::Network(net)).await?;
        let sub = Subnetwork::new()
            .set_name(names.gpu_network(i))
            .set_description(names.marker())
            .set_network(net_url.clone())
            .set_ip_cidr_range(cidr.to_string());
        subnetworks.push(get_or_insert(p, names, "subnetwork", Body::Subnetwork(sub)).await?);
        // NCCL between the GPU NICs of the cluster's nodes; nothing else reaches them.
        let fw = Firewall::new()
            .set_name(names.gpu_network(i))
            .set_description(names.marker())
            .set_network(net_url)
            .set_direction("INGRESS")
            .set_priority(1000)
            .set_allowed(["tcp", "udp", "icmp"].map(|p| Allowed::new().set_ip_protocol(p)))
            .set_source_ranges([cidr.to_string()]);
        get_or_insert(p, names, "firewall rule", Body::Firewall(fw)).await?;
    }
    let policy_name = names.placement_policy();
    let policy = ResourcePolicy::new()
        .set_name(policy_name.clone())
        .set_description(names.marker())
        .set_group_placement_policy(
            ResourcePolicyGroupPlacementPolicy::new().set_collocation("COLLOCATED"),
        );
    get_or_insert(p, names, "resource policy", Body::ResourcePolicy(policy)).await?;
    Ok(Some(GpuFabric {
        subnetworks,
        placement_policy: policy_name,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_cidrs_follow_the_node_cidr() {
        let p = crate::profile::load("gpu-1000", &["provider.kind=gcp".to_string()])
            .unwrap()
            .profile;
        assert!(cluster_needs(&p));
        let c: Vec<String> = gpu_cidrs(&p)
            .unwrap()
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(
            c,
            [
                "10.0.16.0/20",
                "10.0.32.0/20",
                "10.0.48.0/20",
                "10.0.64.0/20"
            ]
        );
        let mut p = p;
        p.network.service_cidr = "10.0.48.0/20".parse().unwrap();
        let e = gpu_cidrs(&p).unwrap_err().to_string();
        assert!(
            e.contains("overlaps network.serviceCIDR 10.0.48.0/20"),
            "{e}"
        );
    }
}
