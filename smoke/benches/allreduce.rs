//! The smoke program's all-reduce for N local ranks (processes on 127.0.0.1, PyTorchJob-style
//! environment), per epoch, for a small and a large vector. Run:
//! `cargo bench -p k8sforge-smoke --bench allreduce` (K8SFORGE_BENCH_RANKS=2,4,8 to choose N).
//! The figure is rank 0's time inside the all-reduce (star: rank 0 receives N-1 vectors and
//! sends the sum back N-1 times), averaged over the epochs; process start and connection set-up
//! are not counted.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Instant;

const BIN: &str = env!("CARGO_BIN_EXE_k8sforge-smoke");
const EPOCHS: u32 = 5;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn run(world: u32, elements: usize) -> (f64, f64) {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let t = Instant::now();
    let children: Vec<_> = (0..world)
        .map(|r| {
            Command::new(BIN)
                .env_clear()
                .env("MASTER_ADDR", "127.0.0.1")
                .env("MASTER_PORT", port.to_string())
                .env("WORLD_SIZE", world.to_string())
                .env("RANK", r.to_string())
                .env("K8SFORGE_SMOKE_EPOCHS", EPOCHS.to_string())
                .env("K8SFORGE_SMOKE_ELEMENTS", elements.to_string())
                .env("K8SFORGE_SMOKE_CHECKPOINT_DIR", dir.path())
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let outs: Vec<_> = children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect();
    let wall = t.elapsed().as_secs_f64();
    assert!(outs.iter().all(|o| o.status.success()), "a rank failed");
    let text = String::from_utf8_lossy(&outs[0].stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("K8SFORGE-SMOKE "))
        .unwrap();
    let secs: f64 = line
        .split("\"allreduce_seconds\":")
        .nth(1)
        .and_then(|r| r.split(',').next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    (secs / f64::from(EPOCHS), wall)
}

fn main() {
    let ranks: Vec<u32> = std::env::var("K8SFORGE_BENCH_RANKS")
        .unwrap_or_else(|_| "2,4,8,16".into())
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    println!(
        "| ranks | elements (u64) | all-reduce per epoch | whole run ({EPOCHS} epochs, wall) |"
    );
    println!("|---|---|---|---|");
    for &n in &ranks {
        for elements in [1024usize, 1 << 20] {
            let (per_epoch, wall) = run(n, elements);
            println!(
                "| {n} | {elements} ({:.0} KiB) | {:.2} ms | {:.2} s |",
                elements as f64 * 8.0 / 1024.0,
                per_epoch * 1000.0,
                wall
            );
        }
    }
}
