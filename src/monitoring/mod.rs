//! The monitoring add-on set (issue 16): what Prometheus scrapes on a Hard Way cluster, with
//! which certificates, the alert rules, and k8sforge's own objects (namespace, scrape RBAC, the
//! scrape configuration Secret, the scrape certificates Secret). Rendering is pure (profile +
//! inventory → manifests); the `addons` phase applies them when `monitoring` is enabled.
//!
//! Route chosen (README "Monitoring"): kube-prometheus's plain per-release manifests for the
//! operator, Prometheus, Alertmanager, node-exporter, kube-state-metrics and Grafana, fetched as
//! pinned artifacts like the training stack's upstream trees, with k8sforge's objects here on
//! top (`upstream`, `stack`, `install`, `dashboards`).

pub mod certs_metric;
pub mod dashboards;
pub mod install;
pub mod metrics;
pub mod rules;
pub mod scrape;
pub mod stack;
pub mod upstream;

use std::path::Path;

use minijinja::context;
use minijinja::value::{Serde, Value};
use serde::Serialize;

use crate::addons::Manifest;
use crate::inventory::Inventory;
use crate::profile::Profile;
use crate::render::{templates, RenderError};

/// Namespace of the monitoring stack (kube-prometheus's).
pub const NAMESPACE: &str = "monitoring";
/// Secret with the `scrape_configs` for the systemd control plane and node agents.
pub const SCRAPE_SECRET: &str = "k8sforge-scrape-configs";
/// Its key (what `additionalScrapeConfigs` of the Prometheus resource names).
pub const SCRAPE_KEY: &str = "k8sforge-scrape.yaml";

#[derive(Debug, Serialize)]
struct MonitoringCtx<'a> {
    namespace: &'a str,
    prometheus_user: &'a str,
    scrape_secret: &'a str,
    scrape_key: &'a str,
    scrape_configs: String,
    /// Some worker group has GPUs: the DCGM exporter is deployed.
    gpu: bool,
    dcgm_image: String,
    dcgm_port: u16,
    gpu_label_key: &'static str,
    gpu_label_value: &'static str,
    gpu_unverified_taint: &'static str,
    nvidia_runtime: &'static str,
}

/// NVIDIA dcgm-exporter, pinned by tag (its chart's `image.tag` at release 4.5.3-4.8.2; no
/// digest fact is available here). `monitoring.dcgmExporterImage` replaces it (e.g. a mirror).
pub const DCGM_EXPORTER_IMAGE: &str = "nvcr.io/nvidia/k8s/dcgm-exporter:4.5.3-4.8.2-distroless";

/// k8sforge's own monitoring objects for `profile` (none when monitoring is off). They carry no
/// key material, so `plan` may write them; the certificates Secret is [`tls_secret`].
pub fn render(profile: &Profile, inv: &Inventory) -> Result<Vec<Manifest>, RenderError> {
    if !profile.monitoring_enabled() {
        return Ok(Vec::new());
    }
    let env = templates::env().map_err(RenderError::Templates)?;
    let mut configs = scrape::scrape_configs(profile, inv, &scrape::ScrapeTls::in_cluster());
    // In the cluster, kube-prometheus's node-exporter serves behind kube-rbac-proxy (HTTPS,
    // token-authorized) and its own ServiceMonitor scrapes it, under the same job name.
    configs.retain(|c| c.job_name != scrape::Job::NodeExporter.name());
    let ctx = MonitoringCtx {
        namespace: NAMESPACE,
        prometheus_user: crate::pki::table::PROMETHEUS_USER,
        scrape_secret: SCRAPE_SECRET,
        scrape_key: SCRAPE_KEY,
        scrape_configs: scrape::scrape_configs_yaml(&configs),
        gpu: inv.nodes.iter().any(|n| n.gpus > 0),
        dcgm_image: profile
            .monitoring
            .dcgm_exporter_image
            .clone()
            .unwrap_or_else(|| DCGM_EXPORTER_IMAGE.to_string()),
        dcgm_port: scrape::DCGM_EXPORTER_PORT,
        gpu_label_key: crate::addons::GPU_LABEL_KEY,
        gpu_label_value: crate::addons::GPU_LABEL_VALUE,
        gpu_unverified_taint: crate::render::gpu::UNVERIFIED_TAINT,
        nvidia_runtime: crate::render::gpu::RUNTIME_HANDLER,
    };
    let template = "addons/monitoring.yaml";
    let yaml = env
        .get_template(template)
        .and_then(|t| t.render(context! { monitoring => Value::from(Serde(&ctx)) }))
        .map_err(|e| RenderError::Template {
            node: "(add-ons)".into(),
            template: template.to_string(),
            message: format!("{e:#}"),
        })?;
    Ok(vec![Manifest {
        name: "monitoring.yaml",
        yaml,
    }])
}

#[derive(Debug, thiserror::Error)]
#[error("reading {path} for the scrape certificates Secret: {source}")]
pub struct TlsSecretError {
    pub path: String,
    source: std::io::Error,
}

