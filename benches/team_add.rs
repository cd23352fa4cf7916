//! `team add` for 100 teams against a real etcd + kube-apiserver + kube-controller-manager on
//! 127.0.0.1 (k8sforge's PKI; binaries from K8SFORGE_TEST_KUBE_BIN; without them it prints why
//! and exits 0): 100 `k8sforge team add` processes one after the other (as a script would), then
//! the same 100 teams through one connection (`add_teams`, what an import of a team list does),
//! then that again with nothing to change. Run:
//! `K8SFORGE_TEST_KUBE_BIN=DIR cargo bench --bench team_add` (K8SFORGE_BENCH_TEAMS=N to change 100).

#[path = "../tests/support/apiserver.rs"]
#[allow(dead_code)]
mod apiserver;

use std::time::Instant;

use k8sforge::commands::team as verbs;
use k8sforge::training::teams::Team;

fn team(name: String) -> Team {
    Team {
        name,
        gpus: 8,
        cpu: Some("64".into()),
        memory: Some("256Gi".into()),
        cohort: None,
        borrowing_limit: None,
        dataset_size: None,
        checkpoint_size: None,
    }
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let Some(bin) = apiserver::kube_bin() else {
        eprintln!(
            "team_add: set {} (DEVELOPERS.md); nothing measured",
            apiserver::KUBE_BIN
        );
        return;
    };
    let n: usize = std::env::var("K8SFORGE_BENCH_TEAMS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(100);
    let api =
        apiserver::ApiServer::start(&bin, "gpu-dev", "v1.28.7", "serviceaccount,namespace").await;
    let t = Instant::now();
    for i in 0..n {
        let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_k8sforge"));
        c.env("K8SFORGE_HOME", &api.home).args([
            "team",
            "add",
            &format!("cli-{i}"),
            "--gpus",
            "8",
            "--cpu",
            "64",
            "--memory",
            "256Gi",
            "--profile",
            "gpu-dev",
        ]);
        for s in &api.profile_sets {
            c.args(["--set", s]);
        }
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let cli = t.elapsed().as_secs_f64();
    let teams: Vec<Team> = (0..n).map(|i| team(format!("lib-{i}"))).collect();
    let t = Instant::now();
    let first = verbs::add_teams(&api.cluster, &teams).await.unwrap();
    let batch = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let again = verbs::add_teams(&api.cluster, &teams).await.unwrap();
    let noop = t.elapsed().as_secs_f64();
    assert_eq!(
        again.count(k8sforge::kube::Change::Created) + again.count(k8sforge::kube::Change::Changed),
        0
    );
    println!("| {n} teams | wall | per team | objects |");
    println!("|---|---|---|---|");
    println!(
        "| `k8sforge team add` × {n} (one process each) | {cli:.1} s | {:.0} ms | {} per team |",
        cli * 1000.0 / n as f64,
        first.objects.len() / n
    );
    println!(
        "| `add_teams` (one connection), created | {batch:.1} s | {:.0} ms | {} |",
        batch * 1000.0 / n as f64,
        first.objects.len()
    );
    println!(
        "| `add_teams` again, nothing to change | {noop:.1} s | {:.0} ms | {} |",
        noop * 1000.0 / n as f64,
        again.objects.len()
    );
}
