//! A static profile with THREE control planes and NO load balancer, over four local nodes (real
//! systemd, sshd, etcd, containerd and — from K8SFORGE_TEST_KUBE_BIN — the Kubernetes binaries;
//! the test skips with one line without them, see DEVELOPERS.md). Shown:
//!
//! - `up` reaches a working cluster: every node Ready, pods on two nodes reach each other, a
//!   Service, DNS (support::kube_checks). Kubelets and kube-proxy dial the node-local endpoint
//!   (127.0.0.1:6443 → every apiserver, render::api_proxy); the admin kubeconfig names the first
//!   control plane (no load balancer: as kubespray's admin.conf and `k0sctl kubeconfig` do).
//! - A control plane the kubeconfig does NOT name is stopped (its apiserver, etcd member,
//!   controller manager and scheduler): kubectl through the admin kubeconfig still works, the
//!   nodes stay Ready past the node monitor's grace period, the workload keeps serving, writes
//!   reach the etcd quorum. It is started again.
//! - Then the control plane the kubeconfig names is stopped: `k8sforge kubeconfig --out F` asks
//!   each control plane and writes one that answers, saying so; through it the same holds.
//!
//! The nodes are containers on this machine's kernel: the profile says so
//! (`provider.containerNodes`, `provider.kernelExceptions`), and the kernel values kubelet's
//! protectKernelDefaults checks are bound as a real kernel has them (support::cloud_nodes).

mod support;

use std::net::Ipv4Addr;
use std::time::Duration;

use k8sforge_testkit::{kube, mirror};
use support::cloud_nodes;
use support::kube_checks::{self, Kubectl};
use support::local_cluster::{assert_done, LocalCluster};
use support::static_cluster::{write_static, Host, Static};

const CONTROL_PLANE_UNITS: &str =
    "kube-apiserver.service kube-controller-manager.service kube-scheduler.service etcd.service";

