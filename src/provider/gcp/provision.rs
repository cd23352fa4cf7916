//! Create what is missing, adopt what exists: network → subnetwork (with the pods' secondary
//! range) → firewall rules → instances (bulkInsert per group, ≤1000 per call) → API load
//! balancer (instance group, TCP health check, backend service, address, forwarding rule);
//! then read the real inventory back from the instances.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use reqwest::Method;
use serde::Serialize;

use super::names::{
    last_segment, Names, CONTROL_PLANE_TAG, GROUP_LABEL, HEALTH_CHECK_RANGES, POD_RANGE_NAME,
};
use super::preflight::machine_for;
use super::types::*;
use super::{GcpError, GcpProvider};
use crate::inventory::{ApiEndpoint, Inventory, Node, Role};
use crate::provider::ProvisionContext;

/// The API's cap on instances per bulkInsert call.
pub const BULK_INSERT_MAX: usize = 1000;

/// "created 997 of 1000; 3 failed: name: reason; …" — one line per failed instance.
pub fn describe_bulk_failure(created: &usize, failed: &[(String, String)]) -> String {
    let mut m = format!(
        "{} instance(s) could not be created ({} created or already there); re-running `k8sforge up --only provision` retries only these:",
        failed.len(),
        created
    );
    for (name, reason) in failed {
        m.push_str(&format!("\n  - {name}: {reason}"));
    }
    m
}

pub async fn run(p: &GcpProvider, ctx: &ProvisionContext<'_>) -> Result<Inventory, GcpError> {
    let names = Names::new(&ctx.profile.name);
    let net = ensure_network(p, &names).await?;
    let subnet = ensure_subnetwork(p, ctx, &names, &net).await?;
    ensure_firewalls(p, ctx, &names, &net).await?;
    let instances = ensure_instances(p, ctx, &names, &subnet).await?;
    let lb_ip = ensure_load_balancer(p, ctx, &names, &net, &instances).await?;
    build_inventory(ctx, &names, &instances, lb_ip)
}

async fn step(what: &str) {
    tracing::info!("{what}");
}

