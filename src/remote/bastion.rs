//! Jump hosts: ONE authenticated SSH connection to the bastion per executor, and one
//! `direct-tcpip` channel through it per node session. Each channel is bridged to a Unix
//! socketpair whose other end is handed to the node's own `ssh2::Session`, so the node session
//! (host key check, auth, exec, SFTP) is exactly the direct one, end to end encrypted to the node.
//!
//! libssh2 sessions are not thread-safe per channel: a blocking read on one channel holds the
//! session lock and starves the others. So the bastion session runs non-blocking and a single
//! pump thread moves bytes for every channel, polling the bastion socket and all socketpair ends.

use std::collections::VecDeque;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::os::unix::io::{AsRawFd, RawFd};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use ssh2::{ErrorCode, Session};

use super::RemoteError;

/// `[user@]host[:port]` as written in `ssh.bastion` / `provider.aws.bastion`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BastionSpec {
    /// None: the node's own login user.
    pub user: Option<String>,
    pub host: String,
    pub port: u16,
}

impl BastionSpec {
    pub fn parse(s: &str) -> Result<BastionSpec, String> {
        let s = s.trim();
        let (user, rest) = match s.rsplit_once('@') {
            Some((u, r)) if !u.is_empty() => (Some(u.to_string()), r),
            Some(_) => return Err(format!("bastion {s:?}: empty user before '@'")),
            None => (None, s),
        };
        // `[v6]:port`, `host:port` or `host`.
        let (host, port) = if let Some(r) = rest.strip_prefix('[') {
            let (h, tail) = r
                .split_once(']')
                .ok_or_else(|| format!("bastion {s:?}: unclosed '['"))?;
            match tail.strip_prefix(':') {
                Some(p) => (h.to_string(), Some(p)),
                None if tail.is_empty() => (h.to_string(), None),
                None => return Err(format!("bastion {s:?}: junk after ']'")),
            }
        } else {
            match rest.rsplit_once(':') {
                Some((h, p)) if !h.contains(':') => (h.to_string(), Some(p)),
                _ => (rest.to_string(), None),
            }
        };
        if host.is_empty() {
            return Err(format!("bastion {s:?}: no host"));
        }
        let port = match port {
            Some(p) => p
                .parse::<u16>()
                .ok()
                .filter(|p| *p > 0)
                .ok_or_else(|| format!("bastion {s:?}: port {p:?} is not 1-65535"))?,
            None => 22,
        };
        if let Some(u) = &user {
            if !u
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
            {
                return Err(format!("bastion {s:?}: user {u:?} is not a login name"));
            }
        }
        Ok(BastionSpec { user, host, port })
    }

    /// The address to dial (DNS names resolved, first IPv4/IPv6 answer).
    pub fn resolve(&self) -> Result<SocketAddr, String> {
        if let Ok(ip) = self.host.parse::<IpAddr>() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        (self.host.as_str(), self.port)
            .to_socket_addrs()
            .map_err(|e| format!("cannot resolve bastion host {}: {e}", self.host))?
            .next()
            .ok_or_else(|| format!("bastion host {} has no address", self.host))
    }
}

/// One channel being pumped.
struct Tunnel {
    node: String,
    ch: ssh2::Channel,
    local: UnixStream,
    to_local: Vec<u8>,
    to_remote: Vec<u8>,
    remote_eof: bool,
    local_eof: bool,
    eof_sent: bool,
    local_shut: bool,
}

struct Shared {
    incoming: Mutex<VecDeque<Tunnel>>,
    stop: AtomicBool,
}

/// An authenticated connection to a jump host, multiplexing node sessions.
pub struct Bastion {
    label: String,
    sess: Session,
    /// libssh2 keeps ONE in-progress channel open per session: a non-blocking open answered
    /// EAGAIN must be repeated by the same caller before any other open starts, or the channels
    /// come back crossed (node A's session wired to node B — the pinned host keys catch it).
    open_lock: Mutex<()>,
    shared: Arc<Shared>,
    waker: UnixStream,
    pump: Option<JoinHandle<()>>,
}

impl std::fmt::Debug for Bastion {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bastion")
            .field("label", &self.label)
            .finish()
    }
}

fn is_eagain(e: &ssh2::Error) -> bool {
    e.code() == ErrorCode::Session(-37) // LIBSSH2_ERROR_EAGAIN
}

