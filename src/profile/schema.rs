//! The profile schema: what cluster the user wants. Field names are camelCase, as in Kubernetes.
//!
//! Unknown fields are not rejected by serde here: the loader collects every one of them (with its
//! position) so that all mistakes of a file are reported together.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

pub use super::storage::StorageSpec;
/// The profile's `artifacts` section lives with the artifact source that reads it.
pub use crate::artifacts::spec::{ArtifactsSpec, Delivery, ImageOverrides, RegistryMirror};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Profile {
    /// Cluster name: names the state directory and tags every cloud resource.
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub provider: ProviderSpec,
    #[serde(default)]
    pub kubernetes: KubernetesSpec,
    #[serde(default)]
    pub network: NetworkSpec,
    pub control_plane: ControlPlaneSpec,
    #[serde(default)]
    pub etcd: EtcdSpec,
    #[serde(default)]
    pub workers: Vec<WorkerGroup>,
    #[serde(default)]
    pub pki: PkiSpec,
    #[serde(default)]
    pub api_server: ApiServerSpec,
    #[serde(default)]
    pub artifacts: ArtifactsSpec,
    #[serde(default)]
    pub ssh: SshSpec,
    /// The NVIDIA stack on nodes of groups with `gpusPerNode > 0` (see `render::gpu`).
    #[serde(default)]
    pub gpu: GpuSpec,
    #[serde(default)]
    pub training: TrainingSpec,
    /// Prometheus, exporters, alerts and dashboards (see `monitoring`).
    #[serde(default)]
    pub monitoring: MonitoringSpec,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ProviderKind {
    /// systemd-nspawn nodes on this machine.
    Local,
    /// Existing hosts listed in an inventory file.
    Static,
    Aws,
    Gcp,
}

impl ProviderKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ProviderKind::Local => "local",
            ProviderKind::Static => "static",
            ProviderKind::Aws => "aws",
            ProviderKind::Gcp => "gcp",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ProviderSpec {
    pub kind: ProviderKind,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalProviderSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none", rename = "static")]
    pub static_hosts: Option<StaticProviderSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsProviderSpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcp: Option<GcpProviderSpec>,
    /// Kernel settings the machines may refuse without failing the runtime phase: for machines
    /// that are containers, whose kernel belongs to their host (`br_netfilter`,
    /// `vm.overcommit_memory`, `swap` …). Refusals of anything else fail the node, named. Local
    /// nodes are always such containers (every refusal is listed, none fails).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub kernel_exceptions: Vec<String>,
    /// The machines are system containers (LXD, systemd-nspawn) sharing their host's kernel:
    /// kubelet tolerates the host's swap, kube-proxy leaves conntrack sizing to the host and
    /// containerd does not lower `oom_score_adj`, as on local nodes (always containers).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub container_nodes: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct LocalProviderSpec {
    /// Host bridge the nodes attach to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bridge: Option<String>,
    /// Where the cached node image and node directories live.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct StaticProviderSpec {
    /// Inventory file of existing hosts, relative to the profile file.
    pub inventory: String,
}

/// How pod traffic gets from one node to another node's pod CIDR (`network.podRouting`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum PodRouting {
    /// Host routes on every node via the owning node: nodes share one L2 segment or subnet, and
    /// on AWS every instance's source/destination check must be off (one API call per instance).
    HostRoutes,
    /// Pod packets encapsulated in VXLAN between node addresses (statically configured, no
    /// daemon): passes the cloud's source/destination check with it on, any node count, any subnets.
    Vxlan,
    /// AWS only: VPC route-table entries (AWS allows 50 routes per table by default).
    RouteTable,
}

impl PodRouting {
    pub fn as_str(self) -> &'static str {
        match self {
            PodRouting::HostRoutes => "hostRoutes",
            PodRouting::Vxlan => "vxlan",
            PodRouting::RouteTable => "routeTable",
        }
    }
}

/// The monitoring add-on set (`monitoring` module).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct MonitoringSpec {
    /// Install it; default: on when some worker group has GPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub enabled: Option<bool>,
    /// How long Prometheus keeps samples (Prometheus duration, e.g. `15d`).
    pub retention: String,
    /// Persistent volume size for Prometheus (e.g. `100Gi`); unset = emptyDir.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_size: Option<String>,
    /// StorageClass of that volume; unset = the cluster default.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub storage_class: Option<String>,
    /// Scrape interval (Prometheus duration).
    pub scrape_interval: String,
    /// Image of NVIDIA's DCGM exporter; unset = the pinned upstream one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dcgm_exporter_image: Option<String>,
}

impl Default for MonitoringSpec {
    fn default() -> Self {
        MonitoringSpec {
            enabled: None,
            retention: "15d".into(),
            storage_size: None,
            storage_class: None,
            scrape_interval: "30s".into(),
            dcgm_exporter_image: None,
        }
    }
}