/// Get a global/regional resource by name; insert it (and wait) when missing. Unlabelled kinds
/// must carry our ownership marker to be adopted.
async fn get_or_insert<T: Serialize>(
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
    step(&format!("creating {kind} {name}")).await;
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

async fn ensure_network(p: &GcpProvider, names: &Names) -> Result<String, GcpError> {
    let body = Network {
        name: names.network(),
        description: Some(names.marker()),
        auto_create_subnetworks: Some(false),
        ..Default::default()
    };
    get_or_insert(
        p,
        names,
        "network",
        "global/networks",
        "networks",
        &body,
        &body.name,
    )
    .await
}

async fn ensure_subnetwork(
    p: &GcpProvider,
    ctx: &ProvisionContext<'_>,
    names: &Names,
    net: &str,
) -> Result<String, GcpError> {
    let nw = &ctx.profile.network;
    let body = Subnetwork {
        name: names.subnetwork(),
        description: Some(names.marker()),
        network: net.to_string(),
        ip_cidr_range: nw.node_cidr.to_string(),
        secondary_ip_ranges: vec![SecondaryRange {
            range_name: POD_RANGE_NAME.into(),
            ip_cidr_range: nw.pod_cidr.to_string(),
        }],
        private_ip_google_access: Some(true),
        ..Default::default()
    };
    let collection = format!("regions/{}/subnetworks", p.cfg.region);
    let url = get_or_insert(
        p,
        names,
        "subnetwork",
        &collection,
        "subnetworks",
        &body,
        &body.name,
    )
    .await?;
    // An adopted subnetwork must have the ranges the inventory and the pods rely on.
    let have: Subnetwork = p
        .api
        .get(
            "compute.subnetworks.get",
            &format!("{collection}/{}", body.name),
        )
        .await?;
    let pods = have
        .secondary_ip_ranges
        .iter()
        .find(|r| r.range_name == POD_RANGE_NAME);
    if have.ip_cidr_range != body.ip_cidr_range
        || pods.map(|r| r.ip_cidr_range.as_str())
            != Some(body.secondary_ip_ranges[0].ip_cidr_range.as_str())
    {
        return Err(GcpError::Config(format!(
            "subnetwork {} exists with range {} and pods range {}, but the profile asks for nodeCIDR {} and podCIDR {}; \
             change the profile back, or tear the cluster down and re-create it",
            body.name,
            have.ip_cidr_range,
            pods.map_or("(none)", |r| r.ip_cidr_range.as_str()),
            nw.node_cidr,
            nw.pod_cidr
        )));
    }
    Ok(url)
}

/// API and SSH from the admin CIDRs, everything between nodes and pods, the API port from
/// Google's health checkers to control planes; nothing else.
pub fn firewall_rules(ctx: &ProvisionContext<'_>, names: &Names, net: &str) -> Vec<Firewall> {
    let nw = &ctx.profile.network;
    let api_port = ctx.profile.api_server.port.to_string();
    let admin = ctx
        .profile
        .provider
        .gcp
        .as_ref()
        .map(|g| g.admin_cidrs.iter().map(|c| c.to_string()).collect())
        .unwrap_or_default();
    let rule = |name: String,
                allowed: Vec<FirewallAllowed>,
                sources: Vec<String>,
                tags: Vec<String>| Firewall {
        name,
        description: Some(names.marker()),
        network: net.to_string(),
        direction: Some("INGRESS".into()),
        priority: Some(1000),
        allowed,
        source_ranges: sources,
        target_tags: tags,
        ..Default::default()
    };
    let all = |proto: &str| FirewallAllowed {
        ip_protocol: proto.into(),
        ports: vec![],
    };
    vec![
        rule(
            names.firewall_internal(),
            vec![all("tcp"), all("udp"), all("icmp")],
            vec![nw.node_cidr.to_string(), nw.pod_cidr.to_string()],
            vec![],
        ),
        rule(
            names.firewall_admin(),
            vec![FirewallAllowed {
                ip_protocol: "tcp".into(),
                ports: vec![ctx.profile.ssh.port.to_string(), api_port.clone()],
            }],
            admin,
            vec![],
        ),
        rule(
            names.firewall_health(),
            vec![FirewallAllowed {
                ip_protocol: "tcp".into(),
                ports: vec![api_port],
            }],
            HEALTH_CHECK_RANGES.iter().map(|s| s.to_string()).collect(),
            vec![CONTROL_PLANE_TAG.into()],
        ),
    ]
}

async fn ensure_firewalls(
    p: &GcpProvider,
    ctx: &ProvisionContext<'_>,
    names: &Names,
    net: &str,
) -> Result<(), GcpError> {
    for fw in firewall_rules(ctx, names, net) {
        get_or_insert(
            p,
            names,
            "firewall rule",
            "global/firewalls",
            "firewalls",
            &fw,
            &fw.name,
        )
        .await?;
        // Adopted rules follow the profile (e.g. changed admin CIDRs): patch what differs.
        let rest = format!("global/firewalls/{}", fw.name);
        let have: Firewall = p.api.get("compute.firewalls.get", &rest).await?;
        let sorted = |v: &[String]| {
            let mut v = v.to_vec();
            v.sort();
            v
        };
        if sorted(&have.source_ranges) != sorted(&fw.source_ranges)
            || have.allowed != fw.allowed
            || sorted(&have.target_tags) != sorted(&fw.target_tags)
        {
            tracing::info!("updating firewall rule {} to match the profile", fw.name);
            #[derive(serde::Serialize)]
            #[serde(rename_all = "camelCase")]
            struct Patch<'a> {
                allowed: &'a [FirewallAllowed],
                source_ranges: &'a [String],
                target_tags: &'a [String],
            }
            let op = p
                .api
                .mutate(
                    "compute.firewalls.patch",
                    Method::PATCH,
                    &rest,
                    Some(&Patch {
                        allowed: &fw.allowed,
                        source_ranges: &fw.source_ranges,
                        target_tags: &fw.target_tags,
                    }),
                )
                .await?;
            p.api.wait(op).await?;
        }
    }
    Ok(())
}

