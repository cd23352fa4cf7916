//! SSH keys k8sforge owns: the cluster's client key pair (`<cluster_dir>/ssh/id_ed25519`), host
//! keys for machines it creates itself, and the pinned `<cluster_dir>/known_hosts`.
//!
//! Keys are ed25519 from the OS RNG. Private keys are written 0600 and never logged.

use std::fs;
use std::io;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use rand::rngs::OsRng;
use ssh_key::{Algorithm, HashAlg, LineEnding, PrivateKey, PublicKey};

use crate::fsutil;

#[derive(Debug, thiserror::Error)]
pub enum SshKeyError {
    #[error("cannot write {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error("cannot generate an ed25519 key: {0}")]
    Generate(ssh_key::Error),
    #[error("{path} is not a valid OpenSSH public key: {source}")]
    BadPublicKey {
        path: PathBuf,
        source: ssh_key::Error,
    },
}

/// The cluster's client key pair.
#[derive(Debug, Clone)]
pub struct ClusterKey {
    pub private_path: PathBuf,
    pub public_path: PathBuf,
    /// OpenSSH one-line public key (`ssh-ed25519 AAAA… k8sforge@<cluster>`).
    pub public_openssh: String,
}

/// A freshly generated host key: OpenSSH private key text and one-line public key.
pub struct HostKey {
    pub private_openssh: zeroize::Zeroizing<String>,
    pub public_openssh: String,
}

/// Where the cluster key lives: `<cluster_dir>/ssh/id_ed25519` (+ `.pub`).
pub fn cluster_key_path(cluster_dir: &Path) -> PathBuf {
    cluster_dir.join("ssh").join("id_ed25519")
}

/// Where pinned host keys live.
pub fn known_hosts_path(cluster_dir: &Path) -> PathBuf {
    cluster_dir.join("known_hosts")
}

/// Generate the cluster key pair once; later calls return the existing one.
pub fn ensure_cluster_key(cluster_dir: &Path, cluster: &str) -> Result<ClusterKey, SshKeyError> {
    let private_path = cluster_key_path(cluster_dir);
    let public_path = private_path.with_extension("pub");
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| SshKeyError::Io { path, source }
    };
    if private_path.exists() && public_path.exists() {
        let public_openssh = fs::read_to_string(&public_path).map_err(io(&public_path))?;
        let public_openssh = public_openssh.trim().to_string();
        PublicKey::from_openssh(&public_openssh).map_err(|source| SshKeyError::BadPublicKey {
            path: public_path.clone(),
            source,
        })?;
        return Ok(ClusterKey {
            private_path,
            public_path,
            public_openssh,
        });
    }
    let dir = cluster_dir.join("ssh");
    fsutil::ensure_dir(&dir, fsutil::PRIVATE_DIR).map_err(io(&dir))?;
    let key = generate(&format!("k8sforge@{cluster}"))?;
    // Private first: a crash in between leaves no public key, so the pair is regenerated whole.
    fsutil::write_atomic(
        &private_path,
        key.private_openssh.as_bytes(),
        fsutil::SECRET,
    )
    .map_err(io(&private_path))?;
    fsutil::write_atomic(
        &public_path,
        format!("{}\n", key.public_openssh).as_bytes(),
        fsutil::PUBLIC,
    )
    .map_err(io(&public_path))?;
    Ok(ClusterKey {
        private_path,
        public_path,
        public_openssh: key.public_openssh,
    })
}

/// A new ed25519 key with `comment`, from the OS RNG.
pub fn generate(comment: &str) -> Result<HostKey, SshKeyError> {
    let mut key =
        PrivateKey::random(&mut OsRng, Algorithm::Ed25519).map_err(SshKeyError::Generate)?;
    key.set_comment(comment);
    let private_openssh = key
        .to_openssh(LineEnding::LF)
        .map_err(SshKeyError::Generate)?;
    let public_openssh = key
        .public_key()
        .to_openssh()
        .map_err(SshKeyError::Generate)?;
    Ok(HostKey {
        private_openssh,
        public_openssh,
    })
}

/// `SHA256:…` fingerprint of a one-line OpenSSH public key, if it parses.
pub fn fingerprint(public_openssh: &str) -> Option<String> {
    PublicKey::from_openssh(public_openssh.trim())
        .ok()
        .map(|k| k.fingerprint(HashAlg::Sha256).to_string())
}

/// Host pattern of a known_hosts line: `addr` for port 22, `[addr]:port` otherwise.
pub fn host_pattern(host: IpAddr, port: u16) -> String {
    if port == 22 {
        host.to_string()
    } else {
        format!("[{host}]:{port}")
    }
}

/// One pinned host key: the host pattern, the key without comment, and the node it belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedKey {
    pub host: IpAddr,
    pub port: u16,
    /// `ssh-ed25519 AAAA…` (comment dropped; the node name is written as the comment instead).
    pub key: String,
    pub node: String,
}

