//! Prometheus at N local nodes (issue 16's figure): boot N local nodes, run Debian's
//! `prometheus-node-exporter` on every one (pushed and started by k8sforge's own executor), and
//! scrape them all from this host with a real Prometheus (Debian's `prometheus`) using the
//! scrape configuration k8sforge generates (`monitoring::scrape`, the node-exporter job at each
//! node's address). Reports the head series in total and per node, and the Prometheus process's
//! memory, first with a tenth of the nodes as targets and then with all of them, so the memory
//! per series is a difference of two measurements rather than a whole process divided by its
//! series.
//!
//! Not in this measurement: kubelet and cAdvisor (they need a whole cluster up, with the kube
//! binaries, on all N nodes; the bench says so in one line), kube-proxy and kube-state-metrics.
//! The nodes are containers on one host kernel: node-exporter sees the host's CPUs and one veth
//! per node, as a VM with 2 vCPUs and one NIC would; a real GPU node has more CPUs, NICs and
//! disks, hence more series (the projection says so).
//!
//!   K8SFORGE_BENCH_NODES=50 cargo bench --profile dev --bench monitoring_scale   # as root

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8sforge::monitoring::scrape;
use k8sforge::remote::{Executor, ExecutorOptions, FileSource, NodePlan, SyncFile};
use sha2::{Digest, Sha256};
use support::local_cluster::LocalCluster;

const PROMETHEUS: &str = "/usr/bin/prometheus";
const NODE_EXPORTER: &str = "/usr/bin/prometheus-node-exporter";
const ON_NODE: &str = "/usr/local/bin/prometheus-node-exporter";
const UNIT: &str = "k8sforge-bench-node-exporter";
const INTERVAL: &str = "5s";

struct Prom(Child);

