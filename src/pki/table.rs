//! The certificate table: one row per certificate, in the style of kubeadm's cert list. Issuing,
//! re-use checks, kubeconfigs and `certs check` all walk these rows; nothing else in `pki` knows
//! which certificates exist.

use std::collections::BTreeSet;
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};

use serde::Serialize;

use super::layout;
use crate::inventory::{Inventory, Node, Role};
use crate::profile::{KeyAlgorithm, Profile};

/// The three certificate authorities.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, serde::Deserialize,
)]
pub enum CaId {
    Kubernetes,
    Etcd,
    FrontProxy,
}

impl CaId {
    pub const ALL: [CaId; 3] = [CaId::Kubernetes, CaId::Etcd, CaId::FrontProxy];

    /// Table (and file) name of the CA.
    pub fn name(self) -> &'static str {
        match self {
            CaId::Kubernetes => layout::CA,
            CaId::Etcd => layout::ETCD_CA,
            CaId::FrontProxy => layout::FRONT_PROXY_CA,
        }
    }
}

/// Key usages this PKI uses (a subset of RFC 5280's).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum KeyUsage {
    DigitalSignature,
    KeyEncipherment,
    KeyCertSign,
    CrlSign,
}

/// Extended key usages this PKI uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum Eku {
    ServerAuth,
    ClientAuth,
}

/// A subject alternative name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub enum San {
    Dns(String),
    Ip(IpAddr),
}

impl San {
    /// A name from user input: an address if it parses as one, else a DNS name.
    pub fn parse(s: &str) -> San {
        match s.parse::<IpAddr>() {
            Ok(ip) => San::Ip(ip),
            Err(_) => San::Dns(s.to_string()),
        }
    }
}

impl fmt::Display for San {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            San::Dns(d) => write!(f, "DNS:{d}"),
            San::Ip(ip) => write!(f, "IP:{ip}"),
        }
    }
}

/// How a row's SANs are derived.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SanRule {
    None,
    /// The node's name and every address (kubelet serving).
    NodeNameAndAddresses,
    /// Service IP, `kubernetes.*` names, control planes, API endpoint, `apiServer.extraSANs`.
    ApiServer,
    /// localhost, 127.0.0.1, the member's name and addresses (etcd server and peer).
    EtcdMember,
}

/// Whether a row is one certificate for the cluster or one per node with a role.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scope {
    Cluster,
    /// One per node (every node runs a kubelet).
    EveryNode,
    /// One per node with this role.
    EachNodeWith(Role),
}

/// The certificate's common name.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cn {
    Fixed(&'static str),
    /// `<prefix><node name>`.
    Node(&'static str),
}

/// What a row's kubeconfig points at, when the identity gets one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum KubeconfigServer {
    /// The cluster's API endpoint (`inventory.api.url()`).
    ApiEndpoint,
    /// `https://127.0.0.1:<apiServer.port>`: on a control plane its own apiserver, on any other
    /// node the node-local API endpoint to every apiserver (`render::api_proxy`).
    LocalApiServer,
}

/// One row of the table.
#[derive(Debug, Clone, Copy)]
pub struct Row {
    /// Table/file name for cluster-scoped rows; per-node rows use `node_name`.
    pub name: &'static str,
    /// File name of a per-node row from the node name (from `layout`).
    pub node_name: Option<fn(&str) -> String>,
    /// Issuing CA; `None` for the self-signed CAs themselves.
    pub ca: Option<CaId>,
    /// Set on CA rows: which CA this is.
    pub is_ca: Option<CaId>,
    pub cn: Cn,
    pub orgs: &'static [&'static str],
    pub usages: &'static [KeyUsage],
    pub ekus: &'static [Eku],
    pub sans: SanRule,
    pub scope: Scope,
    pub kubeconfig: Option<KubeconfigServer>,
}

const CA_USAGES: &[KeyUsage] = &[
    KeyUsage::DigitalSignature,
    KeyUsage::KeyCertSign,
    KeyUsage::CrlSign,
];
/// kubeadm's leaf usages; key encipherment is dropped for ECDSA keys (see `Cert::key_usages`).
const LEAF_USAGES: &[KeyUsage] = &[KeyUsage::DigitalSignature, KeyUsage::KeyEncipherment];
const SERVER: &[Eku] = &[Eku::ServerAuth];
const CLIENT: &[Eku] = &[Eku::ClientAuth];
const SERVER_CLIENT: &[Eku] = &[Eku::ServerAuth, Eku::ClientAuth];

