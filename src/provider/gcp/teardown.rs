//! Delete the cluster's resources in dependency order — forwarding rule, address, backend
//! service, health check, instance group, instances, resource policies, firewall rules,
//! subnetworks, networks —
//! waiting on every operation. Only labelled resources, or unlabelled ones with the exact
//! ownership marker and name prefix, are ever touched.

use std::collections::HashMap;
use std::sync::Arc;

use google_cloud_lro::Poller;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::client::{check, lib, request_id, ApiError, Compute, GLOBAL_OPS, REGION_OPS, ZONE_OPS};
use super::names::Names;
use super::{GcpError, GcpProvider};
use crate::provider::{TeardownReport, CLUSTER_LABEL_GCP};

/// What ownership is judged by.
struct Item {
    name: String,
    description: Option<String>,
    labels: HashMap<String, String>,
}

/// The collections to clear, in dependency order.
#[derive(Debug, Clone, Copy)]
enum Kind {
    ForwardingRule,
    Address,
    BackendService,
    HealthCheck,
    InstanceGroup,
    Instance,
    ResourcePolicy,
    Firewall,
    Subnetwork,
    Network,
}

const ORDER: [Kind; 10] = [
    Kind::ForwardingRule,
    Kind::Address,
    Kind::BackendService,
    Kind::HealthCheck,
    Kind::InstanceGroup,
    Kind::Instance,
    Kind::ResourcePolicy,
    Kind::Firewall,
    Kind::Subnetwork,
    Kind::Network,
];

impl Kind {
    /// (report kind, API resource, labelled?)
    fn info(self) -> (&'static str, &'static str, bool) {
        match self {
            Kind::ForwardingRule => ("forwardingRule", "forwardingRules", true),
            Kind::Address => ("address", "addresses", true),
            Kind::BackendService => ("backendService", "regionBackendServices", false),
            Kind::HealthCheck => ("healthCheck", "regionHealthChecks", false),
            Kind::InstanceGroup => ("instanceGroup", "instanceGroups", false),
            Kind::Instance => ("instance", "instances", true),
            Kind::ResourcePolicy => ("resourcePolicy", "resourcePolicies", false),
            Kind::Firewall => ("firewall", "firewalls", false),
            Kind::Subnetwork => ("subnetwork", "subnetworks", false),
            Kind::Network => ("network", "networks", false),
        }
    }
}

/// Where a collection lives, for the requests.
#[derive(Clone)]
struct Loc {
    region: String,
    zone: String,
}

/// `items` of every page of one kind's list, reduced to what ownership needs.
macro_rules! list_items {
    ($api:expr, $method:expr, $client:ident, $filter:expr, $labels:expr $(, $set_loc:ident = $loc:expr)?) => {{
        let listed: Vec<_> = crate::gcp_list_all!(
            $api,
            &$method,
            "",
            $api.$client()
                .await?
                .list()
                .set_project(&$api.project)
                $(.$set_loc($loc))?
                .set_filter($filter)
        );
        listed
            .into_iter()
            .map(|r| Item {
                name: r.name.clone().unwrap_or_default(),
                description: r.description.clone(),
                labels: $labels(&r),
            })
            .collect::<Vec<Item>>()
    }};
}

fn no_labels<T>(_: &T) -> HashMap<String, String> {
    HashMap::new()
}

async fn list(api: &Compute, kind: Kind, loc: &Loc, filter: String) -> Result<Vec<Item>, GcpError> {
    let method = format!("compute.{}.list", kind.info().1);
    let (r, z) = (&loc.region, &loc.zone);
    Ok(match kind {
        Kind::ForwardingRule => list_items!(
            api,
            method,
            forwarding_rules,
            filter,
            |x: &google_cloud_compute_v1::model::ForwardingRule| x.labels.clone(),
            set_region = r
        ),
        Kind::Address => list_items!(
            api,
            method,
            addresses,
            filter,
            |x: &google_cloud_compute_v1::model::Address| x.labels.clone(),
            set_region = r
        ),
        Kind::BackendService => list_items!(
            api,
            method,
            backend_services,
            filter,
            no_labels,
            set_region = r
        ),
        Kind::HealthCheck => list_items!(
            api,
            method,
            health_checks,
            filter,
            no_labels,
            set_region = r
        ),
        Kind::InstanceGroup => list_items!(
            api,
            method,
            instance_groups,
            filter,
            no_labels,
            set_zone = z
        ),
        Kind::Instance => list_items!(
            api,
            method,
            instances,
            filter,
            |x: &google_cloud_compute_v1::model::Instance| x.labels.clone(),
            set_zone = z
        ),
        Kind::ResourcePolicy => list_items!(
            api,
            method,
            resource_policies,
            filter,
            no_labels,
            set_region = r
        ),
        Kind::Firewall => list_items!(api, method, firewalls, filter, no_labels),
        Kind::Subnetwork => {
            list_items!(api, method, subnetworks, filter, no_labels, set_region = r)
        }
        Kind::Network => list_items!(api, method, networks, filter, no_labels),
    })
}

/// Start one delete and wait for its operation.
macro_rules! delete_one {
    ($api:expr, $method:expr, $scope:expr, $client:ident, $set_name:ident, $name:expr $(, $set_loc:ident = $loc:expr)?) => {{
        let op = $api
            .mutation(
                &$method,
                $scope,
                $api.$client()
                    .await?
                    .delete()
                    .set_project(&$api.project)
                    $(.$set_loc($loc))?
                    .$set_name($name)
                    .set_request_id(request_id()),
            )
            .poller()
            .until_done()
            .await;
        check(lib(&$method, $name, op)?).map(|_| ())
    }};
}

