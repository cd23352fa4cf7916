//! One node's bundle: which files it receives (by role), which units restart when each changes,
//! which binaries it needs, and the commands that start it, in order.

use std::path::Path;

use minijinja::value::Serde;
use minijinja::{context, Environment, Value};

use super::api_proxy;
use super::bundle::{Binary, BundleFile, NodeBundle};
use super::context::{ClusterCtx, NodeCtx};
use super::paths::{self, PATHS};
use super::pki_files::{self, Pair, SharedPki};
use super::routes;
use super::RenderError;
use crate::artifacts::Release;
use crate::fsutil;
use crate::inventory::{Node, Role};
use crate::pki::layout;

const ETCD: &str = "etcd.service";
const APISERVER: &str = "kube-apiserver.service";
const CONTROLLER_MANAGER: &str = "kube-controller-manager.service";
const SCHEDULER: &str = "kube-scheduler.service";
const CONTAINERD: &str = "containerd.service";
const KUBELET: &str = "kubelet.service";
const KUBE_PROXY: &str = "kube-proxy.service";
const NODE_PREP: &str = "k8sforge-node-prep.service";
/// Imports the image archives into containerd (the `runtime` phase ships the archives).
pub const IMAGES_UNIT: &str = "k8sforge-images.service";

/// Inputs shared by every node's render.
pub struct Shared<'a> {
    pub env: &'a Environment<'static>,
    /// Pod routes (host-routes model only), formatted once for all nodes.
    pub routes: Option<&'a routes::PodRoutes>,
    /// Every control plane's cluster address: the node-local API endpoint's backends.
    pub api_backends: &'a [String],
    pub cluster_dir: &'a Path,
    pub release: &'a Release,
    pub cluster: &'a ClusterCtx,
    /// `cluster`, `features` and `paths` as template values, built once.
    pub base: Value,
    pub pki: &'a SharedPki,
    /// containerd registry host files (`artifacts.registryMirrors`), the same on every node.
    pub registry_hosts: &'a [BundleFile],
    pub gpu: &'a super::gpu::GpuCluster,
    /// `training.storage.local` in effect: workers get the volume directories.
    pub local_volumes: Option<crate::profile::storage::LocalVolumes>,
}

struct Files {
    node: String,
    files: Vec<BundleFile>,
}

impl Files {
    fn add(&mut self, path: &str, mode: u32, content: Vec<u8>, restarts: &[&str]) {
        self.files.push(BundleFile {
            path: path.to_string(),
            mode,
            owner: paths::OWNER.to_string(),
            content,
            restarts: restarts.iter().map(|s| s.to_string()).collect(),
        });
    }

    fn public(&mut self, path: &str, content: &[u8], restarts: &[&str]) {
        self.add(path, fsutil::PUBLIC, content.to_vec(), restarts);
    }

    fn secret(&mut self, path: &str, content: &[u8], restarts: &[&str]) {
        self.add(path, fsutil::SECRET, content.to_vec(), restarts);
    }

    fn pair(&mut self, crt: &str, key: &str, pair: &Pair, restarts: &[&str]) {
        self.public(crt, &pair.crt, restarts);
        self.secret(key, &pair.key, restarts);
    }
}

fn render(
    shared: &Shared<'_>,
    ctx: &Value,
    node: &str,
    template: &str,
) -> Result<Vec<u8>, RenderError> {
    let tmpl = shared
        .env
        .get_template(template)
        .map_err(|e| RenderError::Template {
            node: node.to_string(),
            template: template.to_string(),
            message: format!("{e:#}"),
        })?;
    tmpl.render(ctx)
        .map(String::into_bytes)
        .map_err(|e| RenderError::Template {
            node: node.to_string(),
            template: template.to_string(),
            message: format!("{e:#}"),
        })
}

