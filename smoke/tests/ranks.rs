//! The smoke program for real: N ranks as local processes on 127.0.0.1, each given the
//! environment the operator would set — PyTorchJob style (MASTER_ADDR/MASTER_PORT/WORLD_SIZE/
//! RANK), TFJob style (TF_CONFIG with PS and workers) and Trainer v2 style (PET_*) — and the
//! all-reduce result checked by every rank and by this test; then checkpoint and resume: a run
//! killed after its second checkpoint and re-submitted resumes after the newest checkpoint and
//! ends in the same state as an uninterrupted run.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_k8sforge-smoke");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn spawn(env: &[(String, String)], common: &[(&str, String)]) -> Child {
    let mut c = Command::new(BIN);
    c.env_clear().stdout(Stdio::piped()).stderr(Stdio::piped());
    for (k, v) in env {
        c.env(k, v);
    }
    for (k, v) in common {
        c.env(k, v);
    }
    c.spawn().unwrap()
}

/// The `K8SFORGE-SMOKE {…}` report of one rank's output.
fn report(out: &Output) -> BTreeMap<String, String> {
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find_map(|l| l.strip_prefix("K8SFORGE-SMOKE "))
        .unwrap_or_else(|| {
            panic!(
                "no report in\n{text}\nstderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    // Flat object of scalars: split on top-level commas (no nested objects in the report).
    let body = line.trim().trim_start_matches('{').trim_end_matches('}');
    body.split(",\"")
        .filter_map(|kv| {
            let (k, v) = kv.split_once("\":")?;
            Some((
                k.trim_matches('"').to_string(),
                v.trim_matches('"').to_string(),
            ))
        })
        .collect()
}

fn run_all(ranks: Vec<Vec<(String, String)>>, common: &[(&str, String)]) -> Vec<Output> {
    let children: Vec<Child> = ranks.iter().map(|e| spawn(e, common)).collect();
    children
        .into_iter()
        .map(|c| c.wait_with_output().unwrap())
        .collect()
}

fn pytorch_env(world: u32, port: u16) -> Vec<Vec<(String, String)>> {
    (0..world)
        .map(|r| {
            vec![
                ("MASTER_ADDR".into(), "localhost".into()),
                ("MASTER_PORT".into(), port.to_string()),
                ("WORLD_SIZE".into(), world.to_string()),
                ("RANK".into(), r.to_string()),
            ]
        })
        .collect()
}

fn ckpt(dir: &Path) -> (&'static str, String) {
    ("K8SFORGE_SMOKE_CHECKPOINT_DIR", dir.display().to_string())
}

fn all_pass(outs: &[Output]) {
    for (i, o) in outs.iter().enumerate() {
        assert!(
            o.status.success(),
            "process {i}: {:?}\n{}\n{}",
            o.status,
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        assert_eq!(report(o)["result"], "pass");
    }
}

#[test]
fn pytorch_style_ranks_all_reduce_and_checkpoint_each_epoch() {
    let dir = tempfile::tempdir().unwrap();
    let outs = run_all(
        pytorch_env(4, free_port()),
        &[
            ckpt(dir.path()),
            ("K8SFORGE_SMOKE_EPOCHS", "3".into()),
            ("K8SFORGE_SMOKE_ELEMENTS", "4096".into()),
        ],
    );
    all_pass(&outs);
    let r0 = report(&outs[0]);
    assert_eq!(r0["style"], "pytorch");
    assert_eq!(r0["world"], "4");
    assert_eq!(r0["resumed_from"], "null");
    for (i, o) in outs.iter().enumerate() {
        let text = String::from_utf8_lossy(&o.stdout);
        for e in 1..=3 {
            assert!(
                text.contains(&format!("epoch {e} all-reduce verified")),
                "rank {i}: {text}"
            );
        }
    }
    let mut files: Vec<String> = std::fs::read_dir(dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    files.sort();
    assert_eq!(
        files,
        [
            "epoch-000001.ckpt",
            "epoch-000002.ckpt",
            "epoch-000003.ckpt"
        ]
    );
    // 20 bytes of header + 4096 u64.
    assert_eq!(
        std::fs::metadata(dir.path().join("epoch-000003.ckpt"))
            .unwrap()
            .len(),
        20 + 4096 * 8
    );
}

#[test]
fn tf_config_style_ps_and_workers_all_reduce() {
    let dir = tempfile::tempdir().unwrap();
    let ps = [free_port()];
    let workers = [free_port(), free_port(), free_port()];
    let list = |ports: &[u16]| {
        ports
            .iter()
            .map(|p| format!("\"127.0.0.1:{p}\""))
            .collect::<Vec<_>>()
            .join(",")
    };
    let cluster = format!("{{\"ps\":[{}],\"worker\":[{}]}}", list(&ps), list(&workers));
    let mut ranks = Vec::new();
    for (role, n) in [("ps", ps.len()), ("worker", workers.len())] {
        for i in 0..n {
            ranks.push(vec![(
                "TF_CONFIG".to_string(),
                format!("{{\"cluster\":{cluster},\"task\":{{\"type\":\"{role}\",\"index\":{i}}},\"environment\":\"cloud\"}}"),
            )]);
        }
    }
    let outs = run_all(ranks, &[ckpt(dir.path())]);
    all_pass(&outs);
    let r0 = report(&outs[0]);
    assert_eq!(
        (r0["style"].as_str(), r0["world"].as_str()),
        ("tf_config", "4")
    );
    // The PS is rank 0 and the hub; worker 2 is rank 3.
    assert_eq!(report(&outs[3])["rank"], "3");
    assert!(String::from_utf8_lossy(&outs[0].stdout).contains("rank 0/4 (ps)"));
}

#[test]
fn trainer_v2_style_and_a_bad_environment() {
    let dir = tempfile::tempdir().unwrap();
    let port = free_port();
    let ranks = (0..2)
        .map(|r| {
            vec![
                ("PET_NNODES".to_string(), "2".to_string()),
                ("PET_NPROC_PER_NODE".into(), "1".into()),
                ("PET_NODE_RANK".into(), r.to_string()),
                ("PET_MASTER_ADDR".into(), "127.0.0.1".into()),
                ("PET_MASTER_PORT".into(), port.to_string()),
            ]
        })
        .collect();
    let outs = run_all(ranks, &[ckpt(dir.path())]);
    all_pass(&outs);
    assert_eq!(report(&outs[0])["style"], "trainer-v2");

    let out = run_all(vec![vec![]], &[]).remove(0);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no rendezvous environment"));
    // A rank whose master never comes: named, with the address, within the timeout.
    let out = run_all(
        vec![pytorch_env(2, free_port()).remove(1)],
        &[("K8SFORGE_SMOKE_TIMEOUT", "1".into())],
    )
    .remove(0);
    assert_eq!(out.status.code(), Some(1));
    let r = report(&out);
    assert_eq!(r["result"], "fail");
    assert!(r["reason"].contains("rank 0 at localhost:"), "{r:?}");
}

#[test]
fn a_killed_run_resumes_from_its_last_checkpoint() {
    let elements = ("K8SFORGE_SMOKE_ELEMENTS", "512".to_string());
    // Uninterrupted: 5 epochs in one go.
    let whole = tempfile::tempdir().unwrap();
    let outs = run_all(
        pytorch_env(3, free_port()),
        &[
            ckpt(whole.path()),
            ("K8SFORGE_SMOKE_EPOCHS", "5".into()),
            elements.clone(),
        ],
    );
    all_pass(&outs);
    let uninterrupted = report(&outs[0])["state_checksum"].clone();

    // Interrupted: killed (every rank, as a deleted job's pods are) after its second checkpoint.
    let dir = tempfile::tempdir().unwrap();
    let common = [
        ckpt(dir.path()),
        ("K8SFORGE_SMOKE_EPOCHS", "5".into()),
        ("K8SFORGE_SMOKE_EPOCH_SECONDS", "0.5".into()),
        elements.clone(),
    ];
    let mut children: Vec<Child> = pytorch_env(3, free_port())
        .iter()
        .map(|e| spawn(e, &common))
        .collect();
    let deadline = Instant::now() + Duration::from_secs(30);
    while !dir.path().join("epoch-000002.ckpt").exists() {
        assert!(Instant::now() < deadline, "no second checkpoint");
        std::thread::sleep(Duration::from_millis(20));
    }
    for c in &mut children {
        c.kill().unwrap();
        c.wait().unwrap();
    }
    // A torn write of the next checkpoint must not be taken for a checkpoint.
    std::fs::write(dir.path().join("epoch-000099.ckpt"), b"K8SFCKP1 torn").unwrap();

    // Re-submitted: resumes after the newest complete checkpoint, ends in the same state.
    let outs = run_all(
        pytorch_env(3, free_port()),
        &[
            ckpt(dir.path()),
            ("K8SFORGE_SMOKE_EPOCHS", "5".into()),
            elements,
        ],
    );
    all_pass(&outs);
    let r0 = report(&outs[0]);
    let from: u32 = r0["resumed_from"].parse().unwrap();
    assert!((2..5).contains(&from), "{r0:?}");
    assert_eq!(r0["first_epoch"], (from + 1).to_string());
    assert_eq!(r0["state_checksum"], uninterrupted, "{r0:?}");
    assert!(String::from_utf8_lossy(&outs[0].stderr).contains("skipping checkpoint"));
    assert!(dir.path().join("epoch-000005.ckpt").exists());
}