pub async fn list_instances(p: &GcpProvider, names: &Names) -> Result<Vec<Instance>, GcpError> {
    let all: Vec<Instance> = p
        .api
        .list_all(
            "compute.instances.list",
            &format!("zones/{}/instances", p.cfg.zone),
            Some(&names.label_filter()),
        )
        .await?;
    // Trust the label, not only the server-side filter.
    Ok(all
        .into_iter()
        .filter(|i| i.labels.get(crate::provider::CLUSTER_LABEL_GCP) == Some(&names.cluster))
        .collect())
}

/// The properties shared by every instance of one group.
fn instance_properties(
    ctx: &ProvisionContext<'_>,
    names: &Names,
    subnet: &str,
    node: &Node,
    bundled_gpus: bool,
) -> Result<InstanceProperties, GcpError> {
    let machine = machine_for(ctx.profile, node).ok_or_else(|| {
        GcpError::Preflight(format!("group {} has no gcp machine section", node.group))
    })?;
    let image = ctx
        .profile
        .provider
        .gcp
        .as_ref()
        .map(|g| g.image.clone())
        .ok_or(GcpError::NoSpec)?;
    let mut labels = names.labels();
    labels.insert(GROUP_LABEL.into(), label_value(&node.group));
    let gpu = match (&machine.accelerator_type, node.gpus) {
        (Some(t), n) if n > 0 => Some((t.clone(), n)),
        _ => None,
    };
    let cp = node.has(Role::ControlPlane);
    Ok(InstanceProperties {
        description: Some(names.marker()),
        machine_type: machine.machine_type.clone(),
        // Accelerator-optimized types (A2/A3/G2) have their GPUs attached already.
        guest_accelerators: match (&gpu, bundled_gpus) {
            (Some((t, n)), false) => vec![AcceleratorConfig {
                accelerator_type: t.clone(),
                accelerator_count: *n as i32,
            }],
            _ => vec![],
        },
        // GPU instances cannot live-migrate.
        scheduling: Some(Scheduling {
            on_host_maintenance: Some(
                if gpu.is_some() {
                    "TERMINATE"
                } else {
                    "MIGRATE"
                }
                .into(),
            ),
            automatic_restart: Some(true),
        }),
        disks: vec![AttachedDisk {
            boot: Some(true),
            auto_delete: Some(true),
            initialize_params: Some(InitializeParams {
                source_image: Some(image),
                disk_size_gb: Some(i64::from(machine.boot_disk_gib)),
                disk_type: Some("pd-balanced".into()),
                labels: names.labels(),
            }),
            disk_size_gb: None,
        }],
        network_interfaces: vec![NetworkInterface {
            subnetwork: Some(subnet.to_string()),
            access_configs: vec![AccessConfig {
                name: Some("External NAT".into()),
                kind: Some("ONE_TO_ONE_NAT".into()),
                network_tier: Some("PREMIUM".into()),
                nat_ip: None,
            }],
            // The API picks a free block of this size from the pods' range for each instance.
            alias_ip_ranges: vec![AliasIpRange {
                ip_cidr_range: format!("/{}", ctx.profile.network.pod_prefix_per_node),
                subnetwork_range_name: Some(POD_RANGE_NAME.into()),
            }],
            ..Default::default()
        }],
        metadata: Some(Metadata {
            items: vec![
                MetadataItem {
                    key: "ssh-keys".into(),
                    value: format!("{}:{}", ctx.profile.ssh.user, ctx.ssh_public_key.trim()),
                },
                MetadataItem {
                    key: "block-project-ssh-keys".into(),
                    value: "true".into(),
                },
            ],
        }),
        tags: Some(Tags {
            items: if cp {
                vec![CONTROL_PLANE_TAG.into()]
            } else {
                vec![]
            },
        }),
        labels,
    })
}

