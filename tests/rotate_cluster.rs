//! `certs rotate` of every leaf certificate on a working cluster (local-3 and local-ha), with a
//! client loop of API requests and an etcd loop (put and get through every member) running the
//! whole time: on local-ha (three apiservers behind the local API proxy, three etcd members) no
//! request of either fails; on local-3 (one apiserver, one etcd member) only requests during
//! their restarts may fail, at most `LOCAL_3_MAX_FAILED` and `LOCAL_3_MAX_ETCD_FAILED`.
//! Afterwards every deployed leaf
//! certificate has a new serial, the CAs are unchanged, `certs check` (which reads the nodes over
//! SSH) is clean and every node is Ready.
//!
//! Needs the Kubernetes binaries in K8SFORGE_TEST_KUBE_BIN (see DEVELOPERS.md); skips with one
//! line without them. Own cluster names and `reserve_subnet` subnets.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use k8sforge_testkit::kube::{self, KubeBinaries, KUBE_BIN_ENV};
use k8sforge_testkit::mirror;
use support::kubectl::{ApiLoop, Kubectl};

const BIN: &str = env!("CARGO_BIN_EXE_k8sforge");

/// Requests the single-apiserver profile may lose while its only apiserver restarts (the loop
/// sends about five a second; a restart takes a few seconds).
const LOCAL_3_MAX_FAILED: usize = 100;
/// etcd requests local-3 may lose while its only etcd member restarts (the loop sends about
/// ten a second; the member is back in a few seconds).
const LOCAL_3_MAX_ETCD_FAILED: usize = 100;

struct Cluster {
    name: String,
    cidr: String,
    profile: &'static str,
    home: tempfile::TempDir,
    mirror: PathBuf,
    /// The Debian-built test mirror (its etcd release holds etcdctl).
    base_mirror: PathBuf,
    kube: KubeBinaries,
    _subnet: std::fs::File,
}

impl Cluster {
    fn flags(&self) -> Vec<String> {
        vec![
            "--profile".into(),
            self.profile.into(),
            "--set".into(),
            format!("name={}", self.name),
            "--set".into(),
            format!("network.nodeCIDR={}", self.cidr),
            "--set".into(),
            format!("kubernetes.version={}", self.kube.version),
            // The training stack's upstream trees are not in the test mirror, and rotation
            // does not touch it.
            "--set".into(),
            "training.enabled=false".into(),
        ]
    }

    fn run(&self, verb: &[&str], args: &[&str]) -> Output {
        Command::new(BIN)
            .env("K8SFORGE_HOME", self.home.path())
            .args(verb)
            .args(self.flags())
            .args(args)
            .output()
            .unwrap()
    }