async fn delete(api: &Compute, kind: Kind, loc: &Loc, name: &str) -> Result<(), ApiError> {
    let method = format!("compute.{}.delete", kind.info().1);
    let (r, z) = (&loc.region, &loc.zone);
    match kind {
        Kind::ForwardingRule => delete_one!(
            api,
            method,
            REGION_OPS,
            forwarding_rules,
            set_forwarding_rule,
            name,
            set_region = r
        ),
        Kind::Address => delete_one!(
            api,
            method,
            REGION_OPS,
            addresses,
            set_address,
            name,
            set_region = r
        ),
        Kind::BackendService => delete_one!(
            api,
            method,
            REGION_OPS,
            backend_services,
            set_backend_service,
            name,
            set_region = r
        ),
        Kind::HealthCheck => delete_one!(
            api,
            method,
            REGION_OPS,
            health_checks,
            set_health_check,
            name,
            set_region = r
        ),
        Kind::InstanceGroup => delete_one!(
            api,
            method,
            ZONE_OPS,
            instance_groups,
            set_instance_group,
            name,
            set_zone = z
        ),
        Kind::Instance => delete_one!(
            api,
            method,
            ZONE_OPS,
            instances,
            set_instance,
            name,
            set_zone = z
        ),
        Kind::ResourcePolicy => delete_one!(
            api,
            method,
            REGION_OPS,
            resource_policies,
            set_resource_policy,
            name,
            set_region = r
        ),
        Kind::Firewall => delete_one!(api, method, GLOBAL_OPS, firewalls, set_firewall, name),
        Kind::Subnetwork => delete_one!(
            api,
            method,
            REGION_OPS,
            subnetworks,
            set_subnetwork,
            name,
            set_region = r
        ),
        Kind::Network => delete_one!(api, method, GLOBAL_OPS, networks, set_network, name),
    }
}

pub async fn run(
    p: &GcpProvider,
    names: &Names,
    dry_run: bool,
) -> Result<TeardownReport, GcpError> {
    let mut report = TeardownReport {
        deleted: Vec::new(),
        dry_run,
    };
    let loc = Loc {
        region: p.cfg.region.clone(),
        zone: p.cfg.zone.clone(),
    };
    for kind in ORDER {
        let (report_kind, _, labelled) = kind.info();
        let filter = if labelled {
            names.label_filter()
        } else {
            names.description_filter()
        };
        let items = list(&p.api, kind, &loc, filter).await?;
        // Check ownership ourselves too: never rely only on the server's filter.
        let ours: Vec<String> = items
            .into_iter()
            .filter(|i| {
                if labelled {
                    i.labels.get(CLUSTER_LABEL_GCP) == Some(&names.cluster)
                } else {
                    names.owns(&i.name, i.description.as_deref())
                }
            })
            .map(|i| i.name)
            .collect();
        if ours.is_empty() {
            continue;
        }
        if dry_run {
            for n in ours {
                report.deleted.push((report_kind.to_string(), n));
            }
            continue;
        }
        tracing::debug!("deleting {} {report_kind}(s)", ours.len());
        let deleted = delete_all(p, kind, &loc, ours).await?;
        report
            .deleted
            .extend(deleted.into_iter().map(|n| (report_kind.to_string(), n)));
    }
    Ok(report)
}

/// Delete names concurrently (bounded), wait for each operation; all errors are reported.
async fn delete_all(
    p: &GcpProvider,
    kind: Kind,
    loc: &Loc,
    names: Vec<String>,
) -> Result<Vec<String>, GcpError> {
    let report_kind = kind.info().0;
    let sem = Arc::new(Semaphore::new(p.cfg.concurrency.max(1)));
    let mut set: JoinSet<(String, Result<(), ApiError>)> = JoinSet::new();
    let api = Arc::new(p.api.clone());
    for name in names {
        let sem = sem.clone();
        let api = api.clone();
        let loc = loc.clone();
        set.spawn(async move {
            let _permit = sem.acquire().await;
            let r = match delete(&api, kind, &loc, &name).await {
                // Already gone: the goal is reached.
                Err(e) if e.is_not_found() => Ok(()),
                other => other,
            };
            (name, r)
        });
    }
    let mut done = Vec::new();
    let mut failed = Vec::new();
    // A bar for long deletions (hidden when stderr is not a terminal).
    let bar = indicatif::ProgressBar::new(set.len() as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template("  deleting {msg}: {pos}/{len} {wide_bar}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message(format!("{report_kind}s"));
    while let Some(j) = set.join_next().await {
        bar.inc(1);
        match j {
            Ok((name, Ok(()))) => done.push(name),
            Ok((name, Err(e))) => failed.push(format!("{name}: {e}")),
            Err(e) => failed.push(format!("task: {e}")),
        }
    }
    bar.finish_and_clear();
    done.sort();
    if failed.is_empty() {
        Ok(done)
    } else {
        failed.sort();
        Err(GcpError::Config(format!(
            "could not delete {} {}(s) ({} deleted); re-run teardown to retry:\n  - {}",
            failed.len(),
            report_kind,
            done.len(),
            failed.join("\n  - ")
        )))
    }
}
