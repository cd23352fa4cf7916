//! Small views of the host kernel state the provider owns: processes, mounts, namespaces.

use std::ffi::CString;
use std::fs;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// Whether `pid` runs and is not a zombie. A PID 1 that is not an init system may reap orphans
/// late, so a dead launcher can linger as a zombie (testbed pitfall 10).
pub fn pid_alive(pid: i32) -> bool {
    if pid <= 0 {
        return false;
    }
    let Ok(stat) = fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // The state follows the parenthesised command name, which may itself contain spaces.
    match stat.rfind(')') {
        Some(i) => !matches!(
            stat[i + 1..].split_whitespace().next(),
            Some("Z") | Some("X")
        ),
        None => false,
    }
}

/// Command line of `pid` with NULs turned into spaces ("" when gone).
pub fn cmdline(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            String::from_utf8_lossy(&b)
                .replace('\0', " ")
                .trim_end()
                .to_string()
        })
        .unwrap_or_default()
}

/// Read a pid file; None when missing or garbage.
pub fn read_pid(path: &Path) -> Option<i32> {
    fs::read_to_string(path).ok()?.trim().parse().ok()
}

pub fn kill(pid: i32, signal: i32) {
    if pid > 0 {
        // SAFETY: plain syscall; a stale pid only yields ESRCH.
        unsafe {
            libc::kill(pid, signal);
        }
    }
}

/// Every mount point at or below `prefix` in this mount namespace, deepest first.
pub fn mounts_under(prefix: &Path) -> Vec<PathBuf> {
    let Ok(text) = fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut found: Vec<PathBuf> = text
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mount(m)))
        .filter(|m| m.starts_with(prefix))
        .collect();
    found.sort();
    found.dedup();
    found.reverse();
    found
}

/// mountinfo escapes space, tab, newline and backslash as octal (`\040`).
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn is_mountpoint(path: &Path) -> bool {
    mounts_under(path).iter().any(|m| m == path)
}

/// Unmount `path`; falls back to a lazy unmount when busy. Returns whether it is gone.
pub fn umount(path: &Path) -> bool {
    let Ok(c) = CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    // SAFETY: valid NUL-terminated path.
    let rc = unsafe { libc::umount2(c.as_ptr(), 0) };
    if rc == 0 {
        return true;
    }
    // SAFETY: as above.
    unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) == 0 }
}

/// Pids of processes whose network namespace is the one bound at `netns_file`.
pub fn pids_in_netns(netns_file: &Path) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let Ok(target) = fs::metadata(netns_file) else {
        return Vec::new();
    };
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| {
            fs::metadata(format!("/proc/{pid}/ns/net"))
                .map(|m| m.ino() == target.ino() && m.dev() == target.dev())
                .unwrap_or(false)
        })
        .collect()
}

/// Write a value to a sysctl file under /proc/sys.
pub fn write_sysctl(key: &str, value: &str) -> std::io::Result<()> {
    fs::write(sysctl_path(key), value)
}

pub fn read_sysctl(key: &str) -> Option<String> {
    fs::read_to_string(sysctl_path(key))
        .ok()
        .map(|s| s.trim().to_string())
}

fn sysctl_path(key: &str) -> PathBuf {
    // Dots separate levels; interface names never contain dots here (ours are checked).
    Path::new("/proc/sys").join(key.replace('.', "/"))
}

/// Effective uid is root.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no failure mode.
    unsafe { libc::geteuid() == 0 }
}

/// Filesystem type name of `path` as in /proc/self/mountinfo (for the mount holding it).
pub fn fs_type(path: &Path) -> Option<String> {
    let text = fs::read_to_string("/proc/self/mountinfo").ok()?;
    let mut best: Option<(usize, String)> = None;
    for line in text.lines() {
        let mut halves = line.splitn(2, " - ");
        let left = halves.next()?;
        let right = halves.next().unwrap_or("");
        let Some(mp) = left.split(' ').nth(4) else {
            continue;
        };
        let mp = PathBuf::from(unescape_mount(mp));
        if path.starts_with(&mp) {
            let depth = mp.components().count();
            let fstype = right.split(' ').next().unwrap_or("").to_string();
            if best.as_ref().is_none_or(|(d, _)| depth >= *d) {
                best = Some((depth, fstype));
            }
        }
    }
    best.map(|(_, t)| t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes_are_decoded() {
        assert_eq!(unescape_mount("/a\\040b"), "/a b");
        assert_eq!(unescape_mount("/plain"), "/plain");
        assert_eq!(unescape_mount("/x\\134y"), "/x\\y");
    }

    #[test]
    fn own_process_is_alive_and_pid_zero_is_not() {
        assert!(pid_alive(std::process::id() as i32));
        assert!(!pid_alive(0));
        assert!(!cmdline(std::process::id() as i32).is_empty());
    }

    #[test]
    fn root_filesystem_has_a_type() {
        assert!(fs_type(Path::new("/")).is_some());
    }
}
