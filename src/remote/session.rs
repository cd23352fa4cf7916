//! One SSH session to one node: connect with timeout and retries (exponential backoff with
//! jitter), verify the host key against the cluster's pins, authenticate by key, run commands
//! with a timeout, and stream files over SFTP.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use rand::Rng;
use ssh2::{ErrorCode, MethodType, OpenFlags, OpenType, Session};

use super::bastion::Bastion;
use super::known_hosts::{self, HostKeyCheck, KnownHosts};
use super::sync::{shell_quote, FileSource};
use super::{ExecutorOptions, RemoteError};

/// Where and as whom to connect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    pub node: String,
    pub addr: SocketAddr,
    pub user: String,
    pub key: PathBuf,
}

/// Captured result of a remote command.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct ExecOutput {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
}

/// Exit status GNU `timeout` returns when it had to stop the command.
const REMOTE_TIMEOUT_STATUS: i32 = 124;
/// Extra local slack over the remote hard cap, so the remote side normally fires first and
/// reports; the local cap only catches a dead transport.
const LOCAL_SLACK: Duration = Duration::from_secs(10);
/// A command's `timeout` is a no-progress bound (nothing on stdout or stderr for that long);
/// its total run time is capped at this many times the bound, so a command that keeps talking
/// forever still ends.
pub const HARD_CAP_FACTOR: u32 = 10;
/// First line the wrapper prints on stderr when the command starts on the node, with the
/// process group to stop if it goes quiet (`timeout` leads its own group).
const START_TAG: &str = "k8sforge-started";
/// Host key algorithms we accept, strongest first (all supported by libssh2 with OpenSSL).
const HOSTKEY_ALGS: &[&str] = &[
    "ssh-ed25519",
    "ecdsa-sha2-nistp256",
    "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521",
    "rsa-sha2-512",
    "rsa-sha2-256",
    "ssh-rsa",
];
const CHUNK: usize = 1 << 20;

/// An authenticated session to a node.
pub struct Conn {
    sess: Session,
    node: String,
    user: String,
    /// The login user is not root: commands run under `sudo -n`, uploads go through `staging`.
    elevate: bool,
    sftp: Option<ssh2::Sftp>,
    /// The session's socket, to wait on while non-blocking.
    fd: std::os::unix::io::RawFd,
    /// Upload directory the login user owns (`~/.k8sforge-staging`), created on first upload.
    staging: Option<String>,
    /// `(staged file, temp path next to the target)` of uploads not yet moved into place.
    staged: Vec<(String, String)>,
    /// Payload bytes sent to the node: command texts and uploaded file contents (the SSH
    /// framing and handshake are not counted).
    sent: std::cell::Cell<u64>,
}

impl std::fmt::Debug for Conn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Conn").field("node", &self.node).finish()
    }
}

fn millis(d: Duration) -> u32 {
    u32::try_from(d.as_millis()).unwrap_or(u32::MAX).max(1)
}

/// Delay before retry `attempt` (0-based): base·2^attempt capped at max, scaled by a random
/// factor in [0.5, 1.0) so a thousand nodes that failed together do not retry together.
pub fn backoff(opts: &ExecutorOptions, attempt: u32) -> Duration {
    let exp = opts
        .backoff_base
        .saturating_mul(1u32.checked_shl(attempt.min(20)).unwrap_or(u32::MAX));
    let capped = exp.min(opts.backoff_max);
    capped.mul_f64(rand::thread_rng().gen_range(0.5..1.0))
}

/// Host key method preference: what is pinned for the host first (so a host with several keys
/// presents the pinned one), then the rest.
fn hostkey_prefs(pinned: &[String], supported: &[&str]) -> String {
    let mut prefs: Vec<&str> = Vec::new();
    for t in pinned {
        let one = [t.as_str()];
        let algs: &[&str] = if t == "ssh-rsa" {
            &["rsa-sha2-512", "rsa-sha2-256", "ssh-rsa"]
        } else {
            &one
        };
        for a in algs {
            if supported.contains(a) && !prefs.contains(a) {
                prefs.push(a);
            }
        }
    }
    for a in HOSTKEY_ALGS {
        if supported.contains(a) && !prefs.contains(a) {
            prefs.push(a);
        }
    }
    prefs.join(",")
}

