//! Host keys pinned per cluster in `<cluster_dir>/known_hosts`, in OpenSSH format so that
//! `ssh -o UserKnownHostsFile=...` works with the same file. A provider may pin keys up front (the
//! local provider knows the keys it generated); an unknown host is pinned on first contact; a
//! changed key is refused, never replaced.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use base64::Engine;
use sha2::{Digest, Sha256};

use crate::fsutil;

#[derive(Debug, thiserror::Error)]
pub enum KnownHostsError {
    #[error("cannot read known_hosts {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write known_hosts {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}: {reason}")]
    Parse {
        path: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("host key for node {node} is not a valid SSH public key blob: {reason}")]
    BadKey { node: String, reason: String },
}

/// One `hosts keytype key` line.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    hosts: Vec<String>,
    key_type: String,
    key_b64: String,
}

/// Result of comparing a presented host key with the pins.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostKeyCheck {
    /// The presented key is pinned for this host.
    Match,
    /// Nothing pinned for this host.
    Unknown,
    /// Keys are pinned for this host and the presented one is not among them.
    Changed { pinned: Vec<String> },
}

/// The pinned host keys of one cluster. Cheap to share between threads.
#[derive(Debug)]
pub struct KnownHosts {
    path: PathBuf,
    entries: Mutex<Vec<Entry>>,
}

/// The `known_hosts` host field for an address: plain for port 22, `[addr]:port` otherwise.
pub fn host_pattern(host: IpAddr, port: u16) -> String {
    match (host, port) {
        (h, 22) => h.to_string(),
        (h, p) => format!("[{h}]:{p}"),
    }
}

/// OpenSSH-style fingerprint of a key blob: `SHA256:<base64 without padding>`.
pub fn fingerprint(blob: &[u8]) -> String {
    format!(
        "SHA256:{}",
        base64::engine::general_purpose::STANDARD_NO_PAD.encode(Sha256::digest(blob))
    )
}

fn fingerprint_b64(key_b64: &str) -> String {
    match base64::engine::general_purpose::STANDARD.decode(key_b64) {
        Ok(blob) => fingerprint(&blob),
        Err(_) => format!("<undecodable key {key_b64:.16}…>"),
    }
}

/// Key type named inside an SSH public key blob (its first length-prefixed string).
pub fn blob_key_type(blob: &[u8]) -> Option<String> {
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    let name = blob.get(4..4 + len)?;
    std::str::from_utf8(name).ok().map(str::to_string)
}

fn read_entries(path: &Path) -> Result<Vec<Entry>, KnownHostsError> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
        Err(source) => {
            return Err(KnownHostsError::Read {
                path: path.to_path_buf(),
                source,
            })
        }
    };
    let mut entries = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parse = |reason: &str| KnownHostsError::Parse {
            path: path.to_path_buf(),
            line: i + 1,
            reason: reason.to_string(),
        };
        if line.starts_with('@') {
            return Err(parse(
                "markers (@cert-authority, @revoked) are not supported in a cluster's pinned keys",
            ));
        }
        let mut parts = line.split_whitespace();
        let (Some(hosts), Some(key_type), Some(key_b64)) =
            (parts.next(), parts.next(), parts.next())
        else {
            return Err(parse("expected `hosts keytype base64-key`"));
        };
        if hosts.starts_with('|') {
            return Err(parse(
                "hashed host names are not supported in a cluster's pinned keys",
            ));
        }
        if base64::engine::general_purpose::STANDARD
            .decode(key_b64)
            .is_err()
        {
            return Err(parse("key is not valid base64"));
        }
        entries.push(Entry {
            hosts: hosts.split(',').map(str::to_string).collect(),
            key_type: key_type.to_string(),
            key_b64: key_b64.to_string(),
        });
    }
    Ok(entries)
}

impl KnownHosts {
    /// Load `path`; a missing file is an empty pin set.
    pub fn load(path: &Path) -> Result<KnownHosts, KnownHostsError> {
        Ok(KnownHosts {
            path: path.to_path_buf(),
            entries: Mutex::new(read_entries(path)?),
        })
    }

