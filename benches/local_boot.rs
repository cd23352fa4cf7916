//! Boot and teardown of N local nodes (N = 3, 10, 50; override with K8SFORGE_BENCH_NODES=3,10).
//! Run as root: `cargo bench --bench local_boot`. Prints, per N: wall time of
//! `k8sforge up --only provision` until every sshd answers, memory per node (node memory cgroups
//! after a 10 s settle, and the MemAvailable drop), and teardown time. The node image must be
//! built (the first run builds it; that time is reported separately).

use std::fs;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_k8sforge");

fn mem_available_kib() -> u64 {
    fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemAvailable:"))
        .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        .unwrap_or(0)
}

fn k8sforge(home: &Path, args: &[String]) -> Duration {
    let t = Instant::now();
    let out = Command::new(BIN)
        .args(args)
        .env("K8SFORGE_HOME", home)
        .output()
        .expect("run k8sforge");
    assert!(
        out.status.success(),
        "k8sforge {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    t.elapsed()
}

/// Sum of the nodes' memory cgroup usage (bytes), from each node's recorded cgroup leaves.
fn node_memory(cluster: &str) -> (u64, usize) {
    let nodes = Path::new("/var/lib/k8sforge/clusters")
        .join(cluster)
        .join("nodes");
    let mut total = 0;
    let mut count = 0;
    for e in fs::read_dir(nodes).into_iter().flatten().flatten() {
        let leaves: Vec<_> = fs::read_to_string(e.path().join("cgroups"))
            .unwrap_or_default()
            .lines()
            .map(std::path::PathBuf::from)
            .collect();
        if let Some(b) = k8sforge::provider::local::cgroups::memory_usage(&leaves) {
            total += b;
            count += 1;
        }
    }
    (total, count)
}

fn main() {
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the local_boot bench must run as root"
    );
    let sizes: Vec<u32> = std::env::var("K8SFORGE_BENCH_NODES")
        .unwrap_or_else(|_| "3,10,50".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    let home = tempfile::tempdir().expect("tempdir");
    println!("| nodes | boot until every sshd answers | memory per node (cgroup) | MemAvailable drop per node | teardown |");
    println!("|---|---|---|---|---|");
    for (i, n) in sizes.into_iter().enumerate() {
        let cluster = format!("bench-{n}");
        let args = |verb: &[&str]| -> Vec<String> {
            let mut a: Vec<String> = verb.iter().map(|s| s.to_string()).collect();
            a.extend(
                [
                    "--profile",
                    "local-3",
                    "--set",
                    &format!("name={cluster}"),
                    "--set",
                    &format!("workers[0].count={}", n - 1),
                    "--set",
                    "network.nodeCIDR=198.19.230.0/24",
                ]
                .iter()
                .map(|s| s.to_string()),
            );
            a
        };
        if i == 0 {
            // Warm the image cache (and page cache) outside the measurement.
            let image = k8sforge(home.path(), &args(&["up", "--only", "provision"]));
            k8sforge(home.path(), &args(&["teardown"]));
            eprintln!(
                "(warm-up provision incl. any image build: {:.1}s)",
                image.as_secs_f64()
            );
        }
        std::thread::sleep(Duration::from_secs(3));
        let avail_before = mem_available_kib();
        let boot = k8sforge(home.path(), &args(&["up", "--only", "provision"]));
        std::thread::sleep(Duration::from_secs(10));
        let (bytes, counted) = node_memory(&cluster);
        let avail_after = mem_available_kib();
        let down = k8sforge(home.path(), &args(&["teardown"]));
        let per_node_cg = bytes as f64 / counted.max(1) as f64 / (1024.0 * 1024.0);
        let drop = avail_before.saturating_sub(avail_after) as f64 / 1024.0 / f64::from(n);
        println!(
            "| {n} | {:.1} s | {per_node_cg:.1} MiB ({counted} cgroups) | {drop:.1} MiB | {:.1} s |",
            boot.as_secs_f64(),
            down.as_secs_f64()
        );
    }
}
