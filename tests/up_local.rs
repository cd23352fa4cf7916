//! `k8sforge up` on real local nodes (systemd-nspawn, real sshd and systemd) with artifacts from a
//! test mirror repackaged from Debian packages: etcd over TLS, containerd + runc + CNI + the pause
//! image on every node, pod routes between nodes — and the failure modes: a re-run changes
//! nothing, a SIGKILLed run resumes, a stopped node is named and a re-run completes after it is
//! back. The mirror has no Kubernetes binaries (no registry here ships them), so the run stops at
//! the control plane with a message naming the missing artifact; tests/cluster_local.rs builds
//! the whole cluster when they are given.
//!
//! One cluster is shared by the steps (they build on each other), so this is a single test.
//! Needs root, systemd-container, debootstrap (node image, cached) and apt access (test mirror,
//! cached under /var/cache/k8sforge-testkit).

mod support;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use k8sforge_testkit::{mirror, oci};
use support::local_cluster::{assert_done, phase, LocalCluster as Cluster};

const NAME: &str = "e2e-up";
const NODE_CIDR: &str = "198.19.240.0/24";

/// Power the node off from inside (its launcher then exits; provision boots it again).
fn stop_node(c: &Cluster, node: &str) {
    let _ = c.ssh(node, "systemctl poweroff");
    let pidfile = c.node_dir(node).join("nspawn.pid");
    for _ in 0..60 {
        let alive = std::fs::read_to_string(&pidfile)
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok())
            .is_some_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
        if !alive && c.ssh(node, "true").status.code() != Some(0) {
            return;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    panic!("{node} did not power off");
}

#[test]
fn up_builds_etcd_runtime_and_pod_network_on_local_nodes() {
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test boots systemd-nspawn nodes: run as root"
    );
    let m = mirror::build(&mirror::default_cache_dir()).expect("test mirror");
    let c = Cluster::fixed(NAME, NODE_CIDR, "local-3").with_mirror(&m.root);
    // Nodes left by a crashed earlier run of this test would be adopted with other keys.
    let _ = c.cmd(&["teardown"]).output();

    // 1. The whole run: everything up to the control plane completes; the control plane stops
    //    the run, naming the Kubernetes artifact the mirror lacks. The pod network needs no
    //    Kubernetes binary, so it is run alone.
    let (out, report) = c.up(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_done(&report, &["provision", "pki", "etcd", "runtime"]);
    let cp = phase(&report, "control-plane");
    assert_eq!(cp["outcome"], "failed", "{stderr}");
    assert!(
        cp["detail"]
            .as_str()
            .unwrap()
            .contains("kubernetes-server-linux-amd64.tar.gz not found in the artifact mirror"),
        "{cp:#}"
    );
    assert!(!out.status.success(), "{stderr}");
    assert!(phase(&report, "runtime")["files_changed"].as_u64().unwrap() > 0);
    let (_, report) = c.up(&["--only", "network"]);
    assert_done(&report, &["network"]);
    // The pause image came from the mirror and was imported into containerd's CRI namespace.
    let images = c.ssh_ok("worker-1", "ctr -n k8s.io images ls -q");
    assert!(images.contains(mirror::PAUSE_IMAGE), "{images}");
    let sandbox = c.ssh_ok("worker-1", "cat /etc/containerd/config.toml");
    assert!(
        sandbox.contains(&format!("sandbox_image = \"{}\"", mirror::PAUSE_IMAGE)),
        "{sandbox}"
    );

    // 2. etcd answers over TLS with the generated client cert; plaintext and foreign certs are refused.
    // etcdctl 3.4 prints health results on stderr.
    let health = c.ssh("controlplane-1", k8sforge::phases::etcd::HEALTH_CMD);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&health.stdout),
        String::from_utf8_lossy(&health.stderr)
    );
    assert!(
        health.status.success() && text.contains("https://198.19.240.11:2379 is healthy"),
        "{text}"
    );
    let plain = c.ssh(
        "controlplane-1",
        "ETCDCTL_API=3 etcdctl --endpoints=http://127.0.0.1:2379 --command-timeout=3s endpoint health",
    );
    assert!(!plain.status.success(), "plaintext client was accepted");
    let dir = tempfile::tempdir().unwrap();
    let (key, crt) = (dir.path().join("k.pem"), dir.path().join("c.pem"));
    let gen = Command::new("openssl")
        .args([
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=root",
        ])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&crt)
        .output()
        .unwrap();
    assert!(
        gen.status.success(),
        "{}",
        String::from_utf8_lossy(&gen.stderr)
    );
    let pem = |p: &Path| std::fs::read_to_string(p).unwrap();
    let foreign = c.ssh(
        "controlplane-1",
        &format!(
            "printf '%s' '{}' > /tmp/f.key && printf '%s' '{}' > /tmp/f.crt && \
             ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 --cacert=/etc/etcd/ca.crt \
             --cert=/tmp/f.crt --key=/tmp/f.key --command-timeout=3s endpoint health; rc=$?; \
             ETCDCTL_API=3 etcdctl --endpoints=https://127.0.0.1:2379 --cacert=/tmp/f.crt \
             --cert=/etc/etcd/healthcheck-client.crt --key=/etc/etcd/healthcheck-client.key \
             --command-timeout=3s endpoint health && exit 0; exit $rc",
            pem(&key),
            pem(&crt)
        ),
    );
    assert!(
        !foreign.status.success(),
        "a client cert from a foreign CA, or a wrong CA, was accepted"
    );

    // 3. Pod network: a CNI pod on each worker gets an address from that node's pod CIDR and
    //    reaches the pod on the other worker through the host routes.
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(c.state_dir().join("state.json")).unwrap()).unwrap();
    let pod1 = c.cni_pod("worker-1");
    let pod2 = c.cni_pod("worker-2");
    for (node, ip) in [("worker-1", &pod1), ("worker-2", &pod2)] {
        let cidr: ipnet::Ipv4Net = state["pod_cidrs"][node].as_str().unwrap().parse().unwrap();
        assert!(
            cidr.contains(&ip.parse::<std::net::Ipv4Addr>().unwrap()),
            "{node}: {ip} not in {cidr}"
        );
    }
    c.ssh_ok(
        "worker-1",
        &format!("ip netns exec tpod ping -c 2 -W 3 {pod2}"),
    );
    c.ssh_ok(
        "worker-2",
        &format!("ip netns exec tpod ping -c 2 -W 3 {pod1}"),
    );

    // 4. containerd runs a container from a local OCI archive (no registry).
    let archive = dir.path().join("busybox-oci.tar");
    oci::build_archive(
        &m.busybox,
        &["sh", "echo", "hostname"],
        &["/bin/sh"],
        "docker.io/library/k8sforge-busybox:latest",
        &archive,
    )
    .unwrap();
    let mut push = c.cmd(&["ssh", "worker-1", "--", "cat > /tmp/busybox-oci.tar"]);
    push.stdin(Stdio::from(std::fs::File::open(&archive).unwrap()));
    assert!(push.status().unwrap().success());
    let ran = c.ssh_ok(
        "worker-1",
        "ctr images import /tmp/busybox-oci.tar >/dev/null && \
         timeout 60 ctr run --rm docker.io/library/k8sforge-busybox:latest t1 /bin/sh -c 'echo hello-from-container'",
    );
    assert!(ran.contains("hello-from-container"), "{ran}");

    // 5. A second up changes nothing and restarts nothing.
    let (_, report) = c.up(&[]);
    let (_, net) = c.up(&["--only", "network"]);
    let report = serde_json::json!({"phases": [
        phase(&report, "etcd").clone(), phase(&report, "runtime").clone(), phase(&net, "network").clone()
    ]});
    for p in ["etcd", "runtime", "network"] {
        assert_eq!(phase(&report, p)["files_changed"], 0, "{p}: {report:#}");
        assert_eq!(phase(&report, p)["units_restarted"], 0, "{p}: {report:#}");
    }

    // `plan` compares with what `up` installed: only files of phases not built yet would change.
    let out = c
        .cmd(&[
            "plan",
            "-o",
            "json",
            "--out",
            &dir.path().join("bundle").display().to_string(),
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let plan: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(plan["compared_with_applied"], true, "{plan:#}");
    assert_eq!(
        plan["certificates_issued"].as_array().unwrap().len(),
        0,
        "{plan:#}"
    );

    // `status` sees every node and its units.
    let out = c.cmd(&["status", "-o", "json"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let status: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(status["nodes"].as_array().unwrap().len(), 3);
    assert_eq!(
        status["nodes"][0]["units"]["etcd.service"], "active",
        "{status:#}"
    );
    assert_eq!(
        status["nodes"][2]["units"]["containerd.service"], "active",
        "{status:#}"
    );

    // 6. SIGKILL in the middle of the runtime phase, then up again: it completes, and the
    //    runtime works. The binaries are removed first so the phase has real work to be cut in.
    for n in ["controlplane-1", "worker-1", "worker-2"] {
        c.ssh_ok(
            n,
            "rm -f /usr/local/bin/containerd /usr/local/sbin/runc /opt/cni/bin/bridge",
        );
    }
    let mirror_arg = m.root.display().to_string();
    let mut child = c
        .cmd(&[
            "up",
            "--from",
            "runtime",
            "--mirror",
            &mirror_arg,
            "--trust-mirror-checksums",
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    let _ = child.kill();
    let _ = child.wait();
    let (_, report) = c.up(&["--from", "runtime"]);
    assert_done(&report, &["runtime"]);
    let ran = c.ssh_ok(
        "worker-2",
        "ctr images ls -q >/dev/null && /usr/local/sbin/runc --version && systemctl is-active containerd",
    );
    assert!(ran.contains("active"), "{ran}");

    // 7. One node stopped: the run names it and the reason, finishes the others, exits non-zero;
    //    after the node is back (provision restarts it), a re-run completes.
    stop_node(&c, "worker-2");
    let (out, report) = c.up(&["--from", "etcd"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let workers = phase(&report, "runtime");
    assert_eq!(workers["outcome"], "failed", "{report:#}");
    let failed = workers["failed_nodes"].as_array().unwrap();
    assert_eq!(failed.len(), 1, "{report:#}");
    assert_eq!(failed[0][0], "worker-2");
    assert!(!failed[0][1].as_str().unwrap().is_empty());
    assert!(
        stderr.contains("worker-2:"),
        "stderr names the node: {stderr}"
    );
    let (_, report) = c.up(&[]);
    assert_done(&report, &["provision", "etcd", "runtime"]);
    c.ssh_ok(
        "worker-2",
        "systemctl is-active containerd && test -x /opt/cni/bin/bridge",
    );
}
