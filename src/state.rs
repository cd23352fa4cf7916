//! The per-cluster state directory: `$K8SFORGE_HOME/<cluster>/` with `state.json`, `pki/`,
//! `known_hosts` and `bundle/`. One lock per cluster, so two runs never interleave.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use serde::{Deserialize, Serialize};

use crate::fsutil;
use crate::inventory::Inventory;

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot use state directory {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("state file {path} is corrupt: {source}\n    move it away to start over (the cluster's resources are still tagged and can be adopted)")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    /// Boxed: the holder record would make every state result large.
    #[error(transparent)]
    Locked(Box<crate::cluster_lock::LockError>),
    #[error(
        "no state for cluster {cluster} in {home}: run `k8sforge plan` or `k8sforge up` first"
    )]
    Missing { cluster: String, home: PathBuf },
}

/// `$K8SFORGE_HOME`, else `~/.k8sforge`.
pub fn default_home() -> PathBuf {
    if let Some(h) = std::env::var_os("K8SFORGE_HOME") {
        return PathBuf::from(h);
    }
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".k8sforge")
}

/// Record of one completed phase: the fingerprint of its inputs when it last succeeded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PhaseRecord {
    pub inputs: String,
    pub completed_at: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    #[serde(default)]
    pub profile_source: String,
    /// Pod CIDRs handed out so far; kept stable across node changes.
    #[serde(default)]
    pub pod_cidrs: BTreeMap<String, Ipv4Net>,
    /// Inventory from the last provision (or plan).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub inventory: Option<Inventory>,
    #[serde(default)]
    pub phases: BTreeMap<String, PhaseRecord>,
    /// sha256 of every bundle file from the last `plan`, keyed `node/path`.
    #[serde(default)]
    pub bundle_digests: BTreeMap<String, String>,
    /// sha256 of every rendered file an `up` phase installed on a node, keyed `node/path`: what
    /// the nodes hold, for `plan` to say what would change.
    #[serde(default)]
    pub applied_digests: BTreeMap<String, String>,
    /// Worker group sizes set by `node add`/`node remove`: they win over the profile's counts.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub worker_counts: BTreeMap<String, u32>,
    /// A `certs rotate` in progress: its plan and how far it got (resumed by the next run).
    /// Kept as JSON: its shape is `rotate::RotationRecord`'s, a layer above the state file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rotation: Option<serde_json::Value>,
    /// A `k8sforge upgrade` in progress (`upgrade::UpgradeRecord`, kept as JSON like `rotation`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub upgrade: Option<serde_json::Value>,
    /// The Kubernetes version the last finished `upgrade` left every node on: from then on the
    /// profile must name it (`up` refuses to move the cluster back).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<String>,
    /// Artifact files (binaries, image archives) each remote phase installed, and on which
    /// nodes: with the rendered bundle, what static-host teardown removes.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub installed_artifacts: BTreeMap<String, InstalledArtifacts>,
}

/// What one phase installed from artifacts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledArtifacts {
    pub paths: std::collections::BTreeSet<String>,
    pub nodes: std::collections::BTreeSet<String>,
}

/// The state directory of one cluster, locked for the lifetime of this value.
pub struct ClusterDir {
    pub cluster: String,
    pub root: PathBuf,
    _lock: crate::cluster_lock::ClusterLock,
}

impl ClusterDir {
    /// Open (creating with 0700) and lock `<home>/<cluster>`; fails fast if locked.
    pub fn open(home: &Path, cluster: &str) -> Result<ClusterDir, StateError> {
        let root = home.join(cluster);
        let io = |source| StateError::Io {
            path: root.clone(),
            source,
        };
        fsutil::ensure_dir(home, fsutil::PRIVATE_DIR).map_err(io)?;
        fsutil::ensure_dir(&root, fsutil::PRIVATE_DIR).map_err(io)?;
        let lock = crate::cluster_lock::ClusterLock::acquire(&root.join(".lock"), cluster)
            .map_err(|e| StateError::Locked(Box::new(e)))?;
        Ok(ClusterDir {
            cluster: cluster.to_string(),
            root,
            _lock: lock,
        })
    }

    /// Path of an existing cluster directory, without creating or locking it.
    pub fn existing(home: &Path, cluster: &str) -> Result<PathBuf, StateError> {
        let root = home.join(cluster);
        if root.join("state.json").exists() || root.join("pki").exists() {
            Ok(root)
        } else {
            Err(StateError::Missing {
                cluster: cluster.to_string(),
                home: home.to_path_buf(),
            })
        }
    }

    pub fn pki_dir(&self) -> PathBuf {
        self.root.join("pki")
    }

    pub fn state_path(&self) -> PathBuf {
        self.root.join("state.json")
    }

    pub fn load_state(&self) -> Result<State, StateError> {
        load_state_at(&self.state_path())
    }

    pub fn save_state(&self, state: &State) -> Result<(), StateError> {
        let path = self.state_path();
        let json = serde_json::to_vec_pretty(state).map_err(|source| StateError::Corrupt {
            path: path.clone(),
            source,
        })?;
        fsutil::write_if_changed(&path, &json, fsutil::SECRET)
            .map(|_| ())
            .map_err(|source| StateError::Io { path, source })
    }
}

pub fn load_state_at(path: &Path) -> Result<State, StateError> {
    match std::fs::read(path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map_err(|source| StateError::Corrupt {
            path: path.to_path_buf(),
            source,
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(State::default()),
        Err(source) => Err(StateError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}
