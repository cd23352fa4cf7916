//! Checks before anything is created: the machine and accelerator types exist in the zone, and
//! the region's and project's quotas cover what this run will add. A shortfall is reported with
//! the needed and allowed numbers, where, and how to ask for more — not the API's bare
//! "Quota 'GPUS_ALL_REGIONS' exceeded. Limit: 0.0 globally" after a long wait.

use std::collections::{BTreeMap, BTreeSet};

use google_cloud_compute_v1::model::{AcceleratorType, Instance, Network, Quota};

use super::client::{lib, lib_opt};
use super::names::{last_segment, Names};
use super::{GcpError, GcpProvider};
use crate::inventory::Node;
use crate::profile::{GcpMachine, Profile};
use crate::provider::ProvisionContext;

/// The Compute quota metric an accelerator type counts against. Metric names are strings here
/// on purpose: the API adds them (e.g. NVIDIA_H100_GPUS) before client libraries know them.
pub fn gpu_metric(accelerator_type: &str) -> String {
    let known = match accelerator_type {
        "nvidia-tesla-a100" => Some("NVIDIA_A100_GPUS"),
        "nvidia-a100-80gb" => Some("NVIDIA_A100_80GB_GPUS"),
        "nvidia-h100-80gb" => Some("NVIDIA_H100_GPUS"),
        "nvidia-h100-mega-80gb" => Some("NVIDIA_H100_MEGA_GPUS"),
        "nvidia-h200-141gb" => Some("NVIDIA_H200_GPUS"),
        _ => None,
    };
    if let Some(k) = known {
        return k.to_string();
    }
    // nvidia-tesla-t4 → NVIDIA_T4_GPUS, nvidia-l4 → NVIDIA_L4_GPUS, nvidia-b200 → NVIDIA_B200_GPUS.
    let model = accelerator_type
        .trim_start_matches("nvidia-")
        .trim_start_matches("tesla-")
        .to_ascii_uppercase()
        .replace('-', "_");
    format!("NVIDIA_{model}_GPUS")
}

/// One kind of machine the run will create, and how many.
#[derive(Debug, Clone)]
pub struct Shape {
    pub group: String,
    pub machine: GcpMachine,
    pub gpus: u32,
    pub count: u64,
}

/// The machine shape of a node's group.
pub fn machine_for<'a>(profile: &'a Profile, node: &Node) -> Option<&'a GcpMachine> {
    if node.group == "controlPlane" {
        profile.control_plane.gcp.as_ref()
    } else {
        profile
            .workers
            .iter()
            .find(|g| g.name == node.group)
            .and_then(|g| g.gcp.as_ref())
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Shortfall {
    pub metric: String,
    /// `region us-central1` or `project-wide (all regions)`.
    pub scope: String,
    pub needed: f64,
    pub limit: f64,
    pub usage: f64,
}

/// The human message for quota shortfalls.
pub fn shortfall_message(
    project: &str,
    region: &str,
    instances: u64,
    short: &[Shortfall],
) -> String {
    let mut m = format!(
        "not enough Compute Engine quota in project {project} to create {instances} instance(s); nothing was created.\n"
    );
    for s in short {
        m.push_str(&format!(
            "  - {} in {}: this run needs {}, allowed {} (limit {}, already in use {})\n",
            s.metric,
            s.scope,
            s.needed,
            (s.limit - s.usage).max(0.0),
            s.limit,
            s.usage
        ));
    }
    m.push_str(&format!(
        "Request more in the console: https://console.cloud.google.com/iam-admin/quotas?project={project} \
         (filter by the metric name above and, for regional quotas, region {region}), or with gcloud, e.g.\n"
    ));
    for s in short {
        let regional = s.scope.starts_with("region");
        let quota_id = format!(
            "{}-per-project{}",
            s.metric.replace('_', "-"),
            if regional { "-region" } else { "" }
        );
        m.push_str(&format!(
            "  gcloud beta quotas preferences create --service=compute.googleapis.com --project={project} \
             --quota-id={quota_id} --preferred-value={}{} --justification=\"Kubernetes GPU cluster\"\n",
            (s.usage + s.needed).ceil(),
            if regional { format!(" --dimensions=region={region}") } else { String::new() }
        ));
    }
    m.push_str(
        "GPU quota increases are reviewed by Google and can take a few days; re-run when granted.",
    );
    m
}

/// Metric names compared as strings: values newer than the library's enum still match.
fn quota<'a>(quotas: &'a [Quota], metric: &str) -> Option<&'a Quota> {
    quotas
        .iter()
        .find(|q| q.metric.as_ref().and_then(|m| m.name()) == Some(metric))
}

