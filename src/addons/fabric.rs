//! The fast-network add-ons of GPU clusters: on AWS nodes launched with EFA interfaces, the
//! `aws-efa-k8s-device-plugin` DaemonSet (resource `vpc.amazonaws.com/efa`); on GCP A3 High
//! nodes, GPUDirect-TCPX (`super::tcpx`); and the NCCL / libfabric environment defaults published for training jobs as the ConfigMap
//! [`FABRIC_ENV_CONFIGMAP`] (a pod takes them with `envFrom: [{configMapRef: {name:
//! k8sforge-fabric-env}}]`).
//!
//! Facts used:
//! - The device plugin's pod shape is the one AWS's eks-charts `aws-efa-k8s-device-plugin`
//!   chart renders for non-Trainium instances (host network, the kubelet's device-plugin
//!   directory and `/dev/infiniband` mounted, no privilege escalation, every capability
//!   dropped, `system-node-critical`). The image is AWS's public ECR copy at the chart's default
//!   tag; no digest of it could be found in upstream text, so it is pinned by tag only (a
//!   `k8sforge mirror` pull or a registry mirror can pin it by digest).
//! - Environment: `FI_PROVIDER=efa` selects libfabric's EFA provider; `FI_EFA_USE_DEVICE_RDMA=1`
//!   turns on the RDMA read of p4d/p5 EFA devices; `RDMAV_FORK_SAFE=1` keeps rdma-core safe when
//!   a training process forks (data-loader workers). AWS sets exactly these for EFA RDMA
//!   instances (aws/sagemaker-training-toolkit `torch_distributed.py`; EC2 User Guide "Get
//!   started with EFA and NCCL").

use serde::Serialize;

use crate::profile::efa_layout::{EFA_LABEL_KEY, EFA_LABEL_VALUE};
use crate::profile::{Profile, ProviderKind};

/// ConfigMap of NCCL / libfabric environment defaults for training pods.
pub const FABRIC_ENV_CONFIGMAP: &str = "k8sforge-fabric-env";
/// Where the addons phase publishes it: the namespace jobs without a team run in. A pod reads
/// ConfigMaps of its own namespace only: a team namespace needs a copy (README, "GPU nodes").
pub const FABRIC_ENV_NAMESPACE: &str = "default";
/// The extended resource the EFA device plugin advertises.
pub const EFA_RESOURCE: &str = "vpc.amazonaws.com/efa";
/// AWS's public copy of the EFA device plugin, at eks-charts' default tag.
pub const EFA_DEVICE_PLUGIN_IMAGE: &str = "public.ecr.aws/eks/aws-efa-k8s-device-plugin:v0.5.8";

/// One environment default, with why it is set (rendered as a comment).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EnvDefault {
    pub name: &'static str,
    pub value: &'static str,
    pub why: &'static str,
}

const EFA_ENV: &[EnvDefault] = &[
    EnvDefault {
        name: "FI_PROVIDER",
        value: "efa",
        why: "libfabric's EFA provider, never a TCP fallback",
    },
    EnvDefault {
        name: "FI_EFA_USE_DEVICE_RDMA",
        value: "1",
        why: "RDMA read on p4d/p5 EFA devices (GPUDirect RDMA)",
    },
    EnvDefault {
        name: "RDMAV_FORK_SAFE",
        value: "1",
        why: "rdma-core stays correct when a training process forks (data-loader workers)",
    },
];

/// What the fast-network template sees (as `addons.fabric`).
#[derive(Debug, Clone, Serialize)]
pub struct FabricCtx {
    /// Some node group is launched with EFA interfaces.
    pub efa: bool,
    pub efa_label_key: &'static str,
    pub efa_label_value: &'static str,
    pub efa_resource: &'static str,
    pub efa_device_plugin_image: &'static str,
    /// GPUDirect-TCPX on GCP A3 High groups.
    pub tcpx: Option<super::tcpx::TcpxCtx>,
    pub env: Vec<super::tcpx::OwnedEnv>,
    pub env_configmap: &'static str,
    pub env_namespace: &'static str,
}

/// Whether any worker group of `profile` is launched with EFA interfaces.
pub fn has_efa(profile: &Profile) -> bool {
    profile.provider.kind == ProviderKind::Aws
        && profile
            .workers
            .iter()
            .any(|w| w.aws.as_ref().is_some_and(|a| a.efa))
}

/// The environment defaults of `profile`'s fast network (empty when it has none).
pub fn env_defaults(profile: &Profile) -> Vec<super::tcpx::OwnedEnv> {
    if has_efa(profile) {
        EFA_ENV
            .iter()
            .map(|e| super::tcpx::OwnedEnv {
                name: e.name,
                value: e.value.to_string(),
                why: e.why,
            })
            .collect()
    } else if crate::profile::gpu_nic_layout::cluster_has_tcpx(profile) {
        super::tcpx::env_defaults()
    } else {
        Vec::new()
    }
}

impl FabricCtx {
    /// `pause_image`: the holder container of the TCPX plugin installer.
    pub fn new(profile: &Profile, pause_image: &str) -> FabricCtx {
        FabricCtx {
            tcpx: super::tcpx::TcpxCtx::new(profile, pause_image),
            efa: has_efa(profile),
            efa_label_key: EFA_LABEL_KEY,
            efa_label_value: EFA_LABEL_VALUE,
            efa_resource: EFA_RESOURCE,
            efa_device_plugin_image: EFA_DEVICE_PLUGIN_IMAGE,
            env: env_defaults(profile),
            env_configmap: FABRIC_ENV_CONFIGMAP,
            env_namespace: FABRIC_ENV_NAMESPACE,
        }
    }
}
