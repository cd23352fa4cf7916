//! One checkpoint file per completed epoch, written by rank 0 (write a temporary file, fsync,
//! rename, fsync the directory: a crash leaves the previous checkpoint intact), and resume from
//! the newest valid one.
//!
//! File `epoch-NNNNNN.ckpt`: `K8SFCKP1`, epoch u32, world u32, n u32, then n u64 (little endian).

use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 8] = b"K8SFCKP1";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checkpoint {
    /// The last completed epoch.
    pub epoch: u32,
    pub world: u32,
    /// The training state: the element-wise sum of every epoch's all-reduce result.
    pub state: Vec<u64>,
}

pub fn file_name(epoch: u32) -> String {
    format!("epoch-{epoch:06}.ckpt")
}

pub fn save(dir: &Path, c: &Checkpoint) -> Result<PathBuf, String> {
    let path = dir.join(file_name(c.epoch));
    let tmp = dir.join(format!(".{}.tmp", file_name(c.epoch)));
    let mut bytes = MAGIC.to_vec();
    for x in [c.epoch, c.world, c.state.len() as u32] {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    for x in &c.state {
        bytes.extend_from_slice(&x.to_le_bytes());
    }
    let err = |e: std::io::Error| format!("writing checkpoint {}: {e}", path.display());
    let mut f = fs::File::create(&tmp).map_err(err)?;
    f.write_all(&bytes).map_err(err)?;
    f.sync_all().map_err(err)?;
    fs::rename(&tmp, &path).map_err(err)?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(path)
}

fn load(path: &Path) -> Result<Checkpoint, String> {
    let b = fs::read(path).map_err(|e| e.to_string())?;
    if b.len() < 20 || &b[..8] != MAGIC {
        return Err("not a smoke checkpoint".into());
    }
    let u = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
    let (epoch, world, n) = (u(8), u(12), u(16) as usize);
    if b.len() != 20 + n * 8 {
        return Err(format!("truncated: {} bytes for {n} elements", b.len()));
    }
    let state = b[20..]
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect();
    Ok(Checkpoint {
        epoch,
        world,
        state,
    })
}

/// The newest valid checkpoint in `dir` (None: none yet). Unreadable ones are reported on
/// stderr and skipped, so a damaged newest file falls back to the one before.
pub fn latest(dir: &Path) -> Result<Option<(PathBuf, Checkpoint)>, String> {
    let entries =
        fs::read_dir(dir).map_err(|e| format!("checkpoint directory {}: {e}", dir.display()))?;
    let mut names: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("epoch-") && n.ends_with(".ckpt"))
        })
        .collect();
    names.sort();
    for p in names.into_iter().rev() {
        match load(&p) {
            Ok(c) => return Ok(Some((p, c))),
            Err(e) => eprintln!("skipping checkpoint {}: {e}", p.display()),
        }
    }
    Ok(None)
}
