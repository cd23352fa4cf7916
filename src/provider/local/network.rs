//! Host side of the node network: one bridge per cluster holding the node subnet's first address,
//! and per node a network namespace with a veth whose host end is on the bridge.
//!
//! The host never forwards node traffic: `forwarding=0` on the bridge and no NAT, so nodes reach
//! each other and the host, nothing else (testbed README).

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use ipnet::Ipv4Net;
use sha2::{Digest, Sha256};

use super::{cmd, sys, LocalError};

/// Where `ip netns` binds namespaces.
pub const NETNS_DIR: &str = "/run/netns";
/// Linux interface names are at most 15 bytes.
const IFNAMSIZ_MAX: usize = 15;

/// Short stable tag of a cluster for interface names (which are too short for the name).
pub fn cluster_tag(cluster: &str) -> String {
    hex::encode(&Sha256::digest(cluster.as_bytes())[..3])
}

/// Default bridge name: `kf<tag>-br`.
pub fn default_bridge(cluster: &str) -> String {
    format!("kf{}-br", cluster_tag(cluster))
}

/// Prefix of a cluster's veth host ends: `kf<tag>-`.
pub fn veth_prefix(cluster: &str) -> String {
    format!("kf{}-", cluster_tag(cluster))
}

/// Host end of a node's veth: `kf<tag>-<host offset in the subnet>`, unique per address.
pub fn veth_name(cluster: &str, subnet: Ipv4Net, ip: Ipv4Addr) -> String {
    let offset = u32::from(ip).wrapping_sub(u32::from(subnet.network()));
    format!("{}{offset}", veth_prefix(cluster))
}

/// Prefix of a cluster's namespace names: `k8sforge.<cluster>.` (no dots in cluster names).
pub fn netns_prefix(cluster: &str) -> String {
    format!("k8sforge.{cluster}.")
}

pub fn netns_name(cluster: &str, node: &str) -> String {
    format!("{}{node}", netns_prefix(cluster))
}

pub fn netns_path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// A valid interface name (length and characters), for names from the profile.
pub fn check_ifname(name: &str) -> Result<(), String> {
    if name.is_empty()
        || name.len() > IFNAMSIZ_MAX
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(format!(
            "`{name}` is not a usable interface name (1-{IFNAMSIZ_MAX} characters of a-z, 0-9, - and _)"
        ));
    }
    Ok(())
}

pub fn link_exists(name: &str) -> bool {
    Path::new("/sys/class/net").join(name).exists()
}

/// Every interface name on the host.
pub fn links() -> Vec<String> {
    fs::read_dir("/sys/class/net")
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default()
}

/// Raise the host limits nodes need and create the bridge with the host address.
pub fn host_setup(bridge: &str, host_addr: Ipv4Addr, subnet: Ipv4Net) -> Result<(), LocalError> {
    // Boots stall near 21 nodes at the default of 128 inotify instances (testbed pitfall 2).
    raise_sysctl("fs.inotify.max_user_instances", 8192)?;
    raise_sysctl("fs.inotify.max_user_watches", 1_048_576)?;
    if !link_exists(bridge) {
        cmd::run("ip", &["link", "add", bridge, "type", "bridge"])?;
    }
    let cidr = format!("{host_addr}/{}", subnet.prefix_len());
    let addrs = cmd::run("ip", &["-4", "-o", "addr", "show", "dev", bridge])?;
    if !addrs.split_whitespace().any(|w| w == cidr) {
        cmd::run("ip", &["addr", "add", &cidr, "dev", bridge])?;
    }
    cmd::run("ip", &["link", "set", bridge, "up"])?;
    ensure_no_forwarding(bridge)
}

/// Keep the host from routing anything that arrives on the bridge (a global `ip_forward=1`
/// resets every interface to 1, so this is re-applied on every provision).
pub fn ensure_no_forwarding(bridge: &str) -> Result<(), LocalError> {
    let key = format!("net/ipv4/conf/{bridge}/forwarding");
    let path = Path::new("/proc/sys").join(&key);
    fs::write(&path, "0").map_err(|e| LocalError::io(&path, e))?;
    // Nodes have no routable IPv6, but keep the bridge out of IPv6 routing too where it exists.
    let v6 = Path::new("/proc/sys/net/ipv6/conf")
        .join(bridge)
        .join("forwarding");
    if v6.exists() {
        fs::write(&v6, "0").map_err(|e| LocalError::io(&v6, e))?;
    }
    match fs::read_to_string(&path) {
        Ok(v) if v.trim() == "0" => Ok(()),
        _ => Err(LocalError::Preflight(format!(
            "could not turn off forwarding on {bridge} ({}); refusing to run nodes that could reach other networks",
            path.display()
        ))),
    }
}

fn raise_sysctl(key: &str, min: u64) -> Result<(), LocalError> {
    let cur: u64 = sys::read_sysctl(key)
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    if cur < min {
        sys::write_sysctl(key, &min.to_string())
            .map_err(|e| LocalError::io(Path::new(&format!("/proc/sys/{key}")), e))?;
    }
    Ok(())
}

