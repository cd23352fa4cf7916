//! The add-ons against a real API server: a real etcd and a real kube-apiserver (and
//! kube-controller-manager, with only the deployment, replicaset, daemonset and serviceaccount
//! controllers) on 127.0.0.1, with certificates and kubeconfigs from k8sforge's own PKI. Applies the rendered
//! add-ons through `k8sforge::kube` (server-side apply), reads them back typed, checks that a
//! re-apply changes nothing and that drift is repaired, that the device plugin DaemonSet targets
//! exactly the node labelled as a GPU node, and that `wait_ready` times out naming what is not
//! ready (there is no scheduler or kubelet, so no pod ever runs).
//!
//! Needs `K8SFORGE_TEST_KUBE_BIN` = a directory with kube-apiserver and kube-controller-manager
//! (see DEVELOPERS.md); skipped with one line when unset. etcd comes from the test mirror
//! (Debian's etcd-server package, see testkit/src/mirror.rs).

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service};
use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};

use k8sforge::addons::{self, GPU_LABEL_KEY, GPU_LABEL_VALUE};
use k8sforge::inventory;
use k8sforge::kube::{self as k8skube, Change, KubeError};
use k8sforge::pki::{self, layout};
use k8sforge::profile;

const KUBE_BIN: &str = "K8SFORGE_TEST_KUBE_BIN";
/// The version of the binaries the tests are pinned to.
const TEST_KUBERNETES: &str = "v1.28.7";

/// Kills and reaps the process when the test ends, passed or not.
struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn start(name: &'static str, cmd: &mut Command, log_dir: &Path) -> Proc {
        let log = log_dir.join(format!("{name}.log"));
        let f = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdout(Stdio::from(f.try_clone().unwrap()))
            .stderr(Stdio::from(f))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Proc { name, child, log }
    }

    /// The last lines of its log, for failure messages.
    fn tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Panic with the log tail if the process has exited.
    fn check_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited ({status}):\n{}", self.name, self.tail());
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn etcd_binary() -> PathBuf {
    let mirror = k8sforge_testkit::mirror::build(&k8sforge_testkit::mirror::default_cache_dir())
        .unwrap_or_else(|e| panic!("building the test mirror (for etcd): {e}"));
    // <cache>/unpacked-<key>/busybox-static/bin/busybox → <cache>/unpacked-<key>/etcd-server/…
    let unpacked = mirror
        .busybox
        .ancestors()
        .nth(3)
        .expect("unpacked dir")
        .to_path_buf();
    let etcd = unpacked.join("etcd-server/usr/bin/etcd");
    assert!(etcd.exists(), "no etcd at {}", etcd.display());
    etcd
}