    fn dir(&self) -> PathBuf {
        self.home.path().join(&self.name)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.run(&["teardown"], &[]);
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

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

fn start(test: &str, profile: &'static str) -> Option<Cluster> {
    let kube = match kube::from_env() {
        Ok(Some(k)) => k,
        Ok(None) => {
            eprintln!(
                "skipped {test}: set {KUBE_BIN_ENV} to the Kubernetes binaries (see DEVELOPERS.md)"
            );
            return None;
        }
        Err(e) => panic!("{e}"),
    };
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test boots systemd-nspawn nodes: run as root"
    );
    let cache = mirror::default_cache_dir();
    let base = mirror::build(&cache).expect("test mirror");
    let m = kube::cluster_mirror(&base, &kube, &cache).expect("cluster mirror");
    let (x, lock) = support::subnet::reserve_subnet();
    let c = Cluster {
        name: format!("rotk-{x}"),
        cidr: format!("198.19.{x}.0/24"),
        profile,
        home: tempfile::tempdir().unwrap(),
        mirror: m.root.clone(),
        base_mirror: base.root.clone(),
        kube,
        _subnet: lock,
    };
    let _ = c.run(&["teardown"], &[]);
    Some(c)
}

/// `(node, path) → serial` of every certificate deployed on the nodes, from `certs check`.
fn deployed(c: &Cluster) -> BTreeMap<(String, String), String> {
    let out = c.run(&["certs", "check"], &["-o", "json"]);
    assert!(out.status.success(), "certs check: {}", text(&out));
    let v = json(&out);
    let mut m = BTreeMap::new();
    for n in v["nodes"].as_array().unwrap() {
        for cert in n["certificates"].as_array().unwrap() {
            m.insert(
                (
                    n["node"].as_str().unwrap().into(),
                    cert["path"].as_str().unwrap().into(),
                ),
                cert["serial"].as_str().unwrap().to_string(),
            );
        }
    }
    m
}

/// Paths of CA certificates on nodes (not rotated by a leaf rotation).
fn is_ca_path(p: &str) -> bool {
    p.ends_with("/ca.crt")
        || p.ends_with("front-proxy-ca.crt")
        || p.ends_with("etcd-ca.crt")
        // The controller-manager's CSR signer: the cluster CA's certificate and key.
        || p.ends_with("/ca-signer.crt")
}

fn rotate_all_leaves(c: &Cluster, max_failed: usize, max_etcd_failed: usize) {
    let mirror = c.mirror.display().to_string();
    let out = c.run(
        &["up"],
        &[
            "--mirror",
            &mirror,
            "--trust-mirror-checksums",
            "-o",
            "json",
        ],
    );
    assert_eq!(out.status.code(), Some(0), "up: {}", text(&out));
    let before = deployed(c);

    let tools = tempfile::tempdir().unwrap();
    let admin = tools.path().join("admin.kubeconfig");
    std::fs::copy(c.dir().join("kubeconfigs/admin.kubeconfig"), &admin).unwrap();
    // The monitoring stack's scrape certificates Secret, as the addons phase applies it (same
    // function). The stack's workloads cannot run here (no images of them), so `up` ran
    // without monitoring and the rotation runs with it enabled: that makes it own the Secret.
    let km = Kubectl::new(c.kube.kubectl(), &admin);
    km.ok(&["create", "namespace", "monitoring"]);
    km.apply(
        &k8sforge::monitoring::tls_secret(&c.dir().join("pki"))
            .unwrap()
            .yaml,
    );
    // The admin credentials the test started with (a copy: still valid after the rotation).
    let mut k = Kubectl::new(c.kube.kubectl(), &admin);
    k.timeout = "10s";
    let lp = ApiLoop::start(k, "/api/v1/namespaces/default");
    // And the etcd loop, through every member, with the health-check client certificate of
    // before (rotated too; the old one stays valid: same CA).
    let etcdctl = support::etcd_loop::etcdctl(&c.base_mirror, tools.path());
    for (from, to) in [
        ("etcd/ca.crt", "ca.crt"),
        ("etcd/healthcheck-client.crt", "client.crt"),
        ("etcd/healthcheck-client.key", "client.key"),
    ] {
        std::fs::copy(c.dir().join("pki").join(from), tools.path().join(to)).unwrap();
    }
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.dir().join("state.json")).unwrap()).unwrap();
    let inv: k8sforge::inventory::Inventory =
        serde_json::from_value(state["inventory"].clone()).unwrap();
    let endpoints: Vec<String> = inv
        .with_role(k8sforge::inventory::Role::Etcd)
        .map(|n| format!("https://{}:2379", n.internal_ip))
        .collect();
    let el = support::etcd_loop::EtcdLoop::start(
        etcdctl,
        endpoints.join(","),
        tools.path().to_path_buf(),
    );
    std::thread::sleep(Duration::from_secs(3));
    let t = Instant::now();
    let out = c.run(
        &["certs", "rotate"],
        &["--set", "monitoring.enabled=true", "-o", "json"],
    );
    let took = t.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let (ok, failed) = lp.finish();
    let (etcd_ok, etcd_failed, etcd_retried) = el.finish();
    assert!(out.status.success(), "certs rotate: {}", text(&out));
    let report = json(&out);
    eprintln!(
        "{}: certs rotate of {} certificates: {:.1} s, {} stages, {ok} API requests ok, {} failed: {:?}; {etcd_ok} etcd requests ok, {} failed: {:?}, {} write(s) sent again after a leader election",
        c.profile,
        report["certificates"].as_array().unwrap().len(),
        took.as_secs_f64(),
        report["stages"].as_array().unwrap().len(),
        failed.len(),
        failed.iter().take(5).collect::<Vec<_>>(),
        etcd_failed.len(),
        etcd_failed.iter().take(5).collect::<Vec<_>>(),
        etcd_retried.len()
    );
    assert_eq!(report["ok"], true, "{report:#}");
    // The Secret now holds the renewed Prometheus client certificates (same CA).
    assert_eq!(report["scrapeSecret"], "updated", "{report:#}");
    let want: serde_json::Value = serde_json::from_str(
        &k8sforge::monitoring::tls_secret(&c.dir().join("pki"))
            .unwrap()
            .yaml,
    )
    .unwrap();
    let got = km.json(&["get", "secret", "-n", "monitoring", "k8sforge-scrape-tls"]);
    assert_eq!(got["data"], want["data"], "scrape Secret not renewed");
    assert!(ok > 20, "the API loop ran only {ok} requests");
    assert!(
        failed.len() <= max_failed,
        "{} failed API requests (at most {max_failed}): {failed:?}",
        failed.len()
    );
    assert!(etcd_ok > 20, "the etcd loop ran only {etcd_ok} requests");
    assert!(
        etcd_failed.len() <= max_etcd_failed,
        "{} failed etcd requests (at most {max_etcd_failed}): {etcd_failed:#?}",
        etcd_failed.len()
    );

    // Every deployed leaf has a new serial; CAs unchanged; certs check clean (deployed()).
    let after = deployed(c);
    assert_eq!(
        after.keys().collect::<Vec<_>>(),
        before.keys().collect::<Vec<_>>()
    );
    for (k, old) in &before {
        if is_ca_path(&k.1) {
            assert_eq!(&after[k], old, "{k:?}: a CA changed");
        } else {
            assert_ne!(&after[k], old, "{k:?}: not rotated");
        }
    }
    // The cluster still works: every node Ready, through the new admin credentials.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = Command::new(c.kube.kubectl())
            .arg("--kubeconfig")
            .arg(c.dir().join("kubeconfigs/admin.kubeconfig"))
            .args(["get", "nodes", "-o", "json"])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
        let ready = v["items"].as_array().is_some_and(|items| {
            !items.is_empty()
                && items.iter().all(|n| {
                    n["status"]["conditions"].as_array().is_some_and(|cs| {
                        cs.iter()
                            .any(|c| c["type"] == "Ready" && c["status"] == "True")
                    })
                })
        });
        if ready {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "nodes not Ready after the rotation: {}",
            text(&out)
        );
        std::thread::sleep(Duration::from_secs(2));
    }
}

#[test]
fn local_3_rotates_every_leaf_with_at_most_the_apiserver_restart_lost() {
    let Some(c) = start("local_3_rotates_every_leaf", "local-3") else {
        return;
    };
    rotate_all_leaves(&c, LOCAL_3_MAX_FAILED, LOCAL_3_MAX_ETCD_FAILED);
}

#[test]
fn local_ha_rotates_every_leaf_with_zero_failed_requests() {
    let Some(c) = start("local_ha_rotates_every_leaf", "local-ha") else {
        return;
    };
    rotate_all_leaves(&c, 0, 0);
}