const fn ca(id: CaId, name: &'static str, cn: &'static str) -> Row {
    Row {
        name,
        node_name: None,
        ca: None,
        is_ca: Some(id),
        cn: Cn::Fixed(cn),
        orgs: &[],
        usages: CA_USAGES,
        ekus: &[],
        sans: SanRule::None,
        scope: Scope::Cluster,
        kubeconfig: None,
    }
}

const fn client(
    name: &'static str,
    ca: CaId,
    cn: &'static str,
    orgs: &'static [&'static str],
    kubeconfig: Option<KubeconfigServer>,
) -> Row {
    Row {
        name,
        node_name: None,
        ca: Some(ca),
        is_ca: None,
        cn: Cn::Fixed(cn),
        orgs,
        usages: LEAF_USAGES,
        ekus: CLIENT,
        sans: SanRule::None,
        scope: Scope::Cluster,
        kubeconfig,
    }
}

/// The user Prometheus scrapes as (CN of `prometheus-client`; bound by the monitoring RBAC).
pub const PROMETHEUS_USER: &str = "k8sforge:prometheus";

/// Every certificate of a cluster. CAs come first; a CA row precedes every row it signs.
///
/// apiserver-kubelet-client carries O=system:masters (not kubeadm's kubeadm:cluster-admins):
/// the kubelet authorizes the apiserver through a SubjectAccessReview, and system:masters is
/// authorized without any ClusterRoleBinding, so logs/exec work before add-ons create RBAC
/// objects; kubeadm:cluster-admins only works once its binding exists. The certificate stays
/// on control-plane nodes.
pub const TABLE: &[Row] = &[
    ca(CaId::Kubernetes, layout::CA, "kubernetes-ca"),
    ca(CaId::Etcd, layout::ETCD_CA, "etcd-ca"),
    ca(CaId::FrontProxy, layout::FRONT_PROXY_CA, "front-proxy-ca"),
    client(
        layout::ADMIN,
        CaId::Kubernetes,
        "kubernetes-admin",
        &["system:masters"],
        Some(KubeconfigServer::ApiEndpoint),
    ),
    Row {
        name: "kubelet-<node>",
        node_name: Some(layout::kubelet),
        ca: Some(CaId::Kubernetes),
        is_ca: None,
        cn: Cn::Node("system:node:"),
        orgs: &["system:nodes"],
        usages: LEAF_USAGES,
        ekus: SERVER_CLIENT,
        sans: SanRule::NodeNameAndAddresses,
        scope: Scope::EveryNode,
        kubeconfig: Some(KubeconfigServer::LocalApiServer),
    },
    client(
        layout::KUBE_PROXY,
        CaId::Kubernetes,
        "system:kube-proxy",
        &["system:node-proxier"],
        Some(KubeconfigServer::LocalApiServer),
    ),
    client(
        layout::CONTROLLER_MANAGER,
        CaId::Kubernetes,
        "system:kube-controller-manager",
        &[],
        Some(KubeconfigServer::LocalApiServer),
    ),
    client(
        layout::SCHEDULER,
        CaId::Kubernetes,
        "system:kube-scheduler",
        &[],
        Some(KubeconfigServer::LocalApiServer),
    ),
    Row {
        name: layout::APISERVER,
        node_name: None,
        ca: Some(CaId::Kubernetes),
        is_ca: None,
        cn: Cn::Fixed("kube-apiserver"),
        orgs: &[],
        usages: LEAF_USAGES,
        ekus: SERVER,
        sans: SanRule::ApiServer,
        scope: Scope::Cluster,
        kubeconfig: None,
    },
    client(
        layout::APISERVER_KUBELET_CLIENT,
        CaId::Kubernetes,
        "kube-apiserver-kubelet-client",
        &["system:masters"],
        None,
    ),
    client(
        layout::APISERVER_ETCD_CLIENT,
        CaId::Etcd,
        "kube-apiserver-etcd-client",
        &[],
        None,
    ),
    Row {
        name: "etcd/server-<node>",
        node_name: Some(layout::etcd_server),
        ca: Some(CaId::Etcd),
        is_ca: None,
        cn: Cn::Node(""),
        orgs: &[],
        usages: LEAF_USAGES,
        ekus: SERVER_CLIENT,
        sans: SanRule::EtcdMember,
        scope: Scope::EachNodeWith(Role::Etcd),
        kubeconfig: None,
    },
    Row {
        name: "etcd/peer-<node>",
        node_name: Some(layout::etcd_peer),
        ca: Some(CaId::Etcd),
        is_ca: None,
        cn: Cn::Node(""),
        orgs: &[],
        usages: LEAF_USAGES,
        ekus: SERVER_CLIENT,
        sans: SanRule::EtcdMember,
        scope: Scope::EachNodeWith(Role::Etcd),
        kubeconfig: None,
    },
    client(
        layout::ETCD_CLIENT,
        CaId::Etcd,
        "kube-etcd-healthcheck-client",
        &[],
        None,
    ),
    // Prometheus (monitoring add-on): one identity for the control plane and kubelets, one for
    // etcd (whose client port trusts only the etcd CA).
    client(
        layout::PROMETHEUS_CLIENT,
        CaId::Kubernetes,
        PROMETHEUS_USER,
        &[],
        None,
    ),
    client(
        layout::ETCD_PROMETHEUS_CLIENT,
        CaId::Etcd,
        "k8sforge-prometheus-etcd-client",
        &[],
        None,
    ),
    client(
        layout::FRONT_PROXY_CLIENT,
        CaId::FrontProxy,
        "front-proxy-client",
        &[],
        None,
    ),
];

