//! Pinned versions of everything k8sforge installs, where each comes from, and how it lands on
//! a node.
//!
//! A Kubernetes version is "known" when it has a row in `RELEASES`; the profile validator offers
//! exactly these. Every artifact of a release has an upstream URL and a pinned digest
//! (`pins.rs`). `source.rs` resolves a mirror and fills the local cache, verifying digests;
//! `extract.rs` turns archives into the files nodes receive when they are pushed (delivery
//! `push`); with `fetch`/`seed` the nodes download and verify them (`phases::node_fetch`).
//! `images.rs` pins the cluster's images by digest, `registry.rs` pulls them through the
//! registry API and `crate::airgap` writes an air-gap mirror (`k8sforge mirror`).

use std::fmt;
use std::path::Path;

pub mod extract;
pub mod images;
pub mod oci_pack;
pub mod pinned_tree;
pub mod pins;
pub mod registry;
pub mod site_rows;
pub mod smoke_image;
pub mod source;
pub mod spec;

pub use extract::{extract, InstalledFile};
pub use images::{ClusterImage, ImageRefs};

/// File name of a mirror's own list (re-exported for messages).
pub const MIRROR_MANIFEST_NAME: &str = source::MIRROR_MANIFEST;
pub use source::{
    ArtifactError, ArtifactSource, ArtifactsSpec, Cache, Fetched, Mirror, ResolvedArtifact,
};

pub use images::IMAGE_DIGESTS;

/// The Kubernetes version built-in profiles pin for users: inside upstream's support window
/// (1.36 is supported until 2027-06-28, kubernetes.io/releases/1.36). v1.36.0 is the newest
/// 1.36 patch whose server-tarball SHA-512 could be read from upstream's CHANGELOG here (the
/// kubelet/kubectl sums of later patches exist, the server tarball's were not found).
pub const DEFAULT_KUBERNETES_VERSION: &str = "v1.36.0";

/// Only amd64 is pinned so far.
pub const ARCH: &str = "amd64";

/// Component versions that ship together with one Kubernetes release.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Release {
    pub kubernetes: &'static str,
    pub etcd: &'static str,
    pub containerd: &'static str,
    pub runc: &'static str,
    pub cni_plugins: &'static str,
    pub crictl: &'static str,
    pub coredns: &'static str,
    pub pause: &'static str,
}

/// Supported releases, oldest first. Each version here has a digest in `pins::PINS`
/// (a unit test checks that).
pub const RELEASES: &[Release] = &[
    // What kubespray paired with Kubernetes 1.28 when it added v1.28.7 (kubespray 082ac10f,
    // `roles/kubespray-defaults/defaults/main/download.yml`); etcd 3.5.10 is also what
    // Kubernetes itself moved to in v1.28.6 (CHANGELOG-1.28.md).
    Release {
        kubernetes: "v1.28.7",
        etcd: "v3.5.10",
        containerd: "1.7.13",
        runc: "v1.1.12",
        cni_plugins: "v1.3.0",
        crictl: "v1.28.0",
        coredns: "v1.10.1",
        pause: "3.9",
    },
    Release {
        kubernetes: "v1.34.2",
        etcd: "v3.6.5",
        containerd: "2.1.5",
        runc: "v1.3.3",
        cni_plugins: "v1.8.0",
        crictl: "v1.34.0",
        coredns: "v1.12.1",
        pause: "3.10.1",
    },
    // What kubespray pairs with Kubernetes 1.36 (kubespray 46dbdd39, 2026-08:
    // `roles/kubespray_defaults/defaults/main/download.yml` and `vars/main/main.yml`: the newest
    // etcd below 3.7, containerd, runc and CNI plugins of its checksum table, crictl 1.36,
    // `coredns_supported_versions['1.36']`, `pod_infra_supported_versions['1.36']`).
    // Kubelet 1.35+ refuses cgroup v1 hosts by default; this row renders `failCgroupV1: true`
    // for real nodes (cgroup v2), see `render::context::Features`.
    Release {
        kubernetes: "v1.36.0",
        etcd: "v3.6.14",
        containerd: "2.3.4",
        runc: "v1.4.3",
        cni_plugins: "v1.9.1",
        crictl: "v1.36.0",
        coredns: "v1.14.2",
        pause: "3.10.2",
    },
];

/// The built-in row of `kubernetes`, else a site row the profile registered (`site_rows`).
pub fn release(kubernetes: &str) -> Option<&'static Release> {
    RELEASES
        .iter()
        .find(|r| r.kubernetes == kubernetes)
        .or_else(|| site_rows::find(kubernetes))
}

pub fn known_kubernetes_versions() -> Vec<&'static str> {
    let mut v: Vec<&'static str> = RELEASES.iter().map(|r| r.kubernetes).collect();
    v.extend(site_rows::versions());
    v
}