impl Profile {
    /// Whether the monitoring add-on set is installed: as set, else on GPU clusters.
    pub fn monitoring_enabled(&self) -> bool {
        self.monitoring
            .enabled
            .unwrap_or_else(|| self.workers.iter().any(|g| g.gpus_per_node > 0))
    }

    /// The pod routing in effect: `network.podRouting`, else the provider's default (host routes
    /// for local and static nodes, VXLAN on AWS). `None` on GCP: alias IP ranges route pod CIDRs
    /// in the cloud network.
    pub fn pod_routing(&self) -> Option<PodRouting> {
        match self.provider.kind {
            ProviderKind::Gcp => None,
            ProviderKind::Local | ProviderKind::Static => {
                Some(self.network.pod_routing.unwrap_or(PodRouting::HostRoutes))
            }
            ProviderKind::Aws => Some(self.network.pod_routing.unwrap_or(PodRouting::Vxlan)),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AwsProviderSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default)]
    pub zones: Vec<String>,
    /// CIDRs allowed to reach the API (6443) and SSH (22).
    #[serde(rename = "adminCIDRs")]
    pub admin_cidrs: Vec<Ipv4Net>,
    pub ami: AmiLookup,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bastion: Option<String>,
    /// Routes per VPC route table allowed for this account (AWS default 50).
    #[serde(default = "default_route_table_limit")]
    pub route_table_limit: u32,
    /// How long provision waits for new instances' console output to show their SSH host keys
    /// (cloud-init prints them about a minute after boot) before leaving them to first contact.
    /// Default 120.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key_wait_seconds: Option<u64>,
}