pub async fn run(p: &GcpProvider, ctx: &ProvisionContext<'_>) -> Result<(), GcpError> {
    let names = Names::new(&ctx.profile.name);
    let zone = &p.cfg.zone;
    // Only what is missing counts: a re-run adds nothing, so it needs no quota.
    let listed: Vec<Instance> = crate::gcp_list_all!(
        p.api,
        "compute.instances.list",
        zone,
        p.api
            .instances()
            .await?
            .list()
            .set_project(&p.api.project)
            .set_zone(zone)
            .set_filter(names.label_filter())
    );
    let existing: BTreeSet<String> = listed.into_iter().filter_map(|i| i.name).collect();
    let mut shapes: BTreeMap<String, Shape> = BTreeMap::new();
    let mut missing_nodes = 0u64;
    for node in &ctx.planned.nodes {
        if existing.contains(&names.instance(&node.name)) {
            continue;
        }
        missing_nodes += 1;
        let machine = machine_for(ctx.profile, node).ok_or_else(|| {
            GcpError::Preflight(format!(
                "group {} has no gcp machine section (machineType)",
                node.group
            ))
        })?;
        shapes
            .entry(node.group.clone())
            .or_insert_with(|| Shape {
                group: node.group.clone(),
                machine: machine.clone(),
                gpus: node.gpus,
                count: 0,
            })
            .count += 1;
    }
    check_types(p, &shapes).await?;
    if missing_nodes == 0 {
        return Ok(());
    }
    let networks = missing_networks(p, ctx.profile, &names).await?;
    check_quotas(p, &names, &shapes, missing_nodes, networks).await
}

/// VPC networks this run would create: the cluster's own and, for A3 High groups, one per GPU
/// NIC (5 per A3 cluster, against a project's NETWORKS quota of 15 by default). One
/// `networks.list` by the ownership marker.
async fn missing_networks(
    p: &GcpProvider,
    profile: &Profile,
    names: &Names,
) -> Result<Vec<String>, GcpError> {
    let mut wanted = vec![names.network()];
    if super::gpu_fabric::cluster_needs(profile) {
        wanted.extend((1..=super::gpu_fabric::GPU_NICS).map(|i| names.gpu_network(i)));
    }
    let listed: Vec<Network> = crate::gcp_list_all!(
        p.api,
        "compute.networks.list",
        "global/networks",
        p.api
            .networks()
            .await?
            .list()
            .set_project(&p.api.project)
            .set_filter(names.description_filter())
    );
    let have: BTreeSet<String> = listed.into_iter().filter_map(|n| n.name).collect();
    Ok(wanted.into_iter().filter(|n| !have.contains(n)).collect())
}