#[test]
fn static_three_control_planes_without_a_load_balancer() {
    let Some(k) = kube_checks::kube_binaries("static_three_control_planes_without_a_load_balancer")
    else {
        return;
    };
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test boots systemd-nspawn nodes: run as root"
    );
    let cache = mirror::default_cache_dir();
    let base = mirror::build(&cache).expect("test mirror");
    let m = kube::cluster_mirror(&base, &k, &cache).expect("cluster mirror");

    // 1. Four machines (booted by the local provider, used as static hosts).
    let machines = LocalCluster::reserved("sham", "local-3").with_set("workers[0].count=3");
    let _ = machines.cmd(&["teardown"]).output();
    machines.up_only("provision");
    let st: serde_json::Value =
        serde_json::from_slice(&std::fs::read(machines.state_dir().join("state.json")).unwrap())
            .unwrap();
    let ips: Vec<(String, Ipv4Addr)> = st["inventory"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                n["internal_ip"]
                    .as_str()
                    .or_else(|| n["internalIp"].as_str())
                    .unwrap()
                    .parse()
                    .unwrap(),
            )
        })
        .collect();
    assert_eq!(ips.len(), 4, "{st:#}");
    let gateway = Ipv4Addr::from(u32::from(ips[0].1) & 0xffff_ff00 | 1);
    for (n, _) in &ips {
        machines.ssh_ok(n, cloud_nodes::KERNEL_STAND_IN);
        machines.ssh_ok(n, &cloud_nodes::resolver_stand_in(gateway));
    }

    // 2. The static cluster: cp-1..cp-3 (control plane + etcd), wk-1 (worker), as root.
    let names = ["cp-1", "cp-2", "cp-3", "wk-1"];
    let hosts: Vec<Host> = ips
        .iter()
        .zip(names)
        .map(|((_, ip), name)| Host {
            name: name.to_string(),
            ip: *ip,
            roles: if name.starts_with("cp") {
                "control-plane, etcd"
            } else {
                "worker"
            },
            user: "root",
            bastion: None,
        })
        .collect();
    let scratch = tempfile::tempdir().unwrap();
    let cluster = Static {
        home: scratch.path().join("home"),
        dir: scratch.path().join("static"),
        name: format!("{}-s", machines.name),
        mirror: m.root.display().to_string(),
    };
    let key = machines.state_dir().join("ssh/id_ed25519");
    write_static(
        &cluster.dir,
        &cluster.name,
        &machines.cidr,
        &key,
        &hosts,
        1,
        &k.version,
    );
    struct Down<'a>(&'a Static);
    impl Drop for Down<'_> {
        fn drop(&mut self) {
            if std::env::var_os("K8SFORGE_TEST_KEEP").is_none() {
                let _ = self.0.cmd(&["teardown"]).output();
            }
        }
    }
    let (out, report) = cluster.up();
    let _down = Down(&cluster);
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_done(
        &report,
        &[
            "provision",
            "pki",
            "etcd",
            "runtime",
            "control-plane",
            "workers",
            "network",
            "addons",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "{stderr}");

    // No load balancer: the admin kubeconfig names the first control plane; kubelets dial the
    // node-local endpoint on every node.
    let admin = cluster
        .home
        .join(&cluster.name)
        .join("kubeconfigs/admin.kubeconfig");
    let kc = std::fs::read_to_string(&admin).unwrap();
    let first = format!("https://{}:6443", hosts[0].ip);
    assert!(kc.contains(&format!("server: {first}")), "{kc}");
    for h in &hosts {
        let kubelet = cluster.ssh(&h.name, "cat /etc/kubernetes/kubelet.kubeconfig");
        assert!(
            kubelet.contains("server: https://127.0.0.1:6443"),
            "{}: {kubelet}",
            h.name
        );
    }
    let kubectl = kube_checks::kubectl(&k, &admin);
    kube_checks::wait_nodes_ready(&kubectl, &names, Duration::from_secs(120));

    // 3. A workload across two nodes (the control planes run pods too: tolerations).
    let archive = scratch.path().join("busybox.tar");
    kube_checks::busybox_archive(&m, &archive);
    for n in ["cp-2", "wk-1"] {
        let ok = cluster
            .cmd(&["ssh", n, "--", kube_checks::IMPORT_FROM_STDIN])
            .stdin(std::fs::File::open(&archive).unwrap())
            .status()
            .unwrap();
        assert!(ok.success(), "import busybox on {n}");
    }
    kube_checks::workload_across(&kubectl, "cp-2", "wk-1", k.coredns.is_some());

    // 4. Stop a control plane the kubeconfig does not name (cp-3).
    cluster.ssh("cp-3", &format!("systemctl stop {CONTROL_PLANE_UNITS}"));
    survives(&kubectl, &["cp-1", "cp-2", "wk-1"], "after-cp3");
    cluster.ssh("cp-3", &format!("systemctl start {CONTROL_PLANE_UNITS}"));
    let health = "ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 --cacert=/etc/etcd/ca.crt \
         --cert=/etc/etcd/healthcheck-client.crt --key=/etc/etcd/healthcheck-client.key endpoint health";
    wait_for(Duration::from_secs(60), "cp-3 etcd healthy again", || {
        cluster.ssh_out("cp-3", health).contains("is healthy")
    });

    // 5. Stop the one it names (cp-1): the recorded kubeconfig fails, `k8sforge kubeconfig`
    //    writes a live one, saying so.
    cluster.ssh("cp-1", &format!("systemctl stop {CONTROL_PLANE_UNITS}"));
    let dead = kubectl.output(&["get", "nodes"], None);
    assert!(
        !dead.status.success(),
        "cp-1 is stopped, yet its apiserver answered"
    );
    let picked = scratch.path().join("picked.kubeconfig");
    let out = cluster
        .cmd(&["kubeconfig", "--out", picked.to_str().unwrap()])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "kubeconfig: {said}");
    assert!(
        said.contains(&format!("{first} does not answer")),
        "kubeconfig must say it picked another control plane: {said}"
    );
    let text = std::fs::read_to_string(&picked).unwrap();
    assert!(
        [&hosts[1], &hosts[2]]
            .iter()
            .any(|h| text.contains(&format!("server: https://{}:6443", h.ip))),
        "{text}"
    );
    survives(
        &kube_checks::kubectl(&k, &picked),
        &["cp-2", "cp-3", "wk-1"],
        "after-cp1",
    );
    cluster.ssh("cp-1", &format!("systemctl start {CONTROL_PLANE_UNITS}"));
}

/// With one control plane down: the API answers, the other nodes (`names`; the stopped control
/// plane's own kubelet talks to its own apiserver, as kubeadm's does without an endpoint) stay
/// Ready past the node monitor's
/// grace period (40 s: a kubelet whose endpoint died would turn NotReady), the workload still
/// serves, and a write reaches the etcd quorum.
fn survives(kubectl: &Kubectl, names: &[&str], tag: &str) {
    std::thread::sleep(Duration::from_secs(50));
    let v: serde_json::Value =
        serde_json::from_str(&kubectl.ok(&["get", "nodes", "-o", "json"])).unwrap();
    for n in names {
        let node = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["metadata"]["name"] == *n)
            .unwrap_or_else(|| panic!("{tag}: no node {n}"));
        let ready = node["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        assert!(ready, "{tag}: {n} not Ready: {node:#}");
    }
    let ip = kube_checks::running_pod_ip(kubectl, "web-b");
    let got = kubectl.ok(&[
        "exec",
        "web-a",
        "--",
        "wget",
        "-qO-",
        &format!("http://{ip}:8080/index.html"),
    ]);
    assert!(got.contains("hello-from-web-b"), "{tag}: {got}");
    kubectl.ok(&["create", "configmap", tag, "--from-literal=k=v"]);
}

fn wait_for(timeout: Duration, what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !ok() {
        assert!(std::time::Instant::now() < deadline, "timed out: {what}");
        std::thread::sleep(Duration::from_secs(2));
    }
}
