//! Adopt-or-create for named Compute resources, shared by the network and load-balancer steps of
//! provisioning: get by name; insert (and wait for the operation) when missing. Unlabelled
//! kinds must carry our ownership marker to be adopted.

use std::collections::HashMap;

use google_cloud_compute_v1::model;
use google_cloud_lro::Poller;

use super::client::{check, lib, lib_opt, request_id, GLOBAL_OPS, REGION_OPS, ZONE_OPS};
use super::names::Names;
use super::{GcpError, GcpProvider};

/// A resource body to adopt or insert, by kind. One lives at a time, moved straight into its
/// request: boxing the large ones would buy nothing.
#[allow(clippy::large_enum_variant)]
pub(super) enum Body {
    Network(model::Network),
    Subnetwork(model::Subnetwork),
    Firewall(model::Firewall),
    InstanceGroup(model::InstanceGroup),
    HealthCheck(model::HealthCheck),
    BackendService(model::BackendService),
    Address(model::Address),
    ForwardingRule(model::ForwardingRule),
    ResourcePolicy(model::ResourcePolicy),
}

/// What decides adoption.
struct Existing {
    description: Option<String>,
    labels: HashMap<String, String>,
    self_link: Option<String>,
}

/// One kind's get and insert: `$client` the library client, `$api` the API resource name,
/// `$set_name` the request's name setter, `[$set_loc, $loc]` the region/zone setter if any.
macro_rules! adopt {
    ($p:expr, $names:expr, $kind:expr, $body:expr, $client:ident, $api:literal, $scope:expr,
     $coll:expr, $set_name:ident, $labels:expr $(, $set_loc:ident = $loc:expr)?) => {{
        let p: &GcpProvider = $p;
        let body = $body;
        let name = body.name.clone().unwrap_or_default();
        let rest = format!("{}/{name}", $coll);
        let client = p.api.$client().await?;
        let get_id = concat!("compute.", $api, ".get");
        let got = lib_opt(
            get_id,
            &name,
            p.api
                .call(
                    get_id,
                    client
                        .get()
                        .set_project(&p.api.project)
                        $(.$set_loc($loc))?
                        .$set_name(&name),
                )
                .send()
                .await,
        )?;
        match got {
            Some(r) => Found(Existing {
                description: r.description.clone(),
                labels: $labels(&r),
                self_link: r.self_link.clone(),
            }, rest),
            None => {
                tracing::debug!("creating {} {name}", $kind);
                p.api.note_created($kind, &name);
                let insert_id = concat!("compute.", $api, ".insert");
                let op = p
                    .api
                    .mutation(
                        insert_id,
                        $scope,
                        client
                            .insert()
                            .set_project(&p.api.project)
                            $(.$set_loc($loc))?
                            .set_request_id(request_id())
                            .set_body(body),
                    )
                    .poller()
                    .until_done()
                    .await;
                check(lib(insert_id, &name, op)?)?;
                Created(rest)
            }
        }
    }};
}

enum Outcome {
    Found(Existing, String),
    Created(String),
}
use Outcome::{Created, Found};

fn no_labels<T>(_: &T) -> HashMap<String, String> {
    HashMap::new()
}

/// Get a global/regional/zonal resource by name; insert it (and wait) when missing. Returns the
/// resource's URL.
pub(super) async fn get_or_insert(
    p: &GcpProvider,
    names: &Names,
    kind: &'static str,
    body: Body,
) -> Result<String, GcpError> {
    let region = p.cfg.region.clone();
    let zone = p.cfg.zone.clone();
    let (name, outcome) = match body {
        Body::Network(b) => (
            b.name.clone(),
            adopt!(
                p,
                names,
                kind,
                b,
                networks,
                "networks",
                GLOBAL_OPS,
                "global/networks",
                set_network,
                no_labels
            ),
        ),
        Body::Firewall(b) => (
            b.name.clone(),
            adopt!(
                p,
                names,
                kind,
                b,
                firewalls,
                "firewalls",
                GLOBAL_OPS,
                "global/firewalls",
                set_firewall,
                no_labels
            ),
        ),
        Body::Subnetwork(b) => (
            b.name.clone(),
            adopt!(
                p,
                names,
                kind,
                b,
                subnetworks,
                "subnetworks",
                REGION_OPS,
                format!("regions/{region}/subnetworks"),
                set_subnetwork,
                no_labels,
                set_region = &region
            ),
        ),
        Body::HealthCheck(b) => (
            b.name.clone(),
            adopt!(
                p,
                names,
                kind,
                b,
                health_checks,
                "regionHealthChecks",
                REGION_OPS,
                format!("regions/{region}/healthChecks"),
                set_health_check,
                no_labels,
                set_region = &region
            ),
        ),
        Body::BackendService(b) => (
            b.name.clone(),
            adopt!(
                p,
                names,
                kind,
                b,
                backend_services,
                "regionBackendServices",
                REGION_OPS,
                format!("regions/{region}/backendServices"),
                set_backend_service,
                no_labels,
                set_region = &region
            ),
        ),
        Body::Address(b) => (
            b.name.clone(),
            adopt!(
                p,
                names,
                kind,
                b,
                addresses,
                "addresses",
                REGION_OPS,
                format!("regions/{region}/addresses"),
                set_address,
                |r: &model::Address| r.labels.clone(),
                set_region = &region
            ),
        ),
        Body::ForwardingRule(b) => (
            b.name.clone(),
            adopt!(
                p,
                names,
                kind,
                b,
                forwarding_rules,
                "forwardingRules",
                REGION_OPS,
                format!("regions/{region}/forwardingRules"),
                set_forwarding_rule,
                |r: &model::ForwardingRule| r.labels.clone(),
                set_region = &region
            ),
        ),
        Body::ResourcePolicy(b) => (
            b.name.clone(),
            adopt!(
                p,
                names,
                kind,
                b,
                resource_policies,
                "resourcePolicies",
                REGION_OPS,
                format!("regions/{region}/resourcePolicies"),
                set_resource_policy,
                no_labels,
                set_region = &region
            ),
        ),
        Body::InstanceGroup(b) => (
            b.name.clone(),
            adopt!(
                p,
                names,
                kind,
                b,
                instance_groups,
                "instanceGroups",
                ZONE_OPS,
                format!("zones/{zone}/instanceGroups"),
                set_instance_group,
                no_labels,
                set_zone = &zone
            ),
        ),
    };
    let name = name.unwrap_or_default();
    match outcome {
        Created(rest) => Ok(p.api.url(&rest)),
        Found(e, rest) => {
            let labelled = e.labels.get(crate::provider::CLUSTER_LABEL_GCP) == Some(&names.cluster);
            if !labelled && !names.owns(&name, e.description.as_deref()) {
                return Err(GcpError::NotOwned {
                    kind,
                    name,
                    cluster: names.cluster.clone(),
                });
            }
            tracing::debug!("adopting {kind} {name}");
            Ok(match e.self_link {
                Some(l) if !l.is_empty() => l,
                _ => p.api.url(&rest),
            })
        }
    }
}
