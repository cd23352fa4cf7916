//! `node add` and `node remove` on real local nodes (systemd-nspawn, real sshd and systemd,
//! containerd and CNI from the test mirror). `local-3` is brought up, then `node add --group
//! worker --count 1` makes worker-3: the phase summaries show that every phase but `network`
//! changed files on (and sent bytes to) worker-3 alone, and that `network` reached every node
//! (each learns the route to worker-3's pod CIDR). worker-3's units are active and every other
//! node routes its pod CIDR. `node remove worker-3` then deprovisions it, and no node routes
//! its pod CIDR any more.
//!
//! With `K8SFORGE_TEST_KUBE_BIN` the whole cluster runs (training stack off: its upstream trees
//! are not in the test mirror): worker-3 must turn Ready, and `node remove` drains it and deletes
//! its Node object. Without them, `up` stops at the control plane (as in tests/vxlan_local.rs)
//! and the test checks the units and the routes only, saying so.
//!
//! Own cluster name and 198.19.X.0/24 subnet (`reserve_subnet`). Needs root, systemd-container,
//! debootstrap and apt access (test mirror, cached).

mod support;

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use k8sforge_testkit::kube::{self, KubeBinaries};
use k8sforge_testkit::mirror;

const BIN: &str = env!("CARGO_BIN_EXE_k8sforge");

struct Cluster {
    home: tempfile::TempDir,
    mirror: String,
    name: String,
    cidr: String,
    kube: Option<KubeBinaries>,
    _subnet_lock: std::fs::File,
}

impl Cluster {
    fn cmd(&self, verb: &[&str], args: &[&str]) -> Output {
        let mut c = Command::new(BIN);
        c.env("K8SFORGE_HOME", self.home.path()).args(verb).args([
            "--profile",
            "local-3",
            "--set",
            &format!("name={}", self.name),
            "--set",
            &format!("network.nodeCIDR={}", self.cidr),
            "--set",
            "training.enabled=false",
        ]);
        if let Some(k) = &self.kube {
            c.args(["--set", &format!("kubernetes.version={}", k.version)]);
        }
        c.args(args).output().unwrap()
    }

    /// A verb that takes the artifact source, with JSON output.
    fn json_verb(&self, verb: &[&str], args: &[&str]) -> (Output, serde_json::Value) {
        let mut all = vec![
            "--mirror",
            &self.mirror,
            "--trust-mirror-checksums",
            "-o",
            "json",
        ];
        all.extend_from_slice(args);
        let out = self.cmd(verb, &all);
        let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        (out, v)
    }

    fn ssh(&self, node: &str, script: &str) -> Output {
        self.cmd(&["ssh"], &[node, "--", script])
    }