impl Bastion {
    /// Take over an authenticated session to the bastion (`label` names it in errors; `sock` is
    /// the socket the session owns) and start its pump.
    pub fn start(label: String, sess: Session, sock: RawFd) -> Result<Bastion, RemoteError> {
        let err = |e: std::io::Error| RemoteError::Internal(format!("bastion {label}: {e}"));
        let (waker, wake_rx) = UnixStream::pair().map_err(err)?;
        wake_rx.set_nonblocking(true).map_err(err)?;
        waker.set_nonblocking(true).map_err(err)?;
        // Keepalives so a long quiet phase does not let a NAT drop the only connection.
        sess.set_keepalive(true, 30);
        sess.set_blocking(false);
        let shared = Arc::new(Shared {
            incoming: Mutex::new(VecDeque::new()),
            stop: AtomicBool::new(false),
        });
        let pump = {
            let shared = Arc::clone(&shared);
            let sess = sess.clone();
            let label = label.clone();
            std::thread::Builder::new()
                .name("k8sforge-bastion".into())
                .spawn(move || pump(&label, &sess, sock, &shared, wake_rx))
                .map_err(err)?
        };
        Ok(Bastion {
            label,
            sess,
            open_lock: Mutex::new(()),
            shared,
            waker,
            pump: Some(pump),
        })
    }

    pub fn label(&self) -> &str {
        &self.label
    }

    /// Open a `direct-tcpip` channel to `addr` (as the bastion sees it) and return the local end
    /// of the bridge: a stream an `ssh2::Session` can run over.
    pub fn open(
        &self,
        node: &str,
        addr: SocketAddr,
        timeout: Duration,
    ) -> Result<UnixStream, RemoteError> {
        let deadline = Instant::now() + timeout;
        let host = addr.ip().to_string();
        let guard = self.open_lock.lock().unwrap_or_else(|e| e.into_inner());
        let ch = loop {
            match self.sess.channel_direct_tcpip(&host, addr.port(), None) {
                Ok(ch) => break ch,
                Err(e) if is_eagain(&e) => {
                    if Instant::now() >= deadline {
                        return Err(RemoteError::Connect {
                            node: node.to_string(),
                            addr,
                            reason: format!(
                                "through bastion {}: no answer to the channel request within {:.0}s",
                                self.label,
                                timeout.as_secs_f64()
                            ),
                        });
                    }
                    // The pump reads the socket; the answer lands in libssh2's queue.
                    std::thread::sleep(Duration::from_millis(1));
                }
                Err(e) => {
                    return Err(RemoteError::Connect {
                        node: node.to_string(),
                        addr,
                        reason: format!(
                            "bastion {} refused to forward to it: {}",
                            self.label,
                            e.message()
                        ),
                    })
                }
            }
        };
        drop(guard);
        let io = |e: std::io::Error| RemoteError::Internal(format!("node {node}: socketpair: {e}"));
        let (mine, theirs) = UnixStream::pair().map_err(io)?;
        mine.set_nonblocking(true).map_err(io)?;
        if let Ok(mut q) = self.shared.incoming.lock() {
            q.push_back(Tunnel {
                node: node.to_string(),
                ch,
                local: mine,
                to_local: Vec::new(),
                to_remote: Vec::new(),
                remote_eof: false,
                local_eof: false,
                eof_sent: false,
                local_shut: false,
            });
        }
        let _ = (&self.waker).write(&[1]);
        Ok(theirs)
    }
}

impl Drop for Bastion {
    fn drop(&mut self) {
        self.shared.stop.store(true, Ordering::SeqCst);
        let _ = (&self.waker).write(&[1]);
        if let Some(h) = self.pump.take() {
            let _ = h.join();
        }
        self.sess.set_blocking(true);
        let _ = self.sess.disconnect(None, "k8sforge done", Some("en"));
    }
}

const BUF: usize = 64 * 1024;

