//! The in-cluster monitoring stack offline: kube-prometheus's pinned release files fetched
//! through the artifact source (a directory mirror), overlaid by k8sforge, and every object
//! validated — Kubernetes kinds against the typed API, every custom resource (Prometheus,
//! Alertmanager, ServiceMonitors, PrometheusRules, k8sforge's rules) against the
//! openAPIV3Schema of the operator's CRDs from the same pinned files. Also: the overlays are
//! there, what k8sforge leaves out is out, a schema violation is caught, a tampered upstream
//! file is refused. Skipped with one line without the release files (tests/support/kube_prometheus.rs).

#[path = "support/kube_prometheus.rs"]
mod kube_prometheus;

use std::collections::BTreeSet;
use std::path::Path;

use k8sforge::artifacts::source::Mirror;
use k8sforge::monitoring::{dashboards, install, stack, upstream};

fn profile() -> k8sforge::profile::Profile {
    k8sforge::profile::load(
        "gpu-dev",
        &[
            "monitoring.retention=21d".into(),
            "monitoring.storageSize=200Gi".into(),
            "monitoring.storageClass=fast".into(),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"))
    .profile
}

fn render(dir: &Path, home: &Path, release: upstream::Release) -> Vec<stack::Rendered> {
    let local = upstream::materialize(home, &Mirror::Dir(dir.to_path_buf()), release)
        .unwrap_or_else(|e| panic!("{release}: {e}"));
    assert_eq!(local.files.len(), release.files().len());
    stack::render(&local, &profile()).unwrap_or_else(|e| panic!("{e}"))
}

#[test]
fn every_object_of_each_pinned_release_validates_with_the_overlays() {
    let Some(dir) = kube_prometheus::dir() else {
        println!("{}", kube_prometheus::skip_line());
        return;
    };
    for release in upstream::Release::ALL {
        let home = tempfile::tempdir().unwrap();
        let rendered = render(&dir, home.path(), release);
        let objects = install::validate(&rendered).unwrap_or_else(|e| panic!("{release}: {e}"));
        let kinds = |k: &str| objects.iter().filter(|o| o.spec.resource.kind == k).count();
        assert_eq!(kinds("CustomResourceDefinition"), 10, "{release}");
        assert_eq!(kinds("Prometheus"), 1, "{release}");
        assert_eq!(kinds("Alertmanager"), 1, "{release}");
        assert_eq!(
            kinds("PrometheusRule"),
            9,
            "{release}: 8 upstream + k8sforge's"
        );
        assert_eq!(kinds("DaemonSet"), 1, "{release}: node-exporter");
        assert_eq!(
            kinds("APIService"),
            0,
            "{release}: prometheus-adapter left out"
        );
        assert_eq!(
            kinds("Namespace"),
            0,
            "{release}: k8sforge's monitoring.yaml owns it"
        );
        // Deployments: operator, kube-state-metrics, Grafana.
        let deployments: BTreeSet<String> = objects
            .iter()
            .filter(|o| o.spec.resource.kind == "Deployment")
            .map(|o| o.object.metadata.name.clone().unwrap())
            .collect();
        assert_eq!(
            deployments,
            ["grafana", "kube-state-metrics", "prometheus-operator"]
                .map(String::from)
                .into(),
            "{release}"
        );
        let monitors: BTreeSet<String> = objects
            .iter()
            .filter(|o| o.spec.resource.kind == "ServiceMonitor")
            .map(|o| o.object.metadata.name.clone().unwrap())
            .collect();
        for gone in [
            "kube-apiserver",
            "kubelet",
            "kube-controller-manager",
            "kube-scheduler",
        ] {
            assert!(!monitors.contains(gone), "{release}: {gone} ServiceMonitor");
        }
        assert!(monitors.contains("node-exporter"), "{release}");
        // CRDs before custom resources in apply order.
        let first_cr = objects
            .iter()
            .position(|o| o.spec.rank == k8sforge::kube::manifest::CUSTOM_RESOURCE_RANK)
            .unwrap();
        assert!(objects[..first_cr]
            .iter()
            .any(|o| o.spec.resource.kind == "CustomResourceDefinition"));
        assert!(objects[first_cr..]
            .iter()
            .all(|o| o.spec.rank == k8sforge::kube::manifest::CUSTOM_RESOURCE_RANK));

        // The Prometheus overlays.
        let get = |kind: &str, name: &str| {
            let o = objects
                .iter()
                .find(|o| {
                    o.spec.resource.kind == kind && o.object.metadata.name.as_deref() == Some(name)
                })
                .unwrap_or_else(|| panic!("{release}: no {kind} {name}"));
            serde_json::to_value(&o.object).unwrap()
        };
        let prom = get("Prometheus", "k8s");
        let spec = &prom["spec"];
        assert_eq!(spec["retention"], "21d");
        assert_eq!(spec["scrapeInterval"], "30s");
        assert_eq!(
            spec["additionalScrapeConfigs"],
            serde_json::json!({"name": "k8sforge-scrape-configs", "key": "k8sforge-scrape.yaml"})
        );
        assert!(spec["secrets"]
            .as_array()
            .unwrap()
            .contains(&"k8sforge-scrape-tls".into()));
        let claim = &spec["storage"]["volumeClaimTemplate"]["spec"];
        assert_eq!(claim["resources"]["requests"]["storage"], "200Gi");
        assert_eq!(claim["storageClassName"], "fast");
        let prefer =
            &spec["affinity"]["nodeAffinity"]["preferredDuringSchedulingIgnoredDuringExecution"][0];
        assert_eq!(
            prefer["preference"]["matchExpressions"][0]["key"],
            "k8sforge.io/gpu"
        );
        assert_eq!(
            prefer["preference"]["matchExpressions"][0]["operator"],
            "NotIn"
        );
        // node-exporter stays on every node (GPU nodes included).
        let ne = get("DaemonSet", "node-exporter");
        assert!(ne["spec"]["template"]["spec"]["affinity"].is_null());

        // Grafana mounts every k8sforge dashboard, each ConfigMap exists.
        let grafana = get("Deployment", "grafana");
        let pod = &grafana["spec"]["template"]["spec"];
        for d in dashboards::all() {
            let name = d.config_map_name();
            assert!(pod["volumes"]
                .as_array()
                .unwrap()
                .iter()
                .any(|v| v["configMap"]["name"] == name.as_str()));
            let mounts = pod["containers"][0]["volumeMounts"].as_array().unwrap();
            assert!(mounts.iter().any(|m| m["name"] == name.as_str()
                && m["mountPath"] == format!("/grafana-dashboard-definitions/0/{}", d.uid)));
            get("ConfigMap", &name);
        }
        // The kubernetes-mixin dashboards upstream ships (cluster health) are there too.
        get("ConfigMap", "grafana-dashboard-k8s-resources-cluster");
        get("ConfigMap", "grafana-dashboard-apiserver");
        let rules = get("PrometheusRule", "k8sforge-rules");
        let alerts: Vec<&str> = rules["spec"]["groups"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap())
            .map(|r| r["alert"].as_str().unwrap())
            .collect();
        for a in [
            "GpuNodeNotReady",
            "GpuXidError",
            "GpuIdleWhileAllocated",
            "NodeLinkSlow",
        ] {
            assert!(alerts.contains(&a), "{a}");
        }
    }
}

#[test]
fn a_custom_resource_against_its_crd_schema_is_refused() {
    let Some(dir) = kube_prometheus::dir() else {
        println!("{}", kube_prometheus::skip_line());
        return;
    };
    let home = tempfile::tempdir().unwrap();
    let mut rendered = render(&dir, home.path(), upstream::Release::V0_14);
    let rules = rendered
        .iter_mut()
        .find(|r| r.name == "k8sforge/prometheus-rules.yaml")
        .unwrap();
    // `groups` must be an array of objects with a `name`: the CRD schema says so.
    rules.yaml = rules
        .yaml
        .replace("\"groups\":[", "\"groups\":[{\"rules\":[]},");
    let e = install::validate(&rendered).unwrap_err().to_string();
    assert!(
        e.contains("k8sforge/prometheus-rules.yaml") && e.contains("name"),
        "{e}"
    );
}

#[test]
fn a_tampered_upstream_file_is_refused() {
    let Some(dir) = kube_prometheus::dir() else {
        println!("{}", kube_prometheus::skip_line());
        return;
    };
    let release = upstream::Release::V0_14;
    let copy = tempfile::tempdir().unwrap();
    let (path, _) = release
        .files()
        .into_iter()
        .find(|(p, _)| p.ends_with("prometheus-prometheus.yaml"))
        .unwrap();
    for (p, _) in release.files() {
        let to = copy.path().join(p);
        std::fs::create_dir_all(to.parent().unwrap()).unwrap();
        std::fs::copy(dir.join(p), &to).unwrap();
    }
    let target = copy.path().join(path);
    let text = std::fs::read_to_string(&target).unwrap();
    std::fs::write(&target, text.replace("replicas: 2", "replicas: 9")).unwrap();
    let home = tempfile::tempdir().unwrap();
    let e = upstream::materialize(
        home.path(),
        &Mirror::Dir(copy.path().to_path_buf()),
        release,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("prometheus-prometheus.yaml"), "{e}");
}
