//! Reading PKI material from the cluster's state directory (paths per `pki::layout`). Files every
//! node shares are read once per render; per-node files are read by that node's render.

use std::path::{Path, PathBuf};

use super::RenderError;
use crate::pki::layout;

/// Read one PKI file; a missing file names its path (the PKI phase has not run, or was cut short).
pub fn read(path: &Path) -> Result<Vec<u8>, RenderError> {
    std::fs::read(path).map_err(|source| {
        if source.kind() == std::io::ErrorKind::NotFound {
            RenderError::MissingPki {
                path: path.to_path_buf(),
            }
        } else {
            RenderError::Io {
                path: path.to_path_buf(),
                source,
            }
        }
    })
}

/// A certificate and its key.
#[derive(Debug, Clone)]
pub struct Pair {
    pub crt: Vec<u8>,
    pub key: Vec<u8>,
}

impl Pair {
    pub fn read(pki: &Path, name: &str) -> Result<Pair, RenderError> {
        Ok(Pair {
            crt: read(&layout::cert_path(pki, name))?,
            key: read(&layout::key_path(pki, name))?,
        })
    }
}

/// A CA's trust bundle: `<name>.trust.crt` while the CA rotates (old and new), else the CA
/// certificate itself.
pub fn trust(pki: &Path, name: &str) -> Result<Vec<u8>, RenderError> {
    let bundle = layout::trust_path(pki, name);
    if bundle.exists() {
        read(&bundle)
    } else {
        read(&layout::cert_path(pki, name))
    }
}

/// Everything nodes share, read once.
#[derive(Debug, Clone)]
pub struct SharedPki {
    /// The signing CA (certificate and key).
    pub ca: Pair,
    /// What nodes trust for the cluster CA (see `trust`).
    pub ca_trust: Vec<u8>,
    pub etcd_ca_crt: Vec<u8>,
    pub etcd_client: Pair,
    pub front_proxy_ca_crt: Vec<u8>,
    pub apiserver: Pair,
    pub apiserver_kubelet_client: Pair,
    pub apiserver_etcd_client: Pair,
    pub front_proxy_client: Pair,
    pub sa_key: Vec<u8>,
    pub sa_pub: Vec<u8>,
    pub encryption_config: Vec<u8>,
    pub admin_kubeconfig: Vec<u8>,
    pub controller_manager_kubeconfig: Vec<u8>,
    pub scheduler_kubeconfig: Vec<u8>,
    pub kube_proxy_kubeconfig: Vec<u8>,
}

impl SharedPki {
    pub fn read(cluster_dir: &Path) -> Result<SharedPki, RenderError> {
        let pki = layout::pki_dir(cluster_dir);
        let kc = |name: &str| read(&layout::kubeconfig_path(cluster_dir, name));
        Ok(SharedPki {
            ca: Pair::read(&pki, layout::CA)?,
            ca_trust: trust(&pki, layout::CA)?,
            etcd_ca_crt: trust(&pki, layout::ETCD_CA)?,
            etcd_client: Pair::read(&pki, layout::ETCD_CLIENT)?,
            front_proxy_ca_crt: trust(&pki, layout::FRONT_PROXY_CA)?,
            apiserver: Pair::read(&pki, layout::APISERVER)?,
            apiserver_kubelet_client: Pair::read(&pki, layout::APISERVER_KUBELET_CLIENT)?,
            apiserver_etcd_client: Pair::read(&pki, layout::APISERVER_ETCD_CLIENT)?,
            front_proxy_client: Pair::read(&pki, layout::FRONT_PROXY_CLIENT)?,
            sa_key: read(&layout::key_path(&pki, layout::SERVICE_ACCOUNT))?,
            sa_pub: read(&layout::service_account_public(&pki))?,
            encryption_config: read(&layout::encryption_config_path(cluster_dir))?,
            admin_kubeconfig: kc(layout::ADMIN)?,
            controller_manager_kubeconfig: kc(layout::CONTROLLER_MANAGER)?,
            scheduler_kubeconfig: kc(layout::SCHEDULER)?,
            kube_proxy_kubeconfig: kc(layout::KUBE_PROXY)?,
        })
    }
}

/// Every PKI path render reads for `nodes` (shared and per node), for placeholder fixtures and
/// for messages. `etcd_members` and `kubelet_nodes` name the nodes needing per-node files.
pub fn required_paths<'a>(
    cluster_dir: &Path,
    etcd_members: impl IntoIterator<Item = &'a str>,
    kubelet_nodes: impl IntoIterator<Item = &'a str>,
) -> Vec<PathBuf> {
    let pki = layout::pki_dir(cluster_dir);
    let mut out = Vec::new();
    let mut pair = |name: &str| {
        out.push(layout::cert_path(&pki, name));
        out.push(layout::key_path(&pki, name));
    };
    for name in [
        layout::CA,
        layout::ETCD_CLIENT,
        layout::APISERVER,
        layout::APISERVER_KUBELET_CLIENT,
        layout::APISERVER_ETCD_CLIENT,
        layout::FRONT_PROXY_CLIENT,
    ] {
        pair(name);
    }
    for n in etcd_members {
        pair(&layout::etcd_server(n));
        pair(&layout::etcd_peer(n));
    }
    let kubelet_nodes: Vec<&str> = kubelet_nodes.into_iter().collect();
    for n in &kubelet_nodes {
        pair(&layout::kubelet(n));
    }
    out.push(layout::cert_path(&pki, layout::ETCD_CA));
    out.push(layout::cert_path(&pki, layout::FRONT_PROXY_CA));
    out.push(layout::key_path(&pki, layout::SERVICE_ACCOUNT));
    out.push(layout::service_account_public(&pki));
    out.push(layout::encryption_config_path(cluster_dir));
    for name in [
        layout::ADMIN,
        layout::CONTROLLER_MANAGER,
        layout::SCHEDULER,
        layout::KUBE_PROXY,
    ] {
        out.push(layout::kubeconfig_path(cluster_dir, name));
    }
    for n in &kubelet_nodes {
        out.push(layout::kubeconfig_path(cluster_dir, &layout::kubelet(n)));
    }
    out
}
