//! The certificates actually deployed on the nodes, read over SSH: every `.crt` the node's
//! bundle installs, and the client certificate embedded in every kubeconfig (only the
//! `client-certificate-data` line leaves the node: never a key). Each is compared with what the
//! state directory says the node should hold (drift) and checked for expiry. `certs check` and
//! `status` show them per node.

use std::time::Duration;

use base64::Engine;
use serde::Serialize;
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use x509_parser::prelude::{FromDer, X509Certificate};

use crate::inventory::Inventory;
use crate::pki::issue;
use crate::remote::Executor;
use crate::render::Bundle;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeployedStatus {
    Ok,
    Expiring,
    Expired,
    Missing,
    Invalid,
    /// Not what the state directory holds for this node (an older or foreign certificate).
    Drift,
}

impl DeployedStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            DeployedStatus::Ok => "ok",
            DeployedStatus::Expiring => "expiring",
            DeployedStatus::Expired => "expired",
            DeployedStatus::Missing => "missing",
            DeployedStatus::Invalid => "invalid",
            DeployedStatus::Drift => "drift",
        }
    }
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeployedCert {
    /// Path on the node (a kubeconfig for embedded client certificates).
    pub path: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub subject: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub serial: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    pub not_after: String,
    pub days_left: i64,
    /// Subject key identifier (hex) of the (first) certificate.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub key_id: String,
    /// Authority key identifier (hex): the key id of the CA that signed it (empty for a CA).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub issuer_key_id: String,
    /// Certificates in the file (more than one: a trust bundle mid CA rotation).
    pub count: usize,
    /// Same certificate as the state directory's.
    pub matches_state: bool,
    pub status: DeployedStatus,
}

#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct NodeCerts {
    pub node: String,
    pub reachable: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub certificates: Vec<DeployedCert>,
}

impl NodeCerts {
    pub fn ok(&self) -> bool {
        self.reachable
            && self
                .certificates
                .iter()
                .all(|c| c.status == DeployedStatus::Ok)
    }

    /// Days until the first deployed certificate expires.
    pub fn min_days_left(&self) -> Option<i64> {
        self.certificates
            .iter()
            .filter(|c| !c.not_after.is_empty())
            .map(|c| c.days_left)
            .min()
    }
}

/// The PEM a file holds as far as certificates go: itself for `.crt`, the decoded
/// `client-certificate-data` for a kubeconfig.
fn cert_pem_of(path: &str, content: &[u8]) -> Option<Vec<u8>> {
    if path.ends_with(".kubeconfig") {
        let text = std::str::from_utf8(content).ok()?;
        let line = text
            .lines()
            .find_map(|l| l.trim().strip_prefix("client-certificate-data:"))?;
        base64::engine::general_purpose::STANDARD
            .decode(line.trim().trim_matches('"'))
            .ok()
    } else {
        Some(content.to_vec())
    }
}

fn is_cert_file(path: &str) -> bool {
    path.ends_with(".crt") || path.ends_with(".kubeconfig")
}

/// The `up` phase that installs a file, so files of phases not run yet are not reported missing.
fn phase_of(f: &crate::render::BundleFile) -> &'static str {
    let restarts = |u: &str| f.restarts.iter().any(|r| r == u);
    if f.path.starts_with("/etc/etcd/") || restarts("etcd.service") {
        "etcd"
    } else if f.path == crate::render::paths::PATHS.admin_kubeconfig
        || restarts("kube-apiserver.service")
        || restarts("kube-controller-manager.service")
        || restarts("kube-scheduler.service")
    {
        "control-plane"
    } else {
        "workers"
    }
}

/// One script per node: for each path, `path base64(PEM)` or `path -` when absent.
fn script(paths: &[&str]) -> String {
    let mut s = String::from("for f in");
    for p in paths {
        s.push(' ');
        s.push_str(&crate::remote::sync::shell_quote(p));
    }
    s.push_str(
        "; do if [ -f \"$f\" ]; then case \"$f\" in \
         *.kubeconfig) d=$(sed -n 's/^ *client-certificate-data: *//p' \"$f\" | head -n 1) ;; \
         *) d=$(base64 -w0 < \"$f\") ;; esac; printf '%s %s\\n' \"$f\" \"${d:--}\"; \
         else printf '%s -\\n' \"$f\"; fi; done",
    );
    s
}

