//! PKI: CAs, the certificate table, issue, check and rotate. Files live in the cluster's state
//! directory (see `layout`).
//!
//! `ensure` walks the table (`table::expand`): every CA, then every leaf in parallel. What is on
//! disk is kept when it still matches its row, its CA and its key; everything else is issued
//! anew and written in one atomic batch. A certificate that only nears its expiry is kept and
//! reported as due: renewing it means restarting what uses it, which is `certs rotate`'s job
//! (node by node, in a safe order), never a side effect of `up` or `plan`. Kubeconfigs and the encryption config are derived files,
//! written only when their content changes, so a re-run leaves every file untouched.

pub mod ca_rotate;
pub mod check;
pub mod encryption;
pub mod issue;
pub mod kubeconfig;
pub mod layout;
pub mod rotate;
pub mod table;

use std::collections::BTreeMap;
use std::io;
use std::path::{Path, PathBuf};

use rayon::prelude::*;
use rcgen::KeyPair;
use time::OffsetDateTime;

use crate::fsutil;
use crate::inventory::Inventory;
use crate::profile::Profile;
use issue::{Ca, IssueError, Stale};
use table::{CaId, Cert};

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("cannot read or write {path}: {source}")]
    Io { path: PathBuf, source: io::Error },
    #[error(transparent)]
    Issue(#[from] IssueError),
    #[error("{name}: the certificate just issued does not parse back: {reason}")]
    Internal { name: String, reason: String },
    #[error(transparent)]
    Encryption(#[from] encryption::EncryptionError),
    #[error("cannot serialize kubeconfig {name}: {source}")]
    Kubeconfig {
        name: String,
        source: serde_yaml_ng::Error,
    },
    #[error("cluster {cluster} has no PKI yet (no {path}): run `k8sforge plan --profile {cluster}` first")]
    NoPki { cluster: String, path: PathBuf },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> PkiError + '_ {
    move |source| PkiError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What `ensure` did.
#[derive(Debug, Default, Clone, PartialEq, Eq, serde::Serialize)]
pub struct PkiReport {
    /// Certificates (table names) issued by this run; empty on a re-run with valid certs.
    pub issued: Vec<String>,
    /// Valid certificates found and kept.
    pub reused: usize,
    /// Kubeconfigs and other derived files written because their content changed.
    pub written: Vec<String>,
    /// Kept certificates inside their renewal window (or past it): `certs rotate` renews them.
    pub due: Vec<DueCert>,
}

/// A kept certificate that should be rotated soon.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DueCert {
    pub name: String,
    pub days_left: i64,
    pub is_ca: bool,
}

impl PkiReport {
    /// The warning `up` and `plan` print when certificates are due, naming the command that
    /// renews them (`profile_arg` is how the user named the profile); None when nothing is due.
    pub fn due_warning(&self, profile_arg: &str) -> Option<String> {
        if self.due.is_empty() {
            return None;
        }
        let list = |ca: bool| -> Vec<String> {
            self.due
                .iter()
                .filter(|d| d.is_ca == ca)
                .map(|d| {
                    if d.days_left < 0 {
                        format!("{} (EXPIRED)", d.name)
                    } else {
                        format!("{} ({} days left)", d.name, d.days_left)
                    }
                })
                .collect()
        };
        let (cas, leaves) = (list(true), list(false));
        let mut s = String::new();
        if !leaves.is_empty() {
            let shown: Vec<&str> = leaves.iter().take(5).map(String::as_str).collect();
            let more = leaves.len().saturating_sub(shown.len());
            s.push_str(&format!(
                "warning: {} certificate(s) are due for renewal and were NOT renewed: {}{}\n  renew them without downtime: k8sforge certs rotate --profile {profile_arg} --within 30d",
                leaves.len(),
                shown.join(", "),
                if more > 0 { format!(" and {more} more") } else { String::new() },
            ));
        }
        if !cas.is_empty() {
            if !s.is_empty() {
                s.push('\n');
            }
            s.push_str(&format!(
                "warning: CA certificate(s) near expiry and NOT renewed: {}\n  rotate the CAs: k8sforge certs rotate --profile {profile_arg} --ca",
                cas.join(", ")
            ));
        }
        Some(s)
    }
}

/// A certificate and key, either kept from disk or just issued.
struct Material {
    cert_pem: String,
    key_pem: String,
    key: KeyPair,
    /// Why it was issued; None when kept.
    issued: Option<Stale>,
    /// Kept, but inside its renewal window: days left.
    due: Option<i64>,
}

/// Make sure every CA, certificate, key, kubeconfig and the encryption config exist under
/// `cluster_dir` and are valid for this profile and inventory; issue only what is missing or wrong.
pub fn ensure(
    profile: &Profile,
    inventory: &Inventory,
    cluster_dir: &Path,
) -> Result<PkiReport, PkiError> {
    ensure_at(profile, inventory, cluster_dir, OffsetDateTime::now_utc())
}

/// `ensure` as if the clock said `now` (tests move it forward to see renewal windows).
pub fn ensure_at(
    profile: &Profile,
    inventory: &Inventory,
    cluster_dir: &Path,
    now: OffsetDateTime,
) -> Result<PkiReport, PkiError> {
    let certs = table::expand(profile, inventory);
    // Bad names in the profile fail before anything is written.
    for c in &certs {
        issue::check_sans(c)?;
    }
    let pki = layout::pki_dir(cluster_dir);
    let kubeconfigs = layout::kubeconfig_path(cluster_dir, "x")
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| cluster_dir.join("kubeconfigs"));
    for d in [cluster_dir, &pki, &pki.join("etcd"), &kubeconfigs] {
        fsutil::ensure_dir(d, fsutil::PRIVATE_DIR).map_err(io_err(d))?;
    }
    let progress = progress_bar(certs.len() as u64);

    // CAs first: a re-issued CA makes every child fail its signature check below.
    let ca_certs: Vec<&Cert> = certs.iter().filter(|c| c.is_ca.is_some()).collect();
    let started = std::time::Instant::now();
    let ca_material: Vec<Material> = ca_certs
        .par_iter()
        .map(|c| load_or_issue(c, None, &pki, profile, now))
        .collect::<Result<_, _>>()?;
    progress.inc(ca_certs.len() as u64);
    let mut writes: Vec<(PathBuf, Vec<u8>, u32)> = Vec::new();
    let mut report = PkiReport::default();
    let mut cas: BTreeMap<CaId, Ca> = BTreeMap::new();
    for (c, m) in ca_certs.iter().zip(ca_material) {
        record(c, &m, &pki, &mut writes, &mut report);
        let id = c.is_ca.unwrap_or(CaId::Kubernetes);
        let ca = Ca::new(id, m.cert_pem, m.key).map_err(|e| PkiError::Internal {
            name: c.name.clone(),
            reason: e.to_string(),
        })?;
        cas.insert(id, ca);
    }

    let leaves: Vec<&Cert> = certs.iter().filter(|c| c.is_ca.is_none()).collect();
    let leaf_material: Vec<Material> = leaves
        .par_iter()
        .map(|c| {
            let ca = c.ca.and_then(|id| cas.get(&id));
            let m = load_or_issue(c, ca, &pki, profile, now);
            progress.inc(1);
            m
        })
        .collect::<Result<_, _>>()?;
    progress.finish_and_clear();
    tracing::debug!(certs = certs.len(), elapsed = ?started.elapsed(), "PKI certificates checked or issued");
    for (c, m) in leaves.iter().zip(&leaf_material) {
        record(c, m, &pki, &mut writes, &mut report);
    }

    match service_account(&pki, profile)? {
        Some((key_pem, pub_pem)) => {
            report.issued.push(layout::SERVICE_ACCOUNT.to_string());
            writes.push((
                layout::key_path(&pki, layout::SERVICE_ACCOUNT),
                key_pem.into_bytes(),
                fsutil::SECRET,
            ));
            writes.push((
                layout::service_account_public(&pki),
                pub_pem.into_bytes(),
                fsutil::PUBLIC,
            ));
        }
        None => report.reused += 1,
    }

    // Kubeconfigs embed the CA and client material; rebuild them from what is now current and
    // write those whose bytes differ.
    // What clients trust: the CA, or old and new while the CA rotates (`layout::trust_path`).
    let kube_ca = match read_optional(&layout::trust_path(&pki, layout::CA))? {
        Some(bundle) => String::from_utf8_lossy(&bundle).into_owned(),
        None => cas
            .get(&CaId::Kubernetes)
            .map(|c| c.cert_pem.clone())
            .unwrap_or_default(),
    };
    let kube_ca = kube_ca.as_str();
    let kubeconfig_files: Vec<(PathBuf, Vec<u8>)> = leaves
        .par_iter()
        .zip(&leaf_material)
        .filter_map(|(c, m)| c.kubeconfig.map(|k| (c, m, k)))
        .map(|(c, m, k)| {
            let server = kubeconfig::server(k, profile, inventory);
            let kc = kubeconfig::build(&profile.name, server, c, kube_ca, &m.cert_pem, &m.key_pem);
            let yaml = kubeconfig::to_yaml(&kc).map_err(|source| PkiError::Kubeconfig {
                name: c.name.clone(),
                source,
            })?;
            Ok((
                layout::kubeconfig_path(cluster_dir, &c.name),
                yaml.into_bytes(),
            ))
        })
        .filter(|r| match r {
            Ok((path, bytes)) => std::fs::read(path).ok().as_ref() != Some(bytes),
            Err(_) => true,
        })
        .collect::<Result<_, PkiError>>()?;
    for (path, bytes) in kubeconfig_files {
        report.written.push(rel(cluster_dir, &path));
        writes.push((path, bytes, fsutil::SECRET));
    }

    let written_now: std::collections::BTreeSet<PathBuf> =
        writes.iter().map(|(p, _, _)| p.clone()).collect();
    let started = std::time::Instant::now();
    fsutil::write_batch_atomic(&writes).map_err(io_err(&pki))?;
    tracing::debug!(files = writes.len(), elapsed = ?started.elapsed(), "PKI files written");
    // Modes of kept files are enforced too (a copied-in key may be world-readable).
    fix_modes(&pki, &certs, &written_now)?;

    let enc = layout::encryption_config_path(cluster_dir);
    if encryption::ensure(&enc)? {
        report.written.push(rel(cluster_dir, &enc));
    }
    if !report.issued.is_empty() {
        tracing::info!(
            issued = report.issued.len(),
            reused = report.reused,
            "PKI updated"
        );
    }
    Ok(report)
}

