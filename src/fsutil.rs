//! Local file writes: atomic (temp file, fsync, rename) with an explicit mode, so a crash never
//! leaves a half-written certificate or state file and secrets are never briefly world-readable.

use std::fs::{self, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::Path;

/// Mode for private keys, tokens and anything else secret.
pub const SECRET: u32 = 0o600;
/// Mode for certificates and other public files.
pub const PUBLIC: u32 = 0o644;
/// Mode for state directories.
pub const PRIVATE_DIR: u32 = 0o700;

/// Create `dir` (and parents) and force its mode.
pub fn ensure_dir(dir: &Path, mode: u32) -> io::Result<()> {
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(mode))
}

/// Write `bytes` to `path` atomically with `mode`. The temp file is created with `mode` from the
/// start (never wider), fsynced, then renamed over the target.
pub fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let tmp = write_temp(path, bytes, mode)?;
    let result = fs::File::open(&tmp)
        .and_then(|f| f.sync_all())
        .and_then(|_| fs::rename(&tmp, path));
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

/// Write only when the content differs; returns whether the file changed. Fixes the mode either way.
pub fn write_if_changed(path: &Path, bytes: &[u8], mode: u32) -> io::Result<bool> {
    if let Ok(existing) = fs::read(path) {
        if existing == bytes {
            let meta = fs::metadata(path)?;
            if meta.permissions().mode() & 0o7777 != mode {
                fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
            }
            return Ok(false);
        }
    }
    write_atomic(path, bytes, mode)?;
    Ok(true)
}

/// Write many files atomically with one durability barrier instead of one fsync per file: every
/// temp file is written, then one `syncfs` flushes them all, then each is renamed over its target
/// and the parent directories are fsynced. A crash leaves every target either old or new, never
/// partial. Used where thousands of small files are written (PKI of 1000 nodes). Sequential on
/// purpose: creating files in one directory from several threads contends on the directory lock
/// and cost 3x the CPU time (measured: gpu-1000 PKI, 1.4 s vs 0.4 s).
pub fn write_batch_atomic(files: &[(std::path::PathBuf, Vec<u8>, u32)]) -> io::Result<()> {
    if files.is_empty() {
        return Ok(());
    }
    let temps: Vec<std::path::PathBuf> = files
        .iter()
        .map(|(path, bytes, mode)| write_temp(path, bytes, *mode))
        .collect::<io::Result<_>>()
        .inspect_err(|_| {
            for (path, _, _) in files {
                let _ = fs::remove_file(temp_path(path));
            }
        })?;
    sync_filesystem_of(&temps)?;
    for ((path, _, _), tmp) in files.iter().zip(&temps) {
        fs::rename(tmp, path)?;
    }
    let dirs: std::collections::BTreeSet<&Path> =
        files.iter().filter_map(|(p, _, _)| p.parent()).collect();
    for d in dirs {
        fs::File::open(d)?.sync_all()?;
    }
    Ok(())
}

fn temp_path(path: &Path) -> std::path::PathBuf {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    dir.join(format!(".{name}.tmp-{}", std::process::id()))
}

/// Flush `files` to stable storage: one `syncfs` when they share a filesystem, else fsync each.
fn sync_filesystem_of(files: &[std::path::PathBuf]) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::MetadataExt;
    let dirs: std::collections::BTreeSet<&Path> = files.iter().filter_map(|f| f.parent()).collect();
    let devices: std::collections::BTreeSet<u64> = dirs
        .iter()
        .map(|d| fs::metadata(d).map(|m| m.dev()))
        .collect::<io::Result<_>>()?;
    let first = fs::File::open(&files[0])?;
    // SAFETY: syncfs only reads the descriptor, which `first` keeps open for the call.
    if devices.len() == 1 && unsafe { libc::syncfs(first.as_raw_fd()) } == 0 {
        return Ok(());
    }
    for f in files {
        fs::File::open(f)?.sync_all()?;
    }
    Ok(())
}

/// Write `bytes` to a temp file beside `path` (created with `mode`, never wider) and return its
/// path, without fsync: for callers that write many files, make them durable together with
/// [`sync_filesystem`], then rename each over its target.
pub fn write_temp(path: &Path, bytes: &[u8], mode: u32) -> io::Result<std::path::PathBuf> {
    let dir = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("file");
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(mode)
            .open(&tmp)?;
        f.set_permissions(fs::Permissions::from_mode(mode))?;
        f.write_all(bytes)
    })();
    match result {
        Ok(()) => Ok(tmp),
        Err(e) => {
            let _ = fs::remove_file(&tmp);
            Err(e)
        }
    }
}

/// Flush every dirty page and metadata change of the filesystem holding `path` (`syncfs(2)`):
/// one flush for a batch of files instead of one fsync each.
pub fn sync_filesystem(path: &Path) -> io::Result<()> {
    use std::os::fd::AsRawFd;
    let f = fs::File::open(path)?;
    // SAFETY: syncfs only reads the descriptor, which `f` keeps open for the call.
    let rc = unsafe { libc::syncfs(f.as_raw_fd()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}
