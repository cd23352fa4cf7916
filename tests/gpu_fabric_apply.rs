//! The fast-network add-ons (GCP GPUDirect-TCPX, AWS EFA) against a real API server: etcd +
//! kube-apiserver + kube-controller-manager (DaemonSet controller) on 127.0.0.1 with k8sforge's
//! PKI; binaries from `K8SFORGE_TEST_KUBE_BIN` (see DEVELOPERS.md), skipped with one line
//! otherwise.
//!
//! Shown here: the rendered manifests are accepted by server-side apply (every object created,
//! a second apply changes nothing), the DaemonSet controller places the TCPX plugin installer
//! and receive daemon on the A3 node only (and the EFA device plugin on the EFA node only), and
//! the RuntimeClass `nvidia` admission merges its GPU node selector into the receive daemon's pod.
//!
//! Only a real A3 High / p5 proves the rest: that the images run (they are pulled from Google's
//! and AWS's registries, which this machine cannot reach), that the installer writes the plugin
//! to /var/lib/tcpx/lib64, that RxDM binds the GPU NICs' queues, and NCCL's bandwidth.

#[path = "support/apiserver.rs"]
#[allow(dead_code)] // the harness serves several test crates
mod apiserver;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod};
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};

use k8sforge::addons::{self, fabric, GPU_LABEL_KEY, GPU_LABEL_VALUE};
use k8sforge::kube::{self as k8skube, Change};
use k8sforge::profile;
use k8sforge::profile::efa_layout::{EFA_LABEL_KEY, EFA_LABEL_VALUE};
use k8sforge::profile::gpu_nic_layout::{TCPX_LABEL_KEY, TCPX_LABEL_VALUE};

const TEST_KUBERNETES: &str = "v1.28.7";

async fn add_node(api: &Api<Node>, name: &str, labels: &[(&str, &str)]) {
    let mut l = BTreeMap::from([("kubernetes.io/hostname".to_string(), name.to_string())]);
    for (k, v) in labels {
        l.insert(k.to_string(), v.to_string());
    }
    let node: Node =
        serde_json::from_value(serde_json::json!({"metadata": {"name": name, "labels": l}}))
            .unwrap();
    api.create(&PostParams::default(), &node).await.unwrap();
    // No kubelet reports Ready here: lift the not-ready taint as a kubelet would.
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"taints": null}})),
    )
    .await
    .unwrap();
}

