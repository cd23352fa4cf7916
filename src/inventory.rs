//! The machines of a cluster: names, roles, addresses, pod CIDRs and how to reach them by SSH.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::profile::validate::{control_plane_node_name, worker_node_name};
use crate::profile::{Profile, Taint};

// Address arithmetic the profile's validation shares, kept at its level.
pub use crate::profile::addressing::{pod_blocks, LOCAL_FIRST_HOST};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Role {
    ControlPlane,
    Etcd,
    Worker,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::ControlPlane => "control-plane",
            Role::Etcd => "etcd",
            Role::Worker => "worker",
        }
    }
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// How to open an SSH session to a node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SshEndpoint {
    pub host: IpAddr,
    pub port: u16,
    pub user: String,
    /// Private key file; None means the cluster's generated key.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key: Option<String>,
    /// Jump host (`user@host:port`), for nodes without a public address.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bastion: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Node {
    pub name: String,
    pub roles: BTreeSet<Role>,
    /// Address inside the cluster network: what components bind to and peers dial.
    pub internal_ip: Ipv4Addr,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub external_ip: Option<IpAddr>,
    pub pod_cidr: Ipv4Net,
    pub ssh: SshEndpoint,
    /// Worker group, or `controlPlane`.
    pub group: String,
    #[serde(default)]
    pub gpus: u32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub taints: Vec<Taint>,
}

impl Node {
    pub fn has(&self, role: Role) -> bool {
        self.roles.contains(&role)
    }

    /// Every address the node answers on (for certificate SANs).
    pub fn addresses(&self) -> Vec<IpAddr> {
        let mut v = vec![IpAddr::V4(self.internal_ip)];
        if let Some(e) = self.external_ip {
            if e != IpAddr::V4(self.internal_ip) {
                v.push(e);
            }
        }
        v
    }
}

/// Where clients reach the API: a load balancer, or the single control plane.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApiEndpoint {
    /// Host part of the server URL (DNS name or IP).
    pub host: String,
    pub port: u16,
    /// Addresses of the endpoint for the apiserver certificate's SANs.
    #[serde(default)]
    pub addresses: Vec<IpAddr>,
}