fn progress_bar(len: u64) -> indicatif::ProgressBar {
    let pb = indicatif::ProgressBar::new(len);
    if let Ok(style) =
        indicatif::ProgressStyle::with_template("  PKI {bar:30} {pos}/{len} certificates")
    {
        pb.set_style(style);
    }
    pb
}

fn rel(base: &Path, p: &Path) -> String {
    p.strip_prefix(base).unwrap_or(p).display().to_string()
}

fn record(
    c: &Cert,
    m: &Material,
    pki: &Path,
    writes: &mut Vec<(PathBuf, Vec<u8>, u32)>,
    report: &mut PkiReport,
) {
    if let Some(days_left) = m.due {
        report.due.push(DueCert {
            name: c.name.clone(),
            days_left,
            is_ca: c.is_ca.is_some(),
        });
    }
    match &m.issued {
        None => report.reused += 1,
        Some(reason) => {
            tracing::trace!(cert = %c.name, %reason, "issued");
            report.issued.push(c.name.clone());
            // Key before certificate: a crash in between leaves a mismatch that the next run fixes.
            writes.push((
                layout::key_path(pki, &c.name),
                m.key_pem.clone().into_bytes(),
                fsutil::SECRET,
            ));
            writes.push((
                layout::cert_path(pki, &c.name),
                m.cert_pem.clone().into_bytes(),
                fsutil::PUBLIC,
            ));
        }
    }
}

