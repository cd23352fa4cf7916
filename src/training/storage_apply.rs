//! What the cluster must have before k8sforge's StorageClasses are useful: the CSI driver of
//! every shared backend. A missing driver is named (with the backend and what installs it)
//! instead of leaving every PVC of that class Pending.

use ::kube::api::Api;
use k8s_openapi::api::storage::v1::CSIDriver;

use crate::kube::{client::error_chain, Cluster, KubeError};
use crate::profile::storage::StorageBackend;

use super::storage::{class_name, csi_driver};

fn installer(b: StorageBackend) -> &'static str {
    match b {
        StorageBackend::Nfs => "csi-driver-nfs (kubernetes-csi/csi-driver-nfs)",
        StorageBackend::Efs => "the AWS EFS CSI driver (kubernetes-sigs/aws-efs-csi-driver)",
        StorageBackend::FsxLustre => {
            "the AWS FSx for Lustre CSI driver (kubernetes-sigs/aws-fsx-csi-driver)"
        }
        StorageBackend::Filestore => {
            "the GCP Filestore CSI driver (kubernetes-sigs/gcp-filestore-csi-driver)"
        }
        StorageBackend::Local => "nothing",
    }
}

/// Fail naming every backend of `backends` whose CSI driver the cluster lacks.
pub async fn check_drivers(
    cluster: &Cluster,
    backends: &[StorageBackend],
) -> Result<(), KubeError> {
    let api: Api<CSIDriver> = Api::all(cluster.client.clone());
    let mut missing = Vec::new();
    for &b in backends {
        let Some(driver) = csi_driver(b) else {
            continue;
        };
        let found = api.get_opt(driver).await.map_err(|e| KubeError::Read {
            what: format!("CSIDriver {driver}"),
            message: error_chain(&e),
        })?;
        if found.is_none() {
            missing.push(format!(
                "StorageClass {} (training.storage.{}) needs CSI driver {driver}, which this cluster does not have: install {}",
                class_name(b),
                b.as_str(),
                installer(b)
            ));
        }
    }
    if missing.is_empty() {
        Ok(())
    } else {
        Err(KubeError::Missing(missing))
    }
}