/// One concrete certificate: a table row expanded for this profile and inventory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Cert {
    /// File name under `pki/` without extension, e.g. `kubelet-gpu-17` or `etcd/ca`.
    pub name: String,
    /// Issuing CA; `None` for a CA (self-signed).
    pub ca: Option<CaId>,
    /// Set for CA certificates.
    pub is_ca: Option<CaId>,
    pub cn: String,
    pub orgs: Vec<String>,
    #[serde(skip)]
    usages: &'static [KeyUsage],
    pub ekus: Vec<Eku>,
    /// Deduplicated, in a stable order.
    pub sans: Vec<San>,
    /// The node this certificate belongs to (per-node rows).
    pub node: Option<String>,
    #[serde(skip)]
    pub kubeconfig: Option<KubeconfigServer>,
}

impl Cert {
    /// Key usages for a key of `alg`: key encipherment only applies to RSA keys (RFC 5480
    /// forbids it for EC keys); everything else comes from the row.
    pub fn key_usages(&self, alg: KeyAlgorithm) -> Vec<KeyUsage> {
        self.usages
            .iter()
            .copied()
            .filter(|u| *u != KeyUsage::KeyEncipherment || alg != KeyAlgorithm::EcdsaP256)
            .collect()
    }

    /// The user name the apiserver sees for this client certificate.
    pub fn user(&self) -> &str {
        &self.cn
    }
}

/// Expand the table for a profile and inventory: CAs first, then every leaf in table order,
/// per-node rows in inventory order. Deterministic for the same inputs.
pub fn expand(profile: &Profile, inventory: &Inventory) -> Vec<Cert> {
    let mut out = Vec::new();
    for row in TABLE {
        match row.scope {
            Scope::Cluster => out.push(concrete(
                row,
                row.name.to_string(),
                None,
                profile,
                inventory,
            )),
            Scope::EveryNode => {
                for n in &inventory.nodes {
                    out.push(per_node(row, n, profile, inventory));
                }
            }
            Scope::EachNodeWith(role) => {
                for n in inventory.with_role(role) {
                    out.push(per_node(row, n, profile, inventory));
                }
            }
        }
    }
    out
}

fn per_node(row: &Row, node: &Node, profile: &Profile, inventory: &Inventory) -> Cert {
    let name = match row.node_name {
        Some(f) => f(&node.name),
        None => format!("{}-{}", row.name, node.name),
    };
    concrete(row, name, Some(node), profile, inventory)
}

fn concrete(
    row: &Row,
    name: String,
    node: Option<&Node>,
    profile: &Profile,
    inventory: &Inventory,
) -> Cert {
    let node_name = node.map(|n| n.name.as_str()).unwrap_or_default();
    let cn = match row.cn {
        Cn::Fixed(s) => s.to_string(),
        Cn::Node(prefix) => format!("{prefix}{node_name}"),
    };
    Cert {
        name,
        ca: row.ca,
        is_ca: row.is_ca,
        cn,
        orgs: row.orgs.iter().map(|s| s.to_string()).collect(),
        usages: row.usages,
        ekus: row.ekus.to_vec(),
        sans: sans(row.sans, node, profile, inventory),
        node: node.map(|n| n.name.clone()),
        kubeconfig: row.kubeconfig,
    }
}

