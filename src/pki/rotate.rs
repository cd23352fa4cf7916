//! The issuing side of `certs rotate`: which leaf certificates to renew (all, by name, or those
//! expiring within a window) and re-issuing them — a new key and certificate from the current
//! CA — walking the same table as `ensure` and `certs check`. Kubeconfigs that embed a renewed
//! certificate are rebuilt by `ensure` afterwards. Pushing the files to the nodes and restarting
//! what uses them is `crate::rotate`'s job.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use time::{Duration, OffsetDateTime};
use x509_parser::prelude::{FromDer, X509Certificate};

use super::issue::{self, Ca};
use super::table::{self, CaId, Cert};
use super::{layout, PkiError};
use crate::fsutil;
use crate::inventory::Inventory;
use crate::profile::Profile;

/// Per-node rows, selectable by this short name for every node at once.
pub const FAMILIES: &[(&str, &str)] = &[
    ("kubelet", "kubelet-"),
    ("etcd/server", "etcd/server-"),
    ("etcd/peer", "etcd/peer-"),
];

#[derive(Debug, thiserror::Error)]
pub enum RotateError {
    #[error("unknown certificate {name:?} for --only\n    allowed: {allowed}")]
    UnknownName { name: String, allowed: String },
    #[error("{name} is a CA: `certs rotate` renews leaf certificates; rotate the CAs with `certs rotate --ca`")]
    IsCa { name: String },
    #[error(transparent)]
    Pki(#[from] PkiError),
    #[error("CA {name}: {reason} (run `k8sforge certs check` to see the state of the PKI)")]
    BadCa { name: String, reason: String },
}

/// Which leaves to renew.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    All,
    /// Table names (`apiserver`, `kubelet-worker-1`) or families (`kubelet`, `etcd/server`).
    Only(Vec<String>),
    /// Those whose certificate on disk expires within this long (or is missing or unreadable).
    Within(Duration),
}

/// The leaves `sel` names, in table order (CAs first would be wrong here: leaves only).
pub fn select(
    certs: &[Cert],
    cluster_dir: &Path,
    sel: &Selection,
    now: OffsetDateTime,
) -> Result<Vec<Cert>, RotateError> {
    let leaves = certs.iter().filter(|c| c.is_ca.is_none());
    match sel {
        Selection::All => Ok(leaves.cloned().collect()),
        Selection::Within(window) => {
            let pki = layout::pki_dir(cluster_dir);
            Ok(leaves
                .filter(|c| match not_after(&layout::cert_path(&pki, &c.name)) {
                    Some(na) => na - now < *window,
                    None => true,
                })
                .cloned()
                .collect())
        }
        Selection::Only(names) => {
            let mut wanted: BTreeSet<&str> = BTreeSet::new();
            for n in names {
                let n = n.trim_end_matches(".crt");
                if let Some(ca) = certs.iter().find(|c| c.name == n && c.is_ca.is_some()) {
                    return Err(RotateError::IsCa {
                        name: ca.name.clone(),
                    });
                }
                if let Some((_, prefix)) = FAMILIES.iter().find(|(f, _)| *f == n) {
                    let before = wanted.len();
                    wanted.extend(
                        certs
                            .iter()
                            .filter(|c| c.node.is_some() && c.name.starts_with(prefix))
                            .map(|c| c.name.as_str()),
                    );
                    if wanted.len() > before {
                        continue;
                    }
                }
                match certs.iter().find(|c| c.name == n) {
                    Some(c) => {
                        wanted.insert(c.name.as_str());
                    }
                    None => {
                        return Err(RotateError::UnknownName {
                            name: n.to_string(),
                            allowed: allowed_names(certs),
                        })
                    }
                }
            }
            Ok(leaves
                .filter(|c| wanted.contains(c.name.as_str()))
                .cloned()
                .collect())
        }
    }
}

/// The names `--only` accepts, for the error message: families, cluster-wide leaves, and the
/// per-node pattern with the nodes (shortened on big clusters).
pub fn allowed_names(certs: &[Cert]) -> String {
    let mut out: Vec<String> = FAMILIES
        .iter()
        .map(|(f, _)| format!("{f} (every node)"))
        .collect();
    out.extend(
        certs
            .iter()
            .filter(|c| c.is_ca.is_none() && c.node.is_none())
            .map(|c| c.name.clone()),
    );
    let nodes: BTreeSet<&str> = certs.iter().filter_map(|c| c.node.as_deref()).collect();
    let shown: Vec<&str> = nodes.iter().take(6).copied().collect();
    let more = if nodes.len() > shown.len() {
        format!(", … {} nodes in all", nodes.len())
    } else {
        String::new()
    };
    out.push(format!(
        "kubelet-<node>, etcd/server-<node>, etcd/peer-<node> for nodes {}{more}",
        shown.join(", ")
    ));
    out.join(", ")
}

/// Expiry of the certificate in `path`, if it reads and parses.
pub fn not_after(path: &Path) -> Option<OffsetDateTime> {
    let pem = std::fs::read(path).ok()?;
    let der = issue::pem_to_der(&pem).ok()?;
    let (_, x) = X509Certificate::from_der(&der).ok()?;
    Some(x.validity().not_after.to_datetime())
}

/// Serial number (lower-case hex) of a PEM certificate.
pub fn serial_of(pem: &[u8]) -> Option<String> {
    let der = issue::pem_to_der(pem).ok()?;
    let (_, x) = X509Certificate::from_der(&der).ok()?;
    Some(x.raw_serial_as_string().replace(':', ""))
}

/// One renewed certificate.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Renewed {
    pub name: String,
    /// Serial before (None when the file was missing or unreadable).
    pub old_serial: Option<String>,
    pub new_serial: String,
}