/// Key type and base64 of a one-line public key, without its comment.
fn key_without_comment(public_openssh: &str) -> String {
    public_openssh
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

impl PinnedKey {
    pub fn new(host: IpAddr, port: u16, public_openssh: &str, node: &str) -> PinnedKey {
        PinnedKey {
            host,
            port,
            key: key_without_comment(public_openssh),
            node: node.to_string(),
        }
    }

    fn line(&self) -> String {
        format!(
            "{} {} {}",
            host_pattern(self.host, self.port),
            self.key,
            self.node
        )
    }
}

/// Pin `keys` in `<cluster_dir>/known_hosts`: every line for the same host pattern is replaced,
/// other lines are kept. Written atomically; unchanged content is not rewritten.
pub fn pin_host_keys(cluster_dir: &Path, keys: &[PinnedKey]) -> Result<(), SshKeyError> {
    let path = known_hosts_path(cluster_dir);
    let existing = match fs::read_to_string(&path) {
        Ok(s) => s,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(source) => return Err(SshKeyError::Io { path, source }),
    };
    let replaced: std::collections::BTreeSet<String> =
        keys.iter().map(|k| host_pattern(k.host, k.port)).collect();
    let mut out = String::new();
    for line in existing.lines() {
        let pattern = line.split_whitespace().next().unwrap_or("");
        let hosts: Vec<&str> = pattern.split(',').collect();
        if hosts.iter().any(|h| replaced.contains(*h)) {
            continue;
        }
        out.push_str(line);
        out.push('\n');
    }
    for k in keys {
        out.push_str(&k.line());
        out.push('\n');
    }
    fsutil::write_if_changed(&path, out.as_bytes(), fsutil::PUBLIC)
        .map(|_| ())
        .map_err(|source| SshKeyError::Io { path, source })
}

/// The pinned key (type + base64) for `host:port`, if any.
pub fn pinned_key(cluster_dir: &Path, host: IpAddr, port: u16) -> Option<String> {
    let text = fs::read_to_string(known_hosts_path(cluster_dir)).ok()?;
    let want = host_pattern(host, port);
    text.lines().find_map(|line| {
        let mut parts = line.split_whitespace();
        let pattern = parts.next()?;
        if !pattern.split(',').any(|h| h == want) {
            return None;
        }
        let kind = parts.next()?;
        let b64 = parts.next()?;
        Some(format!("{kind} {b64}"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn cluster_key_is_generated_once_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let a = ensure_cluster_key(dir.path(), "c1").unwrap();
        let b = ensure_cluster_key(dir.path(), "c1").unwrap();
        assert_eq!(a.public_openssh, b.public_openssh);
        assert!(a.public_openssh.starts_with("ssh-ed25519 "));
        assert!(a.public_openssh.ends_with(" k8sforge@c1"));
        let mode = fs::metadata(&a.private_path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let private = fs::read_to_string(&a.private_path).unwrap();
        let parsed = PrivateKey::from_openssh(&private).unwrap();
        assert_eq!(
            parsed.public_key().to_openssh().unwrap(),
            a.public_openssh,
            "the .pub file belongs to the private key"
        );
    }

    #[test]
    fn generated_keys_differ() {
        let a = generate("a").unwrap();
        let b = generate("b").unwrap();
        assert_ne!(a.public_openssh, b.public_openssh);
        assert!(fingerprint(&a.public_openssh)
            .unwrap()
            .starts_with("SHA256:"));
    }

    #[test]
    fn pinning_replaces_only_the_same_host() {
        let dir = tempfile::tempdir().unwrap();
        let h1: IpAddr = "198.18.0.11".parse().unwrap();
        let h2: IpAddr = "198.18.0.12".parse().unwrap();
        let k1 = generate("x").unwrap().public_openssh;
        let k2 = generate("y").unwrap().public_openssh;
        let k3 = generate("z").unwrap().public_openssh;
        pin_host_keys(
            dir.path(),
            &[
                PinnedKey::new(h1, 22, &k1, "cp-1"),
                PinnedKey::new(h2, 2222, &k2, "w-1"),
            ],
        )
        .unwrap();
        pin_host_keys(dir.path(), &[PinnedKey::new(h1, 22, &k3, "cp-1")]).unwrap();
        let text = fs::read_to_string(known_hosts_path(dir.path())).unwrap();
        assert_eq!(text.lines().count(), 2, "{text}");
        assert_eq!(
            pinned_key(dir.path(), h1, 22).unwrap(),
            key_without_comment(&k3)
        );
        assert_eq!(
            pinned_key(dir.path(), h2, 2222).unwrap(),
            key_without_comment(&k2)
        );
        assert!(text.contains("[198.18.0.12]:2222 ssh-ed25519 "));
        assert!(pinned_key(dir.path(), h2, 22).is_none());
    }
}
