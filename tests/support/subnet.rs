//! A node subnet 198.19.X.0/24 nobody else uses now, for tests that boot local nodes.

use std::fs;
use std::process::Command;

/// Reserved with a lock file (other test runs on the same machine, e.g. from another checkout,
/// pick different ones) and not assigned to any host interface. Keep the file for the test's
/// lifetime.
pub fn reserve_subnet() -> (u8, fs::File) {
    use std::os::unix::io::AsRawFd;
    for x in 20u8..=250 {
        let path = std::env::temp_dir().join(format!("k8sforge-local-test-subnet-{x}.lock"));
        let f = fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&path)
            .unwrap();
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            continue;
        }
        let addrs = Command::new("ip")
            .args(["-4", "-o", "addr", "show"])
            .output()
            .unwrap();
        if !String::from_utf8_lossy(&addrs.stdout).contains(&format!(" 198.19.{x}.")) {
            return (x, f);
        }
    }
    panic!("no free 198.19.X.0/24 test subnet");
}