    fn ssh_ok(&self, node: &str, script: &str) -> String {
        let out = self.ssh(node, script);
        assert!(out.status.success(), "on {node}: {script}\n{}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn state(&self) -> serde_json::Value {
        let p = self.home.path().join(&self.name).join("state.json");
        serde_json::from_slice(&std::fs::read(p).unwrap()).unwrap()
    }

    fn kubectl(&self, args: &[&str]) -> Output {
        let k = self.kube.as_ref().unwrap();
        let admin: PathBuf = self
            .home
            .path()
            .join(&self.name)
            .join("kubeconfigs/admin.kubeconfig");
        Command::new(k.kubectl())
            .arg(format!("--kubeconfig={}", admin.display()))
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.cmd(&["teardown"], &[]);
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn phase<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["phases"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["phase"] == name))
        .unwrap_or_else(|| panic!("no phase {name} in {report:#}"))
}

fn keys(v: &serde_json::Value) -> BTreeSet<String> {
    v.as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

#[test]
fn node_add_touches_only_the_new_node_and_its_route_peers_and_node_remove_takes_it_out() {
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test boots systemd-nspawn nodes: run as root"
    );
    let kube = kube::from_env().unwrap_or_else(|e| panic!("{e}"));
    if kube.is_none() {
        eprintln!(
            "note: {} unset: the cluster stops at the control plane; checking units and routes, not Ready or drain",
            kube::KUBE_BIN_ENV
        );
    }
    let cache = mirror::default_cache_dir();
    let base = mirror::build(&cache).expect("test mirror");
    let mirror_root = match &kube {
        Some(k) => kube::cluster_mirror(&base, k, &cache)
            .expect("cluster mirror")
            .root
            .display()
            .to_string(),
        None => base.root.display().to_string(),
    };
    let (x, lock) = support::subnet::reserve_subnet();
    let c = Cluster {
        home: tempfile::tempdir().unwrap(),
        mirror: mirror_root,
        name: format!("nod-{x}"),
        cidr: format!("198.19.{x}.0/24"),
        kube,
        _subnet_lock: lock,
    };
    let _ = c.cmd(&["teardown"], &[]);

    // 1. The cluster: everything with the binaries; without, up to the runtime plus the network.
    let t = Instant::now();
    let (out, report) = c.json_verb(&["up"], &[]);
    let full_up = t.elapsed();
    if c.kube.is_some() {
        assert!(out.status.success(), "up: {}", text(&out));
    } else {
        for p in ["provision", "pki", "etcd", "runtime"] {
            assert_eq!(phase(&report, p)["outcome"], "done", "{p}: {}", text(&out));
        }
        let (out, report) = c.json_verb(&["up"], &["--only", "network"]);
        assert_eq!(
            phase(&report, "network")["outcome"],
            "done",
            "{}",
            text(&out)
        );
    }
    let old: BTreeSet<String> = ["controlplane-1", "worker-1", "worker-2"]
        .map(String::from)
        .into();

    // 2. Bad input: an unknown group, a node in the middle of its group, a control plane.
    let out = c.cmd(&["node", "add"], &["--group", "gpu"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("worker group \"gpu\" is not in profile")
            && text(&out).contains("its groups are worker"),
        "{}",
        text(&out)
    );
    let out = c.cmd(&["node", "remove"], &["worker-1"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("remove the last 1 node(s) of group worker (worker-2)"),
        "{}",
        text(&out)
    );
    let out = c.cmd(&["node", "remove"], &["controlplane-1"]);
    assert!(!out.status.success());
    assert!(
        text(&out).contains("removes workers only"),
        "{}",
        text(&out)
    );

    // 3. node add: only worker-3 changes, except the routes every node learns.
    let t = Instant::now();
    let (out, report) = c.json_verb(&["node", "add"], &["--group", "worker", "--count", "1"]);
    let add_time = t.elapsed();
    assert!(out.status.success(), "node add: {}", text(&out));
    assert_eq!(
        report["added"],
        serde_json::json!(["worker-3"]),
        "{report:#}"
    );
    let new: BTreeSet<String> = ["worker-3".to_string()].into();
    let all: BTreeSet<String> = old.union(&new).cloned().collect();
    assert!(
        phase(&report, "provision")["detail"]
            .as_str()
            .unwrap()
            .contains("1 booted, 3 kept"),
        "{report:#}"
    );
    for p in report["phases"].as_array().unwrap() {
        let name = p["phase"].as_str().unwrap();
        assert_eq!(p["outcome"], "done", "{name}: {report:#}");
        let changed = keys(&p["nodes_changed"]);
        let contacted = keys(&p["bytes_sent"]);
        match name {
            "network" => {
                assert_eq!(changed, all, "network must reach every node: {p:#}");
            }
            "provision" | "pki" => {}
            "addons" => assert_eq!(p["files_changed"], 0, "{p:#}"),
            _ => {
                assert!(changed.is_subset(&new), "{name} changed old nodes: {p:#}");
                assert!(contacted.is_subset(&new), "{name} sent to old nodes: {p:#}");
            }
        }
    }
    for p in ["runtime"].iter().chain(if c.kube.is_some() {
        ["workers"].iter()
    } else {
        [].iter()
    }) {
        assert_eq!(
            keys(&phase(&report, p)["nodes_changed"]),
            new,
            "{p}: {report:#}"
        );
    }
    let state = c.state();
    assert_eq!(state["worker_counts"]["worker"], 3, "{state:#}");
    let w3_cidr = state["pod_cidrs"]["worker-3"].as_str().unwrap().to_string();
    let w3_ip = format!("198.19.{x}.14");
    assert_eq!(
        c.ssh_ok(
            "worker-3",
            "systemctl is-active containerd k8sforge-pod-routes.service"
        )
        .lines()
        .collect::<Vec<_>>(),
        ["active", "active"]
    );
    for n in &old {
        let routes = c.ssh_ok(n, "ip -4 route show");
        assert!(
            routes.contains(&format!("{w3_cidr} via {w3_ip}")),
            "{n} has no route to worker-3's pods: {routes}"
        );
    }
    if c.kube.is_some() {
        assert_eq!(
            c.ssh_ok("worker-3", "systemctl is-active kubelet kube-proxy")
                .lines()
                .collect::<Vec<_>>(),
            ["active", "active"]
        );
        let out = c.kubectl(&[
            "get",
            "node",
            "worker-3",
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]);
        assert_eq!(
            String::from_utf8_lossy(&out.stdout),
            "True",
            "{}",
            text(&out)
        );
    }
    // A second `up` with the same profile keeps worker-3 (the recorded size wins).
    let (out, report) = c.json_verb(&["up"], &["--only", "provision"]);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        phase(&report, "provision")["detail"]
            .as_str()
            .unwrap()
            .contains("0 booted, 4 kept"),
        "{report:#}"
    );
    eprintln!(
        "node add (1 worker): {:.1} s; full up of local-3: {:.1} s",
        add_time.as_secs_f64(),
        full_up.as_secs_f64()
    );

    // 4. node remove: drained (with the binaries), deprovisioned, its routes gone everywhere.
    let t = Instant::now();
    let (out, report) = c.json_verb(&["node", "remove"], &["worker-3"]);
    assert!(out.status.success(), "node remove: {}", text(&out));
    eprintln!("node remove (1 worker): {:.1} s", t.elapsed().as_secs_f64());
    assert_eq!(report["removed"], serde_json::json!(["worker-3"]));
    assert!(
        phase(&report, "provision")["detail"]
            .as_str()
            .unwrap()
            .contains("1 removed"),
        "{report:#}"
    );
    let state = c.state();
    assert_eq!(state["worker_counts"]["worker"], 2, "{state:#}");
    assert!(state["pod_cidrs"].get("worker-3").is_none(), "{state:#}");
    let inv_nodes: BTreeSet<String> = state["inventory"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(inv_nodes, old);
    for n in &old {
        let routes = c.ssh_ok(n, "ip -4 route show");
        assert!(
            !routes.contains(&w3_cidr),
            "{n} still routes worker-3's pods: {routes}"
        );
    }
    let sshd: std::net::SocketAddr = format!("{w3_ip}:22").parse().unwrap();
    assert!(
        std::net::TcpStream::connect_timeout(&sshd, Duration::from_secs(2)).is_err(),
        "worker-3 still answers at {w3_ip}"
    );
    if c.kube.is_some() {
        assert_eq!(report["drained"], serde_json::json!(["worker-3"]));
        let out = c.kubectl(&["get", "node", "worker-3"]);
        assert!(
            !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("NotFound"),
            "{}",
            text(&out)
        );
    }
}
