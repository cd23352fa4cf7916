//! The node image: a Debian bookworm root filesystem built once with debootstrap and shared
//! read-only by every node (each node has its own overlayfs upper dir over it).
//!
//! The image directory name carries a key over the whole recipe (suite, packages, every file
//! and unit setting below), so a changed recipe builds a new image while running nodes keep
//! theirs. A build goes to a temporary directory and is renamed into place only when complete,
//! so a half-built image never counts as cached.

use std::fs;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

use super::{sys, LocalError};

pub const SUITE: &str = "bookworm";
/// Same set as the testbed rootfs, without etcd/containerd (they come as pinned artifacts).
pub const PACKAGES: &[&str] = &[
    "systemd",
    "systemd-sysv",
    "dbus",
    "openssh-server",
    "iproute2",
    "iputils-ping",
    "procps",
    "ca-certificates",
    "kmod",
    "iptables",
    "conntrack",
    "socat",
    // What a cloud VM image has and k8sforge relies on: nodes fetch artifacts themselves, and a
    // non-root login user elevates with `sudo -n`.
    "curl",
    "sudo",
];
/// Bump when `configure` changes in a way the recipe text does not show.
const FORMAT: u32 = 1;
/// Written last into a finished image directory; holds the key.
const MARKER: &str = ".k8sforge-image";

/// Units that would reach the network, wait on absent hardware or waste memory in a node.
const MASKED_UNITS: &[&str] = &[
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "console-getty.service",
    "getty@tty1.service",
    "systemd-timesyncd.service",
    "systemd-pstore.service",
];

/// cgroup v1 hierarchies a node may see; one instance of the remount unit each (those absent
/// on this host are skipped by the unit's condition).
const CGROUP_V1_HIERARCHIES: &[&str] = &[
    "cpu",
    "cpuacct",
    "cpuset",
    "memory",
    "devices",
    "freezer",
    "blkio",
    "pids",
    "net_cls",
    "net_prio",
    "perf_event",
    "hugetlb",
    "rdma",
    "misc",
    "systemd",
];

const SSHD_CONFIG: &str = "\
# k8sforge: root by key only; each node's host key is generated and pinned by k8sforge
HostKey /etc/ssh/ssh_host_ed25519_key
PermitRootLogin prohibit-password
PasswordAuthentication no
KbdInteractiveAuthentication no
UseDNS no
MaxStartups 200:30:400
MaxSessions 64
";

const JOURNALD: &str = "[Journal]\nStorage=volatile\nRuntimeMaxUse=16M\n";

/// Nobody types on the console; a full console pty would block PID 1 (a reboot that never ends),
/// and a stuck stop job must not hold a reboot for the default 90 s.
const SYSTEM_CONF: &str = "[Manager]\nShowStatus=no\nDefaultTimeoutStopSec=10s\n";

/// nspawn mounts cgroup v1 controller hierarchies read-only; containerd, runc and kubelet need
/// them writable, and a plain remount reports "busy": it takes a bind remount (testbed pitfall 6).
const CGROUP_RW_UNIT: &str = "\
[Unit]
Description=k8sforge: make the cgroup v1 hierarchy %I writable
DefaultDependencies=no
Before=sysinit.target
ConditionPathIsMountPoint=/sys/fs/cgroup/%I

[Service]
Type=oneshot
RemainAfterExit=yes
ExecStart=/bin/mount -o remount,bind,rw /sys/fs/cgroup/%I
";

const RESOLV_CONF: &str =
    "# k8sforge local node: no DNS and no internet; node names are in /etc/hosts\n";
const HOSTS: &str = "127.0.0.1 localhost\n::1 localhost ip6-localhost ip6-loopback\n";

/// One file the recipe writes into the root filesystem.
#[derive(serde::Serialize)]
struct FileEntry {
    path: &'static str,
    mode: u32,
    content: String,
}

#[derive(serde::Serialize)]
struct Recipe {
    format: u32,
    suite: &'static str,
    packages: &'static [&'static str],
    files: Vec<FileEntry>,
    /// (link, target)
    symlinks: Vec<(String, String)>,
    removed: Vec<&'static str>,
}

