//! A real OCI registry for tests: Debian's `docker-registry` (the distribution project's
//! registry) on an address of the test's choosing, storing in a temp directory, plain HTTP;
//! images go in with `skopeo copy oci-archive:… docker://…`. With [`Registry::start_with_auth`]
//! it asks for credentials the way a private registry does (htpasswd: 401 with
//! `WWW-Authenticate: Basic realm=…` to anyone without them).

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A running registry; killed when dropped.
pub struct Registry {
    pub addr: SocketAddr,
    /// `(user, password)` when the registry wants credentials.
    pub creds: Option<(String, String)>,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Start on `addr` (a fixed port: the registry cannot report a chosen one).
    pub fn start(addr: SocketAddr) -> Result<Registry, String> {
        Registry::launch(addr, None)
    }

    /// Start on `addr`, answering only `user`/`password` (HTTP basic auth from an htpasswd file;
    /// the bcrypt hash comes from the C library's crypt(3) through perl, which every Debian has).
    pub fn start_with_auth(
        addr: SocketAddr,
        user: &str,
        password: &str,
    ) -> Result<Registry, String> {
        Registry::launch(addr, Some((user.to_string(), password.to_string())))
    }

    fn launch(addr: SocketAddr, creds: Option<(String, String)>) -> Result<Registry, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let config = dir.path().join("config.yml");
        let mut auth = String::new();
        if let Some((user, password)) = &creds {
            let htpasswd = dir.path().join("htpasswd");
            let hash = bcrypt(password)?;
            std::fs::write(&htpasswd, format!("{user}:{hash}\n")).map_err(|e| e.to_string())?;
            auth = format!(
                "auth:\n  htpasswd:\n    realm: k8sforge-test\n    path: {}\n",
                htpasswd.display()
            );
        }
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
                 delete:\n    enabled: true\nhttp:\n  addr: {addr}\n{auth}",
                dir.path().join("data").display()
            ),
        )
        .map_err(|e| e.to_string())?;
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("cannot start {REGISTRY_BIN}: {e}"))?;
        let r = Registry {
            addr,
            creds,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
            if Instant::now() > deadline {
                return Err(format!("docker-registry did not listen on {addr}"));
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Ok(r)
    }

    /// Push an OCI archive as `<repo>:<tag>`; returns the manifest digest the registry holds.
    pub fn push_archive(&self, archive: &Path, repo: &str, tag: &str) -> Result<String, String> {
        let dest = format!("docker://{}/{repo}:{tag}", self.addr);
        let creds = self.creds.as_ref().map(|(u, p)| format!("{u}:{p}"));
        let mut copy = Command::new("skopeo");
        copy.args(["copy", "--quiet", "--dest-tls-verify=false"]);
        if let Some(c) = &creds {
            copy.args(["--dest-creds", c]);
        }
        super::mirror::run(copy.args([&format!("oci-archive:{}", archive.display()), &dest]))?;
        let mut inspect = Command::new("skopeo");
        inspect.args(["inspect", "--tls-verify=false"]);
        if let Some(c) = &creds {
            inspect.args(["--creds", c]);
        }
        let digest = super::mirror::run(inspect.args(["--format", "{{.Digest}}", &dest]))?;
        Ok(digest.trim().to_string())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A bcrypt (`$2b$`) hash of `password` with a random salt, as htpasswd files hold.
fn bcrypt(password: &str) -> Result<String, String> {
    use std::io::Read;
    const ALPHABET: &[u8] = b"./ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut raw = [0u8; 22];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut raw))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    // The last salt character carries only 2 bits in bcrypt: keep it in the set crypt accepts.
    let mut salt: String = raw
        .iter()
        .map(|b| ALPHABET[*b as usize % 64] as char)
        .collect();
    salt.pop();
    salt.push('u');
    let out = Command::new("perl")
        .args([
            "-e",
            "print crypt($ARGV[0], $ARGV[1])",
            password,
            &format!("$2b$05${salt}"),
        ])
        .output()
        .map_err(|e| format!("perl: {e}"))?;
    let hash = String::from_utf8_lossy(&out.stdout).to_string();
    if !out.status.success() || !hash.starts_with("$2b$05$") || hash.len() != 60 {
        return Err(format!("crypt(3) gave no bcrypt hash: {hash:?}"));
    }
    Ok(hash)
}
