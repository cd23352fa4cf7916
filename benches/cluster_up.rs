//! `k8sforge up --profile local-3` from nothing to a working cluster (every node Ready, add-ons
//! rolled out), per phase, then `up` with nothing to do. Needs root and the Kubernetes binaries
//! in K8SFORGE_TEST_KUBE_BIN (see DEVELOPERS.md); without them it prints why and exits 0.
//! Run: `K8SFORGE_TEST_KUBE_BIN=DIR cargo bench --bench cluster_up`
//! (K8SFORGE_BENCH_RUNS=N for N fresh runs; default 3). The node image and the artifact cache are
//! warmed by a first run that is not counted (a user's second cluster starts the same way).

use std::path::Path;
use std::process::Command;
use std::time::Instant;

use k8sforge_testkit::{kube, mirror};

const BIN: &str = env!("CARGO_BIN_EXE_k8sforge");
const NAME: &str = "bench-up";
const CIDR: &str = "198.19.243.0/24";

fn k8sforge(home: &Path, version: &str, mirror: &Path, args: &[&str]) -> (f64, serde_json::Value) {
    let mut c = Command::new(BIN);
    c.env("K8SFORGE_HOME", home).arg(args[0]).args([
        "--profile",
        "local-3",
        "--set",
        &format!("name={NAME}"),
        "--set",
        &format!("network.nodeCIDR={CIDR}"),
        "--set",
        &format!("kubernetes.version={version}"),
        // The training stack has its own figure (BENCHMARKS.md, issue 14).
        "--set",
        "training.enabled=false",
    ]);
    if args[0] == "up" {
        c.arg("--mirror")
            .arg(mirror)
            .args(["--trust-mirror-checksums", "-o", "json"]);
    }
    c.args(&args[1..]);
    let t = Instant::now();
    let out = c.output().expect("run k8sforge");
    let secs = t.elapsed().as_secs_f64();
    let v = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    if args[0] == "up" {
        // Exit 3 means only that a phase is not built yet (the training stack, a later issue).
        assert!(
            out.status.success() || out.status.code() == Some(3),
            "up failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    (secs, v)
}

fn phases(v: &serde_json::Value) -> Vec<(String, f64)> {
    v["phases"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|p| p["outcome"] != "not-implemented")
        .map(|p| {
            (
                p["phase"].as_str().unwrap_or("?").to_string(),
                p["elapsed"].as_f64().unwrap_or(0.0),
            )
        })
        .collect()
}

fn main() {
    let kube = match kube::from_env() {
        Ok(Some(k)) => k,
        Ok(None) => {
            eprintln!(
                "cluster_up: set {} to the Kubernetes binaries (DEVELOPERS.md); nothing measured",
                kube::KUBE_BIN_ENV
            );
            return;
        }
        Err(e) => panic!("{e}"),
    };
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "run as root: boots local nodes"
    );
    let cache = mirror::default_cache_dir();
    let base = mirror::build(&cache).expect("test mirror");
    let m = kube::cluster_mirror(&base, &kube, &cache).expect("cluster mirror");
    let runs: usize = std::env::var("K8SFORGE_BENCH_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3);
    let home = tempfile::tempdir().expect("tempdir");
    let run = |label: &str| -> (f64, Vec<(String, f64)>, f64, serde_json::Value) {
        let _ = std::fs::remove_dir_all(home.path().join(NAME));
        let (total, report) = k8sforge(home.path(), &kube.version, &m.root, &["up"]);
        let (noop, again) = k8sforge(home.path(), &kube.version, &m.root, &["up"]);
        let (td, _) = k8sforge(home.path(), &kube.version, &m.root, &["teardown"]);
        eprintln!("{label}: up {total:.1} s, up again {noop:.1} s, teardown {td:.1} s");
        (total, phases(&report), noop, again)
    };
    let _ = k8sforge(home.path(), &kube.version, &m.root, &["teardown"]);
    run("warm-up (not counted)");
    let mut results = Vec::new();
    for i in 0..runs {
        results.push(run(&format!("run {}", i + 1)));
    }
    println!(
        "\nup --profile local-3 (Kubernetes {}), {runs} fresh runs, seconds:",
        kube.version
    );
    let names: Vec<String> = results[0].1.iter().map(|(n, _)| n.clone()).collect();
    println!(
        "| phase | {} | median |",
        (1..=runs)
            .map(|i| format!("run {i}"))
            .collect::<Vec<_>>()
            .join(" | ")
    );
    println!("|---|{}---|", "---|".repeat(runs));
    let median = |mut v: Vec<f64>| {
        v.sort_by(|a, b| a.total_cmp(b));
        v[v.len() / 2]
    };
    for n in &names {
        let vals: Vec<f64> = results
            .iter()
            .map(|r| r.1.iter().find(|(m, _)| m == n).map(|p| p.1).unwrap_or(0.0))
            .collect();
        println!(
            "| {n} | {} | {:.1} |",
            vals.iter()
                .map(|v| format!("{v:.1}"))
                .collect::<Vec<_>>()
                .join(" | "),
            median(vals.clone())
        );
    }
    let totals: Vec<f64> = results.iter().map(|r| r.0).collect();
    println!(
        "| **total (wall)** | {} | **{:.1}** |",
        totals
            .iter()
            .map(|v| format!("{v:.1}"))
            .collect::<Vec<_>>()
            .join(" | "),
        median(totals.clone())
    );
    let noops: Vec<f64> = results.iter().map(|r| r.2).collect();
    println!(
        "| up with nothing to do | {} | {:.1} |",
        noops
            .iter()
            .map(|v| format!("{v:.1}"))
            .collect::<Vec<_>>()
            .join(" | "),
        median(noops.clone())
    );
    println!(
        "\nsecond up, per phase (last run): {:?}",
        phases(&results[runs - 1].3)
    );
}
