//! Waiting for nodes: a node is up when its sshd answers (TCP connect and an `SSH-2.0-` banner).

use std::io::Read;
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use super::node::NodeDir;
use super::{tail_file, LocalError};

/// A node to wait for.
pub struct Pending {
    pub name: String,
    pub ip: IpAddr,
    pub dir: NodeDir,
}

/// Whether an SSH server answers on `ip:22` with a protocol 2 banner.
pub fn sshd_answers(ip: IpAddr) -> bool {
    answers_ssh(SocketAddr::new(ip, 22))
}

fn answers_ssh(addr: SocketAddr) -> bool {
    let Ok(mut s) = TcpStream::connect_timeout(&addr, Duration::from_millis(500)) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let mut buf = [0u8; 64];
    let mut got = 0;
    while got < 8 {
        match s.read(&mut buf[got..]) {
            Ok(0) | Err(_) => return false,
            Ok(n) => got += n,
        }
    }
    buf.starts_with(b"SSH-2.0-")
}

/// Wait until every node's sshd answers; fails naming the first node that did not come up (or
/// whose launcher died), with the tail of its console log.
pub fn wait_all(
    mut pending: Vec<Pending>,
    timeout: Duration,
    bar: &indicatif::ProgressBar,
) -> Result<(), LocalError> {
    let start = Instant::now();
    while !pending.is_empty() {
        let mut left = Vec::new();
        for p in pending {
            if sshd_answers(p.ip) {
                bar.inc(1);
                tracing::debug!(
                    "{} ({}) answers after {:.1}s",
                    p.name,
                    p.ip,
                    start.elapsed().as_secs_f64()
                );
                continue;
            }
            if p.dir.launcher_alive().is_none() {
                return Err(LocalError::NodeDown {
                    node: p.name.clone(),
                    reason: "its launcher exited during boot".into(),
                    log: p.dir.console_log(),
                    tail: tail_file(&p.dir.console_log(), 30),
                });
            }
            left.push(p);
        }
        pending = left;
        if pending.is_empty() {
            break;
        }
        if start.elapsed() >= timeout {
            let p = &pending[0];
            let others: Vec<&str> = pending[1..].iter().map(|p| p.name.as_str()).collect();
            return Err(LocalError::NodeDown {
                node: p.name.clone(),
                reason: format!(
                    "sshd on {}:22 did not answer within {}s{}",
                    p.ip,
                    timeout.as_secs(),
                    if others.is_empty() {
                        String::new()
                    } else {
                        format!(" (also not up: {})", others.join(", "))
                    }
                ),
                log: p.dir.console_log(),
                tail: tail_file(&p.dir.console_log(), 30),
            });
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::net::TcpListener;

    fn serve(reply: &'static [u8]) -> SocketAddr {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || {
            if let Ok((mut s, _)) = l.accept() {
                let _ = s.write_all(reply);
                std::thread::sleep(Duration::from_millis(200));
            }
        });
        addr
    }

    #[test]
    fn banner_check_accepts_ssh_only() {
        assert!(answers_ssh(serve(b"SSH-2.0-OpenSSH_9.2p1 Debian\r\n")));
        assert!(!answers_ssh(serve(b"HTTP/1.1 400 Bad Request\r\n")));
        assert!(!answers_ssh(serve(b"SSH-")), "a short banner is not enough");
        // Nothing listens: refused.
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let closed = l.local_addr().unwrap();
        drop(l);
        assert!(!answers_ssh(closed));
    }
}
