//! GPUDirect-TCPX on GCP A3 High (`a3-highgpu-8g`) nodes: the receive-path daemon (RxDM,
//! `tcpgpudmarxd`), the NCCL TCPX plugin installer, and the NCCL environment defaults published
//! in the fabric-env ConfigMap.
//!
//! Facts used (Google: GoogleCloudPlatform/container-engine-accelerators `gpudirect-tcpx/`
//! README "Jun 22, 2026" release, `nccl-tcpx-installer.yaml`, `nccl-test-latest.yaml`; Google's
//! Cluster Toolkit A3 High Ubuntu examples, `examples/machine-learning/a3-highgpu-8g/`):
//! - Images: NCCL plugin installer `nccl-plugin-gpudirecttcpx-dev:v3.1.12` and RxDM
//!   `tcpgpudmarxd-dev:v2.0.15`, the pair of the latest release notes (the daemon's version is
//!   coupled to the plugin's). No digest of either is published in any upstream text found, so
//!   they are pinned by tag (a registry mirror or `artifacts.images` pins them by digest).
//! - The installer runs `/scripts/container_entry.sh install --install-nccl`, which writes the
//!   plugin and its NCCL core to `/var/lib/tcpx/lib64` on the host (Google's GKE manifest mounts
//!   `/var/lib`; the Cluster Toolkit mounts exactly `/var/lib/tcpx/lib64` into jobs). GKE's extra
//!   copy into `/home/kubernetes/bin/nvidia` and its exec remount are COS-only and not done here.
//! - RxDM: host network, privileged (it programs flow steering and binds receive queues with
//!   NET_ADMIN), all GPUs visible without taking `nvidia.com/gpu` (the Cluster Toolkit runs it
//!   with `docker run --gpus all --privileged --network=host`; here: RuntimeClass `nvidia` with
//!   `NVIDIA_VISIBLE_DEVICES=all`), its Unix socket directory `/run/tcpx` on the host, arguments
//!   `--gpu_shmem_type fd --uds_path /run/tcpx --setup_param "--verbose 128 2 0"`. GKE uses
//!   `--gpu_nic_preset a3vm`, whose table names the NICs `eth1..eth4` (COS); on Ubuntu the NICs
//!   are `enp…` names, so k8sforge uses the `auto` preset, which finds each GPU's NIC from sysfs
//!   (google/tcpgpudmarxd `src/a3_gpu_rxq_configurator.cu`).
//! - NCCL environment: the values of the release notes, with the Ubuntu interface names
//!   (`profile::gpu_nic_layout`), `NCCL_GPUDIRECTTCPX_UNIX_CLIENT_PREFIX` at the daemon's socket
//!   directory and `NCCL_NET=GPUDirectTCPX_v7` as the Cluster Toolkit sets them (a job that
//!   cannot load the plugin fails instead of falling back to TCP on nic0).
//!
//! A training pod on these nodes takes the ConfigMap with `envFrom`, mounts the host's
//! [`TCPX_LIB_HOST_DIR`] at [`TCPX_LIB_POD_DIR`] (on `LD_LIBRARY_PATH`) and the host's
//! [`TCPX_SOCKET_DIR`] at the same path (README, "GPU nodes").

use serde::Serialize;

use super::fabric::EnvDefault;
use crate::profile::gpu_nic_layout::{
    cluster_has_tcpx, TCPX_LABEL_KEY, TCPX_LABEL_VALUE, UBUNTU_CTRL_NIC, UBUNTU_GPU_NICS,
};
use crate::profile::Profile;

/// Google's NCCL TCPX plugin installer, at the release notes' tag (no upstream digest found).
pub const NCCL_PLUGIN_IMAGE: &str =
    "us-docker.pkg.dev/gce-ai-infra/gpudirect-tcpx/nccl-plugin-gpudirecttcpx-dev:v3.1.12";
