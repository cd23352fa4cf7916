//! What templates see: cluster-wide values and version switches (computed once per render) and
//! per-node values.

use serde::Serialize;

use super::RenderError;
use crate::artifacts::{self, Release};
use crate::inventory::{Inventory, Node, Role};
use crate::profile::{PodRouting, Profile, ProviderKind, Taint, TaintEffect};

/// CN of the front-proxy client certificate; the apiserver only trusts request headers from a
/// client with this name. Must equal the PKI table's CN for `front-proxy-client` (kubeadm's).
pub const FRONT_PROXY_CLIENT_CN: &str = "front-proxy-client";

/// Taint every control plane registers with, so ordinary workloads stay off it.
pub const CONTROL_PLANE_TAINT: &str = "node-role.kubernetes.io/control-plane";

/// Label carrying the node's worker group (or `controlPlane`), for add-on selectors.
pub const GROUP_LABEL: &str = "k8sforge.io/node-group";

/// Label that marks a GPU node: the device plugin DaemonSet (addons) selects exactly these
/// nodes. Nodes of a worker group with `gpusPerNode > 0` carry it automatically.
pub const GPU_LABEL_KEY: &str = "k8sforge.io/gpu";
pub const GPU_LABEL_VALUE: &str = "true";

/// Flags and fields that differ between supported versions.
#[derive(Debug, Clone, Copy, Serialize, PartialEq, Eq)]
pub struct Features {
    /// KubeletConfiguration.containerRuntimeEndpoint exists since 1.27; before, only the flag.
    pub runtime_endpoint_in_config: bool,
    /// KubeletConfiguration.failCgroupV1 exists since 1.31 (and would refuse cgroup v1 hosts if true).
    pub fail_cgroup_v1_field: bool,
    /// Kubelet 1.35+ refuses cgroup v1 hosts by default (cgroup v1 is deprecated upstream):
    /// real nodes keep that refusal (`failCgroupV1: true`); only the local nodes, which share
    /// this machine's cgroup v1 hierarchy, opt out.
    pub cgroup_v2_required: bool,
    /// containerd 2.x reads config version 3 with the split CRI plugins; 1.6/1.7 read version 2.
    pub containerd_v3: bool,
    /// containerd 2.1 replaced the CNI `bin_dir` string with a `bin_dirs` list.
    pub cni_bin_dirs: bool,
}

fn parse_minor(v: &str) -> Option<(u32, u32)> {
    artifacts::minor_version(v)
}

