//! Compute Engine v1 wire types: only the fields k8sforge sends or reads.
//!
//! Field names and JSON types follow the v1 schema: int64/uint64 travel as JSON strings,
//! int32 and doubles as numbers, enums as strings. Responses carry many more fields; serde
//! ignores them. Enum-like values we read (quota metrics, statuses) stay strings so values
//! newer than this code (e.g. `NVIDIA_H100_GPUS`) still parse.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// int64 fields: JSON strings on the wire; accepted as numbers too when reading.
pub mod int64_string {
    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(v: &Option<i64>, s: S) -> Result<S::Ok, S::Error> {
        match v {
            Some(n) => s.serialize_str(&n.to_string()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Either {
            S(String),
            N(i64),
        }
        match Option::<Either>::deserialize(d)? {
            None => Ok(None),
            Some(Either::N(n)) => Ok(Some(n)),
            Some(Either::S(s)) => s.parse().map(Some).map_err(serde::de::Error::custom),
        }
    }
}

pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Network {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_create_subnetworks: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mtu: Option<i32>,
    #[serde(default, skip_serializing)]
    pub self_link: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SecondaryRange {
    pub range_name: String,
    pub ip_cidr_range: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Subnetwork {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub network: String,
    pub ip_cidr_range: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub secondary_ip_ranges: Vec<SecondaryRange>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub private_ip_google_access: Option<bool>,
    #[serde(default, skip_serializing)]
    pub self_link: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct FirewallAllowed {
    #[serde(rename = "IPProtocol")]
    pub ip_protocol: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Firewall {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub network: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub direction: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub priority: Option<i32>,
    #[serde(default)]
    pub allowed: Vec<FirewallAllowed>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub source_ranges: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub target_tags: Vec<String>,
    #[serde(default, skip_serializing)]
    pub self_link: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AccessConfig {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(rename = "type", skip_serializing_if = "Option::is_none")]
    pub kind: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_tier: Option<String>,
    #[serde(rename = "natIP", default, skip_serializing)]
    pub nat_ip: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AliasIpRange {
    pub ip_cidr_range: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnetwork_range_name: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetworkInterface {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub subnetwork: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub access_configs: Vec<AccessConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub alias_ip_ranges: Vec<AliasIpRange>,
    #[serde(rename = "networkIP", default, skip_serializing)]
    pub network_ip: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nic_type: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InitializeParams {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_image: Option<String>,
    #[serde(
        with = "int64_string",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub disk_size_gb: Option<i64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub disk_type: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AttachedDisk {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub boot: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub auto_delete: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initialize_params: Option<InitializeParams>,
    #[serde(
        with = "int64_string",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub disk_size_gb: Option<i64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AcceleratorConfig {
    pub accelerator_type: String,
    pub accelerator_count: i32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Scheduling {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub on_host_maintenance: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub automatic_restart: Option<bool>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct MetadataItem {
    pub key: String,
    pub value: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Metadata {
    #[serde(default)]
    pub items: Vec<MetadataItem>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Tags {
    #[serde(default)]
    pub items: Vec<String>,
}

/// What an instance is made of: `Instance` fields shared with `bulkInsert`'s instanceProperties.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceProperties {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub machine_type: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub guest_accelerators: Vec<AcceleratorConfig>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub scheduling: Option<Scheduling>,
    #[serde(default)]
    pub disks: Vec<AttachedDisk>,
    #[serde(default)]
    pub network_interfaces: Vec<NetworkInterface>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub metadata: Option<Metadata>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tags: Option<Tags>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    /// Resource policy names (a compact placement policy for A3 groups).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub resource_policies: Vec<String>,
}

/// An instance as read back (only the fields the inventory needs).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Instance {
    pub name: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub self_link: String,
    #[serde(default)]
    pub machine_type: String,
    #[serde(default)]
    pub labels: Labels,
    #[serde(default)]
    pub network_interfaces: Vec<NetworkInterface>,
    #[serde(default)]
    pub guest_accelerators: Vec<AcceleratorConfig>,
    #[serde(default)]
    pub disks: Vec<InstanceDisk>,
    /// The instance's metadata (`ssh-keys`, `enable-guest-attributes`, …).
    #[serde(default)]
    pub metadata: Option<Metadata>,
}

/// `instances.getGuestAttributes`'s answer (only what host keys need).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GuestAttributes {
    #[serde(default)]
    pub query_value: Option<GuestAttributesValue>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct GuestAttributesValue {
    #[serde(default)]
    pub items: Vec<GuestAttributesEntry>,
}

/// One `namespace/key = value` guest attribute.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct GuestAttributesEntry {
    #[serde(default)]
    pub namespace: String,
    #[serde(default)]
    pub key: String,
    #[serde(default)]
    pub value: String,
}

/// An instance's attached disk as `instances.list` reports it.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceDisk {
    #[serde(default)]
    pub boot: Option<bool>,
    /// URL of the disk resource.
    #[serde(default)]
    pub source: Option<String>,
    #[serde(with = "int64_string", default)]
    pub disk_size_gb: Option<i64>,
}

/// A disk resource (`disks.list`): its type and the image it was created from.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Disk {
    pub name: String,
    #[serde(default)]
    pub self_link: String,
    #[serde(with = "int64_string", default)]
    pub size_gb: Option<i64>,
    /// URL ending in `diskTypes/<type>`.
    #[serde(default, rename = "type")]
    pub disk_type: String,
    #[serde(default)]
    pub source_image: Option<String>,
}

/// An image resource (`images.get`): only the family matters here.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Image {
    pub name: String,
    #[serde(default)]
    pub family: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PerInstanceProperties {
    pub name: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkInsertInstanceResource {
    #[serde(with = "int64_string", default)]
    pub count: Option<i64>,
    #[serde(
        with = "int64_string",
        default,
        skip_serializing_if = "Option::is_none"
    )]
    pub min_count: Option<i64>,
    pub instance_properties: InstanceProperties,
    pub per_instance_properties: BTreeMap<String, PerInstanceProperties>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TcpHealthCheck {
    pub port: i32,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(rename = "type")]
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tcp_health_check: Option<TcpHealthCheck>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub check_interval_sec: Option<i32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub timeout_sec: Option<i32>,
    #[serde(default, skip_serializing)]
    pub self_link: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct InstanceGroup {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
    #[serde(default, skip_serializing)]
    pub self_link: String,
    #[serde(default, skip_serializing)]
    pub size: Option<i32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InstanceReference {
    pub instance: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct InstanceGroupsAddInstancesRequest {
    pub instances: Vec<InstanceReference>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Backend {
    pub group: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub balancing_mode: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BackendService {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    pub load_balancing_scheme: String,
    pub protocol: String,
    #[serde(default)]
    pub backends: Vec<Backend>,
    #[serde(default)]
    pub health_checks: Vec<String>,
    #[serde(default, skip_serializing)]
    pub self_link: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Address {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub address_type: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_tier: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    #[serde(default, skip_serializing)]
    pub address: Option<String>,
    #[serde(default, skip_serializing)]
    pub self_link: String,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ForwardingRule {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    #[serde(rename = "IPAddress", skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<String>,
    #[serde(rename = "IPProtocol")]
    pub ip_protocol: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<String>,
    pub load_balancing_scheme: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub network_tier: Option<String>,
    pub backend_service: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: Labels,
    #[serde(default, skip_serializing)]
    pub self_link: String,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Quota {
    /// A string, not an enum: the API adds metrics (e.g. NVIDIA_H100_GPUS) faster than clients.
    #[serde(default)]
    pub metric: String,
    #[serde(default)]
    pub limit: f64,
    #[serde(default)]
    pub usage: f64,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Region {
    pub name: String,
    #[serde(default)]
    pub quotas: Vec<Quota>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Project {
    pub name: String,
    #[serde(default)]
    pub quotas: Vec<Quota>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct AcceleratorType {
    pub name: String,
    #[serde(default)]
    pub maximum_cards_per_instance: Option<i32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BundledAccelerator {
    pub guest_accelerator_type: String,
    pub guest_accelerator_count: i32,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MachineType {
    pub name: String,
    #[serde(default)]
    pub guest_cpus: i32,
    /// Accelerator-optimized types (A2, A3, G2) come with their GPUs attached.
    #[serde(default)]
    pub accelerators: Vec<BundledAccelerator>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OperationErrorItem {
    #[serde(default)]
    pub code: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub location: Option<String>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct OperationError {
    #[serde(default)]
    pub errors: Vec<OperationErrorItem>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkInsertStatus {
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub target_vm_count: Option<i32>,
    #[serde(default)]
    pub created_vm_count: Option<i32>,
    #[serde(default)]
    pub failed_to_create_vm_count: Option<i32>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct BulkInsertMetadata {
    #[serde(default)]
    pub per_location_status: BTreeMap<String, BulkInsertStatus>,
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Operation {
    pub name: String,
    #[serde(default)]
    pub status: String,
    #[serde(default)]
    pub operation_type: String,
    #[serde(default)]
    pub target_link: String,
    #[serde(default)]
    pub zone: Option<String>,
    #[serde(default)]
    pub region: Option<String>,
    #[serde(default)]
    pub error: Option<OperationError>,
    #[serde(default)]
    pub http_error_message: Option<String>,
    #[serde(default)]
    pub instances_bulk_insert_operation_metadata: Option<BulkInsertMetadata>,
}

impl Operation {
    pub fn is_done(&self) -> bool {
        self.status == "DONE"
    }
}

/// One page of a list call.
#[derive(Debug, Clone, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ListPage<T> {
    #[serde(default = "Vec::new")]
    pub items: Vec<T>,
    #[serde(default)]
    pub next_page_token: Option<String>,
}

/// The API's error body: `{"error": {"code", "message", "errors": [{"reason", ...}]}}`.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct ErrorBody {
    pub error: ErrorDetail,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ErrorDetail {
    #[serde(default)]
    pub code: u16,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub status: Option<String>,
    #[serde(default)]
    pub errors: Vec<ErrorItem>,
}

#[derive(Debug, Clone, Default, Deserialize)]
pub struct ErrorItem {
    #[serde(default)]
    pub reason: String,
    #[serde(default)]
    pub message: String,
    #[serde(default)]
    pub domain: Option<String>,
}
