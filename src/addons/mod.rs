//! The first add-ons (issue 7): the RBAC that lets the apiserver reach kubelets, CoreDNS at the
//! cluster DNS IP, and the NVIDIA device plugin on GPU nodes. Rendering is pure (profile +
//! release + images → manifests), so `plan` writes them for offline review and unit tests
//! validate them against the typed Kubernetes API; the `addons` phase applies them.

pub mod fabric;
pub mod images;
pub mod tcpx;

use std::path::{Path, PathBuf};

use minijinja::context;
use minijinja::value::{Serde, Value};
use serde::Serialize;

pub use images::AddonImages;

use crate::artifacts::Release;
use crate::pki::table;
use crate::profile::Profile;
use crate::render::context::CONTROL_PLANE_TAINT;
pub use crate::render::context::{GPU_LABEL_KEY, GPU_LABEL_VALUE};
use crate::render::{templates, RenderError};

/// CoreDNS replicas: two, so a node drain never takes cluster DNS down.
pub const COREDNS_REPLICAS: u32 = 2;

/// The add-ons in apply order: (file name, template name).
pub const ADDONS: &[(&str, &str)] = &[
    (
        "rbac-apiserver-kubelet.yaml",
        "addons/rbac-apiserver-kubelet.yaml",
    ),
    ("coredns.yaml", "addons/coredns.yaml"),
    (
        "nvidia-device-plugin.yaml",
        "addons/nvidia-device-plugin.yaml",
    ),
    ("fast-network.yaml", "addons/fast-network.yaml"),
];

/// One rendered add-on: a multi-document YAML file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    /// File name, e.g. `coredns.yaml`.
    pub name: &'static str,
    pub yaml: String,
}

/// What the add-on templates see (as `addons`).
#[derive(Debug, Clone, Serialize)]
struct AddonsCtx<'a> {
    cluster_name: &'a str,
    cluster_domain: &'a str,
    dns_service_ip: String,
    coredns_replicas: u32,
    control_plane_taint: &'static str,
    gpu_label_key: &'static str,
    gpu_label_value: &'static str,
    gpu_unverified_taint: &'static str,
    nvidia_runtime: &'static str,
    apiserver_kubelet_client_user: &'static str,
    /// Names outside the cluster go to the nodes' resolvers; local nodes have none (no internet),
    /// and CoreDNS refuses to start forwarding to an empty list.
    forward_upstream: bool,
    images: &'a AddonImages,
    fabric: fabric::FabricCtx,
}

/// CN of the apiserver's kubelet client certificate, from the certificate table (one source).
fn apiserver_kubelet_client_user() -> Result<&'static str, RenderError> {
    table::TABLE
        .iter()
        .find(|r| r.name == crate::pki::layout::APISERVER_KUBELET_CLIENT)
        .and_then(|r| match r.cn {
            table::Cn::Fixed(cn) => Some(cn),
            _ => None,
        })
        .ok_or_else(|| {
            RenderError::Templates(
                "the certificate table has no fixed CN for apiserver-kubelet-client".into(),
            )
        })
}

/// Render every add-on for `profile`, with `images` (see [`AddonImages::for_release`]).
pub fn render(profile: &Profile, images: &AddonImages) -> Result<Vec<Manifest>, RenderError> {
    let env = templates::env().map_err(RenderError::Templates)?;
    let ctx = AddonsCtx {
        cluster_name: &profile.name,
        cluster_domain: &profile.kubernetes.cluster_domain,
        dns_service_ip: profile.network.dns_service_ip.to_string(),
        coredns_replicas: COREDNS_REPLICAS,
        control_plane_taint: CONTROL_PLANE_TAINT,
        gpu_label_key: GPU_LABEL_KEY,
        gpu_label_value: GPU_LABEL_VALUE,
        gpu_unverified_taint: crate::render::gpu::UNVERIFIED_TAINT,
        nvidia_runtime: crate::render::gpu::RUNTIME_HANDLER,
        apiserver_kubelet_client_user: apiserver_kubelet_client_user()?,
        forward_upstream: profile.provider.kind != crate::profile::ProviderKind::Local,
        images,
        fabric: fabric::FabricCtx::new(profile, &images.pause),
    };
    let base = context! { addons => Value::from(Serde(&ctx)) };
    ADDONS
        .iter()
        .map(|(name, template)| {
            let yaml = env
                .get_template(template)
                .and_then(|t| t.render(&base))
                .map_err(|e| RenderError::Template {
                    node: "(add-ons)".into(),
                    template: template.to_string(),
                    message: format!("{e:#}"),
                })?;
            Ok(Manifest { name, yaml })
        })
        .collect()
}

