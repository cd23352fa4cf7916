//! Pinned digests of upstream release artifacts (linux/amd64), as published upstream.
//!
//! Sources, so each value can be re-checked:
//! - SHA-256 of etcd, containerd, runc, CNI plugins, crictl, kubelet and kubectl: kubespray,
//!   `roles/kubespray_defaults/vars/main/checksums.yml` (keys `etcd_binary_checksums`,
//!   `containerd_archive_checksums`, `runc_checksums`, `cni_binary_checksums`,
//!   `crictl_checksums`, `kubelet_checksums`, `kubectl_checksums`; arch `amd64`), which copies
//!   them from the projects' release pages and dl.k8s.io `.sha256` files. Releases kubespray
//!   has since dropped come from an older commit of the same file, then at
//!   `roles/kubespray-defaults/defaults/main/checksums.yml` (commit named per row).
//! - SHA-512 of `kubernetes-server-linux-amd64.tar.gz`: Kubernetes
//!   `CHANGELOG/CHANGELOG-1.<minor>.md`, "Server Binaries" of the release (kubespray has no
//!   sums for kube-apiserver, -controller-manager, -scheduler or kube-proxy, since it uses
//!   kubeadm images).

use super::{Component, Digest};

enum Algo {
    Sha256,
    Sha512,
}

