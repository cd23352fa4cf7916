//! One cgroup subtree per node, `<own cgroup>/k8sforge.<cluster>/<node>` in every hierarchy
//! (testbed pitfall 1): the host's PID 1 may not be systemd, so nobody else makes scopes for us,
//! and teardown kills whatever is left in the subtree, even after a crash.

use std::fs;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use super::sys;

/// Root of the cgroup filesystems.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Name of a cluster's subtree directory in every hierarchy.
pub fn subtree_name(cluster: &str) -> String {
    format!("k8sforge.{cluster}")
}

/// `<mountpoint><own path>` for every cgroup hierarchy mounted on the host, as seen by the
/// calling process.
pub fn own_bases() -> Vec<PathBuf> {
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let own = fs::read_to_string("/proc/self/cgroup").unwrap_or_default();
    bases_from(&mounts, &own)
}

fn bases_from(mounts: &str, own: &str) -> Vec<PathBuf> {
    // (controllers, path) from /proc/self/cgroup: "4:memory:/x", "0::/y".
    let memberships: Vec<(Vec<&str>, &str)> = own
        .lines()
        .filter_map(|l| {
            let mut p = l.splitn(3, ':');
            let _id = p.next()?;
            let ctrl = p.next()?;
            let path = p.next()?;
            Some((ctrl.split(',').filter(|c| !c.is_empty()).collect(), path))
        })
        .collect();
    let mut out = Vec::new();
    for line in mounts.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 4 {
            continue;
        }
        let (mnt, fstype, opts) = (f[1], f[2], f[3]);
        let opts: Vec<&str> = opts.split(',').collect();
        let path = match fstype {
            "cgroup2" => memberships
                .iter()
                .find(|(c, _)| c.is_empty())
                .map(|(_, p)| *p),
            "cgroup" => memberships
                .iter()
                .find(|(c, _)| !c.is_empty() && c.iter().all(|c| opts.contains(c)))
                .map(|(_, p)| *p),
            _ => None,
        };
        if let Some(p) = path {
            let p = p.trim_start_matches('/');
            let base = if p.is_empty() {
                PathBuf::from(mnt)
            } else {
                Path::new(mnt).join(p)
            };
            out.push(base);
        }
    }
    out
}

/// Create `<base>/<parts…>` in every base and move `pid` into the leaf; returns the leaves.
/// cpuset children start empty, so `cpuset.cpus`/`cpuset.mems` are copied down.
pub fn enter(bases: &[PathBuf], parts: &[&str], pid: u32) -> (Vec<PathBuf>, Vec<String>) {
    let mut leaves = Vec::new();
    let mut problems = Vec::new();
    for base in bases {
        let mut dir = base.clone();
        for part in parts {
            dir = dir.join(part);
            if !dir.is_dir() {
                if let Err(e) = fs::create_dir(&dir) {
                    if !dir.is_dir() {
                        problems.push(format!("cannot create {}: {e}", dir.display()));
                    }
                }
                for f in ["cpuset.cpus", "cpuset.mems"] {
                    let child = dir.join(f);
                    if child.exists() {
                        if let Some(parent) = dir.parent() {
                            if let Ok(v) = fs::read_to_string(parent.join(f)) {
                                let _ = fs::write(&child, v.trim());
                            }
                        }
                    }
                }
            }
        }
        if let Err(e) = fs::write(dir.join("cgroup.procs"), pid.to_string()) {
            problems.push(format!("cannot join {}: {e}", dir.display()));
        }
        leaves.push(dir);
    }
    (leaves, problems)
}

/// Every process in `dir` and below.
pub fn procs_below(dir: &Path) -> Vec<i32> {
    let mut pids = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        if let Ok(s) = fs::read_to_string(d.join("cgroup.procs")) {
            pids.extend(s.lines().filter_map(|l| l.trim().parse::<i32>().ok()));
        }
        if let Ok(rd) = fs::read_dir(&d) {
            stack.extend(rd.flatten().filter(|e| e.path().is_dir()).map(|e| e.path()));
        }
    }
    pids.sort_unstable();
    pids.dedup();
    pids
}