/// Label values: lowercase letters, digits, `-` and `_`, at most 63 characters.
fn label_value(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .take(63)
        .collect()
}

async fn ensure_instances(
    p: &GcpProvider,
    ctx: &ProvisionContext<'_>,
    names: &Names,
    subnet: &str,
) -> Result<Vec<Instance>, GcpError> {
    let before = list_instances(p, names).await?;
    let existing: BTreeSet<String> = before.iter().map(|i| i.name.clone()).collect();
    // Missing nodes by group, in inventory order.
    let mut groups: BTreeMap<&str, Vec<&Node>> = BTreeMap::new();
    let mut wanted = 0usize;
    for n in &ctx.planned.nodes {
        wanted += 1;
        if !existing.contains(&names.instance(&n.name)) {
            groups.entry(n.group.as_str()).or_default().push(n);
        }
    }
    let mut errors: Vec<String> = Vec::new();
    let mut requested: Vec<String> = Vec::new();
    for (group, nodes) in &groups {
        let first = nodes[0];
        let machine = machine_for(ctx.profile, first).ok_or_else(|| {
            GcpError::Preflight(format!("group {group} has no gcp machine section"))
        })?;
        let mt: MachineType = p
            .api
            .get(
                "compute.machineTypes.get",
                &format!("zones/{}/machineTypes/{}", p.cfg.zone, machine.machine_type),
            )
            .await?;
        let props = instance_properties(ctx, names, subnet, first, !mt.accelerators.is_empty())?;
        for chunk in nodes.chunks(BULK_INSERT_MAX) {
            tracing::info!(
                "creating {} {group} instance(s) with one bulkInsert",
                chunk.len()
            );
            let per: BTreeMap<String, PerInstanceProperties> = chunk
                .iter()
                .map(|n| {
                    let name = names.instance(&n.name);
                    (name.clone(), PerInstanceProperties { name })
                })
                .collect();
            requested.extend(per.keys().cloned());
            let body = BulkInsertInstanceResource {
                count: Some(chunk.len() as i64),
                // Keep what can be created: a re-run fills in the rest.
                min_count: Some(1),
                instance_properties: props.clone(),
                per_instance_properties: per,
            };
            let op = p
                .api
                .mutate(
                    "compute.instances.bulkInsert",
                    Method::POST,
                    &format!("zones/{}/instances/bulkInsert", p.cfg.zone),
                    Some(&body),
                )
                .await;
            match op {
                Ok(op) => {
                    let done = p.api.wait_raw(op).await?;
                    if let Some(e) = done.error {
                        errors.extend(e.errors.into_iter().map(|i| match i.location {
                            Some(l) if !l.is_empty() => format!("{l}|{}: {}", i.code, i.message),
                            _ => format!("|{}: {}", i.code, i.message),
                        }));
                    }
                }
                Err(e) => errors.push(format!("|{e}")),
            }
        }
    }
    if requested.is_empty() {
        return Ok(before);
    }
    // Which of the requested instances exist now? Report each one that does not.
    let after = list_instances(p, names).await?;
    let now: BTreeSet<&str> = after.iter().map(|i| i.name.as_str()).collect();
    let failed: Vec<(String, String)> = requested
        .iter()
        .filter(|n| !now.contains(n.as_str()))
        .map(|n| {
            let specific = errors.iter().find_map(|e| {
                let (loc, msg) = e.split_once('|').unwrap_or(("", e));
                (loc.ends_with(&format!("/{n}")) || loc == n || msg.contains(n.as_str()))
                    .then(|| msg.to_string())
            });
            let general = errors
                .iter()
                .map(|e| e.split_once('|').map_or(e.as_str(), |(_, m)| m))
                .collect::<Vec<_>>()
                .join("; ");
            let reason = specific.unwrap_or_else(|| {
                if general.is_empty() {
                    "not created (no error reported by the operation)".to_string()
                } else {
                    general
                }
            });
            (n.clone(), reason)
        })
        .collect();
    if failed.is_empty() {
        Ok(after)
    } else {
        Err(GcpError::InstancesFailed {
            created: wanted - failed.len(),
            failed,
        })
    }
}