/// Re-issue `names` (new keys, signed by the current CAs) under `cluster_dir`, in one atomic
/// batch, then rebuild the kubeconfigs that embed them. Nothing else is re-issued.
pub fn reissue(
    profile: &Profile,
    inventory: &Inventory,
    cluster_dir: &Path,
    selected: &[Cert],
    now: OffsetDateTime,
) -> Result<Vec<Renewed>, RotateError> {
    let pki = layout::pki_dir(cluster_dir);
    for c in selected {
        issue::check_sans(c).map_err(PkiError::from)?;
    }
    let cas = load_cas(&pki)?;
    let mut writes: Vec<(PathBuf, Vec<u8>, u32)> = Vec::new();
    let mut renewed = Vec::new();
    for c in selected {
        let ca = c.ca.and_then(|id| cas.get(&id));
        let key = issue::generate_key(profile.pki.key_algorithm).map_err(PkiError::from)?;
        let pem = issue::issue(c, &key, ca, &profile.pki, now).map_err(PkiError::from)?;
        let cert_path = layout::cert_path(&pki, &c.name);
        renewed.push(Renewed {
            name: c.name.clone(),
            old_serial: std::fs::read(&cert_path).ok().and_then(|p| serial_of(&p)),
            new_serial: serial_of(pem.as_bytes()).unwrap_or_default(),
        });
        // Key before certificate, as in `ensure`.
        writes.push((
            layout::key_path(&pki, &c.name),
            key.serialize_pem().into_bytes(),
            fsutil::SECRET,
        ));
        writes.push((cert_path, pem.into_bytes(), fsutil::PUBLIC));
    }
    fsutil::write_batch_atomic(&writes).map_err(|source| PkiError::Io {
        path: pki.clone(),
        source,
    })?;
    // Rebuilds the kubeconfigs whose embedded certificate changed; the fresh certificates are
    // valid, so it issues nothing itself.
    super::ensure_at(profile, inventory, cluster_dir, now)?;
    Ok(renewed)
}

fn load_cas(pki: &Path) -> Result<BTreeMap<CaId, Ca>, RotateError> {
    let mut out = BTreeMap::new();
    for id in CaId::ALL {
        let bad = |reason: String| RotateError::BadCa {
            name: id.name().to_string(),
            reason,
        };
        let cert = std::fs::read_to_string(layout::cert_path(pki, id.name()))
            .map_err(|e| bad(format!("cannot read its certificate: {e}")))?;
        let key = std::fs::read(layout::key_path(pki, id.name()))
            .map_err(|e| bad(format!("cannot read its key: {e}")))?;
        let key = issue::load_key(&key).map_err(|e| bad(e.to_string()))?;
        let ca = Ca::new(id, cert, key).map_err(|e| bad(e.to_string()))?;
        out.insert(id, ca);
    }
    Ok(out)
}

/// Copy what rendering reads from a cluster directory (PKI, kubeconfigs, encryption config)
/// into `to`, so a rotation can be prepared — and a dry run computed — without touching the
/// real one.
pub fn copy_material(from: &Path, to: &Path) -> std::io::Result<()> {
    for dir in ["pki", "kubeconfigs"] {
        copy_tree(&from.join(dir), &to.join(dir))?;
    }
    let enc = layout::encryption_config_path(from);
    if enc.exists() {
        std::fs::copy(&enc, layout::encryption_config_path(to))?;
    }
    Ok(())
}

fn copy_tree(from: &Path, to: &Path) -> std::io::Result<()> {
    if !from.exists() {
        return Ok(());
    }
    fsutil::ensure_dir(to, fsutil::PRIVATE_DIR)?;
    for e in std::fs::read_dir(from)? {
        let e = e?;
        let target = to.join(e.file_name());
        if e.file_type()?.is_dir() {
            copy_tree(&e.path(), &target)?;
        } else {
            // fs::copy keeps the mode (0600 keys stay 0600).
            std::fs::copy(e.path(), &target)?;
        }
    }
    Ok(())
}

/// Files under `staged` that differ from `root` (PKI, kubeconfigs, encryption config), as
/// `(path under root, bytes, mode)` ready for `fsutil::write_batch_atomic`.
pub fn changed_material(
    staged: &Path,
    root: &Path,
) -> std::io::Result<Vec<(PathBuf, Vec<u8>, u32)>> {
    use std::os::unix::fs::PermissionsExt;
    let mut out = Vec::new();
    let mut stack = vec![staged.join("pki"), staged.join("kubeconfigs")];
    while let Some(d) = stack.pop() {
        if !d.exists() {
            continue;
        }
        for e in std::fs::read_dir(&d)? {
            let e = e?;
            let p = e.path();
            if e.file_type()?.is_dir() {
                stack.push(p);
                continue;
            }
            let rel = p.strip_prefix(staged).unwrap_or(&p);
            let target = root.join(rel);
            let bytes = std::fs::read(&p)?;
            if std::fs::read(&target).ok().as_deref() != Some(bytes.as_slice()) {
                let mode = e.metadata()?.permissions().mode() & 0o777;
                out.push((target, bytes, mode));
            }
        }
    }
    // Keys sort before certificates of the same name only by luck; order keys first explicitly.
    out.sort_by_key(|(p, _, _)| (p.extension().is_none_or(|x| x != "key"), p.clone()));
    Ok(out)
}

/// Expand the table for this cluster (a shorthand for callers outside `pki`).
pub fn certificates(profile: &Profile, inventory: &Inventory) -> Vec<Cert> {
    table::expand(profile, inventory)
}
