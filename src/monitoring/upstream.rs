//! kube-prometheus's plain per-release manifests (`manifests/`, `manifests/setup/`) as pinned
//! artifacts: fetched file by file from `https://raw.githubusercontent.com/prometheus-operator/
//! kube-prometheus/<tag>/manifests/…` through the artifact source (a mirror holds them at
//! `<mirror>/raw.githubusercontent.com/prometheus-operator/kube-prometheus/<tag>/…`), every file
//! pinned by SHA-256 (`kube-prometheus-files.txt`), laid out under `<cache>/trees`.
//!
//! Which release goes with which Kubernetes is kube-prometheus's own compatibility matrix (its
//! README at each tag): release-0.14 supports 1.26–1.31, release-0.18 supports 1.33–1.36.

use std::path::{Path, PathBuf};

use crate::artifacts::source::{ArtifactError, Mirror};
use crate::artifacts::Digest;

pub const HOST: &str = "raw.githubusercontent.com";
pub const REPOSITORY: &str = "prometheus-operator/kube-prometheus";

const PINNED_FILES: &str = include_str!("kube-prometheus-files.txt");

/// A pinned kube-prometheus release.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Release {
    /// v0.14.0: prometheus-operator v0.76.2, Prometheus 2.54.1, Grafana 11.2.0.
    V0_14,
    /// v0.18.0.
    V0_18,
}

impl Release {
    pub const ALL: [Release; 2] = [Release::V0_14, Release::V0_18];

    pub fn tag(self) -> &'static str {
        match self {
            Release::V0_14 => "v0.14.0",
            Release::V0_18 => "v0.18.0",
        }
    }

    /// The commit the tag names (for the record; the pins are what is checked).
    pub fn commit(self) -> &'static str {
        match self {
            Release::V0_14 => "e02554298cb62b5533f3407c8eacc664e80bc74b",
            Release::V0_18 => "4775d44d1aacfab7effa08293357521a3c603b87",
        }
    }

    /// The Kubernetes minors (1.x) the release supports, inclusive.
    pub fn kubernetes_minors(self) -> (u32, u32) {
        match self {
            Release::V0_14 => (26, 31),
            Release::V0_18 => (33, 36),
        }
    }

    /// The release for a cluster of `kubernetes` (`v1.28.7`), or why there is none.
    pub fn for_kubernetes(kubernetes: &str) -> Result<Release, String> {
        let (major, minor) = crate::artifacts::minor_version(kubernetes)
            .ok_or_else(|| format!("cannot read the Kubernetes version {kubernetes:?}"))?;
        Release::ALL
            .into_iter()
            .find(|r| {
                let (lo, hi) = r.kubernetes_minors();
                major == 1 && (lo..=hi).contains(&minor)
            })
            .ok_or_else(|| {
                let supported: Vec<String> = Release::ALL
                    .iter()
                    .map(|r| {
                        let (lo, hi) = r.kubernetes_minors();
                        format!("kube-prometheus {} for v1.{lo}–v1.{hi}", r.tag())
                    })
                    .collect();
                format!(
                    "no pinned kube-prometheus release supports Kubernetes {kubernetes} (pinned: {}); \
                     set monitoring.enabled: false or choose a supported Kubernetes version",
                    supported.join(", ")
                )
            })
    }

    /// `<host>/<org>/<repo>/<tag>`: the release's root in a mirror and in the tree cache.
    pub fn root(self) -> String {
        format!("{HOST}/{REPOSITORY}/{}", self.tag())
    }

    /// Every pinned file of this release: (path under the host, digest).
    pub fn files(self) -> Vec<(&'static str, Digest)> {
        let prefix = format!("{}/manifests/", self.root());
        crate::artifacts::pinned_tree::parse_pins(PINNED_FILES)
            .filter(|(p, _)| p.starts_with(&prefix))
            .collect()
    }
}

impl std::fmt::Display for Release {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "kube-prometheus {}", self.tag())
    }
}

/// A release laid out on local disk.
#[derive(Debug, Clone)]
pub struct LocalRelease {
    pub release: Release,
    /// `<cache>/trees/<host>/<org>/<repo>/<tag>/manifests`.
    pub manifests: PathBuf,
    /// Paths of every pinned file relative to `manifests`, sorted (`setup/…` included).
    pub files: Vec<String>,
    /// Files read from the artifact source on this call (0 when everything was cached).
    pub fetched: usize,
}

/// Fetch every pinned file of `release` from `mirror` (verified) and lay it out.
pub fn materialize(
    home: &Path,
    mirror: &Mirror,
    release: Release,
) -> Result<LocalRelease, ArtifactError> {
    let files = release.files();
    let laid = crate::artifacts::pinned_tree::lay_out(home, mirror, &files)?;
    let prefix = format!("{}/manifests/", release.root());
    let mut rel: Vec<String> = files
        .iter()
        .filter_map(|(p, _)| p.strip_prefix(&prefix).map(str::to_string))
        .collect();
    rel.sort();
    Ok(LocalRelease {
        release,
        manifests: laid.base.join(release.root()).join("manifests"),
        files: rel,
        fetched: laid.fetched,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_release_is_pinned_and_every_pinned_row_of_kubernetes_has_one() {
        let total: usize = Release::ALL.iter().map(|r| r.files().len()).sum();
        assert_eq!(
            total,
            crate::artifacts::pinned_tree::parse_pins(PINNED_FILES).count()
        );
        for r in Release::ALL {
            let files = r.files();
            assert_eq!(files.len(), 95, "{r}");
            assert!(files
                .iter()
                .any(|(p, _)| p.ends_with("manifests/setup/namespace.yaml")));
        }
        assert_eq!(Release::for_kubernetes("v1.28.7"), Ok(Release::V0_14));
        assert_eq!(Release::for_kubernetes("v1.34.2"), Ok(Release::V0_18));
        assert_eq!(Release::for_kubernetes("v1.36.0"), Ok(Release::V0_18));
        for k in crate::artifacts::known_kubernetes_versions() {
            assert!(Release::for_kubernetes(k).is_ok(), "{k}");
        }
        let e = Release::for_kubernetes("v1.32.1").unwrap_err();
        assert!(
            e.contains("v1.32.1") && e.contains("v0.14.0 for v1.26–v1.31"),
            "{e}"
        );
    }
}