/// Machine types and accelerator types must exist in the zone, with enough cards per instance.
async fn check_types(p: &GcpProvider, shapes: &BTreeMap<String, Shape>) -> Result<(), GcpError> {
    let zone = &p.cfg.zone;
    let mut problems = Vec::new();
    for s in shapes.values() {
        let mt = &s.machine.machine_type;
        let id = "compute.machineTypes.get";
        let found = lib_opt(
            id,
            mt,
            p.api
                .call(
                    id,
                    p.api
                        .machine_types()
                        .await?
                        .get()
                        .set_project(&p.api.project)
                        .set_zone(zone)
                        .set_machine_type(mt),
                )
                .send()
                .await,
        )?;
        if found.is_none() {
            problems.push(format!(
                "machine type {mt} (group {}) is not offered in zone {zone}; see `gcloud compute machine-types list --filter=zone:{zone}`",
                s.group
            ));
        }
        if s.gpus == 0 {
            continue;
        }
        let Some(at) = &s.machine.accelerator_type else {
            continue;
        };
        let id = "compute.acceleratorTypes.get";
        let acc = lib_opt(
            id,
            at,
            p.api
                .call(
                    id,
                    p.api
                        .accelerator_types()
                        .await?
                        .get()
                        .set_project(&p.api.project)
                        .set_zone(zone)
                        .set_accelerator_type(at),
                )
                .send()
                .await,
        )?;
        match acc {
            None => {
                let listed: Vec<AcceleratorType> = crate::gcp_list_all!(
                    p.api,
                    "compute.acceleratorTypes.list",
                    zone,
                    p.api
                        .accelerator_types()
                        .await?
                        .list()
                        .set_project(&p.api.project)
                        .set_zone(zone)
                );
                let offered: Vec<String> = listed.into_iter().filter_map(|a| a.name).collect();
                problems.push(format!(
                    "accelerator type {at} (group {}) does not exist in zone {zone}; offered there: {}",
                    s.group,
                    if offered.is_empty() { "none".to_string() } else { offered.join(", ") }
                ));
            }
            Some(a) => {
                if let Some(max) = a.maximum_cards_per_instance {
                    if i64::from(s.gpus) > i64::from(max) {
                        problems.push(format!(
                            "group {} asks for {} x {at} per node, but zone {zone} allows at most {max} per instance",
                            s.group, s.gpus
                        ));
                    }
                }
            }
        }
        if let Some(m) = found {
            if let Some(b) = m.accelerators.first() {
                let bundled = last_segment(b.guest_accelerator_type.as_deref().unwrap_or(""));
                let count = b.guest_accelerator_count.unwrap_or(0);
                if bundled != at || count != s.gpus as i32 {
                    problems.push(format!(
                        "machine type {mt} comes with {count} x {bundled}, but group {} asks for {} x {at}",
                        s.group, s.gpus
                    ));
                }
            }
        }
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(GcpError::Preflight(format!(
            "the profile asks for machines zone {zone} cannot provide; nothing was created:\n  - {}",
            problems.join("\n  - ")
        )))
    }
}

fn limit(q: &Quota) -> f64 {
    q.limit.unwrap_or(0.0)
}

fn usage(q: &Quota) -> f64 {
    q.usage.unwrap_or(0.0)
}

