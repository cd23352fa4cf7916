//! Prometheus at N local nodes (issue 16's figure): boot N local nodes, run Debian's
//! `prometheus-node-exporter` on every one (pushed and started by k8sforge's own executor), and
//! scrape them all from this host with a real Prometheus (Debian's `prometheus`) using the
//! scrape configuration k8sforge generates (`monitoring::scrape`, the node-exporter job at each
//! node's address). Reports the head series in total and per node, and the Prometheus process's
//! memory, first with a tenth of the nodes as targets and then with all of them, so the memory
//! per series is a difference of two measurements rather than a whole process divided by its
//! series.
//!
//! With K8SFORGE_TEST_KUBE_BIN (see DEVELOPERS.md) the whole cluster comes up (`up`, every
//! phase) and the kubelet and cAdvisor jobs of every node are scraped too, with the client
//! certificate k8sforge issues for Prometheus and the monitoring add-on's RBAC; without it those
//! two jobs are skipped with one line. Not in this measurement: kube-proxy and
//! kube-state-metrics, and any workload (the cluster runs no pods but the add-ons').
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

/// A metric of Prometheus's own /metrics page (summed over its label sets).
fn own(prom: &str, name: &str) -> f64 {
    let values: Vec<f64> = get(&format!("{prom}/metrics"))
        .lines()
        .filter_map(|l| {
            let rest = l.strip_prefix(name)?;
            let value = match rest.strip_prefix('{') {
                Some(labelled) => labelled.split_once("} ")?.1,
                None => rest.strip_prefix(' ')?,
            };
            value.trim().parse::<f64>().ok()
        })
        .collect();
    if values.is_empty() {
        f64::NAN
    } else {
        values.iter().sum()
    }
}

