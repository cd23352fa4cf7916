//! The Bundle: per node, every file it will receive (path, mode, owner, content) and the ordered
//! commands and units to start. Written to disk by `plan --out DIR` as
//! `DIR/<node>/files/<absolute path>`, `DIR/<node>/manifest.json` and `DIR/<node>/commands.sh`.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use rayon::prelude::*;

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
    ///
    /// Nodes are written in parallel, and durability is batched: a changed file goes to a temp
    /// file next to its target (a new file straight to its path), one `syncfs` makes them all
    /// durable, then temp files are renamed into place and a second `syncfs` makes the renames
    /// durable. A crash leaves each existing file either old or new, as with per-file fsync, at
    /// two flushes instead of one per file (15,000 for gpu-1000: over a minute on this disk).
    pub fn write_to(&self, out: &Path) -> std::io::Result<WriteReport> {
        fsutil::ensure_dir(out, fsutil::PRIVATE_DIR)?;
        let staged: Vec<NodeWrite> = self
            .nodes
            .par_iter()
            .map(|(node, nb)| stage_node(&out.join(node), node, nb))
            .collect::<std::io::Result<_>>()?;
        let mut report = WriteReport::default();
        let renames: Vec<&(PathBuf, PathBuf)> =
            staged.iter().flat_map(|s| s.renames.iter()).collect();
        if staged
            .iter()
            .any(|s| s.changed > 0 || !s.renames.is_empty())
        {
            let finish = || -> std::io::Result<()> {
                fsutil::sync_filesystem(out)?;
                for (tmp, target) in &renames {
                    std::fs::rename(tmp, target)?;
                }
                fsutil::sync_filesystem(out)
            };
            if let Err(e) = finish() {
                for (tmp, _) in &renames {
                    let _ = std::fs::remove_file(tmp);
                }
                return Err(e);
            }
        }
        for s in &staged {
            report.files += s.files;
            report.changed += s.changed;
        }
        Ok(report)
    }
}

/// What staging one node produced: temp files to rename over their targets.
struct NodeWrite {
    files: usize,
    changed: usize,
    renames: Vec<(PathBuf, PathBuf)>,
    /// Anything written (files, manifest or script): a flush is needed.
    dirty: bool,
    /// Directories known to exist, to skip repeated create_dir_all walks.
    dirs: std::collections::HashSet<PathBuf>,
}

/// Create `target` with `mode` from the start (never wider), without fsync (batched by caller).
fn write_new(target: &Path, bytes: &[u8], mode: u32) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(mode)
        .open(target)?;
    // The umask may have narrowed the mode given to open.
    f.set_permissions(std::fs::Permissions::from_mode(mode))?;
    f.write_all(bytes)
}

impl NodeWrite {
    /// Stage `bytes` for `target` unless it already holds them (then only fix the mode). A
    /// target that does not exist yet is written in place: there is no old version to protect,
    /// and a torn file from a crash differs from the bundle, so the next run rewrites it.
    fn stage(&mut self, target: &Path, bytes: &[u8], mode: u32) -> std::io::Result<bool> {
        match std::fs::read(target) {
            Ok(existing) if existing == bytes => {
                let meta = std::fs::metadata(target)?;
                if meta.permissions().mode() & 0o7777 != mode {
                    std::fs::set_permissions(target, std::fs::Permissions::from_mode(mode))?;
                }
                Ok(false)
            }
            Ok(_) => {
                let tmp = fsutil::write_temp(target, bytes, mode)?;
                self.renames.push((tmp, target.to_path_buf()));
                self.dirty = true;
                Ok(true)
            }
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                if let Some(parent) = target.parent() {
                    if !self.dirs.contains(parent) {
                        std::fs::create_dir_all(parent)?;
                        self.dirs.insert(parent.to_path_buf());
                    }
                }
                write_new(target, bytes, mode)?;
                self.dirty = true;
                Ok(true)
            }
            Err(e) => Err(e),
        }
    }
}

fn stage_node(node_dir: &Path, node: &str, nb: &NodeBundle) -> std::io::Result<NodeWrite> {
    let mut w = NodeWrite {
        files: 0,
        changed: 0,
        renames: Vec::new(),
        dirty: false,
        dirs: std::collections::HashSet::new(),
    };
    let result = (|| {
        for f in &nb.files {
            let target = node_dir.join("files").join(f.path.trim_start_matches('/'));
            let mode = if f.is_secret() {
                fsutil::SECRET
            } else {
                fsutil::PUBLIC
            };
            w.files += 1;
            if w.stage(&target, &f.content, mode)? {
                w.changed += 1;
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
        w.stage(&node_dir.join("manifest.json"), &json, fsutil::PUBLIC)?;
        let mut script = String::from("#!/bin/sh\n# Commands run on this node after its files are in place, in order.\nset -eu\n");
        for c in &nb.commands {
            script.push_str(c);
            script.push('\n');
        }
        w.stage(&node_dir.join("commands.sh"), script.as_bytes(), 0o755)?;
        Ok(())
    })();
    match result {
        Ok(()) => Ok(w),
        Err(e) => {
            for (tmp, _) in &w.renames {
                let _ = std::fs::remove_file(tmp);
            }
            Err(e)
        }
    }
}
