//! `network.podRouting: vxlan` on real local nodes (systemd-nspawn, real sshd, systemd and
//! kernel VXLAN): `up` builds etcd and the runtime, `up --only network` installs the VXLAN unit,
//! then a CNI pod on each worker pings the other one, and the packets demonstrably crossed the
//! `k8sforge.1` device (its counters grow; the pod CIDR route goes through it, not via the peer's
//! node address). A second `up --only network` changes nothing.
//!
//! Like tests/up_local.rs, the mirror has no Kubernetes binaries, so the full `up` stops at the
//! control plane; the pod network needs none. Own cluster name and its own 198.19.X.0/24 subnet,
//! so it runs beside the other local tests. Needs root, systemd-container, debootstrap and apt
//! access (test mirror, cached under /var/cache/k8sforge-testkit).

mod support;

use std::fs;
use std::process::{Command, Output};

use k8sforge::render::routes::{vxlan_mac, VXLAN_DEV};
use k8sforge_testkit::mirror;

const BIN: &str = env!("CARGO_BIN_EXE_k8sforge");

struct Cluster {
    home: tempfile::TempDir,
    mirror: String,
    name: String,
    cidr: String,
    _subnet_lock: fs::File,
}

impl Cluster {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.env("K8SFORGE_HOME", self.home.path())
            .arg(args[0])
            .args([
                "--profile",
                "local-3",
                "--set",
                &format!("name={}", self.name),
                "--set",
                &format!("network.nodeCIDR={}", self.cidr),
                "--set",
                "network.podRouting=vxlan",
            ])
            .args(&args[1..]);
        c
    }

    fn up(&self, extra: &[&str]) -> (Output, serde_json::Value) {
        let mut args = vec![
            "up",
            "--mirror",
            &self.mirror,
            "--trust-mirror-checksums",
            "-o",
            "json",
        ];
        args.extend_from_slice(extra);
        let out = self.cmd(&args).output().unwrap();
        let report = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        (out, report)
    }

    fn ssh_ok(&self, node: &str, script: &str) -> String {
        let out = self.cmd(&["ssh", node, "--", script]).output().unwrap();
        assert!(
            out.status.success(),
            "on {node}: {script}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// (TX, RX) packets of the VXLAN device on `node`.
    fn vxlan_packets(&self, node: &str) -> (u64, u64) {
        let out = self.ssh_ok(node, &format!("ip -s -j link show {VXLAN_DEV}"));
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let stats = &v[0]["stats64"];
        (
            stats["tx"]["packets"].as_u64().unwrap(),
            stats["rx"]["packets"].as_u64().unwrap(),
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.cmd(&["teardown"]).output();
    }
}

fn phase<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["phases"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["phase"] == name))
        .unwrap_or_else(|| panic!("no phase {name} in {report:#}"))
}

/// A network namespace on `node` with the CNI bridge plugin and the node's CNI config; returns
/// the pod address.
fn cni_pod(c: &Cluster, node: &str) -> String {
    let out = c.ssh_ok(
        node,
        "ip netns del tpod 2>/dev/null; ip netns add tpod && \
         CNI_COMMAND=ADD CNI_CONTAINERID=tpod CNI_NETNS=/run/netns/tpod CNI_IFNAME=eth0 CNI_PATH=/opt/cni/bin \
         /opt/cni/bin/bridge < /etc/cni/net.d/10-bridge.conf",
    );
    let v: serde_json::Value =
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{node}: CNI result {out}: {e}"));
    let addr = v["ips"][0]["address"]
        .as_str()
        .unwrap_or_else(|| panic!("{node}: no address in {v}"));
    addr.split('/').next().unwrap().to_string()
}