/// `v1.34.2` → (1, 34).
pub fn minor_version(kubernetes: &str) -> Option<(u32, u32)> {
    let mut it = kubernetes.trim_start_matches('v').split('.');
    let major = it.next()?.parse().ok()?;
    let minor = it.next()?.parse().ok()?;
    Some((major, minor))
}

/// Resolve `components` of `release` against `source`, fetch each into the cache under `home`
/// (verified; a cache hit reads nothing) and extract its install files.
pub fn prepare(
    home: &Path,
    release: &Release,
    source: &ArtifactSource,
    components: &[Component],
) -> Result<Vec<(ResolvedArtifact, Vec<InstalledFile>)>, ArtifactError> {
    let cache = Cache::new(home);
    let mut out = Vec::new();
    for art in source::resolve(release, source, components)? {
        let fetched = cache.fetch(&art, &source.mirror)?;
        let files = extract(&cache, &art, &fetched.path)?;
        out.push((art, files));
    }
    Ok(out)
}

/// One downloadable thing. Versions are written as upstream tags them (`v3.6.5`, `2.1.5`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Component {
    Etcd,
    Containerd,
    Runc,
    CniPlugins,
    Crictl,
    /// `kubernetes-server-linux-amd64.tar.gz`: apiserver, controller-manager, scheduler, proxy.
    KubernetesServer,
    Kubelet,
    Kubectl,
}

impl Component {
    pub const ALL: [Component; 8] = [
        Component::Etcd,
        Component::Containerd,
        Component::Runc,
        Component::CniPlugins,
        Component::Crictl,
        Component::KubernetesServer,
        Component::Kubelet,
        Component::Kubectl,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Component::Etcd => "etcd",
            Component::Containerd => "containerd",
            Component::Runc => "runc",
            Component::CniPlugins => "cni-plugins",
            Component::Crictl => "crictl",
            Component::KubernetesServer => "kubernetes-server",
            Component::Kubelet => "kubelet",
            Component::Kubectl => "kubectl",
        }
    }

    pub fn from_name(name: &str) -> Option<Component> {
        Component::ALL.into_iter().find(|c| c.name() == name)
    }

    /// The version of this component in `release`.
    pub fn version_in(self, r: &Release) -> &'static str {
        match self {
            Component::Etcd => r.etcd,
            Component::Containerd => r.containerd,
            Component::Runc => r.runc,
            Component::CniPlugins => r.cni_plugins,
            Component::Crictl => r.crictl,
            Component::KubernetesServer | Component::Kubelet | Component::Kubectl => r.kubernetes,
        }
    }

    /// Upstream release URL (the same paths kubespray downloads).
    pub fn url(self, version: &str) -> String {
        let bare = version.trim_start_matches('v');
        match self {
            Component::Etcd => format!(
                "https://github.com/etcd-io/etcd/releases/download/v{bare}/etcd-v{bare}-linux-{ARCH}.tar.gz"
            ),
            Component::Containerd => format!(
                "https://github.com/containerd/containerd/releases/download/v{bare}/containerd-{bare}-linux-{ARCH}.tar.gz"
            ),
            Component::Runc => format!(
                "https://github.com/opencontainers/runc/releases/download/v{bare}/runc.{ARCH}"
            ),
            Component::CniPlugins => format!(
                "https://github.com/containernetworking/plugins/releases/download/v{bare}/cni-plugins-linux-{ARCH}-v{bare}.tgz"
            ),
            Component::Crictl => format!(
                "https://github.com/kubernetes-sigs/cri-tools/releases/download/v{bare}/crictl-v{bare}-linux-{ARCH}.tar.gz"
            ),
            Component::KubernetesServer => {
                format!("https://dl.k8s.io/v{bare}/kubernetes-server-linux-{ARCH}.tar.gz")
            }
            Component::Kubelet => {
                format!("https://dl.k8s.io/release/v{bare}/bin/linux/{ARCH}/kubelet")
            }
            Component::Kubectl => {
                format!("https://dl.k8s.io/release/v{bare}/bin/linux/{ARCH}/kubectl")
            }
        }
    }

    /// How the download becomes files on a node.
    pub fn layout(self, version: &str) -> Layout {
        let bare = version.trim_start_matches('v');
        let f = |archive: String, dest: &str, required: bool| Entry {
            archive,
            dest: dest.to_string(),
            required,
        };
        match self {
            Component::Etcd => {
                let dir = format!("etcd-v{bare}-linux-{ARCH}");
                Layout::Archive(vec![
                    f(format!("{dir}/etcd"), "/usr/local/bin/etcd", true),
                    f(format!("{dir}/etcdctl"), "/usr/local/bin/etcdctl", true),
                    // etcdutl exists from 3.5 on.
                    f(format!("{dir}/etcdutl"), "/usr/local/bin/etcdutl", false),
                ])
            }
            Component::Containerd => Layout::ArchiveDir {
                prefix: "bin/".into(),
                dest_dir: "/usr/local/bin".into(),
            },
            Component::Runc => Layout::Binary {
                dest: "/usr/local/sbin/runc".into(),
            },
            Component::CniPlugins => Layout::ArchiveDir {
                prefix: String::new(),
                dest_dir: "/opt/cni/bin".into(),
            },
            Component::Crictl => {
                Layout::Archive(vec![f("crictl".into(), "/usr/local/bin/crictl", true)])
            }
            Component::KubernetesServer => Layout::Archive(
                [
                    "kube-apiserver",
                    "kube-controller-manager",
                    "kube-scheduler",
                    "kube-proxy",
                ]
                .iter()
                .map(|b| {
                    f(
                        format!("kubernetes/server/bin/{b}"),
                        &format!("/usr/local/bin/{b}"),
                        true,
                    )
                })
                .collect(),
            ),
            Component::Kubelet => Layout::Binary {
                dest: "/usr/local/bin/kubelet".into(),
            },
            Component::Kubectl => Layout::Binary {
                dest: "/usr/local/bin/kubectl".into(),
            },
        }
    }
}

