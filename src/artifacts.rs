//! Pinned versions of everything k8sforge installs.
//!
//! A Kubernetes version is "known" when it has a row here; the profile validator offers exactly
//! these. Download URLs, SHA-256 sums, mirror resolution and the cache build on this table.

/// The Kubernetes version built-in profiles pin for users.
pub const DEFAULT_KUBERNETES_VERSION: &str = "v1.34.2";

/// Component versions that ship together with one Kubernetes release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Release {
    pub kubernetes: &'static str,
    pub etcd: &'static str,
    pub containerd: &'static str,
    pub runc: &'static str,
    pub cni_plugins: &'static str,
    pub coredns: &'static str,
    pub pause: &'static str,
}

/// Supported releases, oldest first.
pub const RELEASES: &[Release] = &[
    Release {
        kubernetes: "v1.28.7",
        etcd: "v3.5.10",
        containerd: "1.7.13",
        runc: "v1.1.12",
        cni_plugins: "v1.4.0",
        coredns: "v1.10.1",
        pause: "3.9",
    },
    Release {
        kubernetes: "v1.34.2",
        etcd: "v3.6.5",
        containerd: "2.1.5",
        runc: "v1.3.3",
        cni_plugins: "v1.8.0",
        coredns: "v1.12.1",
        pause: "3.10.1",
    },
];

pub fn release(kubernetes: &str) -> Option<&'static Release> {
    RELEASES.iter().find(|r| r.kubernetes == kubernetes)
}

pub fn known_kubernetes_versions() -> Vec<&'static str> {
    RELEASES.iter().map(|r| r.kubernetes).collect()
}

/// `v1.34.2` → (1, 34).
pub fn minor_version(kubernetes: &str) -> Option<(u32, u32)> {
    let mut it = kubernetes.trim_start_matches('v').split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}
