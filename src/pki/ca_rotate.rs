//! The PKI side of CA and service-account key rotation: each step is a transformation of the
//! material in a cluster directory (a staging copy, see `crate::rotate::ca`), walking the same
//! table as `ensure`:
//!
//! - `generate`: a new CA beside the old one (`<ca>.next.crt/.key`, key 0600, OS RNG); nothing
//!   reads it yet.
//! - `trust_both`: `<ca>.trust.crt` = old + new. Render sends the bundle wherever the CA is
//!   trusted (etcd, apiserver client CA, kubelet client CA, front-proxy CA, kubeconfigs'
//!   certificate-authority-data, controller-manager root CA for tokens' `ca.crt`).
//! - `promote`: the new CA becomes the signing CA and every leaf it signs is re-issued from it;
//!   the bundle still holds both, so old and new leaves are trusted everywhere meanwhile.
//! - `drop_old`: the bundle is removed: only the new CA is trusted.
//!
//! Service-account keys: `sa_generate` (`sa.next.key`), `sa_trust_both` (`sa.pub` = current +
//! new public key), `sa_switch` (the new key signs; `sa.pub` keeps both), and later, on request,
//! `sa_finish` (`sa.pub` = the signing key's only).

use std::path::Path;

use time::OffsetDateTime;

use super::issue::{self};
use super::rotate::{self as leaf_rotate, Renewed, RotateError};
use super::table::{self, CaId};
use super::{layout, PkiError};
use crate::fsutil;
use crate::inventory::Inventory;
use crate::profile::Profile;

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn read(path: &Path) -> Result<Vec<u8>, PkiError> {
    std::fs::read(path).map_err(io(path))
}

fn remove_if_present(path: &Path) -> Result<(), PkiError> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(io(path)(e)),
    }
}

/// PEM blocks joined with exactly one newline between them.
fn join_pems(parts: &[&[u8]]) -> Vec<u8> {
    let mut out = Vec::new();
    for p in parts {
        let t = String::from_utf8_lossy(p);
        out.extend_from_slice(t.trim_end().as_bytes());
        out.push(b'\n');
    }
    out
}

/// Step 1: a new CA for each of `ids`, kept when a valid one is already there (a resumed step).
pub fn generate(
    profile: &Profile,
    inventory: &Inventory,
    cluster_dir: &Path,
    ids: &[CaId],
    now: OffsetDateTime,
) -> Result<(), PkiError> {
    let pki = layout::pki_dir(cluster_dir);
    let certs = table::expand(profile, inventory);
    let mut writes = Vec::new();
    for id in ids {
        let Some(row) = certs.iter().find(|c| c.is_ca == Some(*id)) else {
            continue;
        };
        let (crt, key) = (
            layout::next_cert_path(&pki, id.name()),
            layout::next_key_path(&pki, id.name()),
        );
        let kept = match (std::fs::read(&crt), std::fs::read(&key)) {
            (Ok(c), Ok(k)) => issue::load_key(&k).is_ok_and(|k| {
                issue::check_existing(row, &c, &k, None, profile.pki.key_algorithm, now).is_ok()
            }),
            _ => false,
        };
        if kept {
            continue;
        }
        let k = issue::generate_key(profile.pki.key_algorithm)?;
        let pem = issue::issue(row, &k, None, &profile.pki, now)?;
        writes.push((key, k.serialize_pem().into_bytes(), fsutil::SECRET));
        writes.push((crt, pem.into_bytes(), fsutil::PUBLIC));
    }
    fsutil::write_batch_atomic(&writes).map_err(io(&pki))
}

