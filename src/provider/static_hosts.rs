//! The `static` provider: existing machines listed in a hosts file, for users who already have
//! hardware. Nothing is created or deleted; the file is the inventory.
//!
//! ```yaml
//! hosts:
//!   - name: cp-a
//!     address: 10.1.0.5          # cluster-internal address
//!     externalAddress: 203.0.113.5   # optional; SSH goes here when set
//!     roles: [control-plane, etcd]
//!     ssh: { user: ubuntu, port: 22, key: ~/.ssh/id_ed25519 }
//!     gpus: 0
//!     labels: {}
//! ```

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::path::Path;

use ipnet::Ipv4Net;
use serde::Deserialize;

use crate::inventory::{self, Inventory, Node, Role, SshEndpoint};
use crate::profile::diagnostic::Reporter;
use crate::profile::source_map::SourceMap;
use crate::profile::validate::is_dns_label;
use crate::profile::{Diagnostic, Origin, Profile, ProfileErrors, Taint};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct HostsFile {
    hosts: Vec<Host>,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct Host {
    name: String,
    address: Ipv4Addr,
    #[serde(default)]
    external_address: Option<IpAddr>,
    roles: BTreeSet<Role>,
    #[serde(default)]
    ssh: HostSsh,
    #[serde(default)]
    gpus: u32,
    #[serde(default)]
    labels: BTreeMap<String, String>,
    #[serde(default)]
    taints: Vec<Taint>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct HostSsh {
    user: Option<String>,
    port: Option<u16>,
    key: Option<String>,
    bastion: Option<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum StaticError {
    #[error("cannot read inventory {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error(transparent)]
    Invalid(#[from] ProfileErrors),
    #[error(transparent)]
    PodCidrs(#[from] inventory::PodCidrExhausted),
    #[error("provider.kind is static but provider.static.inventory (the hosts file) is missing")]
    NoSpec,
}

/// Read and check the hosts file; every mistake is reported with file:line:column.
pub fn load(
    path: &Path,
    profile: &Profile,
    previous: &BTreeMap<String, Ipv4Net>,
) -> Result<Inventory, StaticError> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|source| StaticError::Io {
        path: file.clone(),
        source,
    })?;
    let map = SourceMap::parse(&text);
    let hosts: HostsFile = serde_yaml_ng::from_str(&text).map_err(|e| {
        let position = e
            .location()
            .map(|l| crate::profile::source_map::Position {
                line: l.line(),
                column: l.column(),
            })
            .unwrap_or(crate::profile::source_map::Position { line: 1, column: 1 });
        StaticError::Invalid(ProfileErrors {
            source_name: file.clone(),
            diagnostics: vec![Diagnostic {
                origin: Origin::File {
                    file: file.clone(),
                    position,
                },
                path: String::new(),
                problem: "invalid hosts file".into(),
                found: e.to_string(),
                allowed: "hosts: a list of {name, address, roles, ssh, gpus, labels, taints}"
                    .into(),
            }],
        })
    })?;

    let mut r = Reporter::new(&file, &map, &[]);
    let mut names: BTreeMap<&str, usize> = BTreeMap::new();
    let mut addrs: BTreeMap<Ipv4Addr, usize> = BTreeMap::new();
    for (i, h) in hosts.hosts.iter().enumerate() {
        if !is_dns_label(&h.name, 63) {
            r.error(
                &format!("hosts[{i}].name"),
                "invalid node name",
                &h.name,
                "lower-case letters, digits and '-'",
            );
        }
        if let Some(prev) = names.insert(&h.name, i) {
            r.error(
                &format!("hosts[{i}].name"),
                format!("duplicate node name: hosts[{prev}] has it too"),
                &h.name,
                "a name no other host uses",
            );
        }
        if let Some(prev) = addrs.insert(h.address, i) {
            r.error(
                &format!("hosts[{i}].address"),
                format!("duplicate address: hosts[{prev}] has it too"),
                h.address.to_string(),
                "an address no other host uses",
            );
        }
        if h.roles.is_empty() {
            r.error(
                &format!("hosts[{i}].roles"),
                "a host needs a role",
                "[]",
                "control-plane, etcd, worker",
            );
        }
        if h.roles.contains(&Role::Etcd) && !h.roles.contains(&Role::ControlPlane) {
            r.error(
                &format!("hosts[{i}].roles"),
                "etcd is stacked on control-plane nodes",
                "etcd without control-plane",
                "[control-plane, etcd]",
            );
        }
        if !profile.network.node_cidr.contains(&h.address) {
            r.error(
                &format!("hosts[{i}].address"),
                format!(
                    "address outside the profile's network.nodeCIDR {}",
                    profile.network.node_cidr
                ),
                h.address.to_string(),
                format!("an address in {}", profile.network.node_cidr),
            );
        }
    }
    let etcd = hosts
        .hosts
        .iter()
        .filter(|h| h.roles.contains(&Role::Etcd))
        .count();
    if etcd % 2 == 0 {
        r.error(
            "hosts",
            format!("an even etcd member count ({etcd})"),
            etcd.to_string(),
            "an odd number of hosts with the etcd role: 1, 3 or 5",
        );
    }
    if !hosts
        .hosts
        .iter()
        .any(|h| h.roles.contains(&Role::ControlPlane))
    {
        r.error(
            "hosts",
            "no host has the control-plane role",
            "0 control planes",
            "at least one host with roles [control-plane, etcd]",
        );
    }
    if !r.out.is_empty() {
        let diagnostics = r.out;
        return Err(StaticError::Invalid(ProfileErrors {
            source_name: file.clone(),
            diagnostics,
        }));
    }

    let mut nodes: Vec<Node> = hosts
        .hosts
        .into_iter()
        .map(|h| {
            let ssh_host = match h.external_address {
                Some(e) if profile.ssh.address.is_public() => e,
                _ => IpAddr::V4(h.address),
            };
            let mut roles = h.roles;
            if !roles.contains(&Role::ControlPlane) {
                roles.insert(Role::Worker);
            }
            Node {
                name: h.name,
                roles,
                internal_ip: h.address,
                external_ip: h.external_address,
                pod_cidr: profile.network.pod_cidr,
                ssh: SshEndpoint {
                    host: ssh_host,
                    port: h.ssh.port.unwrap_or(profile.ssh.port),
                    user: h.ssh.user.unwrap_or_else(|| profile.ssh.user.clone()),
                    key: h.ssh.key.or_else(|| profile.ssh.private_key.clone()),
                    bastion: h.ssh.bastion,
                },
                group: "static".into(),
                gpus: h.gpus,
                labels: h.labels,
                taints: h.taints,
            }
        })
        .collect();
    inventory::allocate_pod_cidrs(
        &mut nodes,
        profile.network.pod_cidr,
        profile.network.pod_prefix_per_node,
        previous,
    )?;
    let api = inventory::default_api_endpoint(profile, &nodes);
    Ok(Inventory {
        cluster: profile.name.clone(),
        nodes,
        api,
        planned: false,
    })
}

/// The static provider: the hosts file is the inventory; nothing is created or deleted.
pub struct StaticHosts {
    path: std::path::PathBuf,
    previous: BTreeMap<String, Ipv4Net>,
}

impl StaticHosts {
    /// `provider.static.inventory`, relative to the profile's directory.
    pub fn from_profile(
        loaded: &crate::profile::LoadedProfile,
        previous: BTreeMap<String, Ipv4Net>,
    ) -> Result<StaticHosts, StaticError> {
        let spec = loaded
            .profile
            .provider
            .static_hosts
            .as_ref()
            .ok_or(StaticError::NoSpec)?;
        Ok(StaticHosts {
            path: loaded.base_dir.join(&spec.inventory),
            previous,
        })
    }
}

impl super::Provider for StaticHosts {
    fn name(&self) -> &'static str {
        "static"
    }

    /// Each host's key comes from the hosts file (or the profile), not from k8sforge.
    fn installs_cluster_key(&self) -> bool {
        false
    }

    fn preflight<'a>(
        &'a self,
        ctx: &'a super::ProvisionContext<'a>,
    ) -> super::ProviderFuture<'a, ()> {
        Box::pin(async move {
            load(&self.path, ctx.profile, &self.previous)?;
            Ok(())
        })
    }

    fn provision<'a>(
        &'a self,
        ctx: &'a super::ProvisionContext<'a>,
    ) -> super::ProviderFuture<'a, super::Provisioned> {
        Box::pin(async move {
            let inventory = load(&self.path, ctx.profile, &self.previous)?;
            Ok(super::Provisioned {
                detail: format!(
                    "{} hosts from {}",
                    inventory.nodes.len(),
                    self.path.display()
                ),
                inventory,
                created: Vec::new(),
                replaced: Vec::new(),
            })
        })
    }

    /// The hosts stay: what k8sforge installed on them is removed, node by node, over SSH.
    fn teardown<'a>(
        &'a self,
        ctx: &'a super::ProvisionContext<'a>,
        dry_run: bool,
    ) -> super::ProviderFuture<'a, super::TeardownReport> {
        Box::pin(async move {
            // Blocking SSH fan-out: keep it off the runtime's async worker.
            tokio::task::block_in_place(|| {
                super::static_teardown::teardown(&ctx.cluster_dir, ctx.profile, dry_run)
            })
            .map_err(|e| format!("{e:#}").into())
        })
    }
}
