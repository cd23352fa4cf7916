//! The cluster's SSH key pair, `<cluster_dir>/ssh/id_ed25519{,.pub}`: generated once by
//! OpenSSH's `ssh-keygen` (OS RNG, private key written 0600 by it), its public half installed on
//! machines by providers, its private half used by the executor.

use std::path::{Path, PathBuf};
use std::process::Command;

use super::CLUSTER_KEY;
use crate::fsutil;

#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("cannot create the cluster SSH key in {}: {reason}", dir.display())]
    Generate { dir: PathBuf, reason: String },
    #[error("cluster SSH key {}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The cluster key's paths and public line.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterKey {
    pub private: PathBuf,
    /// `ssh-ed25519 AAAA… k8sforge-<cluster>`.
    pub public: String,
}

fn keygen_error(dir: &Path, reason: impl Into<String>) -> KeyError {
    KeyError::Generate {
        dir: dir.to_path_buf(),
        reason: reason.into(),
    }
}

/// Create the key pair if missing (idempotent; a crash never leaves half a key: it is generated
/// under a temp name and renamed into place), and return it.
pub fn ensure_cluster_key(cluster_dir: &Path, comment: &str) -> Result<ClusterKey, KeyError> {
    let private = cluster_dir.join(CLUSTER_KEY);
    let public_path = private.with_extension("pub");
    let dir = private
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| cluster_dir.to_path_buf());
    fsutil::ensure_dir(&dir, fsutil::PRIVATE_DIR).map_err(|source| KeyError::Io {
        path: dir.clone(),
        source,
    })?;
    if !private.is_file() {
        let tmp = dir.join(format!(".id_ed25519.tmp-{}", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_file(tmp.with_extension("pub"));
        let out = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
            .arg(&tmp)
            .output()
            .map_err(|e| {
                keygen_error(
                    &dir,
                    format!("cannot run ssh-keygen (install openssh-client): {e}"),
                )
            })?;
        if !out.status.success() {
            return Err(keygen_error(
                &dir,
                String::from_utf8_lossy(&out.stderr).trim().to_string(),
            ));
        }
        let _ = std::fs::remove_file(tmp.with_extension("pub"));
        std::fs::rename(&tmp, &private).map_err(|source| KeyError::Io {
            path: private.clone(),
            source,
        })?;
    }
    // The public half is derived from the private key, so it always matches.
    let out = Command::new("ssh-keygen")
        .arg("-y")
        .arg("-f")
        .arg(&private)
        .output()
        .map_err(|e| keygen_error(&dir, format!("cannot run ssh-keygen: {e}")))?;
    if !out.status.success() {
        return Err(keygen_error(
            &dir,
            format!(
                "{} is not a usable private key: {}",
                private.display(),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        ));
    }
    let mut public = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if public.split_whitespace().count() == 2 {
        public.push(' ');
        public.push_str(comment);
    }
    let mut line = public.clone();
    line.push('\n');
    fsutil::write_if_changed(&public_path, line.as_bytes(), fsutil::PUBLIC).map_err(|source| {
        KeyError::Io {
            path: public_path.clone(),
            source,
        }
    })?;
    Ok(ClusterKey { private, public })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn generates_once_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let a = ensure_cluster_key(dir.path(), "k8sforge-test").unwrap();
        assert!(a.public.starts_with("ssh-ed25519 ") && a.public.ends_with(" k8sforge-test"));
        let mode = std::fs::metadata(&a.private).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dir_mode = std::fs::metadata(a.private.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dir_mode, 0o700);
        // Idempotent: same key on the second call.
        let b = ensure_cluster_key(dir.path(), "k8sforge-test").unwrap();
        assert_eq!(a, b);
        let on_disk = std::fs::read_to_string(a.private.with_extension("pub")).unwrap();
        assert_eq!(on_disk.trim(), a.public);
    }
}
