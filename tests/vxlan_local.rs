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

use k8sforge::render::routes::{vxlan_mac, VXLAN_DEV};
use k8sforge_testkit::mirror;

use support::local_cluster::{phase, LocalCluster};

/// (TX, RX) packets of the VXLAN device on `node`.
fn vxlan_packets(c: &LocalCluster, node: &str) -> (u64, u64) {
    let out = c.ssh_ok(node, &format!("ip -s -j link show {VXLAN_DEV}"));
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let stats = &v[0]["stats64"];
    (
        stats["tx"]["packets"].as_u64().unwrap(),
        stats["rx"]["packets"].as_u64().unwrap(),
    )
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
    let c = LocalCluster::reserved("vxl", "local-3")
        .with_mirror(&m.root)
        .with_set("network.podRouting=vxlan");
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
        serde_json::from_slice(&fs::read(c.state_dir().join("state.json")).unwrap()).unwrap();
    let cidr_of =
        |n: &str| -> ipnet::Ipv4Net { state["pod_cidrs"][n].as_str().unwrap().parse().unwrap() };
    let net: ipnet::Ipv4Net = c.cidr.parse().unwrap();
    let ip_of = |i: u8| -> std::net::Ipv4Addr {
        std::net::Ipv4Addr::from(u32::from(net.network()) + u32::from(i))
    };
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
    let pod1 = c.cni_pod("worker-1");
    let pod2 = c.cni_pod("worker-2");
    assert!(cidr_of("worker-1").contains(&pod1.parse::<std::net::Ipv4Addr>().unwrap()));
    assert!(w2_pods.contains(&pod2.parse::<std::net::Ipv4Addr>().unwrap()));
    let pod_mtu = c.ssh_ok("worker-1", "ip netns exec tpod cat /sys/class/net/eth0/mtu");
    assert_eq!(
        pod_mtu.trim(),
        "1450",
        "the CNI bridge gives pods the VXLAN MTU"
    );
    let (tx1, rx1) = vxlan_packets(&c, "worker-1");
    let (tx2, rx2) = vxlan_packets(&c, "worker-2");
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
    let (tx1b, rx1b) = vxlan_packets(&c, "worker-1");
    let (tx2b, rx2b) = vxlan_packets(&c, "worker-2");
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
