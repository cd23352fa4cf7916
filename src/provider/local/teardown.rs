//! Removing nodes and everything around them: processes (by cgroup subtree and by network
//! namespace), mounts, veths, namespaces, cgroup directories, node directories and the bridge.
//! Works from what is on disk and in the kernel, so it also cleans up after a crash (a SIGKILLed
//! launcher or k8sforge).

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::node::NodeDir;
use super::{cgroups, network, sys, LocalError, NodeRecord};

/// Every removed (or, in a dry run, existing) resource: (kind, id).
pub type Removed = Vec<(String, String)>;

/// Ask nodes to power off (stop flag + SIGTERM to nspawn, which makes the node's systemd shut
/// down) and wait up to `timeout` for their launchers to exit.
pub fn stop_gracefully(nodes: &[NodeDir], timeout: Duration) {
    if timeout.is_zero() {
        for nd in nodes {
            let _ = fs::write(nd.stop_flag(), "");
        }
        return;
    }
    for nd in nodes {
        let _ = fs::write(nd.stop_flag(), "");
        if let Some(pid) = nd.nspawn_alive() {
            sys::kill(pid, libc::SIGTERM);
        }
    }
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline && nodes.iter().any(|nd| nd.launcher_alive().is_some()) {
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Remove one node completely. The node should be stopped first; whatever still runs is killed.
pub fn remove_node(
    nd: &NodeDir,
    rec: Option<&NodeRecord>,
    out: &mut Removed,
) -> Result<(), LocalError> {
    let _ = fs::write(nd.stop_flag(), "");
    let cgroup_dirs = nd.recorded_cgroups();
    for d in &cgroup_dirs {
        cgroups::kill_tree(d, Duration::from_secs(10));
    }
    if let Some(pid) = nd.launcher_alive() {
        sys::kill(pid, libc::SIGKILL);
    }
    if let Some(rec) = rec {
        let ns = network::netns_path(&rec.netns);
        for pid in sys::pids_in_netns(&ns) {
            sys::kill(pid, libc::SIGKILL);
        }
    }
    for m in sys::mounts_under(&nd.dir) {
        if sys::umount(&m) {
            out.push(("mount".into(), m.display().to_string()));
        }
    }
    if let Some(rec) = rec {
        if network::remove_link(&rec.veth) {
            out.push(("veth".into(), rec.veth.clone()));
        }
        if network::remove_netns(&rec.netns) {
            out.push(("netns".into(), rec.netns.clone()));
        }
    }
    for d in &cgroup_dirs {
        if d.is_dir() {
            cgroups::remove_tree(d).map_err(LocalError::Busy)?;
            out.push(("cgroup".into(), d.display().to_string()));
        }
    }
    if let Some(m) = sys::mounts_under(&nd.dir).first() {
        return Err(LocalError::Busy(format!(
            "{} is still mounted; not deleting {}",
            m.display(),
            nd.dir.display()
        )));
    }
    if nd.dir.exists() {
        fs::remove_dir_all(&nd.dir).map_err(|e| LocalError::io(&nd.dir, e))?;
        let name = nd
            .dir
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        out.push(("node".into(), name));
    }
    Ok(())
}

/// What belongs to one cluster on this host.
pub struct ClusterScope<'a> {
    pub cluster: &'a str,
    /// `<root>/clusters/<cluster>`.
    pub runtime_dir: &'a Path,
    pub bridge: &'a str,
}

impl ClusterScope<'_> {
    pub fn nodes_dir(&self) -> PathBuf {
        self.runtime_dir.join("nodes")
    }

    /// Node directories on disk.
    pub fn node_dirs(&self) -> Vec<NodeDir> {
        let mut v: Vec<NodeDir> = fs::read_dir(self.nodes_dir())
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                    .map(|e| NodeDir::new(e.path()))
                    .collect()
            })
            .unwrap_or_default();
        v.sort_by(|a, b| a.dir.cmp(&b.dir));
        v
    }

    fn cgroup_subtrees(&self) -> Vec<PathBuf> {
        let name = cgroups::subtree_name(self.cluster);
        let mut dirs = cgroups::find_named(&name, 6);
        for nd in self.node_dirs() {
            for leaf in nd.recorded_cgroups() {
                if let Some(parent) = leaf.parent() {
                    if parent.file_name().and_then(|n| n.to_str()) == Some(name.as_str()) {
                        dirs.push(parent.to_path_buf());
                    }
                }
            }
        }
        dirs.sort();
        dirs.dedup();
        dirs
    }

    /// Everything that exists now (for dry runs and for the leftover check).
    pub fn inventory(&self) -> Removed {
        let mut v = Removed::new();
        for nd in self.node_dirs() {
            v.push((
                "node".into(),
                nd.dir
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default(),
            ));
        }
        let mut pids = std::collections::BTreeSet::new();
        for d in self.cgroup_subtrees() {
            pids.extend(
                cgroups::procs_below(&d)
                    .into_iter()
                    .filter(|p| sys::pid_alive(*p)),
            );
            v.push(("cgroup".into(), d.display().to_string()));
        }
        for p in pids {
            let cl = sys::cmdline(p);
            let short: String = cl.chars().take(60).collect();
            v.push(("process".into(), format!("{p} {short}")));
        }
        for m in sys::mounts_under(self.runtime_dir) {
            v.push(("mount".into(), m.display().to_string()));
        }
        for ns in network::netns_with_prefix(&network::netns_prefix(self.cluster)) {
            v.push(("netns".into(), ns));
        }
        let prefix = network::veth_prefix(self.cluster);
        for l in network::links() {
            if l.starts_with(&prefix) && l != self.bridge {
                v.push(("veth".into(), l));
            }
        }
        if network::link_exists(self.bridge) {
            v.push(("bridge".into(), self.bridge.to_string()));
        }
        v
    }

    /// Remove every node and the cluster's network; verify nothing is left.
    pub fn remove_all(&self, stop_timeout: Duration) -> Result<Removed, LocalError> {
        let mut out = Removed::new();
        let nodes = self.node_dirs();
        stop_gracefully(&nodes, stop_timeout);
        // Kill whatever is left anywhere in the cluster's cgroup subtrees, crashed runs included.
        for d in self.cgroup_subtrees() {
            let left = cgroups::kill_tree(&d, Duration::from_secs(10));
            if !left.is_empty() {
                return Err(LocalError::Busy(format!(
                    "processes {left:?} survive SIGKILL in {}",
                    d.display()
                )));
            }
        }
        for nd in &nodes {
            let rec = NodeRecord::load(nd);
            remove_node(nd, rec.as_ref(), &mut out)?;
        }
        // Leftovers without a node directory (a crash between steps).
        for ns in network::netns_with_prefix(&network::netns_prefix(self.cluster)) {
            if network::remove_netns(&ns) {
                out.push(("netns".into(), ns));
            }
        }
        let prefix = network::veth_prefix(self.cluster);
        for l in network::links() {
            if l.starts_with(&prefix) && l != self.bridge && network::remove_link(&l) {
                out.push(("veth".into(), l));
            }
        }
        if network::remove_link(self.bridge) {
            out.push(("bridge".into(), self.bridge.to_string()));
        }
        for m in sys::mounts_under(self.runtime_dir) {
            if sys::umount(&m) {
                out.push(("mount".into(), m.display().to_string()));
            }
        }
        for d in self.cgroup_subtrees() {
            cgroups::kill_tree(&d, Duration::from_secs(5));
            cgroups::remove_tree(&d).map_err(LocalError::Busy)?;
            out.push(("cgroup".into(), d.display().to_string()));
        }
        if sys::mounts_under(self.runtime_dir).is_empty() && self.runtime_dir.exists() {
            fs::remove_dir_all(self.runtime_dir)
                .map_err(|e| LocalError::io(self.runtime_dir, e))?;
        }
        network::release_netns_dir();
        let left = self.inventory();
        if !left.is_empty() {
            return Err(LocalError::Busy(format!(
                "teardown left resources behind: {}",
                left.iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        Ok(out)
    }
}