    /// Take in pins another writer (a provider's own `KnownHosts`) added to the file since we
    /// loaded it, so that neither our checks nor our writes ignore them.
    fn refresh(&self, entries: &mut Vec<Entry>) -> Result<(), KnownHostsError> {
        for e in read_entries(&self.path)? {
            if !entries.contains(&e) {
                entries.push(e);
            }
        }
        Ok(())
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Entry>> {
        // A panic while holding the lock leaves the Vec consistent (pushes are atomic).
        self.entries.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Key types pinned for `pattern`, to prefer them in the handshake.
    pub fn pinned_types(&self, pattern: &str) -> Vec<String> {
        let mut v: Vec<String> = self
            .lock()
            .iter()
            .filter(|e| e.hosts.iter().any(|h| h == pattern))
            .map(|e| e.key_type.clone())
            .collect();
        v.dedup();
        v
    }

    /// Compare the key blob a server presented with the pins for `pattern`.
    pub fn check(&self, pattern: &str, blob: &[u8]) -> HostKeyCheck {
        let key_b64 = base64::engine::general_purpose::STANDARD.encode(blob);
        let mut entries = self.lock();
        if !entries.iter().any(|e| e.hosts.iter().any(|h| h == pattern)) {
            // Unknown here; a provider may have pinned it since we loaded. An unreadable file
            // keeps what we have (the write in `pin` reports it).
            let _ = self.refresh(&mut entries);
        }
        let pinned: Vec<&Entry> = entries
            .iter()
            .filter(|e| e.hosts.iter().any(|h| h == pattern))
            .collect();
        if pinned.is_empty() {
            HostKeyCheck::Unknown
        } else if pinned.iter().any(|e| e.key_b64 == key_b64) {
            HostKeyCheck::Match
        } else {
            HostKeyCheck::Changed {
                pinned: pinned
                    .iter()
                    .map(|e| format!("{} {}", e.key_type, fingerprint_b64(&e.key_b64)))
                    .collect(),
            }
        }
    }

    /// Pin `blob` for `node` at `pattern` and write the file (atomically). Pinning a key that is
    /// already pinned is a no-op; a different key for the same host is added alongside (a host
    /// may have several key types) — callers refuse changed keys via `check` before pinning.
    pub fn pin(&self, node: &str, pattern: &str, blob: &[u8]) -> Result<(), KnownHostsError> {
        let key_type = blob_key_type(blob).ok_or_else(|| KnownHostsError::BadKey {
            node: node.to_string(),
            reason: "no key type name at the start of the blob".into(),
        })?;
        let key_b64 = base64::engine::general_purpose::STANDARD.encode(blob);
        let mut entries = self.lock();
        self.refresh(&mut entries)?;
        if entries
            .iter()
            .any(|e| e.key_b64 == key_b64 && e.hosts.iter().any(|h| h == pattern))
        {
            return Ok(());
        }
        let mut hosts = vec![pattern.to_string()];
        if node != pattern {
            hosts.push(node.to_string());
        }
        entries.push(Entry {
            hosts,
            key_type,
            key_b64,
        });
        let mut text =
            String::from("# Pinned SSH host keys of this cluster (written by k8sforge).\n");
        for e in entries.iter() {
            text.push_str(&format!(
                "{} {} {}\n",
                e.hosts.join(","),
                e.key_type,
                e.key_b64
            ));
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(|source| KnownHostsError::Write {
                path: self.path.clone(),
                source,
            })?;
        }
        fsutil::write_atomic(&self.path, text.as_bytes(), fsutil::PUBLIC).map_err(|source| {
            KnownHostsError::Write {
                path: self.path.clone(),
                source,
            }
        })
    }

    /// Pin an OpenSSH public key line (`ssh-ed25519 AAAA... comment`), as providers read it from
    /// the host key they generated.
    pub fn pin_public_key_line(
        &self,
        node: &str,
        pattern: &str,
        line: &str,
    ) -> Result<(), KnownHostsError> {
        let b64 = line
            .split_whitespace()
            .nth(1)
            .ok_or_else(|| KnownHostsError::BadKey {
                node: node.to_string(),
                reason: "expected `keytype base64-key [comment]`".into(),
            })?;
        let blob = base64::engine::general_purpose::STANDARD
            .decode(b64)
            .map_err(|e| KnownHostsError::BadKey {
                node: node.to_string(),
                reason: e.to_string(),
            })?;
        self.pin(node, pattern, &blob)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blob(kind: &str, body: &[u8]) -> Vec<u8> {
        let mut v = (kind.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(kind.as_bytes());
        v.extend_from_slice(body);
        v
    }

    #[test]
    fn pins_then_matches_and_refuses_a_changed_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        let kh = KnownHosts::load(&path).unwrap();
        let a = blob("ssh-ed25519", b"key-a");
        let b = blob("ssh-ed25519", b"key-b");
        let pat = host_pattern("10.0.0.1".parse().unwrap(), 2222);
        assert_eq!(pat, "[10.0.0.1]:2222");
        assert_eq!(kh.check(&pat, &a), HostKeyCheck::Unknown);
        kh.pin("node1", &pat, &a).unwrap();
        // Reloaded from disk: the pin survived and is OpenSSH-shaped.
        let kh = KnownHosts::load(&path).unwrap();
        assert_eq!(kh.check(&pat, &a), HostKeyCheck::Match);
        match kh.check(&pat, &b) {
            HostKeyCheck::Changed { pinned } => {
                assert_eq!(pinned, vec![format!("ssh-ed25519 {}", fingerprint(&a))])
            }
            other => panic!("expected Changed, got {other:?}"),
        }
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("[10.0.0.1]:2222,node1 ssh-ed25519 "),
            "{text}"
        );
        assert_eq!(kh.pinned_types(&pat), vec!["ssh-ed25519".to_string()]);
    }

    #[test]
    fn pins_written_by_another_instance_are_kept_and_seen() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        let executor_view = KnownHosts::load(&path).unwrap();
        let provider_view = KnownHosts::load(&path).unwrap();
        let a = blob("ssh-ed25519", b"key-a");
        let b = blob("ssh-ed25519", b"key-b");
        provider_view.pin("node1", "10.0.0.1", &a).unwrap();
        // Loaded before the provider pinned: still refuses a different key for node1.
        assert!(matches!(
            executor_view.check("10.0.0.1", &b),
            HostKeyCheck::Changed { .. }
        ));
        // Its own pin of another node keeps the provider's line.
        executor_view.pin("node2", "10.0.0.2", &b).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        assert!(
            text.contains("10.0.0.1,node1") && text.contains("10.0.0.2,node2"),
            "{text}"
        );
    }

    #[test]
    fn rejects_unsupported_lines_with_position() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_hosts");
        std::fs::write(&path, "# c\n|1|abc|def ssh-ed25519 AAAA\n").unwrap();
        let e = KnownHosts::load(&path).unwrap_err().to_string();
        assert!(e.contains(":2:") && e.contains("hashed"), "{e}");
    }
}
