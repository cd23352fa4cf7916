//! Create what is missing, adopt what exists: network → subnetwork (with the pods' secondary
//! range) → firewall rules → instances (bulkInsert per group, ≤1000 per call) → API load
//! balancer (instance group, TCP health check, backend service, address, forwarding rule);
//! then read the real inventory back from the instances.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use google_cloud_compute_v1::model;
use google_cloud_compute_v1::model::firewall::Allowed;
use google_cloud_compute_v1::model::{Firewall, Instance};
use google_cloud_lro::Poller;
use ipnet::Ipv4Net;

use super::adopt::{get_or_insert, Body};
use super::client::{check, lib, request_id, GLOBAL_OPS};
use super::instances::ensure_instances;
use super::loadbalancer::ensure_load_balancer;
use super::names::{Names, CONTROL_PLANE_TAG, HEALTH_CHECK_RANGES, POD_RANGE_NAME};
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
    let body = model::Network::new()
        .set_name(names.network())
        .set_description(names.marker())
        .set_auto_create_subnetworks(false);
    get_or_insert(p, names, "network", Body::Network(body)).await
}

async fn ensure_subnetwork(
    p: &GcpProvider,
    ctx: &ProvisionContext<'_>,
    names: &Names,
    net: &str,
) -> Result<String, GcpError> {
    let nw = &ctx.profile.network;
    let name = names.subnetwork();
    let want_nodes = nw.node_cidr.to_string();
    let want_pods = nw.pod_cidr.to_string();
    let body = model::Subnetwork::new()
        .set_name(name.clone())
        .set_description(names.marker())
        .set_network(net)
        .set_ip_cidr_range(want_nodes.clone())
        .set_secondary_ip_ranges([model::SubnetworkSecondaryRange::new()
            .set_range_name(POD_RANGE_NAME)
            .set_ip_cidr_range(want_pods.clone())])
        .set_private_ip_google_access(true);
    let url = get_or_insert(p, names, "subnetwork", Body::Subnetwork(body)).await?;
    // An adopted subnetwork must have the ranges the inventory and the pods rely on.
    let id = "compute.subnetworks.get";
    let have = lib(
        id,
        &name,
        p.api
            .call(
                id,
                p.api
                    .subnetworks()
                    .await?
                    .get()
                    .set_project(&p.api.project)
                    .set_region(&p.cfg.region)
                    .set_subnetwork(&name),
            )
            .send()
            .await,
    )?;
    let have_nodes = have.ip_cidr_range.clone().unwrap_or_default();
    let pods = have
        .secondary_ip_ranges
        .iter()
        .find(|r| r.range_name.as_deref() == Some(POD_RANGE_NAME))
        .and_then(|r| r.ip_cidr_range.clone());
    if have_nodes != want_nodes || pods.as_deref() != Some(want_pods.as_str()) {
        return Err(GcpError::Config(format!(
            "subnetwork {name} exists with range {have_nodes} and pods range {}, but the profile asks for nodeCIDR {} and podCIDR {}; \
             change the profile back, or tear the cluster down and re-create it",
            pods.as_deref().unwrap_or("(none)"),
            nw.node_cidr,
            nw.pod_cidr
        )));
    }
    Ok(url)
}

fn allow(proto: &str, ports: Vec<String>) -> Allowed {
    Allowed::new().set_ip_protocol(proto).set_ports(ports)
}

/// API and SSH from the admin CIDRs, everything between nodes and pods, the API port from
/// Google's health checkers to control planes; nothing else.
pub fn firewall_rules(ctx: &ProvisionContext<'_>, names: &Names, net: &str) -> Vec<Firewall> {
    let nw = &ctx.profile.network;
    let api_port = ctx.profile.api_server.port.to_string();
    let admin: Vec<String> = ctx
        .profile
        .provider
        .gcp
        .as_ref()
        .map(|g| g.admin_cidrs.iter().map(|c| c.to_string()).collect())
        .unwrap_or_default();
    let rule = |name: String, allowed: Vec<Allowed>, sources: Vec<String>, tags: Vec<String>| {
        Firewall::new()
            .set_name(name)
            .set_description(names.marker())
            .set_network(net)
            .set_direction("INGRESS")
            .set_priority(1000)
            .set_allowed(allowed)
            .set_source_ranges(sources)
            .set_target_tags(tags)
    };
    vec![
        rule(
            names.firewall_internal(),
            vec![
                allow("tcp", vec![]),
                allow("udp", vec![]),
                allow("icmp", vec![]),
            ],
            vec![nw.node_cidr.to_string(), nw.pod_cidr.to_string()],
            vec![],
        ),
        rule(
            names.firewall_admin(),
            vec![allow(
                "tcp",
                vec![ctx.profile.ssh.port.to_string(), api_port.clone()],
            )],
            admin,
            vec![],
        ),
        rule(
            names.firewall_health(),
            vec![allow("tcp", vec![api_port])],
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
        let name = fw.name.clone().unwrap_or_default();
        get_or_insert(p, names, "firewall rule", Body::Firewall(fw.clone())).await?;
        // Adopted rules follow the profile (e.g. changed admin CIDRs): patch what differs.
        let client = p.api.firewalls().await?;
        let id = "compute.firewalls.get";
        let have = lib(
            id,
            &name,
            p.api
                .call(
                    id,
                    client.get().set_project(&p.api.project).set_firewall(&name),
                )
                .send()
                .await,
        )?;
        let sorted = |v: &[String]| {
            let mut v = v.to_vec();
            v.sort();
            v
        };
        if sorted(&have.source_ranges) != sorted(&fw.source_ranges)
            || have.allowed != fw.allowed
            || sorted(&have.target_tags) != sorted(&fw.target_tags)
        {
            tracing::debug!("updating firewall rule {name} to match the profile");
            let id = "compute.firewalls.patch";
            let patch = Firewall::new()
                .set_allowed(fw.allowed.clone())
                .set_source_ranges(fw.source_ranges.clone())
                .set_target_tags(fw.target_tags.clone());
            let op = p
                .api
                .mutation(
                    id,
                    GLOBAL_OPS,
                    client
                        .patch()
                        .set_project(&p.api.project)
                        .set_firewall(&name)
                        .set_request_id(request_id())
                        .set_body(patch),
                )
                .poller()
                .until_done()
                .await;
            check(lib(id, &name, op)?)?;
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
    let by_name: BTreeMap<&str, &Instance> = instances
        .iter()
        .filter_map(|i| i.name.as_deref().map(|n| (n, i)))
        .collect();
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
            .and_then(|r| r.ip_cidr_range.as_deref().and_then(|c| c.parse().ok()))
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
