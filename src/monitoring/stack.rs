//! The in-cluster stack: kube-prometheus's pinned release files (`upstream`) with k8sforge's
//! overlays, plus k8sforge's own custom resources (the alert rules as a PrometheusRule) and
//! dashboards (`dashboards`). Pure: files on disk + profile → documents to validate and apply.
//!
//! Overlays (what a Hard Way cluster needs from the upstream defaults):
//! - Prometheus `k8s`: retention, scrape interval, storage (size/class) from the profile;
//!   `additionalScrapeConfigs` = k8sforge's scrape Secret (the systemd control plane, kubelets,
//!   kube-proxy, DCGM exporter); the scrape certificates Secret mounted.
//! - Prometheus, Alertmanager, the operator, kube-state-metrics and Grafana prefer nodes
//!   without GPUs (GPUs are for training); node-exporter stays on every node.
//! - Grafana mounts k8sforge's dashboards beside the kubernetes-mixin ones.
//!
//! Left out of the upstream files, each for a reason:
//! - the ServiceMonitors for the apiserver, kubelet, controller manager and scheduler: they
//!   select Services and pods a Hard Way cluster does not have (systemd units); k8sforge's
//!   scrape configuration covers those targets with the right certificates;
//! - prometheus-adapter: an APIService for `metrics.k8s.io` that, while its pod is not
//!   running, makes API discovery fail for every client (kubectl, namespace deletion);
//! - the blackbox exporter: nothing here probes endpoints with it;
//! - `setup/namespace.yaml`: k8sforge's own `monitoring.yaml` creates the namespace (two
//!   appliers of one object would fight over its labels).
//!
//! Images stay upstream's references (quay.io, registry.k8s.io, ghcr.io, docker.io): nodes
//! pull them through containerd's registry mirrors (`artifacts.registryMirrors`).

use serde_json::{json, Value};

use super::upstream::{LocalRelease, Release};
use crate::profile::Profile;

/// Upstream files not applied (see the module documentation).
pub const LEFT_OUT: &[&str] = &[
    "kubernetesControlPlane-serviceMonitorApiserver.yaml",
    "kubernetesControlPlane-serviceMonitorKubelet.yaml",
    "kubernetesControlPlane-serviceMonitorKubeControllerManager.yaml",
    "kubernetesControlPlane-serviceMonitorKubeScheduler.yaml",
    "setup/namespace.yaml",
];
/// Upstream file-name prefixes not applied.
pub const LEFT_OUT_PREFIXES: &[&str] = &["prometheusAdapter-", "blackboxExporter-"];

/// The Prometheus resource kube-prometheus defines.
pub const PROMETHEUS: &str = "k8s";
/// Grafana's Deployment and Service.
pub const GRAFANA: &str = "grafana";
/// Grafana's HTTP port (its Service port `http`).
pub const GRAFANA_PORT: u16 = 3000;
/// Where Grafana's provisioned dashboard provider reads (upstream's `grafana-dashboards`).
const GRAFANA_DASHBOARDS_DIR: &str = "/grafana-dashboard-definitions/0";

/// One rendered document set, named for error messages.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub name: String,
    pub yaml: String,
}

#[derive(Debug, thiserror::Error)]
pub enum StackError {
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("{path}: not a YAML Kubernetes document: {message}")]
    Parse { path: String, message: String },
    #[error("{release}: {what} is not in the pinned files (upstream layout changed?)")]
    Missing { release: Release, what: String },
}

/// Whether k8sforge applies upstream file `rel` (a path under `manifests/`).
pub fn applied(rel: &str) -> bool {
    let base = rel.rsplit('/').next().unwrap_or(rel);
    !LEFT_OUT.contains(&rel) && !LEFT_OUT_PREFIXES.iter().any(|p| base.starts_with(p))
}

/// The stack for `profile`: upstream files (setup/ first: the CRDs), overlaid, then k8sforge's
/// PrometheusRule and dashboards. Each document is JSON (YAML 1.2 reads it).
pub fn render(local: &LocalRelease, profile: &Profile) -> Result<Vec<Rendered>, StackError> {
    let mut files: Vec<&String> = local.files.iter().filter(|f| applied(f)).collect();
    files.sort_by_key(|f| (!f.starts_with("setup/"), f.as_str()));
    let mut out = Vec::new();
    let mut saw_prometheus = false;
    let mut saw_grafana = false;
    let dashboards = super::dashboards::all();
    for rel in files {
        let path = local.manifests.join(rel);
        let text = std::fs::read_to_string(&path).map_err(|source| StackError::Read {
            path: path.display().to_string(),
            source,
        })?;
        let mut docs = Vec::new();
        for doc in serde_yaml_ng::Deserializer::from_str(&text) {
            use serde::Deserialize;
            let v = Value::deserialize(doc).map_err(|e| StackError::Parse {
                path: rel.clone(),
                message: e.to_string(),
            })?;
            if !v.is_null() {
                docs.extend(flatten_list(v));
            }
        }
        for d in &mut docs {
            if is(d, "Prometheus", PROMETHEUS) {
                overlay_prometheus(d, profile);
                saw_prometheus = true;
            }
            if is(d, "Deployment", GRAFANA) {
                mount_dashboards(d, &dashboards);
                saw_grafana = true;
            }
            if matches!(kind(d), "Deployment" | "DaemonSet") {
                drop_empty_container_lists(d);
            }
            if matches!(
                kind(d),
                "Prometheus" | "Alertmanager" | "Deployment" | "StatefulSet"
            ) {
                prefer_non_gpu_nodes(d);
            }
        }
        out.push(Rendered {
            name: format!("{}/{rel}", local.release.root()),
            yaml: join_docs(&docs),
        });
    }
    let missing = |what: &str| StackError::Missing {
        release: local.release,
        what: what.into(),
    };
    if !saw_prometheus {
        return Err(missing("the Prometheus resource k8s"));
    }
    if !saw_grafana {
        return Err(missing("the Grafana Deployment"));
    }
    out.push(Rendered {
        name: "k8sforge/prometheus-rules.yaml".into(),
        yaml: prometheus_rule().to_string(),
    });
    out.push(Rendered {
        name: "k8sforge/dashboards.yaml".into(),
        yaml: join_docs(
            &dashboards
                .iter()
                .map(super::dashboards::Dashboard::config_map)
                .collect::<Vec<_>>(),
        ),
    });
    Ok(out)
}

