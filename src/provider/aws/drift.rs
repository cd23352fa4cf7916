//! Adopted instances compared with the profile before they are used: instance type, image
//! (owner and name pattern of `provider.aws.ami`: an older image of the same pattern is not
//! drift, so publishing a new AMI does not make every node "changed"), and the root volume's size
//! and type, and the EFA interfaces (one per network card where `aws.efa` is on). One DescribeImages for the distinct other images and one DescribeVolumes per 200
//! root volumes, whatever the node count.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::types::Instance;

use super::error::AwsError;
use super::images::Ami;
use super::plan::AwsPlan;
use super::retry;
use super::session::Session;
use crate::inventory::Role;
use crate::provider::drift::{glob_match, Drift};

/// The volume type every root volume is created with (`instances::run_instances`).
pub const ROOT_VOLUME_TYPE: &str = "gp3";

fn profile_field(plan: &AwsPlan, node: &str, field: &str) -> String {
    match plan.nodes.iter().find(|n| n.name == node) {
        Some(n) if n.role == Role::ControlPlane => format!("controlPlane.aws.{field}"),
        Some(n) => format!("workers[{}].aws.{field}", n.group),
        None => field.to_string(),
    }
}

/// Every field of every adopted instance that differs from the plan.
pub async fn compare(
    s: &Session,
    plan: &AwsPlan,
    ami: &Ami,
    nodes: &BTreeMap<String, Instance>,
) -> Result<Vec<Drift>, AwsError> {
    let mut out = Vec::new();
    let drift = |node: &str, i: &Instance, field: String, have: String, want: String| Drift {
        node: node.to_string(),
        resource: i.instance_id().unwrap_or("?").to_string(),
        field,
        have,
        want,
        control_plane: plan
            .nodes
            .iter()
            .any(|n| n.name == node && n.role == Role::ControlPlane),
    };

    // Images other than the one a launch would use now: do they still match the lookup?
    let others: BTreeSet<String> = nodes
        .values()
        .filter_map(|i| i.image_id())
        .filter(|id| *id != ami.id)
        .map(str::to_string)
        .collect();
    let mut image_ok: BTreeMap<String, (bool, String)> = BTreeMap::new();
    if !others.is_empty() {
        let ids: Vec<String> = others.iter().cloned().collect();
        let found = retry::send(&s.opts.retry, "DescribeImages", || {
            s.ec2()
                .describe_images()
                .set_image_ids(Some(ids.clone()))
                .include_deprecated(true)
                .send()
        })
        .await;
        // An image that was deregistered answers InvalidAMIID.NotFound: unknown, so drifted.
        let images = match found {
            Ok(o) => o.images().to_vec(),
            Err(e) if e.code().is_some_and(|c| c.starts_with("InvalidAMIID")) => Vec::new(),
            Err(e) => return Err(e),
        };
        for img in images {
            let (Some(id), name) = (img.image_id(), img.name().unwrap_or_default()) else {
                continue;
            };
            let ok =
                img.owner_id() == Some(plan.ami.owner.as_str()) && glob_match(&plan.ami.name, name);
            image_ok.insert(id.to_string(), (ok, name.to_string()));
        }
    }

    // Root volumes, by id.
    let mut root_volume: BTreeMap<String, String> = BTreeMap::new();
    for (node, i) in nodes {
        let root = i.root_device_name().unwrap_or(&ami.root_device);
        if let Some(v) = i
            .block_device_mappings()
            .iter()
            .find(|m| m.device_name() == Some(root))
            .and_then(|m| m.ebs())
            .and_then(|e| e.volume_id())
        {
            root_volume.insert(node.clone(), v.to_string());
        }
    }
    let mut volumes: BTreeMap<String, (i32, String)> = BTreeMap::new();
    let ids: Vec<String> = root_volume.values().cloned().collect();
    for chunk in ids.chunks(200) {
        let chunk = chunk.to_vec();
        let out = retry::send(&s.opts.retry, "DescribeVolumes", || {
            s.ec2()
                .describe_volumes()
                .set_volume_ids(Some(chunk.clone()))
                .send()
        })
        .await?;
        for v in out.volumes() {
            if let Some(id) = v.volume_id() {
                volumes.insert(
                    id.to_string(),
                    (
                        v.size().unwrap_or_default(),
                        v.volume_type()
                            .map(|t| t.as_str().to_string())
                            .unwrap_or_default(),
                    ),
                );
            }
        }
    }

    for n in &plan.nodes {
        let Some(i) = nodes.get(&n.name) else {
            continue;
        };
        let have_type = i
            .instance_type()
            .map(|t| t.as_str().to_string())
            .unwrap_or_default();
        if have_type != n.instance_type {
            out.push(drift(
                &n.name,
                i,
                profile_field(plan, &n.name, "instanceType"),
                have_type,
                n.instance_type.clone(),
            ));
        }
        if let Some(img) = i.image_id().filter(|id| *id != ami.id) {
            let (ok, name) = image_ok
                .get(img)
                .cloned()
                .unwrap_or((false, "no longer exists".to_string()));
            if !ok {
                out.push(drift(
                    &n.name,
                    i,
                    "provider.aws.ami".into(),
                    format!("{img} ({name})"),
                    format!(
                        "an image owned by {} named {:?}",
                        plan.ami.owner, plan.ami.name
                    ),
                ));
            }
        }
        if let Some((have, want)) = efa_mismatch(i, n.efa, &n.instance_type) {
            out.push(drift(
                &n.name,
                i,
                profile_field(plan, &n.name, "efa"),
                format!("{have} EFA interface(s)"),
                if want == 0 {
                    "none (efa: false)".to_string()
                } else {
                    format!("{want} (one per network card of {})", n.instance_type)
                },
            ));
        }
        match root_volume.get(&n.name).and_then(|v| volumes.get(v)) {
            Some((size, vtype)) => {
                if i64::from(*size) != i64::from(n.root_gib) {
                    out.push(drift(
                        &n.name,
                        i,
                        profile_field(plan, &n.name, "rootVolumeGiB"),
                        format!("{size} GiB"),
                        format!("{} GiB", n.root_gib),
                    ));
                }
                if vtype != ROOT_VOLUME_TYPE {
                    out.push(drift(
                        &n.name,
                        i,
                        "root volume type".into(),
                        vtype.clone(),
                        ROOT_VOLUME_TYPE.into(),
                    ));
                }
            }
            None => out.push(drift(
                &n.name,
                i,
                "root volume".into(),
                "none found".into(),
                format!("{} GiB {ROOT_VOLUME_TYPE}", n.root_gib),
            )),
        }
    }
    Ok(out)
}