/// Read a file; `Ok(None)` when it does not exist.
fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, PkiError> {
    match std::fs::read(path) {
        Ok(b) => Ok(Some(b)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(PkiError::Io {
            path: path.to_path_buf(),
            source,
        }),
    }
}

fn load_or_issue(
    cert: &Cert,
    ca: Option<&Ca>,
    pki: &Path,
    profile: &Profile,
    now: OffsetDateTime,
) -> Result<Material, PkiError> {
    let alg = profile.pki.key_algorithm;
    let key_pem = read_optional(&layout::key_path(pki, &cert.name))?;
    let cert_pem = read_optional(&layout::cert_path(pki, &cert.name))?;
    let kept = (|| {
        let (Some(key_pem), Some(cert_pem)) = (key_pem, cert_pem) else {
            return Err(Stale::Missing);
        };
        let key = issue::load_key(&key_pem)?;
        // Nearing expiry is not a reason to re-issue here (see the module doc): keep and report.
        let due = match issue::check_existing(
            cert,
            &cert_pem,
            &key,
            ca.map(|c| c.der.as_slice()),
            alg,
            now,
        ) {
            Ok(()) => None,
            Err(Stale::Expiring { days_left }) => Some(days_left),
            Err(e) => return Err(e),
        };
        let text = |b: Vec<u8>| String::from_utf8(b).map_err(|e| Stale::Unparsable(e.to_string()));
        Ok(Material {
            cert_pem: text(cert_pem)?,
            key_pem: text(key_pem)?,
            key,
            issued: None,
            due,
        })
    })();
    match kept {
        Ok(m) => Ok(m),
        Err(reason) => {
            let key = issue::generate_key(alg)?;
            let cert_pem = issue::issue(cert, &key, ca, &profile.pki, now)?;
            Ok(Material {
                cert_pem,
                key_pem: key.serialize_pem(),
                key,
                issued: Some(reason),
                due: None,
            })
        }
    }
}

/// The service-account signing key pair. Returns new (private, public) PEMs when it had to be
/// generated, None when the existing pair is kept.
fn service_account(pki: &Path, profile: &Profile) -> Result<Option<(String, String)>, PkiError> {
    let alg = profile.pki.key_algorithm;
    let key_pem = read_optional(&layout::key_path(pki, layout::SERVICE_ACCOUNT))?;
    let pub_pem = read_optional(&layout::service_account_public(pki))?;
    if let (Some(k), Some(p)) = (key_pem, pub_pem) {
        if let Ok(key) = issue::load_key(&k) {
            // sa.pub may also hold the previous public key while a rotation is not finished.
            let accepted = String::from_utf8_lossy(&p);
            if issue::key_is(&key, alg) && accepted.contains(key.public_key_pem().trim()) {
                return Ok(None);
            }
        }
    }
    let key = issue::generate_key(alg)?;
    Ok(Some((key.serialize_pem(), key.public_key_pem())))
}

/// Private keys 0600, certificates 0644, for files kept from earlier runs (`fresh` were just
/// written with the right mode).
fn fix_modes(
    pki: &Path,
    certs: &[Cert],
    fresh: &std::collections::BTreeSet<PathBuf>,
) -> Result<(), PkiError> {
    use std::os::unix::fs::PermissionsExt;
    let mut files: Vec<(PathBuf, u32)> = Vec::new();
    for c in certs {
        files.push((layout::key_path(pki, &c.name), fsutil::SECRET));
        files.push((layout::cert_path(pki, &c.name), fsutil::PUBLIC));
    }
    files.push((
        layout::key_path(pki, layout::SERVICE_ACCOUNT),
        fsutil::SECRET,
    ));
    files.push((layout::service_account_public(pki), fsutil::PUBLIC));
    for (path, mode) in files.into_iter().filter(|(p, _)| !fresh.contains(p)) {
        let meta = std::fs::metadata(&path).map_err(io_err(&path))?;
        if meta.permissions().mode() & 0o7777 != mode {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(mode))
                .map_err(io_err(&path))?;
        }
    }
    Ok(())
}
