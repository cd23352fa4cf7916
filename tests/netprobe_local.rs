//! The network probe between real network namespaces: three "nodes" (namespaces a, b, c, each
//! with one veth into a bridge namespace) run `k8sforge-netprobe` against each other, a real
//! Prometheus (Debian's, in namespace a) scrapes them with k8sforge's alert rules loaded, and:
//! the throughput and RTT metrics appear for every sampled pair; after node b's veth is slowed
//! with `tc` (a token-bucket filter at 20 Mbit/s), b's links show up slow in the metric and the
//! `NodeLinkSlow` alert fires for b's links and for no other.
//!
//! The alert's `for` duration (10 minutes in the rule file) is set to 0 here so the test does
//! not wait; its expression is the rule file's, unchanged (`promtool test rules` covers `for`).
//! Not shown here: the probe as a DaemonSet on a cluster's pod network (no image of it is
//! packed yet).
//!
//! Needs root (network namespaces, tc) and the Debian package `prometheus`; skipped with one
//! line otherwise.

mod support;

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8sforge::monitoring::rules;
use k8sforge::netprobe;

const PROMETHEUS: &str = "/usr/bin/prometheus";

fn sh(args: &[&str]) {
    let out = Command::new(args[0]).args(&args[1..]).output().unwrap();
    assert!(
        out.status.success(),
        "{args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The namespaces this test created; deleted when it ends.
struct Netns(Vec<String>);

impl Drop for Netns {
    fn drop(&mut self) {
        for n in &self.0 {
            let _ = Command::new("ip").args(["netns", "del", n]).status();
        }
    }
}

struct Kill(Vec<Child>);

impl Drop for Kill {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn in_ns(ns: &str, prog: &str) -> Command {
    let mut c = Command::new("ip");
    c.args(["netns", "exec", ns, prog]);
    c
}

fn query(ns: &str, prom: &str, q: &str) -> Vec<serde_json::Value> {
    let out = in_ns(ns, "curl")
        .args(["-sf", "--get", "--data-urlencode"])
        .arg(format!("query={q}"))
        .arg(format!("{prom}/api/v1/query"))
        .output()
        .unwrap();
    serde_json::from_slice::<serde_json::Value>(&out.stdout)
        .map(|v| v["data"]["result"].as_array().cloned().unwrap_or_default())
        .unwrap_or_default()
}

/// (source, target) → value of every series `q` returns.
fn pairs(ns: &str, prom: &str, q: &str) -> Vec<(String, String, f64)> {
    let mut v: Vec<(String, String, f64)> = query(ns, prom, q)
        .iter()
        .map(|r| {
            (
                r["metric"]["source"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                r["metric"]["target"]
                    .as_str()
                    .unwrap_or_default()
                    .to_string(),
                r["value"][1]
                    .as_str()
                    .and_then(|s| s.parse().ok())
                    .unwrap_or(f64::NAN),
            )
        })
        .collect();
    v.sort_by(|a, b| (&a.0, &a.1).cmp(&(&b.0, &b.1)));
    v
}

fn wait_for<T>(what: &str, secs: u64, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: timed out");
        std::thread::sleep(Duration::from_millis(500));
    }
}

#[test]
fn a_slowed_link_shows_in_the_metric_and_fires_the_alert() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: needs root (network namespaces, tc)");
        return;
    }
    if !Path::new(PROMETHEUS).is_file() {
        println!("skipped: needs {PROMETHEUS} (Debian package prometheus)");
        return;
    }
    let (x, _lock) = support::subnet::reserve_subnet();
    let tag = format!("k8sfnp{}", std::process::id());
    let hub = format!("{tag}-hub");
    let nodes = ["a", "b", "c"];
    let ns = |n: &str| format!("{tag}-{n}");
    let _netns = Netns(
        std::iter::once(hub.clone())
            .chain(nodes.iter().map(|n| ns(n)))
            .collect(),
    );
    sh(&["ip", "netns", "add", &hub]);
    sh(&["ip", "-n", &hub, "link", "add", "br0", "type", "bridge"]);
    sh(&["ip", "-n", &hub, "link", "set", "br0", "up"]);
    let ip = |i: usize| format!("198.19.{x}.{}", i + 1);
    for (i, n) in nodes.iter().enumerate() {
        let node_ns = ns(n);
        sh(&["ip", "netns", "add", &node_ns]);
        let host_end = format!("h{n}{}", std::process::id() % 100000);
        sh(&[
            "ip", "-n", &hub, "link", "add", &host_end, "type", "veth", "peer", "name", "eth0",
            "netns", &node_ns,
        ]);
        sh(&[
            "ip", "-n", &hub, "link", "set", &host_end, "master", "br0", "up",
        ]);
        sh(&[
            "ip",
            "-n",
            &node_ns,
            "addr",
            "add",
            &format!("{}/24", ip(i)),
            "dev",
            "eth0",
        ]);
        sh(&["ip", "-n", &node_ns, "link", "set", "eth0", "up"]);
        sh(&["ip", "-n", &node_ns, "link", "set", "lo", "up"]);
    }

    let tmp = tempfile::tempdir().unwrap();
    let peers = tmp.path().join("peers");
    std::fs::write(
        &peers,
        nodes
            .iter()
            .enumerate()
            .map(|(i, n)| format!("{n} {}:9700\n", ip(i)))
            .collect::<String>(),
    )
    .unwrap();
    let mut procs = Kill(Vec::new());
    let started = Instant::now();
    // Expected 200 Mbit/s: an unshaped veth carries far more, the shaped one 20 Mbit/s.
    for (i, n) in nodes.iter().enumerate() {
        let log = std::fs::File::create(tmp.path().join(format!("probe-{n}.log"))).unwrap();
        procs.0.push(
            in_ns(&ns(n), env!("CARGO_BIN_EXE_k8sforge-netprobe"))
                .args(["--node", n, "--peers"])
                .arg(&peers)
                .args(["--listen", &format!("{}:9700", ip(i))])
                .args(["--metrics", &format!("{}:9701", ip(i))])
                .args(["--per-round", "2", "--interval-secs", "1"])
                .args(["--bytes", &(4u64 << 20).to_string()])
                .args(["--expected-bps", "2e8"])
                .stdout(Stdio::from(log.try_clone().unwrap()))
                .stderr(Stdio::from(log))
                .spawn()
                .unwrap(),
        );
    }

    // Prometheus in node a, with the rule file (every `for` set to 0, see the module doc).
    let mut groups = rules::groups();
    for g in &mut groups {
        for r in &mut g.rules {
            r.for_ = "0s";
        }
    }
    std::fs::write(
        tmp.path().join("rules.yaml"),
        serde_yaml_ng::to_string(&serde_json::json!({ "groups": groups })).unwrap(),
    )
    .unwrap();
    let targets: Vec<String> = (0..nodes.len())
        .map(|i| format!("{}:9701", ip(i)))
        .collect();
    let config = serde_json::json!({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "rule_files": [tmp.path().join("rules.yaml")],
        "scrape_configs": [{"job_name": "netprobe", "static_configs": [{"targets": targets}]}],
    });
    std::fs::write(
        tmp.path().join("prometheus.yml"),
        serde_yaml_ng::to_string(&config).unwrap(),
    )
    .unwrap();
    let prom_addr = format!("{}:9090", ip(0));
    let log = std::fs::File::create(tmp.path().join("prometheus.log")).unwrap();
    procs.0.push(
        in_ns(&ns("a"), PROMETHEUS)
            .arg(format!(
                "--config.file={}",
                tmp.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                tmp.path().join("tsdb").display()
            ))
            .arg(format!("--web.listen-address={prom_addr}"))
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .unwrap(),
    );
    let prom = format!("http://{prom_addr}");
    let all_pairs: Vec<(String, String)> = nodes
        .iter()
        .flat_map(|s| {
            nodes
                .iter()
                .filter(move |t| *t != s)
                .map(move |t| (s.to_string(), t.to_string()))
        })
        .collect();
    let names = |v: &[(String, String, f64)]| -> Vec<(String, String)> {
        v.iter().map(|(s, t, _)| (s.clone(), t.clone())).collect()
    };

    // Every sampled pair (3 nodes, 2 per round: all six) has throughput and RTT; nothing slow.
    let before = wait_for("throughput of every pair", 120, || {
        let v = pairs(&ns("a"), &prom, netprobe::THROUGHPUT_METRIC);
        (names(&v) == all_pairs).then_some(v)
    });
    let rtt = pairs(&ns("a"), &prom, netprobe::RTT_METRIC);
    assert_eq!(names(&rtt), all_pairs);
    assert!(rtt.iter().all(|(_, _, v)| *v > 0.0 && *v < 1.0), "{rtt:?}");
    assert!(
        before.iter().all(|(_, _, v)| *v > 1e8),
        "unshaped links under 100 Mbit/s: {before:?}"
    );
    let alerts = |state: &str| {
        pairs(
            &ns("a"),
            &prom,
            &format!("ALERTS{{alertname=\"NodeLinkSlow\",alertstate=\"{state}\"}}"),
        )
    };
    assert!(alerts("firing").is_empty());

    // Slow node b's link; its measurements drop and the alert fires for b's links only.
    sh(&[
        "ip",
        "netns",
        "exec",
        &ns("b"),
        "tc",
        "qdisc",
        "add",
        "dev",
        "eth0",
        "root",
        "tbf",
        "rate",
        "20mbit",
        "burst",
        "32kbit",
        "latency",
        "400ms",
    ]);
    let slow_from_b = vec![
        ("b".to_string(), "a".to_string()),
        ("b".to_string(), "c".to_string()),
    ];
    let firing = wait_for("NodeLinkSlow firing for b's links", 120, || {
        let f = alerts("firing");
        (names(&f) == slow_from_b).then_some(f)
    });
    assert_eq!(names(&firing), slow_from_b);
    // Figures for BENCHMARKS.md (printed, not asserted): CPU seconds each probe used so far.
    let ticks = 100.0; // USER_HZ
    for (n, c) in nodes.iter().zip(&procs.0) {
        // `ip netns exec` execs the probe in place: the child's pid is the probe's.
        if let Ok(stat) = std::fs::read_to_string(format!("/proc/{}/stat", c.id())) {
            let f: Vec<&str> = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect();
            let cpu =
                (f[11].parse::<f64>().unwrap_or(0.0) + f[12].parse::<f64>().unwrap_or(0.0)) / ticks;
            println!(
                "figure: probe {n} cpu_seconds={cpu:.2} over {:.1} s (2 peers x 4 MiB per 1 s round)",
                started.elapsed().as_secs_f64()
            );
        }
    }
    let after = pairs(&ns("a"), &prom, netprobe::THROUGHPUT_METRIC);
    for (s, t, v) in &after {
        if s == "b" {
            assert!(*v < 3e7, "{s}->{t} should be shaped to 20 Mbit/s: {v}");
        } else {
            assert!(*v > 1e8, "{s}->{t} is not shaped: {v}");
        }
    }
}