fn recipe() -> Recipe {
    let f = |path, mode, content: &str| FileEntry {
        path,
        mode,
        content: content.to_string(),
    };
    let mut symlinks: Vec<(String, String)> = vec![(
        "var/lib/dbus/machine-id".to_string(),
        "/etc/machine-id".to_string(),
    )];
    for u in MASKED_UNITS {
        symlinks.push((format!("etc/systemd/system/{u}"), "/dev/null".to_string()));
    }
    for h in CGROUP_V1_HIERARCHIES {
        symlinks.push((
            format!("etc/systemd/system/sysinit.target.wants/k8sforge-cgroup-rw@{h}.service"),
            "../k8sforge-cgroup-rw@.service".to_string(),
        ));
    }
    Recipe {
        format: FORMAT,
        suite: SUITE,
        packages: PACKAGES,
        files: vec![
            // Identity is per node (written into each node's upper dir).
            f("etc/machine-id", 0o444, ""),
            f("etc/default/locale", 0o644, ""),
            f("etc/ssh/sshd_config.d/k8sforge.conf", 0o644, SSHD_CONFIG),
            f("etc/hosts", 0o644, HOSTS),
            f("etc/resolv.conf", 0o644, RESOLV_CONF),
            f("etc/systemd/journald.conf.d/k8sforge.conf", 0o644, JOURNALD),
            f(
                "etc/systemd/system.conf.d/k8sforge.conf",
                0o644,
                SYSTEM_CONF,
            ),
            f(
                "etc/systemd/system/k8sforge-cgroup-rw@.service",
                0o644,
                CGROUP_RW_UNIT,
            ),
        ],
        symlinks,
        // debootstrap copies the host's hostname; openssh-server's postinst made host keys.
        removed: vec![
            "etc/hostname",
            "var/lib/dbus/machine-id",
            "etc/ssh/ssh_host_ed25519_key",
            "etc/ssh/ssh_host_ed25519_key.pub",
            "etc/ssh/ssh_host_ecdsa_key",
            "etc/ssh/ssh_host_ecdsa_key.pub",
            "etc/ssh/ssh_host_rsa_key",
            "etc/ssh/ssh_host_rsa_key.pub",
        ],
    }
}

/// Content key of the recipe (hex sha256).
pub fn key() -> String {
    let json = serde_json::to_vec(&recipe()).unwrap_or_default();
    hex::encode(Sha256::digest(&json))
}

/// A built image.
#[derive(Debug, Clone)]
pub struct Image {
    pub dir: PathBuf,
    pub rootfs: PathBuf,
    pub key: String,
}

/// `<root>/images/<suite>-<key prefix>`.
pub fn image_dir(root: &Path) -> PathBuf {
    root.join("images")
        .join(format!("{SUITE}-{}", &key()[..16]))
}

/// The image if it is built and complete.
pub fn cached(root: &Path) -> Option<Image> {
    let dir = image_dir(root);
    let key = key();
    let marker = fs::read_to_string(dir.join(MARKER)).ok()?;
    (marker.trim() == key && dir.join("rootfs/usr/lib/systemd/systemd").exists()).then(|| Image {
        rootfs: dir.join("rootfs"),
        dir,
        key,
    })
}

/// Return the cached image, building it first when missing (serialised by a lock file, so
/// concurrent runs build it once).
pub fn ensure(root: &Path, mirror: Option<&str>) -> Result<Image, LocalError> {
    if let Some(img) = cached(root) {
        return Ok(img);
    }
    let images = root.join("images");
    fs::create_dir_all(&images).map_err(|e| LocalError::io(&images, e))?;
    let lock_path = images.join(".lock");
    let lock_file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| LocalError::io(&lock_path, e))?;
    let mut lock = fd_lock::RwLock::new(lock_file);
    if lock.try_write().is_err() {
        tracing::info!(
            "waiting for another k8sforge run to finish building the node image ({})",
            lock_path.display()
        );
    }
    let _guard = lock.write().map_err(|e| LocalError::io(&lock_path, e))?;
    if let Some(img) = cached(root) {
        return Ok(img);
    }
    // Only a build needs an archive: a cached image works on a machine without apt sources.
    let archive = match mirror {
        Some(m) => m.to_string(),
        None => apt_archive()?,
    };
    build(root, &archive)
}

/// The Debian archive this machine's apt already uses (as the testbed's nodes.sh does): the first
/// `URIs:` of `/etc/apt/sources.list.d/*.sources`, else the first `deb` line of
/// `/etc/apt/sources.list`. k8sforge names no archive of its own.
pub fn apt_archive() -> Result<String, LocalError> {
    let mut sources: Vec<PathBuf> = fs::read_dir("/etc/apt/sources.list.d")
        .map(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| p.extension().is_some_and(|x| x == "sources"))
                .collect()
        })
        .unwrap_or_default();
    sources.sort();
    for path in &sources {
        if let Some(uri) = fs::read_to_string(path)
            .ok()
            .and_then(|text| first_deb822_uri(&text))
        {
            return Ok(uri);
        }
    }
    if let Some(uri) = fs::read_to_string("/etc/apt/sources.list")
        .ok()
        .and_then(|text| first_one_line_uri(&text))
    {
        return Ok(uri);
    }
    Err(LocalError::NoDebianArchive)
}