impl Features {
    pub fn for_release(release: &Release) -> Result<Features, RenderError> {
        let k8s = parse_minor(release.kubernetes).ok_or_else(|| RenderError::Version {
            what: "Kubernetes",
            version: release.kubernetes.to_string(),
        })?;
        let containerd = parse_minor(release.containerd).ok_or_else(|| RenderError::Version {
            what: "containerd",
            version: release.containerd.to_string(),
        })?;
        Ok(Features {
            runtime_endpoint_in_config: k8s >= (1, 27),
            fail_cgroup_v1_field: k8s >= (1, 31),
            cgroup_v2_required: k8s >= (1, 35),
            containerd_v3: containerd >= (2, 0),
            cni_bin_dirs: containerd >= (2, 1),
        })
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct ClusterCtx {
    pub name: String,
    pub kubernetes_version: String,
    pub containerd_version: String,
    pub provider: &'static str,
    /// systemd-nspawn nodes: the container-specific workarounds apply.
    pub local: bool,
    /// The nodes are containers on a shared kernel (local, or `provider.containerNodes`).
    pub container: bool,
    /// Pod MTU for the CNI bridge: set in VXLAN mode (underlay minus the encapsulation),
    /// otherwise the pod interfaces keep the default.
    pub pod_mtu: Option<u32>,
    pub cluster_domain: String,
    pub pod_cidr: String,
    pub service_cidr: String,
    pub dns_service_ip: String,
    pub api_port: u16,
    pub etcd_servers: String,
    pub etcd_initial_cluster: String,
    pub service_account_issuer: String,
    pub audit_log_max_age_days: u32,
    pub front_proxy_client_cn: &'static str,
    pub sandbox_image: String,
    pub resolv_conf: &'static str,
    pub protect_kernel_defaults: bool,
    /// Monitoring is on: the scheduler, controller manager and kube-proxy serve metrics on the
    /// node address for Prometheus (`monitoring::scrape`), not on loopback only.
    pub metrics_on_node_address: bool,
}

impl ClusterCtx {
    pub fn new(
        profile: &Profile,
        inventory: &Inventory,
        release: &Release,
        images: &crate::artifacts::ImageRefs,
    ) -> ClusterCtx {
        let local = profile.provider.kind == ProviderKind::Local;
        let members: Vec<&Node> = inventory.with_role(Role::Etcd).collect();
        let etcd_servers = members
            .iter()
            .map(|n| format!("https://{}:2379", n.internal_ip))
            .collect::<Vec<_>>()
            .join(",");
        let etcd_initial_cluster = members
            .iter()
            .map(|n| format!("{}=https://{}:2380", n.name, n.internal_ip))
            .collect::<Vec<_>>()
            .join(",");
        ClusterCtx {
            name: profile.name.clone(),
            kubernetes_version: release.kubernetes.to_string(),
            containerd_version: release.containerd.to_string(),
            provider: profile.provider.kind.as_str(),
            local,
            container: local || profile.provider.container_nodes,
            pod_mtu: (profile.pod_routing() == Some(PodRouting::Vxlan))
                .then(|| super::routes::vxlan_mtu(profile.provider.kind)),
            cluster_domain: profile.kubernetes.cluster_domain.clone(),
            pod_cidr: profile.network.pod_cidr.to_string(),
            service_cidr: profile.network.service_cidr.to_string(),
            dns_service_ip: profile.network.dns_service_ip.to_string(),
            api_port: profile.api_server.port,
            etcd_servers,
            etcd_initial_cluster,
            // The in-cluster name, not the API endpoint: it stays valid when the endpoint or load
            // balancer changes, and an issuer change would invalidate every issued token.
            service_account_issuer: format!(
                "https://kubernetes.default.svc.{}",
                profile.kubernetes.cluster_domain
            ),
            audit_log_max_age_days: profile.api_server.audit_log_max_age_days,
            front_proxy_client_cn: FRONT_PROXY_CLIENT_CN,
            sandbox_image: images.pause.clone(),
            // Cloud images (Ubuntu) run systemd-resolved, whose /etc/resolv.conf stub (127.0.0.53)
            // is unreachable from pods; kubelet must hand pods the real upstream list.
            resolv_conf: match profile.provider.kind {
                ProviderKind::Aws | ProviderKind::Gcp => "/run/systemd/resolve/resolv.conf",
                ProviderKind::Local | ProviderKind::Static => "/etc/resolv.conf",
            },
            // Real machines get the kernel settings from a sysctl.d file, so kubelet may insist on
            // them; container nodes get them from bind mounts (node-prep), kubelet must not write.
            protect_kernel_defaults: !local,
            metrics_on_node_address: profile.monitoring_enabled(),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct TaintCtx {
    pub key: String,
    pub value: Option<String>,
    pub effect: &'static str,
}

#[derive(Debug, Clone, Serialize)]
pub struct NodeCtx {
    pub name: String,
    pub ip: String,
    pub pod_cidr: String,
    pub etcd: bool,
    pub control_plane: bool,
    /// `k=v,k=v` for `--node-labels`, sorted.
    pub labels: String,
    pub taints: Vec<TaintCtx>,
}

fn effect(e: TaintEffect) -> &'static str {
    match e {
        TaintEffect::NoSchedule => "NoSchedule",
        TaintEffect::PreferNoSchedule => "PreferNoSchedule",
        TaintEffect::NoExecute => "NoExecute",
    }
}

impl NodeCtx {
    pub fn new(node: &Node) -> Result<NodeCtx, RenderError> {
        let mut labels = node.labels.clone();
        labels.insert(GROUP_LABEL.to_string(), node.group.clone());
        if node.gpus > 0 {
            // GPU nodes carry the label the device plugin selects on, unless the profile set it.
            labels
                .entry(GPU_LABEL_KEY.to_string())
                .or_insert_with(|| GPU_LABEL_VALUE.to_string());
        }
        for (k, v) in &labels {
            check_label(&node.name, k, v)?;
        }
        let labels = labels
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut taints: Vec<Taint> = node.taints.clone();
        if node.gpus > 0 {
            // Unschedulable until the GPU preflight passes (the addons phase lifts it).
            taints.push(super::gpu::unverified_taint());
        }
        if node.has(Role::ControlPlane) {
            taints.push(Taint {
                key: CONTROL_PLANE_TAINT.to_string(),
                value: None,
                effect: TaintEffect::NoSchedule,
            });
        }
        taints.sort();
        taints.dedup();
        Ok(NodeCtx {
            name: node.name.clone(),
            ip: node.internal_ip.to_string(),
            pod_cidr: node.pod_cidr.to_string(),
            etcd: node.has(Role::Etcd),
            control_plane: node.has(Role::ControlPlane),
            labels,
            taints: taints
                .into_iter()
                .map(|t| TaintCtx {
                    key: t.key,
                    value: t.value,
                    effect: effect(t.effect),
                })
                .collect(),
        })
    }
}

/// Labels a kubelet may set on its own Node: kubelet refuses to start with any other label in
/// the kubernetes.io / k8s.io namespaces (NodeRestriction enforces the same on the API side).
const KUBELET_ALLOWED_LABELS: &[&str] = &[
    "kubernetes.io/hostname",
    "kubernetes.io/arch",
    "kubernetes.io/os",
    "beta.kubernetes.io/arch",
    "beta.kubernetes.io/os",
    "beta.kubernetes.io/instance-type",
    "node.kubernetes.io/instance-type",
    "failure-domain.beta.kubernetes.io/region",
    "failure-domain.beta.kubernetes.io/zone",
    "topology.kubernetes.io/region",
    "topology.kubernetes.io/zone",
];

fn in_domain(prefix: &str, domain: &str) -> bool {
    prefix == domain || prefix.ends_with(&format!(".{domain}"))
}

fn check_label(node: &str, key: &str, value: &str) -> Result<(), RenderError> {
    let bad = |why: &str| RenderError::Label {
        node: node.to_string(),
        label: format!("{key}={value}"),
        why: why.to_string(),
    };
    let plain = |s: &str| {
        s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | '/'))
    };
    if key.is_empty() || !plain(key) || !plain(value) || value.contains('/') {
        return Err(bad(
            "labels may only use letters, digits, '.', '-', '_' (and one '/' in the key)",
        ));
    }
    if let Some((prefix, _)) = key.split_once('/') {
        let restricted = in_domain(prefix, "kubernetes.io") || in_domain(prefix, "k8s.io");
        let self_settable = in_domain(prefix, "kubelet.kubernetes.io")
            || in_domain(prefix, "node.kubernetes.io")
            || KUBELET_ALLOWED_LABELS.contains(&key);
        if restricted && !self_settable {
            return Err(bad("a kubelet may not set labels in the kubernetes.io or k8s.io namespaces except the well-known node labels and *.node.kubernetes.io / *.kubelet.kubernetes.io; apply it through the API instead"));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubelet_label_rules() {
        assert!(check_label("n", "k8sforge.io/gpu", "true").is_ok());
        assert!(check_label("n", "nvidia.com/gpu.present", "true").is_ok());
        assert!(check_label("n", "topology.kubernetes.io/zone", "a").is_ok());
        assert!(check_label("n", "x.node.kubernetes.io/pool", "a").is_ok());
        assert!(check_label("n", "node-role.kubernetes.io/worker", "").is_err());
        assert!(check_label("n", "k8s.io/x", "y").is_err());
        assert!(check_label("n", "a", "with space").is_err());
        assert!(check_label("n", "a", "x,y=z").is_err());
    }

    #[test]
    fn features_by_version() {
        let old = Features::for_release(crate::artifacts::release("v1.28.7").unwrap()).unwrap();
        assert!(old.runtime_endpoint_in_config && !old.fail_cgroup_v1_field);
        assert!(!old.containerd_v3 && !old.cni_bin_dirs);
        let new = Features::for_release(crate::artifacts::release("v1.34.2").unwrap()).unwrap();
        assert!(new.fail_cgroup_v1_field && new.containerd_v3 && new.cni_bin_dirs);
        assert!(!new.cgroup_v2_required);
        let current = Features::for_release(crate::artifacts::release("v1.36.0").unwrap()).unwrap();
        assert!(current.cgroup_v2_required && current.containerd_v3 && current.cni_bin_dirs);
    }
}
