//! The etcd side of the rotation tests: etcdctl from the test mirror's etcd release, and a
//! client loop that writes and reads a key through every member (etcdctl's own failover between
//! endpoints) for as long as a rotation runs, keeping each failure with its wall-clock time.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;

/// etcdctl from the test mirror's etcd release archive, unpacked into `dir`.
pub fn etcdctl(mirror_root: &Path, dir: &Path) -> PathBuf {
    let mut stack = vec![mirror_root.to_path_buf()];
    let mut archive = None;
    while let Some(d) = stack.pop() {
        for e in fs::read_dir(&d).unwrap().filter_map(Result::ok) {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else if p.file_name().is_some_and(|n| {
                n.to_string_lossy().starts_with("etcd-v")
                    && n.to_string_lossy().ends_with(".tar.gz")
            }) {
                archive = Some(p);
            }
        }
    }
    let archive = archive.expect("etcd archive in the test mirror");
    let out = Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(dir)
        .args(["--wildcards", "*/etcdctl", "--strip-components=1"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    dir.join("etcdctl")
}

/// `HH:MM:SS.micros` UTC of `t` (journalctl's short-precise in the nodes, which run in UTC).
pub fn time_of_day(t: std::time::SystemTime) -> String {
    let d = t.duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
    let s = d.as_secs() % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:06}",
        s / 3600,
        s / 60 % 60,
        s % 60,
        d.subsec_micros()
    )
}

/// What a write may get during a leader election: raft drops proposals while leadership moves
/// (a few milliseconds), with an answer at the member that had it ("raft proposal dropped",
/// "leader changed", "no leader") or, for one a follower had forwarded to the outgoing leader,
/// none, so the client's deadline passes. No rotation can avoid every election: the leader's
/// own restart needs one. The loop's writes are idempotent (the same value to the same key), so
/// it sends such a write once more, as a client would; the test bounds these by the elections
/// the members' journals show.
pub const LEADER_CHANGE_ANSWERS: [&str; 4] = [
    "raft proposal dropped",
    "etcdserver: leader changed",
    "etcdserver: no leader",
    "context deadline exceeded",
];

/// The leader-election answer in `stderr` of a failed etcdctl run, if it is one.
pub fn leader_change_answer(stderr: &str) -> Option<&'static str> {
    LEADER_CHANGE_ANSWERS
        .iter()
        .copied()
        .find(|e| stderr.contains(e))
}

/// Run on each member, prints how many times it became leader (its journal): elections.
pub const ELECTIONS_CMD: &str =
    "journalctl -u etcd --no-pager | grep -c 'became leader at term' || true";

/// Writes then reads a key through all members (etcdctl fails over between endpoints; reads
/// are retried by etcd's client itself) until stopped. A write that got a leader-change answer
/// (`LEADER_CHANGE_ANSWERS`) is sent once more and counted as retried; every other failure, and
/// a retry that fails, counts as failed.
pub struct EtcdLoop {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<std::sync::Mutex<Vec<String>>>,
    retried: Arc<std::sync::Mutex<Vec<String>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl EtcdLoop {
    pub fn start(etcdctl: PathBuf, endpoints: String, certs: PathBuf) -> EtcdLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(std::sync::Mutex::new(Vec::new()));
        let retried = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, o, f, r) = (stop.clone(), ok.clone(), failed.clone(), retried.clone());
        let handle = std::thread::spawn(move || {
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                i += 1;
                for args in [
                    vec!["put".to_string(), format!("rot/{}", i % 50), i.to_string()],
                    vec!["get".to_string(), format!("rot/{}", i % 50)],
                ] {
                    let run = || {
                        Command::new(&etcdctl)
                            .env("ETCDCTL_API", "3")
                            .arg(format!("--endpoints={endpoints}"))
                            .arg(format!("--cacert={}", certs.join("ca.crt").display()))
                            .arg(format!("--cert={}", certs.join("client.crt").display()))
                            .arg(format!("--key={}", certs.join("client.key").display()))
                            .args(["--dial-timeout=2s", "--command-timeout=5s"])
                            .args(&args)
                            .output()
                            .unwrap()
                    };
                    let mut out = run();
                    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
                    let why = leader_change_answer(&stderr);
                    if let (false, "put", Some(why)) = (out.status.success(), args[0].as_str(), why)
                    {
                        let at = time_of_day(std::time::SystemTime::now());
                        r.lock().unwrap().push(format!("{at} put: {why}"));
                        out = run();
                    }
                    if out.status.success() {
                        o.fetch_add(1, Ordering::Relaxed);
                    } else {
                        // Wall-clock time, to line up with the members' journals.
                        let at = time_of_day(std::time::SystemTime::now());
                        f.lock().unwrap().push(format!(
                            "{at} {}: {}",
                            args[0],
                            String::from_utf8_lossy(&out.stderr).trim()
                        ));
                    }
                }
            }
        });
        EtcdLoop {
            stop,
            ok,
            failed,
            retried,
            handle: Some(handle),
        }
    }

    /// Stop and return (ok, failures, writes sent twice after a leader-change answer).
    pub fn finish(mut self) -> (usize, Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
        let failed = self.failed.lock().unwrap().clone();
        let retried = self.retried.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failed, retried)
    }
}