impl ApiEndpoint {
    pub fn url(&self) -> String {
        match self.host.parse::<IpAddr>() {
            Ok(IpAddr::V6(a)) => format!("https://[{a}]:{}", self.port),
            _ => format!("https://{}:{}", self.host, self.port),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Inventory {
    pub cluster: String,
    pub nodes: Vec<Node>,
    pub api: ApiEndpoint,
    /// True when addresses are planned, not yet read from provisioned machines.
    #[serde(default)]
    pub planned: bool,
}

impl Inventory {
    pub fn with_role(&self, role: Role) -> impl Iterator<Item = &Node> {
        self.nodes.iter().filter(move |n| n.has(role))
    }

    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    pub fn count(&self, role: Role) -> usize {
        self.with_role(role).count()
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("pod range {range} has {capacity} blocks of /{prefix}, not enough for {nodes} nodes")]
pub struct PodCidrExhausted {
    pub range: Ipv4Net,
    pub prefix: u8,
    pub capacity: u64,
    pub nodes: usize,
}

/// Give every node a pod CIDR. Nodes keep what `previous` recorded for them, so adding or
/// removing nodes never moves another node's pods; new nodes take the lowest free blocks in
/// inventory order. Deterministic for the same inputs.
pub fn allocate_pod_cidrs(
    nodes: &mut [Node],
    range: Ipv4Net,
    prefix: u8,
    previous: &BTreeMap<String, Ipv4Net>,
) -> Result<(), PodCidrExhausted> {
    let count = nodes.len();
    let exhausted = || PodCidrExhausted {
        range,
        prefix,
        capacity: pod_blocks(range, prefix),
        nodes: count,
    };
    let blocks = pod_blocks(range, prefix);
    if (nodes.len() as u64) > blocks {
        return Err(exhausted());
    }
    let step = 1u64 << (32 - u32::from(prefix));
    let block = |i: u64| -> Ipv4Net {
        let addr = u64::from(u32::from(range.network())) + i * step;
        Ipv4Net::new(Ipv4Addr::from(addr as u32), prefix).unwrap_or(range)
    };
    let mut used: BTreeSet<Ipv4Net> = BTreeSet::new();
    let mut unassigned = Vec::new();
    for (i, n) in nodes.iter_mut().enumerate() {
        match previous.get(&n.name) {
            Some(c) if c.prefix_len() == prefix && range.contains(c) && used.insert(*c) => {
                n.pod_cidr = *c;
            }
            _ => unassigned.push(i),
        }
    }
    let mut next = 0u64;
    for i in unassigned {
        while next < blocks && used.contains(&block(next)) {
            next += 1;
        }
        if next >= blocks {
            return Err(exhausted());
        }
        nodes[i].pod_cidr = block(next);
        used.insert(block(next));
        next += 1;
    }
    Ok(())
}

/// The nodes a profile describes, with planned addresses from the node subnet: real for the
/// local provider (it assigns exactly these), placeholders for clouds until provisioned.
pub fn planned(
    profile: &Profile,
    previous: &BTreeMap<String, Ipv4Net>,
) -> Result<Inventory, PodCidrExhausted> {
    let net = &profile.network;
    let first = match profile.provider.kind {
        crate::profile::ProviderKind::Local => LOCAL_FIRST_HOST,
        // Clouds reserve the first four addresses of a subnet.
        _ => 4,
    };
    let base = u64::from(u32::from(net.node_cidr.network())) + first;
    let etcd_members = profile.etcd_members();
    let mut nodes = Vec::new();
    let mut push = |name: String,
                    roles: BTreeSet<Role>,
                    group: &str,
                    gpus: u32,
                    labels: BTreeMap<String, String>,
                    taints: Vec<Taint>| {
        let ip = Ipv4Addr::from((base + nodes.len() as u64 + 1) as u32);
        nodes.push(Node {
            name,
            roles,
            internal_ip: ip,
            external_ip: None,
            pod_cidr: net.pod_cidr,
            ssh: SshEndpoint {
                host: IpAddr::V4(ip),
                port: profile.ssh.port,
                user: profile.ssh.user.clone(),
                key: profile.ssh.private_key.clone(),
                bastion: None,
            },
            group: group.to_string(),
            gpus,
            labels,
            taints,
        });
    };
    for i in 1..=profile.control_plane.count {
        let mut roles = BTreeSet::from([Role::ControlPlane]);
        if i <= etcd_members {
            roles.insert(Role::Etcd);
        }
        push(
            control_plane_node_name(i),
            roles,
            "controlPlane",
            0,
            BTreeMap::new(),
            Vec::new(),
        );
    }
    for g in &profile.workers {
        let mut labels = g.labels.clone();
        if profile.provider.kind == crate::profile::ProviderKind::Aws
            && g.aws.as_ref().is_some_and(|a| a.efa)
        {
            // Launched with EFA interfaces: the EFA device plugin runs here (and only here).
            use crate::profile::efa_layout::{EFA_LABEL_KEY, EFA_LABEL_VALUE};
            labels
                .entry(EFA_LABEL_KEY.to_string())
                .or_insert_with(|| EFA_LABEL_VALUE.to_string());
        }
        if crate::profile::gpu_nic_layout::group_has_tcpx(profile, g) {
            // A3 High with GPU NICs: the TCPX receive daemon and plugin installer run here.
            use crate::profile::gpu_nic_layout::{TCPX_LABEL_KEY, TCPX_LABEL_VALUE};
            labels
                .entry(TCPX_LABEL_KEY.to_string())
                .or_insert_with(|| TCPX_LABEL_VALUE.to_string());
        }
        for i in 1..=g.count {
            push(
                worker_node_name(&g.name, i),
                BTreeSet::from([Role::Worker]),
                &g.name,
                g.gpus_per_node,
                labels.clone(),
                g.taints.clone(),
            );
        }
    }
    allocate_pod_cidrs(&mut nodes, net.pod_cidr, net.pod_prefix_per_node, previous)?;
    let api = default_api_endpoint(profile, &nodes);
    Ok(Inventory {
        cluster: profile.name.clone(),
        nodes,
        api,
        planned: !matches!(profile.provider.kind, crate::profile::ProviderKind::Local),
    })
}

/// The API endpoint for people and tools (the admin kubeconfig) when the provider has no load
/// balancer to offer: the profile's endpoint name if set, else for local nodes with several
/// control planes the host-side load balancer (`provider::local::api_proxy`), else the first
/// control plane (its external address when it has one, so the operator's machine reaches it).
/// Kubelets and kube-proxy never use this: they dial `https://127.0.0.1:<port>` on every node —
/// the apiserver itself on a control plane, the node-local balancer to every apiserver elsewhere
/// (`render::api_proxy`) — so several control planes work without any load balancer.
pub fn default_api_endpoint(profile: &Profile, nodes: &[Node]) -> ApiEndpoint {
    let port = profile.api_server.port;
    let cps: Vec<&Node> = nodes.iter().filter(|n| n.has(Role::ControlPlane)).collect();
    if let Some(e) = &profile.api_server.endpoint {
        return ApiEndpoint {
            host: e.clone(),
            port,
            addresses: e.parse().into_iter().collect(),
        };
    }
    if cps.len() > 1 && profile.provider.kind == crate::profile::ProviderKind::Local {
        // The local provider runs a load balancer on the host's bridge address.
        let host = Ipv4Addr::from(u32::from(profile.network.node_cidr.network()).saturating_add(1));
        return ApiEndpoint {
            host: host.to_string(),
            port,
            addresses: vec![IpAddr::V4(host)],
        };
    }
    let addr = cps
        .first()
        .map(|n| n.external_ip.unwrap_or(IpAddr::V4(n.internal_ip)))
        .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    ApiEndpoint {
        host: addr.to_string(),
        port,
        addresses: vec![addr],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn node(name: &str) -> Node {
        Node {
            name: name.into(),
            roles: BTreeSet::from([Role::Worker]),
            internal_ip: Ipv4Addr::new(10, 0, 0, 1),
            external_ip: None,
            pod_cidr: "0.0.0.0/0".parse().unwrap(),
            ssh: SshEndpoint {
                host: IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1)),
                port: 22,
                user: "root".into(),
                key: None,
                bastion: None,
            },
            group: "g".into(),
            gpus: 0,
            labels: BTreeMap::new(),
            taints: vec![],
        }
    }

    #[test]
    fn allocation_is_stable_when_nodes_change() {
        let range: Ipv4Net = "10.200.0.0/16".parse().unwrap();
        let mut nodes = vec![node("a"), node("b"), node("c")];
        allocate_pod_cidrs(&mut nodes, range, 24, &BTreeMap::new()).unwrap();
        let cidrs: Vec<String> = nodes.iter().map(|n| n.pod_cidr.to_string()).collect();
        assert_eq!(cidrs, ["10.200.0.0/24", "10.200.1.0/24", "10.200.2.0/24"]);
        let prev: BTreeMap<String, Ipv4Net> =
            nodes.iter().map(|n| (n.name.clone(), n.pod_cidr)).collect();
        // Remove b, add d: c keeps its block, d takes the freed one.
        let mut nodes = vec![node("a"), node("c"), node("d")];
        allocate_pod_cidrs(&mut nodes, range, 24, &prev).unwrap();
        let cidrs: Vec<String> = nodes.iter().map(|n| n.pod_cidr.to_string()).collect();
        assert_eq!(cidrs, ["10.200.0.0/24", "10.200.2.0/24", "10.200.1.0/24"]);
    }

    #[test]
    fn allocation_refuses_overflow() {
        let range: Ipv4Net = "10.200.0.0/23".parse().unwrap();
        let mut nodes = vec![node("a"), node("b"), node("c")];
        let e = allocate_pod_cidrs(&mut nodes, range, 24, &BTreeMap::new()).unwrap_err();
        assert_eq!(e.capacity, 2);
    }
}
