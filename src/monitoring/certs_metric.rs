//! `certs check` as metrics, in the Prometheus text format for node-exporter's textfile
//! collector: the expiry of every certificate of the table (and of stray ones under `pki/`), and
//! whether it matches its row. The expiry is a timestamp, not "days left", so the file changes
//! only when a certificate is re-issued and the alert (`rules`) counts down with `time()`.

use std::fmt::Write;

use crate::pki::check::{CheckReport, Status};

/// When each certificate expires (notAfter), Unix seconds.
pub const EXPIRY_METRIC: &str = "k8sforge_certificate_expiry_timestamp_seconds";
/// 1 when the certificate is present, parses, matches its table row and is not expired.
pub const VALID_METRIC: &str = "k8sforge_certificate_valid";
/// File name in the textfile collector directory (node-exporter reads `*.prom`).
pub const TEXTFILE_NAME: &str = "k8sforge_certificates.prom";

fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The report as exposition text.
pub fn textfile(report: &CheckReport) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "# HELP {EXPIRY_METRIC} When the certificate expires (notAfter), Unix time; written by k8sforge certs check."
    );
    let _ = writeln!(out, "# TYPE {EXPIRY_METRIC} gauge");
    let label = |c: &crate::pki::check::CertStatus| {
        format!(
            "cluster=\"{}\",certificate=\"{}\"",
            escape(&report.cluster),
            escape(&c.name)
        )
    };
    for c in &report.certificates {
        if c.not_after_unix != 0 {
            let _ = writeln!(out, "{EXPIRY_METRIC}{{{}}} {}", label(c), c.not_after_unix);
        }
    }
    let _ = writeln!(
        out,
        "# HELP {VALID_METRIC} 1 when the certificate is present, matches its table row and has not expired."
    );
    let _ = writeln!(out, "# TYPE {VALID_METRIC} gauge");
    for c in &report.certificates {
        let valid = matches!(c.status, Status::Ok | Status::Expiring) && c.problem.is_none();
        let _ = writeln!(
            out,
            "{VALID_METRIC}{{{},status=\"{}\"}} {}",
            label(c),
            c.status.as_str(),
            u8::from(valid)
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn every_certificate_of_the_table_is_a_series() {
        let p = crate::profile::load("local-3", &[]).unwrap().profile;
        let inv = crate::inventory::planned(&p, &BTreeMap::new()).unwrap();
        let dir = tempfile::tempdir().unwrap();
        crate::pki::ensure(&p, &inv, dir.path()).unwrap();
        // One certificate missing: no expiry series, valid 0.
        std::fs::remove_file(dir.path().join("pki/front-proxy-client.crt")).unwrap();
        let now = time::OffsetDateTime::now_utc();
        let report = crate::pki::check::inspect(&p, &inv, dir.path(), 30, now).unwrap();
        let text = textfile(&report);
        let n = crate::pki::table::expand(&p, &inv).len();
        let count = |m: &str| text.lines().filter(|l| l.starts_with(m)).count();
        assert_eq!(count(&format!("{EXPIRY_METRIC}{{")), n - 1);
        assert_eq!(count(&format!("{VALID_METRIC}{{")), n);
        assert!(text.contains(&format!(
            "{VALID_METRIC}{{cluster=\"local-3\",certificate=\"front-proxy-client\",status=\"missing\"}} 0"
        )));
        let apiserver = text
            .lines()
            .find(|l| l.contains("certificate=\"apiserver\"") && l.starts_with(EXPIRY_METRIC))
            .unwrap();
        let ts: i64 = apiserver.rsplit(' ').next().unwrap().parse().unwrap();
        // Leaf lifetime: one year by default.
        let days = (ts - now.unix_timestamp()) / 86400;
        assert!((364..=366).contains(&days), "{days}");
    }
}