/// (subject key id, authority key id) in hex; empty when absent.
fn key_ids(x: &X509Certificate<'_>) -> (String, String) {
    use x509_parser::extensions::ParsedExtension;
    let hex = |b: &[u8]| b.iter().map(|v| format!("{v:02x}")).collect::<String>();
    let (mut ski, mut aki) = (String::new(), String::new());
    for e in x.extensions() {
        match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => ski = hex(k.0),
            ParsedExtension::AuthorityKeyIdentifier(a) => {
                if let Some(k) = &a.key_identifier {
                    aki = hex(k.0);
                }
            }
            _ => {}
        }
    }
    (ski, aki)
}

fn inspect(
    path: &str,
    deployed: Option<&[u8]>,
    want: Option<&[u8]>,
    warn_days: u32,
    now: OffsetDateTime,
) -> DeployedCert {
    let mut c = DeployedCert {
        path: path.to_string(),
        subject: String::new(),
        serial: String::new(),
        not_after: String::new(),
        days_left: 0,
        key_id: String::new(),
        issuer_key_id: String::new(),
        count: 0,
        matches_state: false,
        status: DeployedStatus::Missing,
    };
    let Some(pem) = deployed else {
        return c;
    };
    c.matches_state = want == Some(pem);
    let parsed = issue::pem_to_der(pem).ok().and_then(|der| {
        let (_, x) = X509Certificate::from_der(&der).ok()?;
        let na = x.validity().not_after.to_datetime();
        let (ski, aki) = key_ids(&x);
        Some((
            x.subject().to_string(),
            x.raw_serial_as_string().replace(':', ""),
            na,
            ski,
            aki,
        ))
    });
    let Some((subject, serial, na, ski, aki)) = parsed else {
        c.status = DeployedStatus::Invalid;
        return c;
    };
    c.key_id = ski;
    c.issuer_key_id = aki;
    c.count = String::from_utf8_lossy(pem)
        .matches("-----BEGIN CERTIFICATE-----")
        .count();
    c.subject = subject;
    c.serial = serial;
    c.not_after = na.format(&Rfc3339).unwrap_or_default();
    c.days_left = (na - now).whole_days();
    c.status = if na <= now {
        DeployedStatus::Expired
    } else if !c.matches_state {
        DeployedStatus::Drift
    } else if na - now < time::Duration::days(i64::from(warn_days)) {
        DeployedStatus::Expiring
    } else {
        DeployedStatus::Ok
    };
    c
}

/// Read every node's deployed certificates (bounded fan-out) and compare them with `bundle`
/// (rendered from the state directory).
pub fn read_all(
    exec: &Executor,
    inventory: &Inventory,
    bundle: &Bundle,
    installed: &std::collections::BTreeSet<String>,
    warn_days: u32,
    now: OffsetDateTime,
) -> Vec<NodeCerts> {
    // Files of phases that have not run are not expected on the nodes (no record at all: the
    // state predates phase records, so everything is expected).
    let expected = |f: &crate::render::BundleFile| {
        is_cert_file(&f.path) && (installed.is_empty() || installed.contains(phase_of(f)))
    };
    let nodes: Vec<_> = inventory
        .nodes
        .iter()
        .filter(|n| bundle.nodes.contains_key(&n.name))
        .collect();
    let results: Vec<_> = crate::remote::fanout::parallel_each(
        &nodes,
        exec.options().concurrency,
        "certs",
        false,
        None,
        |node| {
            let nb = &bundle.nodes[&node.name];
            let paths: Vec<&str> = nb
                .files
                .iter()
                .filter(|f| expected(f))
                .map(|f| f.path.as_str())
                .collect();
            let out = exec
                .connect(node)?
                .exec(&script(&paths), Duration::from_secs(30))?;
            Ok::<_, crate::remote::RemoteError>(out.stdout)
        },
    );
    nodes
        .iter()
        .zip(results)
        .map(|(node, r)| match r {
            Err(e) => NodeCerts {
                node: node.name.clone(),
                reachable: false,
                error: Some(e.to_string()),
                certificates: Vec::new(),
            },
            Ok(stdout) => {
                let nb = &bundle.nodes[&node.name];
                let certificates = nb
                    .files
                    .iter()
                    .filter(|f| expected(f))
                    .map(|f| {
                        let deployed = stdout
                            .lines()
                            .find_map(|l| {
                                l.split_once(' ')
                                    .filter(|(p, _)| *p == f.path)
                                    .map(|(_, d)| d)
                            })
                            .filter(|d| *d != "-")
                            .and_then(|d| {
                                base64::engine::general_purpose::STANDARD
                                    .decode(d.trim())
                                    .ok()
                            });
                        let want = cert_pem_of(&f.path, &f.content);
                        inspect(
                            &f.path,
                            deployed.as_deref(),
                            want.as_deref(),
                            warn_days,
                            now,
                        )
                    })
                    .collect();
                NodeCerts {
                    node: node.name.clone(),
                    reachable: true,
                    error: None,
                    certificates,
                }
            }
        })
        .collect()
}

