//! The `runtime` phase (containerd, runc, CNI plugins and the pause archive: the bulk of a
//! worker's bytes) on N local nodes, once per `artifacts.delivery` mode, from a cold node store:
//! push (the operator uploads everything over SSH), fetch (every node downloads from an HTTP
//! server on the host's bridge address and verifies), seed (1 seed node downloads, the others
//! fetch from it). Wall time of `up --only runtime --force`, and the phase's own byte accounting.
//!
//! The nodes are systemd-nspawn containers on this one machine: the "network" is a bridge in
//! one kernel and every node's hashing, unpacking and containerd start share its cores, so this
//! compares the modes' costs on one host, not 1000 machines (see BENCHMARKS.md for the model).
//!
//!   K8SFORGE_BENCH_NODES=10 cargo bench --profile dev --bench delivery_up   # as root

#[path = "../tests/support/mod.rs"]
mod support;

use std::time::Instant;

use k8sforge_testkit::http::FileServer;
use k8sforge_testkit::mirror;
use support::local_cluster::{phase, LocalCluster};

const WIPE: &str = "systemctl stop containerd k8sforge-images 2>/dev/null; \
    rm -rf /var/lib/k8sforge/artifacts /var/lib/k8sforge/images /opt/cni/bin \
    /usr/local/sbin/runc /usr/local/bin/containerd /usr/local/bin/containerd-shim-runc-v2 /usr/local/bin/ctr; true";

fn main() {
    let n: usize = std::env::var("K8SFORGE_BENCH_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10);
    let m = mirror::build(&mirror::default_cache_dir()).expect("test mirror");
    let c = LocalCluster::reserved("bench-deliv", "local-3")
        .with_set(format!("workers[0].count={}", n - 1))
        .with_set("training.enabled=false");
    let _ = c.cmd(&["teardown"]).output();
    let t = Instant::now();
    c.up_only("provision");
    println!(
        "{n} local nodes booted in {:.1} s",
        t.elapsed().as_secs_f64()
    );
    c.up_only("pki");
    let bridge = c.cidr.trim_end_matches("0/24").to_string() + "1";
    let http = FileServer::start(format!("{bridge}:0").parse().unwrap(), &m.root).unwrap();
    let mut nodes = vec!["controlplane-1".to_string()];
    nodes.extend((1..n).map(|i| format!("worker-{i}")));
    println!(
        "| delivery | wall s | sent over SSH, all nodes | per node (median) | fetched by nodes |"
    );
    println!("|---|---|---|---|---|");
    for mode in ["push", "fetch", "seed"] {
        for node in &nodes {
            c.ssh_ok(node, WIPE);
        }
        let mut extra = vec![
            "--only".to_string(),
            "runtime".into(),
            "--force".into(),
            "--set".into(),
            format!("artifacts.mirror={}", http.url()),
            "--set".into(),
            format!("artifacts.delivery={mode}"),
        ];
        if mode == "seed" {
            extra.extend(["--set".to_string(), "artifacts.seeds=1".to_string()]);
        }
        let args: Vec<&str> = extra.iter().map(String::as_str).collect();
        let t = Instant::now();
        let (out, report) = c.up(&args);
        let wall = t.elapsed().as_secs_f64();
        assert!(
            out.status.success(),
            "{mode}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let p = phase(&report, "runtime");
        let mut sent: Vec<u64> = p["bytes_sent"]
            .as_object()
            .map(|o| o.values().filter_map(|v| v.as_u64()).collect())
            .unwrap_or_default();
        sent.sort();
        let total: u64 = sent.iter().sum();
        let median = sent.get(sent.len() / 2).copied().unwrap_or(0);
        let mib = |b: u64| b as f64 / 1048576.0;
        println!(
            "| {mode} | {wall:.1} | {:.1} MiB | {:.2} MiB | {:.1} MiB |",
            mib(total),
            mib(median),
            mib(p["bytes_fetched"].as_u64().unwrap_or(0))
        );
    }
}