fn sans(rule: SanRule, node: Option<&Node>, profile: &Profile, inventory: &Inventory) -> Vec<San> {
    let mut v: Vec<San> = Vec::new();
    let node_names = |v: &mut Vec<San>, n: &Node| {
        v.push(San::Dns(n.name.clone()));
        v.extend(n.addresses().into_iter().map(San::Ip));
    };
    match rule {
        SanRule::None => {}
        SanRule::NodeNameAndAddresses => {
            if let Some(n) = node {
                node_names(&mut v, n);
            }
        }
        SanRule::EtcdMember => {
            v.push(San::Dns("localhost".into()));
            v.push(San::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)));
            if let Some(n) = node {
                node_names(&mut v, n);
            }
        }
        SanRule::ApiServer => {
            v.push(San::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST)));
            v.push(San::Ip(IpAddr::V4(profile.api_service_ip())));
            let domain = &profile.kubernetes.cluster_domain;
            for d in [
                "kubernetes".to_string(),
                "kubernetes.default".to_string(),
                "kubernetes.default.svc".to_string(),
                format!("kubernetes.default.svc.{domain}"),
            ] {
                v.push(San::Dns(d));
            }
            for n in inventory.with_role(Role::ControlPlane) {
                node_names(&mut v, n);
            }
            v.push(San::parse(&inventory.api.host));
            v.extend(inventory.api.addresses.iter().copied().map(San::Ip));
            v.extend(profile.api_server.extra_sans.iter().map(|s| San::parse(s)));
        }
    }
    // Keep first occurrences, drop repeats (e.g. the API host equal to a control-plane address).
    let mut seen = BTreeSet::new();
    v.retain(|s| seen.insert(s.clone()));
    v
}

/// The expanded certificates that have a kubeconfig.
pub fn kubeconfig_identities(certs: &[Cert]) -> impl Iterator<Item = &Cert> {
    certs.iter().filter(|c| c.kubeconfig.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_1000_expands_to_one_row_per_certificate() {
        let p = crate::profile::load("gpu-1000", &[]).unwrap().profile;
        let inv = crate::inventory::planned(&p, &Default::default()).unwrap();
        let certs = expand(&p, &inv);
        // 3 CAs, 1003 kubelets, 3 etcd members x (server + peer), 11 cluster-wide leaves.
        assert_eq!(inv.nodes.len(), 1003);
        assert_eq!(certs.len(), 3 + 1003 + 6 + 11);
        let names: BTreeSet<&str> = certs.iter().map(|c| c.name.as_str()).collect();
        assert_eq!(names.len(), certs.len(), "names are unique");
        assert!(certs[..3].iter().all(|c| c.is_ca.is_some()));
        assert!(certs[3..]
            .iter()
            .all(|c| c.is_ca.is_none() && c.ca.is_some()));
        assert_eq!(kubeconfig_identities(&certs).count(), 4 + 1003);
        let etcd = certs.iter().filter(|c| c.ca == Some(CaId::Etcd)).count();
        assert_eq!(etcd, 6 + 3);
    }

    #[test]
    fn extra_sans_and_endpoint_reach_the_apiserver_certificate_once() {
        let mut p = crate::profile::load("local-ha", &[]).unwrap().profile;
        p.api_server.endpoint = Some("api.example.test".into());
        p.api_server.extra_sans = vec!["192.0.2.9".into(), "api.example.test".into()];
        let inv = crate::inventory::planned(&p, &Default::default()).unwrap();
        let certs = expand(&p, &inv);
        let api = certs.iter().find(|c| c.name == "apiserver").unwrap();
        let count = |s: &San| api.sans.iter().filter(|x| *x == s).count();
        assert_eq!(count(&San::Dns("api.example.test".into())), 1);
        assert_eq!(count(&San::Ip("192.0.2.9".parse().unwrap())), 1);
        assert_eq!(count(&San::Ip(IpAddr::V4(Ipv4Addr::LOCALHOST))), 1);
        assert_eq!(api.ekus, [Eku::ServerAuth]);
        assert_eq!(
            api.key_usages(KeyAlgorithm::EcdsaP256),
            [KeyUsage::DigitalSignature]
        );
        assert_eq!(
            api.key_usages(KeyAlgorithm::Rsa2048),
            [KeyUsage::DigitalSignature, KeyUsage::KeyEncipherment]
        );
    }
}
