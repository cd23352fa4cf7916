//! A node's launcher: a small supervisor process (`k8sforge local-node-launcher <node dir>`) that
//! moves itself into the node's cgroup subtree, lifts the nofile limit and runs
//! `systemd-nspawn --boot`, restarting it when the node asked for a reboot (exit 133), a bounded
//! number of times. It runs detached from k8sforge, so nodes outlive the command that made them.

use std::fs;
use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::cgroups;
use super::node::{LaunchSpec, NodeDir};

/// nspawn's exit status when the container's systemd asked for a reboot.
const REBOOT_EXIT: i32 = 133;

fn say(msg: &str) {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    // stdout is the node's console log.
    let mut out = std::io::stdout();
    let _ = writeln!(out, "[launcher {now}] {msg}");
    let _ = out.flush();
}

/// Run the launcher for the node in `dir`; returns the process exit code.
pub fn run(dir: &Path) -> i32 {
    let nd = NodeDir::new(dir.to_path_buf());
    let spec: LaunchSpec = match fs::read(nd.spec())
        .map_err(|e| e.to_string())
        .and_then(|b| serde_json::from_slice(&b).map_err(|e| e.to_string()))
    {
        Ok(s) => s,
        Err(e) => {
            say(&format!("cannot read {}: {e}", nd.spec().display()));
            return 2;
        }
    };
    let _ = fs::write(nd.launcher_pid(), format!("{}\n", std::process::id()));
    let parts: Vec<&str> = spec.cgroup.iter().map(String::as_str).collect();
    let (leaves, problems) = cgroups::enter(&cgroups::own_bases(), &parts, std::process::id());
    for p in problems {
        say(&p);
    }
    let list: String = leaves
        .iter()
        .map(|l| format!("{}\n", l.display()))
        .collect();
    let _ = fs::write(nd.cgroups(), list);
    raise_nofile();

    let mut reboots = 0;
    loop {
        say(&format!("starting {}", spec.machine));
        let mut command = Command::new("systemd-nspawn");
        command
            .env("SYSTEMD_NSPAWN_API_VFS_WRITABLE", &spec.api_vfs_writable)
            .args(nspawn_args(&spec))
            .stdin(Stdio::null());
        let mut child = match command.spawn() {
            Ok(c) => c,
            Err(e) => {
                say(&format!("cannot run systemd-nspawn: {e}"));
                return 2;
            }
        };
        let _ = fs::write(nd.nspawn_pid(), format!("{}\n", child.id()));
        let status = child.wait();
        let code = status.as_ref().ok().and_then(|s| s.code());
        say(&format!("systemd-nspawn exited: {status:?}"));
        if nd.stop_flag().exists() {
            break;
        }
        // Honour a few reboots, never loop forever.
        if code == Some(REBOOT_EXIT) && reboots < spec.max_reboots {
            reboots += 1;
            std::thread::sleep(Duration::from_secs(1));
            continue;
        }
        break;
    }
    let _ = fs::remove_file(nd.nspawn_pid());
    0
}

/// The systemd-nspawn command line for a node (testbed pitfalls 1, 4, 7, 9).
pub fn nspawn_args(spec: &LaunchSpec) -> Vec<String> {
    let mut a = vec![
        "--quiet".to_string(),
        "--boot".to_string(),
        // No machined or systemd on the host: no registration, stay in our own cgroup.
        "--register=no".to_string(),
        "--keep-unit".to_string(),
        // The console is drained into the console log, so a chatty PID 1 never blocks on it.
        "--console=read-only".to_string(),
        format!("--machine={}", spec.machine),
        format!("--uuid={}", spec.uuid),
        format!("--directory={}", spec.root.display()),
        format!("--network-namespace-path={}", spec.netns.display()),
        "--capability=all".to_string(),
        // runc creates a session keyring for every container.
        "--system-call-filter=add_key keyctl request_key".to_string(),
        "--resolv-conf=off".to_string(),
        "--timezone=off".to_string(),
        "--link-journal=no".to_string(),
    ];
    for (host, inside) in &spec.binds {
        a.push(format!("--bind={}:{inside}", host.display()));
    }
    a
}

/// Nodes run many file descriptors; the hard limit may be capped (and root may not raise it),
/// so take whatever hard limit there is as the soft one.
fn raise_nofile() {
    // SAFETY: plain getrlimit/setrlimit on a local struct.
    unsafe {
        let mut lim = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) != 0 {
            return;
        }
        let want = libc::rlimit {
            rlim_cur: 1 << 20,
            rlim_max: 1 << 20,
        };
        if libc::setrlimit(libc::RLIMIT_NOFILE, &want) == 0 {
            return;
        }
        lim.rlim_cur = lim.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::path::PathBuf;

    #[test]
    fn nspawn_flags_carry_the_testbed_fixes() {
        let spec = LaunchSpec {
            machine: "worker-1".into(),
            uuid: "01234567-89ab-4def-8123-456789abcdef".into(),
            root: PathBuf::from("/r/root"),
            netns: PathBuf::from("/run/netns/k8sforge.c.worker-1"),
            binds: vec![(PathBuf::from("/r/containerd"), "/var/lib/containerd".into())],
            cgroup: vec!["k8sforge.c".into(), "worker-1".into()],
            api_vfs_writable: "network".into(),
            max_reboots: 5,
        };
        let a = nspawn_args(&spec);
        for want in [
            "--boot",
            "--register=no",
            "--keep-unit",
            "--system-call-filter=add_key keyctl request_key",
            "--network-namespace-path=/run/netns/k8sforge.c.worker-1",
            "--bind=/r/containerd:/var/lib/containerd",
            "--uuid=01234567-89ab-4def-8123-456789abcdef",
        ] {
            assert!(a.iter().any(|x| x == want), "missing {want} in {a:?}");
        }
    }
}
