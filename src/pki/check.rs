//! `k8sforge certs check`: every certificate of the table, read back from disk with x509-parser:
//! subject, SANs, issuer, expiry, and whether it still matches its row. Exit status 2 when any
//! certificate is missing, unreadable, expired or inside the warning window, so it works from cron.

use std::path::Path;

use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::issue::{self, Stale};
use super::table::{self, CaId, Cert};
use super::{layout, PkiError};
use crate::inventory::Inventory;
use crate::profile::Profile;

/// Exit status when a certificate needs attention (1 stays "could not check").
pub const EXIT_ATTENTION: u8 = 2;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Ok,
    /// Expires within the warning window.
    Expiring,
    Expired,
    Missing,
    /// The file does not parse as a certificate.
    Invalid,
}

impl Status {
    fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Expiring => "expiring",
            Status::Expired => "expired",
            Status::Missing => "missing",
            Status::Invalid => "invalid",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CertStatus {
    pub name: String,
    pub subject: String,
    pub sans: Vec<String>,
    pub issuer: String,
    /// RFC 3339.
    pub not_after: String,
    pub days_left: i64,
    pub status: Status,
    /// How the file differs from its table row (key, CA, subject, SANs, usages), if it does.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub problem: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct CheckReport {
    pub cluster: String,
    pub warn_days: u32,
    pub certificates: Vec<CertStatus>,
    /// True when every certificate of the state directory is `ok`.
    pub ok: bool,
}

/// Read every certificate of the table under `cluster_dir`.
pub fn inspect(
    profile: &Profile,
    inventory: &Inventory,
    cluster_dir: &Path,
    warn_days: u32,
    now: OffsetDateTime,
) -> Result<CheckReport, PkiError> {
    let pki = layout::pki_dir(cluster_dir);
    let ca_path = layout::cert_path(&pki, layout::CA);
    if !ca_path.exists() {
        return Err(PkiError::NoPki {
            cluster: profile.name.clone(),
            path: ca_path,
        });
    }
    let certs = table::expand(profile, inventory);
    let ca_der = |id: CaId| -> Option<Vec<u8>> {
        let pem = std::fs::read(layout::cert_path(&pki, id.name())).ok()?;
        issue::pem_to_der(&pem).ok()
    };
    let cas: Vec<(CaId, Option<Vec<u8>>)> = CaId::ALL.iter().map(|id| (*id, ca_der(*id))).collect();
    let mut statuses: Vec<CertStatus> = certs
        .iter()
        .map(|c| {
            let ca =
                c.ca.and_then(|id| cas.iter().find(|(i, _)| *i == id))
                    .and_then(|(_, d)| d.as_deref());
            one(c, &pki, ca, profile, warn_days, now)
        })
        .collect();
    // Certificates on disk that the table no longer has (e.g. of a removed node): shown with
    // their expiry, so nothing under pki/ goes unchecked.
    let known: std::collections::BTreeSet<&str> = certs.iter().map(|c| c.name.as_str()).collect();
    for name in cert_files(&pki) {
        if !known.contains(name.as_str()) {
            let mut st = read_cert(&name, &pki, warn_days, now);
            if st.status != Status::Invalid {
                st.problem = Some("not in the certificate table of this profile".into());
            }
            statuses.push(st);
        }
    }
    let ok = statuses.iter().all(|s| s.status == Status::Ok);
    Ok(CheckReport {
        cluster: profile.name.clone(),
        warn_days,
        certificates: statuses,
        ok,
    })
}

/// Table names (`etcd/ca`, `kubelet-x`) of every `.crt` under `pki`, sorted.
fn cert_files(pki: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![pki.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.filter_map(Result::ok) {
            let path = e.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|x| x == "crt") {
                if let Ok(rel) = path.with_extension("").strip_prefix(pki) {
                    out.push(rel.to_string_lossy().into_owned());
                }
            }
        }
    }
    out.sort();
    out
}