/// Reads the deployed certificates of `inventory`'s nodes against the bundle rendered from the
/// state directory in `cluster_dir` (what `certs check` calls once it has checked the files).
pub type Reader = Box<dyn Fn(OffsetDateTime) -> Vec<NodeCerts>>;

pub fn reader(
    profile: &crate::profile::Profile,
    inventory: &Inventory,
    cluster_dir: &std::path::Path,
    state: &crate::state::State,
    warn_days: u32,
) -> anyhow::Result<Reader> {
    let installed: std::collections::BTreeSet<String> = state.phases.keys().cloned().collect();
    let bundle = crate::render::render(profile, inventory, cluster_dir)?;
    let exec = Executor::new(
        cluster_dir,
        crate::remote::ExecutorOptions {
            progress: false,
            retries: 1,
            connect_timeout: Duration::from_secs(5),
            // A check (status, certs check): never writes known_hosts, an unpinned host is an
            // error for that node.
            pin_unknown_hosts: false,
            ..Default::default()
        },
    )?;
    let inventory = inventory.clone();
    Ok(Box::new(move |now| {
        read_all(&exec, &inventory, &bundle, &installed, warn_days, now)
    }))
}

/// Aligned text: one line per deployed certificate, unreachable nodes named.
pub fn table_text(nodes: &[NodeCerts]) -> String {
    let mut rows: Vec<[String; 6]> = Vec::new();
    for n in nodes {
        if !n.reachable {
            rows.push([
                n.node.clone(),
                "-".into(),
                "-".into(),
                "-".into(),
                "-".into(),
                format!("UNREACHABLE ({})", n.error.clone().unwrap_or_default()),
            ]);
            continue;
        }
        for c in &n.certificates {
            rows.push([
                n.node.clone(),
                c.path.clone(),
                if c.serial.is_empty() {
                    "-".into()
                } else {
                    c.serial.chars().take(16).collect()
                },
                if c.not_after.is_empty() {
                    "-".into()
                } else {
                    c.not_after.clone()
                },
                if c.not_after.is_empty() {
                    "-".into()
                } else {
                    c.days_left.to_string()
                },
                c.status.as_str().to_string(),
            ]);
        }
    }
    let header = [
        "NODE",
        "DEPLOYED FILE",
        "SERIAL",
        "NOT AFTER",
        "DAYS LEFT",
        "STATUS",
    ];
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, cell) in widths.iter_mut().zip(r) {
            *w = (*w).max(cell.chars().count());
        }
    }
    let mut s = String::new();
    let mut line = |cells: Vec<&str>| {
        for (i, cell) in cells.iter().enumerate() {
            if i + 1 == cells.len() {
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kubeconfig_client_certificate_is_extracted_and_keys_never_are() {
        let pem = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        let b64 = base64::engine::general_purpose::STANDARD.encode(pem);
        let kc = format!("users:\n- name: x\n  user:\n    client-certificate-data: {b64}\n    client-key-data: c2VjcmV0\n");
        assert_eq!(
            cert_pem_of("/etc/kubernetes/a.kubeconfig", kc.as_bytes()).unwrap(),
            pem
        );
        let s = script(&["/etc/kubernetes/a.kubeconfig", "/etc/etcd/ca.crt"]);
        assert!(s.contains("client-certificate-data"));
        assert!(!s.contains("client-key-data"));
        assert!(is_cert_file("/etc/etcd/server.crt") && !is_cert_file("/etc/etcd/server.key"));
    }
}
