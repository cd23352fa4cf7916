//! One node on disk: `<root>/clusters/<cluster>/nodes/<node>/` with its overlay (upper, work,
//! merged root), its ext4-backed `/var/lib/containerd`, console log, pid files and the launch
//! spec the launcher reads.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rand::RngCore;
use serde::{Deserialize, Serialize};

use super::{cmd, sys, LocalError};
use crate::sshkeys;

/// Hidden CLI verb that runs a node's launcher (see `launcher.rs`).
pub const LAUNCHER_VERB: &str = "local-node-launcher";

/// Paths of one node directory.
#[derive(Debug, Clone)]
pub struct NodeDir {
    pub dir: PathBuf,
}

impl NodeDir {
    pub fn new(dir: PathBuf) -> NodeDir {
        NodeDir { dir }
    }
    pub fn upper(&self) -> PathBuf {
        self.dir.join("upper")
    }
    pub fn work(&self) -> PathBuf {
        self.dir.join("work")
    }
    pub fn root(&self) -> PathBuf {
        self.dir.join("root")
    }
    pub fn containerd(&self) -> PathBuf {
        self.dir.join("containerd")
    }
    pub fn console_log(&self) -> PathBuf {
        self.dir.join("console.log")
    }
    pub fn launcher_pid(&self) -> PathBuf {
        self.dir.join("launcher.pid")
    }
    pub fn nspawn_pid(&self) -> PathBuf {
        self.dir.join("nspawn.pid")
    }
    /// Cgroup directories the launcher joined, one per line.
    pub fn cgroups(&self) -> PathBuf {
        self.dir.join("cgroups")
    }
    pub fn spec(&self) -> PathBuf {
        self.dir.join("launch.json")
    }
    /// Present while the node is being stopped: the launcher must not restart it.
    pub fn stop_flag(&self) -> PathBuf {
        self.dir.join("stop")
    }
    /// The host public key as generated, kept outside the node: what gets pinned. The copy in
    /// the node's /etc/ssh can be changed from inside and is never trusted.
    pub fn host_pubkey(&self) -> PathBuf {
        self.dir.join("host_ed25519_key.pub")
    }
    pub fn machine_id(&self) -> PathBuf {
        self.upper().join("etc/machine-id")
    }

    pub fn recorded_cgroups(&self) -> Vec<PathBuf> {
        fs::read_to_string(self.cgroups())
            .map(|s| {
                s.lines()
                    .filter(|l| !l.is_empty())
                    .map(PathBuf::from)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The launcher's pid when it runs (pid file checked against the process's command line).
    pub fn launcher_alive(&self) -> Option<i32> {
        let pid = sys::read_pid(&self.launcher_pid())?;
        let cl = sys::cmdline(pid);
        let dir = self.dir.display().to_string();
        (sys::pid_alive(pid) && cl.contains(LAUNCHER_VERB) && cl.contains(&dir)).then_some(pid)
    }

    pub fn nspawn_alive(&self) -> Option<i32> {
        let pid = sys::read_pid(&self.nspawn_pid())?;
        (sys::pid_alive(pid) && sys::cmdline(pid).contains("systemd-nspawn")).then_some(pid)
    }
}

/// What the launcher needs to start a node (written by the provider, read by the launcher).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct LaunchSpec {
    pub machine: String,
    /// machine-id as a UUID (nspawn's --uuid must match /etc/machine-id).
    pub uuid: String,
    pub root: PathBuf,
    pub netns: PathBuf,
    /// (host dir, path in node)
    pub binds: Vec<(PathBuf, String)>,
    /// Path components of the node's cgroup below the launcher's own cgroup.
    pub cgroup: Vec<String>,
    /// SYSTEMD_NSPAWN_API_VFS_WRITABLE: "network" makes only /proc/sys/net writable.
    pub api_vfs_writable: String,
    pub max_reboots: u32,
}

/// Everything identity-related k8sforge writes into a new node's upper dir.
pub struct Identity {
    pub hostname: String,
    pub hosts: String,
    pub authorized_key: String,
}

/// 128 random bits as systemd formats a machine-id (v4 UUID bits set, like `systemd-id128 new`).
pub fn new_machine_id() -> String {
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    hex::encode(b)
}

/// `0123…` → `01234567-89ab-cdef-…` for nspawn's --uuid.
pub fn machine_id_uuid(id: &str) -> String {
    if id.len() != 32 {
        return id.to_string();
    }
    format!(
        "{}-{}-{}-{}-{}",
        &id[0..8],
        &id[8..12],
        &id[12..16],
        &id[16..20],
        &id[20..32]
    )
}

fn write_mode(path: &Path, content: &[u8], mode: u32) -> Result<(), LocalError> {
    if let Some(parent) = path.parent() {
        fs::create_dir_all(parent).map_err(|e| LocalError::io(parent, e))?;
    }
    crate::fsutil::write_atomic(path, content, mode).map_err(|e| LocalError::io(path, e))
}

fn mkdir_mode(path: &Path, mode: u32) -> Result<(), LocalError> {
    fs::create_dir_all(path).map_err(|e| LocalError::io(path, e))?;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| LocalError::io(path, e))
}