/// Step 2: trust old and new (the bundle), kubeconfigs rebuilt to carry it.
pub fn trust_both(
    profile: &Profile,
    inventory: &Inventory,
    cluster_dir: &Path,
    ids: &[CaId],
    now: OffsetDateTime,
) -> Result<(), PkiError> {
    let pki = layout::pki_dir(cluster_dir);
    let mut writes = Vec::new();
    for id in ids {
        let old = read(&layout::cert_path(&pki, id.name()))?;
        let new = read(&layout::next_cert_path(&pki, id.name()))?;
        writes.push((
            layout::trust_path(&pki, id.name()),
            join_pems(&[&old, &new]),
            fsutil::PUBLIC,
        ));
    }
    fsutil::write_batch_atomic(&writes).map_err(io(&pki))?;
    super::ensure_at(profile, inventory, cluster_dir, now)?;
    Ok(())
}

/// Step 3: the new CA signs; every leaf of `ids` is re-issued from it (new keys).
pub fn promote(
    profile: &Profile,
    inventory: &Inventory,
    cluster_dir: &Path,
    ids: &[CaId],
    now: OffsetDateTime,
) -> Result<Vec<Renewed>, RotateError> {
    let pki = layout::pki_dir(cluster_dir);
    let mut writes = Vec::new();
    for id in ids {
        let crt = read(&layout::next_cert_path(&pki, id.name()))?;
        let key = read(&layout::next_key_path(&pki, id.name()))?;
        writes.push((layout::key_path(&pki, id.name()), key, fsutil::SECRET));
        writes.push((layout::cert_path(&pki, id.name()), crt, fsutil::PUBLIC));
    }
    fsutil::write_batch_atomic(&writes).map_err(io(&pki))?;
    for id in ids {
        remove_if_present(&layout::next_cert_path(&pki, id.name()))?;
        remove_if_present(&layout::next_key_path(&pki, id.name()))?;
    }
    let certs = table::expand(profile, inventory);
    let leaves: Vec<table::Cert> = certs
        .into_iter()
        .filter(|c| c.is_ca.is_none() && c.ca.is_some_and(|ca| ids.contains(&ca)))
        .collect();
    leaf_rotate::reissue(profile, inventory, cluster_dir, &leaves, now)
}

/// Step 4: only the new CA is trusted.
pub fn drop_old(
    profile: &Profile,
    inventory: &Inventory,
    cluster_dir: &Path,
    ids: &[CaId],
    now: OffsetDateTime,
) -> Result<(), PkiError> {
    let pki = layout::pki_dir(cluster_dir);
    for id in ids {
        remove_if_present(&layout::trust_path(&pki, id.name()))?;
    }
    super::ensure_at(profile, inventory, cluster_dir, now)?;
    Ok(())
}

/// Whether a CA of `ids` is mid-rotation in `cluster_dir` (a bundle or a next CA on disk).
pub fn in_progress(cluster_dir: &Path, ids: &[CaId]) -> Vec<CaId> {
    let pki = layout::pki_dir(cluster_dir);
    ids.iter()
        .copied()
        .filter(|id| {
            layout::trust_path(&pki, id.name()).exists()
                || layout::next_cert_path(&pki, id.name()).exists()
        })
        .collect()
}

fn sa_public_of(key_pem: &[u8]) -> Result<String, PkiError> {
    let key = issue::load_key(key_pem).map_err(|e| PkiError::Internal {
        name: layout::SERVICE_ACCOUNT.into(),
        reason: e.to_string(),
    })?;
    Ok(key.public_key_pem())
}

/// Service-account step 1: a new signing key (`sa.next.key`, 0600), kept when present.
pub fn sa_generate(profile: &Profile, cluster_dir: &Path) -> Result<(), PkiError> {
    let pki = layout::pki_dir(cluster_dir);
    let path = layout::next_key_path(&pki, layout::SERVICE_ACCOUNT);
    if let Ok(k) = std::fs::read(&path) {
        if issue::load_key(&k).is_ok_and(|k| issue::key_is(&k, profile.pki.key_algorithm)) {
            return Ok(());
        }
    }
    let k = issue::generate_key(profile.pki.key_algorithm)?;
    fsutil::write_atomic(&path, k.serialize_pem().as_bytes(), fsutil::SECRET).map_err(io(&path))
}

