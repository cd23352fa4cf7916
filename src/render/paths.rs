//! Where things live on a node. One layout for every provider, close to kubeadm's so operators
//! find files where they expect them:
//!
//! ```text
//! /etc/etcd/                         etcd CA, server + peer pair, healthcheck client (etcd members)
//! /etc/kubernetes/pki/               cluster CA (+ key on control planes), apiserver pairs,
//!                                    front-proxy, service-account keys, etcd/ca.crt, kubelet pair
//! /etc/kubernetes/<name>.kubeconfig  one kubeconfig per identity (admin, kubelet, kube-proxy, ...)
//! /etc/kubernetes/*.yaml             component configs, audit policy, encryption config
//! /etc/containerd/config.toml        containerd
//! /etc/cni/net.d/                    CNI bridge + loopback
//! /etc/systemd/system/               one unit per component
//! /usr/local/bin, /usr/local/sbin    binaries (installed by the artifacts step, listed in the manifest)
//! /opt/cni/bin                       CNI plugins
//! ```
//!
//! Templates receive these through [`NodePaths`], so a path is spelled once, here.

use serde::Serialize;

pub const OWNER: &str = "root:root";

pub const UNIT_DIR: &str = "/etc/systemd/system";
pub const BIN_DIR: &str = "/usr/local/bin";
pub const SBIN_DIR: &str = "/usr/local/sbin";
pub const CNI_BIN_DIR: &str = "/opt/cni/bin";
pub const CNI_CONF_DIR: &str = "/etc/cni/net.d";
pub const CONTAINERD_SOCKET: &str = "unix:///run/containerd/containerd.sock";

/// containerd's per-registry `hosts.toml` directory (`config_path`).
pub const CONTAINERD_CERTS_D: &str = "/etc/containerd/certs.d";

/// Every node-side path a template or the renderer refers to.
#[derive(Debug, Clone, Copy, Serialize)]
pub struct NodePaths {
    pub bin_dir: &'static str,
    pub sbin_dir: &'static str,
    pub cni_bin_dir: &'static str,
    pub cni_conf_dir: &'static str,
    pub containerd_socket: &'static str,
    pub containerd_config: &'static str,
    /// Drop-ins containerd merges over its config (`imports`).
    pub containerd_imports: &'static str,

    pub etcd_ca: &'static str,
    pub etcd_server_crt: &'static str,
    pub etcd_server_key: &'static str,
    pub etcd_peer_crt: &'static str,
    pub etcd_peer_key: &'static str,
    pub etcd_client_crt: &'static str,
    pub etcd_client_key: &'static str,
    pub etcd_data_dir: &'static str,

    /// The cluster CA trust bundle (client-ca-file, kubelet clientCAFile, root-ca-file).
    pub ca_crt: &'static str,
    pub ca_key: &'static str,
    /// The CA certificate the controller-manager signs CSRs with (one certificate, matching
    /// `ca_key`; equal to `ca_crt` except while the CA rotates and the trust holds two).
    pub ca_signer_crt: &'static str,
    pub apiserver_crt: &'static str,
    pub apiserver_key: &'static str,
    pub apiserver_kubelet_client_crt: &'static str,
    pub apiserver_kubelet_client_key: &'static str,
    pub apiserver_etcd_client_crt: &'static str,
    pub apiserver_etcd_client_key: &'static str,
    /// The etcd CA as the apiserver sees it (control planes need not be etcd members).
    pub apiserver_etcd_ca: &'static str,
    pub front_proxy_ca_crt: &'static str,
    pub front_proxy_client_crt: &'static str,
    pub front_proxy_client_key: &'static str,
    pub sa_key: &'static str,
    pub sa_pub: &'static str,
    pub kubelet_crt: &'static str,
    pub kubelet_key: &'static str,

    pub admin_kubeconfig: &'static str,
    pub controller_manager_kubeconfig: &'static str,
    pub scheduler_kubeconfig: &'static str,
    pub kubelet_kubeconfig: &'static str,
    pub kube_proxy_kubeconfig: &'static str,

    pub encryption_config: &'static str,
    pub audit_policy: &'static str,
    pub audit_log: &'static str,
    pub scheduler_config: &'static str,
    pub kubelet_config: &'static str,
    pub kube_proxy_config: &'static str,

    pub cni_bridge: &'static str,
    pub cni_loopback: &'static str,