#[test]
fn vxlan_pod_network_carries_pod_traffic_between_local_nodes() {
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test boots systemd-nspawn nodes: run as root"
    );
    let m = mirror::build(&mirror::default_cache_dir()).expect("test mirror");
    let (x, lock) = support::subnet::reserve_subnet();
    let c = Cluster {
        home: tempfile::tempdir().unwrap(),
        mirror: m.root.display().to_string(),
        name: format!("vxl-{x}"),
        cidr: format!("198.19.{x}.0/24"),
        _subnet_lock: lock,
    };
    let _ = c.cmd(&["teardown"]).output();

    // 1. Everything before the control plane, then the pod network alone.
    let (out, report) = c.up(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for p in ["provision", "pki", "etcd", "runtime"] {
        assert_eq!(phase(&report, p)["outcome"], "done", "{p}: {stderr}");
    }
    let (out, report) = c.up(&["--only", "network"]);
    assert_eq!(
        phase(&report, "network")["outcome"],
        "done",
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // 2. The device on worker-1: VXLAN with its own address and MAC, the MTU, the peers.
    let state: serde_json::Value =
        serde_json::from_slice(&fs::read(c.home.path().join(&c.name).join("state.json")).unwrap())
            .unwrap();
    let cidr_of =
        |n: &str| -> ipnet::Ipv4Net { state["pod_cidrs"][n].as_str().unwrap().parse().unwrap() };
    let ip_of = |i: u8| -> std::net::Ipv4Addr { format!("198.19.{x}.{i}").parse().unwrap() };
    let (w1_ip, w2_ip) = (ip_of(12), ip_of(13));
    let link = c.ssh_ok("worker-1", &format!("ip -d link show {VXLAN_DEV}"));
    assert!(
        link.contains(&format!("vxlan id 1 local {w1_ip} "))
            && link.contains("dstport 4789")
            && link.contains("nolearning")
            && link.contains("mtu 1450")
            && link.contains(&vxlan_mac(w1_ip)),
        "{link}"
    );
    let fdb = c.ssh_ok("worker-1", &format!("bridge fdb show dev {VXLAN_DEV}"));
    assert!(
        fdb.contains(&format!("{} dst {w2_ip} self permanent", vxlan_mac(w2_ip))),
        "{fdb}"
    );
    // The route to worker-2's pods goes into the tunnel; no host route via its node address.
    let w2_pods = cidr_of("worker-2");
    let routes = c.ssh_ok("worker-1", "ip -4 route show");
    assert!(
        routes.contains(&format!(
            "{w2_pods} via {} dev {VXLAN_DEV} onlink",
            w2_pods.network()
        )),
        "{routes}"
    );
    assert!(!routes.contains(&format!("via {w2_ip}")), "{routes}");

    // 3. Pod to pod across workers, through the tunnel (the counters on both ends grow).
    let pod1 = cni_pod(&c, "worker-1");
    let pod2 = cni_pod(&c, "worker-2");
    assert!(cidr_of("worker-1").contains(&pod1.parse::<std::net::Ipv4Addr>().unwrap()));
    assert!(w2_pods.contains(&pod2.parse::<std::net::Ipv4Addr>().unwrap()));
    let pod_mtu = c.ssh_ok("worker-1", "ip netns exec tpod cat /sys/class/net/eth0/mtu");
    assert_eq!(
        pod_mtu.trim(),
        "1450",
        "the CNI bridge gives pods the VXLAN MTU"
    );
    let (tx1, rx1) = c.vxlan_packets("worker-1");
    let (tx2, rx2) = c.vxlan_packets("worker-2");
    c.ssh_ok(
        "worker-1",
        &format!("ip netns exec tpod ping -c 3 -W 3 {pod2}"),
    );
    c.ssh_ok(
        "worker-2",
        &format!("ip netns exec tpod ping -c 3 -W 3 {pod1}"),
    );
    // A full-size packet (MTU 1450 minus IP and ICMP headers) with don't-fragment passes too.
    c.ssh_ok(
        "worker-1",
        &format!("ip netns exec tpod ping -c 1 -W 3 -M do -s 1422 {pod2}"),
    );
    let (tx1b, rx1b) = c.vxlan_packets("worker-1");
    let (tx2b, rx2b) = c.vxlan_packets("worker-2");
    // Each side sent 3 or 4 requests and 3 replies through its device (other traffic may add).
    assert!(
        tx1b - tx1 >= 7 && rx1b - rx1 >= 7,
        "worker-1 {tx1}->{tx1b} tx, {rx1}->{rx1b} rx"
    );
    assert!(
        tx2b - tx2 >= 6 && rx2b - rx2 >= 6,
        "worker-2 {tx2}->{tx2b} tx, {rx2}->{rx2b} rx"
    );

    // 4. The unit comes back after a reboot (enabled), and a re-run changes nothing.
    let enabled = c.ssh_ok(
        "worker-1",
        "systemctl is-enabled k8sforge-pod-routes.service",
    );
    assert_eq!(enabled.trim(), "enabled");
    let (_, report) = c.up(&["--only", "network"]);
    let net = phase(&report, "network");
    assert_eq!(net["outcome"], "done", "{report:#}");
    assert_eq!(net["files_changed"], 0, "{report:#}");
    assert_eq!(net["units_restarted"], 0, "{report:#}");
    // Re-running the script itself (what a reboot does) keeps the same device and entries.
    c.ssh_ok("worker-1", "sh /usr/local/lib/k8sforge/pod-routes.sh");
    let fdb_again = c.ssh_ok("worker-1", &format!("bridge fdb show dev {VXLAN_DEV}"));
    assert_eq!(fdb_again, fdb);
    c.ssh_ok(
        "worker-1",
        &format!("ip netns exec tpod ping -c 1 -W 3 {pod2}"),
    );
}