/// EFA interfaces an instance runs with vs the profile's (`aws.efa` on a type with a documented
/// layout: one per network card; otherwise none), when they differ. Interfaces cannot be added
/// to a running p5's other network cards in place, so a difference is drift.
pub fn efa_mismatch(i: &Instance, efa: bool, instance_type: &str) -> Option<(usize, usize)> {
    let want = if efa {
        super::efa::layout(instance_type).map_or(0, |l| l.network_cards as usize)
    } else {
        0
    };
    let have = i
        .network_interfaces()
        .iter()
        .filter(|x| matches!(x.interface_type(), Some("efa" | "efa-only")))
        .count();
    (have != want).then_some((have, want))
}

/// Terminate the drifted workers and wait until they are gone, so their nodes are launched
/// again from the profile in this run.
pub async fn terminate(s: &Session, ids: &[String]) -> Result<(), AwsError> {
    if ids.is_empty() {
        return Ok(());
    }
    tracing::info!(instances = ids.len(), "terminating drifted instances");
    for chunk in ids.chunks(500) {
        let chunk = chunk.to_vec();
        retry::send(&s.opts.retry, "TerminateInstances", || {
            s.ec2()
                .terminate_instances()
                .set_instance_ids(Some(chunk.clone()))
                .send()
        })
        .await?;
    }
    Ok(())
}