/// Write a fresh node's identity into its upper dir (once; an existing identity is kept).
/// Returns the node's host public key (OpenSSH one line).
pub fn write_identity(nd: &NodeDir, id: &Identity) -> Result<(String, String), LocalError> {
    let upper = nd.upper();
    if let (Ok(pubkey), Ok(mid)) = (
        fs::read_to_string(nd.host_pubkey()),
        fs::read_to_string(nd.machine_id()),
    ) {
        if !mid.trim().is_empty() {
            return Ok((pubkey.trim().to_string(), mid.trim().to_string()));
        }
    }
    mkdir_mode(&upper.join("etc/ssh"), 0o755)?;
    mkdir_mode(&upper.join("root"), 0o700)?;
    mkdir_mode(&upper.join("root/.ssh"), 0o700)?;
    let mid = new_machine_id();
    write_mode(&nd.machine_id(), format!("{mid}\n").as_bytes(), 0o444)?;
    write_mode(
        &upper.join("etc/hostname"),
        format!("{}\n", id.hostname).as_bytes(),
        0o644,
    )?;
    write_mode(&upper.join("etc/hosts"), id.hosts.as_bytes(), 0o644)?;
    write_mode(
        &upper.join("root/.ssh/authorized_keys"),
        format!("{}\n", id.authorized_key.trim()).as_bytes(),
        0o600,
    )?;
    let key = sshkeys::generate(&format!("root@{}", id.hostname))?;
    write_mode(
        &upper.join("etc/ssh/ssh_host_ed25519_key"),
        key.private_openssh.as_bytes(),
        0o600,
    )?;
    let public = format!("{}\n", key.public_openssh);
    write_mode(
        &upper.join("etc/ssh/ssh_host_ed25519_key.pub"),
        public.as_bytes(),
        0o644,
    )?;
    // Last: its presence marks a complete identity.
    write_mode(&nd.host_pubkey(), public.as_bytes(), 0o644)?;
    Ok((key.public_openssh, mid))
}

/// Create the node's directories and mount its overlay root over the shared image.
pub fn mount_root(nd: &NodeDir, image_rootfs: &Path) -> Result<(), LocalError> {
    for d in [nd.upper(), nd.work(), nd.root(), nd.containerd()] {
        fs::create_dir_all(&d).map_err(|e| LocalError::io(&d, e))?;
    }
    let root = nd.root();
    if sys::is_mountpoint(&root) {
        return Ok(());
    }
    let opts = format!(
        "lowerdir={},upperdir={},workdir={}",
        image_rootfs.display(),
        nd.upper().display(),
        nd.work().display()
    );
    let root_s = root.display().to_string();
    cmd::run("mount", &["-t", "overlay", "overlay", "-o", &opts, &root_s])?;
    Ok(())
}

