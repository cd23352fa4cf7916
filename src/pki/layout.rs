//! Where PKI material lives in the cluster's state directory. The PKI phase writes these paths;
//! render, certs check and rotation read them. Names follow kubeadm's where one exists.

use std::path::{Path, PathBuf};

/// Kubernetes cluster CA.
pub const CA: &str = "ca";
pub const ETCD_CA: &str = "etcd/ca";
pub const FRONT_PROXY_CA: &str = "front-proxy-ca";

pub const ADMIN: &str = "admin";
pub const CONTROLLER_MANAGER: &str = "kube-controller-manager";
pub const SCHEDULER: &str = "kube-scheduler";
pub const KUBE_PROXY: &str = "kube-proxy";
pub const APISERVER: &str = "apiserver";
pub const APISERVER_KUBELET_CLIENT: &str = "apiserver-kubelet-client";
pub const APISERVER_ETCD_CLIENT: &str = "apiserver-etcd-client";
pub const FRONT_PROXY_CLIENT: &str = "front-proxy-client";
/// Client certificate for etcdctl health checks and operators.
pub const ETCD_CLIENT: &str = "etcd/healthcheck-client";
/// Client certificate Prometheus scrapes the control plane and kubelets with (Kubernetes CA;
/// its user is granted `/metrics` and `nodes/metrics` by the monitoring add-on's RBAC).
pub const PROMETHEUS_CLIENT: &str = "prometheus-client";
/// Client certificate Prometheus scrapes etcd's `/metrics` with over TLS (etcd CA).
pub const ETCD_PROMETHEUS_CLIENT: &str = "etcd/prometheus-client";
/// Service-account signing key pair: `sa.key` (private) and `sa.pub` (public, PEM).
pub const SERVICE_ACCOUNT: &str = "sa";

pub fn kubelet(node: &str) -> String {
    format!("kubelet-{node}")
}

pub fn etcd_server(node: &str) -> String {
    format!("etcd/server-{node}")
}

pub fn etcd_peer(node: &str) -> String {
    format!("etcd/peer-{node}")
}

/// `<cluster dir>/pki`.
pub fn pki_dir(cluster_dir: &Path) -> PathBuf {
    cluster_dir.join("pki")
}

/// `<pki>/<name>.crt`.
pub fn cert_path(pki: &Path, name: &str) -> PathBuf {
    pki.join(format!("{name}.crt"))
}

/// `<pki>/<name>.key` (mode 0600).
pub fn key_path(pki: &Path, name: &str) -> PathBuf {
    pki.join(format!("{name}.key"))
}

/// `<pki>/sa.pub`.
pub fn service_account_public(pki: &Path) -> PathBuf {
    pki.join("sa.pub")
}

/// Kubeconfig identities: admin, kube-controller-manager, kube-scheduler, kube-proxy, kubelet-<node>.
pub fn kubeconfig_path(cluster_dir: &Path, name: &str) -> PathBuf {
    cluster_dir
        .join("kubeconfigs")
        .join(format!("{name}.kubeconfig"))
}

/// `<cluster dir>/encryption-config.yaml` (mode 0600: it holds the key).
pub fn encryption_config_path(cluster_dir: &Path) -> PathBuf {
    cluster_dir.join("encryption-config.yaml")
}