/// The nodes the DaemonSet controller made pods of `ds` for, once it has made `want` of them.
async fn placed(server: &mut apiserver::ApiServer, ds: &str, want: usize) -> Vec<(String, Pod)> {
    let pods: Api<Pod> = Api::namespaced(server.cluster.client.clone(), "kube-system");
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        server.check_alive();
        let list = pods
            .list(&ListParams::default().labels(&format!("name={ds}")))
            .await
            .unwrap();
        if list.items.len() >= want {
            return list
                .items
                .into_iter()
                .map(|p| {
                    let aff = serde_json::to_value(&p.spec.as_ref().unwrap().affinity).unwrap();
                    let node = aff["nodeAffinity"]
                        ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
                        ["matchFields"][0]["values"][0]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    (node, p)
                })
                .collect();
        }
        assert!(
            Instant::now() < deadline,
            "DaemonSet {ds}: {} pods after 60 s, {want} wanted",
            list.items.len()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fast_network_addons_apply_and_target_their_nodes() {
    let Some(bin) = apiserver::kube_bin() else {
        println!(
            "skipped: set {} to a directory with kube-apiserver and kube-controller-manager {TEST_KUBERNETES} (see DEVELOPERS.md)",
            apiserver::KUBE_BIN
        );
        return;
    };
    let mut server =
        apiserver::ApiServer::start(&bin, "gpu-dev", TEST_KUBERNETES, "daemonset,serviceaccount")
            .await;
    let release = k8sforge::artifacts::release(TEST_KUBERNETES).unwrap();
    let load = |sets: &[&str]| {
        let mut all = vec![format!("kubernetes.version={TEST_KUBERNETES}")];
        all.extend(sets.iter().map(|s| s.to_string()));
        profile::load("gpu-dev", &all)
            .unwrap_or_else(|e| panic!("{e}"))
            .profile
    };
    let gcp = load(&[
        "provider.kind=gcp",
        "workers[1].gcp.machineType=a3-highgpu-8g",
        "workers[1].gcp.acceleratorType=nvidia-h100-80gb",
    ]);
    let aws = load(&[
        "workers[1].aws.instanceType=p5.48xlarge",
        "workers[1].aws.efa=true",
    ]);

    let nodes: Api<Node> = Api::all(server.cluster.client.clone());
    let gpu = (GPU_LABEL_KEY, GPU_LABEL_VALUE);
    add_node(&nodes, "a3-1", &[gpu, (TCPX_LABEL_KEY, TCPX_LABEL_VALUE)]).await;
    add_node(&nodes, "p5-1", &[gpu, (EFA_LABEL_KEY, EFA_LABEL_VALUE)]).await;
    add_node(&nodes, "cpu-1", &[]).await;

    // The GCP cluster's add-ons, as the addons phase applies them.
    let manifests = addons::render_for_release(&gcp, release).unwrap();
    let objects =
        k8skube::validate_all(manifests.iter().map(|m| (m.name, m.yaml.as_str()))).unwrap();
    let names: Vec<String> = objects.iter().map(|o| o.reference().to_string()).collect();
    for want in [
        "DaemonSet kube-system/nccl-tcpx-installer",
        "DaemonSet kube-system/tcpx-rxdm",
        "ConfigMap default/k8sforge-fabric-env",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} in {names:?}");
    }
    let first = k8skube::apply(&server.cluster, &objects).await.unwrap();
    assert_eq!(first.count(Change::Created), objects.len(), "{first:?}");
    let again = k8skube::apply(&server.cluster, &objects).await.unwrap();
    assert_eq!(again.count(Change::Unchanged), objects.len(), "{again:?}");

    let cm: ConfigMap = Api::namespaced(server.cluster.client.clone(), "default")
        .get(fabric::FABRIC_ENV_CONFIGMAP)
        .await
        .unwrap();
    let data = cm.data.unwrap();
    assert_eq!(
        data["NCCL_GPUDIRECTTCPX_SOCKET_IFNAME"],
        "enp6s0,enp12s0,enp134s0,enp140s0"
    );
    assert_eq!(data["NCCL_GPUDIRECTTCPX_UNIX_CLIENT_PREFIX"], "/run/tcpx");

    for ds in ["nccl-tcpx-installer", "tcpx-rxdm"] {
        let pods = placed(&mut server, ds, 1).await;
        let on: Vec<&str> = pods.iter().map(|(n, _)| n.as_str()).collect();
        assert_eq!(on, ["a3-1"], "{ds}");
    }
    // Admission of RuntimeClass `nvidia` merged its node selector into the daemon's pod.
    let rxdm = placed(&mut server, "tcpx-rxdm", 1).await;
    let spec = rxdm[0].1.spec.as_ref().unwrap();
    assert_eq!(spec.runtime_class_name.as_deref(), Some("nvidia"));
    assert_eq!(
        spec.node_selector
            .as_ref()
            .and_then(|s| s.get(GPU_LABEL_KEY))
            .map(String::as_str),
        Some(GPU_LABEL_VALUE)
    );

    // The AWS cluster's: the EFA device plugin on the EFA node only; the ConfigMap's EFA
    // settings replace the TCPX ones on apply (the same object, another cloud).
    let manifests = addons::render_for_release(&aws, release).unwrap();
    let objects =
        k8skube::validate_all(manifests.iter().map(|m| (m.name, m.yaml.as_str()))).unwrap();
    k8skube::apply(&server.cluster, &objects).await.unwrap();
    let pods = placed(&mut server, "aws-efa-k8s-device-plugin", 1).await;
    let on: Vec<&str> = pods.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(on, ["p5-1"]);
    let cm: ConfigMap = Api::namespaced(server.cluster.client.clone(), "default")
        .get(fabric::FABRIC_ENV_CONFIGMAP)
        .await
        .unwrap();
    let data = cm.data.unwrap();
    assert_eq!(data["FI_PROVIDER"], "efa");
    assert!(!data.contains_key("NCCL_NET"), "{data:?}");
}