/// Start the node's launcher in its own session, detached from this process, logging to the
/// node's console log. Returns the launcher pid.
pub fn start_launcher(nd: &NodeDir, exe: &Path) -> Result<i32, LocalError> {
    let _ = fs::remove_file(nd.stop_flag());
    let _ = fs::remove_file(nd.launcher_pid());
    let log_path = nd.console_log();
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| LocalError::io(&log_path, e))?;
    let log2 = log.try_clone().map_err(|e| LocalError::io(&log_path, e))?;
    let mut command = Command::new(exe);
    command
        .arg(LAUNCHER_VERB)
        .arg(&nd.dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2)
        .env_remove("RUST_LOG");
    // SAFETY: setsid is async-signal-safe; the launcher must not die with our terminal session.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = command
        .spawn()
        .map_err(|e| LocalError::spawn(&exe.display().to_string(), e))?;
    let pid = child.id() as i32;
    // The child is not waited for: it outlives us and is reaped by PID 1.
    drop(child);
    write_mode(&nd.launcher_pid(), format!("{pid}\n").as_bytes(), 0o644)?;
    Ok(pid)
}

/// Wait until the launcher has joined its cgroups (so teardown can always find the node's
/// processes), or it died.
/// Until the launcher has exec'd, its command line is still ours, so only its exit (it is our
/// child: its pid cannot be reused while unreaped) counts as failure here.
pub fn wait_launcher_ready(nd: &NodeDir, launcher_pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if nd.nspawn_pid().exists() {
            return true;
        }
        if !sys::pid_alive(launcher_pid) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    false
}

/// /etc/hosts for every node of the cluster.
pub fn hosts_file(host_addr: std::net::Ipv4Addr, nodes: &[(String, std::net::Ipv4Addr)]) -> String {
    let mut s = String::from("127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n");
    s.push_str(&format!("{host_addr} k8sforge-host\n"));
    for (name, ip) in nodes {
        s.push_str(&format!("{ip} {name}\n"));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_ids_are_random_v4_and_convert_to_uuids() {
        let a = new_machine_id();
        let b = new_machine_id();
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a
            .bytes()
            .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()));
        let u = machine_id_uuid(&a);
        assert_eq!(u.len(), 36);
        assert_eq!(u.replace('-', ""), a);
        assert_eq!(&u[14..15], "4");
    }

    #[test]
    fn identity_is_written_once_with_private_modes() {
        let d = tempfile::tempdir().unwrap();
        let nd = NodeDir::new(d.path().join("n1"));
        let id = Identity {
            hostname: "worker-1".into(),
            hosts: hosts_file(
                "198.18.0.1".parse().unwrap(),
                &[("worker-1".into(), "198.18.0.11".parse().unwrap())],
            ),
            authorized_key: "ssh-ed25519 AAAA k8sforge@c".into(),
        };
        let (k1, m1) = write_identity(&nd, &id).unwrap();
        // A key changed inside the node does not change what k8sforge pins.
        fs::write(
            nd.upper().join("etc/ssh/ssh_host_ed25519_key.pub"),
            "ssh-ed25519 AAAAother root@evil\n",
        )
        .unwrap();
        let (k2, m2) = write_identity(&nd, &id).unwrap();
        assert_eq!((k1.clone(), m1.clone()), (k2, m2), "identity is kept");
        assert!(k1.starts_with("ssh-ed25519 "));
        let mode = |p: &str| {
            fs::metadata(nd.upper().join(p))
                .unwrap()
                .permissions()
                .mode()
                & 0o777
        };
        assert_eq!(mode("etc/ssh/ssh_host_ed25519_key"), 0o600);
        assert_eq!(mode("root/.ssh"), 0o700);
        assert_eq!(mode("root/.ssh/authorized_keys"), 0o600);
        let hosts = fs::read_to_string(nd.upper().join("etc/hosts")).unwrap();
        assert!(hosts.contains("198.18.0.11 worker-1"));
        assert_eq!(
            fs::read_to_string(nd.upper().join("etc/hostname")).unwrap(),
            "worker-1\n"
        );
    }
}