async fn ensure_load_balancer(
    p: &GcpProvider,
    ctx: &ProvisionContext<'_>,
    names: &Names,
    net: &str,
    instances: &[Instance],
) -> Result<Option<Ipv4Addr>, GcpError> {
    let cfg = &p.cfg;
    let port = i32::from(ctx.profile.api_server.port);
    let zone_igs = format!("zones/{}/instanceGroups", cfg.zone);
    let ig = get_or_insert(
        p,
        names,
        "instance group",
        &zone_igs,
        "instanceGroups",
        &InstanceGroup {
            name: names.instance_group(),
            description: Some(names.marker()),
            network: Some(net.to_string()),
            ..Default::default()
        },
        &names.instance_group(),
    )
    .await?;
    ensure_group_members(p, names, &zone_igs, instances).await?;

    let region_path = |c: &str| format!("regions/{}/{c}", cfg.region);
    let hc = get_or_insert(
        p,
        names,
        "health check",
        &region_path("healthChecks"),
        "regionHealthChecks",
        &HealthCheck {
            name: names.health_check(),
            description: Some(names.marker()),
            kind: "TCP".into(),
            tcp_health_check: Some(TcpHealthCheck { port }),
            check_interval_sec: Some(5),
            timeout_sec: Some(5),
            ..Default::default()
        },
        &names.health_check(),
    )
    .await?;
    let bs = get_or_insert(
        p,
        names,
        "backend service",
        &region_path("backendServices"),
        "regionBackendServices",
        &BackendService {
            name: names.backend_service(),
            description: Some(names.marker()),
            load_balancing_scheme: "EXTERNAL".into(),
            protocol: "TCP".into(),
            backends: vec![Backend {
                group: ig,
                balancing_mode: Some("CONNECTION".into()),
            }],
            health_checks: vec![hc],
            ..Default::default()
        },
        &names.backend_service(),
    )
    .await?;
    // A reserved address keeps the API endpoint (and the certificate SAN) stable.
    get_or_insert(
        p,
        names,
        "address",
        &region_path("addresses"),
        "addresses",
        &Address {
            name: names.address(),
            description: Some(names.marker()),
            address_type: Some("EXTERNAL".into()),
            network_tier: Some("PREMIUM".into()),
            labels: names.labels(),
            ..Default::default()
        },
        &names.address(),
    )
    .await?;
    let addr: Address = p
        .api
        .get(
            "compute.addresses.get",
            &format!("{}/{}", region_path("addresses"), names.address()),
        )
        .await?;
    let ip = addr
        .address
        .as_deref()
        .and_then(|a| a.parse::<Ipv4Addr>().ok());
    get_or_insert(
        p,
        names,
        "forwarding rule",
        &region_path("forwardingRules"),
        "forwardingRules",
        &ForwardingRule {
            name: names.forwarding_rule(),
            description: Some(names.marker()),
            ip_address: addr.address.clone(),
            ip_protocol: "TCP".into(),
            ports: vec![port.to_string()],
            load_balancing_scheme: "EXTERNAL".into(),
            network_tier: Some("PREMIUM".into()),
            backend_service: bs,
            labels: names.labels(),
            ..Default::default()
        },
        &names.forwarding_rule(),
    )
    .await?;
    Ok(ip)
}

