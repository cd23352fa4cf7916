//! The API load balancer of a local cluster with several control planes: a small TCP proxy on
//! the host's bridge address (`<nodeCIDR>.1:<apiServer.port>`), the one endpoint that kubelets,
//! kube-proxy and the admin kubeconfig use — the role kind gives its haproxy container, and a
//! cloud gives its load balancer. It runs detached (`k8sforge local-api-proxy …`), like the node
//! launchers, so it outlives the command that started it; teardown stops it.
//!
//! Each connection goes to the next apiserver in turn; one that refuses or does not answer the
//! connect within a second is skipped and left alone for a few seconds, so losing a control plane
//! costs new connections at most one short connect timeout. TLS passes through untouched.

use std::fs;
use std::io;
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{sys, LocalError};

/// Hidden CLI verb that runs the proxy.
pub const API_PROXY_VERB: &str = "local-api-proxy";

const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
const BACKOFF: Duration = Duration::from_secs(5);

struct Backends {
    addrs: Vec<SocketAddr>,
    next: AtomicUsize,
    down_until: Mutex<Vec<Option<Instant>>>,
}

impl Backends {
    /// Connect to the next healthy backend, trying each at most once.
    fn connect(&self) -> io::Result<TcpStream> {
        let n = self.addrs.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let now = Instant::now();
        let order: Vec<usize> = (0..n).map(|i| (start + i) % n).collect();
        // Healthy ones first, then the ones marked down (they may be back).
        let down = |i: usize| {
            self.down_until
                .lock()
                .map(|d| d[i].is_some_and(|t| t > now))
                .unwrap_or(false)
        };
        let (up, held): (Vec<usize>, Vec<usize>) = order.into_iter().partition(|&i| !down(i));
        let mut last = io::Error::new(io::ErrorKind::NotConnected, "no apiserver configured");
        for i in up.into_iter().chain(held) {
            match TcpStream::connect_timeout(&self.addrs[i], CONNECT_TIMEOUT) {
                Ok(s) => {
                    if let Ok(mut d) = self.down_until.lock() {
                        d[i] = None;
                    }
                    return Ok(s);
                }
                Err(e) => {
                    if let Ok(mut d) = self.down_until.lock() {
                        d[i] = Some(Instant::now() + BACKOFF);
                    }
                    last = e;
                }
            }
        }
        Err(last)
    }
}

/// Copy both directions until either side closes.
fn pipe(client: TcpStream, server: TcpStream) {
    let (Ok(mut c2), Ok(mut s2)) = (client.try_clone(), server.try_clone()) else {
        return;
    };
    let up = std::thread::spawn(move || {
        let mut c = client;
        let mut s = server;
        let _ = io::copy(&mut c, &mut s);
        let _ = s.shutdown(Shutdown::Write);
    });
    let _ = io::copy(&mut s2, &mut c2);
    let _ = c2.shutdown(Shutdown::Write);
    let _ = up.join();
}

/// Run the proxy in the foreground; returns the exit code.
pub fn run(listen: SocketAddr, backends: Vec<SocketAddr>) -> i32 {
    let listener = match TcpListener::bind(listen) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("local-api-proxy: cannot listen on {listen}: {e}");
            return 2;
        }
    };
    eprintln!("local-api-proxy: {listen} → {backends:?}");
    let b = Arc::new(Backends {
        down_until: Mutex::new(vec![None; backends.len()]),
        addrs: backends,
        next: AtomicUsize::new(0),
    });
    for conn in listener.incoming() {
        let Ok(client) = conn else { continue };
        let b = Arc::clone(&b);
        std::thread::spawn(move || match b.connect() {
            Ok(server) => {
                let _ = client.set_nodelay(true);
                let _ = server.set_nodelay(true);
                pipe(client, server);
            }
            Err(e) => {
                eprintln!("local-api-proxy: no apiserver reachable: {e}");
                let _ = client.shutdown(Shutdown::Both);
            }
        });
    }
    0
}

