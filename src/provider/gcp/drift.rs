//! Adopted instances compared with the profile before they are used: machine type, network
//! interfaces (A3 High: nic0 + 4 GPU gVNICs), boot disk size and type, and the boot disk's image (the profile's image, or — for an image family —
//! any image of that family, so a newer image in the family is not drift). One `disks.list` by
//! the cluster label, plus one `images.get` per distinct other image.

use std::collections::BTreeMap;

use google_cloud_compute_v1::model::{Disk, Instance};
use google_cloud_lro::Poller;

use super::client::{check, lib, request_id, ZONE_OPS};
use super::gpu_fabric::{has_gpu_nics, GPU_NICS};
use super::names::{last_segment, Names};
use super::preflight::machine_for;
use super::{GcpError, GcpProvider};
use crate::inventory::Role;
use crate::provider::drift::Drift;
use crate::provider::ProvisionContext;

/// The disk type every boot disk is created with (`instances::instance_properties`).
pub const BOOT_DISK_TYPE: &str = "pd-balanced";

/// `projects/...` part of a Compute URL (or the string itself).
fn relative(url: &str) -> &str {
    url.find("projects/").map_or(url, |i| &url[i..])
}

pub(super) async fn compare(
    p: &GcpProvider,
    ctx: &ProvisionContext<'_>,
    names: &Names,
    existing: &[Instance],
) -> Result<Vec<Drift>, GcpError> {
    let by_name: BTreeMap<&str, &Instance> = existing
        .iter()
        .filter_map(|i| i.name.as_deref().map(|n| (n, i)))
        .collect();
    let disks: Vec<Disk> = if existing.is_empty() {
        Vec::new()
    } else {
        crate::gcp_list_all!(
            p.api,
            "compute.disks.list",
            &p.cfg.zone,
            p.api
                .disks()
                .await?
                .list()
                .set_project(&p.api.project)
                .set_zone(&p.cfg.zone)
                .set_filter(names.label_filter())
        )
    };
    let disk_by_url: BTreeMap<String, &Disk> = disks
        .iter()
        .map(|d| {
            (
                relative(d.self_link.as_deref().unwrap_or("")).to_string(),
                d,
            )
        })
        .collect();
    let want_image = ctx
        .profile
        .provider
        .gcp
        .as_ref()
        .map(|g| g.image.clone())
        .ok_or(GcpError::NoSpec)?;
    let want_rel = relative(&want_image).to_string();
    // `projects/<p>/global/images/family/<f>`: the project and family an image must belong to.
    let family: Option<(String, String)> = want_rel
        .split_once("/global/images/family/")
        .map(|(proj, fam)| (proj.to_string(), fam.to_string()));
    let mut families: BTreeMap<String, Option<String>> = BTreeMap::new();

    let mut out = Vec::new();
    for n in &ctx.planned.nodes {
        let Some(i) = by_name.get(names.instance(&n.name).as_str()) else {
            continue;
        };
        let Some(machine) = machine_for(ctx.profile, n) else {
            continue;
        };
        let group = if n.has(Role::ControlPlane) {
            "controlPlane".to_string()
        } else {
            format!("workers[{}]", n.group)
        };
        let mut drift = |field: String, have: String, want: String| {
            out.push(Drift {
                node: n.name.clone(),
                resource: i.name.clone().unwrap_or_default(),
                field,
                have,
                want,
                control_plane: n.has(Role::ControlPlane) || n.has(Role::Etcd),
            })
        };
        let have_type = last_segment(i.machine_type.as_deref().unwrap_or("")).to_string();
        if have_type != machine.machine_type {
            drift(
                format!("{group}.gcp.machineType"),
                have_type,
                machine.machine_type.clone(),
            );
        }
        // A3 High needs its GPU NICs from creation: an instance made without them (or by a
        // k8sforge before they existed) cannot get them in place.
        // Same rule as `instances::instance_properties`.
        let want_nics = if n.gpus > 0
            && machine.accelerator_type.is_some()
            && has_gpu_nics(&machine.machine_type)
        {
            1 + GPU_NICS
        } else {
            1
        };
        let gvnics = i
            .network_interfaces
            .iter()
            .filter(|nic| nic.nic_type.as_ref().and_then(|t| t.name()) == Some("GVNIC"))
            .count();
        if i.network_interfaces.len() != want_nics || (want_nics > 1 && gvnics != want_nics) {
            drift(
                "network interfaces".into(),
                format!("{} ({gvnics} gVNIC)", i.network_interfaces.len()),
                if want_nics > 1 {
                    format!(
                        "{want_nics} gVNICs (nic0 + {GPU_NICS} GPU NICs of {})",
                        machine.machine_type
                    )
                } else {
                    "1".into()
                },
            );
        }
        let boot = i.disks.iter().find(|d| d.boot == Some(true));
        let size = boot.and_then(|d| d.disk_size_gb);
        if size != Some(i64::from(machine.boot_disk_gib)) {
            drift(
                format!("{group}.gcp.bootDiskGiB"),
                size.map_or("unknown".into(), |s| format!("{s} GB")),
                format!("{} GB", machine.boot_disk_gib),
            );
        }
        let Some(disk) = boot
            .and_then(|d| d.source.as_deref())
            .and_then(|u| disk_by_url.get(relative(u)))
        else {
            drift(
                "boot disk".into(),
                "not found by the cluster label".into(),
                format!("a {BOOT_DISK_TYPE} disk from {want_image}"),
            );
            continue;
        };
        let dtype = last_segment(disk.r#type.as_deref().unwrap_or("")).to_string();
        if dtype != BOOT_DISK_TYPE {
            drift("boot disk type".into(), dtype, BOOT_DISK_TYPE.into());
        }
        let have_image = disk.source_image.as_deref().map(relative).unwrap_or("");
        if have_image == want_rel {
            continue;
        }
        let same_family = match &family {
            Some((proj, fam)) if have_image.starts_with(&format!("{proj}/global/images/")) => {
                if !families.contains_key(have_image) {
                    // Images live in their publisher's project: its project, not ours.
                    let id = "compute.images.get";
                    let image_name = last_segment(have_image);
                    let img = match p.api.images().await {
                        Ok(c) => p
                            .api
                            .call(
                                id,
                                c.get()
                                    .set_project(proj.trim_start_matches("projects/"))
                                    .set_image(image_name),
                            )
                            .send()
                            .await
                            .ok(),
                        Err(_) => None,
                    };
                    families.insert(have_image.to_string(), img.and_then(|i| i.family));
                }
                families.get(have_image).cloned().flatten().as_deref() == Some(fam.as_str())
            }
            _ => false,
        };
        if !same_family {
            drift(
                "provider.gcp.image".into(),
                if have_image.is_empty() {
                    "unknown".into()
                } else {
                    have_image.to_string()
                },
                want_image.clone(),
            );
        }
    }
    Ok(out)
}

/// Delete the drifted workers (boot disks go with them) and wait, so they are created again.
pub(super) async fn delete(p: &GcpProvider, instances: &[String]) -> Result<(), GcpError> {
    for name in instances {
        tracing::info!("deleting drifted instance {name}");
        let id = "compute.instances.delete";
        let op = p
            .api
            .mutation(
                id,
                ZONE_OPS,
                p.api
                    .instances()
                    .await?
                    .delete()
                    .set_project(&p.api.project)
                    .set_zone(&p.cfg.zone)
                    .set_instance(name)
                    .set_request_id(request_id()),
            )
            .poller()
            .until_done()
            .await;
        check(lib(id, name, op)?)?;
    }
    Ok(())
}