/// Render with the images pinned for the profile's release.
pub fn render_for_release(
    profile: &Profile,
    release: &Release,
) -> Result<Vec<Manifest>, RenderError> {
    render(profile, &AddonImages::for_release(release))
}

/// Write the manifests into `dir` (created), one file each, only where the content changed.
/// Returns the paths written.
pub fn write_to(dir: &Path, manifests: &[Manifest]) -> std::io::Result<Vec<PathBuf>> {
    crate::fsutil::ensure_dir(dir, 0o755)?;
    let mut out = Vec::new();
    for m in manifests {
        let path = dir.join(m.name);
        crate::fsutil::write_if_changed(&path, m.yaml.as_bytes(), 0o644)?;
        out.push(path);
    }
    Ok(out)
}

#[derive(Debug, thiserror::Error)]
pub enum AddonsError {
    #[error(transparent)]
    Render(#[from] RenderError),
    #[error("add-on manifests are invalid (a k8sforge defect): {0}")]
    Invalid(#[from] crate::kube::KubeError),
    #[error("writing add-on manifests to {dir}: {source}")]
    Write {
        dir: PathBuf,
        source: std::io::Error,
    },
}

/// For `plan`: render with the pinned images and write `<out>/addons/*.yaml`, after validating
/// them as `up` would (a manifest that would fail to apply fails the plan).
pub fn write_for_plan(profile: &Profile, out: &Path) -> Result<Vec<PathBuf>, AddonsError> {
    let release = crate::artifacts::release(&profile.kubernetes.version).ok_or_else(|| {
        RenderError::UnknownRelease {
            version: profile.kubernetes.version.clone(),
            known: crate::artifacts::known_kubernetes_versions()
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    })?;
    let manifests = render_for_release(profile, release)?;
    crate::kube::validate_all(manifests.iter().map(|m| (m.name, m.yaml.as_str())))?;
    let dir = out.join("addons");
    write_to(&dir, &manifests).map_err(|source| AddonsError::Write { dir, source })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
    use k8s_openapi::api::core::v1::{ConfigMap, Service};
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};

    use super::*;
    use crate::kube::Object;

    fn objects(profile: &str) -> (Profile, Vec<Object>) {
        let p = crate::profile::load(profile, &[]).unwrap().profile;
        let release = crate::artifacts::release(&p.kubernetes.version).unwrap();
        let m = render_for_release(&p, release).unwrap();
        let objs = crate::kube::validate_all(m.iter().map(|m| (m.name, m.yaml.as_str())))
            .unwrap_or_else(|e| panic!("{profile}: {e}"));
        (p, objs)
    }

    fn typed<K: serde::de::DeserializeOwned>(objs: &[Object], kind: &str, name: &str) -> K {
        let o = objs
            .iter()
            .find(|o| {
                o.spec.resource.kind == kind && o.object.metadata.name.as_deref() == Some(name)
            })
            .unwrap_or_else(|| panic!("no {kind} {name}"));
        serde_json::from_value(serde_json::to_value(&o.object).unwrap()).unwrap()
    }

    #[test]
    fn every_builtin_profile_renders_valid_manifests() {
        for name in crate::profile::builtin::names() {
            let (_, objs) = objects(name);
            let kinds: Vec<String> = objs.iter().map(|o| o.reference().to_string()).collect();
            assert_eq!(
                kinds,
                [
                    "RuntimeClass nvidia",
                    "ClusterRole system:kube-apiserver-to-kubelet",
                    "ServiceAccount kube-system/coredns",
                    "ClusterRole system:coredns",
                    "ClusterRoleBinding system:kube-apiserver",
                    "ClusterRoleBinding system:coredns",
                    "ConfigMap kube-system/coredns",
                    "Service kube-system/kube-dns",
                    "Deployment kube-system/coredns",
                    "DaemonSet kube-system/nvidia-device-plugin-daemonset",
                ],
                "{name}"
            );
        }
    }

    #[test]
    fn device_plugin_targets_gpu_nodes_only_as_documented() {
        let (p, objs) = objects("gpu-dev");
        let ds: DaemonSet = typed(&objs, "DaemonSet", "nvidia-device-plugin-daemonset");
        assert_eq!(ds.metadata.namespace.as_deref(), Some("kube-system"));
        let spec = ds.spec.unwrap();
        assert_eq!(
            spec.update_strategy.unwrap().type_.as_deref(),
            Some("RollingUpdate")
        );
        let pod = spec.template.spec.unwrap();
        assert_eq!(
            pod.node_selector.unwrap(),
            BTreeMap::from([(GPU_LABEL_KEY.to_string(), GPU_LABEL_VALUE.to_string())])
        );
        assert!(pod.affinity.is_none(), "the label is the only selector");
        let tol = pod.tolerations.unwrap();
        assert_eq!(tol.len(), 2);
        assert_eq!(tol[0].key.as_deref(), Some("nvidia.com/gpu"));
        assert_eq!(tol[0].operator.as_deref(), Some("Exists"));
        assert_eq!(tol[0].effect.as_deref(), Some("NoSchedule"));
        assert_eq!(
            pod.priority_class_name.as_deref(),
            Some("system-node-critical")
        );
        let vol = &pod.volumes.unwrap()[0];
        assert_eq!(
            vol.host_path.as_ref().unwrap().path,
            "/var/lib/kubelet/device-plugins"
        );
        let c = &pod.containers[0];
        let release = crate::artifacts::release(&p.kubernetes.version).unwrap();
        assert_eq!(
            c.image.as_deref(),
            Some(
                crate::artifacts::images::ClusterImage::NvidiaDevicePlugin
                    .default_reference(release)
                    .as_str()
            )
        );
        assert!(c
            .image
            .as_deref()
            .unwrap()
            .starts_with("nvcr.io/nvidia/k8s-device-plugin:v"));
        assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
        let mount = &c.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(mount.name, vol.name);
        assert_eq!(mount.mount_path, "/var/lib/kubelet/device-plugins");
        let env = c.env.as_ref().unwrap();
        let var = |n: &str| {
            env.iter()
                .find(|e| e.name == n)
                .and_then(|e| e.value.clone())
                .unwrap_or_else(|| panic!("no env {n}"))
        };
        // Fails loudly on a node without a working driver; devices by CDI names over the CRI.
        assert_eq!(var("FAIL_ON_INIT_ERROR"), "true");
        assert_eq!(var("DEVICE_LIST_STRATEGY"), "cdi-cri");
        assert!(tol.iter().any(
            |t| t.key.as_deref() == Some(crate::render::gpu::UNVERIFIED_TAINT)
                && t.effect.as_deref() == Some("NoSchedule")
        ));
        let rc: k8s_openapi::api::node::v1::RuntimeClass = typed(&objs, "RuntimeClass", "nvidia");
        assert_eq!(rc.handler, "nvidia");
        assert_eq!(
            rc.scheduling.unwrap().node_selector.unwrap(),
            BTreeMap::from([(GPU_LABEL_KEY.to_string(), GPU_LABEL_VALUE.to_string())])
        );
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        assert_eq!(
            sc.capabilities.as_ref().unwrap().drop.as_deref(),
            Some(&["ALL".to_string()][..])
        );
    }

    #[test]
    fn coredns_serves_the_profile_dns_ip() {
        for name in crate::profile::builtin::names() {
            let (p, objs) = objects(name);
            let svc: Service = typed(&objs, "Service", "kube-dns");
            let spec = svc.spec.unwrap();
            assert_eq!(
                spec.cluster_ip.as_deref(),
                Some(p.network.dns_service_ip.to_string().as_str())
            );
            let ports: Vec<(i32, String)> = spec
                .ports
                .unwrap()
                .into_iter()
                .map(|p| (p.port, p.protocol.unwrap()))
                .collect();
            assert_eq!(
                ports,
                [(53, "UDP".into()), (53, "TCP".into()), (9153, "TCP".into())]
            );
            let cm: ConfigMap = typed(&objs, "ConfigMap", "coredns");
            let corefile = &cm.data.unwrap()["Corefile"];
            assert!(corefile.contains(&format!(
                "kubernetes {} in-addr.arpa ip6.arpa",
                p.kubernetes.cluster_domain
            )));
            // Local nodes have no upstream resolver to forward to.
            let local = p.provider.kind == crate::profile::ProviderKind::Local;
            assert_eq!(
                corefile.contains("forward . /etc/resolv.conf"),
                !local,
                "{name}"
            );
            for plugin in [
                "pods insecure",
                "cache 30",
                "loop",
                "reload",
                "loadbalance",
                "prometheus :9153",
            ] {
                assert!(corefile.contains(plugin), "{plugin}");
            }
            let d: Deployment = typed(&objs, "Deployment", "coredns");
            let spec = d.spec.unwrap();
            assert_eq!(spec.replicas, Some(2));
            let pod = spec.template.spec.unwrap();
            assert_eq!(
                pod.priority_class_name.as_deref(),
                Some("system-cluster-critical")
            );
            assert!(pod
                .tolerations
                .unwrap()
                .iter()
                .any(|t| t.key.as_deref() == Some(CONTROL_PLANE_TAINT)
                    && t.effect.as_deref() == Some("NoSchedule")));
            let c = &pod.containers[0];
            let release = crate::artifacts::release(&p.kubernetes.version).unwrap();
            assert_eq!(
                c.image.as_deref(),
                Some(
                    crate::artifacts::ClusterImage::CoreDns
                        .default_reference(release)
                        .as_str()
                )
            );
            assert_eq!(c.image_pull_policy.as_deref(), Some("IfNotPresent"));
            let sc = c.security_context.as_ref().unwrap();
            assert_eq!(sc.read_only_root_filesystem, Some(true));
            let caps = sc.capabilities.as_ref().unwrap();
            assert_eq!(
                caps.add.as_deref(),
                Some(&["NET_BIND_SERVICE".to_string()][..])
            );
            let live = c
                .liveness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap();
            assert_eq!(live.path.as_deref(), Some("/health"));
            let ready = c
                .readiness_probe
                .as_ref()
                .unwrap()
                .http_get
                .as_ref()
                .unwrap();
            assert_eq!(ready.path.as_deref(), Some("/ready"));
        }
    }

    #[test]
    fn apiserver_kubelet_rbac_binds_the_kubelet_client_cert_user() {
        let (_, objs) = objects("local-3");
        let role: ClusterRole = typed(&objs, "ClusterRole", "system:kube-apiserver-to-kubelet");
        let resources = role.rules.unwrap()[0].resources.clone().unwrap();
        for r in [
            "nodes/proxy",
            "nodes/stats",
            "nodes/log",
            "nodes/spec",
            "nodes/metrics",
        ] {
            assert!(resources.iter().any(|x| x == r), "{r}");
        }
        let b: ClusterRoleBinding = typed(&objs, "ClusterRoleBinding", "system:kube-apiserver");
        assert_eq!(b.role_ref.name, "system:kube-apiserver-to-kubelet");
        let s = &b.subjects.unwrap()[0];
        assert_eq!(
            (s.kind.as_str(), s.name.as_str()),
            ("User", "kube-apiserver-kubelet-client")
        );
    }

    #[test]
    fn image_overrides_reach_the_manifests() {
        let p = crate::profile::load("local-3", &[]).unwrap().profile;
        let release = crate::artifacts::release(&p.kubernetes.version).unwrap();
        let images = AddonImages::for_release(release).with_overrides(
            Some("mirror.example/coredns:x".into()),
            Some("mirror.example/dp:y".into()),
        );
        let m = render(&p, &images).unwrap();
        let all: String = m.iter().map(|m| m.yaml.as_str()).collect();
        assert!(all.contains("image: \"mirror.example/coredns:x\""));
        assert!(all.contains("image: \"mirror.example/dp:y\""));
        assert!(!all.contains("registry.k8s.io"));
    }

    #[test]
    fn gpu_group_nodes_get_the_gpu_label() {
        let p = crate::profile::load("local-3", &[]).unwrap().profile;
        let inv = crate::inventory::planned(&p, &BTreeMap::new()).unwrap();
        let mut node = inv.nodes.last().unwrap().clone();
        assert!(node.labels.is_empty());
        let label = format!("{GPU_LABEL_KEY}={GPU_LABEL_VALUE}");
        let ctx = crate::render::context::NodeCtx::new(&node).unwrap();
        assert!(!ctx.labels.contains(&label), "{}", ctx.labels);
        node.gpus = 1;
        let ctx = crate::render::context::NodeCtx::new(&node).unwrap();
        assert!(ctx.labels.contains(&label), "{}", ctx.labels);
        // A value the profile set explicitly wins.
        node.labels.insert(GPU_LABEL_KEY.into(), "false".into());
        let ctx = crate::render::context::NodeCtx::new(&node).unwrap();
        assert!(
            ctx.labels.contains(&format!("{GPU_LABEL_KEY}=false")),
            "{}",
            ctx.labels
        );
    }

    /// EFA groups (`aws.efa` on p5): the EFA device plugin DaemonSet on the EFA-labelled nodes
    /// only, in the shape of AWS's chart, and the NCCL/libfabric environment ConfigMap; a
    /// cluster without EFA gets neither (the file renders empty).
    #[test]
    fn efa_groups_get_the_efa_device_plugin_and_fabric_env() {
        use crate::profile::efa_layout::{EFA_LABEL_KEY, EFA_LABEL_VALUE};
        let p = crate::profile::load(
            "gpu-dev",
            &[
                "workers[1].aws.instanceType=p5.48xlarge".to_string(),
                "workers[1].aws.efa=true".to_string(),
            ],
        )
        .unwrap()
        .profile;
        let release = crate::artifacts::release(&p.kubernetes.version).unwrap();
        let m = render_for_release(&p, release).unwrap();
        let objs = crate::kube::validate_all(m.iter().map(|m| (m.name, m.yaml.as_str()))).unwrap();
        let ds: DaemonSet = typed(&objs, "DaemonSet", "aws-efa-k8s-device-plugin-daemonset");
        assert_eq!(ds.metadata.namespace.as_deref(), Some("kube-system"));
        let pod = ds.spec.unwrap().template.spec.unwrap();
        assert_eq!(
            pod.node_selector.unwrap(),
            BTreeMap::from([(EFA_LABEL_KEY.to_string(), EFA_LABEL_VALUE.to_string())])
        );
        assert_eq!(pod.host_network, Some(true));
        assert_eq!(
            pod.tolerations.unwrap()[0].operator.as_deref(),
            Some("Exists")
        );
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some(fabric::EFA_DEVICE_PLUGIN_IMAGE));
        let mounts: Vec<&str> = c
            .volume_mounts
            .as_ref()
            .unwrap()
            .iter()
            .map(|v| v.mount_path.as_str())
            .collect();
        assert_eq!(
            mounts,
            ["/var/lib/kubelet/device-plugins", "/dev/infiniband"]
        );
        let sc = c.security_context.as_ref().unwrap();
        assert_eq!(sc.allow_privilege_escalation, Some(false));
        let cm: ConfigMap = typed(&objs, "ConfigMap", fabric::FABRIC_ENV_CONFIGMAP);
        assert_eq!(
            cm.metadata.namespace.as_deref(),
            Some(fabric::FABRIC_ENV_NAMESPACE)
        );
        assert_eq!(
            cm.data.unwrap(),
            BTreeMap::from([
                ("FI_EFA_USE_DEVICE_RDMA".to_string(), "1".to_string()),
                ("FI_PROVIDER".to_string(), "efa".to_string()),
                ("RDMAV_FORK_SAFE".to_string(), "1".to_string()),
            ])
        );
        // Without EFA (and on every built-in profile): nothing of it.
        let (_, objs) = objects("gpu-dev");
        assert!(!objs.iter().any(|o| o
            .object
            .metadata
            .name
            .as_deref()
            .is_some_and(|n| n.starts_with("aws-efa") || n == fabric::FABRIC_ENV_CONFIGMAP)));
    }

    /// GCP A3 High groups: the NCCL TCPX plugin installer and the TCPX receive daemon on the
    /// TCPX-labelled nodes only, and the NCCL environment in the fabric-env ConfigMap, all valid
    /// against the typed API. What only a real A3 High proves: that the installer's script writes
    /// the plugin to /var/lib/tcpx/lib64, that RxDM's `auto` preset pairs each GPU with its NIC
    /// on Ubuntu, that the Ubuntu interface names are the ones published, and NCCL's bandwidth.
    #[test]
    fn a3_groups_get_tcpx_daemons_and_nccl_env() {
        use crate::profile::gpu_nic_layout::{TCPX_LABEL_KEY, TCPX_LABEL_VALUE};
        let p = crate::profile::load(
            "gpu-dev",
            &[
                "provider.kind=gcp".to_string(),
                "workers[1].gcp.machineType=a3-highgpu-8g".to_string(),
                "workers[1].gcp.acceleratorType=nvidia-h100-80gb".to_string(),
            ],
        )
        .unwrap()
        .profile;
        let release = crate::artifacts::release(&p.kubernetes.version).unwrap();
        let m = render_for_release(&p, release).unwrap();
        let objs = crate::kube::validate_all(m.iter().map(|m| (m.name, m.yaml.as_str()))).unwrap();
        let selector = BTreeMap::from([(TCPX_LABEL_KEY.to_string(), TCPX_LABEL_VALUE.to_string())]);

        let inst: DaemonSet = typed(&objs, "DaemonSet", "nccl-tcpx-installer");
        assert_eq!(inst.metadata.namespace.as_deref(), Some("kube-system"));
        let pod = inst.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.node_selector.as_ref(), Some(&selector));
        assert_eq!(
            pod.tolerations.unwrap()[0].operator.as_deref(),
            Some("Exists")
        );
        let init = &pod.init_containers.as_ref().unwrap()[0];
        assert_eq!(init.image.as_deref(), Some(tcpx::NCCL_PLUGIN_IMAGE));
        assert!(init
            .command
            .as_ref()
            .unwrap()
            .join(" ")
            .contains("/scripts/container_entry.sh install --install-nccl"));
        assert_eq!(
            init.volume_mounts.as_ref().unwrap()[0].mount_path,
            tcpx::TCPX_LIB_HOST_DIR
        );
        let vol = &pod.volumes.as_ref().unwrap()[0];
        let hp = vol.host_path.as_ref().unwrap();
        assert_eq!(
            (hp.path.as_str(), hp.type_.as_deref()),
            (tcpx::TCPX_LIB_HOST_DIR, Some("DirectoryOrCreate"))
        );
        // The holder is the release's pinned pause image (by digest).
        let holder = pod.containers[0].image.as_deref().unwrap();
        assert_eq!(
            holder,
            crate::artifacts::images::ClusterImage::Pause.default_reference(release)
        );
        assert!(holder.contains("@sha256:"), "{holder}");

        let rxdm: DaemonSet = typed(&objs, "DaemonSet", "tcpx-rxdm");
        let pod = rxdm.spec.unwrap().template.spec.unwrap();
        assert_eq!(pod.node_selector.as_ref(), Some(&selector));
        assert_eq!(pod.host_network, Some(true));
        assert_eq!(pod.runtime_class_name.as_deref(), Some("nvidia"));
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some(tcpx::RXDM_IMAGE));
        assert_eq!(
            c.command.as_ref().unwrap(),
            &[
                "/tcpgpudmarxd/build/app/tcpgpudmarxd",
                "--gpu_nic_preset",
                "auto",
                "--gpu_shmem_type",
                "fd",
                "--uds_path",
                tcpx::TCPX_SOCKET_DIR,
                "--setup_param",
                "--verbose 128 2 0",
            ]
            .map(String::from)
        );
        assert_eq!(c.security_context.as_ref().unwrap().privileged, Some(true));
        // Every GPU visible without a nvidia.com/gpu request (training pods keep all 8).
        assert!(c
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .is_none());
        let env = c.env.as_ref().unwrap();
        assert!(env
            .iter()
            .any(|e| e.name == "NVIDIA_VISIBLE_DEVICES" && e.value.as_deref() == Some("all")));
        assert_eq!(
            c.volume_mounts.as_ref().unwrap()[0].mount_path,
            tcpx::TCPX_SOCKET_DIR
        );
        assert_eq!(
            pod.volumes.as_ref().unwrap()[0]
                .host_path
                .as_ref()
                .unwrap()
                .path,
            tcpx::TCPX_SOCKET_DIR
        );