/// Wait until `n` targets are up, then for a few scrapes of every one.
fn wait_up(prom: &str, n: usize) {
    let t = Instant::now();
    loop {
        let up = scalar(prom, "count(up == 1)");
        if up as usize == n {
            break;
        }
        assert!(
            t.elapsed() < Duration::from_secs(300),
            "only {up} of {n} targets up after 300 s: {:#?}",
            query(prom, "up == 0")
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
    let kube = k8sforge_testkit::kube::from_env().unwrap_or_else(|e| panic!("{e}"));
    let mut c = LocalCluster::reserved("bench-mon", "local-3")
        .with_set(format!("workers[0].count={}", n - 1))
        .with_set("training.enabled=false");
    let mut jobs = vec![scrape::Job::NodeExporter];
    match &kube {
        Some(k) => {
            let cache = k8sforge_testkit::mirror::default_cache_dir();
            let base = k8sforge_testkit::mirror::build(&cache).expect("test mirror");
            let m = k8sforge_testkit::kube::cluster_mirror(&base, k, &cache).expect("mirror");
            c = c
                .with_mirror(&m.root)
                .with_set(format!("kubernetes.version={}", k.version));
            jobs.extend([scrape::Job::Kubelet, scrape::Job::Cadvisor]);
        }
        None => println!(
            "kubelet/cAdvisor skipped: set {} to bring the whole cluster up (node-exporter only)",
            k8sforge_testkit::kube::KUBE_BIN_ENV
        ),
    }
    let _ = c.cmd(&["teardown"]).output();
    let t = Instant::now();
    if kube.is_some() {
        let (out, _) = c.up(&[]);
        assert!(
            out.status.success(),
            "up: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        println!(
            "{n} local nodes: whole cluster up in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    } else {
        c.up_only("provision");
        println!(
            "{n} local nodes booted in {:.1} s",
            t.elapsed().as_secs_f64()
        );
    }

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
                    "systemctl stop {UNIT} 2>/dev/null || true; \
                     systemctl reset-failed {UNIT} 2>/dev/null || true; systemd-run -q --unit={UNIT} {ON_NODE} --web.listen-address={}:{}",
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
            "monitoring.enabled=true".into(),
            format!("monitoring.scrapeInterval={INTERVAL}"),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let tmp = tempfile::tempdir().unwrap();
    if let Some(k) = &kube {
        // The monitoring add-on's own objects (the scrape RBAC the kubelets check), as the
        // addons phase applies them, without the in-cluster stack.
        for m in k8sforge::monitoring::render(&loaded.profile, &inv).unwrap() {
            let f = tmp.path().join(m.name);
            std::fs::write(&f, &m.yaml).unwrap();
            let out = c.kubectl(&k.kubectl()).output(
                &["apply", "--server-side", "-f", &f.display().to_string()],
                None,
            );
            assert!(
                out.status.success(),
                "apply {}: {}",
                m.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let tls = scrape::ScrapeTls::from_pki_dir(&c.state_dir().join("pki"));
    let config_for = |nodes: usize| {
        let mut inv = inv.clone();
        inv.nodes.truncate(nodes);
        let configs: Vec<scrape::ScrapeConfig> =
            scrape::scrape_configs(&loaded.profile, &inv, &tls)
                .into_iter()
                .filter(|s| jobs.iter().any(|j| j.name() == s.job_name))
                .collect();
        assert_eq!(configs.len(), jobs.len());
        assert!(configs.iter().all(|c| c.static_configs.len() == nodes));
        scrape::prometheus_config(&loaded.profile, &configs, &[])
    };
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
        assert!(
            t.elapsed() < Duration::from_secs(60),
            "Prometheus not ready"
        );
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
        wait_up(&prom, targets * jobs.len());
        let series = own(&prom, "prometheus_tsdb_head_series");
        let rss = own(&prom, "process_resident_memory_bytes");
        let heap = own(&prom, "go_memstats_heap_inuse_bytes");
        // Samples per scrape of each node, all jobs together.
        let mut per_node: Vec<f64> = query(&prom, "sum by (node) (scrape_samples_scraped)")
            .iter()
            .filter_map(|r| r["value"][1].as_str()?.parse().ok())
            .collect();
        per_node.sort_by(f64::total_cmp);
        assert_eq!(per_node.len(), targets);
        rows.push((targets, series, rss, heap, per_node));
    }
    for j in &jobs {
        let mut v: Vec<f64> = query(
            &prom,
            &format!("scrape_samples_scraped{{job=\"{}\"}}", j.name()),
        )
        .iter()
        .filter_map(|r| r["value"][1].as_str()?.parse().ok())
        .collect();
        v.sort_by(f64::total_cmp);
        println!(
            "job {}: samples per scrape per node min {:.0} / median {:.0} / max {:.0}",
            j.name(),
            v[0],
            v[v.len() / 2],
            v[v.len() - 1]
        );
    }
    let mib = |b: f64| b / 1048576.0;
    println!("| nodes scraped | head series | series per node (min / median / max samples per scrape) | Prometheus RSS | Go heap in use |");
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
    // The process's fixed part: what the small run held beyond its series.
    let base = r0 - s0 * per_series_rss;
    let model_series = 1000.0 * series_per_node;
    println!(
        "model, 1000 nodes (the jobs above, as measured here): {:.2} M head series, \
         RSS ≈ {:.0} MiB fixed + {:.2} GiB for the series = {:.2} GiB (first minute of scraping)",
        model_series / 1e6,
        mib(base),
        model_series * per_series_rss / 1073741824.0,
        (base + model_series * per_series_rss) / 1073741824.0
    );

    // Memory grows as the head's chunks fill: sample it while all targets are scraped.
    let hold: u64 = std::env::var("K8SFORGE_BENCH_HOLD_SECS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let t = Instant::now();
    while t.elapsed().as_secs() < hold {
        std::thread::sleep(Duration::from_secs(60));
        let series = own(&prom, "prometheus_tsdb_head_series");
        let rss = own(&prom, "process_resident_memory_bytes");
        let heap = own(&prom, "go_memstats_heap_inuse_bytes");
        let samples = own(&prom, "prometheus_tsdb_head_samples_appended_total");
        println!(
            "after {:>4} s more at {t1} targets: {series:.0} series, {samples:.0} samples appended, \
             RSS {:.1} MiB, heap {:.1} MiB ({:.0} B RSS per series)",
            t.elapsed().as_secs(),
            mib(rss),
            mib(heap),
            rss / series
        );
    }
}
