//! The network probe (issue 16, "network speeds"): a small program of k8sforge's own
//! (`src/bin/k8sforge-netprobe.rs`) that runs on every node, measures TCP throughput and
//! round-trip time to a few peers per round and exports them as Prometheus metrics. Peers are
//! sampled by ring offset (`sample`), so at 1000 nodes each node probes `k` peers per round
//! rather than 999, and every pair is still covered every ⌈999/k⌉ rounds.

pub mod budget;
pub mod exposition;
pub mod measure;
pub mod sample;

/// Throughput of the last measurement, bits per second, labels `source`, `target`.
pub const THROUGHPUT_METRIC: &str = "k8sforge_netprobe_throughput_bits_per_second";
/// The speed the link is expected to carry (from the probe's configuration).
pub const EXPECTED_METRIC: &str = "k8sforge_netprobe_expected_bits_per_second";
/// TCP round-trip time of the last measurement (median of the pings), seconds.
pub const RTT_METRIC: &str = "k8sforge_netprobe_rtt_seconds";
/// Defaults, chosen for the traffic budget (`budget`): each node sends 2 × 8 MiB every 5 min,
/// 192 MiB per hour, and receives as much on average: 0.375 GiB moved per node per hour,
/// whatever the cluster size (the sample is per node, not per pair). The first defaults
/// (3 × 64 MiB every 60 s) moved 22.5 GiB per node per hour.
pub const DEFAULT_PER_ROUND: usize = 2;
pub const DEFAULT_INTERVAL_SECS: u64 = 300;
pub const DEFAULT_BYTES: u64 = 8 << 20;

/// Failed measurements, by target.
pub const ERRORS_METRIC: &str = "k8sforge_netprobe_errors_total";
