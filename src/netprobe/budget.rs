//! What the probe's schedule costs and covers: bytes per node per hour, and how long until
//! every pair of `n` nodes was measured once. Sending is by construction (`per_round` transfers
//! of `bytes` per round); with ring sampling every node is also the target of `per_round`
//! transfers per round on average, so it receives as much as it sends.

/// Bytes one node sends per hour (and, on average, receives).
pub fn bytes_sent_per_hour(per_round: usize, bytes: u64, interval_secs: u64) -> u64 {
    let rounds_per_hour = 3600 / interval_secs.max(1);
    per_round as u64 * bytes * rounds_per_hour
}

/// Bytes a node moves per hour (sent + received on average).
pub fn bytes_moved_per_hour(per_round: usize, bytes: u64, interval_secs: u64) -> u64 {
    2 * bytes_sent_per_hour(per_round, bytes, interval_secs)
}

/// Seconds until every ordered pair of `nodes` was measured once (ring offsets 1..n-1,
/// `per_round` of them per round).
pub fn full_coverage_secs(nodes: usize, per_round: usize, interval_secs: u64) -> u64 {
    let offsets = nodes.saturating_sub(1) as u64;
    offsets.div_ceil(per_round.max(1) as u64) * interval_secs
}

#[cfg(test)]
mod tests {
    use super::super::{DEFAULT_BYTES, DEFAULT_INTERVAL_SECS, DEFAULT_PER_ROUND};
    use super::*;

    const GIB: u64 = 1 << 30;

    #[test]
    fn the_defaults_move_well_under_a_gib_per_node_per_hour_at_any_size() {
        let moved = bytes_moved_per_hour(DEFAULT_PER_ROUND, DEFAULT_BYTES, DEFAULT_INTERVAL_SECS);
        assert_eq!(moved, 384 << 20);
        assert!(moved * 2 < GIB, "{moved}");
        // The first defaults, for the record: 22.5 GiB moved per node per hour.
        assert_eq!(bytes_moved_per_hour(3, 64 << 20, 60), 45 * GIB / 2);
        // At 1000 nodes every pair is measured within 500 rounds (≈ 41.7 h); each node is a
        // source every round, so a bad NIC shows within one round.
        assert_eq!(
            full_coverage_secs(1000, DEFAULT_PER_ROUND, DEFAULT_INTERVAL_SECS),
            500 * 300
        );
    }
}