/// Google's TCPX receive data path manager, coupled to the plugin release (no digest found).
pub const RXDM_IMAGE: &str =
    "us-docker.pkg.dev/gce-ai-infra/gpudirect-tcpx/tcpgpudmarxd-dev:v2.0.15";
/// Where the installer puts the plugin and NCCL core on the host.
pub const TCPX_LIB_HOST_DIR: &str = "/var/lib/tcpx/lib64";
/// Where a training pod mounts it (the path Google's NCCL configuration puts on
/// `LD_LIBRARY_PATH`).
pub const TCPX_LIB_POD_DIR: &str = "/usr/local/tcpx/lib64";
/// The receive daemon's Unix socket directory on the host (and in pods).
pub const TCPX_SOCKET_DIR: &str = "/run/tcpx";

/// NCCL settings whose values do not depend on interface names.
const FIXED_ENV: &[EnvDefault] = &[
    EnvDefault {
        name: "NCCL_NET",
        value: "GPUDirectTCPX_v7",
        why: "the TCPX plugin, never a silent TCP fallback on nic0",
    },
    EnvDefault {
        name: "NCCL_ALGO",
        value: "Ring,Tree",
        why: "Google's TCPX release notes (2026-06-22)",
    },
    EnvDefault {
        name: "NCCL_PROTO",
        value: "Simple",
        why: "Google's TCPX release notes",
    },
    EnvDefault {
        name: "NCCL_CROSS_NIC",
        value: "0",
        why: "each GPU pair keeps to its own NIC (rail-aligned)",
    },
    EnvDefault {
        name: "NCCL_NET_GDR_LEVEL",
        value: "PIX",
        why: "GPUDirect only through the PCIe switch a GPU shares with its NIC",
    },
    EnvDefault {
        name: "NCCL_P2P_PXN_LEVEL",
        value: "0",
        why: "Google's TCPX release notes",
    },
    EnvDefault {
        name: "NCCL_DYNAMIC_CHUNK_SIZE",
        value: "524288",
        why: "Google's TCPX release notes",
    },
    EnvDefault {
        name: "NCCL_P2P_NET_CHUNKSIZE",
        value: "524288",
        why: "Google's TCPX release notes",
    },
    EnvDefault {
        name: "NCCL_P2P_PCI_CHUNKSIZE",
        value: "524288",
        why: "Google's TCPX release notes",
    },
    EnvDefault {
        name: "NCCL_P2P_NVL_CHUNKSIZE",
        value: "1048576",
        why: "Google's TCPX release notes",
    },
    EnvDefault {
        name: "NCCL_BUFFSIZE",
        value: "4194304",
        why: "Google's TCPX release notes",
    },
    EnvDefault {
        name: "NCCL_NSOCKS_PERTHREAD",
        value: "4",
        why: "Google's TCPX release notes",
    },
    EnvDefault {
        name: "NCCL_SOCKET_NTHREADS",
        value: "1",
        why: "Google's TCPX release notes",
    },
    EnvDefault {
        name: "NCCL_GPUDIRECTTCPX_PROGRAM_FLOW_STEERING_WAIT_MICROS",
        value: "500000",
        why: "Google's TCPX release notes",
    },
    EnvDefault {
        name: "NCCL_GPUDIRECTTCPX_UNIX_CLIENT_PREFIX",
        value: TCPX_SOCKET_DIR,
        why: "the receive daemon's socket directory (host path, mounted by the pod)",
    },
];

/// CPU bindings per GPU NIC (NIC index → cores), as Google documents them for the A3 High's two
/// NUMA nodes: nic1/nic2 sit on socket 0, nic3/nic4 on socket 1.
const TX_CORES: [&str; 4] = [
    "8-21,112-125",
    "8-21,112-125",
    "60-73,164-177",
    "60-73,164-177",
];
const RX_CORES: [&str; 4] = [
    "22-35,126-139",
    "22-35,126-139",
    "74-87,178-191",
    "74-87,178-191",
];