/// Subject, SANs, issuer and expiry of `<pki>/<name>.crt`.
fn read_cert(name: &str, pki: &Path, warn_days: u32, now: OffsetDateTime) -> CertStatus {
    let mut st = CertStatus {
        name: name.to_string(),
        subject: String::new(),
        sans: Vec::new(),
        issuer: String::new(),
        not_after: String::new(),
        days_left: 0,
        status: Status::Missing,
        problem: None,
    };
    let Ok(pem) = std::fs::read(layout::cert_path(pki, name)) else {
        return st;
    };
    let parsed = issue::pem_to_der(&pem).and_then(|der| {
        let (_, x) =
            X509Certificate::from_der(&der).map_err(|e| Stale::Unparsable(e.to_string()))?;
        st.subject = x.subject().to_string();
        st.issuer = x.issuer().to_string();
        st.sans = issue::read_sans(&x).iter().map(|s| s.to_string()).collect();
        let not_after = x.validity().not_after.to_datetime();
        st.not_after = not_after.format(&Rfc3339).unwrap_or_default();
        st.days_left = (not_after - now).whole_days();
        st.status = if not_after <= now {
            Status::Expired
        } else if (not_after - now) < time::Duration::days(i64::from(warn_days)) {
            Status::Expiring
        } else {
            Status::Ok
        };
        Ok(())
    });
    if let Err(e) = parsed {
        st.status = Status::Invalid;
        st.problem = Some(e.to_string());
    }
    st
}

/// A table certificate: what `read_cert` shows, plus how it differs from its row.
fn one(
    c: &Cert,
    pki: &Path,
    ca_der: Option<&[u8]>,
    profile: &Profile,
    warn_days: u32,
    now: OffsetDateTime,
) -> CertStatus {
    let mut st = read_cert(&c.name, pki, warn_days, now);
    if matches!(st.status, Status::Missing | Status::Invalid) {
        return st;
    }
    let Ok(pem) = std::fs::read(layout::cert_path(pki, &c.name)) else {
        return st;
    };
    // Compare with the table row like `ensure` does; expiry is already the status.
    let key = std::fs::read(layout::key_path(pki, &c.name))
        .map_err(|e| Stale::Unparsable(format!("private key: {e}")))
        .and_then(|k| issue::load_key(&k));
    let verdict = key.and_then(|key| {
        if c.ca.is_some() && ca_der.is_none() {
            return Err(Stale::NotSignedByCa);
        }
        issue::check_existing(c, &pem, &key, ca_der, profile.pki.key_algorithm, now)
    });
    match verdict {
        Ok(()) | Err(Stale::Expiring { .. }) => {}
        Err(e) => st.problem = Some(e.to_string()),
    }
    st
}

/// Aligned text table, one certificate per line.
pub fn table_text(report: &CheckReport) -> String {
    let header = [
        "NAME",
        "SUBJECT",
        "SANS",
        "ISSUER",
        "NOT AFTER",
        "DAYS LEFT",
        "STATUS",
    ];
    let rows: Vec<[String; 7]> = report
        .certificates
        .iter()
        .map(|c| {
            let status = match &c.problem {
                Some(p) => format!("{} ({p})", c.status.as_str()),
                None => c.status.as_str().to_string(),
            };
            [
                c.name.clone(),
                or_dash(&c.subject),
                or_dash(&c.sans.join(",")),
                or_dash(&c.issuer),
                or_dash(&c.not_after),
                if c.status == Status::Missing {
                    "-".into()
                } else {
                    c.days_left.to_string()
                },
                status,
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut s = String::new();
    let mut line = |cells: Vec<&str>| {
        let last = cells.len() - 1;
        for (i, cell) in cells.iter().enumerate() {
            if i == last {
                s.push_str(cell);
            } else {
                s.push_str(&format!("{cell:<w$}  ", w = widths[i]));
            }
        }
        s.push('\n');
    };
    line(header.to_vec());
    for r in &rows {
        line(r.iter().map(String::as_str).collect());
    }
    s
}

fn or_dash(s: &str) -> String {
    if s.is_empty() {
        "-".into()
    } else {
        s.to_string()
    }
}
