//! Failure-matrix rows on real local nodes:
//! - SIGKILL of `up` inside each phase, then a re-run completes: one case per phase that runs
//!   without Kubernetes binaries (provision, pki, etcd, runtime, network; control-plane onwards
//!   need K8SFORGE_TEST_KUBE_BIN: the upgrade's kill-and-resume in tests/upgrade_local.rs runs
//!   them killed mid-way);
//! - one node unreachable (its veth down): `up` names it, the other nodes are done, the re-run
//!   after it is back finishes;
//! - a full disk while writing a file on a node (a 64 KiB tmpfs, filled): a clear error naming
//!   the node, no partial file left, the re-run after space is freed finishes.
//!
//! The kill is deterministic: debug builds of k8sforge read `K8SFORGE_TEST_KILL_AFTER_WORK=PHASE`
//! and SIGKILL themselves when that phase has done its work on the nodes but before its
//! completion is recorded — the moment a crash is worst for a re-run (files, units and state all
//! out of step with the record). One cluster is shared by the cases: each builds on the previous
//! phase, as `up` does.

mod support;

use k8sforge_testkit::mirror;
use support::local_cluster::{assert_done, phase, LocalCluster};

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

    // One node unreachable: its veth's host end down. The run names it and finishes the others
    // (the CNI plugin removed everywhere comes back on the two reachable nodes).
    let st = state(&c);
    let w2 = st["inventory"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["name"] == "worker-2")
        .unwrap()["internal_ip"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    let veth = k8sforge::provider::local::network::veth_name(&c.name, c.cidr.parse().unwrap(), w2);
    for n in ["controlplane-1", "worker-1", "worker-2"] {
        c.ssh_ok(n, "rm -f /opt/cni/bin/bridge");
    }
    let link = |state: &str| {
        let ok = std::process::Command::new("ip")
            .args(["link", "set", &veth, state])
            .status()
            .unwrap()
            .success();
        assert!(ok, "ip link set {veth} {state}");
    };
    link("down");
    let (out, report) = c.up(&["--only", "runtime"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    link("up");
    assert!(!out.status.success(), "{stderr}");
    let rt = phase(&report, "runtime");
    assert_eq!(rt["outcome"], "failed", "{report:#}");
    let failed = rt["failed_nodes"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{report:#}");
    assert_eq!(failed[0][0], "worker-2", "{report:#}");
    assert!(
        stderr.contains("worker-2:"),
        "stderr names the node: {stderr}"
    );
    for n in ["controlplane-1", "worker-1"] {
        c.ssh_ok(n, "test -x /opt/cni/bin/bridge");
    }
    c.up_only("runtime");
    c.ssh_ok("worker-2", "test -x /opt/cni/bin/bridge");

    // A full disk while writing: /etc/containerd on worker-1 becomes a full 64 KiB tmpfs (the
    // config the runtime phase writes there is missing from it, so the phase must write).
    c.ssh_ok(
        "worker-1",
        "mount -t tmpfs -o size=64k tmpfs /etc/containerd && \
         (dd if=/dev/zero of=/etc/containerd/filler bs=4k 2>/dev/null || true)",
    );
    let (out, report) = c.up(&["--only", "runtime"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let rt = phase(&report, "runtime");
    assert!(!out.status.success(), "{stderr}");
    assert_eq!(rt["outcome"], "failed", "{report:#}");
    let failed = rt["failed_nodes"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{report:#}");
    assert_eq!(failed[0][0], "worker-1", "{report:#}");
    eprintln!("full disk: worker-1: {}", failed[0][1]);
    assert!(
        failed[0][1]
            .as_str()
            .unwrap()
            .contains("no space left on the filesystem of /etc/containerd"),
        "the error says what happened: {report:#}"
    );
    let left = c.ssh_ok("worker-1", "ls -A /etc/containerd");
    assert_eq!(
        left.trim(),
        "filler",
        "nothing half-written is left: {left}"
    );
    c.ssh_ok("worker-1", "rm /etc/containerd/filler");
    c.up_only("runtime");
    c.ssh_ok(
        "worker-1",
        "test -s /etc/containerd/config.toml && umount /etc/containerd && systemctl restart containerd && systemctl is-active containerd",
    );

    // network: routes to every other node's pod CIDR after the re-run.
    kill_then_rerun(&c, "network");
    let routes = c.ssh_ok("worker-1", "ip route");
    assert!(
        routes.lines().filter(|l| l.starts_with("10.200.")).count() >= 2,
        "{routes}"
    );
}
