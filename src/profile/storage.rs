//! The profile's `training.storage` section: which storage backends get a StorageClass, and
//! which of them the teams' dataset and checkpoint PVCs use. Checked offline by
//! `storage_check`.

use serde::{Deserialize, Serialize};

/// The provider kinds a backend cares about (`schema::ProviderKind` maps onto it; kept apart
/// so that this module does not import the schema that embeds it).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cloud {
    Local,
    Aws,
    Gcp,
    Other,
}

/// A storage backend k8sforge can give a StorageClass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub enum StorageBackend {
    /// Directories k8sforge prepares on each worker, as PersistentVolumes with node affinity.
    Local,
    /// An existing NFS export through csi-driver-nfs (dynamic sub-directories).
    Nfs,
    /// AWS EFS through the EFS CSI driver (access points).
    Efs,
    /// AWS FSx for Lustre through the FSx CSI driver (a file system per volume).
    FsxLustre,
    /// GCP Filestore through the Filestore CSI driver (an instance per volume).
    Filestore,
}

impl StorageBackend {
    pub const ALL: [StorageBackend; 5] = [
        StorageBackend::Local,
        StorageBackend::Nfs,
        StorageBackend::Efs,
        StorageBackend::FsxLustre,
        StorageBackend::Filestore,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            StorageBackend::Local => "local",
            StorageBackend::Nfs => "nfs",
            StorageBackend::Efs => "efs",
            StorageBackend::FsxLustre => "fsxLustre",
            StorageBackend::Filestore => "filestore",
        }
    }

    /// Several nodes may mount one volume at once (so a dataset can be ReadOnlyMany).
    pub fn shared(self) -> bool {
        self != StorageBackend::Local
    }

    /// The provider a cloud backend needs (None: any).
    pub fn provider(self) -> Option<Cloud> {
        match self {
            StorageBackend::Efs | StorageBackend::FsxLustre => Some(Cloud::Aws),
            StorageBackend::Filestore => Some(Cloud::Gcp),
            StorageBackend::Local | StorageBackend::Nfs => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct LocalVolumes {
    /// PersistentVolumes prepared on each worker.
    pub volumes_per_node: u32,
    /// Capacity each PV announces. On the local provider the nodes share the host's disk, so it
    /// is a promise for scheduling, not a limit.
    pub capacity: String,
    /// Directory on the node holding one sub-directory per volume.
    pub path: String,
}

impl Default for LocalVolumes {
    fn default() -> Self {
        LocalVolumes {
            volumes_per_node: 4,
            capacity: "10Gi".into(),
            path: "/var/lib/k8sforge/volumes".into(),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NfsStorage {
    /// NFS server address or name.
    pub server: String,
    /// Exported directory; each volume becomes a sub-directory of it.
    pub share: String,
    /// Mount options, e.g. `["nfsvers=4.1"]`.
    #[serde(default)]
    pub mount_options: Vec<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct EfsStorage {
    /// The EFS file system (`fs-…`); each volume is an access point on it.
    pub file_system_id: String,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FsxLustreStorage {
    /// Subnet the file systems are created in (`subnet-…`).
    pub subnet_id: String,
    /// Security groups of the file systems (`sg-…`), allowing Lustre (TCP 988) from the nodes.
    pub security_group_ids: Vec<String>,
    /// `SCRATCH_2` (default), `PERSISTENT_2`, …
    #[serde(default = "default_fsx_deployment")]
    pub deployment_type: String,
}

fn default_fsx_deployment() -> String {
    "SCRATCH_2".into()
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct FilestoreStorage {
    /// `BASIC_HDD` (default), `BASIC_SSD`, `ZONAL`, `ENTERPRISE`.
    #[serde(default = "default_filestore_tier")]
    pub tier: String,
    /// VPC network the instances attach to (default: the cluster's).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub network: Option<String>,
}

fn default_filestore_tier() -> String {
    "BASIC_HDD".into()
}

pub const FILESTORE_TIERS: [&str; 4] = ["BASIC_HDD", "BASIC_SSD", "ZONAL", "ENTERPRISE"];
pub const FSX_DEPLOYMENT_TYPES: [&str; 4] =
    ["SCRATCH_1", "SCRATCH_2", "PERSISTENT_1", "PERSISTENT_2"];

#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub struct StorageSpec {
    /// Local volumes on every worker; on by default for the local provider only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub local: Option<LocalVolumes>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nfs: Option<NfsStorage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub efs: Option<EfsStorage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fsx_lustre: Option<FsxLustreStorage>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub filestore: Option<FilestoreStorage>,
    /// Backend of the teams' dataset PVCs (default: the first shared backend configured, else
    /// local).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub datasets: Option<StorageBackend>,
    /// Backend of the teams' checkpoint PVCs (default: as datasets).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoints: Option<StorageBackend>,
}

impl StorageSpec {
    /// The local volumes in effect (`provider`: the profile's provider kind).
    pub fn local_volumes(&self, provider: Cloud) -> Option<LocalVolumes> {
        match (&self.local, provider) {
            (Some(l), _) => Some(l.clone()),
            (None, Cloud::Local) => Some(LocalVolumes::default()),
            (None, _) => None,
        }
    }

    /// The backends configured, in `StorageBackend::ALL` order.
    pub fn backends(&self, provider: Cloud) -> Vec<StorageBackend> {
        StorageBackend::ALL
            .into_iter()
            .filter(|b| match b {
                StorageBackend::Local => self.local_volumes(provider).is_some(),
                StorageBackend::Nfs => self.nfs.is_some(),
                StorageBackend::Efs => self.efs.is_some(),
                StorageBackend::FsxLustre => self.fsx_lustre.is_some(),
                StorageBackend::Filestore => self.filestore.is_some(),
            })
            .collect()
    }

    pub fn datasets_backend(&self, provider: Cloud) -> Option<StorageBackend> {
        let all = self.backends(provider);
        self.datasets.or_else(|| {
            all.iter()
                .copied()
                .find(|b| b.shared())
                .or(all.first().copied())
        })
    }

    pub fn checkpoints_backend(&self, provider: Cloud) -> Option<StorageBackend> {
        self.checkpoints.or(self.datasets_backend(provider))
    }
}

/// A Kubernetes quantity: digits with an optional fraction and a suffix (`Ki`…`Ei`, `m`, `k`…`E`).
pub fn is_quantity(s: &str) -> bool {
    let num_end = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    let digits_ok = !num.is_empty()
        && num.chars().filter(|c| *c == '.').count() <= 1
        && num.chars().any(|c| c.is_ascii_digit());
    digits_ok
        && matches!(
            suffix,
            "" | "m" | "k" | "M" | "G" | "T" | "P" | "E" | "Ki" | "Mi" | "Gi" | "Ti" | "Pi" | "Ei"
        )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_by_provider() {
        let s = StorageSpec::default();
        assert_eq!(s.backends(Cloud::Local), [StorageBackend::Local]);
        assert!(s.backends(Cloud::Aws).is_empty());
        let s = StorageSpec {
            nfs: Some(NfsStorage {
                server: "nfs".into(),
                share: "/x".into(),
                mount_options: vec![],
            }),
            ..Default::default()
        };
        assert_eq!(s.datasets_backend(Cloud::Local), Some(StorageBackend::Nfs));
        assert_eq!(
            s.checkpoints_backend(Cloud::Local),
            Some(StorageBackend::Nfs)
        );
    }
}