fn default_route_table_limit() -> u32 {
    50
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AmiLookup {
    pub owner: String,
    pub name: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GcpProviderSpec {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub project: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
    #[serde(rename = "adminCIDRs")]
    pub admin_cidrs: Vec<Ipv4Net>,
    /// Boot image, e.g. `projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts`.
    pub image: String,
    /// Seconds provision waits for new instances' SSH host keys in their guest attributes
    /// (the guest agent writes them once booted) before leaving them to first contact.
    /// Default 120.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_key_wait_seconds: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct KubernetesSpec {
    pub version: String,
    pub cluster_domain: String,
    /// Release rows for versions without a built-in one (`super::site_release`).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub extra_releases: Vec<super::site_release::ExtraRelease>,
}

impl Default for KubernetesSpec {
    fn default() -> Self {
        KubernetesSpec {
            version: crate::artifacts::DEFAULT_KUBERNETES_VERSION.to_string(),
            cluster_domain: "cluster.local".to_string(),
            extra_releases: Vec::new(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct NetworkSpec {
    /// The machines' own subnet (local bridge, VPC subnet).
    #[serde(rename = "nodeCIDR")]
    pub node_cidr: Ipv4Net,
    /// Cluster-wide pod range; each node gets one block of `podCIDRPerNode`.
    #[serde(rename = "podCIDR")]
    pub pod_cidr: Ipv4Net,
    #[serde(rename = "podPrefixPerNode")]
    pub pod_prefix_per_node: u8,
    #[serde(rename = "serviceCIDR")]
    pub service_cidr: Ipv4Net,
    /// The `kubernetes` Service's address: always the first address of the service range.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[serde(rename = "apiServiceIP")]
    pub api_service_ip: Option<Ipv4Addr>,
    #[serde(rename = "dnsServiceIP")]
    pub dns_service_ip: Ipv4Addr,
    /// Default by provider: see `Profile::pod_routing`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_routing: Option<PodRouting>,
}

impl Default for NetworkSpec {
    fn default() -> Self {
        NetworkSpec {
            node_cidr: "198.18.0.0/24".parse().unwrap_or_else(|_| unreachable!()),
            pod_cidr: "10.200.0.0/16".parse().unwrap_or_else(|_| unreachable!()),
            pod_prefix_per_node: 24,
            service_cidr: "10.32.0.0/24".parse().unwrap_or_else(|_| unreachable!()),
            api_service_ip: None,
            dns_service_ip: Ipv4Addr::new(10, 32, 0, 10),
            pod_routing: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AwsMachine {
    pub instance_type: String,
    #[serde(default = "default_root_volume")]
    #[serde(rename = "rootVolumeGiB")]
    pub root_volume_gib: u32,
    /// Launch with the type's EFA interfaces in the cluster placement group (EFA types only).
    /// Such instances get no public address (EC2 assigns none with several interfaces): the
    /// machine running k8sforge must reach the VPC's addresses.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub efa: bool,
    /// Launch into this capacity reservation or Capacity Block (RunInstances
    /// `CapacityReservationSpecification`); its zone must be the group's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity_reservation: Option<CapacityReservation>,
}

/// `aws.capacityReservation` of a machine group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CapacityReservation {
    /// `cr-…`: an On-Demand Capacity Reservation, or the reservation of a Capacity Block.
    pub id: String,
    /// The reservation is a Capacity Block for ML (launched with market type `capacity-block`).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub capacity_block: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GcpMachine {
    pub machine_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accelerator_type: Option<String>,
    #[serde(default = "default_root_volume")]
    #[serde(rename = "bootDiskGiB")]
    pub boot_disk_gib: u32,
}

fn default_root_volume() -> u32 {
    100
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ControlPlaneSpec {
    pub count: u32,
    /// Machine shape per cloud; only the section of the selected provider is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsMachine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcp: Option<GcpMachine>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct EtcdSpec {
    /// Members, stacked on the first control-plane nodes. Default: one per control plane.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub members: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct WorkerGroup {
    /// Group name; nodes are named `<name>-<index>`.
    pub name: String,
    pub count: u32,
    #[serde(default)]
    pub gpus_per_node: u32,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    #[serde(default)]
    pub taints: Vec<Taint>,
    /// Machine shape per cloud; only the section of the selected provider is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub aws: Option<AwsMachine>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gcp: Option<GcpMachine>,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Taint {
    pub key: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub value: Option<String>,
    pub effect: TaintEffect,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum TaintEffect {
    NoSchedule,
    PreferNoSchedule,
    NoExecute,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "kebab-case")]
pub enum KeyAlgorithm {
    #[default]
    EcdsaP256,
    Rsa2048,
    Rsa3072,
    Rsa4096,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct PkiSpec {
    pub key_algorithm: KeyAlgorithm,
    pub cert_validity_days: u32,
    pub ca_validity_days: u32,
}

impl Default for PkiSpec {
    fn default() -> Self {
        PkiSpec {
            key_algorithm: KeyAlgorithm::EcdsaP256,
            cert_validity_days: 365,
            ca_validity_days: 3650,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ApiServerSpec {
    pub port: u16,
    /// DNS name clients use for the API (e.g. a CNAME to the cloud load balancer).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Extra names and addresses for the apiserver certificate.
    #[serde(default)]
    #[serde(rename = "extraSANs")]
    pub extra_sans: Vec<String>,
    pub audit_log_max_age_days: u32,
}

impl Default for ApiServerSpec {
    fn default() -> Self {
        ApiServerSpec {
            port: 6443,
            endpoint: None,
            extra_sans: Vec::new(),
            audit_log_max_age_days: 30,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct SshSpec {
    pub user: String,
    pub port: u16,
    /// Private key; default: the key k8sforge generates for the cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub private_key: Option<String>,
    /// Which address of a machine k8sforge dials (without a bastion): its public one when it
    /// has one (default), or its private one — for an operator's machine inside the network
    /// (a VPN, Direct Connect, a host in the VPC).
    #[serde(default, skip_serializing_if = "SshAddress::is_public")]
    pub address: SshAddress,
    /// SSH sessions in flight at once during a phase (default 128). Lower it when the
    /// operator's machine or uplink is the bottleneck, e.g. pushing binaries to many nodes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub concurrency: Option<u32>,
}

/// `ssh.address`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum SshAddress {
    #[default]
    Public,
    Private,
}

impl SshAddress {
    pub fn is_public(&self) -> bool {
        *self == SshAddress::Public
    }
}

impl Default for SshSpec {
    fn default() -> Self {
        SshSpec {
            user: "root".to_string(),
            port: 22,
            private_key: None,
            address: SshAddress::Public,
            concurrency: None,
        }
    }
}

/// A training operator line (`training.operators`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TrainingOperator {
    /// Kubeflow training-operator v1: PyTorchJob, TFJob, MPIJob, …
    V1,
    /// Kubeflow Trainer v2: TrainJob and runtimes, on JobSet.
    V2,
}

impl TrainingOperator {
    pub fn as_str(self) -> &'static str {
        match self {
            TrainingOperator::V1 => "v1",
            TrainingOperator::V2 => "v2",
        }
    }
}

/// The training stack the `training` phase installs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct TrainingSpec {
    /// Install the training stack at all.
    pub enabled: bool,
    /// Operators to install; default by Kubernetes version (see `training::stack`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub operators: Option<Vec<TrainingOperator>>,
    /// Install Kueue; default: where the Kubernetes version supports it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kueue: Option<bool>,
    /// Wait for the controllers to become Available. Only a test whose controller images cannot
    /// run should turn this off; CRDs are awaited either way.
    pub wait_for_controllers: bool,
    /// StorageClasses, local volumes and the teams' dataset/checkpoint PVCs (`profile::storage`).
    pub storage: StorageSpec,
}

impl Default for TrainingSpec {
    fn default() -> Self {
        TrainingSpec {
            enabled: true,
            operators: None,
            kueue: None,
            wait_for_controllers: true,
            storage: StorageSpec::default(),
        }
    }
}

impl Profile {
    /// Number of etcd members (stacked on the first control planes).
    pub fn etcd_members(&self) -> u32 {
        self.etcd.members.unwrap_or(self.control_plane.count)
    }

    /// The `kubernetes` Service address: first host address of the service range.
    pub fn api_service_ip(&self) -> Ipv4Addr {
        self.network
            .api_service_ip
            .unwrap_or_else(|| first_host(self.network.service_cidr))
    }

    pub fn worker_count(&self) -> u64 {
        self.workers.iter().map(|g| u64::from(g.count)).sum()
    }
}

/// First usable address of a range (network address + 1).
pub fn first_host(net: Ipv4Net) -> Ipv4Addr {
    Ipv4Addr::from(u32::from(net.network()).saturating_add(1))
}

/// Where a GPU node's NVIDIA driver comes from (`gpu.driver.source`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum DriverSource {
    /// The OS vendor's precompiled, signed kernel modules for the node's running kernel plus the
    /// matching userspace (Ubuntu: `linux-modules-nvidia-<branch>-server-open-<kernel>`,
    /// `nvidia-utils-<branch>-server`), installed and held by k8sforge.
    #[default]
    OsPackages,
    /// The image already carries the driver (e.g. a vendor deep-learning image): k8sforge only
    /// verifies it is there and of the pinned branch, and holds its packages.
    Preinstalled,
}

impl DriverSource {
    pub fn as_str(self) -> &'static str {
        match self {
            DriverSource::OsPackages => "osPackages",
            DriverSource::Preinstalled => "preinstalled",
        }
    }
}

/// Fabric Manager on GPU nodes (`gpu.fabricManager`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum FabricManagerMode {
    /// Installed and required where the node has NVSwitch devices (HGX 8-GPU boards).
    #[default]
    Auto,
    /// Required on every GPU node: a node without NVSwitch fails the runtime step.
    Required,
    /// Never installed (PCIe GPUs without NVSwitch).
    Disabled,
}

impl FabricManagerMode {
    pub fn as_str(self) -> &'static str {
        match self {
            FabricManagerMode::Auto => "auto",
            FabricManagerMode::Required => "required",
            FabricManagerMode::Disabled => "disabled",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct GpuDriverSpec {
    pub source: DriverSource,
    /// Driver branch: all NVIDIA packages are of this branch (R580: the long-term branch).
    /// Written `580` or `"580"`.
    #[serde(deserialize_with = "string_or_number")]
    pub branch: String,
}

/// A string field that YAML users naturally write as a number (`branch: 580`).
fn string_or_number<'de, D: serde::Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum S {
        Str(String),
        Num(u64),
    }
    Ok(match S::deserialize(d)? {
        S::Str(s) => s,
        S::Num(n) => n.to_string(),
    })
}

impl Default for GpuDriverSpec {
    fn default() -> Self {
        GpuDriverSpec {
            source: DriverSource::OsPackages,
            branch: "580".to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct ContainerToolkitSpec {
    /// NVIDIA container toolkit version (apt version `<version>-1`).
    pub version: String,
    /// Apt repository that serves the toolkit (a `deb` line's URI and suite, without options).
    pub apt_repository: String,
    /// Where the repository's signing key is fetched from (ASCII-armoured).
    pub apt_key_url: String,
}

/// The pinned NVIDIA container toolkit release (apt version `<this>-1`).
pub const TOOLKIT_VERSION: &str = "1.18.0";
/// NVIDIA's production apt repository for the toolkit (a `deb` line without options).
pub const TOOLKIT_APT_REPOSITORY: &str =
    "https://nvidia.github.io/libnvidia-container/stable/deb/$(ARCH) /";
pub const TOOLKIT_APT_KEY_URL: &str = "https://nvidia.github.io/libnvidia-container/gpgkey";

impl Default for ContainerToolkitSpec {
    fn default() -> Self {
        ContainerToolkitSpec {
            version: TOOLKIT_VERSION.to_string(),
            apt_repository: TOOLKIT_APT_REPOSITORY.to_string(),
            apt_key_url: TOOLKIT_APT_KEY_URL.to_string(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct GpuHealthSpec {
    /// Command run on each GPU node (through SSH, as root) instead of k8sforge's own preflight
    /// script: exit 0 passes; otherwise every line it prints is one failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub preflight_command: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", default)]
pub struct GpuSpec {
    pub driver: GpuDriverSpec,
    pub fabric_manager: FabricManagerMode,
    pub container_toolkit: ContainerToolkitSpec,
    pub health: GpuHealthSpec,
}