/// Control-plane instances that are not yet members of the API's instance group are added.
async fn ensure_group_members(
    p: &GcpProvider,
    names: &Names,
    zone_igs: &str,
    instances: &[Instance],
) -> Result<(), GcpError> {
    #[derive(serde::Deserialize)]
    struct Member {
        instance: String,
    }
    #[derive(serde::Serialize)]
    #[serde(rename_all = "camelCase")]
    struct ListReq {
        instance_state: &'static str,
    }
    let rest = format!("{zone_igs}/{}/listInstances", names.instance_group());
    let page: ListPage<Member> = p
        .api
        .call(
            "compute.instanceGroups.listInstances",
            Method::POST,
            &p.api.path(&rest),
            &[],
            Some(&ListReq {
                instance_state: "ALL",
            }),
        )
        .await?;
    let members: BTreeSet<&str> = page
        .items
        .iter()
        .map(|m| last_segment(&m.instance))
        .collect();
    let add: Vec<InstanceReference> = instances
        .iter()
        .filter(|i| {
            i.labels.get(GROUP_LABEL).map(String::as_str) == Some(&label_value("controlPlane"))
        })
        .filter(|i| !members.contains(i.name.as_str()))
        .map(|i| InstanceReference {
            instance: if i.self_link.is_empty() {
                p.api
                    .url(&format!("zones/{}/instances/{}", p.cfg.zone, i.name))
            } else {
                i.self_link.clone()
            },
        })
        .collect();
    if add.is_empty() {
        return Ok(());
    }
    tracing::info!(
        "adding {} control plane(s) to the API instance group",
        add.len()
    );
    let op = p
        .api
        .mutate(
            "compute.instanceGroups.addInstances",
            Method::POST,
            &format!("{zone_igs}/{}/addInstances", names.instance_group()),
            Some(&InstanceGroupsAddInstancesRequest { instances: add }),
        )
        .await?;
    p.api.wait(op).await?;
    Ok(())
}

/// The planned nodes with their real addresses and alias ranges.
fn build_inventory(
    ctx: &ProvisionContext<'_>,
    names: &Names,
    instances: &[Instance],
    lb_ip: Option<Ipv4Addr>,
) -> Result<Inventory, GcpError> {
    let by_name: BTreeMap<&str, &Instance> =
        instances.iter().map(|i| (i.name.as_str(), i)).collect();
    let mut nodes = Vec::with_capacity(ctx.planned.nodes.len());
    for planned in &ctx.planned.nodes {
        let iname = names.instance(&planned.name);
        let inst = by_name
            .get(iname.as_str())
            .ok_or_else(|| GcpError::Incomplete(iname.clone(), "instance"))?;
        let nic = inst
            .network_interfaces
            .first()
            .ok_or_else(|| GcpError::Incomplete(iname.clone(), "network interface"))?;
        let internal: Ipv4Addr = nic
            .network_ip
            .as_deref()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| GcpError::Incomplete(iname.clone(), "internal address"))?;
        let external: Option<IpAddr> = nic
            .access_configs
            .iter()
            .find_map(|a| a.nat_ip.as_deref().and_then(|x| x.parse().ok()));
        let pod_cidr: Ipv4Net = nic
            .alias_ip_ranges
            .iter()
            .find(|r| r.subnetwork_range_name.as_deref() == Some(POD_RANGE_NAME))
            .and_then(|r| r.ip_cidr_range.parse().ok())
            .ok_or_else(|| GcpError::Incomplete(iname.clone(), "alias IP range for pods"))?;
        let mut node = planned.clone();
        node.internal_ip = internal;
        node.external_ip = external;
        node.pod_cidr = pod_cidr;
        node.ssh.host = external.unwrap_or(IpAddr::V4(internal));
        nodes.push(node);
    }
    let port = ctx.profile.api_server.port;
    let api = match (lb_ip, &ctx.profile.api_server.endpoint) {
        (Some(ip), Some(name)) => ApiEndpoint {
            host: name.clone(),
            port,
            addresses: vec![IpAddr::V4(ip)],
        },
        (Some(ip), None) => ApiEndpoint {
            host: ip.to_string(),
            port,
            addresses: vec![IpAddr::V4(ip)],
        },
        (None, _) => crate::inventory::default_api_endpoint(ctx.profile, &nodes),
    };
    Ok(Inventory {
        cluster: ctx.profile.name.clone(),
        nodes,
        api,
        planned: false,
    })
}
