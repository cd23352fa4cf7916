//! The measurements, over plain TCP between two probes. A connection starts with one byte:
//! `P` (ping: every byte is echoed back) or `T` (throughput: an 8-byte big-endian length, that
//! many bytes, then the server answers `K`).

use std::io::{self, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

const TIMEOUT: Duration = Duration::from_secs(30);
const CHUNK: usize = 64 * 1024;

/// Serve measurements from peers until the listener fails (one thread per connection).
pub fn serve(listener: TcpListener) -> io::Result<()> {
    for conn in listener.incoming() {
        let Ok(conn) = conn else { continue };
        std::thread::spawn(move || {
            let _ = serve_one(conn);
        });
    }
    Ok(())
}

fn serve_one(mut c: TcpStream) -> io::Result<()> {
    c.set_read_timeout(Some(TIMEOUT))?;
    c.set_nodelay(true)?;
    let mut mode = [0u8; 1];
    c.read_exact(&mut mode)?;
    match mode[0] {
        b'P' => {
            let mut b = [0u8; 1];
            while c.read(&mut b)? == 1 {
                c.write_all(&b)?;
            }
            Ok(())
        }
        b'T' => {
            let mut len = [0u8; 8];
            c.read_exact(&mut len)?;
            let mut left = u64::from_be_bytes(len);
            let mut buf = vec![0u8; CHUNK];
            while left > 0 {
                let want = left.min(CHUNK as u64) as usize;
                let n = c.read(&mut buf[..want])?;
                if n == 0 {
                    return Err(io::ErrorKind::UnexpectedEof.into());
                }
                left -= n as u64;
            }
            c.write_all(b"K")
        }
        _ => Err(io::ErrorKind::InvalidData.into()),
    }
}

fn connect(addr: SocketAddr) -> io::Result<TcpStream> {
    let c = TcpStream::connect_timeout(&addr, Duration::from_secs(5))?;
    c.set_read_timeout(Some(TIMEOUT))?;
    c.set_write_timeout(Some(TIMEOUT))?;
    c.set_nodelay(true)?;
    Ok(c)
}

/// Median round-trip time of `pings` one-byte pings on one connection.
pub fn rtt(addr: SocketAddr, pings: usize) -> io::Result<Duration> {
    let mut c = connect(addr)?;
    c.write_all(b"P")?;
    let mut times = Vec::with_capacity(pings);
    let mut b = [0u8; 1];
    for _ in 0..pings.max(1) {
        let t = Instant::now();
        c.write_all(b"x")?;
        c.read_exact(&mut b)?;
        times.push(t.elapsed());
    }
    times.sort();
    Ok(times[times.len() / 2])
}

/// Bits per second of sending `bytes` to the peer (until it acknowledged all of them).
pub fn throughput(addr: SocketAddr, bytes: u64) -> io::Result<f64> {
    let mut c = connect(addr)?;
    let buf = vec![0x5au8; CHUNK];
    let t = Instant::now();
    c.write_all(b"T")?;
    c.write_all(&bytes.to_be_bytes())?;
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK as u64) as usize;
        c.write_all(&buf[..n])?;
        left -= n as u64;
    }
    let mut ack = [0u8; 1];
    c.read_exact(&mut ack)?;
    let secs = t.elapsed().as_secs_f64().max(1e-9);
    Ok(bytes as f64 * 8.0 / secs)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn measures_against_a_real_server_on_loopback() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        std::thread::spawn(move || serve(l));
        let r = rtt(addr, 5).unwrap();
        assert!(r < Duration::from_secs(1), "{r:?}");
        let bps = throughput(addr, 8 << 20).unwrap();
        // Loopback carries far more than 100 Mbit/s even on a busy machine.
        assert!(bps > 1e8, "{bps}");
    }
}
