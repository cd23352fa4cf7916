//! Pod routes between nodes, in a oneshot unit so they come back after a reboot; the unit file
//! changes (and re-runs) only when the set changes. Two models, one unit:
//! - host routes (local nodes, same-subnet cloud nodes): every node routes each other node's pod
//!   CIDR via that node's address;
//! - VXLAN (`network.podRouting: vxlan`, the AWS default): one VXLAN device per node, statically
//!   configured like flannel's vxlan backend but without a daemon or learning. Each peer gets a
//!   permanent neighbour (its pod network address → its device MAC), a forwarding entry (MAC →
//!   its node address) and a route (pod CIDR via its pod network address, onlink). Pod packets
//!   then travel between node addresses only, so a cloud's source/destination check passes them.

use std::fmt::Write as _;
use std::net::Ipv4Addr;

use crate::inventory::{Inventory, Node};
use crate::profile::ProviderKind;

use super::bundle::BundleFile;

pub const ROUTES_SCRIPT: &str = "/usr/local/lib/k8sforge/pod-routes.sh";
pub const ROUTES_UNIT: &str = "k8sforge-pod-routes.service";
/// The VXLAN device (flannel names its own `flannel.1`: the suffix is the VNI).
pub const VXLAN_DEV: &str = "k8sforge.1";
pub const VXLAN_VNI: u32 = 1;
/// The IANA VXLAN port.
pub const VXLAN_PORT: u16 = 4789;
/// Outer IPv4 (20) + UDP (8) + VXLAN (8) + inner Ethernet (14) headers.
pub const VXLAN_OVERHEAD: u32 = 50;

/// The pod MTU in VXLAN mode, a rendered constant per provider (the CNI bridge config must
/// carry the same value, and it is rendered, not discovered): AWS instances in one VPC talk with
/// 9001-byte jumbo frames; local nodes (veth on a host bridge) and unknown static hosts get the
/// Ethernet 1500. The script refuses to start on an underlay smaller than this plus the overhead.
pub fn vxlan_mtu(kind: ProviderKind) -> u32 {
    let underlay = match kind {
        ProviderKind::Aws => 9001,
        _ => 1500,
    };
    underlay - VXLAN_OVERHEAD
}

/// The VXLAN device MAC of the node with address `ip`: locally administered (02:), `6b` ('k'),
/// then the four address bytes, so every node derives every peer's MAC with no exchange.
pub fn vxlan_mac(ip: Ipv4Addr) -> String {
    let [a, b, c, d] = ip.octets();
    format!("02:6b:{a:02x}:{b:02x}:{c:02x}:{d:02x}")
}

/// Which model the unit installs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    HostRoutes,
    Vxlan { mtu: u32 },
}

/// The script and unit that install `node`'s routes to every other node's pod CIDR.
pub fn pod_route_files(inv: &Inventory, node: &Node, mode: Mode) -> Vec<BundleFile> {
    PodRoutes::new(inv, mode).files(node)
}

const SCRIPT_HEAD: &str = "#!/bin/sh\n# Routes to the other nodes' pod CIDRs, written by k8sforge. `replace` makes re-runs idempotent.\nset -eu\n";

/// Every node's line, formatted once per render: with N nodes each script has N-1 lines, so
/// formatting per node would cost N² address formats (a million at 1000 nodes).
pub struct PodRoutes {
    mode: Mode,
    /// (node name, its line), in inventory order: an `ip route replace ...` command for host
    /// routes, a `<pod CIDR> <node address> <MAC>` record for VXLAN.
    lines: Vec<(String, String)>,
    total: usize,
}

impl PodRoutes {
    pub fn new(inv: &Inventory, mode: Mode) -> PodRoutes {
        let lines: Vec<(String, String)> = inv
            .nodes
            .iter()
            .map(|n| {
                let line = match mode {
                    Mode::HostRoutes => format!(
                        "ip route replace {} via {} # {}\n",
                        n.pod_cidr, n.internal_ip, n.name
                    ),
                    Mode::Vxlan { .. } => format!(
                        "{} {} {}\n",
                        n.pod_cidr,
                        n.internal_ip,
                        vxlan_mac(n.internal_ip)
                    ),
                };
                (n.name.clone(), line)
            })
            .collect();
        let total = lines.iter().map(|(_, l)| l.len()).sum();
        PodRoutes { mode, lines, total }
    }

