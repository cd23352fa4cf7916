//! Pod routes for the host-routes model (local nodes, same-subnet cloud nodes): every node routes
//! each other node's pod CIDR via that node's address. The routes live in a oneshot unit so they
//! come back after a reboot, and the unit file changes (and re-runs) only when the set changes.

use crate::inventory::{Inventory, Node};

use super::bundle::BundleFile;

pub const ROUTES_SCRIPT: &str = "/usr/local/lib/k8sforge/pod-routes.sh";
pub const ROUTES_UNIT: &str = "k8sforge-pod-routes.service";

/// The script and unit that install `node`'s routes to every other node's pod CIDR.
pub fn pod_route_files(inv: &Inventory, node: &Node) -> Vec<BundleFile> {
    PodRoutes::new(inv).files(node)
}

const SCRIPT_HEAD: &str = "#!/bin/sh\n# Routes to the other nodes' pod CIDRs, written by k8sforge. `replace` makes re-runs idempotent.\nset -eu\n";

/// Every node's route line, formatted once per render: with N nodes each script has N-1 lines,
/// so formatting per node would cost N² address formats (a million at 1000 nodes).
pub struct PodRoutes {
    /// (node name, `ip route replace ...` line), in inventory order.
    lines: Vec<(String, String)>,
    total: usize,
}

impl PodRoutes {
    pub fn new(inv: &Inventory) -> PodRoutes {
        let lines: Vec<(String, String)> = inv
            .nodes
            .iter()
            .map(|n| {
                (
                    n.name.clone(),
                    format!(
                        "ip route replace {} via {} # {}\n",
                        n.pod_cidr, n.internal_ip, n.name
                    ),
                )
            })
            .collect();
        let total = lines.iter().map(|(_, l)| l.len()).sum();
        PodRoutes { lines, total }
    }

    /// The script and unit for `node`.
    pub fn files(&self, node: &Node) -> Vec<BundleFile> {
        let mut script = String::with_capacity(SCRIPT_HEAD.len() + self.total);
        script.push_str(SCRIPT_HEAD);
        for (name, line) in &self.lines {
            if *name != node.name {
                script.push_str(line);
            }
        }
        route_files(script)
    }
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
        let files = pod_route_files(&inv, &inv.nodes[0]);
        let script = String::from_utf8(files[0].content.clone()).unwrap();
        assert!(script.contains("ip route replace 10.200.1.0/24 via 198.18.0.12 # worker-1"));
        assert!(script.contains("ip route replace 10.200.2.0/24 via 198.18.0.13 # worker-2"));
        assert!(
            !script.contains("10.200.0.0/24"),
            "a node never routes its own pod CIDR"
        );
    }
}