/// Connect with retries on connection and authentication failures. A changed host key or a
/// missing key file fails at once.
pub fn connect(
    target: &Target,
    known: &KnownHosts,
    opts: &ExecutorOptions,
    via: Option<&Bastion>,
) -> Result<Conn, RemoteError> {
    let mut attempt = 0;
    loop {
        match connect_once(target, known, opts, via) {
            Ok(c) => return Ok(c),
            Err(e) if e.is_retryable() && attempt < opts.retries => {
                let wait = backoff(opts, attempt);
                tracing::debug!(node = %target.node, attempt, ?wait, error = %e, "retrying connect");
                std::thread::sleep(wait);
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

fn connect_once(
    target: &Target,
    known: &KnownHosts,
    opts: &ExecutorOptions,
    via: Option<&Bastion>,
) -> Result<Conn, RemoteError> {
    let node = target.node.clone();
    let addr = target.addr;
    check_key_file(target)?;
    let mut sess = Session::new().map_err(|e| RemoteError::Connect {
        node: node.clone(),
        addr,
        reason: e.to_string(),
    })?;
    let fd = match via {
        None => {
            let tcp = dial(target, opts)?;
            let fd = std::os::unix::io::AsRawFd::as_raw_fd(&tcp);
            sess.set_tcp_stream(tcp);
            fd
        }
        Some(b) => {
            let s = b.open(&node, addr, opts.connect_timeout)?;
            let fd = std::os::unix::io::AsRawFd::as_raw_fd(&s);
            sess.set_tcp_stream(s);
            fd
        }
    };
    establish(&mut sess, target, known, opts)?;
    Ok(Conn {
        sess,
        node,
        user: target.user.clone(),
        elevate: target.user != "root",
        sftp: None,
        fd,
        staging: None,
        staged: Vec::new(),
        sent: std::cell::Cell::new(0),
    })
}

fn check_key_file(target: &Target) -> Result<(), RemoteError> {
    if !target.key.is_file() {
        return Err(RemoteError::Config {
            node: target.node.clone(),
            reason: format!(
                "SSH private key {} does not exist (set ssh.privateKey in the profile or generate the cluster key)",
                target.key.display()
            ),
        });
    }
    Ok(())
}

fn dial(target: &Target, opts: &ExecutorOptions) -> Result<TcpStream, RemoteError> {
    let tcp = TcpStream::connect_timeout(&target.addr, opts.connect_timeout).map_err(|e| {
        RemoteError::Connect {
            node: target.node.clone(),
            addr: target.addr,
            reason: e.to_string(),
        }
    })?;
    let _ = tcp.set_nodelay(true);
    Ok(tcp)
}

/// An authenticated session to a jump host, running its channel pump. `target.node` labels it
/// in errors and logs (`bastion <spec>`); its host key is pinned like a node's.
pub fn connect_bastion(
    target: &Target,
    known: &KnownHosts,
    opts: &ExecutorOptions,
) -> Result<Bastion, RemoteError> {
    let mut attempt = 0;
    loop {
        let once = || -> Result<Bastion, RemoteError> {
            check_key_file(target)?;
            let tcp = dial(target, opts)?;
            let fd = std::os::unix::io::AsRawFd::as_raw_fd(&tcp);
            let mut sess = Session::new().map_err(|e| RemoteError::Connect {
                node: target.node.clone(),
                addr: target.addr,
                reason: e.to_string(),
            })?;
            sess.set_tcp_stream(tcp);
            establish(&mut sess, target, known, opts)?;
            Bastion::start(target.node.clone(), sess, fd)
        };
        match once() {
            Ok(b) => return Ok(b),
            Err(e) if e.is_retryable() && attempt < opts.retries => {
                let wait = backoff(opts, attempt);
                tracing::debug!(bastion = %target.node, attempt, ?wait, error = %e, "retrying bastion connect");
                std::thread::sleep(wait);
                attempt += 1;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Handshake over the session's stream, check the host key against the pins (pin an unknown one
/// when the options allow), authenticate by key.
fn establish(
    sess: &mut Session,
    target: &Target,
    known: &KnownHosts,
    opts: &ExecutorOptions,
) -> Result<(), RemoteError> {
    let node = target.node.clone();
    let addr = target.addr;
    let connect_err = |reason: String| RemoteError::Connect {
        node: node.clone(),
        addr,
        reason,
    };
    // The handshake and auth are bounded by the connect timeout too.
    sess.set_timeout(millis(opts.connect_timeout));
    let pattern = known_hosts::host_pattern(addr.ip(), addr.port());
    let supported = sess
        .supported_algs(MethodType::HostKey)
        .map_err(|e| connect_err(e.to_string()))?;
    let prefs = hostkey_prefs(&known.pinned_types(&pattern), &supported);
    sess.method_pref(MethodType::HostKey, &prefs)
        .map_err(|e| connect_err(e.to_string()))?;
    sess.handshake()
        .map_err(|e| connect_err(format!("SSH handshake: {e}")))?;

    let (blob, _) = sess
        .host_key()
        .ok_or_else(|| connect_err("server presented no host key".into()))?;
    let blob = blob.to_vec();
    match known.check(&pattern, &blob) {
        HostKeyCheck::Match => {}
        HostKeyCheck::Unknown if !opts.pin_unknown_hosts => {
            return Err(RemoteError::HostKeyUnknown {
                node,
                host: pattern,
                presented: format!(
                    "{} {}",
                    known_hosts::blob_key_type(&blob).unwrap_or_default(),
                    known_hosts::fingerprint(&blob)
                ),
                known_hosts: known.path().to_path_buf(),
            });
        }
        HostKeyCheck::Unknown => {
            // A node's name is pinned as an alias (for `ssh NODE`); a bastion's label is not a
            // host name, so its address alone is.
            let alias = if node.contains(char::is_whitespace) {
                pattern.clone()
            } else {
                node.clone()
            };
            known.pin(&alias, &pattern, &blob)?;
            tracing::info!(
                "{node}: pinned SSH host key {} {} of {pattern} on first contact (trust on first use; \
                 the provider reported none)",
                known_hosts::blob_key_type(&blob).unwrap_or_default(),
                known_hosts::fingerprint(&blob)
            );
        }
        HostKeyCheck::Changed { pinned } => {
            return Err(RemoteError::HostKeyChanged {
                node,
                host: pattern,
                presented: format!(
                    "{} {}",
                    known_hosts::blob_key_type(&blob).unwrap_or_default(),
                    known_hosts::fingerprint(&blob)
                ),
                pinned: pinned.join(", "),
                known_hosts: known.path().to_path_buf(),
            });
        }
    }

    sess.userauth_pubkey_file(&target.user, None, &target.key, None)
        .map_err(|e| RemoteError::Auth {
            node: node.clone(),
            user: target.user.clone(),
            key: target.key.clone(),
            reason: e.to_string(),
        })?;
    if !sess.authenticated() {
        return Err(RemoteError::Auth {
            node: node.clone(),
            user: target.user.clone(),
            key: target.key.clone(),
            reason: "server did not accept the key".into(),
        });
    }
    Ok(())
}

fn is_timeout(e: &ssh2::Error) -> bool {
    e.code() == ErrorCode::Session(-9) // LIBSSH2_ERROR_TIMEOUT
}

impl Conn {
    /// Payload bytes sent to the node over this session so far.
    pub fn bytes_sent(&self) -> u64 {
        self.sent.get()
    }

    fn count(&self, n: u64) {
        self.sent.set(self.sent.get() + n);
    }

    pub fn node(&self) -> &str {
        &self.node
    }

    fn ssh_err(&self, what: &str, e: impl std::fmt::Display) -> RemoteError {
        RemoteError::Ssh {
            node: self.node.clone(),
            what: what.to_string(),
            reason: e.to_string(),
        }
    }

    fn timeout_err(&self, what: &str, t: Duration) -> RemoteError {
        RemoteError::Timeout {
            node: self.node.clone(),
            what: what.to_string(),
            secs: t.as_secs_f64(),
        }
    }

    /// Run `cmd` (a POSIX shell script) and fail unless it exits 0.
    pub fn exec(&self, cmd: &str, timeout: Duration) -> Result<ExecOutput, RemoteError> {
        let out = self.exec_status(cmd, timeout)?;
        if out.status != 0 {
            return Err(RemoteError::Command {
                node: self.node.clone(),
                cmd: summarize(cmd),
                status: out.status,
                stderr: tail(&out.stderr),
            });
        }
        Ok(out)
    }

    /// Run `cmd` and return its output and exit status, whatever the status (except a timeout,
    /// which is an error).
    ///
    /// `timeout` bounds the time WITHOUT PROGRESS, not the total: the clock restarts when the
    /// command starts on the node (the wrapper's start line: time queued in sshd, sudo or a
    /// loaded scheduler before it is charged once, not on top of the work) and on every byte of
    /// output. A command quiet for `timeout` is stopped: its process group is killed on the node
    /// over a second channel. The total run time is capped on the node at
    /// `HARD_CAP_FACTOR × timeout` by coreutils `timeout`.
    pub fn exec_status(&self, cmd: &str, timeout: Duration) -> Result<ExecOutput, RemoteError> {
        let what = format!("command `{}`", summarize(cmd));
        let cap = timeout.saturating_mul(HARD_CAP_FACTOR);
        let script = format!(
            "printf '%s %s\\n' {START_TAG} \"$$\" >&2; exec timeout -k 5 {:.3} sh -c {}",
            cap.as_secs_f64().max(0.001),
            shell_quote(cmd)
        );
        let mut wrapped = format!("sh -c {}", shell_quote(&script));
        if self.elevate {
            // Never prompt: a password prompt would hang a thousand sessions.
            wrapped = format!("sudo -n -- {wrapped}");
        }
        self.sess.set_timeout(millis(timeout + LOCAL_SLACK));
        let started = Instant::now();
        let map = |e: ssh2::Error| {
            if is_timeout(&e) {
                self.timeout_err(&what, timeout)
            } else {
                self.ssh_err(&what, e)
            }
        };
        let mut ch = self.sess.channel_session().map_err(map)?;
        self.count(wrapped.len() as u64);
        ch.exec(&wrapped).map_err(map)?;
        let hard_deadline = started + cap + LOCAL_SLACK;
        // Both streams are drained together (non-blocking, waiting on the socket in between), so
        // a command that writes a lot to stderr can never stall on a full channel window.
        self.sess.set_blocking(false);
        let drained = self.drain(&mut ch, timeout, hard_deadline);
        self.sess.set_blocking(true);
        let (stdout, stderr) = match drained {
            Ok(out) => out,
            Err((e, stderr)) if e.kind() == std::io::ErrorKind::TimedOut => {
                // Stop it on the node, so that a re-run never races the old command.
                if let Some(pid) = started_pid(&stderr) {
                    self.kill_group(pid);
                }
                return Err(self.timeout_err(&format!("{what} (no output)"), timeout));
            }
            Err((e, _)) => return Err(self.ssh_err(&what, e)),
        };
        ch.wait_close().map_err(map)?;
        let status = ch.exit_status().map_err(map)?;
        if status == REMOTE_TIMEOUT_STATUS && started.elapsed() + Duration::from_millis(50) >= cap {
            return Err(self.timeout_err(&format!("{what} (total run time cap)"), cap));
        }
        let out = ExecOutput {
            status,
            stdout: String::from_utf8_lossy(&stdout).into_owned(),
            stderr: without_start_line(&stderr),
        };
        if self.elevate {
            if let Some(reason) = sudo_refusal(out.status, &out.stderr) {
                return Err(RemoteError::Sudo {
                    node: self.node.clone(),
                    user: self.user.clone(),
                    reason,
                });
            }
        }
        Ok(out)
    }

    /// Kill the process group `pid` leads on the node (best effort: the node may be gone).
    fn kill_group(&self, pid: u32) {
        let mut cmd =
            format!("kill -KILL -- -{pid} 2>/dev/null; kill -KILL {pid} 2>/dev/null; true");
        if self.elevate {
            cmd = format!("sudo -n -- sh -c {}", shell_quote(&cmd));
        }
        self.sess.set_timeout(millis(Duration::from_secs(15)));
        let killed = self.sess.channel_session().and_then(|mut ch| {
            ch.exec(&cmd)?;
            ch.wait_eof()?;
            ch.wait_close()
        });
        if let Err(e) = killed {
            tracing::debug!(node = %self.node, pid, error = %e, "could not stop a timed-out command");
        }
    }

    /// The login user is not root, so commands run under `sudo -n`.
    pub fn elevated(&self) -> bool {
        self.elevate
    }

    /// Uploads of this session that went to the staging directory, with the temp path each must
    /// be moved to (by an elevated command) before it is verified and renamed into place.
    pub fn take_staged(&mut self) -> Vec<(String, String)> {
        std::mem::take(&mut self.staged)
    }

    /// Read stdout and stderr until the remote side closes them; fail, with the stderr read so
    /// far, after `idle` without a byte on either stream or at `hard_deadline`.
    fn drain(
        &self,
        ch: &mut ssh2::Channel,
        idle: Duration,
        hard_deadline: Instant,
    ) -> Result<(Vec<u8>, Vec<u8>), DrainError> {
        let mut stdout = Vec::new();
        let mut stderr = Vec::new();
        let mut buf = vec![0u8; 64 * 1024];
        let mut last_progress = Instant::now();
        loop {
            let mut progressed = false;
            for stream in [0, 1] {
                let r = if stream == 0 {
                    ch.read(&mut buf)
                } else {
                    ch.stderr().read(&mut buf)
                };
                match r {
                    Ok(0) => {}
                    Ok(n) => {
                        progressed = true;
                        if stream == 0 {
                            stdout.extend_from_slice(&buf[..n]);
                        } else {
                            stderr.extend_from_slice(&buf[..n]);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => return Err((e, stderr)),
                }
            }
            // eof() is only true once no data of either stream is left unread.
            if !progressed && ch.eof() {
                return Ok((stdout, stderr));
            }
            let now = Instant::now();
            if progressed {
                last_progress = now;
            }
            let deadline = (last_progress + idle).min(hard_deadline);
            if now >= deadline {
                return Err((std::io::Error::from(std::io::ErrorKind::TimedOut), stderr));
            }
            if !progressed {
                self.wait_socket((deadline - now).min(Duration::from_millis(200)));
            }
        }
    }

    /// Sleep until the session's socket is ready in the direction libssh2 is blocked on.
    fn wait_socket(&self, max: Duration) {
        let dirs = self.sess.block_directions();
        let mut events = 0;
        if matches!(
            dirs,
            ssh2::BlockDirections::Inbound | ssh2::BlockDirections::Both
        ) {
            events |= libc::POLLIN;
        }
        if matches!(
            dirs,
            ssh2::BlockDirections::Outbound | ssh2::BlockDirections::Both
        ) {
            events |= libc::POLLOUT;
        }
        if events == 0 {
            events = libc::POLLIN;
        }
        let mut pfd = libc::pollfd {
            fd: self.fd,
            events,
            revents: 0,
        };
        let ms = i32::try_from(max.as_millis()).unwrap_or(i32::MAX).max(1);
        // SAFETY: one valid pollfd for the socket this session owns; poll only reads/writes it.
        unsafe {
            libc::poll(&mut pfd, 1, ms);
        }
    }

    /// Stream `source` into `remote_path` (created 0600, fsynced). The caller renames it into
    /// place after fixing mode and owner. Every SFTP operation is bounded by `op_timeout`.
    pub fn upload(
        &mut self,
        source: &FileSource,
        remote_path: &str,
        op_timeout: Duration,
    ) -> Result<u64, RemoteError> {
        self.sess.set_timeout(millis(op_timeout));
        let what = format!("upload to {remote_path}");
        let node = self.node.clone();
        let map = |e: ssh2::Error| {
            if is_timeout(&e) {
                RemoteError::Timeout {
                    node: node.clone(),
                    what: what.clone(),
                    secs: op_timeout.as_secs_f64(),
                }
            } else {
                RemoteError::Ssh {
                    node: node.clone(),
                    what: what.clone(),
                    reason: e.to_string(),
                }
            }
        };
        if self.sftp.is_none() {
            self.sftp = Some(self.sess.sftp().map_err(map)?);
        }
        let Some(sftp) = self.sftp.as_ref() else {
            return Err(self.ssh_err(&what, "no SFTP subsystem"));
        };
        // Not root: SFTP runs as the login user, who cannot write next to the target. The bytes
        // go to a directory that user owns; the elevated finalize step moves them next to the
        // target, then verifies and renames as before (so atomicity and checksums are unchanged).
        let dest = if self.elevate {
            if self.staging.is_none() {
                let home = sftp.realpath(Path::new(".")).map_err(map)?;
                let dir = home.join(STAGING_DIR);
                if sftp.stat(&dir).is_err() {
                    sftp.mkdir(&dir, 0o700).map_err(map)?;
                }
                self.staging = Some(dir.display().to_string());
            }
            let dir = self.staging.clone().unwrap_or_default();
            let staged = format!("{dir}/{}", staged_name(&self.node, remote_path));
            self.staged.push((staged.clone(), remote_path.to_string()));
            staged
        } else {
            remote_path.to_string()
        };
        let Some(sftp) = self.sftp.as_ref() else {
            return Err(self.ssh_err(&what, "no SFTP subsystem"));
        };
        let mut remote = sftp
            .open_mode(
                Path::new(&dest),
                OpenFlags::WRITE | OpenFlags::CREATE | OpenFlags::TRUNCATE,
                0o600,
                OpenType::File,
            )
            .map_err(map)?;
        let io_map = |e: std::io::Error| {
            if e.kind() == std::io::ErrorKind::TimedOut {
                RemoteError::Timeout {
                    node: node.clone(),
                    what: what.clone(),
                    secs: op_timeout.as_secs_f64(),
                }
            } else {
                RemoteError::Ssh {
                    node: node.clone(),
                    what: what.clone(),
                    reason: e.to_string(),
                }
            }
        };
        let mut write = || -> Result<u64, RemoteError> {
            let written = match source {
                FileSource::Bytes(b) => {
                    remote.write_all(b).map_err(io_map)?;
                    b.len() as u64
                }
                FileSource::Local(path) => {
                    let mut f = std::fs::File::open(path).map_err(|source| RemoteError::Local {
                        node: node.clone(),
                        path: path.clone(),
                        source,
                    })?;
                    let mut buf = vec![0u8; CHUNK];
                    let mut total = 0u64;
                    loop {
                        let n = f.read(&mut buf).map_err(|source| RemoteError::Local {
                            node: node.clone(),
                            path: path.clone(),
                            source,
                        })?;
                        if n == 0 {
                            break;
                        }
                        remote.write_all(&buf[..n]).map_err(io_map)?;
                        total += n as u64;
                    }
                    total
                }
            };
            remote.fsync().map_err(map)?;
            remote.close().map_err(map)?;
            Ok(written)
        };
        match write() {
            Ok(written) => {
                self.count(written);
                Ok(written)
            }
            Err(e) => {
                // A failed write (a full disk, a dropped connection) must not leave a partial
                // temp file behind on the node: remove it, best effort.
                let _ = sftp.unlink(Path::new(&dest));
                // SFTP reports a full disk as a bare "failure": say what it was.
                let dir = dest.rsplit_once('/').map(|(d, _)| d).unwrap_or(".");
                let free = self
                    .exec_status(
                        &format!("df -Pk {} | awk 'NR==2 {{print $4}}'", shell_quote(dir)),
                        Duration::from_secs(15),
                    )
                    .ok()
                    .and_then(|o| o.stdout.trim().parse::<u64>().ok());
                match free {
                    Some(kib) if kib < 64 => Err(RemoteError::Ssh {
                        node: self.node.clone(),
                        what,
                        reason: format!(
                            "no space left on the filesystem of {dir} ({kib} KiB free; {e}); the partial file was removed: free space on the node and run again"
                        ),
                    }),
                    _ => Err(e),
                }
            }
        }
    }
}

/// Why draining a command's output stopped, with the stderr read until then.
type DrainError = (std::io::Error, Vec<u8>);

/// The process group id from the wrapper's start line, once it has arrived.
fn started_pid(stderr: &[u8]) -> Option<u32> {
    let text = String::from_utf8_lossy(stderr);
    let line = text.lines().find(|l| l.starts_with(START_TAG))?;
    line[START_TAG.len()..].trim().parse().ok()
}

/// stderr without the wrapper's start line: what the command (and the login shell) wrote.
fn without_start_line(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let mut out = String::with_capacity(text.len());
    let mut dropped = false;
    for line in text.split_inclusive('\n') {
        if !dropped && line.starts_with(START_TAG) {
            dropped = true;
            continue;
        }
        out.push_str(line);
    }
    out
}

/// Upload directory under the login user's home, for sessions that elevate.
pub const STAGING_DIR: &str = ".k8sforge-staging";

/// A staged file's name: node and target path, `/` spelled `%` (never in a validated path).
fn staged_name(node: &str, path: &str) -> String {
    format!("{node}--{}", path.replace('/', "%"))
}

/// What `sudo -n` says when it will not run the command: a password or a tty is needed, the
/// user may not use sudo, or sudo is missing. None for the command's own failures.
fn sudo_refusal(status: i32, stderr: &str) -> Option<String> {
    let line = stderr.lines().find(|l| {
        l.starts_with("sudo:") || l.contains("sudo: not found") || l.contains("not in the sudoers")
    })?;
    let refused = (status == 1
        && (line.contains("password is required")
            || line.contains("terminal is required")
            || line.contains("not in the sudoers")
            || line.contains("not allowed to")
            || line.contains("may not run sudo")))
        || (status == 127 && line.contains("not found"));
    refused.then(|| line.trim().to_string())
}

/// First line of a command, shortened, for error messages.
fn summarize(cmd: &str) -> String {
    let first = cmd.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    let mut s: String = first.chars().take(120).collect();
    if s.len() < first.len() || cmd.lines().filter(|l| !l.trim().is_empty()).count() > 1 {
        s.push('…');
    }
    s
}

/// Last lines of stderr, enough to explain a failure without flooding the summary.
fn tail(stderr: &str) -> String {
    let lines: Vec<&str> = stderr.trim_end().lines().collect();
    let start = lines.len().saturating_sub(8);
    lines[start..].join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_is_capped_and_jittered() {
        let opts = ExecutorOptions {
            backoff_base: Duration::from_millis(100),
            backoff_max: Duration::from_secs(1),
            ..ExecutorOptions::default()
        };
        for _ in 0..50 {
            let d0 = backoff(&opts, 0);
            assert!(d0 >= Duration::from_millis(50) && d0 < Duration::from_millis(100));
            let d3 = backoff(&opts, 3);
            assert!(d3 >= Duration::from_millis(400) && d3 < Duration::from_millis(800));
            let d10 = backoff(&opts, 10);
            assert!(d10 >= Duration::from_millis(500) && d10 < Duration::from_secs(1));
        }
    }

    #[test]
    fn pinned_key_types_come_first() {
        let supported = [
            "ecdsa-sha2-nistp256",
            "ssh-ed25519",
            "rsa-sha2-256",
            "ssh-rsa",
        ];
        assert_eq!(
            hostkey_prefs(&["ssh-rsa".into()], &supported),
            "rsa-sha2-256,ssh-rsa,ssh-ed25519,ecdsa-sha2-nistp256"
        );
        assert_eq!(
            hostkey_prefs(&[], &supported),
            "ssh-ed25519,ecdsa-sha2-nistp256,rsa-sha2-256,ssh-rsa"
        );
    }

    #[test]
    fn sudo_refusals_are_told_apart_from_command_failures() {
        assert!(sudo_refusal(1, "sudo: a password is required\n").is_some());
        assert!(sudo_refusal(
            1,
            "sudo: a terminal is required to read the password; either use the -S option\n"
        )
        .is_some());
        assert!(sudo_refusal(1, "ubuntu is not in the sudoers file.\n").is_some());
        assert!(sudo_refusal(127, "sh: 1: sudo: not found\n").is_some());
        assert!(sudo_refusal(1, "mkdir: cannot create directory\n").is_none());
        assert!(sudo_refusal(2, "sudo: a password is required").is_none());
        assert_eq!(
            staged_name("w1", "/etc/etcd/.x.k8sforge-tmp"),
            "w1--%etc%etcd%.x.k8sforge-tmp"
        );
    }

    #[test]
    fn summaries_are_short() {
        assert_eq!(summarize("set -e\nls"), "set -e…");
        assert_eq!(tail("a\nb\n"), "a\nb");
    }
}