fn bindings(cores: &[&str; 4]) -> String {
    UBUNTU_GPU_NICS
        .iter()
        .zip(cores)
        .map(|(nic, c)| format!("{nic}:{c}"))
        .collect::<Vec<_>>()
        .join(";")
}

/// One environment default whose value is computed (interface names).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct OwnedEnv {
    pub name: &'static str,
    pub value: String,
    pub why: &'static str,
}

/// The NCCL environment of TCPX nodes, names sorted.
pub fn env_defaults() -> Vec<OwnedEnv> {
    let mut env: Vec<OwnedEnv> = FIXED_ENV
        .iter()
        .map(|e| OwnedEnv {
            name: e.name,
            value: e.value.to_string(),
            why: e.why,
        })
        .collect();
    let nic_why = "interface names on Ubuntu A3 High (nic0; GPU NICs nic1-4)";
    env.extend([
        OwnedEnv {
            name: "NCCL_SOCKET_IFNAME",
            value: UBUNTU_CTRL_NIC.to_string(),
            why: nic_why,
        },
        OwnedEnv {
            name: "NCCL_GPUDIRECTTCPX_CTRL_DEV",
            value: UBUNTU_CTRL_NIC.to_string(),
            why: nic_why,
        },
        OwnedEnv {
            name: "NCCL_GPUDIRECTTCPX_SOCKET_IFNAME",
            value: UBUNTU_GPU_NICS.join(","),
            why: nic_why,
        },
        OwnedEnv {
            name: "NCCL_GPUDIRECTTCPX_TX_BINDINGS",
            value: bindings(&TX_CORES),
            why: "send threads on the cores of each NIC's NUMA node",
        },
        OwnedEnv {
            name: "NCCL_GPUDIRECTTCPX_RX_BINDINGS",
            value: bindings(&RX_CORES),
            why: "receive threads on the cores of each NIC's NUMA node",
        },
    ]);
    env.sort_by_key(|e| e.name);
    env
}

/// What the fast-network template sees of TCPX (as `addons.fabric.tcpx`).
#[derive(Debug, Clone, Serialize)]
pub struct TcpxCtx {
    pub label_key: &'static str,
    pub label_value: &'static str,
    pub plugin_image: &'static str,
    pub rxdm_image: &'static str,
    pub pause_image: String,
    pub lib_host_dir: &'static str,
    pub socket_dir: &'static str,
    pub runtime_class: &'static str,
}

impl TcpxCtx {
    /// The TCPX add-ons of `profile`, or None when no group runs A3 High on GCP.
    pub fn new(profile: &Profile, pause_image: &str) -> Option<TcpxCtx> {
        cluster_has_tcpx(profile).then(|| TcpxCtx {
            label_key: TCPX_LABEL_KEY,
            label_value: TCPX_LABEL_VALUE,
            plugin_image: NCCL_PLUGIN_IMAGE,
            rxdm_image: RXDM_IMAGE,
            pause_image: pause_image.to_string(),
            lib_host_dir: TCPX_LIB_HOST_DIR,
            socket_dir: TCPX_SOCKET_DIR,
            runtime_class: crate::render::gpu::RUNTIME_HANDLER,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bindings_name_each_gpu_nic_once() {
        let env = env_defaults();
        let get = |n: &str| env.iter().find(|e| e.name == n).unwrap().value.clone();
        assert_eq!(
            get("NCCL_GPUDIRECTTCPX_TX_BINDINGS"),
            "enp6s0:8-21,112-125;enp12s0:8-21,112-125;enp134s0:60-73,164-177;enp140s0:60-73,164-177"
        );
        assert_eq!(
            get("NCCL_GPUDIRECTTCPX_SOCKET_IFNAME"),
            "enp6s0,enp12s0,enp134s0,enp140s0"
        );
        let mut names: Vec<&str> = env.iter().map(|e| e.name).collect();
        names.dedup();
        assert_eq!(names.len(), env.len(), "no duplicate names");
    }
}