/// Service-account step 2: the apiservers accept the current and the new public key.
pub fn sa_trust_both(cluster_dir: &Path) -> Result<(), PkiError> {
    let pki = layout::pki_dir(cluster_dir);
    let current = sa_public_of(&read(&layout::key_path(&pki, layout::SERVICE_ACCOUNT))?)?;
    let next = sa_public_of(&read(&layout::next_key_path(
        &pki,
        layout::SERVICE_ACCOUNT,
    ))?)?;
    let path = layout::service_account_public(&pki);
    fsutil::write_atomic(
        &path,
        &join_pems(&[current.as_bytes(), next.as_bytes()]),
        fsutil::PUBLIC,
    )
    .map_err(io(&path))
}

/// Service-account step 3: the new key signs; `sa.pub` still accepts the previous one.
pub fn sa_switch(cluster_dir: &Path) -> Result<(), PkiError> {
    let pki = layout::pki_dir(cluster_dir);
    let next_path = layout::next_key_path(&pki, layout::SERVICE_ACCOUNT);
    let old = sa_public_of(&read(&layout::key_path(&pki, layout::SERVICE_ACCOUNT))?)?;
    let next = read(&next_path)?;
    let new_pub = sa_public_of(&next)?;
    fsutil::write_batch_atomic(&[
        (
            layout::key_path(&pki, layout::SERVICE_ACCOUNT),
            next,
            fsutil::SECRET,
        ),
        (
            layout::service_account_public(&pki),
            join_pems(&[new_pub.as_bytes(), old.as_bytes()]),
            fsutil::PUBLIC,
        ),
    ])
    .map_err(io(&pki))?;
    remove_if_present(&next_path)
}

/// Public keys in `sa.pub` (how many the apiservers accept).
pub fn sa_accepted_keys(cluster_dir: &Path) -> usize {
    let pki = layout::pki_dir(cluster_dir);
    std::fs::read_to_string(layout::service_account_public(&pki))
        .map(|s| s.matches("-----BEGIN PUBLIC KEY-----").count())
        .unwrap_or(0)
}