/// First URI of a deb822 stanza whose `Types:` include `deb`.
fn first_deb822_uri(text: &str) -> Option<String> {
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza.lines().find_map(|l| {
                let (k, v) = l.split_once(':')?;
                (k.trim().eq_ignore_ascii_case(name)).then(|| v.trim().to_string())
            })
        };
        let is_deb = field("Types").is_some_and(|t| t.split_whitespace().any(|t| t == "deb"));
        if !is_deb || field("Enabled").is_some_and(|e| e.eq_ignore_ascii_case("no")) {
            continue;
        }
        if let Some(uri) =
            field("URIs").and_then(|u| u.split_whitespace().next().map(str::to_string))
        {
            return Some(uri);
        }
    }
    None
}

/// First URI of a one-line `deb [options] URI suite …` entry.
fn first_one_line_uri(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let mut words = l.split_whitespace();
        if words.next()? != "deb" {
            return None;
        }
        let mut w = words.next()?;
        if w.starts_with('[') {
            while !w.ends_with(']') {
                w = words.next()?;
            }
            w = words.next()?;
        }
        Some(w.to_string())
    })
}

fn build(root: &Path, mirror: &str) -> Result<Image, LocalError> {
    let dir = image_dir(root);
    let key = key();
    let name = dir
        .file_name()
        .and_then(|n| n.to_str())
        .unwrap_or("image")
        .to_string();
    let tmp = root.join("images").join(format!(".{name}.building"));
    remove_tree(&tmp)?;
    let rootfs = tmp.join("rootfs");
    fs::create_dir_all(&rootfs).map_err(|e| LocalError::io(&rootfs, e))?;
    let cache = root.join("images").join("debs");
    fs::create_dir_all(&cache).map_err(|e| LocalError::io(&cache, e))?;
    let log_path = tmp.join("debootstrap.log");
    let log = fs::File::create(&log_path).map_err(|e| LocalError::io(&log_path, e))?;
    let log_err = log.try_clone().map_err(|e| LocalError::io(&log_path, e))?;
    let include = format!("--include={}", PACKAGES.join(","));
    let cache_arg = format!("--cache-dir={}", cache.display());
    let rootfs_s = rootfs.display().to_string();
    let args = [
        "--variant=minbase",
        cache_arg.as_str(),
        include.as_str(),
        SUITE,
        rootfs_s.as_str(),
        mirror,
    ];
    tracing::info!(
        "building the node image (debootstrap {SUITE}, about 1.5 min once) into {}",
        dir.display()
    );
    let spinner = indicatif::ProgressBar::new_spinner();
    spinner.set_message(format!("building node image: debootstrap {SUITE}"));
    spinner.enable_steady_tick(std::time::Duration::from_millis(200));
    let status = Command::new("debootstrap")
        .args(args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log_err)
        .status()
        .map_err(|e| LocalError::spawn("debootstrap", e));
    spinner.finish_and_clear();
    let status = status?;
    // debootstrap mounts /proc and /sys in the target; a failed run can leave them behind.
    for m in sys::mounts_under(&rootfs) {
        sys::umount(&m);
    }
    if !status.success() {
        return Err(LocalError::ImageBuild {
            step: format!("debootstrap {SUITE} ({status})"),
            log: log_path.clone(),
            tail: super::tail_file(&log_path, 20),
        });
    }
    configure(&rootfs).map_err(|e| LocalError::ImageBuild {
        step: format!("configuring the root filesystem: {e}"),
        log: log_path.clone(),
        tail: String::new(),
    })?;
    fs::write(tmp.join(MARKER), format!("{key}\n")).map_err(|e| LocalError::io(&tmp, e))?;
    remove_tree(&dir)?;
    fs::rename(&tmp, &dir).map_err(|e| LocalError::io(&dir, e))?;
    tracing::info!("node image ready: {}", dir.display());
    Ok(Image {
        rootfs: dir.join("rootfs"),
        dir,
        key,
    })
}

/// Apply the recipe to a fresh debootstrap tree.
fn configure(rootfs: &Path) -> std::io::Result<()> {
    let r = recipe();
    for p in &r.removed {
        remove_path(&rootfs.join(p))?;
    }
    for f in &r.files {
        let path = rootfs.join(f.path);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        // resolv.conf and friends may be symlinks into the host's idea of /run: replace, not follow.
        remove_path(&path)?;
        fs::write(&path, &f.content)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(f.mode))?;
    }
    for (link, target) in &r.symlinks {
        let path = rootfs.join(link);
        if let Some(parent) = path.parent() {
            fs::create_dir_all(parent)?;
        }
        remove_path(&path)?;
        symlink(target, &path)?;
    }
    for d in ["var/cache/apt/archives", "var/lib/apt/lists"] {
        if let Ok(rd) = fs::read_dir(rootfs.join(d)) {
            for e in rd.flatten() {
                if e.file_type().map(|t| t.is_file()).unwrap_or(false) {
                    fs::remove_file(e.path())?;
                }
            }
        }
    }
    Ok(())
}