/// SIGKILL everything below `dir` until it is empty (or `timeout`); returns what is left.
pub fn kill_tree(dir: &Path, timeout: Duration) -> Vec<i32> {
    let deadline = Instant::now() + timeout;
    loop {
        let pids: Vec<i32> = procs_below(dir)
            .into_iter()
            .filter(|p| sys::pid_alive(*p))
            .collect();
        if pids.is_empty() || Instant::now() >= deadline {
            return pids;
        }
        for p in &pids {
            sys::kill(*p, libc::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Remove `dir` and its sub-cgroups, deepest first (rmdir; cgroup files vanish with the dir).
pub fn remove_tree(dir: &Path) -> Result<(), String> {
    if !dir.is_dir() {
        return Ok(());
    }
    let mut dirs = vec![dir.to_path_buf()];
    let mut i = 0;
    while i < dirs.len() {
        if let Ok(rd) = fs::read_dir(&dirs[i]) {
            let subs: Vec<PathBuf> = rd
                .flatten()
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .map(|e| e.path())
                .collect();
            dirs.extend(subs);
        }
        i += 1;
    }
    let mut last_err = None;
    for d in dirs.iter().rev() {
        // A zombie not yet reaped by a lazy PID 1 keeps a v1 cgroup busy for a moment.
        let mut ok = false;
        for _ in 0..50 {
            match fs::remove_dir(d) {
                Ok(()) => {
                    ok = true;
                    break;
                }
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    ok = true;
                    break;
                }
                Err(e) => {
                    last_err = Some(format!("cannot remove cgroup {}: {e}", d.display()));
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        }
        if !ok {
            return Err(last_err.unwrap_or_default());
        }
    }
    Ok(())
}

/// Every directory named `name` under the cgroup root (depth-limited), wherever a crashed run
/// created it: the subtree sits below the creating process's own cgroup, which may differ.
pub fn find_named(name: &str, max_depth: usize) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![(PathBuf::from(CGROUP_ROOT), 0usize)];
    while let Some((d, depth)) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                continue;
            }
            let p = e.path();
            if e.file_name().to_str() == Some(name) {
                found.push(p);
            } else if depth < max_depth {
                stack.push((p, depth + 1));
            }
        }
    }
    found.sort();
    found
}

/// Bytes charged to a node's memory cgroup (v1 `memory.usage_in_bytes` or v2 `memory.current`).
pub fn memory_usage(leaves: &[PathBuf]) -> Option<u64> {
    leaves.iter().find_map(|d| {
        ["memory.usage_in_bytes", "memory.current"]
            .iter()
            .find_map(|f| fs::read_to_string(d.join(f)).ok()?.trim().parse().ok())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bases_follow_own_membership_per_hierarchy() {
        let mounts = "tmpfs /sys/fs/cgroup tmpfs rw 0 0\n\
            cgroup /sys/fs/cgroup/cpu cgroup rw,relatime,cpu 0 0\n\
            cgroup /sys/fs/cgroup/memory cgroup rw,relatime,memory 0 0\n\
            cgroup /sys/fs/cgroup/systemd cgroup rw,relatime,name=systemd 0 0\n\
            cgroup2 /sys/fs/cgroup/unified cgroup2 rw 0 0\n";
        let own = "9:name=systemd:/\n4:memory:/process_api/abc\n1:cpu:/\n0::/\n";
        let b = bases_from(mounts, own);
        assert_eq!(
            b,
            vec![
                PathBuf::from("/sys/fs/cgroup/cpu"),
                PathBuf::from("/sys/fs/cgroup/memory/process_api/abc"),
                PathBuf::from("/sys/fs/cgroup/systemd"),
                PathBuf::from("/sys/fs/cgroup/unified"),
            ]
        );
    }
}
