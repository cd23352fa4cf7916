//! A sum all-reduce over TCP: rank 0 accepts one connection from every other rank, sums what
//! each sends per epoch with its own contribution, and sends the sum back. A star, not a ring:
//! the point is to prove the rendezvous environment and the pod network, not bandwidth.
//!
//! Wire format (little endian): hello = `K8SFSMK1`, rank u32, world u32; rank 0 answers with the
//! first epoch to run (u32, from its checkpoint); per epoch each side sends `n` u32 then `n` u64.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream, ToSocketAddrs};
use std::time::{Duration, Instant};

const MAGIC: &[u8; 8] = b"K8SFSMK1";

pub enum Peer {
    /// Rank 0: one stream per other rank, indexed by rank - 1.
    Hub(Vec<TcpStream>),
    /// Any other rank: the stream to rank 0.
    Spoke(TcpStream),
}

fn read_u32(s: &mut TcpStream) -> std::io::Result<u32> {
    let mut b = [0u8; 4];
    s.read_exact(&mut b)?;
    Ok(u32::from_le_bytes(b))
}

fn write_vec(s: &mut TcpStream, v: &[u64]) -> std::io::Result<()> {
    let mut buf = Vec::with_capacity(4 + v.len() * 8);
    buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
    for x in v {
        buf.extend_from_slice(&x.to_le_bytes());
    }
    s.write_all(&buf)
}

fn read_vec(s: &mut TcpStream, expect: usize) -> Result<Vec<u64>, String> {
    let n = read_u32(s).map_err(|e| format!("reading a vector: {e}"))? as usize;
    if n != expect {
        return Err(format!("peer sent {n} elements, expected {expect}"));
    }
    let mut raw = vec![0u8; n * 8];
    s.read_exact(&mut raw)
        .map_err(|e| format!("reading {n} elements: {e}"))?;
    Ok(raw
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap_or([0; 8])))
        .collect())
}

/// Rank 0: accept `world - 1` ranks on `port` (all addresses) within `timeout`, then tell each
/// the first epoch.
pub fn hub(port: u16, world: u32, start_epoch: u32, timeout: Duration) -> Result<Peer, String> {
    let listener =
        TcpListener::bind(("0.0.0.0", port)).map_err(|e| format!("binding port {port}: {e}"))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| format!("listener: {e}"))?;
    let deadline = Instant::now() + timeout;
    let mut peers: Vec<Option<TcpStream>> = (1..world).map(|_| None).collect();
    while peers.iter().any(Option::is_none) {
        match listener.accept() {
            Ok((mut s, from)) => {
                s.set_nonblocking(false).map_err(|e| e.to_string())?;
                s.set_read_timeout(Some(timeout))
                    .map_err(|e| e.to_string())?;
                s.set_nodelay(true).ok();
                let mut magic = [0u8; 8];
                if s.read_exact(&mut magic).is_err() || &magic != MAGIC {
                    eprintln!("ignoring a connection from {from}: not a smoke rank");
                    continue;
                }
                let rank = read_u32(&mut s).map_err(|e| format!("hello from {from}: {e}"))?;
                let their_world =
                    read_u32(&mut s).map_err(|e| format!("hello from {from}: {e}"))?;
                if their_world != world {
                    return Err(format!(
                        "rank {rank} at {from} says the world size is {their_world}, rank 0 says {world}"
                    ));
                }
                let slot = (rank as usize)
                    .checked_sub(1)
                    .and_then(|i| peers.get_mut(i))
                    .ok_or_else(|| format!("{from} claims rank {rank}, outside 1..{world}"))?;
                if slot.is_some() {
                    return Err(format!("rank {rank} connected twice (again from {from})"));
                }
                *slot = Some(s);
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                if Instant::now() > deadline {
                    let missing: Vec<String> = peers
                        .iter()
                        .enumerate()
                        .filter(|(_, p)| p.is_none())
                        .map(|(i, _)| (i + 1).to_string())
                        .collect();
                    return Err(format!(
                        "ranks {} did not connect to port {port} within {} s",
                        missing.join(", "),
                        timeout.as_secs()
                    ));
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => return Err(format!("accepting on port {port}: {e}")),
        }
    }
    let mut streams: Vec<TcpStream> = peers.into_iter().flatten().collect();
    for s in &mut streams {
        s.write_all(&start_epoch.to_le_bytes())
            .map_err(|e| format!("sending the start epoch: {e}"))?;
    }
    Ok(Peer::Hub(streams))
}

/// Any other rank: connect to rank 0 (retrying until `timeout`: its pod may start later and its
/// name may not resolve yet), say hello, and learn the first epoch.
pub fn spoke(
    master: &(String, u16),
    rank: u32,
    world: u32,
    timeout: Duration,
) -> Result<(Peer, u32), String> {
    let deadline = Instant::now() + timeout;
    loop {
        let attempt = (master.0.as_str(), master.1)
            .to_socket_addrs()
            .map_err(|e| format!("resolving {}: {e}", master.0))
            .and_then(|addrs| {
                let addrs: Vec<_> = addrs.collect();
                addrs
                    .iter()
                    .find_map(|a| TcpStream::connect_timeout(a, Duration::from_secs(2)).ok())
                    .ok_or_else(|| {
                        format!(
                            "connecting to {}:{}: refused or timed out",
                            master.0, master.1
                        )
                    })
            });
        match attempt {
            Ok(mut s) => {
                s.set_read_timeout(Some(timeout))
                    .map_err(|e| e.to_string())?;
                s.set_nodelay(true).ok();
                let mut hello = MAGIC.to_vec();
                hello.extend_from_slice(&rank.to_le_bytes());
                hello.extend_from_slice(&world.to_le_bytes());
                s.write_all(&hello).map_err(|e| format!("hello: {e}"))?;
                let start = read_u32(&mut s).map_err(|e| format!("waiting for rank 0: {e}"))?;
                return Ok((Peer::Spoke(s), start));
            }
            Err(last) if Instant::now() > deadline => {
                return Err(format!(
                    "rank 0 at {}:{} not reachable within {} s: {last}",
                    master.0,
                    master.1,
                    timeout.as_secs()
                ));
            }
            Err(_) => {}
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

impl Peer {
    /// Sum `mine` element-wise across every rank; every rank gets the sum.
    pub fn all_reduce(&mut self, mine: &[u64]) -> Result<Vec<u64>, String> {
        match self {
            Peer::Hub(streams) => {
                let mut sum = mine.to_vec();
                for (i, s) in streams.iter_mut().enumerate() {
                    let theirs =
                        read_vec(s, mine.len()).map_err(|e| format!("rank {}: {e}", i + 1))?;
                    for (a, b) in sum.iter_mut().zip(theirs) {
                        *a = a.wrapping_add(b);
                    }
                }
                for (i, s) in streams.iter_mut().enumerate() {
                    write_vec(s, &sum).map_err(|e| format!("sending to rank {}: {e}", i + 1))?;
                }
                Ok(sum)
            }
            Peer::Spoke(s) => {
                write_vec(s, mine).map_err(|e| format!("sending to rank 0: {e}"))?;
                read_vec(s, mine.len()).map_err(|e| format!("from rank 0: {e}"))
            }
        }
    }
}
