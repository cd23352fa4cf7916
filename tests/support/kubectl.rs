//! kubectl from the given Kubernetes binaries against a test cluster, and the polling loops the
//! live tests wait with. Every call has a request timeout so a dead API fails the test with the
//! command instead of hanging it.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub struct Kubectl {
    pub bin: PathBuf,
    pub kubeconfig: PathBuf,
    /// `--server` override (node identities' kubeconfigs name the node-local endpoint).
    pub server: Option<String>,
    pub timeout: &'static str,
}

impl Kubectl {
    pub fn new(bin: impl Into<PathBuf>, kubeconfig: impl Into<PathBuf>) -> Self {
        Kubectl {
            bin: bin.into(),
            kubeconfig: kubeconfig.into(),
            server: None,
            timeout: "30s",
        }
    }

    pub fn with_server(mut self, server: impl Into<String>) -> Self {
        self.server = Some(server.into());
        self
    }

    /// Run kubectl with `args`, feeding `stdin` when given.
    pub fn output(&self, args: &[&str], stdin: Option<&str>) -> Output {
        let mut c = Command::new(&self.bin);
        c.arg("--kubeconfig").arg(&self.kubeconfig);
        if let Some(s) = &self.server {
            c.arg(format!("--server={s}"));
        }
        c.arg(format!("--request-timeout={}", self.timeout))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().unwrap();
        let mut input = child.stdin.take().unwrap();
        if let Some(s) = stdin {
            input.write_all(s.as_bytes()).unwrap();
        }
        drop(input);
        child.wait_with_output().unwrap()
    }

    /// stdout of a kubectl run that must succeed.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.output(args, None);
        assert!(
            out.status.success(),
            "kubectl {args:?}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `kubectl ARGS -o json`, parsed.
    pub fn json(&self, args: &[&str]) -> serde_json::Value {
        let mut a = args.to_vec();
        a.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&a)).unwrap()
    }

    fn with_stdin(&self, verb: &[&str], doc: &str) {
        let mut args = verb.to_vec();
        args.extend(["-f", "-"]);
        let out = self.output(&args, Some(doc));
        assert!(
            out.status.success(),
            "kubectl {verb:?}: {}\n{doc}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn create(&self, obj: &serde_json::Value) {
        self.with_stdin(&["create"], &obj.to_string());
    }

    pub fn apply(&self, yaml: &str) {
        self.with_stdin(&["apply"], yaml);
    }

    /// Poll `kubectl get ARGS -o json` until `ok` holds for it; a failed get counts as not yet.
    pub fn wait_json(
        &self,
        args: &[&str],
        timeout: Duration,
        ok: impl Fn(&serde_json::Value) -> bool,
    ) -> serde_json::Value {
        let deadline = Instant::now() + timeout;
        loop {
            let mut a = args.to_vec();
            a.extend(["-o", "json"]);
            let out = self.output(&a, None);
            let v: serde_json::Value =
                serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
            if ok(&v) {
                return v;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {args:?}: {v:#}\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

/// `kubectl get --raw PATH` in a loop on its own thread (about ten a second) until
/// [`ApiLoop::finish`]: each request a new kubectl process and connection, so a kubeconfig
/// rewritten meanwhile (atomically, by k8sforge) is read anew. Failures are kept with the
/// seconds since the start.
pub struct ApiLoop {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<Mutex<Vec<(f64, String)>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl ApiLoop {
    pub fn start(k: Kubectl, path: &str) -> ApiLoop {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let (s, o, f) = (stop.clone(), ok.clone(), failed.clone());
        let path = path.to_string();
        let t0 = Instant::now();
        let handle = std::thread::spawn(move || {
            while !s.load(Ordering::Relaxed) {
                let out = k.output(&["get", "--raw", &path], None);
                if out.status.success() {
                    o.fetch_add(1, Ordering::Relaxed);
                } else {
                    f.lock().unwrap().push((
                        t0.elapsed().as_secs_f64(),
                        String::from_utf8_lossy(&out.stderr).trim().to_string(),
                    ));
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        });
        ApiLoop {
            stop,
            ok,
            failed,
            handle: Some(handle),
        }
    }

    /// Stop the loop; (requests that succeeded, failures with their time).
    pub fn finish(mut self) -> (usize, Vec<(f64, String)>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
        let f = self.failed.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), f)
    }
}

/// The `server:` of a kubeconfig file.
pub fn server_of(kubeconfig: &Path) -> String {
    std::fs::read_to_string(kubeconfig)
        .unwrap()
        .lines()
        .find_map(|l| l.trim().strip_prefix("server: ").map(String::from))
        .unwrap_or_else(|| panic!("no server in {}", kubeconfig.display()))
}

/// Wait until `f` returns Some (polling every second), or panic with `what`.
pub fn until<T>(what: &str, secs: u64, f: impl FnMut() -> Option<T>) -> T {
    until_or(what, secs, &String::new, f)
}

/// [`until`], with `why()` in the timeout message.
pub fn until_or<T>(
    what: &str,
    secs: u64,
    why: &dyn Fn() -> String,
    mut f: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + Duration::from_secs(secs);
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {secs} s: {what}\n{}",
            why()
        );
        std::thread::sleep(Duration::from_secs(1));
    }
}

/// The documented way to advertise an extended resource without a device plugin: patch the
/// node's status capacity, then wait for the kubelet to copy it into allocatable.
pub fn advertise_extended(k: &Kubectl, node: &str, resource: &str, n: u32) {
    let path = resource.replace('/', "~1");
    k.ok(&[
        "patch",
        "node",
        node,
        "--subresource=status",
        "--type=json",
        "-p",
        &format!("[{{\"op\":\"add\",\"path\":\"/status/capacity/{path}\",\"value\":\"{n}\"}}]"),
    ]);
    until(&format!("{node} allocatable {resource}={n}"), 90, || {
        let v = k.json(&["get", "node", node]);
        (v["status"]["allocatable"][resource].as_str() == Some(n.to_string().as_str()))
            .then_some(())
    });
}
