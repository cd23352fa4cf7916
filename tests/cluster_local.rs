//! A working cluster on local nodes, built only from k8sforge's PKI, units and configs, checked
//! live: nodes Ready, pods on every worker with addresses from that worker's pod CIDR, pod-to-pod
//! traffic across nodes, a Service through kube-proxy, DNS, `kubectl logs/exec`, and the security
//! facts (anonymous kubelet access refused, NodeRestriction, Secrets encrypted in etcd, kubelet
//! credentials confined). Then `local-ha` survives the loss of a control plane.
//!
//! No registry reachable here ships the Kubernetes binaries, so these tests take them from the
//! directory named by K8SFORGE_TEST_KUBE_BIN (see DEVELOPERS.md) and skip with one line when it
//! is unset. Everything before the control plane runs for real in tests/up_local.rs either way.

mod support;

use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use k8sforge_testkit::kube::{self, KubeBinaries, KUBE_BIN_ENV};
use k8sforge_testkit::{mirror, oci};

use support::kubectl::Kubectl;
use support::local_cluster::{phase, LocalCluster};

const BUSYBOX: &str = "k8sforge.test/busybox:1";

/// The local cluster pinned to the given binaries' version.
struct Cluster {
    lc: LocalCluster,
    kube: KubeBinaries,
}

impl std::ops::Deref for Cluster {
    type Target = LocalCluster;
    fn deref(&self) -> &LocalCluster {
        &self.lc
    }
}

impl Cluster {
    /// kubectl as `identity`, pointed at the admin's API address (see `LocalCluster::kubectl_as`).
    fn kubectl_as(&self, identity: &str, args: &[&str]) -> Output {
        self.lc
            .kubectl_as(&self.kube.kubectl(), identity)
            .output(args, None)
    }

    fn admin(&self) -> Kubectl {
        self.lc.kubectl(&self.kube.kubectl())
    }

    fn kubectl(&self, args: &[&str]) -> String {
        self.admin().ok(args)
    }

    fn apply(&self, yaml: &str) {
        self.admin().apply(yaml)
    }
}

const REMOTE_PHASES: [&str; 5] = ["etcd", "runtime", "control-plane", "workers", "network"];

/// The binaries, or `None` after printing the one skip line.
fn kube_binaries(test: &str) -> Option<KubeBinaries> {
    match kube::from_env() {
        Ok(Some(k)) => Some(k),
        Ok(None) => {
            eprintln!(
                "skipped {test}: set {KUBE_BIN_ENV} to a directory with kube-apiserver, \
                 kube-controller-manager, kube-scheduler, kubelet, kube-proxy, kubectl (and \
                 optionally coredns) of one version; see DEVELOPERS.md"
            );
            None
        }
        Err(e) => panic!("{e}"),
    }
}

fn start(test: &str, name: &str, cidr: &str, profile: &'static str) -> Option<Cluster> {
    let kube = kube_binaries(test)?;
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test boots systemd-nspawn nodes: run as root"
    );
    let cache = mirror::default_cache_dir();
    let base = mirror::build(&cache).expect("test mirror");
    let m = kube::cluster_mirror(&base, &kube, &cache).expect("cluster mirror");
    let lc = LocalCluster::fixed(name, cidr, profile)
        .with_mirror(&m.root)
        .with_set(format!("kubernetes.version={}", kube.version))
        // The training stack's controllers need images nobody can build here; it has its own
        // live test against the real apiserver (tests/training_apply.rs).
        .with_set("training.enabled=false");
    let c = Cluster { lc, kube };
    // Nodes left by a crashed earlier run would be adopted with other keys.
    let _ = c.cmd(&["teardown"]).output();
    // The workload image for the test pods (an add-on image would come from the mirror).
    let archive = c.home().join("busybox.tar");
    oci::build_archive(
        &m.busybox,
        &[
            "sh", "sleep", "ping", "wget", "nslookup", "httpd", "hostname", "cat", "echo", "ip",
        ],
        &["/bin/sh"],
        BUSYBOX,
        &archive,
    )
    .unwrap();
    Some(c)
}

fn import_busybox(c: &Cluster, nodes: &[&str]) {
    let archive = c.home().join("busybox.tar");
    for n in nodes {
        let mut push = c.cmd(&[
            "ssh",
            n,
            "--",
            "cat > /tmp/busybox.tar && ctr -n k8s.io images import /tmp/busybox.tar >/dev/null",
        ]);
        push.stdin(Stdio::from(std::fs::File::open(&archive).unwrap()));
        assert!(push.status().unwrap().success(), "import on {n}");
    }
}

