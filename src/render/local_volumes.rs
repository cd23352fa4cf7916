//! The directories behind the local PersistentVolumes (`training.storage.local`): a oneshot unit
//! on every worker creates them before kubelet starts, so a PV the `training` phase declares
//! for a node always has its directory there. Directories are never removed by k8sforge: they
//! hold users' data (reclaim policy Retain).

use crate::profile::storage::LocalVolumes;

pub const UNIT: &str = "k8sforge-local-volumes.service";

/// Directory of volume `i` (1-based) under `spec.path`.
pub fn dir(spec: &LocalVolumes, i: u32) -> String {
    format!("{}/vol-{i}", spec.path.trim_end_matches('/'))
}

/// The unit file for `node`.
pub fn unit(node: &str, spec: &LocalVolumes) -> String {
    let dirs: Vec<String> = (1..=spec.volumes_per_node).map(|i| dir(spec, i)).collect();
    format!(
        "# Rendered by k8sforge for {node}; changes are overwritten on the next `up`.\n\
         # The directories of the local PersistentVolumes k8sforge declares for this node.\n\
         [Unit]\n\
         Description=k8sforge local volume directories\n\
         After=local-fs.target\n\
         Before=kubelet.service\n\n\
         [Service]\n\
         Type=oneshot\n\
         RemainAfterExit=yes\n\
         # World-writable like a fresh volume: pods run as any user.\n\
         ExecStart=/bin/mkdir -p -m 0777 {}\n\n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        dirs.join(" ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_directory_per_volume() {
        let u = unit("worker-1", &LocalVolumes::default());
        assert!(u.contains("mkdir -p -m 0777 /var/lib/k8sforge/volumes/vol-1 "));
        assert!(u.contains("/var/lib/k8sforge/volumes/vol-4\n"));
    }
}
