//! k8sforge-netprobe: measures TCP throughput and round-trip time from this node to a sample of
//! peers every interval and serves the results as Prometheus metrics (see `k8sforge::netprobe`).

use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context};
use clap::Parser;

use k8sforge::netprobe::{exposition, measure, sample};

#[derive(Parser)]
#[command(about = "Measure node-to-node throughput and latency; export Prometheus metrics")]
struct Args {
    /// This node's name (must be in the peers file).
    #[arg(long)]
    node: String,
    /// Address the measurement server listens on.
    #[arg(long, default_value = "0.0.0.0:9700")]
    listen: String,
    /// Address the metrics endpoint listens on.
    #[arg(long, default_value = "0.0.0.0:9701")]
    metrics: String,
    /// Every node, one per line: `NAME HOST:PORT` (the same file on every node).
    #[arg(long)]
    peers: PathBuf,
    /// Peers measured per round.
    #[arg(long, default_value_t = k8sforge::netprobe::DEFAULT_PER_ROUND)]
    per_round: usize,
    /// Seconds between rounds.
    #[arg(long, default_value_t = k8sforge::netprobe::DEFAULT_INTERVAL_SECS)]
    interval_secs: u64,
    /// Bytes sent per throughput measurement.
    #[arg(long, default_value_t = k8sforge::netprobe::DEFAULT_BYTES)]
    bytes: u64,
    /// The link speed expected between nodes, bits per second (the slow-link alert compares).
    #[arg(long, default_value_t = 10e9)]
    expected_bps: f64,
    /// Stop after this many rounds (0: run forever).
    #[arg(long, default_value_t = 0)]
    rounds: u64,
}

fn read_peers(path: &PathBuf) -> anyhow::Result<Vec<(String, SocketAddr)>> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut it = line.split_whitespace();
        let (Some(name), Some(addr), None) = (it.next(), it.next(), it.next()) else {
            bail!(
                "{}:{}: expected `NAME HOST:PORT`, got {line:?}",
                path.display(),
                i + 1
            );
        };
        let addr = addr
            .to_socket_addrs()
            .ok()
            .and_then(|mut a| a.next())
            .with_context(|| format!("{}:{}: {addr:?} is not HOST:PORT", path.display(), i + 1))?;
        out.push((name.to_string(), addr));
    }
    Ok(out)
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let peers = read_peers(&args.peers)?;
    let Some(me) = peers.iter().position(|(n, _)| *n == args.node) else {
        bail!("node {:?} is not in {}", args.node, args.peers.display());
    };
    let server =
        TcpListener::bind(&args.listen).with_context(|| format!("listening on {}", args.listen))?;
    let metrics = TcpListener::bind(&args.metrics)
        .with_context(|| format!("listening on {}", args.metrics))?;
    let results = Arc::new(Mutex::new(exposition::Results {
        source: args.node.clone(),
        expected_bits_per_second: args.expected_bps,
        pairs: Default::default(),
    }));
    std::thread::spawn(move || measure::serve(server));
    let r = results.clone();
    std::thread::spawn(move || exposition::serve(metrics, r));
    let mut round = 0u64;
    loop {
        for i in sample::peers(peers.len(), me, args.per_round, round) {
            let (name, addr) = &peers[i];
            let rtt = measure::rtt(*addr, 9);
            let bps = measure::throughput(*addr, args.bytes);
            let mut res = results
                .lock()
                .map_err(|_| anyhow::anyhow!("results lock poisoned"))?;
            let e = res.pairs.entry(name.clone()).or_default();
            match (rtt, bps) {
                (Ok(rtt), Ok(bps)) => {
                    e.rtt_seconds = Some(rtt.as_secs_f64());
                    e.bits_per_second = Some(bps);
                }
                (a, b) => {
                    e.errors += 1;
                    eprintln!("netprobe: {name} ({addr}): {:?} {:?}", a.err(), b.err());
                }
            }
        }
        round += 1;
        if args.rounds != 0 && round >= args.rounds {
            // Keep serving the last results.
            std::thread::park();
        }
        std::thread::sleep(Duration::from_secs(args.interval_secs));
    }
}
