//! The GPU NIC layout of GCP's A3 High machines (`a3-highgpu-8g`) and the names of those NICs on
//! the Ubuntu images k8sforge boots: provisioning (extra gVNICs), node labels, the preflight and
//! the GPUDirect-TCPX add-ons all read it.
//!
//! Facts (Google Cloud, "Maximize GPU network bandwidth with GPUDirect-TCPX and multi-networking"):
//! an A3 High VM has 5 gVNICs, nic0 for ordinary traffic and 4 for GPU traffic on separate VPC
//! networks. Interface names: on Ubuntu (systemd's predictable names, by PCI slot) nic0 is
//! `enp0s12` and the GPU NICs `enp6s0`, `enp12s0`, `enp134s0`, `enp140s0` — the names Google's
//! Cluster Toolkit uses on its Ubuntu A3 images (GoogleCloudPlatform/cluster-toolkit,
//! `examples/machine-learning/a3-highgpu-8g/nccl-tests/run-nccl-tests.sh` and the `delay-a3`
//! unit in `ml-slurm-a3-1-image.yaml`, which waits for exactly those four). GKE's COS nodes name
//! them `eth0`..`eth4` instead; k8sforge's nodes are Ubuntu. Only a real A3 VM on the profile's
//! image confirms the names (the preflight counts the gVNICs; it cannot check names offline).

use super::{Profile, ProviderKind, WorkerGroup};

/// Extra NICs of an A3 High machine, beside nic0.
pub const GPU_NICS: usize = 4;

/// Machine types whose GPUs talk over extra gVNICs with GPUDirect-TCPX.
pub fn has_gpu_nics(machine_type: &str) -> bool {
    machine_type == "a3-highgpu-8g"
}

/// Whether `group` runs GPU machines with TCPX GPU NICs on GCP.
pub fn group_has_tcpx(profile: &Profile, group: &WorkerGroup) -> bool {
    profile.provider.kind == ProviderKind::Gcp
        && group.gpus_per_node > 0
        && group
            .gcp
            .as_ref()
            .is_some_and(|g| has_gpu_nics(&g.machine_type))
}

/// Whether any worker group of `profile` does.
pub fn cluster_has_tcpx(profile: &Profile) -> bool {
    profile.workers.iter().any(|g| group_has_tcpx(profile, g))
}

/// Label k8sforge puts on A3 High nodes (their kubelet sets it); the TCPX receive daemon and the
/// NCCL plugin installer select on it.
pub const TCPX_LABEL_KEY: &str = "k8sforge.io/gpudirect";
pub const TCPX_LABEL_VALUE: &str = "tcpx";

/// nic0 on Ubuntu A3 High: NCCL's bootstrap/control traffic.
pub const UBUNTU_CTRL_NIC: &str = "enp0s12";
/// nic1..nic4 on Ubuntu A3 High, in NIC order (the GPU traffic).
pub const UBUNTU_GPU_NICS: [&str; GPU_NICS] = ["enp6s0", "enp12s0", "enp134s0", "enp140s0"];

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a3_groups_on_gcp_only() {
        let gcp = crate::profile::load(
            "gpu-dev",
            &[
                "provider.kind=gcp".to_string(),
                "workers[1].gcp.machineType=a3-highgpu-8g".to_string(),
            ],
        )
        .unwrap()
        .profile;
        assert!(cluster_has_tcpx(&gcp));
        assert!(!group_has_tcpx(&gcp, &gcp.workers[0]), "CPU group");
        let aws = crate::profile::load("gpu-dev", &[]).unwrap().profile;
        assert!(!cluster_has_tcpx(&aws));
        let a2 = crate::profile::load("gpu-dev", &["provider.kind=gcp".to_string()])
            .unwrap()
            .profile;
        assert!(!cluster_has_tcpx(&a2), "a2-highgpu-8g has no GPU NICs");
    }
}