/// Wait until `kubectl get` of `args` satisfies `ok`, returning the parsed JSON.
fn wait_json(
    c: &Cluster,
    args: &[&str],
    timeout: Duration,
    ok: impl Fn(&serde_json::Value) -> bool,
) -> serde_json::Value {
    c.admin().wait_json(args, timeout, ok)
}

fn pod_yaml(name: &str, node: &str, app: &str, cmd: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: {app}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", {cmd:?}]
"#
    )
}

fn running_pod_ip(c: &Cluster, name: &str) -> String {
    let v = wait_json(c, &["get", "pod", name], Duration::from_secs(120), |v| {
        v["status"]["phase"] == "Running" && v["status"]["podIP"].is_string()
    });
    v["status"]["podIP"].as_str().unwrap().to_string()
}

#[test]
fn local_3_is_a_working_cluster() {
    let Some(c) = start(
        "local_3_is_a_working_cluster",
        "e2e-k8s",
        "198.19.241.0/24",
        "local-3",
    ) else {
        return;
    };

    // 1. From nothing to a cluster.
    let (out, report) = c.up(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for p in ["provision", "pki"]
        .iter()
        .chain(REMOTE_PHASES.iter())
        .chain(["addons"].iter())
    {
        assert_eq!(
            phase(&report, p)["outcome"],
            "done",
            "{p}: {report:#}\n{stderr}"
        );
    }
    assert_eq!(phase(&report, "training")["outcome"], "done", "{report:#}");
    assert_eq!(out.status.code(), Some(0), "{stderr}");

    // 2. Every node registered and Ready; control planes tainted and labelled.
    let nodes = c.kubectl(&["get", "nodes", "-o", "json"]);
    let nodes: serde_json::Value = serde_json::from_str(&nodes).unwrap();
    let items = nodes["items"].as_array().unwrap();
    assert_eq!(items.len(), 3, "{nodes:#}");
    for n in items {
        let ready = n["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        assert!(ready, "{n:#}");
    }
    let cp = items
        .iter()
        .find(|n| n["metadata"]["name"] == "controlplane-1")
        .unwrap();
    assert!(
        cp["spec"]["taints"].as_array().unwrap().iter().any(|t| {
            t["key"] == "node-role.kubernetes.io/control-plane" && t["effect"] == "NoSchedule"
        }),
        "{cp:#}"
    );
    assert!(cp["metadata"]["labels"]["node-role.kubernetes.io/control-plane"].is_string());

    // 3. Pods on each worker, with addresses from that worker's pod CIDR.
    import_busybox(&c, &["worker-1", "worker-2"]);
    let serve = "echo hello-from-$(hostname) > /tmp/index.html && httpd -f -p 8080 -h /tmp";
    c.apply(&pod_yaml("web-1", "worker-1", "web", serve));
    c.apply(&pod_yaml("web-2", "worker-2", "web", serve));
    let ip1 = running_pod_ip(&c, "web-1");
    let ip2 = running_pod_ip(&c, "web-2");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.state_dir().join("state.json")).unwrap()).unwrap();
    for (node, ip) in [("worker-1", &ip1), ("worker-2", &ip2)] {
        let cidr: ipnet::Ipv4Net = state["pod_cidrs"][node].as_str().unwrap().parse().unwrap();
        assert!(
            cidr.contains(&ip.parse::<std::net::Ipv4Addr>().unwrap()),
            "{node}: pod IP {ip} not in {cidr}"
        );
    }

    // 4. Pod to pod across nodes; `kubectl exec` and `kubectl logs` (apiserver → kubelet RBAC).
    let got = c.kubectl(&[
        "exec",
        "web-1",
        "--",
        "wget",
        "-qO-",
        &format!("http://{ip2}:8080/index.html"),
    ]);
    assert!(got.contains("hello-from-web-2"), "{got}");
    c.kubectl(&["exec", "web-2", "--", "ping", "-c", "2", "-W", "3", &ip1]);
    c.apply(&pod_yaml(
        "talker",
        "worker-2",
        "talker",
        "echo log-line-from-talker; sleep 3600",
    ));
    running_pod_ip(&c, "talker");
    let logs = c.kubectl(&["logs", "talker"]);
    assert!(logs.contains("log-line-from-talker"), "{logs}");

    // 5. A Service's cluster IP reaches its pods (kube-proxy), from a pod on either worker.
    c.apply(
        r#"apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"#,
    );
    let svc: serde_json::Value =
        serde_json::from_str(&c.kubectl(&["get", "svc", "web", "-o", "json"])).unwrap();
    let cluster_ip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < 2 {
        assert!(Instant::now() < deadline, "service reached only {seen:?}");
        let out = c.kubectl_as(
            "admin",
            &[
                "exec",
                "talker",
                "--",
                "wget",
                "-qO-",
                &format!("http://{cluster_ip}/index.html"),
            ],
        );
        let body = String::from_utf8_lossy(&out.stdout);
        for w in ["web-1", "web-2"] {
            if body.contains(&format!("hello-from-{w}")) {
                seen.insert(w);
            }
        }
    }

    // 6. DNS: kubernetes.default resolves to the service IP, from a pod.
    if c.kube.coredns.is_some() {
        let api_svc: serde_json::Value =
            serde_json::from_str(&c.kubectl(&["get", "svc", "kubernetes", "-o", "json"])).unwrap();
        let api_ip = api_svc["spec"]["clusterIP"].as_str().unwrap().to_string();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let out = c.kubectl_as(
                "admin",
                &[
                    "exec",
                    "talker",
                    "--",
                    "nslookup",
                    "kubernetes.default.svc.cluster.local",
                ],
            );
            let text = String::from_utf8_lossy(&out.stdout).into_owned();
            if out.status.success() && text.contains(&api_ip) {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "nslookup: {text} {}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_secs(2));
        }
    } else {
        eprintln!("DNS check skipped: {KUBE_BIN_ENV} has no coredns binary");
    }

    // 7. Security facts, live.
    //    Anonymous requests to a kubelet are refused.
    let anon = Command::new("curl")
        .args(["-sk", "-o", "/dev/null", "-w", "%{http_code}"])
        .arg(format!("https://{}:10250/pods", node_ip(&c, "worker-1")))
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&anon.stdout), "401");
    //    A kubelet cannot modify another node's Node object (NodeRestriction + Node authorizer).
    let other = c.kubectl_as(
        "kubelet-worker-1",
        &["label", "node", "worker-2", "stolen=yes"],
    );
    assert!(!other.status.success());
    let err = String::from_utf8_lossy(&other.stderr);
    assert!(
        err.contains("Forbidden") || err.contains("forbidden"),
        "{err}"
    );
    //    ...nor list secrets cluster-wide; the admin can.
    let secrets = c.kubectl_as("kubelet-worker-1", &["get", "secrets", "-A"]);
    assert!(!secrets.status.success());
    assert!(String::from_utf8_lossy(&secrets.stderr).contains("forbidden"));
    c.kubectl(&[
        "create",
        "secret",
        "generic",
        "s1",
        "--from-literal=k=plain-secret-value",
    ]);
    c.kubectl(&["get", "secrets", "-A"]);
    //    A Secret read raw from etcd is encrypted.
    let raw = c.ssh_ok(
        "controlplane-1",
        "ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 --cacert=/etc/etcd/ca.crt \
         --cert=/etc/etcd/healthcheck-client.crt --key=/etc/etcd/healthcheck-client.key \
         get /registry/secrets/default/s1 --print-value-only | head -c 200 | tr -c '[:print:]' '.'",
    );
    assert!(raw.contains("k8s:enc:"), "{raw}");
    assert!(!raw.contains("plain-secret-value"));

    // 8. The NVIDIA device plugin DaemonSet runs exactly on nodes labelled as GPU nodes (no GPU
    //    here: worker-2 is labelled, and the mirror's image is a stand-in that sleeps).
    let ds = "daemonset/nvidia-device-plugin-daemonset";
    let before: serde_json::Value =
        serde_json::from_str(&c.kubectl(&["-n", "kube-system", "get", ds, "-o", "json"])).unwrap();
    assert_eq!(before["status"]["desiredNumberScheduled"], 0, "{before:#}");
    c.kubectl(&["label", "node", "worker-2", "k8sforge.io/gpu=true"]);
    let pods = wait_json(
        &c,
        &[
            "-n",
            "kube-system",
            "get",
            "pods",
            "-l",
            "name=nvidia-device-plugin-ds",
        ],
        Duration::from_secs(90),
        |v| {
            v["items"]
                .as_array()
                .is_some_and(|a| a.len() == 1 && a[0]["status"]["phase"] == "Running")
        },
    );
    assert_eq!(pods["items"][0]["spec"]["nodeName"], "worker-2", "{pods:#}");
    c.kubectl(&["label", "node", "worker-2", "k8sforge.io/gpu-"]);

    // 9. A second up: nothing changes, nothing restarts, the cluster is unaffected.
    let (out, report) = c.up(&[]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(phase(&report, "addons")["files_changed"], 0, "{report:#}");
    for p in REMOTE_PHASES {
        let ph = phase(&report, p);
        assert_eq!(ph["files_changed"], 0, "{p}: {report:#}");
        assert_eq!(ph["units_restarted"], 0, "{p}: {report:#}");
    }
    let again = c.kubectl(&[
        "exec",
        "web-1",
        "--",
        "wget",
        "-qO-",
        &format!("http://{ip2}:8080/index.html"),
    ]);
    assert!(again.contains("hello-from-web-2"), "{again}");
}