    pub node_prep_script: &'static str,
    pub images_dir: &'static str,
    pub images_import_script: &'static str,
    /// containerd `config_path`: one `<registry>/hosts.toml` per mirrored registry.
    pub registry_hosts_dir: &'static str,
    pub sysctl_conf: &'static str,
    pub modules_load_conf: &'static str,
    pub systemd_manager_conf: &'static str,
}

pub const PATHS: NodePaths = NodePaths {
    bin_dir: BIN_DIR,
    sbin_dir: SBIN_DIR,
    cni_bin_dir: CNI_BIN_DIR,
    cni_conf_dir: CNI_CONF_DIR,
    containerd_socket: CONTAINERD_SOCKET,
    containerd_config: "/etc/containerd/config.toml",
    containerd_imports: "/etc/containerd/conf.d/*.toml",

    etcd_ca: "/etc/etcd/ca.crt",
    etcd_server_crt: "/etc/etcd/server.crt",
    etcd_server_key: "/etc/etcd/server.key",
    etcd_peer_crt: "/etc/etcd/peer.crt",
    etcd_peer_key: "/etc/etcd/peer.key",
    etcd_client_crt: "/etc/etcd/healthcheck-client.crt",
    etcd_client_key: "/etc/etcd/healthcheck-client.key",
    etcd_data_dir: "/var/lib/etcd",

    ca_crt: "/etc/kubernetes/pki/ca.crt",
    ca_key: "/etc/kubernetes/pki/ca.key",
    ca_signer_crt: "/etc/kubernetes/pki/ca-signer.crt",
    apiserver_crt: "/etc/kubernetes/pki/apiserver.crt",
    apiserver_key: "/etc/kubernetes/pki/apiserver.key",
    apiserver_kubelet_client_crt: "/etc/kubernetes/pki/apiserver-kubelet-client.crt",
    apiserver_kubelet_client_key: "/etc/kubernetes/pki/apiserver-kubelet-client.key",
    apiserver_etcd_client_crt: "/etc/kubernetes/pki/apiserver-etcd-client.crt",
    apiserver_etcd_client_key: "/etc/kubernetes/pki/apiserver-etcd-client.key",
    apiserver_etcd_ca: "/etc/kubernetes/pki/etcd/ca.crt",
    front_proxy_ca_crt: "/etc/kubernetes/pki/front-proxy-ca.crt",
    front_proxy_client_crt: "/etc/kubernetes/pki/front-proxy-client.crt",
    front_proxy_client_key: "/etc/kubernetes/pki/front-proxy-client.key",
    sa_key: "/etc/kubernetes/pki/sa.key",
    sa_pub: "/etc/kubernetes/pki/sa.pub",
    kubelet_crt: "/etc/kubernetes/pki/kubelet.crt",
    kubelet_key: "/etc/kubernetes/pki/kubelet.key",

    admin_kubeconfig: "/etc/kubernetes/admin.kubeconfig",
    controller_manager_kubeconfig: "/etc/kubernetes/kube-controller-manager.kubeconfig",
    scheduler_kubeconfig: "/etc/kubernetes/kube-scheduler.kubeconfig",
    kubelet_kubeconfig: "/etc/kubernetes/kubelet.kubeconfig",
    kube_proxy_kubeconfig: "/etc/kubernetes/kube-proxy.kubeconfig",

    encryption_config: "/etc/kubernetes/encryption-config.yaml",
    audit_policy: "/etc/kubernetes/audit-policy.yaml",
    audit_log: "/var/log/kubernetes/audit.log",
    scheduler_config: "/etc/kubernetes/kube-scheduler.yaml",
    kubelet_config: "/etc/kubernetes/kubelet-config.yaml",
    kube_proxy_config: "/etc/kubernetes/kube-proxy-config.yaml",

    cni_bridge: "/etc/cni/net.d/10-bridge.conf",
    cni_loopback: "/etc/cni/net.d/99-loopback.conf",

    node_prep_script: "/usr/local/lib/k8sforge/node-prep.sh",
    images_dir: crate::artifacts::images::NODE_IMAGE_DIR,
    images_import_script: "/usr/local/lib/k8sforge/import-images.sh",
    registry_hosts_dir: CONTAINERD_CERTS_D,
    sysctl_conf: "/etc/sysctl.d/90-k8sforge.conf",
    modules_load_conf: "/etc/modules-load.d/k8sforge.conf",
    systemd_manager_conf: "/etc/systemd/system.conf.d/90-k8sforge.conf",
};

/// `/etc/systemd/system/<unit>`.
pub fn unit_path(unit: &str) -> String {
    format!("{UNIT_DIR}/{unit}")
}
