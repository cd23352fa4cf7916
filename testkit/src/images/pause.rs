// The pod sandbox program of the test images: k8sforge's own pause, built by the test kit with
// `rustc -C target-feature=+crt-static` (not part of the crate's module tree). As PID 1 of a pod's
// sandbox it holds the namespaces open, reaps orphaned children, and exits on SIGINT/SIGTERM.
// Only std and three libc calls, so one static binary is the whole image.

use std::ffi::c_int;

const SIGINT: c_int = 2;
const SIGTERM: c_int = 15;
const SIGCHLD: c_int = 17;
const WNOHANG: c_int = 1;

extern "C" {
    fn signal(sig: c_int, handler: extern "C" fn(c_int)) -> usize;
    fn pause() -> c_int;
    fn waitpid(pid: c_int, status: *mut c_int, options: c_int) -> c_int;
    fn _exit(code: c_int) -> !;
}

extern "C" fn on_term(_: c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { _exit(0) }
}

extern "C" fn on_child(_: c_int) {
    // SAFETY: waitpid is async-signal-safe; a null status pointer is allowed.
    unsafe { while waitpid(-1, std::ptr::null_mut(), WNOHANG) > 0 {} }
}

fn main() {
    if std::process::id() != 1 {
        eprintln!("pause: warning: not running as PID 1");
    }
    // SAFETY: installing handlers that only call async-signal-safe functions.
    unsafe {
        signal(SIGINT, on_term);
        signal(SIGTERM, on_term);
        signal(SIGCHLD, on_child);
    }
    loop {
        // SAFETY: pause() only blocks until a signal arrives.
        unsafe { pause() };
    }
}
