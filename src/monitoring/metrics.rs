//! Metric names the deployed exporters produce: the facts alert rules and dashboards are
//! checked against (`tests` below: every name a rule selects is listed here). Each list names
//! where the names come from.

/// NVIDIA dcgm-exporter, pinned version (`DCGM_EXPORTER_VERSION`): its
/// `etc/default-counters.csv` at tag 4.5.3-4.8.2 (the names of the pinned version; they differ
/// from 4.9 on).
pub const DCGM: &[&str] = &[
    "DCGM_FI_DEV_SM_CLOCK",
    "DCGM_FI_DEV_MEM_CLOCK",
    "DCGM_FI_DEV_MEMORY_TEMP",
    "DCGM_FI_DEV_GPU_TEMP",
    "DCGM_FI_DEV_POWER_USAGE",
    "DCGM_FI_DEV_TOTAL_ENERGY_CONSUMPTION",
    "DCGM_FI_DEV_PCIE_REPLAY_COUNTER",
    "DCGM_FI_DEV_GPU_UTIL",
    "DCGM_FI_DEV_MEM_COPY_UTIL",
    "DCGM_FI_DEV_ENC_UTIL",
    "DCGM_FI_DEV_DEC_UTIL",
    "DCGM_FI_DEV_XID_ERRORS",
    "DCGM_FI_DEV_FB_FREE",
    "DCGM_FI_DEV_FB_USED",
    "DCGM_FI_DEV_FB_RESERVED",
    "DCGM_FI_DEV_NVLINK_BANDWIDTH_TOTAL",
    "DCGM_FI_DEV_VGPU_LICENSE_STATUS",
    "DCGM_FI_DEV_UNCORRECTABLE_REMAPPED_ROWS",
    "DCGM_FI_DEV_CORRECTABLE_REMAPPED_ROWS",
    "DCGM_FI_DEV_ROW_REMAP_FAILURE",
    "DCGM_FI_PROF_GR_ENGINE_ACTIVE",
    "DCGM_FI_PROF_PIPE_TENSOR_ACTIVE",
    "DCGM_FI_PROF_DRAM_ACTIVE",
    "DCGM_FI_PROF_PCIE_TX_BYTES",
    "DCGM_FI_PROF_PCIE_RX_BYTES",
];

/// kube-state-metrics (its `docs/metrics/` reference: node and pod metrics used here).
pub const KUBE_STATE_METRICS: &[&str] = &[
    "kube_node_info",
    "kube_node_labels",
    "kube_node_status_condition",
    "kube_node_status_allocatable",
    "kube_node_spec_unschedulable",
    "kube_pod_info",
    "kube_pod_owner",
    "kube_pod_labels",
    "kube_pod_status_phase",
    "kube_pod_container_resource_requests",
];

/// node-exporter (Debian `prometheus-node-exporter`; the names the live test also reads).
pub const NODE_EXPORTER: &[&str] = &[
    "node_cpu_seconds_total",
    "node_memory_MemAvailable_bytes",
    "node_memory_MemTotal_bytes",
    "node_filesystem_avail_bytes",
    "node_network_receive_bytes_total",
    "node_network_transmit_bytes_total",
    "node_load1",
];

/// Prometheus itself: the synthetic series of every scrape.
pub const PROMETHEUS: &[&str] = &["up", "scrape_duration_seconds", "scrape_samples_scraped"];

/// k8sforge's own: `certs check` as a textfile (`certs_metric`) and the network probe.
pub const K8SFORGE: &[&str] = &[
    super::certs_metric::EXPIRY_METRIC,
    super::certs_metric::VALID_METRIC,
    crate::netprobe::THROUGHPUT_METRIC,
    crate::netprobe::EXPECTED_METRIC,
    crate::netprobe::RTT_METRIC,
    crate::netprobe::ERRORS_METRIC,
    "k8sforge_nccl_busbw_bytes_per_second",
];

/// Whether some deployed exporter produces `name` (a `*_bucket`/`_sum`/`_count` of a listed
/// histogram counts as produced).
pub fn known(name: &str) -> bool {
    [
        DCGM,
        KUBE_STATE_METRICS,
        NODE_EXPORTER,
        PROMETHEUS,
        K8SFORGE,
    ]
    .iter()
    .any(|list| list.contains(&name))
}

/// PromQL keywords and aggregation modifiers (not metric names).
const KEYWORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "and",
    "or",
    "unless",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "bool",
    "offset",
    "inf",
    "nan",
];

/// The metric names a PromQL expression selects: identifiers outside label matchers, strings
/// and ranges, not followed by `(` (functions, aggregations) and not inside the label list of
/// `by`/`on`/`without`/`ignoring`/`group_*`. A small reader, enough for the expressions
/// k8sforge writes (tested below).
pub fn selected_metrics(expr: &str) -> Vec<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut out = Vec::new();
    let mut i = 0;
    let mut skip_list = false;
    while i < chars.len() {
        let c = chars[i];
        match c {
            '{' | '[' => {
                let close = if c == '{' { '}' } else { ']' };
                while i < chars.len() && chars[i] != close {
                    i += 1;
                }
                i += 1;
            }
            '"' | '\'' => {
                i += 1;
                while i < chars.len() && chars[i] != c {
                    i += 1;
                }
                i += 1;
            }
            c if c.is_ascii_alphabetic() || c == '_' || c == ':' => {
                let start = i;
                while i < chars.len()
                    && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':')
                {
                    i += 1;
                }
                let word: String = chars[start..i].iter().collect();
                let mut j = i;
                while j < chars.len() && chars[j] == ' ' {
                    j += 1;
                }
                let call = j < chars.len() && chars[j] == '(';
                let lower = word.to_ascii_lowercase();
                if [
                    "by",
                    "on",
                    "without",
                    "ignoring",
                    "group_left",
                    "group_right",
                ]
                .contains(&lower.as_str())
                {
                    skip_list = call;
                } else if !call && !skip_list && !KEYWORDS.contains(&lower.as_str()) {
                    out.push(word);
                }
            }
            ')' => {
                skip_list = false;
                i += 1;
            }
            c if c.is_ascii_digit() || c == '.' => {
                // Numbers, including durations like 5m and exponents like 1e9.
                while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '.') {
                    i += 1;
                }
            }
            _ => i += 1,
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reader_finds_metric_names_only() {
        assert_eq!(
            selected_metrics(
                r#"max by (node, gpu) (max_over_time(DCGM_FI_DEV_XID_ERRORS{pod!="x"}[10m])) > 0 and on(node) kube_node_labels{label_a="b"} * 1e9 - time()"#
            ),
            ["DCGM_FI_DEV_XID_ERRORS", "kube_node_labels"]
        );
        assert_eq!(selected_metrics("sum(rate(up[5m])) by (job)"), ["up"]);
    }
}
