//! Alert rules, as a Prometheus rule file (also the `spec` of a PrometheusRule). Every metric
//! they select is one a deployed exporter produces (`metrics`, checked below), and
//! `tests/monitoring_rules.rs` evaluates each alert with `promtool test rules`.

use serde::Serialize;

use super::certs_metric::{EXPIRY_METRIC, VALID_METRIC};

/// Certificates expiring within this many days alert (as `certs check` warns).
pub const CERT_WARN_DAYS: u32 = 30;
/// A link measured below this fraction of its expected speed is slow.
pub const SLOW_LINK_FRACTION: f64 = 0.5;
/// A GPU allocated to a pod with utilisation under this percentage is idle.
pub const IDLE_GPU_UTIL_PERCENT: u32 = 5;

#[derive(Debug, Clone, Serialize)]
pub struct Rule {
    pub alert: &'static str,
    pub expr: String,
    #[serde(rename = "for")]
    pub for_: &'static str,
    pub labels: std::collections::BTreeMap<&'static str, &'static str>,
    pub annotations: std::collections::BTreeMap<&'static str, String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct Group {
    pub name: &'static str,
    pub rules: Vec<Rule>,
}

fn rule(
    alert: &'static str,
    expr: String,
    for_: &'static str,
    severity: &'static str,
    summary: &str,
) -> Rule {
    Rule {
        alert,
        expr,
        for_,
        labels: [("severity", severity)].into(),
        annotations: [("summary", summary.to_string())].into(),
    }
}

/// Every alert group.
pub fn groups() -> Vec<Group> {
    vec![
        Group {
            name: "k8sforge-gpu",
            rules: vec![
                rule(
                    "GpuNodeNotReady",
                    format!(
                        r#"kube_node_status_condition{{condition="Ready",status="true"}} == 0 and on(node) kube_node_labels{{label_{}="{}"}}"#,
                        crate::addons::GPU_LABEL_KEY.replace(['.', '/', '-'], "_"),
                        crate::addons::GPU_LABEL_VALUE
                    ),
                    "5m",
                    "critical",
                    "GPU node {{ $labels.node }} is not Ready",
                ),
                rule(
                    "GpuXidError",
                    "max by (Hostname, gpu, UUID) (max_over_time(DCGM_FI_DEV_XID_ERRORS[10m])) > 0".into(),
                    "0m",
                    "critical",
                    "GPU {{ $labels.gpu }} on {{ $labels.Hostname }} reported Xid {{ $value }}",
                ),
                rule(
                    "GpuIdleWhileAllocated",
                    format!(
                        r#"avg_over_time(DCGM_FI_DEV_GPU_UTIL{{pod!=""}}[30m]) < {IDLE_GPU_UTIL_PERCENT}"#
                    ),
                    "30m",
                    "warning",
                    "GPU {{ $labels.gpu }} on {{ $labels.Hostname }} is allocated to {{ $labels.namespace }}/{{ $labels.pod }} and idle",
                ),
            ],
        },
        Group {
            name: "k8sforge-network",
            rules: vec![rule(
                "NodeLinkSlow",
                format!(
                    "k8sforge_netprobe_throughput_bits_per_second < {SLOW_LINK_FRACTION} * k8sforge_netprobe_expected_bits_per_second"
                ),
                "10m",
                "warning",
                "link {{ $labels.source }} -> {{ $labels.target }} is under half its expected speed",
            )],
        },
        Group {
            name: "k8sforge-certificates",
            rules: vec![
                rule(
                    "CertificateExpiringSoon",
                    format!("{EXPIRY_METRIC} - time() < {CERT_WARN_DAYS} * 86400"),
                    "0m",
                    "warning",
                    "certificate {{ $labels.certificate }} expires within 30 days: run k8sforge certs rotate",
                ),
                rule(
                    "CertificateInvalid",
                    format!("{VALID_METRIC} == 0"),
                    "0m",
                    "critical",
                    "certificate {{ $labels.certificate }} is {{ $labels.status }}",
                ),
            ],
        },
        Group {
            name: "k8sforge-targets",
            rules: vec![rule(
                "ScrapeTargetDown",
                "up == 0".into(),
                "10m",
                "warning",
                "{{ $labels.job }} on {{ $labels.node }} cannot be scraped",
            )],
        },
    ]
}

/// The rule file (`groups:`).
pub fn rule_file() -> String {
    #[derive(Serialize)]
    struct File {
        groups: Vec<Group>,
    }
    serde_yaml_ng::to_string(&File { groups: groups() }).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_rule_selects_only_metrics_an_exporter_produces() {
        for g in groups() {
            for r in &g.rules {
                let names = super::super::metrics::selected_metrics(&r.expr);
                assert!(!names.is_empty(), "{}: selects nothing", r.alert);
                for n in names {
                    assert!(
                        super::super::metrics::known(&n),
                        "{}: {n} is produced by no deployed exporter",
                        r.alert
                    );
                }
            }
        }
    }

    #[test]
    fn the_gpu_label_selector_is_kube_state_metrics_form() {
        let g = groups();
        assert!(g[0].rules[0]
            .expr
            .contains(r#"label_k8sforge_io_gpu="true""#));
    }
}