/// Move bytes both ways for one tunnel; returns (progressed, finished). Sets `want_out` when a
/// write is stuck on the bastion socket's send buffer (not on the channel window), so the idle
/// poll waits for POLLOUT too.
fn step(t: &mut Tunnel, buf: &mut [u8], sess: &Session, want_out: &mut bool) -> (bool, bool) {
    let mut progressed = false;
    // bastion → node session
    if t.to_local.is_empty() && !t.remote_eof {
        match t.ch.read(buf) {
            Ok(0) => {
                if t.ch.eof() {
                    t.remote_eof = true;
                    progressed = true;
                }
            }
            Ok(n) => {
                t.to_local.extend_from_slice(&buf[..n]);
                progressed = true;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => {
                tracing::debug!(node = %t.node, error = %e, "bastion channel read failed");
                return (true, true);
            }
        }
    }
    if !t.to_local.is_empty() {
        match t.local.write(&t.to_local) {
            Ok(n) => {
                t.to_local.drain(..n);
                progressed |= n > 0;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return (true, true), // the node session is gone
        }
    }
    if t.remote_eof && t.to_local.is_empty() && !t.local_shut {
        let _ = t.local.shutdown(std::net::Shutdown::Write);
        t.local_shut = true;
    }
    // node session → bastion
    if t.to_remote.is_empty() && !t.local_eof {
        match t.local.read(buf) {
            Ok(0) => {
                t.local_eof = true;
                progressed = true;
            }
            Ok(n) => {
                t.to_remote.extend_from_slice(&buf[..n]);
                progressed = true;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(_) => return (true, true),
        }
    }
    if !t.to_remote.is_empty() {
        match t.ch.write(&t.to_remote) {
            Ok(n) => {
                t.to_remote.drain(..n);
                progressed |= n > 0;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if matches!(
                    sess.block_directions(),
                    ssh2::BlockDirections::Outbound | ssh2::BlockDirections::Both
                ) {
                    *want_out = true;
                }
            }
            Err(e) => {
                tracing::debug!(node = %t.node, error = %e, "bastion channel write failed");
                return (true, true);
            }
        }
    }
    if t.local_eof && t.to_remote.is_empty() && !t.eof_sent {
        match t.ch.send_eof() {
            Ok(()) => {
                t.eof_sent = true;
                progressed = true;
            }
            Err(e) if is_eagain(&e) => {}
            Err(_) => return (true, true),
        }
    }
    // The node session closed its end: nothing more will be said either way.
    let finished = t.local_eof && t.to_remote.is_empty() && t.eof_sent;
    (
        progressed,
        finished || (t.remote_eof && t.local_shut && t.local_eof),
    )
}

fn close(t: &mut Tunnel) {
    // Non-blocking: a few tries, then let libssh2 free it regardless.
    for _ in 0..50 {
        match t.ch.close() {
            Err(e) if is_eagain(&e) => std::thread::sleep(Duration::from_millis(1)),
            _ => break,
        }
    }
}

fn pump(label: &str, sess: &Session, sock: RawFd, shared: &Shared, mut wake: UnixStream) {
    let mut tunnels: Vec<Tunnel> = Vec::new();
    let mut buf = vec![0u8; BUF];
    let mut scratch = [0u8; 64];
    loop {
        if shared.stop.load(Ordering::SeqCst) {
            break;
        }
        if let Ok(mut q) = shared.incoming.lock() {
            tunnels.extend(q.drain(..));
        }
        let mut progressed = false;
        let mut want_out = false;
        let mut i = 0;
        while i < tunnels.len() {
            let (p, done) = step(&mut tunnels[i], &mut buf, sess, &mut want_out);
            progressed |= p;
            if done {
                let mut t = tunnels.swap_remove(i);
                close(&mut t);
            } else {
                i += 1;
            }
        }
        if progressed {
            continue;
        }
        // Idle: sleep until the bastion socket, a node session or the waker has something.
        let dirs = sess.block_directions();
        let mut ev = libc::POLLIN;
        if want_out
            || matches!(
                dirs,
                ssh2::BlockDirections::Outbound | ssh2::BlockDirections::Both
            )
        {
            ev |= libc::POLLOUT;
        }
        let mut fds = vec![
            libc::pollfd {
                fd: sock,
                events: ev,
                revents: 0,
            },
            libc::pollfd {
                fd: wake.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        for t in &tunnels {
            let mut events = 0;
            if t.to_remote.is_empty() && !t.local_eof {
                events |= libc::POLLIN;
            }
            if !t.to_local.is_empty() {
                events |= libc::POLLOUT;
            }
            fds.push(libc::pollfd {
                fd: t.local.as_raw_fd(),
                events,
                revents: 0,
            });
        }
        // SAFETY: `fds` is a valid array of pollfd for descriptors this thread keeps open.
        let rc = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, 50) };
        if rc < 0 {
            std::thread::sleep(Duration::from_millis(5));
        }
        if fds[0].revents & (libc::POLLHUP | libc::POLLERR) != 0 && tunnels.is_empty() {
            tracing::debug!(bastion = %label, "bastion connection closed");
        }
        while matches!(wake.read(&mut scratch), Ok(n) if n > 0) {}
    }
    for t in &mut tunnels {
        close(t);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_bastion_specs() {
        assert_eq!(
            BastionSpec::parse("ubuntu@198.18.0.1:2222").unwrap(),
            BastionSpec {
                user: Some("ubuntu".into()),
                host: "198.18.0.1".into(),
                port: 2222
            }
        );
        assert_eq!(
            BastionSpec::parse("bastion.example.com").unwrap(),
            BastionSpec {
                user: None,
                host: "bastion.example.com".into(),
                port: 22
            }
        );
        assert_eq!(
            BastionSpec::parse("root@[fd00::1]:22").unwrap().host,
            "fd00::1"
        );
        assert!(BastionSpec::parse("ubuntu@").is_err());
        assert!(BastionSpec::parse("ubuntu@host:0").is_err());
        assert!(BastionSpec::parse("ubuntu@host:x").is_err());
        assert!(BastionSpec::parse("u;rm@host").is_err());
    }
}
