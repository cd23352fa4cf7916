//! A real OpenSSH server on 127.0.0.1 for tests: its own host key, root login by the test's key
//! only, SFTP enabled. Needs root and `openssh-server` (the test script installs it).

#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const SSHD: &str = "/usr/sbin/sshd";

pub fn require_root_and_sshd() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test starts a real sshd and logs in as root: run it as root"
    );
    assert!(
        Path::new(SSHD).exists(),
        "{SSHD} is missing: `apt-get install -y openssh-server` (the test script does this)"
    );
}

/// `ssh-keygen -t ed25519` into `path` (and `path.pub`).
pub fn keygen(path: &Path) {
    let st = Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-C", "k8sforge-test", "-f"])
        .arg(path)
        .status()
        .expect("ssh-keygen runs");
    assert!(st.success(), "ssh-keygen failed for {}", path.display());
}

/// `SHA256:...` as OpenSSH prints it for a public key file.
pub fn ssh_keygen_fingerprint(pub_path: &Path) -> String {
    let out = Command::new("ssh-keygen")
        .arg("-lf")
        .arg(pub_path)
        .output()
        .expect("ssh-keygen -l runs");
    let text = String::from_utf8_lossy(&out.stdout).to_string();
    text.split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("no fingerprint in {text:?}"))
        .to_string()
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .expect("bind")
        .local_addr()
        .expect("addr")
        .port()
}

/// A port nothing listens on (bound then released; nothing else binds it in between in practice).
pub fn closed_port() -> u16 {
    free_port()
}

pub struct Sshd {
    pub port: u16,
    pub host_key: PathBuf,
    child: Child,
    pub log: PathBuf,
}

impl Sshd {
    pub fn addr(&self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::LOCALHOST)
    }

    /// Start sshd on `port` with `host_key`, authorizing `client_pub`; waits until it listens.
    pub fn start(dir: &Path, port: u16, host_key: &Path, client_pub: &Path) -> Sshd {
        require_root_and_sshd();
        std::fs::create_dir_all("/run/sshd").expect("privilege separation dir");
        let tag = format!(
            "sshd-{port}-{}",
            host_key.file_name().unwrap().to_string_lossy()
        );
        let cfg = dir.join(format!("{tag}.conf"));
        let log = dir.join(format!("{tag}.log"));
        std::fs::write(
            &cfg,
            format!(
                "ListenAddress 127.0.0.1\n\
                 HostKey {hk}\n\
                 PidFile none\n\
                 AuthorizedKeysFile {ak}\n\
                 PermitRootLogin prohibit-password\n\
                 PasswordAuthentication no\n\
                 KbdInteractiveAuthentication no\n\
                 UsePAM no\n\
                 StrictModes no\n\
                 MaxStartups 200\n\
                 MaxSessions 100\n\
                 Subsystem sftp internal-sftp\n\
                 LogLevel ERROR\n",
                hk = host_key.display(),
                ak = client_pub.display()
            ),
        )
        .expect("write sshd config");
        let log_file = std::fs::File::create(&log).expect("sshd log");
        let mut cmd = Command::new(SSHD);
        cmd.args(["-D", "-e", "-f"])
            .arg(&cfg)
            .args(["-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log_file);
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to stop sshd when the
        // spawning thread exits, so a failed test never leaves an sshd behind.
        unsafe {
            cmd.pre_exec(|| {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM);
                Ok(())
            });
        }
        let child = cmd.spawn().expect("spawn sshd");
        let sshd = Sshd {
            port,
            host_key: host_key.to_path_buf(),
            child,
            log,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "sshd did not listen on {port}: {}",
                std::fs::read_to_string(&sshd.log).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        sshd
    }

    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Keys and a cluster directory for one test.
pub struct Fixture {
    pub dir: tempfile::TempDir,
    pub cluster_dir: PathBuf,
    pub client_key: PathBuf,
    pub host_key: PathBuf,
}

impl Fixture {
    pub fn new() -> Fixture {
        require_root_and_sshd();
        let dir = tempfile::tempdir().expect("tempdir");
        let cluster_dir = dir.path().join("cluster");
        // The cluster key as k8sforge generates it; its .pub is the server's authorized_keys.
        let client_key = k8sforge::sshkeys::ensure_cluster_key(&cluster_dir, "test")
            .expect("cluster key")
            .private_path;
        let host_key = dir.path().join("host_a");
        keygen(&host_key);
        Fixture {
            dir,
            cluster_dir,
            client_key,
            host_key,
        }
    }

    pub fn client_pub(&self) -> PathBuf {
        self.client_key.with_extension("pub")
    }

    pub fn sshd(&self) -> Sshd {
        Sshd::start(
            self.dir.path(),
            free_port(),
            &self.host_key,
            &self.client_pub(),
        )
    }
}
