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
//! K8SFORGE_BENCH_PROGRESS (set: draw the executor's progress bars),
//! K8SFORGE_BENCH_VIA_BASTION (set: every node through ONE connection to a second local sshd
//! acting as the bastion; with K8SFORGE_BENCH_CLUSTER_DIR, `user@host:port` of the bastion),
//! K8SFORGE_BENCH_CONFIGS_ONLY (set: no binaries, only configs and certificate-sized files — what
//! the operator's machine sends at scale, where nodes fetch binaries themselves).
//!
//! Against real nodes instead (e.g. the local provider's nspawn nodes), with the files at their
//! real paths: K8SFORGE_BENCH_CLUSTER_DIR=<$K8SFORGE_HOME/<cluster>> (its state.json inventory,
//! cluster key and pinned known_hosts are used; every node gets the worker bundle):
//!
//!   k8sforge up --profile local-3 --set workers[0].count=49 --only provision
//!   K8SFORGE_BENCH_CLUSTER_DIR=~/.k8sforge/local-3 cargo bench --bench remote_push

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
    let real_cluster = std::env::var_os("K8SFORGE_BENCH_CLUSTER_DIR").map(std::path::PathBuf::from);
    let fx = sshd::Fixture::new();
    let server = real_cluster.is_none().then(|| fx.sshd());
    let via = std::env::var("K8SFORGE_BENCH_VIA_BASTION").ok();
    let bastion_key = fx.dir.path().join("host_bastion");
    let bastion_sshd = match (&via, &real_cluster) {
        (Some(_), None) => {
            sshd::keygen(&bastion_key);
            Some(sshd::Sshd::start(
                fx.dir.path(),
                sshd::free_port(),
                &bastion_key,
                &fx.client_pub(),
            ))
        }
        _ => None,
    };
    let bastion: Option<String> = match (&via, &bastion_sshd) {
        (_, Some(b)) => Some(format!("root@127.0.0.1:{}", b.port)),
        (Some(spec), None) => Some(spec.clone()),
        (None, _) => None,
    };

    let mirror = k8sforge_testkit::mirror::build(&k8sforge_testkit::mirror::default_cache_dir())
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
    let configs_only = std::env::var_os("K8SFORGE_BENCH_CONFIGS_ONLY").is_some();
    let installed: Vec<_> = if configs_only {
        Vec::new()
    } else {
        prepared.into_iter().flat_map(|(_, f)| f).collect()
    };
    let bytes_per_node: u64 = installed
        .iter()
        .map(|f| std::fs::metadata(&f.local).map(|m| m.len()).unwrap_or(0))
        .sum();

    let root = fx.dir.path().join("nodes");
    let mut nodes = Vec::new();
    let mut plans = BTreeMap::new();
    let real_nodes: Vec<Node> = match &real_cluster {
        Some(dir) => {
            k8sforge::state::load_state_at(&dir.join("state.json"))
                .unwrap_or_else(|e| panic!("{e}"))
                .inventory
                .unwrap_or_else(|| panic!("{} has no inventory", dir.display()))
                .nodes
        }
        None => Vec::new(),
    };
    let nodes_n = if real_cluster.is_some() {
        real_nodes.len()
    } else {
        nodes_n
    };
    for i in 1..=nodes_n {
        let name = match real_nodes.get(i - 1) {
            Some(n) => n.name.clone(),
            None => format!("w-{i:04}"),
        };
        let prefix = if real_cluster.is_some() {
            String::new()
        } else {
            format!("{}/{name}", root.display())
        };
        let mut files: Vec<SyncFile> = installed
            .iter()
            .map(|f| {
                let mut s = SyncFile::from_installed(f, &[]);
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
        ]
        .into_iter()
        .chain(
            // Certificate-sized files (a kubelet's cert, key, CA, kubeconfigs): ~1.5 KB each.
            (0..6)
                .filter(|_| configs_only)
                .map(|c| (["/var/lib/kubelet/kubelet.crt", "/var/lib/kubelet/kubelet.key", "/var/lib/kubernetes/ca.crt", "/var/lib/kubelet/kubeconfig", "/var/lib/kube-proxy/kubeconfig", "/etc/kubernetes/kubelet-config.yaml"][c], format!("{}\n", format!("{i:04}-{c}-").repeat(150)))),
        ) {
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
        if let Some(n) = real_nodes.get(i - 1) {
            let mut n = n.clone();
            n.ssh.bastion = bastion.clone().or(n.ssh.bastion);
            nodes.push(n);
            continue;
        }
        nodes.push(Node {
            name,
            roles: BTreeSet::from([Role::Worker]),
            internal_ip: Ipv4Addr::LOCALHOST,
            external_ip: None,
            pod_cidr: "10.200.0.0/24".parse().unwrap(),
            ssh: SshEndpoint {
                host: IpAddr::V4(Ipv4Addr::LOCALHOST),
                port: server.as_ref().map_or(22, |s| s.port),
                user: "root".into(),
                key: None,
                bastion: bastion.clone(),
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
        real_cluster.as_deref().unwrap_or(&fx.cluster_dir),
        ExecutorOptions {
            concurrency,
            progress: std::env::var_os("K8SFORGE_BENCH_PROGRESS").is_some(),
            command_timeout: Duration::from_secs(600),
            digest_cache_dir: match &real_cluster {
                Some(_) => ExecutorOptions::default().digest_cache_dir,
                None => fx.dir.path().join("digests").display().to_string(),
            },
            ..ExecutorOptions::default()
        },
    )
    .unwrap();

    let files_per_node = plans.values().next().map_or(0, |p| p.files.len());
    let target = match &real_cluster {
        Some(d) => format!("nodes of {}", d.display()),
        None => "logical nodes on one local sshd".to_string(),
    };
    let target = match &bastion {
        Some(b) => format!("{target}, through bastion {b}"),
        None => format!("{target}, direct"),
    };
    println!(
        "remote_push: {nodes_n} {target}, concurrency {concurrency}, \
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
