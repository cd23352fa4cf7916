//! A real OCI registry for tests: Debian's `docker-registry` (the distribution project's
//! registry) on an address of the test's choosing, storing in a temp directory, plain HTTP;
//! images go in with `skopeo copy oci-archive:… docker://…`.

use std::net::{SocketAddr, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

/// A running registry; killed when dropped.
pub struct Registry {
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

impl Registry {
    /// Start on `addr` (a fixed port: the registry cannot report a chosen one).
    pub fn start(addr: SocketAddr) -> Result<Registry, String> {
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let config = dir.path().join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n  \
                 delete:\n    enabled: true\nhttp:\n  addr: {addr}\n",
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
        super::mirror::run(Command::new("skopeo").args([
            "copy",
            "--quiet",
            "--dest-tls-verify=false",
            &format!("oci-archive:{}", archive.display()),
            &dest,
        ]))?;
        let digest = super::mirror::run(Command::new("skopeo").args([
            "inspect",
            "--tls-verify=false",
            "--format",
            "{{.Digest}}",
            &dest,
        ]))?;
        Ok(digest.trim().to_string())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