        let cm: ConfigMap = typed(&objs, "ConfigMap", fabric::FABRIC_ENV_CONFIGMAP);
        let data = cm.data.unwrap();
        let want: BTreeMap<String, String> = tcpx::env_defaults()
            .into_iter()
            .map(|e| (e.name.to_string(), e.value))
            .collect();
        assert_eq!(data, want);
        for (k, v) in [
            ("NCCL_SOCKET_IFNAME", "enp0s12"),
            ("NCCL_GPUDIRECTTCPX_CTRL_DEV", "enp0s12"),
            ("NCCL_GPUDIRECTTCPX_SOCKET_IFNAME", "enp6s0,enp12s0,enp134s0,enp140s0"),
            ("NCCL_GPUDIRECTTCPX_UNIX_CLIENT_PREFIX", "/run/tcpx"),
            ("NCCL_NET", "GPUDirectTCPX_v7"),
            ("NCCL_CROSS_NIC", "0"),
            ("NCCL_GPUDIRECTTCPX_RX_BINDINGS", "enp6s0:22-35,126-139;enp12s0:22-35,126-139;enp134s0:74-87,178-191;enp140s0:74-87,178-191"),
        ] {
            assert_eq!(data.get(k).map(String::as_str), Some(v), "{k}");
        }
        assert!(!data.contains_key("FI_PROVIDER"), "no EFA settings on GCP");
        assert!(!objs
            .iter()
            .any(|o| o.object.metadata.name.as_deref()
                == Some("aws-efa-k8s-device-plugin-daemonset")));

        // Only the A3 group's nodes carry the label the DaemonSets select on.
        let inv = crate::inventory::planned(&p, &BTreeMap::new()).unwrap();
        for n in &inv.nodes {
            assert_eq!(
                n.labels.get(TCPX_LABEL_KEY).map(String::as_str),
                (n.group == "gpu").then_some(TCPX_LABEL_VALUE),
                "{}",
                n.name
            );
        }

        // An a2 (no GPU NICs) on GCP, or AWS: none of it.
        for sets in [vec!["provider.kind=gcp".to_string()], vec![]] {
            let p = crate::profile::load("gpu-dev", &sets).unwrap().profile;
            let m = render_for_release(&p, release).unwrap();
            let all: String = m.iter().map(|m| m.yaml.as_str()).collect();
            assert!(!all.contains("tcpx"), "{sets:?}");
        }
    }
}
