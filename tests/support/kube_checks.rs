//! "A working cluster", checked live with the given Kubernetes binaries (K8SFORGE_TEST_KUBE_BIN)
//! through an admin kubeconfig from the host: nodes Ready, pods on two nodes reaching each other,
//! a Service reached through kube-proxy, and DNS resolving a Service name from a pod. The workload
//! image is busybox from the test mirror packed as an OCI archive and imported on the nodes by a
//! caller-given way in (no registry here).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

pub use super::kubectl::Kubectl;

use k8sforge_testkit::kube::{self, KubeBinaries, KUBE_BIN_ENV};
use k8sforge_testkit::{mirror::TestMirror, oci};

pub const BUSYBOX: &str = "k8sforge.test/busybox:1";

/// The binaries, or `None` after printing the one skip line.
pub fn kube_binaries(test: &str) -> Option<KubeBinaries> {
    match kube::from_env() {
        Ok(Some(k)) => Some(k),
        Ok(None) => {
            eprintln!(
                "skipped {test} (the working-cluster part): set {KUBE_BIN_ENV} to a directory \
                 with kube-apiserver, kube-controller-manager, kube-scheduler, kubelet, \
                 kube-proxy, kubectl (and optionally coredns) of one version; see DEVELOPERS.md"
            );
            None
        }
        Err(e) => panic!("{e}"),
    }
}

/// busybox with the applets the checks use, as an OCI archive at `out`.
pub fn busybox_archive(m: &TestMirror, out: &Path) {
    oci::build_archive(
        &m.busybox,
        &[
            "sh", "sleep", "ping", "wget", "nslookup", "httpd", "hostname", "cat", "echo", "ip",
        ],
        &["/bin/sh"],
        BUSYBOX,
        out,
    )
    .unwrap();
}

/// The shell command that imports the archive read from stdin into containerd's k8s.io namespace
/// (`sudo`: the login user of cloud-image nodes is not root).
pub const IMPORT_FROM_STDIN: &str = "cat > /tmp/busybox.tar && sudo -n ctr -n k8s.io images import /tmp/busybox.tar >/dev/null && rm -f /tmp/busybox.tar";

/// kubectl of the given binaries with `kubeconfig`.
pub fn kubectl(kube: &KubeBinaries, kubeconfig: impl Into<PathBuf>) -> Kubectl {
    Kubectl::new(kube.kubectl(), kubeconfig)
}

/// Every one of `names` registered and Ready (within `timeout`).
pub fn wait_nodes_ready(k: &Kubectl, names: &[&str], timeout: Duration) {
    k.wait_json(&["get", "nodes"], timeout, |v| {
        let items = v["items"].as_array().cloned().unwrap_or_default();
        names.iter().all(|want| {
            items.iter().any(|n| {
                n["metadata"]["name"] == *want
                    && n["status"]["conditions"].as_array().is_some_and(|c| {
                        c.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
            })
        })
    });
}

/// The address of pod `name` once it runs (within 2 minutes).
pub fn running_pod_ip(k: &Kubectl, name: &str) -> String {
    let v = k.wait_json(&["get", "pod", name], Duration::from_secs(120), |v| {
        v["status"]["phase"] == "Running" && v["status"]["podIP"].is_string()
    });
    v["status"]["podIP"].as_str().unwrap().to_string()
}

pub fn pod_yaml(name: &str, node: &str, app: &str, cmd: &str) -> String {
    format!(
        r#"apiVersion: v1
kind: Pod
metadata:
  name: {name}
  labels: {{app: {app}}}
spec:
  nodeName: {node}
  terminationGracePeriodSeconds: 1
  tolerations: [{{operator: Exists}}]
  containers:
  - name: main
    image: {BUSYBOX}
    imagePullPolicy: Never
    command: ["/bin/sh", "-c", {cmd:?}]
"#
    )
}

/// Pods on `a` and `b` (busybox already imported there) reach each other by pod address, a
/// Service spreads over both, and — when the binaries include CoreDNS — a pod resolves that
/// Service's name to its cluster IP. Leaves pods `web-a`, `web-b` and Service `web` running.
pub fn workload_across(k: &Kubectl, a: &str, b: &str, dns: bool) {
    let serve = "echo hello-from-$(hostname) > /tmp/index.html && httpd -f -p 8080 -h /tmp";
    k.apply(&pod_yaml("web-a", a, "web", serve));
    k.apply(&pod_yaml("web-b", b, "web", serve));
    let ip_a = running_pod_ip(k, "web-a");
    let ip_b = running_pod_ip(k, "web-b");
    let got = k.ok(&[
        "exec",
        "web-a",
        "--",
        "wget",
        "-qO-",
        &format!("http://{ip_b}:8080/index.html"),
    ]);
    assert!(got.contains("hello-from-web-b"), "{a} → {b}: {got}");
    k.ok(&["exec", "web-b", "--", "ping", "-c", "2", "-W", "3", &ip_a]);
    k.apply(
        r#"apiVersion: v1
kind: Service
metadata: {name: web}
spec:
  selector: {app: web}
  ports: [{port: 80, targetPort: 8080}]
"#,
    );
    let svc: serde_json::Value =
        serde_json::from_str(&k.ok(&["get", "svc", "web", "-o", "json"])).unwrap();
    let cluster_ip = svc["spec"]["clusterIP"].as_str().unwrap().to_string();
    let mut seen = std::collections::BTreeSet::new();
    let deadline = Instant::now() + Duration::from_secs(60);
    while seen.len() < 2 {
        assert!(Instant::now() < deadline, "service reached only {seen:?}");
        let out = k.output(
            &[
                "exec",
                "web-a",
                "--",
                "wget",
                "-qO-",
                &format!("http://{cluster_ip}/index.html"),
            ],
            None,
        );
        let body = String::from_utf8_lossy(&out.stdout);
        for w in ["web-a", "web-b"] {
            if body.contains(&format!("hello-from-{w}")) {
                seen.insert(w);
            }
        }
    }
    if !dns {
        eprintln!("DNS check skipped: {KUBE_BIN_ENV} has no coredns binary");
        return;
    }
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let out = k.output(
            &[
                "exec",
                "web-b",
                "--",
                "nslookup",
                "web.default.svc.cluster.local",
            ],
            None,
        );
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        if out.status.success() && text.contains(&cluster_ip) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nslookup web.default: {text} {}",
            String::from_utf8_lossy(&out.stderr)
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}