fn node_ip(c: &Cluster, node: &str) -> String {
    let v: serde_json::Value =
        serde_json::from_str(&c.kubectl(&["get", "node", node, "-o", "json"])).unwrap();
    v["status"]["addresses"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a["address"].as_str())
        .unwrap()
        .to_string()
}

/// Power a node off from inside and wait until it no longer answers.
fn power_off(c: &Cluster, node: &str) {
    let _ = c.ssh(node, "systemctl poweroff");
    let deadline = Instant::now() + Duration::from_secs(60);
    while c.ssh(node, "true").status.success() {
        assert!(Instant::now() < deadline, "{node} did not power off");
        std::thread::sleep(Duration::from_secs(1));
    }
}

#[test]
fn local_ha_keeps_working_without_one_control_plane() {
    let Some(c) = start(
        "local_ha_keeps_working_without_one_control_plane",
        "e2e-ha",
        "198.19.242.0/24",
        "local-ha",
    ) else {
        return;
    };
    let (out, report) = c.up(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for p in ["provision", "pki"].iter().chain(REMOTE_PHASES.iter()) {
        assert_eq!(
            phase(&report, p)["outcome"],
            "done",
            "{p}: {report:#}\n{stderr}"
        );
    }
    // One API address for everyone: the host-side load balancer, not a control plane.
    let kc = std::fs::read_to_string(c.kubeconfig("admin")).unwrap();
    assert!(kc.contains("server: https://198.19.242.1:6443"), "{kc}");
    // Kubelets never ride on that balancer: they dial the node-local endpoint, which spreads
    // over every apiserver (render::api_proxy).
    let kubelet_kc = c.ssh_ok("worker-1", "cat /etc/kubernetes/kubelet.kubeconfig");
    assert!(
        kubelet_kc.contains("server: https://127.0.0.1:6443"),
        "{kubelet_kc}"
    );
    wait_json(&c, &["get", "nodes"], Duration::from_secs(60), |v| {
        v["items"].as_array().is_some_and(|a| a.len() == 5)
    });

    // Lose a control plane (with its etcd member): the API, the nodes and scheduling go on.
    power_off(&c, "controlplane-1");
    let nodes = wait_json(&c, &["get", "nodes"], Duration::from_secs(30), |v| {
        v["items"].as_array().is_some_and(|a| a.len() == 5)
    });
    assert_eq!(nodes["items"].as_array().unwrap().len(), 5);
    import_busybox(&c, &["worker-1", "worker-2"]);
    // No nodeName: the scheduler (leader elected anew if it ran on controlplane-1) places it.
    c.apply(&format!(
        r#"apiVersion: v1
kind: Pod
metadata: {{name: after-loss}}
spec:
  terminationGracePeriodSeconds: 1
  containers:
  - name: main
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", "sleep 3600"]
"#
    ));
    let v = wait_json(
        &c,
        &["get", "pod", "after-loss"],
        Duration::from_secs(120),
        |v| v["status"]["phase"] == "Running",
    );
    let node = v["spec"]["nodeName"].as_str().unwrap();
    assert!(node.starts_with("worker-"), "scheduled on {node}");
    // Writes still reach a quorum of etcd.
    c.kubectl(&["create", "configmap", "after-loss", "--from-literal=k=v"]);
}
