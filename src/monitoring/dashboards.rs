//! Grafana dashboards as code, provisioned as ConfigMaps that kube-prometheus's Grafana mounts
//! into its file provider's directory (`stack::mount_dashboards`). Cluster health is the
//! kubernetes-mixin dashboards kube-prometheus ships (applied as upstream renders them); these
//! are what the mixins do not have: GPUs per node, team and job, idle GPUs, the node-to-node
//! network matrix. Every query selects only metrics a deployed exporter produces
//! (`metrics::known`, tested below; `tests/monitoring_dashboards.rs` parses each with promtool).
//!
//! Label facts: dcgm-exporter (pinned version) attributes a GPU to `namespace`, `pod` and
//! `container` from the kubelet's pod-resources socket (empty when unallocated); the `node`
//! label is k8sforge's scrape configuration's; kube-state-metrics' `kube_pod_owner` names a
//! pod's owner (`Job`, `PyTorchJob`, `JobSet` child Job, …) — that is the "job" of a GPU.

use serde_json::{json, Value};

/// Grafana's dashboard JSON schema version these are written for (Grafana 11).
pub const SCHEMA_VERSION: u32 = 39;

/// A panel: title, kind and its queries (PromQL, legend).
#[derive(Debug, Clone)]
pub struct Panel {
    pub title: &'static str,
    pub kind: PanelKind,
    pub unit: &'static str,
    pub queries: Vec<(String, &'static str)>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PanelKind {
    TimeSeries,
    Stat,
    /// A table; `matrix` = (row label, column label) pivots instant results into a matrix.
    Table {
        matrix: Option<(&'static str, &'static str)>,
    },
}

impl PanelKind {
    fn grafana_type(self) -> &'static str {
        match self {
            PanelKind::TimeSeries => "timeseries",
            PanelKind::Stat => "stat",
            PanelKind::Table { .. } => "table",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Dashboard {
    pub uid: &'static str,
    pub title: &'static str,
    pub panels: Vec<Panel>,
    /// Template variables: (name, metric, label) → `label_values(metric, label)`.
    pub variables: Vec<(&'static str, &'static str, &'static str)>,
}

fn q(expr: impl Into<String>, legend: &'static str) -> (String, &'static str) {
    (expr.into(), legend)
}

fn panel(
    title: &'static str,
    kind: PanelKind,
    unit: &'static str,
    queries: Vec<(String, &'static str)>,
) -> Panel {
    Panel {
        title,
        kind,
        unit,
        queries,
    }
}

/// Every k8sforge dashboard.
pub fn all() -> Vec<Dashboard> {
    vec![gpus(), idle_gpus(), network()]
}

fn gpus() -> Dashboard {
    use PanelKind::*;
    let util = r#"DCGM_FI_DEV_GPU_UTIL{node=~"$node"}"#;
    let owner = "* on(namespace, pod) group_left(owner_kind, owner_name) max by (namespace, pod, owner_kind, owner_name) (kube_pod_owner)";
    Dashboard {
        uid: "k8sforge-gpus",
        title: "k8sforge / GPUs",
        variables: vec![("node", "DCGM_FI_DEV_GPU_UTIL", "node")],
        panels: vec![
            panel(
                "GPU utilisation per node",
                TimeSeries,
                "percent",
                vec![q(format!("avg by (node) ({util})"), "{{node}}")],
            ),
            panel(
                "GPU memory used per node",
                TimeSeries,
                "percentunit",
                vec![q(
                    r#"sum by (node) (DCGM_FI_DEV_FB_USED{node=~"$node"}) / sum by (node) (DCGM_FI_DEV_FB_USED{node=~"$node"} + DCGM_FI_DEV_FB_FREE{node=~"$node"})"#,
                    "{{node}}",
                )],
            ),
            panel(
                "Tensor core activity per node",
                TimeSeries,
                "percentunit",
                vec![q(
                    r#"avg by (node) (DCGM_FI_PROF_PIPE_TENSOR_ACTIVE{node=~"$node"})"#,
                    "{{node}}",
                )],
            ),
            panel(
                "GPU utilisation per team (namespace)",
                TimeSeries,
                "percent",
                vec![q(
                    r#"avg by (namespace) (DCGM_FI_DEV_GPU_UTIL{namespace!=""})"#,
                    "{{namespace}}",
                )],
            ),
            panel(
                "GPUs held per team",
                TimeSeries,
                "short",
                vec![q(
                    r#"count by (namespace) (DCGM_FI_DEV_GPU_UTIL{namespace!=""})"#,
                    "{{namespace}}",
                )],
            ),
            panel(
                "GPU memory used per team",
                TimeSeries,
                "decmbytes",
                vec![q(
                    r#"sum by (namespace) (DCGM_FI_DEV_FB_USED{namespace!=""})"#,
                    "{{namespace}}",
                )],
            ),
            panel(
                "GPU utilisation per job",
                TimeSeries,
                "percent",
                vec![q(
                    format!(
                        r#"avg by (namespace, owner_kind, owner_name) (DCGM_FI_DEV_GPU_UTIL{{pod!=""}} {owner})"#
                    ),
                    "{{namespace}}/{{owner_name}}",
                )],
            ),
            panel(
                "GPU memory used per job",
                TimeSeries,
                "decmbytes",
                vec![q(
                    format!(
                        r#"sum by (namespace, owner_kind, owner_name) (DCGM_FI_DEV_FB_USED{{pod!=""}} {owner})"#
                    ),
                    "{{namespace}}/{{owner_name}}",
                )],
            ),
            panel(
                "Xid errors (last hour)",
                Table { matrix: None },
                "short",
                vec![q(
                    "max by (node, gpu) (max_over_time(DCGM_FI_DEV_XID_ERRORS[1h])) > 0",
                    "",
                )],
            ),
        ],
    }
}

fn idle_gpus() -> Dashboard {
    use PanelKind::*;
    let idle = format!(
        r#"avg_over_time(DCGM_FI_DEV_GPU_UTIL{{pod!=""}}[30m]) < {}"#,
        super::rules::IDLE_GPU_UTIL_PERCENT
    );
    Dashboard {
        uid: "k8sforge-idle-gpus",
        title: "k8sforge / Idle GPUs",
        variables: vec![],
        panels: vec![
            panel(
                "Allocated but idle GPUs",
                Stat,
                "short",
                vec![q(format!("count({idle}) or vector(0)"), "")],
            ),
            panel(
                "Unallocated GPUs",
                Stat,
                "short",
                vec![q(r#"count(DCGM_FI_DEV_GPU_UTIL{pod=""}) or vector(0)"#, "")],
            ),
            panel(
                "GPUs requested vs allocatable",
                TimeSeries,
                "short",
                vec![
                    q(
                        r#"sum(kube_node_status_allocatable{resource="nvidia_com_gpu"})"#,
                        "allocatable",
                    ),
                    q(
                        r#"sum(kube_pod_container_resource_requests{resource="nvidia_com_gpu"})"#,
                        "requested",
                    ),
                ],
            ),
            panel(
                "Idle allocated GPUs (30 min average utilisation)",
                Table { matrix: None },
                "percent",
                vec![q(idle, "")],
            ),
        ],
    }
}

fn network() -> Dashboard {
    use crate::netprobe::{ERRORS_METRIC, EXPECTED_METRIC, RTT_METRIC, THROUGHPUT_METRIC};
    use PanelKind::*;
    Dashboard {
        uid: "k8sforge-network",
        title: "k8sforge / Node-to-node network",
        variables: vec![],
        panels: vec![
            panel(
                "Throughput matrix (source row, target column)",
                Table {
                    matrix: Some(("source", "target")),
                },
                "bps",
                vec![q(
                    format!("max by (source, target) ({THROUGHPUT_METRIC})"),
                    "",
                )],
            ),
            panel(
                "Round-trip time matrix",
                Table {
                    matrix: Some(("source", "target")),
                },
                "s",
                vec![q(format!("max by (source, target) ({RTT_METRIC})"), "")],
            ),
            panel(
                "Links under half their expected speed",
                Table { matrix: None },
                "percentunit",
                vec![q(
                    format!(
                        "{THROUGHPUT_METRIC} / {EXPECTED_METRIC} < {}",
                        super::rules::SLOW_LINK_FRACTION
                    ),
                    "",
                )],
            ),
            panel(
                "Probe errors",
                TimeSeries,
                "short",
                vec![q(
                    format!("sum by (source, target) (increase({ERRORS_METRIC}[1h])) > 0"),
                    "{{source}} -> {{target}}",
                )],
            ),
            panel(
                "NCCL bus bandwidth of the last smoke",
                Stat,
                "Bps",
                vec![q("max(k8sforge_nccl_busbw_bytes_per_second)", "")],
            ),
        ],
    }
}

impl Dashboard {
    /// Every PromQL expression of the dashboard (panels and variables).
    pub fn expressions(&self) -> Vec<String> {
        let mut out: Vec<String> = self
            .panels
            .iter()
            .flat_map(|p| p.queries.iter().map(|(e, _)| e.clone()))
            .collect();
        out.extend(self.variables.iter().map(|(_, m, _)| m.to_string()));
        out
    }

    pub fn config_map_name(&self) -> String {
        format!("grafana-dashboard-{}", self.uid)
    }

    /// The dashboard JSON (Grafana's dashboard model).
    pub fn json(&self) -> Value {
        let ds = json!({"type": "prometheus", "uid": "${datasource}"});
        let mut templating = vec![json!({
            "name": "datasource",
            "label": "Data source",
            "type": "datasource",
            "query": "prometheus",
            "current": {"selected": false, "text": "prometheus", "value": "prometheus"},
            "hide": 0,
        })];
        for (name, metric, label) in &self.variables {
            templating.push(json!({
                "name": name,
                "type": "query",
                "datasource": ds,
                "query": {"query": format!("label_values({metric}, {label})"), "refId": "vars"},
                "definition": format!("label_values({metric}, {label})"),
                "includeAll": true,
                "allValue": ".*",
                "multi": true,
                "refresh": 2,
                "current": {"selected": true, "text": "All", "value": "$__all"},
                "hide": 0,
            }));
        }
        let panels: Vec<Value> = self
            .panels
            .iter()
            .enumerate()
            .map(|(i, p)| {
                let targets: Vec<Value> = p
                    .queries
                    .iter()
                    .enumerate()
                    .map(|(j, (expr, legend))| {
                        let instant = matches!(p.kind, PanelKind::Table { .. });
                        json!({
                            "refId": char::from(b'A' + j as u8).to_string(),
                            "datasource": ds,
                            "expr": expr,
                            "legendFormat": legend,
                            "instant": instant,
                            "range": !instant,
                            "format": if instant { "table" } else { "time_series" },
                        })
                    })
                    .collect();
                let mut transformations = Vec::new();
                if let PanelKind::Table {
                    matrix: Some((row, column)),
                } = p.kind
                {
                    transformations.push(json!({
                        "id": "groupingToMatrix",
                        "options": {"rowField": row, "columnField": column, "valueField": "Value"},
                    }));
                }
                json!({
                    "id": i + 1,
                    "title": p.title,
                    "type": p.kind.grafana_type(),
                    "datasource": ds,
                    "gridPos": {"h": 8, "w": 12, "x": (i % 2) * 12, "y": (i / 2) * 8},
                    "fieldConfig": {"defaults": {"unit": p.unit}, "overrides": []},
                    "options": {},
                    "targets": targets,
                    "transformations": transformations,
                })
            })
            .collect();
        json!({
            "uid": self.uid,
            "title": self.title,
            "tags": ["k8sforge"],
            "timezone": "utc",
            "schemaVersion": SCHEMA_VERSION,
            "version": 1,
            "editable": false,
            "refresh": "1m",
            "time": {"from": "now-6h", "to": "now"},
            "templating": {"list": templating},
            "panels": panels,
        })
    }

    /// The ConfigMap Grafana reads it from.
    pub fn config_map(&self) -> Value {
        json!({
            "apiVersion": "v1",
            "kind": "ConfigMap",
            "metadata": {
                "name": self.config_map_name(),
                "namespace": super::NAMESPACE,
                "labels": {"k8sforge.io/addon": "monitoring", "app.kubernetes.io/name": "grafana"},
            },
            "data": {format!("{}.json", self.uid): serde_json::to_string_pretty(&self.json()).unwrap_or_default()},
        })
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_query_selects_only_metrics_an_exporter_produces() {
        for d in all() {
            for e in d.expressions() {
                let names = super::super::metrics::selected_metrics(&e);
                assert!(!names.is_empty() || e.contains("vector("), "{}: {e}", d.uid);
                for n in names {
                    assert!(
                        super::super::metrics::known(&n),
                        "{}: {n} (in {e}) is produced by no deployed exporter",
                        d.uid
                    );
                }
            }
        }
    }

    #[test]
    fn dashboards_are_grafana_dashboard_json() {
        let mut uids = BTreeSet::new();
        for d in all() {
            let v = d.json();
            assert!(uids.insert(d.uid), "duplicate uid {}", d.uid);
            assert!(d.uid.len() <= 40, "Grafana uids are at most 40 characters");
            assert_eq!(v["schemaVersion"], SCHEMA_VERSION);
            let vars: BTreeSet<String> = v["templating"]["list"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t["name"].as_str().unwrap().to_string())
                .collect();
            let mut ids = BTreeSet::new();
            for p in v["panels"].as_array().unwrap() {
                assert!(
                    ids.insert(p["id"].as_u64().unwrap()),
                    "{}: panel ids",
                    d.uid
                );
                assert!(
                    ["timeseries", "stat", "table"].contains(&p["type"].as_str().unwrap()),
                    "{}",
                    d.uid
                );
                let g = &p["gridPos"];
                assert!(g["x"].as_u64().unwrap() + g["w"].as_u64().unwrap() <= 24);
                let targets = p["targets"].as_array().unwrap();
                assert!(!targets.is_empty());
                for t in targets {
                    assert!(t["expr"].as_str().is_some_and(|e| !e.is_empty()));
                    // Every $variable a query uses is defined.
                    let expr = t["expr"].as_str().unwrap();
                    for var in expr.split('$').skip(1) {
                        let name: String = var
                            .chars()
                            .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                            .collect();
                        assert!(vars.contains(&name), "{}: ${name} undefined", d.uid);
                    }
                }
            }
            // The ConfigMap carries it as parseable JSON under <uid>.json.
            let cm = d.config_map();
            let text = cm["data"][format!("{}.json", d.uid)].as_str().unwrap();
            let back: Value = serde_json::from_str(text).unwrap();
            assert_eq!(back, v);
        }
    }
}