fn remove_path(p: &Path) -> std::io::Result<()> {
    match fs::remove_file(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

/// rm -rf, refusing when anything is still mounted below.
fn remove_tree(p: &Path) -> Result<(), LocalError> {
    for m in sys::mounts_under(p) {
        sys::umount(&m);
    }
    if let Some(m) = sys::mounts_under(p).first() {
        return Err(LocalError::Busy(format!(
            "{} is still mounted; not deleting {}",
            m.display(),
            p.display()
        )));
    }
    match fs::remove_dir_all(p) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(LocalError::io(p, e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn archive_comes_from_deb822_sources() {
        let text = "Types: deb-src\nURIs: http://src.example/debian\nSuites: bookworm\n\n\
                    Types: deb\nURIs: http://archive.example/debian http://other.example/\n\
                    Suites: bookworm bookworm-updates\nComponents: main\n";
        assert_eq!(
            super::first_deb822_uri(text).as_deref(),
            Some("http://archive.example/debian")
        );
        let disabled = "Types: deb\nEnabled: no\nURIs: http://off.example/debian\n";
        assert_eq!(super::first_deb822_uri(disabled), None);
    }

    #[test]
    fn archive_comes_from_one_line_sources() {
        let text = "# comment\ndeb-src http://src.example/ bookworm main\n\
                    deb [arch=amd64 signed-by=/k.gpg] http://archive.example/debian bookworm main\n";
        assert_eq!(
            super::first_one_line_uri(text).as_deref(),
            Some("http://archive.example/debian")
        );
        assert_eq!(
            super::first_one_line_uri("deb http://a.example/d bookworm main").as_deref(),
            Some("http://a.example/d")
        );
    }

    use super::*;

    #[test]
    fn key_is_stable_and_covers_the_recipe() {
        assert_eq!(key(), key());
        assert_eq!(key().len(), 64);
        let mut r = recipe();
        let base = hex::encode(Sha256::digest(serde_json::to_vec(&r).unwrap()));
        assert_eq!(base, key());
        r.files[2].content.push_str("X11Forwarding yes\n");
        let changed = hex::encode(Sha256::digest(serde_json::to_vec(&r).unwrap()));
        assert_ne!(changed, base, "a changed file changes the key");
    }

    #[test]
    fn image_dir_is_versioned_and_uncached_when_empty() {
        let d = tempfile::tempdir().unwrap();
        let dir = image_dir(d.path());
        assert!(dir.ends_with(format!("images/{SUITE}-{}", &key()[..16])));
        assert!(cached(d.path()).is_none());
        // A directory without the completion marker (a build cut short) is not an image.
        fs::create_dir_all(dir.join("rootfs/usr/lib/systemd")).unwrap();
        fs::write(dir.join("rootfs/usr/lib/systemd/systemd"), "").unwrap();
        assert!(cached(d.path()).is_none());
        fs::write(dir.join(MARKER), key()).unwrap();
        assert!(cached(d.path()).is_some());
        fs::write(dir.join(MARKER), "old-recipe").unwrap();
        assert!(cached(d.path()).is_none());
    }

    #[test]
    fn configure_applies_the_recipe() {
        let d = tempfile::tempdir().unwrap();
        let r = d.path();
        fs::create_dir_all(r.join("etc/ssh")).unwrap();
        fs::write(r.join("etc/hostname"), "buildhost\n").unwrap();
        fs::write(r.join("etc/ssh/ssh_host_ed25519_key"), "secret").unwrap();
        symlink(
            "/run/systemd/resolve/stub-resolv.conf",
            r.join("etc/resolv.conf"),
        )
        .unwrap();
        configure(r).unwrap();
        assert!(!r.join("etc/hostname").exists());
        assert!(!r.join("etc/ssh/ssh_host_ed25519_key").exists());
        assert_eq!(fs::read_to_string(r.join("etc/machine-id")).unwrap(), "");
        assert!(!fs::symlink_metadata(r.join("etc/resolv.conf"))
            .unwrap()
            .file_type()
            .is_symlink());
        assert_eq!(
            fs::read_link(r.join("etc/systemd/system/apt-daily.timer")).unwrap(),
            Path::new("/dev/null")
        );
        assert!(
            fs::read_to_string(r.join("etc/systemd/journald.conf.d/k8sforge.conf"))
                .unwrap()
                .contains("Storage=volatile")
        );
        assert_eq!(
            fs::read_link(
                r.join("etc/systemd/system/sysinit.target.wants/k8sforge-cgroup-rw@memory.service")
            )
            .unwrap(),
            Path::new("../k8sforge-cgroup-rw@.service")
        );
    }
}
