//! The API's TCP load balancer: an unmanaged instance group of the control planes, a regional
//! TCP health check on the API port, an external passthrough backend service, a reserved
//! address and a forwarding rule. Returns the address clients reach the API on.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use reqwest::Method;

use super::adopt::get_or_insert;
use super::instances::label_value;
use super::names::{last_segment, Names, GROUP_LABEL};
use super::types::*;
use super::{GcpError, GcpProvider};
use crate::provider::ProvisionContext;

pub(super) async fn ensure_load_balancer(
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
    tracing::debug!(
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
