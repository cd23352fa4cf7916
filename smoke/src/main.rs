//! `k8sforge-smoke`: the CPU workload `k8sforge smoke` submits. Every rank reads the rendezvous
//! environment its operator set (see `rendezvous`), joins rank 0 over TCP, and per epoch
//! all-reduces a vector whose element-wise sum every rank can predict, so each rank checks the
//! result itself. Rank 0 writes a checkpoint per epoch and, when re-submitted, resumes from the
//! newest one. Rank 0 ends with one line `K8SFORGE-SMOKE {json}` that `k8sforge smoke` reads
//! from its log.
//!
//! Settings (environment): `K8SFORGE_SMOKE_EPOCHS` (3), `K8SFORGE_SMOKE_ELEMENTS` (1024),
//! `K8SFORGE_SMOKE_CHECKPOINT_DIR` (`/checkpoints`, rank 0 only), `K8SFORGE_SMOKE_TIMEOUT`
//! (seconds to wait for the other ranks, 300), `K8SFORGE_SMOKE_EPOCH_SECONDS` (pause after each
//! epoch, 0). Exit 0 pass, 1 the all-reduce or checkpoint failed, 2 bad environment.

mod allreduce;
mod checkpoint;
mod json;
mod rendezvous;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use rendezvous::Rendezvous;

/// What rank `rank` contributes in `epoch`; the sum over ranks is [`expected`].
fn contribution(rank: u32, epoch: u32, n: usize) -> Vec<u64> {
    (0..n as u64)
        .map(|i| (u64::from(rank) + 1) * (i + 1) + u64::from(epoch))
        .collect()
}

fn expected(world: u32, epoch: u32, i: usize) -> u64 {
    let w = u64::from(world);
    (i as u64 + 1) * w * (w + 1) / 2 + w * u64::from(epoch)
}

fn setting<T: std::str::FromStr>(
    env: &BTreeMap<String, String>,
    key: &str,
    default: T,
) -> Result<T, String> {
    match env.get(key) {
        None => Ok(default),
        Some(v) => v
            .trim()
            .parse()
            .map_err(|_| format!("{key}={v:?} is not a number")),
    }
}

struct Settings {
    epochs: u32,
    elements: usize,
    checkpoint_dir: PathBuf,
    timeout: Duration,
    epoch_pause: Duration,
}

fn settings(env: &BTreeMap<String, String>) -> Result<Settings, String> {
    let s = Settings {
        epochs: setting(env, "K8SFORGE_SMOKE_EPOCHS", 3)?,
        elements: setting(env, "K8SFORGE_SMOKE_ELEMENTS", 1024)?,
        checkpoint_dir: env
            .get("K8SFORGE_SMOKE_CHECKPOINT_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/checkpoints")),
        timeout: Duration::from_secs(setting(env, "K8SFORGE_SMOKE_TIMEOUT", 300)?),
        epoch_pause: Duration::from_millis(
            (setting::<f64>(env, "K8SFORGE_SMOKE_EPOCH_SECONDS", 0.0)? * 1000.0) as u64,
        ),
    };
    if s.elements == 0 || s.elements > 1 << 26 {
        return Err("K8SFORGE_SMOKE_ELEMENTS must be between 1 and 67108864".into());
    }
    Ok(s)
}

