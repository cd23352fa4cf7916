//! Storage for training (`training.storage`): a StorageClass per configured backend, the local
//! PersistentVolumes k8sforge declares for the directories it prepares on each worker
//! (`render::local_volumes`), and per team a dataset PVC (ReadOnlyMany where the backend is
//! shared) and a checkpoint PVC. Rendering is pure; the `training` phase and `team add` apply.
//!
//! The classes of shared backends need their CSI driver in the cluster (csi-driver-nfs, the EFS
//! and FSx for Lustre drivers, GCP's Filestore driver); k8sforge checks the CSIDriver object
//! exists and names the missing driver instead of leaving PVCs Pending silently.

use serde_json::json;

use crate::profile::storage::{LocalVolumes, StorageBackend, StorageSpec};

/// Label on the StorageClass the teams' dataset PVCs use (value `"true"`).
pub const DATASETS_LABEL: &str = "k8sforge.io/datasets";
/// Label on the StorageClass the teams' checkpoint PVCs use (value `"true"`).
pub const CHECKPOINTS_LABEL: &str = "k8sforge.io/checkpoints";
/// Label naming a StorageClass's backend (`local`, `nfs`, …).
pub const BACKEND_LABEL: &str = "k8sforge.io/storage-backend";
/// Names of the per-team PVCs.
pub const DATASET_PVC: &str = "datasets";
pub const CHECKPOINT_PVC: &str = "checkpoints";

/// The StorageClass of `b`.
pub fn class_name(b: StorageBackend) -> &'static str {
    match b {
        StorageBackend::Local => "k8sforge-local",
        StorageBackend::Nfs => "k8sforge-nfs",
        StorageBackend::Efs => "k8sforge-efs",
        StorageBackend::FsxLustre => "k8sforge-fsx-lustre",
        StorageBackend::Filestore => "k8sforge-filestore",
    }
}

/// The CSI driver behind `b` (None: no driver, static local PVs).
pub fn csi_driver(b: StorageBackend) -> Option<&'static str> {
    match b {
        StorageBackend::Local => None,
        StorageBackend::Nfs => Some("nfs.csi.k8s.io"),
        StorageBackend::Efs => Some("efs.csi.aws.com"),
        StorageBackend::FsxLustre => Some("fsx.csi.aws.com"),
        StorageBackend::Filestore => Some("filestore.csi.storage.gke.io"),
    }
}

fn backend_named(s: &str) -> Option<StorageBackend> {
    StorageBackend::ALL.into_iter().find(|b| b.as_str() == s)
}

/// The backend a k8sforge StorageClass (by its labels) belongs to.
pub fn backend_of_labels(
    labels: &std::collections::BTreeMap<String, String>,
) -> Option<StorageBackend> {
    labels.get(BACKEND_LABEL).and_then(|s| backend_named(s))
}

fn doc(v: serde_json::Value) -> String {
    format!("---\n{v}\n")
}

/// Filestore CSI's `tier` parameter for a Filestore service tier.
fn filestore_tier(tier: &str) -> &'static str {
    match tier {
        "BASIC_SSD" => "premium",
        "ZONAL" => "zonal",
        "ENTERPRISE" => "enterprise",
        _ => "standard",
    }
}

/// The StorageClasses of `spec` (`cloud`: the provider, which decides the local default), plus
/// the local PVs of `workers` (node names).
pub fn render(
    spec: &StorageSpec,
    cloud: crate::profile::storage::Cloud,
    workers: &[String],
) -> String {
    let datasets = spec.datasets_backend(cloud);
    let checkpoints = spec.checkpoints_backend(cloud);
    let managed = crate::training::overlay::MANAGED_BY;
    let mut out = String::new();
    for b in spec.backends(cloud) {
        let mut labels = json!({managed.0: managed.1, BACKEND_LABEL: b.as_str()});
        if datasets == Some(b) {
            labels[DATASETS_LABEL] = json!("true");
        }
        if checkpoints == Some(b) {
            labels[CHECKPOINTS_LABEL] = json!("true");
        }
        let mut sc = json!({
            "apiVersion": "storage.k8s.io/v1", "kind": "StorageClass",
            "metadata": {"name": class_name(b), "labels": labels},
        });
        match b {
            StorageBackend::Local => {
                // Static PVs: bind when the pod is scheduled, so the scheduler picks a node
                // with a free volume; Retain because the data is on that node's disk.
                sc["provisioner"] = json!("kubernetes.io/no-provisioner");
                sc["volumeBindingMode"] = json!("WaitForFirstConsumer");
                sc["reclaimPolicy"] = json!("Retain");
            }
            StorageBackend::Nfs => {
                let n = spec.nfs.as_ref();
                sc["provisioner"] = json!(csi_driver(b));
                sc["parameters"] = json!({
                    "server": n.map(|n| n.server.as_str()).unwrap_or_default(),
                    "share": n.map(|n| n.share.as_str()).unwrap_or_default(),
                });
                if let Some(n) = n.filter(|n| !n.mount_options.is_empty()) {
                    sc["mountOptions"] = json!(n.mount_options);
                }
                sc["reclaimPolicy"] = json!("Retain");
                sc["volumeBindingMode"] = json!("Immediate");
            }
            StorageBackend::Efs => {
                sc["provisioner"] = json!(csi_driver(b));
                sc["parameters"] = json!({
                    "provisioningMode": "efs-ap",
                    "fileSystemId": spec.efs.as_ref().map(|e| e.file_system_id.as_str()).unwrap_or_default(),
                    "directoryPerms": "770",
                    "basePath": "/k8sforge",
                });
                sc["reclaimPolicy"] = json!("Retain");
            }
            StorageBackend::FsxLustre => {
                let f = spec.fsx_lustre.as_ref();
                sc["provisioner"] = json!(csi_driver(b));
                sc["parameters"] = json!({
                    "subnetId": f.map(|f| f.subnet_id.as_str()).unwrap_or_default(),
                    "securityGroupIds": f.map(|f| f.security_group_ids.join(",")).unwrap_or_default(),
                    "deploymentType": f.map(|f| f.deployment_type.as_str()).unwrap_or_default(),
                });
                sc["reclaimPolicy"] = json!("Retain");
                sc["volumeBindingMode"] = json!("WaitForFirstConsumer");
            }
            StorageBackend::Filestore => {
                let f = spec.filestore.as_ref();
                let mut params =
                    json!({"tier": filestore_tier(f.map(|f| f.tier.as_str()).unwrap_or_default())});
                if let Some(net) = f.and_then(|f| f.network.as_deref()) {
                    params["network"] = json!(net);
                }
                sc["provisioner"] = json!(csi_driver(b));
                sc["parameters"] = params;
                sc["reclaimPolicy"] = json!("Retain");
                sc["allowVolumeExpansion"] = json!(true);
                sc["volumeBindingMode"] = json!("WaitForFirstConsumer");
            }
        }
        out += &doc(sc);
    }
    if let Some(l) = spec.local_volumes(cloud) {
        out += &local_pvs(&l, workers);
    }
    out
}