    /// The script and unit for `node`.
    pub fn files(&self, node: &Node) -> Vec<BundleFile> {
        let (head, tail) = match self.mode {
            Mode::HostRoutes => (SCRIPT_HEAD.to_string(), String::new()),
            Mode::Vxlan { mtu } => vxlan_head_tail(node, mtu),
        };
        let mut script = String::with_capacity(head.len() + self.total + tail.len());
        script.push_str(&head);
        for (name, line) in &self.lines {
            if *name != node.name {
                script.push_str(line);
            }
        }
        script.push_str(&tail);
        route_files(script)
    }
}

/// The VXLAN script around the peer records: device set-up before, the batch apply after.
/// Peers are applied through `ip -batch`/`bridge -batch` (two processes, not three per peer:
/// a thousand peers take well under a second at boot).
fn vxlan_head_tail(node: &Node, mtu: u32) -> (String, String) {
    let ip = node.internal_ip;
    let mac = vxlan_mac(ip);
    let own = node.pod_cidr.network();
    let need = mtu + VXLAN_OVERHEAD;
    let mut head = String::with_capacity(1536);
    // `let _ =`: writing to a String cannot fail.
    let _ = write!(
        head,
        "#!/bin/sh\n\
         # Pod network over VXLAN, written by k8sforge: device {VXLAN_DEV} (VNI {VXLAN_VNI}, UDP {VXLAN_PORT}),\n\
         # one permanent neighbour + forwarding entry + route per peer. `replace` makes re-runs idempotent.\n\
         set -eu\n\
         dev={VXLAN_DEV}\n\
         under=$(ip -o -4 addr show to {ip}/32 | awk '{{print $2; exit}}')\n\
         if [ -z \"$under\" ]; then echo \"k8sforge: no interface has this node's address {ip}\" >&2; exit 1; fi\n\
         if [ \"$(cat /sys/class/net/$under/mtu)\" -lt {need} ]; then\n  \
           echo \"k8sforge: $under has MTU $(cat /sys/class/net/$under/mtu); VXLAN pod MTU {mtu} needs {need}\" >&2; exit 1\n\
         fi\n\
         # A device left with other parameters (e.g. the node's address changed) is made again.\n\
         if ip link show \"$dev\" >/dev/null 2>&1 && ! ip -d link show \"$dev\" | grep -q 'vxlan id {VXLAN_VNI} local {ip} .*dstport {VXLAN_PORT} nolearning'; then\n  \
           ip link del \"$dev\"\n\
         fi\n\
         if ! ip link show \"$dev\" >/dev/null 2>&1; then\n  \
           ip link add \"$dev\" address {mac} mtu {mtu} type vxlan id {VXLAN_VNI} dstport {VXLAN_PORT} local {ip} nolearning\n\
         fi\n\
         ip link set \"$dev\" address {mac} mtu {mtu} up\n\
         # The pod network address (/32): the .1 is the CNI bridge's gateway.\n\
         ip addr replace {own}/32 dev \"$dev\"\n\
         peers() {{ cat <<'EOF'\n"
    );
    let tail = "EOF\n}\n\
         peers | while read -r cidr node mac; do\n  \
           echo \"neigh replace ${cidr%/*} lladdr $mac dev $dev nud permanent\"\n  \
           echo \"route replace $cidr via ${cidr%/*} dev $dev onlink\"\n\
         done | ip -batch -\n\
         peers | while read -r cidr node mac; do\n  \
           echo \"fdb replace $mac dev $dev dst $node self permanent\"\n\
         done | bridge -batch -\n\
         # Entries of nodes no longer in the cluster go (the device is k8sforge's alone).\n\
         list=$(mktemp)\n\
         trap 'rm -f \"$list\"' EXIT\n\
         # `end`: the list is never empty, which the awk NR==FNR idiom needs.\n\
         { peers; echo end; } > \"$list\"\n\
         ip -o -4 route show dev \"$dev\" | awk -v dev=\"$dev\" \\\n  \
           'NR==FNR {want[$1]; next} index($1, \"/\") && !($1 in want) {print \"route del \" $1 \" dev \" dev}' \"$list\" - | ip -batch -\n\
         ip -4 neigh show dev \"$dev\" | awk -v dev=\"$dev\" \\\n  \
           'NR==FNR {split($1, a, \"/\"); want[a[1]]; next} !($1 in want) {print \"neigh del \" $1 \" dev \" dev}' \"$list\" - | ip -batch -\n\
         bridge fdb show dev \"$dev\" | awk -v dev=\"$dev\" \\\n  \
           'NR==FNR {want[$3]; next} $2 == \"dst\" && !($1 in want) {print \"fdb del \" $1 \" dev \" dev}' \"$list\" - | bridge -batch -\n"
        .to_string();
    (head, tail)
}