/// One node's namespace and veth.
pub struct NodeNet<'a> {
    pub netns: &'a str,
    pub veth: &'a str,
    pub bridge: &'a str,
    pub ip: Ipv4Addr,
    pub subnet: Ipv4Net,
    pub gateway: Ipv4Addr,
}

/// Create the node's namespace, veth pair (`eth0` inside) and default route via the host.
pub fn node_setup(n: &NodeNet<'_>) -> Result<(), LocalError> {
    if !netns_path(n.netns).exists() {
        cmd::run("ip", &["netns", "add", n.netns])?;
    }
    if !link_exists(n.veth) {
        cmd::run(
            "ip",
            &[
                "link", "add", n.veth, "type", "veth", "peer", "name", "eth0", "netns", n.netns,
            ],
        )?;
    }
    cmd::run("ip", &["link", "set", n.veth, "master", n.bridge, "up"])?;
    let cidr = format!("{}/{}", n.ip, n.subnet.prefix_len());
    let gw = n.gateway.to_string();
    let batch = [
        vec!["link", "set", "lo", "up"],
        vec!["addr", "replace", &cidr, "dev", "eth0"],
        vec!["link", "set", "eth0", "up"],
        // Kubernetes components want a default route; the host does not forward it anywhere.
        vec!["route", "replace", "default", "via", &gw],
    ];
    for args in batch {
        let mut full = vec!["-n", n.netns];
        full.extend(args);
        cmd::run("ip", &full)?;
    }
    Ok(())
}

/// Remove a namespace: kill what still runs in it, then unbind it. Returns whether it existed.
pub fn remove_netns(name: &str) -> bool {
    let path = netns_path(name);
    if !path.exists() {
        return false;
    }
    for pid in sys::pids_in_netns(&path) {
        sys::kill(pid, libc::SIGKILL);
    }
    if !cmd::succeeds("ip", &["netns", "del", name]) {
        sys::umount(&path);
        let _ = fs::remove_file(&path);
    }
    true
}

/// Remove a link if present. Returns whether it existed.
pub fn remove_link(name: &str) -> bool {
    if !link_exists(name) {
        return false;
    }
    cmd::succeeds("ip", &["link", "del", name]);
    true
}

/// Namespace names below `prefix`.
pub fn netns_with_prefix(prefix: &str) -> Vec<String> {
    fs::read_dir(NETNS_DIR)
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .filter(|n| n.starts_with(prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// `ip netns add` turns /run/netns into a shared bind mount; drop it when nobody uses it.
pub fn release_netns_dir() {
    let dir = Path::new(NETNS_DIR);
    let empty = fs::read_dir(dir)
        .map(|mut rd| rd.next().is_none())
        .unwrap_or(false);
    if empty {
        if sys::is_mountpoint(dir) {
            sys::umount(dir);
        }
        let _ = fs::remove_dir(dir);
    }
}

/// Interfaces other than `bridge` holding an address inside `subnet` (they would make the host's
/// routes to the nodes ambiguous).
pub fn subnet_conflicts(bridge: &str, subnet: Ipv4Net) -> Result<Vec<String>, LocalError> {
    let out = cmd::run("ip", &["-4", "-o", "addr", "show"])?;
    let mut found = Vec::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        let ifname = f[1];
        if ifname == bridge {
            continue;
        }
        if let Ok(net) = f[3].parse::<Ipv4Net>() {
            if subnet.contains(&net.addr()) || net.contains(&subnet.network()) {
                found.push(format!("{ifname} ({})", f[3]));
            }
        }
    }
    Ok(found)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interface_names_fit_and_are_per_cluster() {
        let subnet: Ipv4Net = "198.18.0.0/16".parse().unwrap();
        let v = veth_name(
            "a-very-long-cluster-name-30-ch",
            subnet,
            "198.18.255.254".parse().unwrap(),
        );
        assert!(v.len() <= IFNAMSIZ_MAX, "{v}");
        assert!(check_ifname(&v).is_ok());
        assert!(check_ifname(&default_bridge("x")).is_ok());
        assert_ne!(default_bridge("a"), default_bridge("b"));
        let s24: Ipv4Net = "198.18.0.0/24".parse().unwrap();
        assert_eq!(
            veth_name("c", s24, "198.18.0.11".parse().unwrap()),
            format!("kf{}-11", cluster_tag("c"))
        );
        assert!(check_ifname("way-too-long-interface").is_err());
        assert!(check_ifname("bad name").is_err());
    }

    #[test]
    fn netns_prefix_is_unambiguous_between_clusters() {
        // cluster "a" must not claim the namespaces of cluster "a-b".
        let ns = netns_name("a-b", "worker-1");
        assert!(!ns.starts_with(&netns_prefix("a")));
        assert!(ns.starts_with(&netns_prefix("a-b")));
    }
}
