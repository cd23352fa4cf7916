//! A test hook for the crash-and-resume tests: when `K8SFORGE_TEST_CRASH_AT` names the point a
//! rotation just reached (e.g. `trust-both:committed`, `reissue:stage-2`), the process kills
//! itself with SIGKILL there — no unwinding, no cleanup, exactly like `kill -9` at that
//! instant, but at a boundary the test chooses instead of one it races for. Unset (always, in
//! real use) it does nothing.

/// The environment variable naming the crash point.
pub const ENV: &str = "K8SFORGE_TEST_CRASH_AT";

/// SIGKILL this process if `point` is the one the environment names.
pub fn hit(point: &str) {
    if std::env::var(ENV).is_ok_and(|p| p == point) {
        tracing::warn!(
            point,
            "crash point reached: killing this process (test hook)"
        );
        // SAFETY: raise only sends a signal to this process.
        unsafe {
            libc::raise(libc::SIGKILL);
        }
    }
}
