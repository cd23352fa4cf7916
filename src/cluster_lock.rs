//! The per-cluster lock: `flock` on `<cluster dir>/.lock`, which holds who has it (pid, host,
//! command, since when). A second run fails at once naming the holder. The kernel drops the
//! flock when its process dies, so a lock file that still names a holder but is free to take
//! was left by a process that is gone: it is taken over, with a line saying so.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, Write};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

/// Who holds (or held) the lock.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub pid: u32,
    pub host: String,
    pub command: String,
    /// RFC 3339, UTC.
    pub since: String,
}

impl std::fmt::Display for Holder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "pid {} on {}, `{}`, since {}",
            self.pid, self.host, self.command, self.since
        )
    }
}

impl Holder {
    fn me() -> Holder {
        let command = std::env::args()
            .enumerate()
            .map(|(i, a)| {
                if i == 0 {
                    Path::new(&a)
                        .file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or(a)
                } else {
                    a
                }
            })
            .collect::<Vec<_>>()
            .join(" ");
        Holder {
            pid: std::process::id(),
            host: hostname(),
            command: command.chars().take(300).collect(),
            since: time::OffsetDateTime::now_utc()
                .format(&time::format_description::well_known::Rfc3339)
                .unwrap_or_default(),
        }
    }
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|_| "unknown host".into())
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error("cannot use lock file {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cluster {cluster} is locked by another k8sforge run ({}); wait for it to finish. Lock file: {}", holder.as_ref().map(|h| h.to_string()).unwrap_or_else(|| "holder unknown".into()), path.display())]
    Held {
        cluster: String,
        path: PathBuf,
        holder: Option<Box<Holder>>,
    },
}

/// The lock, held until dropped (the holder record is cleared then).
pub struct ClusterLock {
    file: File,
    path: PathBuf,
    /// The record of a dead earlier holder this lock took over, if any.
    pub took_over: Option<Holder>,
}

fn read_holder(file: &mut File) -> Option<Holder> {
    let mut s = String::new();
    file.rewind().ok()?;
    file.read_to_string(&mut s).ok()?;
    serde_json::from_str(s.trim()).ok()
}

impl ClusterLock {
    /// Take the lock of `cluster` at `path` without waiting.
    pub fn acquire(path: &Path, cluster: &str) -> Result<ClusterLock, LockError> {
        let io = |source| LockError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut file = OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(path)
            .map_err(io)?;
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let err = std::io::Error::last_os_error();
            if err.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io(err));
            }
            return Err(LockError::Held {
                cluster: cluster.to_string(),
                path: path.to_path_buf(),
                holder: read_holder(&mut file).map(Box::new),
            });
        }
        let took_over = read_holder(&mut file);
        if let Some(h) = &took_over {
            eprintln!(
                "k8sforge: the lock on cluster {cluster} was left by a run that is no longer running ({h}); taking it over"
            );
        }
        let me = serde_json::to_string(&Holder::me()).unwrap_or_default();
        file.set_len(0).map_err(io)?;
        file.rewind().map_err(io)?;
        file.write_all(me.as_bytes()).map_err(io)?;
        file.write_all(b"\n").map_err(io)?;
        file.sync_data().map_err(io)?;
        Ok(ClusterLock {
            file,
            path: path.to_path_buf(),
            took_over,
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl Drop for ClusterLock {
    fn drop(&mut self) {
        // A clean exit leaves an empty file: only a killed run leaves its record behind.
        let _ = self.file.set_len(0);
        let _ = self.file.sync_data();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_holder_is_refused_with_the_first_named_and_a_dead_one_is_taken_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(".lock");
        let first = ClusterLock::acquire(&path, "c1").unwrap();
        assert_eq!(first.took_over, None);
        // flock is per open file description: a second open in this process conflicts too.
        match ClusterLock::acquire(&path, "c1") {
            Err(LockError::Held {
                holder: Some(h), ..
            }) => {
                assert_eq!(h.pid, std::process::id());
                assert!(!h.since.is_empty());
            }
            other => panic!("expected Held, got {:?}", other.err()),
        }
        drop(first);
        // A clean release leaves no record.
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "");
        // A record without a flock: its process died. Taken over, with the record returned.
        let dead = Holder {
            pid: 999_999,
            host: "h".into(),
            command: "k8sforge up".into(),
            since: "2026-01-01T00:00:00Z".into(),
        };
        std::fs::write(&path, serde_json::to_string(&dead).unwrap()).unwrap();
        let l = ClusterLock::acquire(&path, "c1").unwrap();
        assert_eq!(l.took_over, Some(dead));
    }
}
