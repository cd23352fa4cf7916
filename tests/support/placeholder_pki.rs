//! Placeholder PKI for render tests and the render bench.
//!
//! The PKI phase (`pki::ensure`) is built on another branch in parallel. Until it lands, these
//! fixtures write placeholder files at exactly the `pki::layout` paths render reads: PEM-framed
//! blocks whose body names the file, so a test can check that each node got the right file. Render
//! copies PKI material verbatim and never parses it, so placeholders exercise the same code path.
//! The lead switches these fixtures to real `pki::ensure` output after merging.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use k8sforge::inventory::{Inventory, Role};
use k8sforge::render::pki_files;

/// The body a placeholder for `path` carries (so tests can recognise it in a node's files).
pub fn marker(path: &Path) -> String {
    format!("placeholder for {}", path.display())
}

pub fn placeholder_content(path: &Path) -> String {
    let name = path.to_string_lossy();
    let m = marker(path);
    if name.ends_with(".crt") {
        format!("-----BEGIN CERTIFICATE-----\n{m}\n-----END CERTIFICATE-----\n")
    } else if name.ends_with(".key") {
        format!("-----BEGIN PRIVATE KEY-----\n{m}\n-----END PRIVATE KEY-----\n")
    } else if name.ends_with(".pub") {
        format!("-----BEGIN PUBLIC KEY-----\n{m}\n-----END PUBLIC KEY-----\n")
    } else if name.ends_with(".kubeconfig") {
        format!("apiVersion: v1\nkind: Config\n# {m}\nclusters: []\nusers: []\ncontexts: []\n")
    } else {
        format!("apiVersion: apiserver.config.k8s.io/v1\nkind: EncryptionConfiguration\n# {m}\nresources: []\n")
    }
}

/// Write a placeholder at every PKI path render reads for `inv`.
pub fn write_placeholder_pki(cluster_dir: &Path, inv: &Inventory) {
    let etcd: Vec<&str> = inv.with_role(Role::Etcd).map(|n| n.name.as_str()).collect();
    let kubelets: Vec<&str> = inv
        .nodes
        .iter()
        .filter(|n| n.has(Role::Worker) || n.has(Role::ControlPlane))
        .map(|n| n.name.as_str())
        .collect();
    for path in pki_files::required_paths(cluster_dir, etcd, kubelets) {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, placeholder_content(&path)).unwrap();
        let secret = path.extension().is_some_and(|e| e != "crt" && e != "pub");
        let mode = if secret { 0o600 } else { 0o644 };
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode)).unwrap();
    }
}