/// (component, version without `v`, algorithm, hex digest).
const PINS: &[(Component, &str, Algo, &str)] = &[
    // Kubernetes v1.28.7 release. SHA-256 rows: kubespray 9204f60b (last commit before 1.28
    // was dropped), `roles/kubespray-defaults/defaults/main/checksums.yml`; identical at
    // 082ac10f, where the v1.28.7 sums were added.
    // etcd_binary_checksums.amd64.v3.5.10
    (
        Component::Etcd,
        "3.5.10",
        Algo::Sha256,
        "26e90d024fa2310bc52bb40e7f2132e81640b55f8fc446c00ae07e30af2a44fd",
    ),
    // containerd_archive_checksums.amd64."1.7.13"
    (
        Component::Containerd,
        "1.7.13",
        Algo::Sha256,
        "c2371c009dd8b7738663333d91e5ab50d204f8bcae24201f45d59060d12c3a23",
    ),
    // runc_checksums.amd64.v1.1.12
    (
        Component::Runc,
        "1.1.12",
        Algo::Sha256,
        "aadeef400b8f05645768c1476d1023f7875b78f52c7ff1967a6dbce236b8cbd8",
    ),
    // cni_binary_checksums.amd64.v1.3.0
    (
        Component::CniPlugins,
        "1.3.0",
        Algo::Sha256,
        "754a71ed60a4bd08726c3af705a7d55ee3df03122b12e389fdba4bea35d7dd7e",
    ),
    // crictl_checksums.amd64.v1.28.0
    (
        Component::Crictl,
        "1.28.0",
        Algo::Sha256,
        "8dc78774f7cbeaf787994d386eec663f0a3cf24de1ea4893598096cb39ef2508",
    ),
    // kubelet_checksums.amd64.v1.28.7
    (
        Component::Kubelet,
        "1.28.7",
        Algo::Sha256,
        "120b1495babc4364f7e16a9d0f8b8e6b6f78316d047e4f6de77b5569b05813c7",
    ),
    // kubectl_checksums.amd64.v1.28.7
    (
        Component::Kubectl,
        "1.28.7",
        Algo::Sha256,
        "aff42d3167685e4d8e86fda0ad9c6ce6ec6c047bc24d608041d54717a18192ba",
    ),
    // CHANGELOG-1.28.md, v1.28.7, Server Binaries, kubernetes-server-linux-amd64.tar.gz (sha512)
    (
        Component::KubernetesServer,
        "1.28.7",
        Algo::Sha512,
        "ea566c66916cb6b892dec2151850bae766a5593e3a4c1cc39b1ff945fffd843611ea980a01cc9dea4bd69bc1a1fefc6e31284937e8d88c19f7d8e183917bdf8f",
    ),
    // Kubernetes v1.34.2 release.
    // etcd_binary_checksums.amd64."3.6.5"
    (
        Component::Etcd,
        "3.6.5",
        Algo::Sha256,
        "66bad39ed920f6fc15fd74adcb8bfd38ba9a6412f8c7852d09eb11670e88cac3",
    ),
    // containerd_archive_checksums.amd64."2.1.5"
    (
        Component::Containerd,
        "2.1.5",
        Algo::Sha256,
        "403af72d9f956ed8a5ad5b0ac0f1e8e371a1488f2b9edf9b4ba13db0653936ea",
    ),
    // runc_checksums.amd64."1.3.3"
    (
        Component::Runc,
        "1.3.3",
        Algo::Sha256,
        "8781ab9f71c12f314d21c8e85f13ca1a82d90cf475aa5131a7b543fcc5487543",
    ),
    // cni_binary_checksums.amd64."1.8.0"
    (
        Component::CniPlugins,
        "1.8.0",
        Algo::Sha256,
        "ab3bda535f9d90766cccc90d3dddb5482003dd744d7f22bcf98186bf8eea8be6",
    ),
    // crictl_checksums.amd64."1.34.0"
    (
        Component::Crictl,
        "1.34.0",
        Algo::Sha256,
        "a8ff2a3edb37a98daf3aba7c3b284fe0aa5bff24166d896ab9ef64c8913c9f51",
    ),
    // kubelet_checksums.amd64."1.34.2"
    (
        Component::Kubelet,
        "1.34.2",
        Algo::Sha256,
        "9c5e717b774ee9b9285ce47e7d2150c29e84837eb19a7eaa24b60b1543c9d58f",
    ),
    // kubectl_checksums.amd64."1.34.2"
    (
        Component::Kubectl,
        "1.34.2",
        Algo::Sha256,
        "9591f3d75e1581f3f7392e6ad119aab2f28ae7d6c6e083dc5d22469667f27253",
    ),
    // CHANGELOG-1.34.md, v1.34.2, Server Binaries, kubernetes-server-linux-amd64.tar.gz (sha512)
    (
        Component::KubernetesServer,
        "1.34.2",
        Algo::Sha512,
        "016b09cb70b4335201095b96cd564059eece9ece9e945e045b4558afa9dbd99840cd7a48ed6c06a888276c939c8dc30afc8a7435689c9efd295a9f9de1f477c3",
    ),
    // Kubernetes v1.36.0 release. SHA-256 rows: kubespray 46dbdd39 (2026-08-21),
    // `roles/kubespray_defaults/vars/main/checksums.yml` (kubelet/kubectl 1.36.0 added in
    // 28bdeb85, "Support Kubernetes v1.36.0").
    // etcd_binary_checksums.amd64."3.6.14"
    (
        Component::Etcd,
        "3.6.14",
        Algo::Sha256,
        "ffe840ff9295808e88cce2794a18a5ac87f12a5203c8314d0bf6aa119b41bac5",
    ),
    // containerd_archive_checksums.amd64."2.3.4"
    (
        Component::Containerd,
        "2.3.4",
        Algo::Sha256,
        "9d68969855fbf676cdb8ed758e420fb048d61f984f61de3e53eddfebe484d168",
    ),
    // runc_checksums.amd64."1.4.3"
    (
        Component::Runc,
        "1.4.3",
        Algo::Sha256,
        "f6ae8efc0fa40079e1475e97cbe9d1bd3f106a28d6af78a11d9f1bd565515e60",
    ),
    // cni_binary_checksums.amd64."1.9.1"
    (
        Component::CniPlugins,
        "1.9.1",
        Algo::Sha256,
        "b98f74a0f8522f0a83867178729c1aa70f2158f90c45a2ca8fa791db1c76b303",
    ),
    // crictl_checksums.amd64."1.36.0"
    (
        Component::Crictl,
        "1.36.0",
        Algo::Sha256,
        "83855e114566a8a8c44c548d515670f51de3a5e1da8b2effb59870e2f10c25a3",
    ),
    // kubelet_checksums.amd64."1.36.0"
    (
        Component::Kubelet,
        "1.36.0",
        Algo::Sha256,
        "d857082946c28493e8fdc52227feabd962e0e0900b6c6e4f6510168043b79dd4",
    ),
    // kubectl_checksums.amd64."1.36.0"
    (
        Component::Kubectl,
        "1.36.0",
        Algo::Sha256,
        "123d8c8844f46b1244c547fffb3c17180c0c26dac9890589fe7e67763298748e",
    ),
    // CHANGELOG-1.36.md, v1.36.0, Server Binaries, kubernetes-server-linux-amd64.tar.gz (sha512)
    (
        Component::KubernetesServer,
        "1.36.0",
        Algo::Sha512,
        "1c64da92575451c2c7ff97c79b772e603995f8e76da1371a6b0746aaa27b65dce81c4d734cbb50f40e71486a8e08df36f14e12974f97d4d29e41f23a172a6a25",
    ),
];
/// The pinned digest of `component` at `version` (with or without a leading `v`).
pub fn pinned(component: Component, version: &str) -> Option<Digest> {
    let bare = version.trim_start_matches('v');
    PINS.iter()
        .find(|(c, v, _, _)| *c == component && *v == bare)
        .map(|(_, _, algo, hex)| match algo {
            Algo::Sha256 => Digest::Sha256((*hex).to_string()),
            Algo::Sha512 => Digest::Sha512((*hex).to_string()),
        })
        .or_else(|| super::site_rows::pinned(component, bare))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_well_formed_and_unique() {
        let mut seen = std::collections::BTreeSet::new();
        for (c, v, algo, hex) in PINS {
            assert!(seen.insert((*c, *v)), "{c} {v} pinned twice");
            let len = match algo {
                Algo::Sha256 => 64,
                Algo::Sha512 => 128,
            };
            assert_eq!(hex.len(), len, "{c} {v}");
            assert!(hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()));
        }
        assert!(pinned(Component::Etcd, "v3.6.5").is_some());
        assert!(pinned(Component::Etcd, "3.4.23").is_none());
    }
}