async fn check_quotas(
    p: &GcpProvider,
    names: &Names,
    shapes: &BTreeMap<String, Shape>,
    instances: u64,
    networks: Vec<String>,
) -> Result<(), GcpError> {
    let cfg = &p.cfg;
    let id = "compute.regions.get";
    let region = lib(
        id,
        &cfg.region,
        p.api
            .call(
                id,
                p.api
                    .regions()
                    .await?
                    .get()
                    .set_project(&p.api.project)
                    .set_region(&cfg.region),
            )
            .send()
            .await,
    )?;
    let id = "compute.projects.get";
    let project = lib(
        id,
        &cfg.project,
        p.api
            .call(
                id,
                p.api.projects().await?.get().set_project(&p.api.project),
            )
            .send()
            .await,
    )?;

    let mut regional: BTreeMap<String, f64> = BTreeMap::new();
    let mut global: BTreeMap<String, f64> = BTreeMap::new();
    for s in shapes.values() {
        let id = "compute.machineTypes.get";
        let mt = lib(
            id,
            &s.machine.machine_type,
            p.api
                .call(
                    id,
                    p.api
                        .machine_types()
                        .await?
                        .get()
                        .set_project(&p.api.project)
                        .set_zone(&cfg.zone)
                        .set_machine_type(&s.machine.machine_type),
                )
                .send()
                .await,
        )?;
        let n = s.count as f64;
        let cpus = f64::from(mt.guest_cpus.unwrap_or(0)) * n;
        *regional.entry("CPUS".into()).or_default() += cpus;
        *global.entry("CPUS_ALL_REGIONS".into()).or_default() += cpus;
        // Family quotas (N2_CPUS, C3_CPUS, …) exist only for some families; checked if reported.
        let family = s
            .machine
            .machine_type
            .split('-')
            .next()
            .unwrap_or_default()
            .to_ascii_uppercase();
        *regional.entry(format!("{family}_CPUS")).or_default() += cpus;
        *regional.entry("SSD_TOTAL_GB".into()).or_default() +=
            f64::from(s.machine.boot_disk_gib) * n;
        if let (true, Some(at)) = (s.gpus > 0, &s.machine.accelerator_type) {
            let gpus = f64::from(s.gpus) * n;
            *regional.entry(gpu_metric(at)).or_default() += gpus;
            *global.entry("GPUS_ALL_REGIONS".into()).or_default() += gpus;
        }
    }
    // One external address per instance, plus the API load balancer's if not reserved yet.
    let id = "compute.addresses.get";
    let lb_exists = lib_opt(
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
                    .set_region(&cfg.region)
                    .set_address(names.address()),
            )
            .send()
            .await,
    )?
    .is_some();
    *regional.entry("IN_USE_ADDRESSES".into()).or_default() +=
        instances as f64 + if lb_exists { 0.0 } else { 1.0 };

    if !networks.is_empty() {
        global.insert("NETWORKS".into(), networks.len() as f64);
    }

    let mut short = Vec::new();
    let mut unchecked = Vec::new();
    for (metric, needed) in &regional {
        match quota(&region.quotas, metric) {
            Some(q) if usage(q) + needed > limit(q) => short.push(Shortfall {
                metric: metric.clone(),
                scope: format!("region {}", cfg.region),
                needed: *needed,
                limit: limit(q),
                usage: usage(q),
            }),
            Some(_) => {}
            None if metric.ends_with("_GPUS") => unchecked.push(metric.clone()),
            None => {}
        }
    }
    for (metric, needed) in &global {
        if let Some(q) = quota(&project.quotas, metric) {
            if usage(q) + needed > limit(q) {
                short.push(Shortfall {
                    metric: metric.clone(),
                    scope: "project-wide (all regions)".into(),
                    needed: *needed,
                    limit: limit(q),
                    usage: usage(q),
                });
            }
        }
    }
    for m in unchecked {
        tracing::warn!(
            "region {} reports no {m} quota; the GPU quota could not be checked before creating",
            cfg.region
        );
    }
    if short.is_empty() {
        Ok(())
    } else {
        let mut m = shortfall_message(&cfg.project, &cfg.region, instances, &short);
        if short.iter().any(|s| s.metric == "NETWORKS") {
            m.push_str(&format!(
                "\nNETWORKS counts VPC networks: this cluster creates {} ({}){}. Delete unused VPC networks of the project, or ask for a higher NETWORKS quota (15 by default).",
                networks.len(),
                networks.join(", "),
                if networks.len() > 1 {
                    "; A3 High needs its own network for each of its 4 GPU NICs besides the cluster's"
                } else {
                    ""
                }
            ));
        }
        Err(GcpError::Preflight(m))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gpu_metrics_for_known_and_new_types() {
        assert_eq!(gpu_metric("nvidia-h100-80gb"), "NVIDIA_H100_GPUS");
        assert_eq!(gpu_metric("nvidia-tesla-t4"), "NVIDIA_T4_GPUS");
        assert_eq!(gpu_metric("nvidia-l4"), "NVIDIA_L4_GPUS");
        assert_eq!(gpu_metric("nvidia-b200"), "NVIDIA_B200_GPUS");
    }

    #[test]
    fn message_names_numbers_place_and_remedy() {
        let m = shortfall_message(
            "p1",
            "us-central1",
            1000,
            &[Shortfall {
                metric: "GPUS_ALL_REGIONS".into(),
                scope: "project-wide (all regions)".into(),
                needed: 8000.0,
                limit: 0.0,
                usage: 0.0,
            }],
        );
        assert!(m.contains(
            "GPUS_ALL_REGIONS in project-wide (all regions): this run needs 8000, allowed 0"
        ));
        assert!(m.contains("nothing was created"));
        assert!(m.contains("quota-id=GPUS-ALL-REGIONS-per-project "));
        assert!(m.contains("console.cloud.google.com/iam-admin/quotas?project=p1"));
    }
}
