//! The Bundle: per node, every file it will receive (path, mode, owner, content) and the ordered
//! commands and units to start. Written to disk by `plan --out DIR` as
//! `DIR/<node>/files/<absolute path>`, `DIR/<node>/manifest.json` and `DIR/<node>/commands.sh`.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;
use sha2::{Digest, Sha256};

use crate::fsutil;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct BundleFile {
    /// Absolute path on the node.
    pub path: String,
    pub mode: u32,
    /// `user:group` on the node.
    pub owner: String,
    #[serde(skip)]
    pub content: Vec<u8>,
    /// Systemd units to restart when this file changes.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub restarts: Vec<String>,
}

impl BundleFile {
    pub fn sha256(&self) -> String {
        hex::encode(Sha256::digest(&self.content))
    }

    pub fn is_secret(&self) -> bool {
        self.mode & 0o077 == 0
    }
}

/// A binary the node needs installed (by the artifacts step; binaries are not in the bundle).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Binary {
    pub name: String,
    /// Absolute install path on the node.
    pub path: String,
    /// Which release artifact ships it: kubernetes, etcd, containerd, runc, cni-plugins.
    pub artifact: String,
    pub version: String,
}

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NodeBundle {
    pub files: Vec<BundleFile>,
    /// Units to enable and start, in order.
    pub units: Vec<String>,
    /// Shell commands to run after files are in place, in order.
    pub commands: Vec<String>,
    /// Binaries the node needs, sorted by path.
    pub binaries: Vec<Binary>,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Bundle {
    pub nodes: BTreeMap<String, NodeBundle>,
}

/// What writing a bundle changed on disk.
#[derive(Debug, Default, Clone, PartialEq, Eq, Serialize)]
pub struct WriteReport {
    pub files: usize,
    pub changed: usize,
}

#[derive(Serialize)]
struct ManifestEntry<'a> {
    path: &'a str,
    mode: String,
    owner: &'a str,
    sha256: String,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    restarts: &'a [String],
}

#[derive(Serialize)]
struct Manifest<'a> {
    node: &'a str,
    files: Vec<ManifestEntry<'a>>,
    units: &'a [String],
    binaries: &'a [Binary],
}

impl Bundle {
    /// sha256 of every file keyed `node/path`, to compare against the last applied state.
    pub fn digests(&self) -> BTreeMap<String, String> {
        let mut out = BTreeMap::new();
        for (node, nb) in &self.nodes {
            for f in &nb.files {
                out.insert(format!("{node}{}", f.path), f.sha256());
            }
        }
        out
    }

    pub fn file_count(&self) -> usize {
        self.nodes.values().map(|n| n.files.len()).sum()
    }

    /// Write the bundle under `out`; unchanged files are left untouched (byte-identical re-runs).
    /// Secret files keep their 0600 mode on disk as well.
    pub fn write_to(&self, out: &Path) -> std::io::Result<WriteReport> {
        fsutil::ensure_dir(out, fsutil::PRIVATE_DIR)?;
        let mut report = WriteReport::default();
        for (node, nb) in &self.nodes {
            let node_dir = out.join(node);
            for f in &nb.files {
                let rel = f.path.trim_start_matches('/');
                let target = node_dir.join("files").join(rel);
                if let Some(parent) = target.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let mode = if f.is_secret() {
                    fsutil::SECRET
                } else {
                    fsutil::PUBLIC
                };
                report.files += 1;
                if fsutil::write_if_changed(&target, &f.content, mode)? {
                    report.changed += 1;
                }
            }
            let manifest = Manifest {
                node,
                files: nb
                    .files
                    .iter()
                    .map(|f| ManifestEntry {
                        path: &f.path,
                        mode: format!("{:04o}", f.mode),
                        owner: &f.owner,
                        sha256: f.sha256(),
                        restarts: &f.restarts,
                    })
                    .collect(),
                units: &nb.units,
                binaries: &nb.binaries,
            };
            let mut json = serde_json::to_vec_pretty(&manifest).map_err(std::io::Error::other)?;
            json.push(b'\n');
            fsutil::write_if_changed(&node_dir.join("manifest.json"), &json, fsutil::PUBLIC)?;
            let mut script = String::from("#!/bin/sh\n# Commands run on this node after its files are in place, in order.\nset -eu\n");
            for c in &nb.commands {
                script.push_str(c);
                script.push('\n');
            }
            fsutil::write_if_changed(&node_dir.join("commands.sh"), script.as_bytes(), 0o755)?;
        }
        Ok(report)
    }
}