fn route_files(script: String) -> Vec<BundleFile> {
    let unit = format!(
        "[Unit]\n\
         Description=Routes to the pod CIDRs of the other cluster nodes (k8sforge)\n\
         After=network-online.target\n\
         Wants=network-online.target\n\
         \n\
         [Service]\n\
         Type=oneshot\n\
         RemainAfterExit=yes\n\
         ExecStart=/bin/sh {ROUTES_SCRIPT}\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n"
    );
    vec![
        BundleFile {
            path: ROUTES_SCRIPT.to_string(),
            mode: 0o755,
            owner: "root:root".into(),
            content: script.into_bytes(),
            restarts: vec![ROUTES_UNIT.to_string()],
        },
        BundleFile {
            path: format!("/etc/systemd/system/{ROUTES_UNIT}"),
            mode: 0o644,
            owner: "root:root".into(),
            content: unit.into_bytes(),
            restarts: vec![ROUTES_UNIT.to_string()],
        },
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn each_node_routes_every_other_pod_cidr() {
        let (p, _) = crate::profile::parse(
            crate::profile::builtin::get("local-3").unwrap(),
            "local-3",
            &[],
        )
        .unwrap();
        let inv = crate::inventory::planned(&p, &BTreeMap::new()).unwrap();
        let files = pod_route_files(&inv, &inv.nodes[0], Mode::HostRoutes);
        let script = String::from_utf8(files[0].content.clone()).unwrap();
        assert!(script.contains("ip route replace 10.200.1.0/24 via 198.18.0.12 # worker-1"));
        assert!(script.contains("ip route replace 10.200.2.0/24 via 198.18.0.13 # worker-2"));
        assert!(
            !script.contains("10.200.0.0/24"),
            "a node never routes its own pod CIDR"
        );
    }

    fn local3_inventory(sets: &[String]) -> Inventory {
        let (p, _) = crate::profile::parse(
            crate::profile::builtin::get("local-3").unwrap(),
            "local-3",
            sets,
        )
        .unwrap();
        crate::inventory::planned(&p, &BTreeMap::new()).unwrap()
    }

    fn script_of(files: &[BundleFile]) -> String {
        assert_eq!(files[0].path, ROUTES_SCRIPT);
        String::from_utf8(files[0].content.clone()).unwrap()
    }

    #[test]
    fn vxlan_macs_are_deterministic_and_locally_administered() {
        let mac = vxlan_mac(Ipv4Addr::new(198, 18, 0, 12));
        assert_eq!(mac, "02:6b:c6:12:00:0c");
        assert_eq!(mac, vxlan_mac(Ipv4Addr::new(198, 18, 0, 12)));
        assert_ne!(mac, vxlan_mac(Ipv4Addr::new(198, 18, 0, 13)));
        // Unicast (bit 0 clear), locally administered (bit 1 set).
        let first = u8::from_str_radix(&mac[..2], 16).unwrap();
        assert_eq!(first & 0b11, 0b10);
        assert_eq!(vxlan_mtu(ProviderKind::Local), 1450);
        assert_eq!(vxlan_mtu(ProviderKind::Aws), 8951);
    }

    #[test]
    fn vxlan_unit_has_the_device_and_one_entry_per_peer() {
        let inv = local3_inventory(&["network.podRouting=vxlan".to_string()]);
        let mode = Mode::Vxlan { mtu: 1450 };
        let files = pod_route_files(&inv, &inv.nodes[1], mode);
        assert_eq!(files.len(), 2);
        assert!(files[0].restarts.contains(&ROUTES_UNIT.to_string()));
        let script = script_of(&files);
        // worker-1 = 198.18.0.12 with 10.200.1.0/24: its own device, MAC, MTU and address.
        assert!(
            script.contains(
                "ip link add \"$dev\" address 02:6b:c6:12:00:0c mtu 1450 type vxlan id 1 dstport 4789 local 198.18.0.12 nolearning"
            ),
            "{script}"
        );
        assert!(script.contains("ip link set \"$dev\" address 02:6b:c6:12:00:0c mtu 1450 up"));
        assert!(script.contains("ip addr replace 10.200.1.0/32 dev \"$dev\""));
        assert!(script.contains("-lt 1500 ]"), "underlay check: {script}");
        // Exactly the two peers, each with its pod CIDR, node address and derived MAC.
        let records: Vec<&str> = script
            .lines()
            .skip_while(|l| !l.starts_with("peers() {"))
            .skip(1)
            .take_while(|l| *l != "EOF")
            .collect();
        assert_eq!(
            records,
            [
                "10.200.0.0/24 198.18.0.11 02:6b:c6:12:00:0b",
                "10.200.2.0/24 198.18.0.13 02:6b:c6:12:00:0d"
            ]
        );
        // Applied as neighbour + route (ip) and forwarding entry (bridge), all `replace`.
        assert!(
            script.contains("echo \"neigh replace ${cidr%/*} lladdr $mac dev $dev nud permanent\"")
        );
        assert!(script.contains("echo \"route replace $cidr via ${cidr%/*} dev $dev onlink\""));
        assert!(script.contains("echo \"fdb replace $mac dev $dev dst $node self permanent\""));
        // Deterministic: the same inputs give the same bytes (re-running `up` changes nothing).
        assert_eq!(files, pod_route_files(&inv, &inv.nodes[1], mode));
    }

    #[test]
    fn vxlan_script_configures_a_real_device() {
        // The rendered script, run in a network namespace of its own with a dummy underlay
        // holding the node's address: the kernel accepts every command, a second run too.
        if unsafe { libc::geteuid() } != 0 {
            panic!("this test creates a network namespace: run as root");
        }
        let inv = local3_inventory(&["network.podRouting=vxlan".to_string()]);
        let files = pod_route_files(&inv, &inv.nodes[0], Mode::Vxlan { mtu: 1450 });
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pod-routes.sh");
        std::fs::write(&path, &files[0].content).unwrap();
        let ns = format!("k8sforge-vx-{}", std::process::id());
        let sh = |cmd: &str| {
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(cmd)
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{cmd}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let run = format!("ip netns exec {ns} sh {}", path.display());
        let result = std::panic::catch_unwind(|| {
            // A veth pair: this kernel may lack the dummy device type.
            sh(&format!(
                "ip netns add {ns} && ip -n {ns} link add u0 type veth peer name u1 && \
                 ip -n {ns} addr add 198.18.0.11/24 dev u0 && ip -n {ns} link set u0 up"
            ));
            sh(&run);
            sh(&run);
            let routes = sh(&format!("ip -n {ns} route show dev k8sforge.1"));
            let fdb = sh(&format!(
                "ip netns exec {ns} bridge fdb show dev k8sforge.1"
            ));
            let neigh = sh(&format!("ip -n {ns} neigh show dev k8sforge.1"));
            let link = sh(&format!("ip -n {ns} -d link show k8sforge.1"));
            // The same node's script once worker-2 is gone from the inventory.
            let mut smaller = inv.clone();
            smaller.nodes.retain(|n| n.name != "worker-2");
            let files = pod_route_files(&smaller, &smaller.nodes[0], Mode::Vxlan { mtu: 1450 });
            std::fs::write(&path, &files[0].content).unwrap();
            sh(&run);
            let pruned = sh(&format!(
                "ip -n {ns} route show dev k8sforge.1; ip -n {ns} neigh show dev k8sforge.1; \
                 ip netns exec {ns} bridge fdb show dev k8sforge.1"
            ));
            (routes, fdb, neigh, link, pruned)
        });
        let _ = std::process::Command::new("ip")
            .args(["netns", "del", &ns])
            .status();
        let (routes, fdb, neigh, link, pruned) = result.unwrap();
        // worker-2 left the cluster: its route, neighbour and forwarding entry are gone,
        // worker-1's stay.
        assert!(
            !pruned.contains("10.200.2.0") && !pruned.contains("02:6b:c6:12:00:0d"),
            "{pruned}"
        );
        assert!(
            pruned.contains("10.200.1.0/24 via 10.200.1.0")
                && pruned.contains("10.200.1.0 lladdr 02:6b:c6:12:00:0c")
                && pruned.contains("02:6b:c6:12:00:0c dst 198.18.0.12"),
            "{pruned}"
        );
        assert!(
            routes.contains("10.200.1.0/24 via 10.200.1.0 onlink")
                && routes.contains("10.200.2.0/24 via 10.200.2.0 onlink"),
            "{routes}"
        );
        assert_eq!(
            fdb.lines().filter(|l| l.contains(" dst ")).count(),
            2,
            "{fdb}"
        );
        assert!(
            fdb.contains("02:6b:c6:12:00:0c dst 198.18.0.12 self permanent"),
            "{fdb}"
        );
        assert!(
            neigh.contains("10.200.2.0 lladdr 02:6b:c6:12:00:0d PERMANENT"),
            "{neigh}"
        );
        assert!(
            link.contains("mtu 1450") && link.contains("02:6b:c6:12:00:0b"),
            "{link}"
        );
        assert!(link.contains("vxlan id 1 local 198.18.0.11"), "{link}");
    }
}