/// The Secret with the CA and client certificates Prometheus scrapes with, from the cluster's
/// `pki/` directory. Built only where it is applied (never written by `plan`): it holds keys.
pub fn tls_secret(pki: &Path) -> Result<Manifest, TlsSecretError> {
    let mut data = serde_json::Map::new();
    for (key, path) in scrape::ScrapeTls::secret_files(pki) {
        let bytes = std::fs::read(&path).map_err(|source| TlsSecretError {
            path: path.display().to_string(),
            source,
        })?;
        use base64::Engine;
        data.insert(
            key.into(),
            base64::engine::general_purpose::STANDARD
                .encode(bytes)
                .into(),
        );
    }
    let obj = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {
            "name": scrape::TLS_SECRET,
            "namespace": NAMESPACE,
            "labels": {"k8sforge.io/addon": "monitoring"},
        },
        "type": "Opaque",
        "data": data,
    });
    Ok(Manifest {
        name: "monitoring-tls.yaml",
        yaml: serde_json::to_string(&obj).unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::api::core::v1::Secret;
    use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding};

    use super::*;

    fn load(name: &str, set: &[String]) -> (Profile, Inventory) {
        let p = crate::profile::load(name, set).unwrap().profile;
        let inv = crate::inventory::planned(&p, &BTreeMap::new()).unwrap();
        (p, inv)
    }

    #[test]
    fn on_by_default_for_gpu_profiles_only() {
        for name in crate::profile::builtin::names() {
            let (p, inv) = load(name, &[]);
            let gpu = p.workers.iter().any(|g| g.gpus_per_node > 0);
            assert_eq!(p.monitoring_enabled(), gpu, "{name}");
            assert_eq!(render(&p, &inv).unwrap().is_empty(), !gpu, "{name}");
        }
        let (p, inv) = load("local-3", &["monitoring.enabled=true".into()]);
        assert_eq!(render(&p, &inv).unwrap().len(), 1);
        let (p, _) = load("gpu-dev", &["monitoring.enabled=false".into()]);
        assert!(!p.monitoring_enabled());
        // A bad duration is refused at load, naming the field.
        let Err(e) = crate::profile::load("gpu-dev", &["monitoring.retention=15 days".into()])
        else {
            panic!("a bad retention was accepted");
        };
        let e = e.to_string();
        assert!(
            e.contains("monitoring.retention") && e.contains("15 days"),
            "{e}"
        );
    }

    #[test]
    fn objects_validate_and_bind_the_prometheus_certificate_user() {
        let (p, inv) = load("gpu-dev", &[]);
        let m = render(&p, &inv).unwrap();
        let objs = crate::kube::validate_all(m.iter().map(|m| (m.name, m.yaml.as_str())))
            .unwrap_or_else(|e| panic!("{e}"));
        let get = |kind: &str| {
            let o = objs.iter().find(|o| o.spec.resource.kind == kind).unwrap();
            serde_json::to_value(&o.object).unwrap()
        };
        let role: ClusterRole = serde_json::from_value(get("ClusterRole")).unwrap();
        let rules = role.rules.unwrap();
        assert_eq!(
            rules[0].non_resource_urls.as_deref().unwrap(),
            ["/metrics", "/metrics/cadvisor"]
        );
        assert_eq!(rules[1].resources.as_deref().unwrap(), ["nodes/metrics"]);
        let b: ClusterRoleBinding = serde_json::from_value(get("ClusterRoleBinding")).unwrap();
        let s = &b.subjects.unwrap()[0];
        assert_eq!(
            (s.kind.as_str(), s.name.as_str()),
            ("User", "k8sforge:prometheus")
        );
        let sec: Secret = serde_json::from_value(get("Secret")).unwrap();
        let text = &sec.string_data.unwrap()[SCRAPE_KEY];
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(text).unwrap();
        let jobs: Vec<&str> = v
            .as_sequence()
            .unwrap()
            .iter()
            .map(|j| j["job_name"].as_str().unwrap())
            .collect();
        let want: Vec<&str> = scrape::Job::ALL
            .iter()
            .filter(|j| **j != scrape::Job::NodeExporter)
            .map(|j| j.name())
            .collect();
        assert_eq!(
            jobs, want,
            "every job but node-exporter (upstream's ServiceMonitor), in order"
        );
        assert!(text.contains("/etc/prometheus/secrets/k8sforge-scrape-tls/etcd-prometheus.key"));
        // DCGM exporter on GPU nodes, pod-resources socket mounted, scraped on each GPU node.
        let ds: k8s_openapi::api::apps::v1::DaemonSet =
            serde_json::from_value(get("DaemonSet")).unwrap();
        let pod = ds.spec.unwrap().template.spec.unwrap();
        assert_eq!(
            pod.node_selector.unwrap(),
            BTreeMap::from([("k8sforge.io/gpu".to_string(), "true".to_string())])
        );
        assert_eq!(pod.host_network, Some(true));
        let c = &pod.containers[0];
        assert_eq!(c.image.as_deref(), Some(DCGM_EXPORTER_IMAGE));
        let m = &c.volume_mounts.as_ref().unwrap()[0];
        assert_eq!(m.mount_path, "/var/lib/kubelet/pod-resources");
        assert_eq!(
            pod.volumes.unwrap()[0].host_path.as_ref().unwrap().path,
            "/var/lib/kubelet/pod-resources"
        );
        let dcgm = v
            .as_sequence()
            .unwrap()
            .iter()
            .find(|j| j["job_name"] == "dcgm-exporter")
            .unwrap();
        let gpu_nodes: Vec<String> = inv
            .nodes
            .iter()
            .filter(|n| n.gpus > 0)
            .map(|n| format!("{}:9400", n.internal_ip))
            .collect();
        let got: Vec<String> = dcgm["static_configs"]
            .as_sequence()
            .unwrap()
            .iter()
            .map(|s| s["targets"][0].as_str().unwrap().to_string())
            .collect();
        assert_eq!(got, gpu_nodes);
        assert!(!gpu_nodes.is_empty());
    }
}
