//! The in-cluster monitoring stack against a real API server (etcd + kube-apiserver +
//! kube-controller-manager on 127.0.0.1 with k8sforge's PKI, tests/support/apiserver.rs;
//! binaries from `K8SFORGE_TEST_KUBE_BIN`, v1.28.7 here → kube-prometheus v0.14.0): the
//! operator's CRDs become Established, every object (upstream's, overlaid, and k8sforge's own
//! monitoring objects, rules and dashboards) is accepted by server-side apply, and a second apply
//! changes nothing.
//!
//! What cannot run here, so is applied and validated by the apiserver only: the
//! prometheus-operator, kube-state-metrics, Grafana, Alertmanager and the DCGM exporter (no
//! image of them can be had or built here; there is no kubelet in this test). The real
//! Prometheus and node-exporter scrape path is tests/monitoring_live.rs.

#[path = "support/apiserver.rs"]
mod apiserver;
#[path = "support/kube_prometheus.rs"]
mod kube_prometheus;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::Api;

use k8sforge::artifacts::source::Mirror;
use k8sforge::kube::{self as k8skube, Change};
use k8sforge::monitoring::{self, install, stack, upstream};

const TEST_KUBERNETES: &str = "v1.28.7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_stack_is_accepted_by_a_real_apiserver_and_reapplies_as_a_no_op() {
    let Some(bin) = apiserver::kube_bin() else {
        println!(
            "skipped: set {} to a directory with kube-apiserver and kube-controller-manager {TEST_KUBERNETES} (see DEVELOPERS.md)",
            apiserver::KUBE_BIN
        );
        return;
    };
    let Some(dir) = kube_prometheus::dir() else {
        println!("{}", kube_prometheus::skip_line());
        return;
    };
    // The workload and disruption controllers are off: their status writes would bump the
    // resourceVersion between the two applies, which is how "changed" is measured.
    let mut api = apiserver::ApiServer::start(
        &bin,
        "gpu-dev",
        TEST_KUBERNETES,
        "*,-deployment,-daemonset,-replicaset,-disruption",
    )
    .await;
    assert!(api.admin.is_file(), "admin kubeconfig");
    let loaded = k8sforge::profile::load("gpu-dev", &api.profile_sets).unwrap();
    let p = loaded.profile;
    let inv = k8sforge::inventory::planned(&p, &Default::default()).unwrap();
    let release = upstream::Release::for_kubernetes(&p.kubernetes.version).unwrap();
    assert_eq!(release, upstream::Release::V0_14);
    let local = upstream::materialize(&api.home, &Mirror::Dir(dir.clone()), release).unwrap();
    let rendered = stack::render(&local, &p).unwrap_or_else(|e| panic!("{e}"));
    let objects = install::validate(&rendered).unwrap_or_else(|e| panic!("{e}"));
    // k8sforge's own objects first (namespace, scrape RBAC and Secret, DCGM exporter, the
    // certificates Secret), as the addons phase applies them.
    let mut own = monitoring::render(&p, &inv).unwrap();
    own.push(monitoring::tls_secret(&k8sforge::pki::layout::pki_dir(&api.cluster_dir)).unwrap());
    let own_objects = k8skube::validate_all(own.iter().map(|m| (m.name, m.yaml.as_str()))).unwrap();
    let first = k8skube::apply(&api.cluster, &own_objects).await.unwrap();
    assert_eq!(first.count(Change::Created), own_objects.len());
    // No workload can become Available here (no kubelet, no images): wait = false.
    let report = install::install(&api.cluster, &objects, false)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    api.check_alive();
    assert_eq!(report.crds, 10);
    assert_eq!(report.applied.objects.len(), objects.len());
    assert_eq!(report.applied.count(Change::Created), objects.len());
    let crds: Api<CustomResourceDefinition> = Api::all(api.cluster.client.clone());
    for o in objects
        .iter()
        .filter(|o| o.spec.resource.kind == "CustomResourceDefinition")
    {
        let name = o.object.metadata.name.clone().unwrap();
        let crd = crds.get(&name).await.unwrap();
        assert_eq!(k8skube::crds::not_established(&crd), None, "{name}");
    }
    // Second apply: nothing written.
    let again = install::install(&api.cluster, &objects, false)
        .await
        .unwrap();
    let written = again.applied.count(Change::Created) + again.applied.count(Change::Changed);
    assert_eq!(
        written,
        0,
        "re-apply wrote: {:?}",
        again
            .applied
            .objects
            .iter()
            .filter(|a| a.change != Change::Unchanged)
            .map(|a| format!("{:?}", a))
            .collect::<Vec<_>>()
    );
    let own_again = k8skube::apply(&api.cluster, &own_objects).await.unwrap();
    assert_eq!(own_again.count(Change::Unchanged), own_objects.len());
}