fn run(rv: &Rendezvous, s: &Settings) -> Result<String, String> {
    let who = format!("rank {}/{} ({})", rv.rank, rv.world, rv.role);
    // Rank 0 decides where to start: after its newest checkpoint.
    let mut state = vec![0u64; s.elements];
    let mut resumed_from = None;
    let (mut peer, start) = if rv.rank == 0 {
        std::fs::create_dir_all(&s.checkpoint_dir)
            .map_err(|e| format!("checkpoint directory {}: {e}", s.checkpoint_dir.display()))?;
        if let Some((path, c)) = checkpoint::latest(&s.checkpoint_dir)? {
            if c.state.len() != s.elements {
                return Err(format!(
                    "checkpoint {} holds {} elements, this run uses {} (K8SFORGE_SMOKE_ELEMENTS)",
                    path.display(),
                    c.state.len(),
                    s.elements
                ));
            }
            println!(
                "{who}: resuming after epoch {} from {}",
                c.epoch,
                path.display()
            );
            resumed_from = Some(c.epoch);
            state = c.state;
        }
        let start = resumed_from.map_or(1, |e| e + 1);
        (
            allreduce::hub(rv.listen_port, rv.world, start, s.timeout)?,
            start,
        )
    } else {
        allreduce::spoke(&rv.master, rv.rank, rv.world, s.timeout)?
    };
    println!("{who}: joined; epochs {start}..={}", s.epochs);
    let mut reduce_time = Duration::ZERO;
    for epoch in start..=s.epochs {
        let t = Instant::now();
        let sum = peer.all_reduce(&contribution(rv.rank, epoch, s.elements))?;
        reduce_time += t.elapsed();
        if let Some(i) = (0..s.elements).find(|&i| sum[i] != expected(rv.world, epoch, i)) {
            return Err(format!(
                "{who}: epoch {epoch}: element {i} of the all-reduce is {}, expected {}",
                sum[i],
                expected(rv.world, epoch, i)
            ));
        }
        if rv.rank == 0 {
            for (a, b) in state.iter_mut().zip(&sum) {
                *a = a.wrapping_add(*b);
            }
            let path = checkpoint::save(
                &s.checkpoint_dir,
                &checkpoint::Checkpoint {
                    epoch,
                    world: rv.world,
                    state: state.clone(),
                },
            )?;
            println!(
                "{who}: epoch {epoch} all-reduce verified; checkpoint {}",
                path.display()
            );
        } else {
            println!("{who}: epoch {epoch} all-reduce verified");
        }
        std::thread::sleep(s.epoch_pause);
    }
    // The state after epochs 1..=E is independent of where runs were interrupted.
    let checksum = state.iter().fold(0u64, |h, x| {
        h.rotate_left(5) ^ x.wrapping_mul(0x9e37_79b9_7f4a_7c15)
    });
    Ok(format!(
        "{{\"result\":\"pass\",\"style\":\"{}\",\"world\":{},\"rank\":{},\"epochs\":{},\"first_epoch\":{start},\"resumed_from\":{},\"elements\":{},\"state_checksum\":\"{checksum:016x}\",\"allreduce_seconds\":{:.6},\"master\":{}}}",
        rv.style.as_str(),
        rv.world,
        rv.rank,
        s.epochs,
        resumed_from.map_or("null".to_string(), |e| e.to_string()),
        s.elements,
        reduce_time.as_secs_f64(),
        json::quote(&format!("{}:{}", rv.master.0, rv.master.1)),
    ))
}

fn main() {
    let env: BTreeMap<String, String> = std::env::vars().collect();
    let prepared = Rendezvous::from_env(&env).and_then(|rv| Ok((rv, settings(&env)?)));
    let (rv, s) = match prepared {
        Ok(p) => p,
        Err(e) => {
            eprintln!("k8sforge-smoke: {e}");
            std::process::exit(2);
        }
    };
    match run(&rv, &s) {
        Ok(report) => {
            println!("K8SFORGE-SMOKE {report}");
        }
        Err(e) => {
            let line = format!(
                "{{\"result\":\"fail\",\"rank\":{},\"reason\":{}}}",
                rv.rank,
                json::quote(&e)
            );
            eprintln!("k8sforge-smoke: {e}");
            println!("K8SFORGE-SMOKE {line}");
            std::process::exit(1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn contributions_sum_to_the_expected_vector() {
        for world in [1, 2, 5] {
            let sum: Vec<u64> = (0..world)
                .map(|r| contribution(r, 7, 4))
                .fold(vec![0; 4], |acc, v| {
                    acc.iter().zip(v).map(|(a, b)| a + b).collect()
                });
            let want: Vec<u64> = (0..4).map(|i| expected(world, 7, i)).collect();
            assert_eq!(sum, want);
        }
    }
}
