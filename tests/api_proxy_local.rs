//! The node-local API endpoint (render/api_proxy.rs) on real local nodes, without Kubernetes
//! binaries: a local cluster with 3 control planes and no load balancer in front of the nodes;
//! the `runtime` phase installs `k8sforge-api-proxy.service` on the worker (and on no control
//! plane). Each control plane runs a stand-in apiserver — `openssl s_server` serving TLS with the
//! cluster's real apiserver certificate and answering `/readyz` (the watcher's probe too) with
//! its node name — because no apiserver binary exists in CI; tests/cluster_local.rs runs the
//! real ones through the same path when K8SFORGE_TEST_KUBE_BIN is set. From the worker,
//! `https://127.0.0.1:6443` verified against the cluster CA reaches all three; with one stand-in
//! stopped and another control plane powered off, every request still succeeds, served by the
//! one left.

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use k8sforge_testkit::mirror;

use support::local_cluster::LocalCluster;

/// Names that answered `n` requests to the node-local endpoint from the worker; panics on
/// any failed request.
fn served(c: &LocalCluster, n: usize) -> BTreeSet<String> {
    let script = format!(
        "for i in $(seq {n}); do curl -sS --fail --cacert /etc/kubernetes/pki/ca.crt --max-time 5 https://127.0.0.1:6443/readyz || echo FAILED; echo; done"
    );
    let out = c.ssh_ok("worker-1", &script);
    let names: Vec<String> = out
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_string)
        .collect();
    assert_eq!(names.len(), n, "{out}");
    if names.iter().any(|l| l.contains("FAILED")) {
        let diag = c.ssh(
            "worker-1",
            "curl -v --cacert /etc/kubernetes/pki/ca.crt --max-time 5 https://127.0.0.1:6443/readyz 2>&1; \
             iptables -w -t nat -L -v -n; iptables -w -L INPUT -v -n; sysctl net.ipv4.conf.all.route_localnet; \
             conntrack -L 2>&1 | grep 6443; journalctl -u k8sforge-api-proxy --no-pager | tail -5",
        );
        panic!(
            "a request failed:\n{out}\n--- diagnostics:\n{}{}",
            String::from_utf8_lossy(&diag.stdout),
            String::from_utf8_lossy(&diag.stderr)
        );
    }
    names.into_iter().collect()
}

/// Wait until the watcher has programmed exactly `want` backends.
fn wait_backends(c: &LocalCluster, want: usize) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let rules = c.ssh_ok("worker-1", "iptables -w -t nat -S K8SFORGE-API");
        let n = rules.lines().filter(|l| l.contains("DNAT")).count();
        if n == want {
            return rules;
        }
        assert!(
            Instant::now() < deadline,
            "watcher never reached {want} backends:\n{rules}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn b64(path: PathBuf) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD
        .encode(std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display())))
}

#[test]
fn node_local_api_endpoint_balances_over_ready_apiservers_and_survives_losing_two() {
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test boots systemd-nspawn nodes: run as root"
    );
    let m = mirror::build(&mirror::default_cache_dir()).expect("test mirror");
    let c = LocalCluster::reserved("apx", "local-ha")
        .with_mirror(&m.root)
        .with_set("workers[0].count=1");
    let _ = c.cmd(&["teardown"]).output();
    c.up_only("provision");
    c.up_only("pki");
    let report = c.up_only("runtime");
    assert_eq!(report["phases"][0]["outcome"], "done", "{report:#}");

    // Only the worker runs the watcher; control planes reach their own apiserver directly.
    assert_eq!(
        c.ssh_ok("worker-1", "systemctl is-active k8sforge-api-proxy.service")
            .trim(),
        "active"
    );
    for cp in ["controlplane-1", "controlplane-2", "controlplane-3"] {
        let out = c.ssh(cp, "test -e /etc/systemd/system/k8sforge-api-proxy.service");
        assert_eq!(
            out.status.code(),
            Some(1),
            "{cp} must not have the node-local balancer"
        );
    }
    // The kubelet and kube-proxy kubeconfigs the worker will get name exactly this endpoint.
    let kc = std::fs::read_to_string(
        c.state_dir()
            .join("kubeconfigs/kubelet-worker-1.kubeconfig"),
    )
    .unwrap();
    assert!(kc.contains("server: https://127.0.0.1:6443"), "{kc}");

    // Stand-in apiservers with the cluster's apiserver certificate (SANs: every control plane's
    // address and 127.0.0.1): `openssl s_server -WWW` (openssl is on every node) serving a file
    // `readyz` holding the node's name, so `/readyz` answers 200 with who served it.
    let pki = c.state_dir().join("pki");
    let (crt, key) = (
        b64(pki.join("apiserver.crt")),
        b64(pki.join("apiserver.key")),
    );
    for cp in ["controlplane-1", "controlplane-2", "controlplane-3"] {
        c.ssh_ok(
            cp,
            &format!(
                "set -e; umask 077; mkdir -p /run/standin; echo {crt} | base64 -d > /run/s.crt; \
                 echo {key} | base64 -d > /run/s.key; echo {cp} > /run/standin/readyz; \
                 systemd-run --unit=standin-apiserver --working-directory=/run/standin \
                 openssl s_server -quiet -accept 6443 -cert /run/s.crt -key /run/s.key -WWW"
            ),
        );
    }

    // Each stand-in answers directly (so three backends below are three ready ones, not the
    // watcher's fail-open of all when none is ready).
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.state_dir().join("state.json")).unwrap()).unwrap();
    for n in state["inventory"]["nodes"].as_array().unwrap() {
        let name = n["name"].as_str().unwrap();
        if name.starts_with("controlplane-") {
            let ip = n["internal_ip"].as_str().unwrap();
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                let out = c.ssh("worker-1", &format!("curl -sS --fail --cacert /etc/kubernetes/pki/ca.crt --max-time 3 https://{ip}:6443/readyz"));
                if String::from_utf8_lossy(&out.stdout).trim() == name {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "stand-in on {name} ({ip}) does not answer: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }

    // All three ready: the watcher programs three backends, round robin reaches each.
    let rules = wait_backends(&c, 3);
    assert!(rules.contains("--mode nth --every 3"), "{rules}");
    let all: BTreeSet<String> = ["controlplane-1", "controlplane-2", "controlplane-3"]
        .map(String::from)
        .into();
    assert_eq!(served(&c, 12), all);

    // One apiserver stops answering: taken out within a probe round; no request fails after.
    c.ssh_ok("controlplane-2", "systemctl stop standin-apiserver");
    wait_backends(&c, 2);
    assert_eq!(
        served(&c, 12),
        ["controlplane-1", "controlplane-3"]
            .map(String::from)
            .into()
    );

    // A control plane powered off (no RST, connects time out): still served by the one left.
    let _ = c.ssh("controlplane-3", "systemctl poweroff");
    wait_backends(&c, 1);
    assert_eq!(served(&c, 8), ["controlplane-1".to_string()].into());

    // `remove` takes every rule out again (what a static teardown runs).
    c.ssh_ok(
        "worker-1",
        "systemctl stop k8sforge-api-proxy && /usr/local/lib/k8sforge/api-proxy.sh remove",
    );
    let left = c.ssh_ok("worker-1", "iptables -w -t nat -S; iptables -w -S INPUT");
    assert!(
        !left.contains("K8SFORGE-API") && !left.contains("127.0.0.0/8"),
        "{left}"
    );
}
