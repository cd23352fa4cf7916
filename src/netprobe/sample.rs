//! Which peers a node probes in a round: `k` of the other `n - 1` nodes by ring offset. Every node
//! computes its own list from the shared node list, with no coordination; per round each node
//! sends `k` measurements and receives `k`, and over ⌈(n-1)/k⌉ rounds every ordered pair is
//! measured once.

/// Indices of the peers node `me` of `n` probes in `round`.
pub fn peers(n: usize, me: usize, k: usize, round: u64) -> Vec<usize> {
    if n < 2 || me >= n {
        return Vec::new();
    }
    let others = n - 1;
    let k = k.min(others);
    let base = (round % others as u64) as usize * k;
    (0..k)
        .map(|j| {
            let offset = 1 + (base + j) % others;
            (me + offset) % n
        })
        .collect()
}

/// Rounds until every ordered pair has been measured.
pub fn rounds_to_cover(n: usize, k: usize) -> usize {
    if n < 2 || k == 0 {
        return 0;
    }
    (n - 1).div_ceil(k.min(n - 1))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    #[test]
    fn every_pair_is_covered_and_load_is_even() {
        for (n, k) in [(2, 1), (3, 2), (5, 2), (50, 3), (1000, 3)] {
            let mut seen = BTreeSet::new();
            let rounds = rounds_to_cover(n, k);
            for r in 0..rounds as u64 {
                let mut probed = vec![0usize; n];
                for me in 0..n {
                    let p = peers(n, me, k, r);
                    assert_eq!(p.len(), k.min(n - 1));
                    assert!(!p.contains(&me));
                    assert_eq!(p.iter().collect::<BTreeSet<_>>().len(), p.len());
                    for t in p {
                        probed[t] += 1;
                        seen.insert((me, t));
                    }
                }
                // Each node receives as many measurements as it sends.
                assert!(probed.iter().all(|&c| c == k.min(n - 1)), "n={n} k={k}");
            }
            assert_eq!(seen.len(), n * (n - 1), "n={n} k={k}: all ordered pairs");
        }
        assert_eq!(rounds_to_cover(1000, 3), 333);
    }
}