impl fmt::Display for Component {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One file taken from an archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path inside the archive (without a leading `./`).
    pub archive: String,
    /// Absolute install path on the node.
    pub dest: String,
    pub required: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// The download is the executable itself.
    Binary { dest: String },
    /// Named files of a .tar.gz.
    Archive(Vec<Entry>),
    /// Every regular file directly under `prefix` in a .tar.gz, into `dest_dir`.
    ArchiveDir { prefix: String, dest_dir: String },
}

/// An expected digest. Most upstreams publish SHA-256; Kubernetes publishes SHA-512 for its
/// release tarballs.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Digest {
    Sha256(String),
    Sha512(String),
}

impl Digest {
    pub fn hex(&self) -> &str {
        match self {
            Digest::Sha256(h) | Digest::Sha512(h) => h,
        }
    }

    pub fn algorithm(&self) -> &'static str {
        match self {
            Digest::Sha256(_) => "sha256",
            Digest::Sha512(_) => "sha512",
        }
    }

    /// Parse `sha256:<64 hex>` / `sha512:<128 hex>` or a bare 64-hex SHA-256.
    pub fn parse(s: &str) -> Option<Digest> {
        let s = s.trim();
        let (algo, hex) = s.split_once(':').unwrap_or(("sha256", s));
        let ok = |n: usize| hex.len() == n && hex.bytes().all(|b| b.is_ascii_hexdigit());
        match algo {
            "sha256" if ok(64) => Some(Digest::Sha256(hex.to_ascii_lowercase())),
            "sha512" if ok(128) => Some(Digest::Sha512(hex.to_ascii_lowercase())),
            _ => None,
        }
    }
}

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.algorithm(), self.hex())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_release_artifact_is_pinned() {
        for r in RELEASES {
            for c in Component::ALL {
                let v = c.version_in(r);
                assert!(
                    pins::pinned(c, v).is_some(),
                    "{} {} of release {} has no pinned digest",
                    c,
                    v,
                    r.kubernetes
                );
            }
        }
        assert!(release(DEFAULT_KUBERNETES_VERSION).is_some());
    }

    #[test]
    fn urls_follow_upstream_release_paths() {
        assert_eq!(
            Component::Etcd.url("v3.4.23"),
            "https://github.com/etcd-io/etcd/releases/download/v3.4.23/etcd-v3.4.23-linux-amd64.tar.gz"
        );
        assert_eq!(
            Component::Containerd.url("1.6.20"),
            "https://github.com/containerd/containerd/releases/download/v1.6.20/containerd-1.6.20-linux-amd64.tar.gz"
        );
        assert_eq!(
            Component::Runc.url("v1.1.5"),
            "https://github.com/opencontainers/runc/releases/download/v1.1.5/runc.amd64"
        );
        assert_eq!(
            Component::CniPlugins.url("v1.1.1"),
            "https://github.com/containernetworking/plugins/releases/download/v1.1.1/cni-plugins-linux-amd64-v1.1.1.tgz"
        );
        assert_eq!(
            Component::Kubelet.url("v1.34.2"),
            "https://dl.k8s.io/release/v1.34.2/bin/linux/amd64/kubelet"
        );
    }

    #[test]
    fn digests_parse_strictly() {
        let h = "a".repeat(64);
        assert_eq!(Digest::parse(&h), Some(Digest::Sha256(h.clone())));
        assert_eq!(
            Digest::parse(&format!("sha256:{h}")).unwrap().to_string(),
            format!("sha256:{h}")
        );
        assert!(Digest::parse("sha256:abc").is_none());
        assert!(Digest::parse(&format!("md5:{h}")).is_none());
        assert!(Digest::parse(&format!("sha512:{}", "b".repeat(128))).is_some());
    }
}