/// Retry `connect` until the API answers (the apiserver takes a few seconds to start).
async fn connect_when_up(kubeconfig: &Path, procs: &mut [&mut Proc]) -> k8skube::Cluster {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        for p in procs.iter_mut() {
            p.check_alive();
        }
        match k8skube::connect(kubeconfig).await {
            Ok(c) => {
                // /version answers before the bootstrap RBAC policy exists; wait for it too.
                let crb: Api<ClusterRoleBinding> = Api::all(c.client.clone());
                if crb
                    .get_opt("system:kube-controller-manager")
                    .await
                    .ok()
                    .flatten()
                    .is_some()
                    && crb
                        .get_opt("system:controller:daemon-set-controller")
                        .await
                        .ok()
                        .flatten()
                        .is_some()
                {
                    return c;
                }
            }
            Err(e) if Instant::now() > deadline => panic!("API never came up: {e}"),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn addons_apply_against_a_real_apiserver() {
    let Some(bin) = std::env::var_os(KUBE_BIN).map(PathBuf::from) else {
        println!(
            "skipped: set {KUBE_BIN} to a directory with kube-apiserver and kube-controller-manager {TEST_KUBERNETES} (see DEVELOPERS.md)"
        );
        return;
    };
    for b in ["kube-apiserver", "kube-controller-manager"] {
        assert!(
            bin.join(b).is_file(),
            "{KUBE_BIN}={} has no {b}",
            bin.display()
        );
    }
    let etcd = etcd_binary();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let api_port = free_port();

    // The project's own PKI for a profile whose API endpoint is this host's loopback.
    let loaded = profile::load(
        "gpu-dev",
        &[
            format!("kubernetes.version={TEST_KUBERNETES}"),
            "apiServer.endpoint=127.0.0.1".to_string(),
            format!("apiServer.port={api_port}"),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let p = loaded.profile;
    let inv = inventory::planned(&p, &BTreeMap::new()).unwrap();
    let cluster_dir = root.join("cluster");
    std::fs::create_dir_all(&cluster_dir).unwrap();
    pki::ensure(&p, &inv, &cluster_dir).unwrap();
    let pki_dir = layout::pki_dir(&cluster_dir);
    let crt = |n: &str| layout::cert_path(&pki_dir, n);
    let key = |n: &str| layout::key_path(&pki_dir, n);
    let admin = layout::kubeconfig_path(&cluster_dir, layout::ADMIN);

    // A wrong address is reported with the URL and the kubeconfig.
    let dead_port = free_port();
    let wrong = root.join("wrong.kubeconfig");
    std::fs::write(
        &wrong,
        std::fs::read_to_string(&admin)
            .unwrap()
            .replace(&format!(":{api_port}"), &format!(":{dead_port}")),
    )
    .unwrap();
    let e = k8skube::connect(&wrong).await.err().expect("no API there");
    let msg = e.to_string();
    assert!(
        matches!(e, KubeError::Unreachable { .. })
            && msg.contains(&format!(
                "is the API reachable at https://127.0.0.1:{dead_port}?"
            ))
            && msg.contains("wrong.kubeconfig"),
        "{msg}"
    );
    let e = k8skube::connect(&root.join("missing.kubeconfig"))
        .await
        .err()
        .unwrap();
    assert!(matches!(e, KubeError::NoKubeconfig { .. }), "{e}");

    let (client_port, peer_port) = (free_port(), free_port());
    let mut etcd = Proc::start(
        "etcd",
        Command::new(etcd)
            .arg("--name=test")
            .arg(format!("--data-dir={}", root.join("etcd").display()))
            .arg(format!(
                "--listen-client-urls=http://127.0.0.1:{client_port}"
            ))
            .arg(format!(
                "--advertise-client-urls=http://127.0.0.1:{client_port}"
            ))
            .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
            .arg(format!(
                "--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"
            ))
            .arg(format!(
                "--initial-cluster=test=http://127.0.0.1:{peer_port}"
            )),
        root,
    );
    let mut apiserver = Proc::start(
        "kube-apiserver",
        Command::new(bin.join("kube-apiserver"))
            .arg(format!("--etcd-servers=http://127.0.0.1:{client_port}"))
            .arg("--bind-address=127.0.0.1")
            .arg("--advertise-address=127.0.0.1")
            .arg(format!("--secure-port={api_port}"))
            .arg("--authorization-mode=Node,RBAC")
            .arg("--enable-admission-plugins=NodeRestriction")
            .arg(format!("--client-ca-file={}", crt(layout::CA).display()))
            .arg(format!(
                "--tls-cert-file={}",
                crt(layout::APISERVER).display()
            ))
            .arg(format!(
                "--tls-private-key-file={}",
                key(layout::APISERVER).display()
            ))
            .arg(format!(
                "--service-account-issuer=https://kubernetes.default.svc.{}",
                p.kubernetes.cluster_domain
            ))
            .arg(format!(
                "--service-account-key-file={}",
                layout::service_account_public(&pki_dir).display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                key(layout::SERVICE_ACCOUNT).display()
            ))
            .arg(format!(
                "--service-cluster-ip-range={}",
                p.network.service_cidr
            ))
            .arg(format!(
                "--encryption-provider-config={}",
                layout::encryption_config_path(&cluster_dir).display()
            )),
        root,
    );
    let cluster = connect_when_up(&admin, &mut [&mut etcd, &mut apiserver]).await;
    // A kubeconfig whose server does not answer (e.g. a node-local API proxy) falls back to the
    // apiservers given, with the same credentials.
    let via = k8skube::connect_with_fallbacks(
        &wrong,
        &[
            format!("https://127.0.0.1:{}", free_port()),
            format!("https://127.0.0.1:{api_port}"),
        ],
    )
    .await
    .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(via.url, format!("https://127.0.0.1:{api_port}"));
    let mut kcm = Proc::start(
        "kube-controller-manager",
        Command::new(bin.join("kube-controller-manager"))
            .arg(format!(
                "--kubeconfig={}",
                layout::kubeconfig_path(&cluster_dir, layout::CONTROLLER_MANAGER).display()
            ))
            .arg("--controllers=deployment,replicaset,daemonset,serviceaccount")
            .arg("--use-service-account-credentials=true")
            .arg("--leader-elect=false")
            .arg("--bind-address=127.0.0.1")
            .arg(format!("--secure-port={}", free_port()))
            .arg(format!(
                "--service-account-private-key-file={}",
                key(layout::SERVICE_ACCOUNT).display()
            ))
            .arg(format!("--root-ca-file={}", crt(layout::CA).display())),
        root,
    );

    // Two nodes, only one labelled as a GPU node (the label k8sforge gives GPU groups).
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    for (name, gpu) in [("gpu-1", true), ("cpu-1", false)] {
        let mut labels = BTreeMap::from([("kubernetes.io/hostname".to_string(), name.to_string())]);
        if gpu {
            labels.insert(GPU_LABEL_KEY.into(), GPU_LABEL_VALUE.into());
        }
        let node: Node = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name, "labels": labels}
        }))
        .unwrap();
        nodes.create(&PostParams::default(), &node).await.unwrap();
        // The TaintNodesByCondition admission plugin taints a new Node not-ready until its
        // kubelet reports Ready; there is no kubelet here, so lift it as a kubelet would.
        nodes
            .patch(
                name,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": {"taints": null}})),
            )
            .await
            .unwrap();
    }

    // Apply the add-ons as the phase does.
    let manifests =
        addons::render_for_release(&p, k8sforge::artifacts::release(TEST_KUBERNETES).unwrap())
            .unwrap();
    let objects =
        k8skube::validate_all(manifests.iter().map(|m| (m.name, m.yaml.as_str()))).unwrap();
    let t = Instant::now();
    let first = k8skube::apply(&cluster, &objects).await.unwrap();
    let first_took = t.elapsed();
    assert_eq!(first.count(Change::Created), objects.len(), "{first:?}");

    // Typed reads: the fields that matter are on the server.
    let svc: Service = Api::namespaced(cluster.client.clone(), "kube-system")
        .get("kube-dns")
        .await
        .unwrap();
    assert_eq!(
        svc.spec.unwrap().cluster_ip.unwrap(),
        p.network.dns_service_ip.to_string()
    );
    let crb: ClusterRoleBinding = Api::all(cluster.client.clone())
        .get("system:kube-apiserver")
        .await
        .unwrap();
    assert_eq!(
        crb.subjects.unwrap()[0].name,
        "kube-apiserver-kubelet-client"
    );
    let deploy: Deployment = Api::namespaced(cluster.client.clone(), "kube-system")
        .get("coredns")
        .await
        .unwrap();
    assert_eq!(deploy.spec.as_ref().unwrap().replicas, Some(2));
    let managers: Vec<(String, String)> = deploy
        .metadata
        .managed_fields
        .unwrap_or_default()
        .into_iter()
        .map(|m| {
            (
                m.manager.unwrap_or_default(),
                m.operation.unwrap_or_default(),
            )
        })
        .collect();
    assert!(
        managers.contains(&("k8sforge".to_string(), "Apply".to_string())),
        "{managers:?}"
    );
    let ds_api: Api<DaemonSet> = Api::namespaced(cluster.client.clone(), "kube-system");
    let ds = ds_api.get("nvidia-device-plugin-daemonset").await.unwrap();
    let pod_spec = ds.spec.unwrap().template.spec.unwrap();
    assert_eq!(
        pod_spec.node_selector.unwrap(),
        BTreeMap::from([(GPU_LABEL_KEY.to_string(), GPU_LABEL_VALUE.to_string())])
    );

    // A second apply changes nothing.
    let t = Instant::now();
    let second = k8skube::apply(&cluster, &objects).await.unwrap();
    // Informational (figures live in BENCHMARKS-addons.md), never asserted.
    println!(
        "apply of {} objects: first {:?}, re-apply {:?}",
        objects.len(),
        first_took,
        t.elapsed()
    );
    assert_eq!(
        (second.count(Change::Created), second.count(Change::Changed)),
        (0, 0),
        "{second:?}"
    );
    assert_eq!(second.count(Change::Unchanged), objects.len());

    // Drift by another manager is put back (force), and only that object counts as changed.
    let cms: Api<ConfigMap> = Api::namespaced(cluster.client.clone(), "kube-system");
    cms.patch(
        "coredns",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"data": {"Corefile": ".:53 { whoami }"}})),
    )
    .await
    .unwrap();
    let third = k8skube::apply(&cluster, &objects).await.unwrap();
    let changed: Vec<String> = third
        .objects
        .iter()
        .filter(|a| a.change == Change::Changed)
        .map(|a| a.object.to_string())
        .collect();
    assert_eq!(changed, ["ConfigMap kube-system/coredns"]);
    let cm = cms.get("coredns").await.unwrap();
    assert!(cm.data.unwrap()["Corefile"].contains("kubernetes cluster.local"));

    // The DaemonSet controller targets exactly the GPU node.
    let deadline = Instant::now() + Duration::from_secs(60);
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "kube-system");
    let ds_pods = loop {
        kcm.check_alive();
        let list = pods
            .list(&ListParams::default().labels("name=nvidia-device-plugin-ds"))
            .await
            .unwrap();
        let ds = ds_api.get("nvidia-device-plugin-daemonset").await.unwrap();
        let status = serde_json::to_string(&ds.status).unwrap();
        let desired = ds.status.map(|s| s.desired_number_scheduled).unwrap_or(-1);
        if desired == 1 && !list.items.is_empty() {
            break list.items;
        }
        assert!(
            Instant::now() < deadline,
            "the DaemonSet controller did not schedule the device plugin (desired {desired}, {} pods; status {status}; nodes {}); kube-controller-manager log about it:\n{}",
            list.items.len(),
            serde_json::to_string(&nodes.list(&ListParams::default()).await.unwrap().items).unwrap(),
            std::fs::read_to_string(&kcm.log)
                .unwrap_or_default()
                .lines()
                .filter(|l| l.to_lowercase().contains("daemon"))
                .collect::<Vec<_>>()
                .join("\n")
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert_eq!(ds_pods.len(), 1);
    let affinity =
        serde_json::to_value(ds_pods[0].spec.as_ref().unwrap().affinity.as_ref().unwrap()).unwrap();
    let target = &affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]
        ["nodeSelectorTerms"][0]["matchFields"][0];
    assert_eq!(target["key"], "metadata.name");
    assert_eq!(target["values"], serde_json::json!(["gpu-1"]));

    // Nothing can become ready (no scheduler, no kubelet): the timeout names both workloads,
    // their status and their pods.
    let started = Instant::now();
    let e = k8skube::wait_ready(&cluster, &objects, Duration::from_secs(3))
        .await
        .expect_err("nothing can be ready without kubelets");
    assert!(started.elapsed() < Duration::from_secs(20));
    let msg = e.to_string();
    assert!(
        msg.contains("Deployment kube-system/coredns: 0 of 2 replicas available"),
        "{msg}"
    );
    assert!(
        msg.contains("DaemonSet kube-system/nvidia-device-plugin-daemonset: 0 of 1 pods ready"),
        "{msg}"
    );
    assert!(msg.contains("pod nvidia-device-plugin-daemonset-"), "{msg}");
    assert!(msg.contains("pod coredns-"), "{msg}");
    assert!(msg.contains("is kube-scheduler running?"), "{msg}");
    println!("wait_ready timeout message:\n{msg}");
    drop(kcm);
    drop(apiserver);
    drop(etcd);
}