/// Service-account finish: only the signing key's public key is accepted.
pub fn sa_finish(cluster_dir: &Path) -> Result<(), PkiError> {
    let pki = layout::pki_dir(cluster_dir);
    let current = sa_public_of(&read(&layout::key_path(&pki, layout::SERVICE_ACCOUNT))?)?;
    let path = layout::service_account_public(&pki);
    fsutil::write_atomic(&path, current.as_bytes(), fsutil::PUBLIC).map_err(io(&path))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn setup() -> (Profile, Inventory, tempfile::TempDir) {
        let p = crate::profile::load("local-ha", &[]).unwrap().profile;
        let inv = crate::inventory::planned(&p, &Default::default()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        crate::pki::ensure(&p, &inv, dir.path()).unwrap();
        (p, inv, dir)
    }

    fn verify(ca: &Path, leaf: &Path) -> bool {
        let ca = issue::pem_to_der(&std::fs::read(ca).unwrap()).unwrap();
        let leaf = issue::pem_to_der(&std::fs::read(leaf).unwrap()).unwrap();
        use x509_parser::prelude::{FromDer, X509Certificate};
        let (_, ca) = X509Certificate::from_der(&ca).unwrap();
        let (_, leaf) = X509Certificate::from_der(&leaf).unwrap();
        leaf.verify_signature(Some(ca.public_key())).is_ok()
    }

    #[test]
    fn ca_steps_bundle_then_reissue_then_drop() {
        let (p, inv, dir) = setup();
        let now = OffsetDateTime::now_utc();
        let pki = layout::pki_dir(dir.path());
        let old_ca = std::fs::read(layout::cert_path(&pki, "etcd/ca")).unwrap();
        generate(&p, &inv, dir.path(), &[CaId::Etcd], now).unwrap();
        let next = std::fs::read(layout::next_cert_path(&pki, "etcd/ca")).unwrap();
        assert_ne!(next, old_ca);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(layout::next_key_path(&pki, "etcd/ca"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        // Re-running keeps the generated CA.
        generate(&p, &inv, dir.path(), &[CaId::Etcd], now).unwrap();
        assert_eq!(
            std::fs::read(layout::next_cert_path(&pki, "etcd/ca")).unwrap(),
            next
        );
        trust_both(&p, &inv, dir.path(), &[CaId::Etcd], now).unwrap();
        let bundle =
            String::from_utf8(std::fs::read(layout::trust_path(&pki, "etcd/ca")).unwrap()).unwrap();
        assert_eq!(bundle.matches("BEGIN CERTIFICATE").count(), 2);
        let renewed = promote(&p, &inv, dir.path(), &[CaId::Etcd], now).unwrap();
        assert_eq!(renewed.len(), 6 + 3, "{renewed:?}");
        assert_eq!(
            std::fs::read(layout::cert_path(&pki, "etcd/ca")).unwrap(),
            next
        );
        let server = layout::cert_path(&pki, "etcd/server-controlplane-1");
        assert!(verify(&layout::cert_path(&pki, "etcd/ca"), &server));
        // The Kubernetes CA's leaves are untouched.
        let report = crate::pki::ensure(&p, &inv, dir.path()).unwrap();
        assert!(report.issued.is_empty(), "{:?}", report.issued);
        drop_old(&p, &inv, dir.path(), &[CaId::Etcd], now).unwrap();
        assert!(!layout::trust_path(&pki, "etcd/ca").exists());
        assert!(in_progress(dir.path(), &CaId::ALL).is_empty());
    }

    #[test]
    fn kubeconfigs_carry_the_bundle_while_the_cluster_ca_rotates() {
        let (p, inv, dir) = setup();
        let now = OffsetDateTime::now_utc();
        generate(&p, &inv, dir.path(), &[CaId::Kubernetes], now).unwrap();
        trust_both(&p, &inv, dir.path(), &[CaId::Kubernetes], now).unwrap();
        let kc = std::fs::read_to_string(layout::kubeconfig_path(dir.path(), "admin")).unwrap();
        let data = kc
            .lines()
            .find_map(|l| l.trim().strip_prefix("certificate-authority-data:"))
            .unwrap();
        use base64::Engine;
        let pem = base64::engine::general_purpose::STANDARD
            .decode(data.trim())
            .unwrap();
        assert_eq!(
            String::from_utf8(pem)
                .unwrap()
                .matches("BEGIN CERTIFICATE")
                .count(),
            2
        );
    }

    #[test]
    fn service_account_keys_overlap_until_finished() {
        let (p, _inv, dir) = setup();
        let pki = layout::pki_dir(dir.path());
        let old_key = std::fs::read(layout::key_path(&pki, "sa")).unwrap();
        sa_generate(&p, dir.path()).unwrap();
        sa_trust_both(dir.path()).unwrap();
        assert_eq!(sa_accepted_keys(dir.path()), 2);
        sa_switch(dir.path()).unwrap();
        assert_ne!(
            std::fs::read(layout::key_path(&pki, "sa")).unwrap(),
            old_key
        );
        assert_eq!(sa_accepted_keys(dir.path()), 2);
        // `ensure` keeps the two-key sa.pub (it contains the signing key's).
        let inv = crate::inventory::planned(&p, &Default::default()).unwrap();
        let r = crate::pki::ensure(&p, &inv, dir.path()).unwrap();
        assert!(!r.issued.contains(&"sa".to_string()));
        sa_finish(dir.path()).unwrap();
        assert_eq!(sa_accepted_keys(dir.path()), 1);
    }
}
