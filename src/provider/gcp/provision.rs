//! Create what is missing, adopt what exists: network → subnetwork (with the pods' secondary
//! range) → firewall rules → instances (bulkInsert per group, ≤1000 per call) → API load
//! balancer (instance group, TCP health check, backend service, address, forwarding rule);
//! then read the real inventory back from the instances.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use ipnet::Ipv4Net;
use reqwest::Method;

use super::adopt::get_or_insert;
use super::instances::ensure_instances;
use super::loadbalancer::ensure_load_balancer;
use super::names::{Names, CONTROL_PLANE_TAG, HEALTH_CHECK_RANGES, POD_RANGE_NAME};
use super::types::*;
use super::{GcpError, GcpProvider};
use crate::inventory::{ApiEndpoint, Inventory};
use crate::provider::{ProvisionContext, Provisioned};

pub async fn run(p: &GcpProvider, ctx: &ProvisionContext<'_>) -> Result<Provisioned, GcpError> {
    let names = Names::new(&ctx.profile.name);
    let created_before = p.api.created_list().len();
    let net = ensure_network(p, &names).await?;
    let subnet = ensure_subnetwork(p, ctx, &names, &net).await?;
    ensure_firewalls(p, ctx, &names, &net).await?;
    let fabric = super::gpu_fabric::ensure(p, ctx, &names).await?;
    let (instances, replaced) = ensure_instances(p, ctx, &names, &subnet, fabric.as_ref()).await?;
    let lb_ip = ensure_load_balancer(p, ctx, &names, &net, &instances).await?;
    let inventory = build_inventory(ctx, &names, &instances, lb_ip)?;
    super::host_keys::pin_from_guest_attributes(
        p,
        &names,
        &inventory,
        &instances,
        &ctx.cluster_dir,
    )
    .await;
    let created = p.api.created_list().split_off(created_before);
    Ok(Provisioned::cloud(inventory, created, replaced))
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
            tracing::debug!("updating firewall rule {} to match the profile", fw.name);
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
        node.ssh.host = match external {
            Some(e) if ctx.profile.ssh.address.is_public() => e,
            _ => IpAddr::V4(internal),
        };
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