/// Name of local PV `i` (1-based) of `node`.
pub fn local_pv_name(node: &str, i: u32) -> String {
    format!("k8sforge-local-{node}-{i}")
}

fn local_pvs(l: &LocalVolumes, workers: &[String]) -> String {
    let managed = crate::training::overlay::MANAGED_BY;
    let mut out = String::new();
    for node in workers {
        for i in 1..=l.volumes_per_node {
            out += &doc(json!({
                "apiVersion": "v1", "kind": "PersistentVolume",
                "metadata": {"name": local_pv_name(node, i), "labels": {
                    managed.0: managed.1, BACKEND_LABEL: "local", "kubernetes.io/hostname": node
                }},
                "spec": {
                    "capacity": {"storage": l.capacity},
                    "accessModes": ["ReadWriteOnce"],
                    "persistentVolumeReclaimPolicy": "Retain",
                    "storageClassName": class_name(StorageBackend::Local),
                    "volumeMode": "Filesystem",
                    "local": {"path": crate::render::local_volumes::dir(l, i)},
                    "nodeAffinity": {"required": {"nodeSelectorTerms": [{"matchExpressions": [
                        {"key": "kubernetes.io/hostname", "operator": "In", "values": [node]}
                    ]}]}}
                }
            }));
        }
    }
    out
}

/// A team's storage request: the classes (by backend) and sizes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TeamStorage {
    pub datasets: Option<StorageBackend>,
    pub checkpoints: Option<StorageBackend>,
    pub dataset_size: String,
    pub checkpoint_size: String,
}

/// The team's dataset and checkpoint PVCs in namespace `ns`.
pub fn render_team_pvcs(ns: &str, s: &TeamStorage) -> String {
    let managed = crate::training::overlay::MANAGED_BY;
    let mut out = String::new();
    for (name, backend, size, shared_mode) in [
        (DATASET_PVC, s.datasets, &s.dataset_size, "ReadOnlyMany"),
        (
            CHECKPOINT_PVC,
            s.checkpoints,
            &s.checkpoint_size,
            "ReadWriteMany",
        ),
    ] {
        let Some(b) = backend else { continue };
        let mode = if b.shared() {
            shared_mode
        } else {
            "ReadWriteOnce"
        };
        out += &doc(json!({
            "apiVersion": "v1", "kind": "PersistentVolumeClaim",
            "metadata": {"name": name, "namespace": ns, "labels": {
                managed.0: managed.1, crate::training::teams::TEAM_LABEL: ns
            }},
            "spec": {
                "accessModes": [mode],
                "storageClassName": class_name(b),
                "resources": {"requests": {"storage": size}}
            }
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::storage::{Cloud, NfsStorage};

    #[test]
    fn classes_pvs_and_pvcs_validate() {
        let spec = StorageSpec {
            nfs: Some(NfsStorage {
                server: "198.18.0.10".into(),
                share: "/srv/datasets".into(),
                mount_options: vec!["nfsvers=4.1".into()],
            }),
            checkpoints: Some(StorageBackend::Local),
            ..Default::default()
        };
        let yaml = render(&spec, Cloud::Local, &["worker-1".into(), "worker-2".into()]);
        let objs = crate::kube::validate_all([("storage.yaml", yaml.as_str())]).unwrap();
        let count = |k: &str| objs.iter().filter(|o| o.spec.resource.kind == k).count();
        assert_eq!((count("StorageClass"), count("PersistentVolume")), (2, 8));
        assert!(yaml.contains("\"k8sforge.io/datasets\":\"true\""));
        let team = TeamStorage {
            datasets: Some(StorageBackend::Nfs),
            checkpoints: Some(StorageBackend::Local),
            dataset_size: "5Gi".into(),
            checkpoint_size: "5Gi".into(),
        };
        let pvcs = render_team_pvcs("vision", &team);
        assert!(pvcs.contains("ReadOnlyMany") && pvcs.contains("ReadWriteOnce"));
        crate::kube::validate_all([("pvcs.yaml", pvcs.as_str())]).unwrap();
    }
}
