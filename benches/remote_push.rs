//! Push a worker bundle (containerd, runc, CNI plugins from the test mirror, plus configs) to N
//! logical nodes and re-run it unchanged, through the real executor over real SSH.
//!
//! Without the local provider, the "nodes" are N names on ONE sshd on 127.0.0.1, each with its
//! own root directory: this measures the executor (sessions, state listing, SFTP streaming,
//! verify+rename, fan-out), not N machines. Run as root with openssh-server installed:
//!
//!   K8SFORGE_BENCH_NODES=20 cargo bench --bench remote_push
//!
//! Env: K8SFORGE_BENCH_NODES (default 20), K8SFORGE_BENCH_CONCURRENCY (default 64),
//! K8SFORGE_BENCH_PROGRESS (set: draw the executor's progress bars).

#[path = "../tests/support/sshd.rs"]
mod sshd;

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, Ipv4Addr};
use std::time::{Duration, Instant};

use k8sforge::artifacts::{self, ArtifactSource, Component, Mirror};
use k8sforge::inventory::{ApiEndpoint, Inventory, Node, Role, SshEndpoint};
use k8sforge::remote::{Executor, ExecutorOptions, NodePlan, SyncFile};
use k8sforge::render::bundle::BundleFile;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn main() {
    // `cargo bench` passes `--bench`; nothing else to parse.
    let nodes_n = env_usize("K8SFORGE_BENCH_NODES", 20);
    let concurrency = env_usize("K8SFORGE_BENCH_CONCURRENCY", 64);
    let fx = sshd::Fixture::new();
    let server = fx.sshd();

    let mirror = k8sforge::testkit::mirror::build(&k8sforge::testkit::mirror::default_cache_dir())
        .unwrap_or_else(|e| panic!("test mirror: {e}"));
    let src = ArtifactSource {
        mirror: Mirror::Dir(mirror.root.clone()),
        trust_mirror_checksums: true,
    };
    let release = artifacts::release(artifacts::DEFAULT_KUBERNETES_VERSION).unwrap();
    let prepared = artifacts::prepare(
        fx.dir.path(),
        release,
        &src,
        &[
            Component::Containerd,
            Component::Runc,
            Component::CniPlugins,
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let installed: Vec<_> = prepared.into_iter().flat_map(|(_, f)| f).collect();
    let bytes_per_node: u64 = installed
        .iter()
        .map(|f| std::fs::metadata(&f.local).map(|m| m.len()).unwrap_or(0))
        .sum();

    let root = fx.dir.path().join("nodes");
    let mut nodes = Vec::new();
    let mut plans = BTreeMap::new();
    for i in 1..=nodes_n {
        let name = format!("w-{i:04}");
        let prefix = format!("{}/{name}", root.display());
        let mut files: Vec<SyncFile> = installed
            .iter()
            .map(|f| {
                let mut s = f.sync_file(&[]);
                s.path = format!("{prefix}{}", f.path);
                s
            })
            .collect();
        for (path, body) in [
            ("/etc/containerd/config.toml", "version = 2\n".to_string()),
            (
                "/etc/cni/net.d/10-bridge.conf",
                format!("{{\"cniVersion\":\"1.0.0\",\"name\":\"bridge\",\"subnet\":\"10.200.{i}.0/24\"}}\n"),
            ),
            ("/etc/cni/net.d/99-loopback.conf", "{\"type\":\"loopback\"}\n".into()),
        ] {
            files.push(SyncFile::from_bundle(&BundleFile {
                path: format!("{prefix}{path}"),
                mode: 0o644,
                owner: "root:root".into(),
                content: body.into_bytes(),
                restarts: vec![],
            }));
        }
        plans.insert(
            name.clone(),
            NodePlan {
                files,
                ..NodePlan::default()
            },
        );
        nodes.push(Node {
            name,
            roles: BTreeSet::from([Role::Worker]),
            internal_ip: Ipv4Addr::LOCALHOST,
            external_ip: None,
            pod_cidr: "10.200.0.0/24".parse().unwrap(),
            ssh: SshEndpoint {
                host: IpAddr::V4(Ipv4Addr::LOCALHOST),
                port: server.port,
                user: "root".into(),
                key: None,
                bastion: None,
            },
            group: "bench".into(),
            gpus: 0,
            labels: BTreeMap::new(),
            taints: vec![],
        });
    }
    let inv = Inventory {
        cluster: "bench".into(),
        nodes,
        api: ApiEndpoint {
            host: "127.0.0.1".into(),
            port: 6443,
            addresses: vec![],
        },
        planned: false,
    };
    let ex = Executor::new(
        &fx.cluster_dir,
        ExecutorOptions {
            concurrency,
            progress: std::env::var_os("K8SFORGE_BENCH_PROGRESS").is_some(),
            command_timeout: Duration::from_secs(600),
            digest_cache_dir: fx.dir.path().join("digests").display().to_string(),
            ..ExecutorOptions::default()
        },
    )
    .unwrap();

    let files_per_node = plans.values().next().map_or(0, |p| p.files.len());
    println!(
        "remote_push: {nodes_n} logical nodes on one local sshd, concurrency {concurrency}, \
         {files_per_node} files and {:.1} MiB of binaries per node",
        bytes_per_node as f64 / (1 << 20) as f64
    );
    let t = Instant::now();
    let rep = ex.apply_plans(&inv, &plans, "workers");
    let first = t.elapsed();
    assert!(rep.ok(), "{}", rep.summary_line());
    println!(
        "first push : {:>8.2} s  ({} files changed, {:.1} MiB/s total)",
        first.as_secs_f64(),
        rep.files_changed,
        (bytes_per_node * nodes_n as u64) as f64 / (1 << 20) as f64 / first.as_secs_f64()
    );
    // Re-run 1 hashes every file on the nodes (fresh uploads are not in the nodes' digest
    // caches yet); later re-runs only stat them.
    let mut reruns = Vec::new();
    for _ in 0..4 {
        let t = Instant::now();
        let rep = ex.apply_plans(&inv, &plans, "workers");
        reruns.push(t.elapsed().as_secs_f64());
        assert!(rep.ok(), "{}", rep.summary_line());
        assert_eq!(rep.files_changed, 0);
    }
    println!(
        "re-run 1   : {:>8.2} s  (0 files changed; nodes hash every file)",
        reruns[0]
    );
    let mut warm = reruns[1..].to_vec();
    warm.sort_by(f64::total_cmp);
    println!(
        "re-run 2-4 : {:>8.2} s  median (0 files changed; digest cache hit; min {:.2}, max {:.2})",
        warm[1], warm[0], warm[2]
    );
}
