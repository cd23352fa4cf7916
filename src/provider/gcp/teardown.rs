//! Delete the cluster's resources in dependency order — forwarding rule, address, backend
//! service, health check, instance group, instances, resource policies, firewall rules,
//! subnetworks, networks —
//! waiting on every operation. Only labelled resources, or unlabelled ones with the exact
//! ownership marker and name prefix, are ever touched.

use std::sync::Arc;

use reqwest::Method;
use serde::Deserialize;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;

use super::client::ApiError;
use super::names::Names;
use super::types::Labels;
use super::{GcpError, GcpProvider};
use crate::provider::{TeardownReport, CLUSTER_LABEL_GCP};

#[derive(Debug, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Item {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    labels: Labels,
}

/// One collection to clear: (report kind, API resource, collection path, labelled?).
struct Level {
    kind: &'static str,
    api: &'static str,
    collection: String,
    labelled: bool,
}

fn levels(p: &GcpProvider) -> Vec<Level> {
    let r = |c: &str| format!("regions/{}/{c}", p.cfg.region);
    let z = |c: &str| format!("zones/{}/{c}", p.cfg.zone);
    let l = |kind, api, collection, labelled| Level {
        kind,
        api,
        collection,
        labelled,
    };
    vec![
        l(
            "forwardingRule",
            "forwardingRules",
            r("forwardingRules"),
            true,
        ),
        l("address", "addresses", r("addresses"), true),
        l(
            "backendService",
            "regionBackendServices",
            r("backendServices"),
            false,
        ),
        l(
            "healthCheck",
            "regionHealthChecks",
            r("healthChecks"),
            false,
        ),
        l(
            "instanceGroup",
            "instanceGroups",
            z("instanceGroups"),
            false,
        ),
        l("instance", "instances", z("instances"), true),
        l(
            "resourcePolicy",
            "resourcePolicies",
            r("resourcePolicies"),
            false,
        ),
        l("firewall", "firewalls", "global/firewalls".into(), false),
        l("subnetwork", "subnetworks", r("subnetworks"), false),
        l("network", "networks", "global/networks".into(), false),
    ]
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
    for level in levels(p) {
        let filter = if level.labelled {
            names.label_filter()
        } else {
            names.description_filter()
        };
        let items: Vec<Item> = p
            .api
            .list_all(
                &format!("compute.{}.list", level.api),
                &level.collection,
                Some(&filter),
            )
            .await?;
        // Check ownership ourselves too: never rely only on the server's filter.
        let ours: Vec<String> = items
            .into_iter()
            .filter(|i| {
                if level.labelled {
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
                report.deleted.push((level.kind.to_string(), n));
            }
            continue;
        }
        tracing::debug!("deleting {} {}(s)", ours.len(), level.kind);
        let deleted = delete_all(p, &level, ours).await?;
        report
            .deleted
            .extend(deleted.into_iter().map(|n| (level.kind.to_string(), n)));
    }
    Ok(report)
}

/// Delete names concurrently (bounded), wait for each operation; all errors are reported.
async fn delete_all(
    p: &GcpProvider,
    level: &Level,
    names: Vec<String>,
) -> Result<Vec<String>, GcpError> {
    let sem = Arc::new(Semaphore::new(p.cfg.concurrency.max(1)));
    let mut set: JoinSet<(String, Result<(), ApiError>)> = JoinSet::new();
    let api = Arc::new(p.api.clone());
    for name in names {
        let sem = sem.clone();
        let api = api.clone();
        let method_id = format!("compute.{}.delete", level.api);
        let rest = format!("{}/{name}", level.collection);
        set.spawn(async move {
            let _permit = sem.acquire().await;
            let r = async {
                match api
                    .mutate::<()>(&method_id, Method::DELETE, &rest, None)
                    .await
                {
                    Ok(op) => api.wait(op).await.map(|_| ()),
                    // Already gone: the goal is reached.
                    Err(e) if e.is_not_found() => Ok(()),
                    Err(e) => Err(e),
                }
            }
            .await;
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
    bar.set_message(format!("{}s", level.kind));
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
            level.kind,
            done.len(),
            failed.join("\n  - ")
        )))
    }
}