impl Drop for Prom {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn get(url: &str) -> String {
    ureq::get(url)
        .call()
        .unwrap_or_else(|e| panic!("{url}: {e}"))
        .body_mut()
        .read_to_string()
        .unwrap()
}

fn query(prom: &str, q: &str) -> Vec<serde_json::Value> {
    let url = format!("{prom}/api/v1/query?query={}", urlencode(q));
    let v: serde_json::Value = serde_json::from_str(&get(&url)).unwrap();
    v["data"]["result"].as_array().cloned().unwrap_or_default()
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn scalar(prom: &str, q: &str) -> f64 {
    query(prom, q)
        .first()
        .and_then(|r| r["value"][1].as_str().and_then(|v| v.parse().ok()))
        .unwrap_or(f64::NAN)
}

/// A metric of Prometheus's own /metrics page.
fn own(prom: &str, name: &str) -> f64 {
    get(&format!("{prom}/metrics"))
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or(f64::NAN)
}

/// Wait until `n` node-exporter targets are up and every one has been scraped `scrapes` times
/// since, then let the head settle for one more interval.
fn wait_up(prom: &str, n: usize) {
    let t = Instant::now();
    loop {
        let up = scalar(prom, "count(up{job=\"node-exporter\"} == 1)");
        if up as usize == n {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "only {up} of {n} node-exporter targets up after 300 s: {:#?}",
            query(prom, "up{job=\"node-exporter\"} == 0")
        );
        std::thread::sleep(Duration::from_secs(2));
    }
    // A few scrapes of every target, so the head holds what one scrape of each brings.
    std::thread::sleep(Duration::from_secs(20));
}

fn main() {
    let n: usize = std::env::var("K8SFORGE_BENCH_NODES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(50);
    if !Path::new(PROMETHEUS).is_file() || !Path::new(NODE_EXPORTER).is_file() {
        println!("skipped: needs the Debian packages prometheus and prometheus-node-exporter");
        return;
    }
    println!(
        "kubelet/cAdvisor: not measured here (needs a whole cluster up with kube binaries on all \
         {n} nodes); node-exporter only"
    );
    let c = LocalCluster::reserved("bench-mon", "local-3")
        .with_set(format!("workers[0].count={}", n - 1))
        .with_set("training.enabled=false");
    let _ = c.cmd(&["teardown"]).output();
    let t = Instant::now();
    c.up_only("provision");
    println!(
        "{n} local nodes booted in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // node-exporter on every node, pushed and started by the executor (as a transient unit).
    let inv = k8sforge::state::load_state_at(&c.state_dir().join("state.json"))
        .unwrap()
        .inventory
        .expect("inventory after provision");
    let sha = hex::encode(Sha256::digest(std::fs::read(NODE_EXPORTER).unwrap()));
    let plans: BTreeMap<String, NodePlan> = inv
        .nodes
        .iter()
        .map(|node| {
            let plan = NodePlan {
                files: vec![SyncFile {
                    path: ON_NODE.into(),
                    mode: 0o755,
                    owner: "root:root".into(),
                    sha256: sha.clone(),
                    source: FileSource::Local(NODE_EXPORTER.into()),
                    restarts: vec![],
                }],
                commands: vec![format!(
                    "systemctl stop {UNIT} 2>/dev/null; systemctl reset-failed {UNIT} 2>/dev/null; \
                     systemd-run -q --unit={UNIT} {ON_NODE} --web.listen-address={}:{}",
                    node.internal_ip,
                    scrape::NODE_EXPORTER_PORT
                )],
                ..NodePlan::default()
            };
            (node.name.clone(), plan)
        })
        .collect();
    let ex = Executor::new(
        &c.state_dir(),
        ExecutorOptions {
            progress: false,
            ..ExecutorOptions::default()
        },
    )
    .unwrap();
    let t = Instant::now();
    let rep = ex.apply_plans(&inv, &plans, "node-exporter");
    assert!(rep.ok(), "{}", rep.summary_line());
    println!(
        "node-exporter pushed and started on {n} nodes in {:.1} s",
        t.elapsed().as_secs_f64()
    );

    // k8sforge's scrape configuration for this cluster's inventory, node-exporter job only.
    let loaded = k8sforge::profile::load(
        "local-3",
        &[
            format!("name={}", c.name),
            format!("monitoring.scrapeInterval={INTERVAL}"),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let tls = scrape::ScrapeTls::from_pki_dir(&c.state_dir().join("pki"));
    let config_for = |nodes: usize| {
        let mut inv = inv.clone();
        inv.nodes.truncate(nodes);
        let configs: Vec<scrape::ScrapeConfig> =
            scrape::scrape_configs(&loaded.profile, &inv, &tls)
                .into_iter()
                .filter(|s| s.job_name == scrape::Job::NodeExporter.name())
                .collect();
        assert_eq!(configs.len(), 1);
        assert_eq!(configs[0].static_configs.len(), nodes);
        scrape::prometheus_config(&loaded.profile, &configs, &[])
    };
    let tmp = tempfile::tempdir().unwrap();
    let config_file = tmp.path().join("prometheus.yml");
    let small = (n / 10).max(1);
    std::fs::write(&config_file, config_for(small)).unwrap();
    let port = support::sshd::free_port();
    let prom = format!("http://127.0.0.1:{port}");
    let log = std::fs::File::create(tmp.path().join("prometheus.log")).unwrap();
    let _p = Prom(
        Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                tmp.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--web.enable-lifecycle")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap(),
    );
    let t = Instant::now();
    while ureq::get(&format!("{prom}/-/ready")).call().is_err() {
        assert!(t.elapsed() < Duration::from_secs(60), "Prometheus not ready");
        std::thread::sleep(Duration::from_millis(500));
    }

    let mut rows = Vec::new();
    for targets in [small, n] {
        if targets != small {
            std::fs::write(&config_file, config_for(targets)).unwrap();
            ureq::post(&format!("{prom}/-/reload"))
                .send_empty()
                .unwrap();
        }
        wait_up(&prom, targets);
        let series = own(&prom, "prometheus_tsdb_head_series");
        let rss = own(&prom, "process_resident_memory_bytes");
        let heap = own(&prom, "go_memstats_heap_inuse_bytes");
        let mut per_node: Vec<f64> = query(&prom, "scrape_samples_scraped{job=\"node-exporter\"}")
            .iter()
            .filter_map(|r| r["value"][1].as_str()?.parse().ok())
            .collect();
        per_node.sort_by(f64::total_cmp);
        assert_eq!(per_node.len(), targets);
        rows.push((targets, series, rss, heap, per_node));
    }
    let mib = |b: f64| b / 1048576.0;
    println!("| node-exporter targets | head series | series per node (min / median / max samples per scrape) | Prometheus RSS | Go heap in use |");
    println!("|---|---|---|---|---|");
    for (t, series, rss, heap, per) in &rows {
        println!(
            "| {t} | {series:.0} | {:.0} / {:.0} / {:.0} | {:.1} MiB | {:.1} MiB |",
            per[0],
            per[per.len() / 2],
            per[per.len() - 1],
            mib(*rss),
            mib(*heap)
        );
    }
    let (t0, s0, r0, h0, _) = &rows[0];
    let (t1, s1, r1, h1, per) = &rows[1];
    let per_series_rss = (r1 - r0) / (s1 - s0);
    let per_series_heap = (h1 - h0) / (s1 - s0);
    let series_per_node = (s1 - s0) / (*t1 - *t0) as f64;
    println!(
        "marginal: {series_per_node:.0} head series per node; {per_series_rss:.0} B RSS and \
         {per_series_heap:.0} B heap per head series (differences between {t0} and {t1} targets); \
         median samples per scrape {:.0}",
        per[per.len() / 2]
    );
    let model_series = 1000.0 * series_per_node;
    println!(
        "model, 1000 nodes (node-exporter only, as measured here): {:.2} M head series, \
         ≈ {:.1} GiB RSS at the marginal RSS per series (+ the {:.0} MiB measured at {t1} targets)",
        model_series / 1e6,
        model_series * per_series_rss / 1073741824.0,
        mib(*r1)
    );
}