fn join_docs(docs: &[Value]) -> String {
    docs.iter()
        .map(Value::to_string)
        .collect::<Vec<_>>()
        .join("\n---\n")
}

fn kind(v: &Value) -> &str {
    v["kind"].as_str().unwrap_or_default()
}

fn is(v: &Value, k: &str, name: &str) -> bool {
    kind(v) == k && v["metadata"]["name"].as_str() == Some(name)
}

/// `ConfigMapList`, `RoleList`, … → their items (kube-prometheus ships some files that way).
fn flatten_list(v: Value) -> Vec<Value> {
    if kind(&v).ends_with("List") {
        if let Some(items) = v.get("items").and_then(Value::as_array) {
            return items.clone();
        }
    }
    vec![v]
}

fn overlay_prometheus(p: &mut Value, profile: &Profile) {
    let m = &profile.monitoring;
    let spec = &mut p["spec"];
    spec["retention"] = json!(m.retention);
    spec["scrapeInterval"] = json!(m.scrape_interval);
    spec["evaluationInterval"] = json!(m.scrape_interval);
    spec["additionalScrapeConfigs"] =
        json!({"name": super::SCRAPE_SECRET, "key": super::SCRAPE_KEY});
    let mut secrets: Vec<Value> = spec["secrets"].as_array().cloned().unwrap_or_default();
    if !secrets.iter().any(|s| s == super::scrape::TLS_SECRET) {
        secrets.push(json!(super::scrape::TLS_SECRET));
    }
    spec["secrets"] = Value::Array(secrets);
    spec["externalLabels"]["cluster"] = json!(profile.name);
    if let Some(size) = &m.storage_size {
        let mut claim = json!({
            "accessModes": ["ReadWriteOnce"],
            "resources": {"requests": {"storage": size}},
        });
        if let Some(class) = &m.storage_class {
            claim["storageClassName"] = json!(class);
        }
        spec["storage"] = json!({"volumeClaimTemplate": {"spec": claim}});
    }
}

/// Upstream's Grafana container says `env: []`. The API server stores no empty list, so a
/// server-side apply of one rewrites the object every time (seen against a real apiserver:
/// the resourceVersion moves on every apply); leaving the empty lists out means the same.
fn drop_empty_container_lists(o: &mut Value) {
    let pod = &mut o["spec"]["template"]["spec"];
    for list in ["containers", "initContainers"] {
        if let Some(cs) = pod[list].as_array_mut() {
            for c in cs.iter_mut().filter_map(Value::as_object_mut) {
                c.retain(|_, v| !v.as_array().is_some_and(Vec::is_empty));
            }
        }
    }
}

/// Prefer nodes that are not GPU nodes (a preference: a GPU-only cluster still runs them).
fn prefer_non_gpu_nodes(o: &mut Value) {
    let pod_spec = if matches!(kind(o), "Deployment" | "StatefulSet") {
        &mut o["spec"]["template"]["spec"]
    } else {
        &mut o["spec"]
    };
    let term = json!({
        "weight": 100,
        "preference": {"matchExpressions": [{
            "key": crate::addons::GPU_LABEL_KEY,
            "operator": "NotIn",
            "values": [crate::addons::GPU_LABEL_VALUE],
        }]},
    });
    let node_affinity = &mut pod_spec["affinity"]["nodeAffinity"];
    let preferred = &mut node_affinity["preferredDuringSchedulingIgnoredDuringExecution"];
    match preferred.as_array_mut() {
        Some(list) if !list.contains(&term) => list.push(term),
        Some(_) => {}
        None => *preferred = json!([term]),
    }
}

/// Grafana reads every dashboard under its provider's directory: mount each k8sforge dashboard
/// ConfigMap there, as upstream mounts the kubernetes-mixin ones.
fn mount_dashboards(d: &mut Value, dashboards: &[super::dashboards::Dashboard]) {
    let pod = &mut d["spec"]["template"]["spec"];
    for db in dashboards {
        let volume = db.config_map_name();
        if let Some(vols) = pod["volumes"].as_array_mut() {
            vols.push(json!({"name": volume, "configMap": {"name": volume}}));
        }
        if let Some(c) = pod["containers"]
            .as_array_mut()
            .and_then(|cs| cs.iter_mut().find(|c| c["name"] == GRAFANA))
        {
            if let Some(mounts) = c["volumeMounts"].as_array_mut() {
                mounts.push(json!({
                    "name": volume,
                    "mountPath": format!("{GRAFANA_DASHBOARDS_DIR}/{}", db.uid),
                    "readOnly": true,
                }));
            }
        }
    }
}

/// k8sforge's alert rules as a PrometheusRule (the operator's `ruleSelector: {}` selects it).
pub fn prometheus_rule() -> Value {
    json!({
        "apiVersion": "monitoring.coreos.com/v1",
        "kind": "PrometheusRule",
        "metadata": {
            "name": "k8sforge-rules",
            "namespace": super::NAMESPACE,
            "labels": {"k8sforge.io/addon": "monitoring"},
        },
        "spec": {"groups": super::rules::groups()},
    })
}
