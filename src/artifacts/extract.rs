//! Turn a verified download into the files a node receives: the binaries of an archive, each
//! with its install path and sha256, extracted once into `cache/extracted/<digest>/` (atomic:
//! a temp directory renamed into place) and streamed to nodes by the remote sync (`remote::SyncFile::from_installed`).

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};

use super::source::{ArtifactError, Cache, ResolvedArtifact};
use super::{Digest, Layout};

/// Mode of installed executables.
const EXEC_MODE: u32 = 0o755;

/// One file to install on nodes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InstalledFile {
    /// Absolute path on the node.
    pub path: String,
    pub mode: u32,
    pub sha256: String,
    /// The extracted file in the local cache.
    pub local: PathBuf,
}

impl InstalledFile {
    /// File name on the node (`etcd`, `bridge`, …).
    pub fn name(&self) -> &str {
        self.path.rsplit('/').next().unwrap_or(&self.path)
    }
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactError + '_ {
    move |source| ArtifactError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn sha256_file(path: &Path) -> Result<String, ArtifactError> {
    let mut f = std::fs::File::open(path).map_err(io_err(path))?;
    let mut h = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f.read(&mut buf).map_err(io_err(path))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}

const INDEX: &str = "k8sforge-extracted.json";

/// The install files of `art`, whose verified download is `download`.
pub fn extract(
    cache: &Cache,
    art: &ResolvedArtifact,
    download: &Path,
) -> Result<Vec<InstalledFile>, ArtifactError> {
    let layout = art.component.layout(&art.version);
    if let Layout::Binary { dest } = &layout {
        // The download is the binary: install it straight from the cache.
        let sha256 = match &art.digest {
            Digest::Sha256(h) => h.clone(),
            Digest::Sha512(_) => sha256_file(download)?,
        };
        return Ok(vec![InstalledFile {
            path: dest.clone(),
            mode: EXEC_MODE,
            sha256,
            local: download.to_path_buf(),
        }]);
    }
    let final_dir = cache.root.join("extracted").join(art.digest.hex());
    let index = final_dir.join(INDEX);
    if let Ok(bytes) = std::fs::read(&index) {
        if let Ok(files) = serde_json::from_slice::<Vec<InstalledFile>>(&bytes) {
            return Ok(files);
        }
    }
    let parent = cache.root.join("extracted");
    std::fs::create_dir_all(&parent).map_err(io_err(&parent))?;
    let tmp = tempfile::Builder::new()
        .prefix(".extract-")
        .tempdir_in(&parent)
        .map_err(io_err(&parent))?;
    let archive_name = art.file_name().to_string();
    let arch_err = |reason: String| ArtifactError::Archive {
        archive: archive_name.clone(),
        reason,
    };

    let f = std::fs::File::open(download).map_err(io_err(download))?;
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    let mut found: BTreeMap<String, (String, String)> = BTreeMap::new(); // dest → (sha, rel)
    let entries = ar.entries().map_err(|e| arch_err(e.to_string()))?;
    for entry in entries {
        let mut entry = entry.map_err(|e| arch_err(e.to_string()))?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let raw = entry
            .path()
            .map_err(|e| arch_err(e.to_string()))?
            .to_string_lossy()
            .to_string();
        let name = raw.trim_start_matches("./").to_string();
        let dest = match &layout {
            Layout::Archive(list) => list
                .iter()
                .find(|e| e.archive == name)
                .map(|e| e.dest.clone()),
            Layout::ArchiveDir { prefix, dest_dir } => name
                .strip_prefix(prefix.as_str())
                .filter(|rest| !rest.is_empty() && !rest.contains('/'))
                .map(|rest| format!("{dest_dir}/{rest}")),
            Layout::Binary { .. } => None,
        };
        let Some(dest) = dest else { continue };
        let rel = dest.trim_start_matches('/').to_string();
        let out_path = tmp.path().join(&rel);
        if let Some(p) = out_path.parent() {
            std::fs::create_dir_all(p).map_err(io_err(p))?;
        }
        let mut out = std::fs::File::create(&out_path).map_err(io_err(&out_path))?;
        let mut h = Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = entry
                .read(&mut buf)
                .map_err(|e| arch_err(format!("{name}: {e}")))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            out.write_all(&buf[..n]).map_err(io_err(&out_path))?;
        }
        out.sync_all().map_err(io_err(&out_path))?;
        found.insert(dest, (hex::encode(h.finalize()), rel));
    }
    if let Layout::Archive(list) = &layout {
        for e in list.iter().filter(|e| e.required) {
            if !found.contains_key(&e.dest) {
                return Err(arch_err(format!("has no {}", e.archive)));
            }
        }
    }
    if found.is_empty() {
        return Err(arch_err("contains none of the expected files".into()));
    }
    let files: Vec<InstalledFile> = found
        .into_iter()
        .map(|(dest, (sha256, rel))| InstalledFile {
            path: dest,
            mode: EXEC_MODE,
            sha256,
            local: final_dir.join(rel),
        })
        .collect();
    let json = serde_json::to_vec_pretty(&files).map_err(|e| arch_err(e.to_string()))?;
    std::fs::write(tmp.path().join(INDEX), json).map_err(io_err(tmp.path()))?;
    let tmp_path = tmp.keep();
    if final_dir.exists() && !final_dir.join(INDEX).is_file() {
        // Left by an interrupted run from before the atomic rename existed: replace it.
        let _ = std::fs::remove_dir_all(&final_dir);
    }
    if let Err(e) = std::fs::rename(&tmp_path, &final_dir) {
        let _ = std::fs::remove_dir_all(&tmp_path);
        // Another run extracted it first: use theirs.
        if !final_dir.join(INDEX).is_file() {
            return Err(ArtifactError::Io {
                path: final_dir,
                source: e,
            });
        }
    }
    Ok(files)
}