fn pid_file(runtime_dir: &Path) -> PathBuf {
    runtime_dir.join("api-proxy.pid")
}

/// The command line the proxy runs with (also how a running one is recognised).
fn args(listen: SocketAddr, backends: &[SocketAddr]) -> Vec<String> {
    let mut a = vec![
        API_PROXY_VERB.to_string(),
        "--listen".into(),
        listen.to_string(),
    ];
    for b in backends {
        a.push("--backend".into());
        a.push(b.to_string());
    }
    a
}

/// The pid of this cluster's running proxy, when it runs with exactly these arguments.
fn running(runtime_dir: &Path, want: &[String]) -> Option<i32> {
    let pid = sys::read_pid(&pid_file(runtime_dir))?;
    let cl = fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let args: Vec<String> = cl
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .skip(1)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    (args == want).then_some(pid)
}

/// Make sure the proxy runs for `listen` → `backends`: keep a matching one, replace another.
pub fn ensure(
    runtime_dir: &Path,
    exe: &Path,
    listen: SocketAddr,
    backends: &[SocketAddr],
) -> Result<(), LocalError> {
    let want = args(listen, backends);
    if running(runtime_dir, &want).is_some() {
        return Ok(());
    }
    stop(runtime_dir);
    let log_path = runtime_dir.join("api-proxy.log");
    let log = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(|e| LocalError::io(&log_path, e))?;
    let log2 = log.try_clone().map_err(|e| LocalError::io(&log_path, e))?;
    let mut command = Command::new(exe);
    command
        .args(&want)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    use std::os::unix::process::CommandExt;
    // SAFETY: setsid is async-signal-safe; the proxy must not die with our terminal session.
    unsafe {
        command.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    let child = command
        .spawn()
        .map_err(|e| LocalError::spawn(&exe.display().to_string(), e))?;
    let pid = child.id();
    drop(child);
    let pf = pid_file(runtime_dir);
    fs::write(&pf, format!("{pid}\n")).map_err(|e| LocalError::io(&pf, e))?;
    // Listening within a second, or it says why in its log.
    let deadline = Instant::now() + Duration::from_secs(5);
    while Instant::now() < deadline {
        if TcpStream::connect_timeout(&listen, Duration::from_millis(200)).is_ok() {
            return Ok(());
        }
        if !sys::pid_alive(pid as i32) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Err(LocalError::Busy(format!(
        "the API proxy on {listen} did not start; see {}",
        log_path.display()
    )))
}

/// Stop this cluster's proxy, if it runs.
pub fn stop(runtime_dir: &Path) {
    if let Some(pid) = sys::read_pid(&pid_file(runtime_dir)) {
        let is_proxy = fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(API_PROXY_VERB))
            .unwrap_or(false);
        if is_proxy {
            // SAFETY: plain kill(2) of a pid we started.
            unsafe { libc::kill(pid, libc::SIGTERM) };
        }
    }
    let _ = fs::remove_file(pid_file(runtime_dir));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};

    /// A backend that answers each connection with its name.
    fn backend(name: &'static str) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = l.local_addr().unwrap();
        std::thread::spawn(move || {
            for c in l.incoming().flatten() {
                let mut c = c;
                let _ = c.write_all(name.as_bytes());
            }
        });
        a
    }

    fn free_addr() -> SocketAddr {
        // Bound then dropped: nothing listens there.
        TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
    }

    #[test]
    fn balances_and_skips_a_dead_backend() {
        let dead = free_addr();
        let (a, b) = (backend("a"), backend("b"));
        let listen = free_addr();
        let backends = vec![a, dead, b];
        std::thread::spawn(move || run(listen, backends));
        std::thread::sleep(Duration::from_millis(200));
        let mut seen = std::collections::BTreeSet::new();
        for _ in 0..6 {
            let mut s = TcpStream::connect(listen).unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            assert!(out == "a" || out == "b", "{out:?}");
            seen.insert(out);
        }
        assert_eq!(seen.len(), 2, "both live backends serve: {seen:?}");
    }
}
