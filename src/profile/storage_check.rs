//! Checks of the profile's `training.storage` section: every mistake with the field, what was
//! found and what is allowed.

use super::diagnostic::Reporter;
use super::schema::{Profile, ProviderKind};
use super::storage::*;

pub fn cloud(kind: ProviderKind) -> Cloud {
    match kind {
        ProviderKind::Local => Cloud::Local,
        ProviderKind::Aws => Cloud::Aws,
        ProviderKind::Gcp => Cloud::Gcp,
        ProviderKind::Static => Cloud::Other,
    }
}

fn cloud_name(c: Cloud) -> &'static str {
    match c {
        Cloud::Local => "local",
        Cloud::Aws => "aws",
        Cloud::Gcp => "gcp",
        Cloud::Other => "static",
    }
}

fn id_ok(s: &str, prefix: &str) -> bool {
    s.strip_prefix(prefix)
        .is_some_and(|h| !h.is_empty() && h.bytes().all(|b| b.is_ascii_alphanumeric()))
}

/// Every mistake of `training.storage`.
pub fn check(p: &Profile, r: &mut Reporter) {
    let s = &p.training.storage;
    let provider = cloud(p.provider.kind);
    let base = "training.storage";
    if let Some(l) = &s.local {
        if l.volumes_per_node == 0 {
            r.error(
                &format!("{base}.local.volumesPerNode"),
                "no local volumes on a node",
                "0",
                "1 or more (or leave training.storage.local out)",
            );
        }
        if !is_quantity(&l.capacity) {
            r.error(
                &format!("{base}.local.capacity"),
                "not a Kubernetes quantity",
                l.capacity.clone(),
                "a size such as 10Gi or 500Mi",
            );
        }
        if !l.path.starts_with('/') || l.path.split('/').any(|c| c == "..") || l.path == "/" {
            r.error(
                &format!("{base}.local.path"),
                "not an absolute directory below /",
                l.path.clone(),
                "an absolute path such as /var/lib/k8sforge/volumes or /mnt/nvme/k8s",
            );
        }
    }
    if let Some(n) = &s.nfs {
        if n.server.trim().is_empty() || n.server.contains(char::is_whitespace) {
            r.error(
                &format!("{base}.nfs.server"),
                "no NFS server",
                n.server.clone(),
                "the server's address or DNS name",
            );
        }
        if !n.share.starts_with('/') {
            r.error(
                &format!("{base}.nfs.share"),
                "not an exported absolute path",
                n.share.clone(),
                "the export, e.g. /srv/nfs/datasets",
            );
        }
    }
    if let Some(e) = &s.efs {
        if !id_ok(&e.file_system_id, "fs-") {
            r.error(
                &format!("{base}.efs.fileSystemId"),
                "not an EFS file system ID",
                e.file_system_id.clone(),
                "fs- followed by letters and digits",
            );
        }
    }
    if let Some(f) = &s.fsx_lustre {
        if !id_ok(&f.subnet_id, "subnet-") {
            r.error(
                &format!("{base}.fsxLustre.subnetId"),
                "not a subnet ID",
                f.subnet_id.clone(),
                "subnet- followed by letters and digits",
            );
        }
        if f.security_group_ids.is_empty() {
            r.error(
                &format!("{base}.fsxLustre.securityGroupIds"),
                "no security group (Lustre needs TCP 988 from the nodes)",
                "[]",
                "one or more sg-… IDs",
            );
        }
        for (i, g) in f.security_group_ids.iter().enumerate() {
            if !id_ok(g, "sg-") {
                r.error(
                    &format!("{base}.fsxLustre.securityGroupIds[{i}]"),
                    "not a security group ID",
                    g.clone(),
                    "sg- followed by letters and digits",
                );
            }
        }
        if !FSX_DEPLOYMENT_TYPES.contains(&f.deployment_type.as_str()) {
            r.error(
                &format!("{base}.fsxLustre.deploymentType"),
                "unknown FSx for Lustre deployment type",
                f.deployment_type.clone(),
                FSX_DEPLOYMENT_TYPES.join(", "),
            );
        }
    }
    if let Some(f) = &s.filestore {
        if !FILESTORE_TIERS.contains(&f.tier.as_str()) {
            r.error(
                &format!("{base}.filestore.tier"),
                "unknown Filestore tier",
                f.tier.clone(),
                FILESTORE_TIERS.join(", "),
            );
        }
    }
    for (field, present) in [
        ("efs", s.efs.is_some()),
        ("fsxLustre", s.fsx_lustre.is_some()),
        ("filestore", s.filestore.is_some()),
    ] {
        let b = StorageBackend::ALL
            .into_iter()
            .find(|b| b.as_str() == field)
            .and_then(StorageBackend::provider);
        if let (true, Some(need)) = (present, b) {
            if need != provider {
                r.key_error(
                    &format!("{base}.{field}"),
                    format!("{field} exists only on provider {}", cloud_name(need)),
                    format!("provider.kind {}", cloud_name(provider)),
                    "local or nfs on this provider",
                );
            }
        }
    }
    let configured = s.backends(provider);
    for (field, chosen) in [("datasets", s.datasets), ("checkpoints", s.checkpoints)] {
        if let Some(b) = chosen {
            if !configured.contains(&b) {
                r.error(
                    &format!("{base}.{field}"),
                    format!("backend {} is not configured", b.as_str()),
                    b.as_str(),
                    if configured.is_empty() {
                        "configure a backend under training.storage first".to_string()
                    } else {
                        configured
                            .iter()
                            .map(|b| b.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    },
                );
            }
        }
    }
}