/// Render everything `node` receives.
pub fn render_node(shared: &Shared<'_>, node: &Node) -> Result<NodeBundle, RenderError> {
    let node_ctx = NodeCtx::new(node)?;
    let ctx = context! { node => Value::from(Serde(&node_ctx)), ..shared.base.clone() };
    let name = node.name.as_str();
    let tpl = |t: &str| render(shared, &ctx, name, t);
    let pki_dir = layout::pki_dir(shared.cluster_dir);
    let pki = shared.pki;
    let local = shared.cluster.local;
    let runs_pods = node.has(Role::Worker) || node.has(Role::ControlPlane);
    let mut f = Files {
        node: name.to_string(),
        files: Vec::new(),
    };
    let mut units: Vec<&str> = Vec::new();
    let mut binaries: Vec<Binary> = Vec::new();
    let r = shared.release;
    let mut bin = |name: &str, dir: &str, artifact: &str, version: &str| {
        binaries.push(Binary {
            name: name.to_string(),
            path: format!("{dir}/{name}"),
            artifact: artifact.to_string(),
            version: version.to_string(),
        })
    };

    if local && runs_pods {
        f.add(
            PATHS.node_prep_script,
            0o755,
            tpl("node-prep.sh")?,
            &[NODE_PREP],
        );
        f.public(
            &paths::unit_path(NODE_PREP),
            &tpl("k8sforge-node-prep.service")?,
            &[NODE_PREP],
        );
        f.public(
            PATHS.systemd_manager_conf,
            &tpl("systemd-manager.conf")?,
            &[],
        );
        units.push(NODE_PREP);
    }
    if let Some(routes) = shared.routes {
        // Every node, control planes included: replies from the apiserver to pods (through the
        // `kubernetes` Service) need the route back as much as pod-to-pod traffic does.
        f.files.extend(routes.files(node));
        units.push(routes::ROUTES_UNIT);
    }
    let proxy = api_proxy::files(
        node,
        shared.api_backends,
        shared.cluster.api_port,
        PATHS.ca_crt,
    );
    if !proxy.is_empty() {
        f.files.extend(proxy);
        units.push(api_proxy::API_PROXY_UNIT);
    }
    if !local && runs_pods {
        // Applied by the commands below (modules-load restart, sysctl --system), not by restarts.
        f.public(PATHS.modules_load_conf, &tpl("modules-load.conf")?, &[]);
        f.public(PATHS.sysctl_conf, &tpl("sysctl.conf")?, &[]);
    }

    if node.has(Role::Etcd) {
        let server = Pair::read(&pki_dir, &layout::etcd_server(name))?;
        let peer = Pair::read(&pki_dir, &layout::etcd_peer(name))?;
        f.public(PATHS.etcd_ca, &pki.etcd_ca_crt, &[ETCD]);
        f.pair(
            PATHS.etcd_server_crt,
            PATHS.etcd_server_key,
            &server,
            &[ETCD],
        );
        f.pair(PATHS.etcd_peer_crt, PATHS.etcd_peer_key, &peer, &[ETCD]);
        // For etcdctl health checks on the member itself; etcd does not read it.
        f.pair(
            PATHS.etcd_client_crt,
            PATHS.etcd_client_key,
            &pki.etcd_client,
            &[],
        );
        f.public(&paths::unit_path(ETCD), &tpl("etcd.service")?, &[ETCD]);
        units.push(ETCD);
        bin("etcd", paths::BIN_DIR, "etcd", r.etcd);
        bin("etcdctl", paths::BIN_DIR, "etcd", r.etcd);
    }

    if node.has(Role::ControlPlane) {
        let api = &[APISERVER][..];
        let api_cm = &[APISERVER, CONTROLLER_MANAGER][..];
        f.secret(PATHS.ca_key, &pki.ca.key, &[CONTROLLER_MANAGER]);
        f.public(PATHS.ca_signer_crt, &pki.ca.crt, &[CONTROLLER_MANAGER]);
        f.pair(
            PATHS.apiserver_crt,
            PATHS.apiserver_key,
            &pki.apiserver,
            api,
        );
        f.pair(
            PATHS.apiserver_kubelet_client_crt,
            PATHS.apiserver_kubelet_client_key,
            &pki.apiserver_kubelet_client,
            api,
        );
        f.pair(
            PATHS.apiserver_etcd_client_crt,
            PATHS.apiserver_etcd_client_key,
            &pki.apiserver_etcd_client,
            api,
        );
        f.public(PATHS.apiserver_etcd_ca, &pki.etcd_ca_crt, api);
        f.public(PATHS.front_proxy_ca_crt, &pki.front_proxy_ca_crt, api_cm);
        f.pair(
            PATHS.front_proxy_client_crt,
            PATHS.front_proxy_client_key,
            &pki.front_proxy_client,
            api,
        );
        f.secret(PATHS.sa_key, &pki.sa_key, api_cm);
        f.public(PATHS.sa_pub, &pki.sa_pub, api);
        f.secret(PATHS.encryption_config, &pki.encryption_config, api);
        f.public(PATHS.audit_policy, &tpl("audit-policy.yaml")?, api);
        f.secret(PATHS.admin_kubeconfig, &pki.admin_kubeconfig, &[]);
        f.secret(
            PATHS.controller_manager_kubeconfig,
            &pki.controller_manager_kubeconfig,
            &[CONTROLLER_MANAGER],
        );
        f.secret(
            PATHS.scheduler_kubeconfig,
            &pki.scheduler_kubeconfig,
            &[SCHEDULER],
        );
        f.public(
            PATHS.scheduler_config,
            &tpl("kube-scheduler.yaml")?,
            &[SCHEDULER],
        );
        for unit in [APISERVER, CONTROLLER_MANAGER, SCHEDULER] {
            f.public(&paths::unit_path(unit), &tpl(unit)?, &[unit]);
            units.push(unit);
        }
        for b in [
            "kube-apiserver",
            "kube-controller-manager",
            "kube-scheduler",
            "kubectl",
        ] {
            bin(b, paths::BIN_DIR, "kubernetes", r.kubernetes);
        }
    }

    if runs_pods {
        let kubelet = Pair::read(&pki_dir, &layout::kubelet(name))?;
        let kubelet_kc = pki_files::read(&layout::kubeconfig_path(
            shared.cluster_dir,
            &layout::kubelet(name),
        ))?;
        let ca_users: &[&str] = if node.has(Role::ControlPlane) {
            &[APISERVER, CONTROLLER_MANAGER, KUBELET]
        } else if api_proxy::wanted(node) {
            // The node-local API endpoint probes every apiserver with the cluster CA.
            &[KUBELET, api_proxy::API_PROXY_UNIT]
        } else {
            &[KUBELET]
        };
        f.public(PATHS.ca_crt, &pki.ca_trust, ca_users);
        f.pair(PATHS.kubelet_crt, PATHS.kubelet_key, &kubelet, &[KUBELET]);
        f.secret(PATHS.kubelet_kubeconfig, &kubelet_kc, &[KUBELET]);
        f.public(
            PATHS.kubelet_config,
            &tpl("kubelet-config.yaml")?,
            &[KUBELET],
        );
        f.secret(
            PATHS.kube_proxy_kubeconfig,
            &pki.kube_proxy_kubeconfig,
            &[KUBE_PROXY],
        );
        f.public(
            PATHS.kube_proxy_config,
            &tpl("kube-proxy-config.yaml")?,
            &[KUBE_PROXY],
        );
        f.public(
            PATHS.containerd_config,
            &tpl("containerd-config.toml")?,
            &[CONTAINERD],
        );
        f.files.extend(shared.registry_hosts.iter().cloned());
        // CNI configs are read at each pod sandbox creation: nothing to restart.
        f.public(PATHS.cni_bridge, &tpl("10-bridge.conf")?, &[]);
        f.public(PATHS.cni_loopback, &tpl("99-loopback.conf")?, &[]);
        f.add(
            PATHS.images_import_script,
            0o755,
            tpl("import-images.sh")?,
            &[IMAGES_UNIT],
        );
        // GPU nodes: the NVIDIA stack, started before containerd (see render::gpu).
        let (gpu_files, gpu_units) =
            super::gpu::render_node(shared.gpu, node, local, &ctx, |c, t| {
                render(shared, c, name, t)
            })?;
        for g in gpu_files {
            f.add(g.path, g.mode, g.content, g.restarts);
        }
        units.extend(gpu_units);
        if let (true, Some(lv)) = (node.has(Role::Worker), &shared.local_volumes) {
            let unit = super::local_volumes::UNIT;
            f.public(
                &paths::unit_path(unit),
                super::local_volumes::unit(name, lv).as_bytes(),
                &[unit],
            );
            units.push(unit);
        }
        for unit in [CONTAINERD, IMAGES_UNIT, KUBELET, KUBE_PROXY] {
            f.public(&paths::unit_path(unit), &tpl(unit)?, &[unit]);
            units.push(unit);
        }
        for b in ["containerd", "containerd-shim-runc-v2", "ctr"] {
            bin(b, paths::BIN_DIR, "containerd", r.containerd);
        }
        bin("runc", paths::SBIN_DIR, "runc", r.runc);
        for b in ["bridge", "host-local", "loopback"] {
            bin(b, paths::CNI_BIN_DIR, "cni-plugins", r.cni_plugins);
        }
        for b in ["kubelet", "kube-proxy"] {
            bin(b, paths::BIN_DIR, "kubernetes", r.kubernetes);
        }
        if !node.has(Role::ControlPlane) {
            bin("kubectl", paths::BIN_DIR, "kubernetes", r.kubernetes);
        }
    }

    let mut commands = vec!["systemctl daemon-reload".to_string()];
    if !local && runs_pods {
        commands.push("systemctl restart systemd-modules-load.service".to_string());
        commands.push("sysctl --system >/dev/null".to_string());
    }
    for unit in &units {
        // etcd reports ready only once a quorum has formed; --no-block lets every member start
        // before any waits, and the etcd phase checks health itself.
        let no_block = if *unit == ETCD { " --no-block" } else { "" };
        commands.push(format!("systemctl enable --now{no_block} {unit}"));
    }

    let mut files = f.files;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    if let Some(w) = files.windows(2).find(|w| w[0].path == w[1].path) {
        return Err(RenderError::DuplicateFile {
            node: f.node,
            path: w[0].path.clone(),
        });
    }
    binaries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(NodeBundle {
        files,
        units: units.iter().map(|s| s.to_string()).collect(),
        commands,
        binaries,
    })
}
