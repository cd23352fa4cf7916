//! Failure-matrix row "SIGKILL of `up` inside each phase, then a re-run completes", on real
//! local nodes, one case per phase that runs without Kubernetes binaries (provision, pki, etcd,
//! runtime, network; control-plane onwards need K8SFORGE_TEST_KUBE_BIN and are covered by the
//! upgrade's kill-and-resume in tests/upgrade_local.rs).
//!
//! The kill is deterministic: debug builds of k8sforge read `K8SFORGE_TEST_KILL_AFTER_WORK=PHASE`
//! and SIGKILL themselves when that phase has done its work on the nodes but before its
//! completion is recorded — the moment a crash is worst for a re-run (files, units and state all
//! out of step with the record). One cluster is shared by the cases: each builds on the previous
//! phase, as `up` does.

mod support;

use k8sforge_testkit::mirror;
use support::local_cluster::{assert_done, LocalCluster};

const HOOK: &str = "K8SFORGE_TEST_KILL_AFTER_WORK";

fn state(c: &LocalCluster) -> serde_json::Value {
    std::fs::read(c.state_dir().join("state.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// `up --only PHASE` killed by the hook, then `up --only PHASE` again, which must finish.
fn kill_then_rerun(c: &LocalCluster, phase: &str) -> serde_json::Value {
    let before = state(c)["phases"][phase].clone();
    let m = c.mirror.as_ref().unwrap().display().to_string();
    let out = c
        .cmd(&[
            "up",
            "--only",
            phase,
            "--mirror",
            &m,
            "--trust-mirror-checksums",
        ])
        .env(HOOK, phase)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&out.status),
        Some(libc::SIGKILL),
        "{phase}: the hook did not kill k8sforge: {stderr}"
    );
    assert!(stderr.contains(&format!("{HOOK}={phase}")), "{stderr}");
    assert_eq!(
        state(c)["phases"][phase],
        before,
        "{phase}: killed before its record, so the record is unchanged"
    );
    let report = c.up_only(phase);
    assert_done(&report, &[phase]);
    assert!(
        state(c)["phases"][phase]["completed_at"].is_string(),
        "{phase} recorded after the re-run"
    );
    report
}

#[test]
fn up_killed_inside_each_phase_completes_on_the_rerun() {
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "boots nspawn nodes: run as root"
    );
    let m = mirror::build(&mirror::default_cache_dir()).expect("test mirror");
    let c = LocalCluster::reserved("crash", "local-3").with_mirror(&m.root);
    let _ = c.cmd(&["teardown"]).output();

    // provision: the machines exist when the kill comes; the re-run adopts them (same host
    // keys, no second set of nodes).
    kill_then_rerun(&c, "provision");
    let nodes = std::fs::read_dir(c.node_dir("x").parent().unwrap())
        .unwrap()
        .count();
    assert_eq!(nodes, 3, "no duplicate nodes after the re-run");

    // pki: files issued before the kill are kept and the re-run completes the set.
    kill_then_rerun(&c, "pki");
    let ca = std::fs::read(c.state_dir().join("pki/ca.crt"))
        .or_else(|_| std::fs::read(c.state_dir().join("pki/ca/ca.crt")));
    assert!(ca.is_ok(), "the CA exists after the re-run");

    // etcd: members installed and started before the kill; the re-run finds them healthy.
    kill_then_rerun(&c, "etcd");
    let health = c.ssh("controlplane-1", k8sforge::phases::etcd::HEALTH_CMD);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&health.stdout),
        String::from_utf8_lossy(&health.stderr)
    );
    assert!(
        health.status.success() && text.contains("is healthy"),
        "{text}"
    );

    // runtime: with the binaries removed first, so the killed run has real work to do.
    for n in ["controlplane-1", "worker-1", "worker-2"] {
        c.ssh_ok(
            n,
            "rm -f /usr/local/bin/containerd /usr/local/sbin/runc /opt/cni/bin/bridge",
        );
    }
    kill_then_rerun(&c, "runtime");
    for n in ["controlplane-1", "worker-1", "worker-2"] {
        let ran = c.ssh_ok(
            n,
            "/usr/local/sbin/runc --version >/dev/null && test -x /opt/cni/bin/bridge && systemctl is-active containerd",
        );
        assert!(ran.contains("active"), "{n}: {ran}");
    }

    // network: routes to every other node's pod CIDR after the re-run.
    kill_then_rerun(&c, "network");
    let routes = c.ssh_ok("worker-1", "ip route");
    assert!(
        routes.lines().filter(|l| l.starts_with("10.200.")).count() >= 2,
        "{routes}"
    );
}
