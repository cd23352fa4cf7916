//! The API's TCP load balancer: an unmanaged instance group of the control planes, a regional
//! TCP health check on the API port, an external passthrough backend service, a reserved
//! address and a forwarding rule. Returns the address clients reach the API on.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use google_cloud_compute_v1::model::{
    Address, Backend, BackendService, ForwardingRule, HealthCheck, Instance, InstanceGroup,
    InstanceGroupsAddInstancesRequest, InstanceGroupsListInstancesRequest, InstanceReference,
    TCPHealthCheck,
};
use google_cloud_lro::Poller;

use super::adopt::{get_or_insert, Body};
use super::client::{check, lib, request_id, ZONE_OPS};
use super::instances::label_value;
use super::names::{last_segment, Names, GROUP_LABEL};
use super::{GcpError, GcpProvider};
use crate::provider::ProvisionContext;

pub(super) async fn ensure_load_balancer(
    p: &GcpProvider,
    ctx: &ProvisionContext<'_>,
    names: &Names,
    net: &str,
    instances: &[Instance],
) -> Result<Option<Ipv4Addr>, GcpError> {
    let port = i32::from(ctx.profile.api_server.port);
    let ig = get_or_insert(
        p,
        names,
        "instance group",
        Body::InstanceGroup(
            InstanceGroup::new()
                .set_name(names.instance_group())
                .set_description(names.marker())
                .set_network(net),
        ),
    )
    .await?;
    ensure_group_members(p, names, instances).await?;

    let hc = get_or_insert(
        p,
        names,
        "health check",
        Body::HealthCheck(
            HealthCheck::new()
                .set_name(names.health_check())
                .set_description(names.marker())
                .set_type("TCP")
                .set_tcp_health_check(TCPHealthCheck::new().set_port(port))
                .set_check_interval_sec(5)
                .set_timeout_sec(5),
        ),
    )
    .await?;
    let bs = get_or_insert(
        p,
        names,
        "backend service",
        Body::BackendService(
            BackendService::new()
                .set_name(names.backend_service())
                .set_description(names.marker())
                .set_load_balancing_scheme("EXTERNAL")
                .set_protocol("TCP")
                .set_backends([Backend::new()
                    .set_group(ig)
                    .set_balancing_mode("CONNECTION")])
                .set_health_checks([hc]),
        ),
    )
    .await?;
    // A reserved address keeps the API endpoint (and the certificate SAN) stable.
    get_or_insert(
        p,
        names,
        "address",
        Body::Address(
            Address::new()
                .set_name(names.address())
                .set_description(names.marker())
                .set_address_type("EXTERNAL")
                .set_network_tier("PREMIUM")
                .set_labels(names.labels()),
        ),
    )
    .await?;
    let id = "compute.addresses.get";
    let addr = lib(
        id,
        &names.address(),
        p.api
            .call(
                id,
                p.api
                    .addresses()
                    .await?
                    .get()
                    .set_project(&p.api.project)
                    .set_region(&p.cfg.region)
                    .set_address(names.address()),
            )
            .send()
            .await,
    )?;
    let ip = addr
        .address
        .as_deref()
        .and_then(|a| a.parse::<Ipv4Addr>().ok());
    get_or_insert(
        p,
        names,
        "forwarding rule",
        Body::ForwardingRule(
            ForwardingRule::new()
                .set_name(names.forwarding_rule())
                .set_description(names.marker())
                .set_or_clear_ip_address(addr.address.clone())
                .set_ip_protocol("TCP")
                .set_ports([port.to_string()])
                .set_load_balancing_scheme("EXTERNAL")
                .set_network_tier("PREMIUM")
                .set_backend_service(bs)
                .set_labels(names.labels()),
        ),
    )
    .await?;
    Ok(ip)
}

/// Control-plane instances that are not yet members of the API's instance group are added.
async fn ensure_group_members(
    p: &GcpProvider,
    names: &Names,
    instances: &[Instance],
) -> Result<(), GcpError> {
    let group = names.instance_group();
    let client = p.api.instance_groups().await?;
    let id = "compute.instanceGroups.listInstances";
    let page = lib(
        id,
        &group,
        p.api
            .call(
                id,
                client
                    .list_instances()
                    .set_project(&p.api.project)
                    .set_zone(&p.cfg.zone)
                    .set_instance_group(&group)
                    .set_body(InstanceGroupsListInstancesRequest::new().set_instance_state("ALL")),
            )
            .send()
            .await,
    )?;
    let members: BTreeSet<&str> = page
        .items
        .iter()
        .filter_map(|m| m.instance.as_deref().map(last_segment))
        .collect();
    let add: Vec<InstanceReference> = instances
        .iter()
        .filter(|i| {
            i.labels.get(GROUP_LABEL).map(String::as_str) == Some(&label_value("controlPlane"))
        })
        .filter_map(|i| i.name.as_deref().map(|n| (n, i)))
        .filter(|(n, _)| !members.contains(n))
        .map(|(n, i)| {
            InstanceReference::new().set_instance(match i.self_link.as_deref() {
                Some(l) if !l.is_empty() => l.to_string(),
                _ => p.api.url(&format!("zones/{}/instances/{n}", p.cfg.zone)),
            })
        })
        .collect();
    if add.is_empty() {
        return Ok(());
    }
    tracing::debug!(
        "adding {} control plane(s) to the API instance group",
        add.len()
    );
    let id = "compute.instanceGroups.addInstances";
    let op = p
        .api
        .mutation(
            id,
            ZONE_OPS,
            client
                .add_instances()
                .set_project(&p.api.project)
                .set_zone(&p.cfg.zone)
                .set_instance_group(&group)
                .set_request_id(request_id())
                .set_body(InstanceGroupsAddInstancesRequest::new().set_instances(add)),
        )
        .poller()
        .until_done()
        .await;
    check(lib(id, &group, op)?)?;
    Ok(())
}
