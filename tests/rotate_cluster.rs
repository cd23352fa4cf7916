//! `certs rotate` of every leaf certificate on a working cluster (local-3 and local-ha), with a
//! client loop of API requests running the whole time: on local-ha (three apiservers behind the
//! local API proxy) no request fails; on local-3 (one apiserver) only requests during that
//! apiserver's restart may fail, at most `LOCAL_3_MAX_FAILED`. Afterwards every deployed leaf
//! certificate has a new serial, the CAs are unchanged, `certs check` (which reads the nodes over
//! SSH) is clean and every node is Ready.
//!
//! Needs the Kubernetes binaries in K8SFORGE_TEST_KUBE_BIN (see DEVELOPERS.md); skips with one
//! line without them. Own cluster names and `reserve_subnet` subnets.

mod support;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8sforge_testkit::kube::{self, KubeBinaries, KUBE_BIN_ENV};
use k8sforge_testkit::mirror;

const BIN: &str = env!("CARGO_BIN_EXE_k8sforge");

/// Requests the single-apiserver profile may lose while its only apiserver restarts (the loop
/// sends about five a second; a restart takes a few seconds).
const LOCAL_3_MAX_FAILED: usize = 100;

struct Cluster {
    name: String,
    cidr: String,
    profile: &'static str,
    home: tempfile::TempDir,
    mirror: PathBuf,
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
    p.ends_with("/ca.crt") || p.ends_with("front-proxy-ca.crt") || p.ends_with("etcd-ca.crt")
}

/// `kubectl get --raw` in a loop with the admin credentials the test started with (a copy:
/// still valid after the rotation), each request a new connection through the API endpoint.
struct ApiLoop {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<Mutex<Vec<(f64, String)>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl ApiLoop {
    fn start(kubectl: PathBuf, kubeconfig: PathBuf) -> ApiLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
        let t0 = Instant::now();
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let out = Command::new(&kubectl)
                    .arg("--kubeconfig")
                    .arg(&kubeconfig)
                    .args([
                        "--request-timeout=10s",
                        "get",
                        "--raw",
                        "/api/v1/namespaces/default",
                    ])
                    .output()
                    .unwrap();
                if out.status.success() {
                    o.fetch_add(1, Ordering::Relaxed);
                } else {
                    f.lock().unwrap().push((
                        t0.elapsed().as_secs_f64(),
                        String::from_utf8_lossy(&out.stderr).trim().to_string(),
                    ));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        ApiLoop {
            stop,
            ok,
            failed,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> (usize, Vec<(f64, String)>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
        let f = self.failed.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), f)
    }
}

fn rotate_all_leaves(c: &Cluster, max_failed: usize) {
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
    let lp = ApiLoop::start(c.kube.kubectl(), admin.clone());
    std::thread::sleep(Duration::from_secs(3));
    let t = Instant::now();
    let out = c.run(&["certs", "rotate"], &["-o", "json"]);
    let took = t.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let (ok, failed) = lp.finish();
    assert!(out.status.success(), "certs rotate: {}", text(&out));
    let report = json(&out);
    eprintln!(
        "{}: certs rotate of {} certificates: {:.1} s, {} stages, {ok} API requests ok, {} failed: {:?}",
        c.profile,
        report["certificates"].as_array().unwrap().len(),
        took.as_secs_f64(),
        report["stages"].as_array().unwrap().len(),
        failed.len(),
        failed.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(report["ok"], true, "{report:#}");
    assert!(ok > 20, "the API loop ran only {ok} requests");
    assert!(
        failed.len() <= max_failed,
        "{} failed API requests (at most {max_failed}): {failed:?}",
        failed.len()
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
    rotate_all_leaves(&c, LOCAL_3_MAX_FAILED);
}

#[test]
fn local_ha_rotates_every_leaf_with_zero_failed_requests() {
    let Some(c) = start("local_ha_rotates_every_leaf", "local-ha") else {
        return;
    };
    rotate_all_leaves(&c, 0);
}
