//! The cluster's instances: one bulkInsert per group and per 1000 missing instances, waited on
//! through the zone operation; instances that still do not exist afterwards are reported one by
//! one with the operation's error for them.

use super::gpu_fabric::{has_gpu_nics, GpuFabric};
use std::collections::{BTreeMap, BTreeSet};

use reqwest::Method;

use super::names::{Names, CONTROL_PLANE_TAG, GROUP_LABEL, POD_RANGE_NAME};
use super::preflight::machine_for;
use super::types::*;
use super::{GcpError, GcpProvider};
use crate::inventory::{Node, Role};
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
    fabric: Option<&GpuFabric>,
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
    // A3 High GPU nodes: gVNIC everywhere, nic1..nic4 on the GPU networks, compact placement.
    let fabric = fabric.filter(|_| gpu.is_some() && has_gpu_nics(&machine.machine_type));
    let mut network_interfaces = vec![NetworkInterface {
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
        nic_type: fabric.map(|_| "GVNIC".to_string()),
        ..Default::default()
    }];
    if let Some(f) = fabric {
        network_interfaces.extend(f.interfaces());
    }
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
                disk_type: Some(super::drift::BOOT_DISK_TYPE.into()),
                labels: names.labels(),
            }),
            disk_size_gb: None,
        }],
        network_interfaces,
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
                // The guest agent then publishes the SSH host keys (see `host_keys`).
                MetadataItem {
                    key: super::host_keys::METADATA_KEY.into(),
                    value: "TRUE".into(),
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
        resource_policies: fabric
            .map(|f| vec![f.placement_policy.clone()])
            .unwrap_or_default(),
    })
}

/// Label values: lowercase letters, digits, `-` and `_`, at most 63 characters.
pub(super) fn label_value(s: &str) -> String {
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

pub(super) async fn ensure_instances(
    p: &GcpProvider,
    ctx: &ProvisionContext<'_>,
    names: &Names,
    subnet: &str,
    fabric: Option<&GpuFabric>,
) -> Result<(Vec<Instance>, Vec<(String, String)>), GcpError> {
    let mut before = list_instances(p, names).await?;
    // Adopt-and-compare: drift is refused unless replacement was asked for (workers only).
    let drifts = super::drift::compare(p, ctx, names, &before).await?;
    let mut replaced = Vec::new();
    if !drifts.is_empty() {
        if !ctx.replace_drifted || drifts.iter().any(|d| d.control_plane) {
            return Err(GcpError::Drift(crate::provider::drift::refusal(
                &drifts,
                ctx.replace_drifted,
            )));
        }
        let mut gone: Vec<String> = drifts.iter().map(|d| d.resource.clone()).collect();
        gone.dedup();
        for d in &drifts {
            tracing::warn!("replacing {d}");
        }
        super::drift::delete(p, &gone).await?;
        before.retain(|i| !gone.contains(&i.name));
        replaced = gone
            .into_iter()
            .map(|n| ("instance".to_string(), n))
            .collect();
    }
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
        let props = instance_properties(
            ctx,
            names,
            subnet,
            first,
            !mt.accelerators.is_empty(),
            fabric,
        )?;
        for chunk in nodes.chunks(BULK_INSERT_MAX) {
            tracing::debug!(
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
        return Ok((before, replaced));
    }
    // Which of the requested instances exist now? Report each one that does not.
    let after = list_instances(p, names).await?;
    let now: BTreeSet<&str> = after.iter().map(|i| i.name.as_str()).collect();
    for n in requested.iter().filter(|n| now.contains(n.as_str())) {
        p.api.note_created("instance", n);
    }
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
        Ok((after, replaced))
    } else {
        Err(GcpError::InstancesFailed {
            created: wanted - failed.len(),
            failed,
        })
    }
}
