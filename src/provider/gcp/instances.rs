//! The cluster's instances: one bulkInsert per group and per 1000 missing instances, waited on
//! through the zone operation; instances that still do not exist afterwards are reported one by
//! one with the operation's error for them.

use std::collections::{BTreeMap, BTreeSet};

use google_cloud_compute_v1::model::{
    metadata, AcceleratorConfig, AccessConfig, AliasIpRange, AttachedDisk,
    AttachedDiskInitializeParams, BulkInsertInstanceResource,
    BulkInsertInstanceResourcePerInstanceProperties, Instance, InstanceProperties, Metadata,
    NetworkInterface, Scheduling, Tags,
};
use google_cloud_lro::Poller;

use super::client::{lib, request_id, ZONE_OPS};
use super::gpu_fabric::{has_gpu_nics, GpuFabric};
use super::names::{Names, CONTROL_PLANE_TAG, GROUP_LABEL, POD_RANGE_NAME};
use super::preflight::machine_for;
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
    let all: Vec<Instance> = crate::gcp_list_all!(
        p.api,
        "compute.instances.list",
        &p.cfg.zone,
        p.api
            .instances()
            .await?
            .list()
            .set_project(&p.api.project)
            .set_zone(&p.cfg.zone)
            .set_filter(names.label_filter())
    );
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
    let mut network_interfaces = vec![NetworkInterface::new()
        .set_subnetwork(subnet)
        .set_access_configs([AccessConfig::new()
            .set_name("External NAT")
            .set_type("ONE_TO_ONE_NAT")
            .set_network_tier("PREMIUM")])
        // The API picks a free block of this size from the pods' range for each instance.
        .set_alias_ip_ranges([AliasIpRange::new()
            .set_ip_cidr_range(format!("/{}", ctx.profile.network.pod_prefix_per_node))
            .set_subnetwork_range_name(POD_RANGE_NAME)])
        .set_or_clear_nic_type(fabric.map(|_| "GVNIC"))];
    if let Some(f) = fabric {
        network_interfaces.extend(f.interfaces());
    }
    Ok(InstanceProperties::new()
        .set_description(names.marker())
        .set_machine_type(machine.machine_type.clone())
        // Accelerator-optimized types (A2/A3/G2) have their GPUs attached already.
        .set_guest_accelerators(match (&gpu, bundled_gpus) {
            (Some((t, n)), false) => vec![AcceleratorConfig::new()
                .set_accelerator_type(t.clone())
                .set_accelerator_count(*n as i32)],
            _ => vec![],
        })
        // GPU instances cannot live-migrate.
        .set_scheduling(
            Scheduling::new()
                .set_on_host_maintenance(if gpu.is_some() {
                    "TERMINATE"
                } else {
                    "MIGRATE"
                })
                .set_automatic_restart(true),
        )
        .set_disks([AttachedDisk::new()
            .set_boot(true)
            .set_auto_delete(true)
            .set_initialize_params(
                AttachedDiskInitializeParams::new()
                    .set_source_image(image)
                    .set_disk_size_gb(i64::from(machine.boot_disk_gib))
                    .set_disk_type(super::drift::BOOT_DISK_TYPE)
                    .set_labels(names.labels()),
            )])
        .set_network_interfaces(network_interfaces)
        .set_metadata(
            Metadata::new().set_items([
                metadata::Items::new()
                    .set_key("ssh-keys")
                    .set_value(format!(
                        "{}:{}",
                        ctx.profile.ssh.user,
                        ctx.ssh_public_key.trim()
                    )),
                metadata::Items::new()
                    .set_key("block-project-ssh-keys")
                    .set_value("true"),
                // The guest agent then publishes the SSH host keys (see `host_keys`).
                metadata::Items::new()
                    .set_key(super::host_keys::METADATA_KEY)
                    .set_value("TRUE"),
            ]),
        )
        .set_tags(Tags::new().set_items(if cp {
            vec![CONTROL_PLANE_TAG.to_string()]
        } else {
            vec![]
        }))
        .set_labels(labels)
        .set_resource_policies(
            fabric
                .map(|f| vec![f.placement_policy.clone()])
                .unwrap_or_default(),
        ))
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
        before.retain(|i| !i.name.as_ref().is_some_and(|n| gone.contains(n)));
        replaced = gone
            .into_iter()
            .map(|n| ("instance".to_string(), n))
            .collect();
    }
    let existing: BTreeSet<String> = before.iter().filter_map(|i| i.name.clone()).collect();
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
        let id = "compute.machineTypes.get";
        let mt = lib(
            id,
            &machine.machine_type,
            p.api
                .call(
                    id,
                    p.api
                        .machine_types()
                        .await?
                        .get()
                        .set_project(&p.api.project)
                        .set_zone(&p.cfg.zone)
                        .set_machine_type(&machine.machine_type),
                )
                .send()
                .await,
        )?;
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
            let per: BTreeMap<String, BulkInsertInstanceResourcePerInstanceProperties> = chunk
                .iter()
                .map(|n| {
                    let name = names.instance(&n.name);
                    (
                        name.clone(),
                        BulkInsertInstanceResourcePerInstanceProperties::new().set_name(name),
                    )
                })
                .collect();
            requested.extend(per.keys().cloned());
            let body = BulkInsertInstanceResource::new()
                .set_count(chunk.len() as i64)
                // Keep what can be created: a re-run fills in the rest.
                .set_min_count(1)
                .set_instance_properties(props.clone())
                .set_per_instance_properties(per);
            let id = "compute.instances.bulkInsert";
            let op = p
                .api
                .mutation(
                    id,
                    ZONE_OPS,
                    p.api
                        .instances()
                        .await?
                        .bulk_insert()
                        .set_project(&p.api.project)
                        .set_zone(&p.cfg.zone)
                        .set_request_id(request_id())
                        .set_body(body),
                )
                .poller()
                .until_done()
                .await;
            // The finished operation, error or not: its errors name the instances that failed.
            match lib(id, group, op) {
                Ok(done) => {
                    if let Some(e) = done.error {
                        errors.extend(e.errors.into_iter().map(|i| {
                            let code = i.code.unwrap_or_default();
                            let msg = i.message.unwrap_or_default();
                            match i.location {
                                Some(l) if !l.is_empty() => format!("{l}|{code}: {msg}"),
                                _ => format!("|{code}: {msg}"),
                            }
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
    let now: BTreeSet<&str> = after.iter().filter_map(|i| i.name.as_deref()).collect();
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
