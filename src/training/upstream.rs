//! The upstream kustomize trees of the training stack as pinned artifacts.
//!
//! Each component is a subtree of an upstream repository at a release tag, fetched file by file
//! from `https://raw.githubusercontent.com/<org>/<repo>/<tag>/<path>` through the artifact source
//! (so a mirror holds them at `<mirror>/raw.githubusercontent.com/<org>/<repo>/<tag>/<path>`).
//! Every file is pinned by SHA-256 (`upstream-files.txt`, generated with `sha256sum` over the
//! release trees), verified into the digest-named cache, then laid out as a tree under
//! `$K8SFORGE_HOME/cache/trees/<host>/<path>` for kustomize to read. A file whose bytes differ
//! from its pin is refused, whatever the mirror says.

use std::path::{Path, PathBuf};

use crate::artifacts::source::{ArtifactError, Mirror};
use crate::artifacts::Digest;

/// Host of every upstream file of the training stack.
pub const HOST: &str = "raw.githubusercontent.com";

/// `<host>/<path> <sha256>` per line (comments start with `#`).
const PINNED_FILES: &str = include_str!("upstream-files.txt");

/// One upstream kustomize tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tree {
    /// kubeflow/trainer v1.9.4 (training-operator v1: PyTorchJob, TFJob, MPIJob, …).
    TrainingOperator,
    /// kubeflow/trainer v2.3.0 (TrainJob, TrainingRuntime, ClusterTrainingRuntime).
    Trainer,
    /// kubernetes-sigs/kueue v0.19.2.
    Kueue,
    /// kubernetes-sigs/jobset v0.12.0 (Trainer v2 runs TrainJobs as JobSets).
    JobSet,
}

impl Tree {
    pub const ALL: [Tree; 4] = [
        Tree::TrainingOperator,
        Tree::Trainer,
        Tree::Kueue,
        Tree::JobSet,
    ];

    /// `org/repo`.
    pub fn repository(self) -> &'static str {
        match self {
            Tree::TrainingOperator | Tree::Trainer => "kubeflow/trainer",
            Tree::Kueue => "kubernetes-sigs/kueue",
            Tree::JobSet => "kubernetes-sigs/jobset",
        }
    }

    pub fn tag(self) -> &'static str {
        match self {
            Tree::TrainingOperator => "v1.9.4",
            Tree::Trainer => "v2.3.0",
            Tree::Kueue => "v0.19.2",
            Tree::JobSet => "v0.12.0",
        }
    }

    /// The commit the tag names (for the record; the pins are what is checked).
    pub fn commit(self) -> &'static str {
        match self {
            Tree::TrainingOperator => "4445c12aa62e4345b0c2c6ac9b215a70eca46ed7",
            Tree::Trainer => "658725bdae5c7e3a0854d93ac6ff492e109a22ab",
            Tree::Kueue => "8eab68778fc1b52affe165fdf5af29d1e9b4f3cb",
            Tree::JobSet => "f22e565ac3cc3265c7c45ef67ecffdc689af5d77",
        }
    }

    /// The subtree k8sforge uses, relative to the repository root.
    pub fn subtree(self) -> &'static str {
        match self {
            Tree::TrainingOperator | Tree::Trainer => "manifests",
            Tree::Kueue | Tree::JobSet => "config",
        }
    }

    /// `<host>/<org>/<repo>/<tag>`: the tree's root in a mirror and in the local tree cache.
    pub fn root(self) -> String {
        format!("{HOST}/{}/{}", self.repository(), self.tag())
    }

    /// Every pinned file of this tree: (path under the host, digest).
    pub fn files(self) -> Vec<(&'static str, Digest)> {
        let prefix = format!("{}/{}/", self.root(), self.subtree());
        pinned_files()
            .filter(|(p, _)| p.starts_with(&prefix))
            .collect()
    }
}

impl std::fmt::Display for Tree {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}", self.repository(), self.tag())
    }
}

fn pinned_files() -> impl Iterator<Item = (&'static str, Digest)> {
    crate::artifacts::pinned_tree::parse_pins(PINNED_FILES)
}

/// A tree laid out on local disk, ready for kustomize.
#[derive(Debug, Clone)]
pub struct LocalTree {
    pub tree: Tree,
    /// `<cache>/trees`: holds `<host>/<org>/<repo>/<tag>/…`.
    pub base: PathBuf,
    pub files: usize,
    /// Files read from the artifact source on this call (0 when everything was cached).
    pub fetched: usize,
}

impl LocalTree {
    /// The directory of `rel` (e.g. `manifests/overlays/standalone`) inside the tree.
    pub fn dir(&self, rel: &str) -> PathBuf {
        self.base.join(self.tree.root()).join(rel)
    }
}

/// Fetch every pinned file of `tree` from `mirror` into the cache under `home` (verified), and
/// lay the tree out under `<cache>/trees`. Files already there with the pinned digest are left
/// alone; anything else at a file's place is replaced.
pub fn materialize(home: &Path, mirror: &Mirror, tree: Tree) -> Result<LocalTree, ArtifactError> {
    let files = tree.files();
    let laid = crate::artifacts::pinned_tree::lay_out(home, mirror, &files)?;
    Ok(LocalTree {
        tree,
        base: laid.base,
        files: files.len(),
        fetched: laid.fetched,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_tree_has_pinned_files_and_every_pin_belongs_to_a_tree() {
        let mut total = 0;
        for t in Tree::ALL {
            let files = t.files();
            assert!(
                files.iter().any(|(p, _)| p.ends_with("kustomization.yaml")),
                "{t}"
            );
            total += files.len();
        }
        assert_eq!(total, pinned_files().count());
        assert_eq!(Tree::TrainingOperator.files().len(), 21);
        assert_eq!(Tree::Trainer.files().len(), 48);
        assert_eq!(Tree::Kueue.files().len(), 146);
        assert_eq!(Tree::JobSet.files().len(), 48);
    }
}
