//! A small static-file HTTP/1.1 server for tests: serves a directory (an upstream-layout
//! artifact mirror) on an address of the test's choosing (the host's bridge address, so local
//! nodes reach it), answers only the peers it is told to (others get 403, which is how a test
//! makes the source reachable from one seed node only), and records every request with the
//! peer address and the bytes sent, so a test can prove who downloaded what.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// One answered request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub peer: IpAddr,
    pub path: String,
    pub status: u16,
    pub bytes: u64,
}

#[derive(Default)]
struct Shared {
    allowed: Option<Vec<IpAddr>>,
    log: Vec<Request>,
}

/// A running server; stops when dropped.
pub struct FileServer {
    pub addr: SocketAddr,
    shared: Arc<Mutex<Shared>>,
    stop: Arc<AtomicBool>,
}

impl FileServer {
    /// Serve `root` on `bind` (port 0: any free port).
    pub fn start(bind: SocketAddr, root: &Path) -> std::io::Result<FileServer> {
        let listener = TcpListener::bind(bind)?;
        listener.set_nonblocking(true)?;
        let addr = listener.local_addr()?;
        let shared = Arc::new(Mutex::new(Shared::default()));
        let stop = Arc::new(AtomicBool::new(false));
        let (s2, stop2, root) = (shared.clone(), stop.clone(), root.to_path_buf());
        std::thread::spawn(move || {
            while !stop2.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((stream, peer)) => {
                        let (s3, root) = (s2.clone(), root.clone());
                        std::thread::spawn(move || {
                            let _ = serve(stream, peer, &root, &s3);
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(20)),
                }
            }
        });
        Ok(FileServer { addr, shared, stop })
    }

    /// `http://<addr>`.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// Answer only these peers (others get 403); `None`: everyone.
    pub fn allow_only(&self, peers: Option<Vec<IpAddr>>) {
        if let Ok(mut s) = self.shared.lock() {
            s.allowed = peers;
        }
    }

    pub fn requests(&self) -> Vec<Request> {
        self.shared
            .lock()
            .map(|s| s.log.clone())
            .unwrap_or_default()
    }

    pub fn clear_log(&self) {
        if let Ok(mut s) = self.shared.lock() {
            s.log.clear();
        }
    }
}

impl Drop for FileServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn resolve(root: &Path, url_path: &str) -> Option<PathBuf> {
    let path = url_path.split('?').next()?.trim_start_matches('/');
    let mut out = root.to_path_buf();
    for c in Path::new(path).components() {
        match c {
            Component::Normal(s) => out.push(s),
            _ => return None,
        }
    }
    out.is_file().then_some(out)
}

fn serve(
    stream: TcpStream,
    peer: SocketAddr,
    root: &Path,
    shared: &Mutex<Shared>,
) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let path = parts.next().unwrap_or("/").to_string();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h.trim().is_empty() {
            break;
        }
    }
    let allowed = shared
        .lock()
        .map(|s| s.allowed.as_ref().is_none_or(|a| a.contains(&peer.ip())))
        .unwrap_or(false);
    let mut out = stream;
    let (status, bytes) = if !allowed {
        out.write_all(b"HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")?;
        (403, 0)
    } else {
        match (method.as_str(), resolve(root, &path)) {
            ("GET" | "HEAD", Some(file)) => {
                let mut f = std::fs::File::open(&file)?;
                let len = f.metadata()?.len();
                write!(
                    out,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {len}\r\nConnection: close\r\n\r\n"
                )?;
                let mut sent = 0;
                if method == "GET" {
                    let mut buf = vec![0u8; 1 << 16];
                    loop {
                        let n = f.read(&mut buf)?;
                        if n == 0 {
                            break;
                        }
                        out.write_all(&buf[..n])?;
                        sent += n as u64;
                    }
                }
                (200, sent)
            }
            _ => {
                out.write_all(
                    b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
                )?;
                (404, 0)
            }
        }
    };
    out.flush()?;
    if let Ok(mut s) = shared.lock() {
        s.log.push(Request {
            peer: peer.ip(),
            path,
            status,
            bytes,
        });
    }
    Ok(())
}
