//! `certs rotate` of the etcd certificates on real local nodes (systemd-nspawn, real sshd and
//! systemd, Debian's etcd 3.4 from the test mirror, TLS with the generated PKI) while a client
//! loop writes and reads etcd through all three members the whole time: zero failed requests
//! (a write caught by a leader election is sent once more, as clients do: the leader's restart
//! needs one election, see `support::etcd_loop`; such writes are at most the elections the
//! members' journals show), every rotated certificate deployed with a new serial, `certs check` (which reads what the
//! nodes hold over SSH) clean afterwards. Also: `--dry-run` changes nothing, bad names get the
//! allowed list, a rotation SIGKILLed half-way resumes and finishes, and the cluster lock names
//! its holder and is taken over from a dead one.
//!
//! No Kubernetes binaries needed: only provision, pki and etcd are run. Own cluster name and
//! 198.19.X.0/24 subnet (`reserve_subnet`), so it runs beside the other local tests. Needs root,
//! systemd-container, debootstrap and apt access (test mirror, cached).

mod support;

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::io::AsRawFd;
use std::path::PathBuf;
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

use k8sforge_testkit::mirror;
use support::etcd_loop::{etcdctl, EtcdLoop};

const BIN: &str = env!("CARGO_BIN_EXE_k8sforge");

struct Cluster {
    home: tempfile::TempDir,
    mirror: String,
    name: String,
    cidr: String,
    _subnet_lock: fs::File,
}

impl Cluster {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.env("K8SFORGE_HOME", self.home.path())
            .arg(args[0])
            .args([
                "--profile",
                "local-ha",
                "--set",
                &format!("name={}", self.name),
                "--set",
                &format!("network.nodeCIDR={}", self.cidr),
            ])
            .args(&args[1..]);
        c
    }

    /// The verb is two words (`certs rotate`): the profile flags go after both.
    fn certs(&self, verb: &str, args: &[&str]) -> Output {
        let mut c = Command::new(BIN);
        c.env("K8SFORGE_HOME", self.home.path())
            .args(["certs", verb])
            .args([
                "--profile",
                "local-ha",
                "--set",
                &format!("name={}", self.name),
                "--set",
                &format!("network.nodeCIDR={}", self.cidr),
            ])
            .args(args);
        c.output().unwrap()
    }

    fn up_only(&self, phase: &str) -> Output {
        self.cmd(&[
            "up",
            "--mirror",
            &self.mirror,
            "--trust-mirror-checksums",
            "--only",
            phase,
            "-o",
            "json",
        ])
        .output()
        .unwrap()
    }

    fn dir(&self) -> PathBuf {
        self.home.path().join(&self.name)
    }

    fn state(&self) -> serde_json::Value {
        serde_json::from_slice(&fs::read(self.dir().join("state.json")).unwrap()).unwrap()
    }

    fn ip(&self, host: u8) -> String {
        format!("{}.{host}", self.cidr.trim_end_matches(".0/24"))
    }

    /// How many times a member became leader so far (all members' journals): elections.
    fn elections(&self) -> usize {
        ["controlplane-1", "controlplane-2", "controlplane-3"]
            .iter()
            .map(|n| {
                let out = self
                    .cmd(&["ssh", n, "--", support::etcd_loop::ELECTIONS_CMD])
                    .output()
                    .unwrap();
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse::<usize>()
                    .unwrap_or(0)
            })
            .sum()
    }

    /// What each member's journal says about leadership (elections, hand-overs, step-downs),
    /// to tell why a request of the loop failed.
    fn leadership_log(&self) -> String {
        let mut s = String::new();
        for n in ["controlplane-1", "controlplane-2", "controlplane-3"] {
            let out = self
                .cmd(&[
                    "ssh",
                    n,
                    "--",
                    "journalctl -u etcd --no-pager -o short-precise | grep -E 'elected leader|became leader|lost leader|stepped down|MsgTimeoutNow|leadership transfer|became candidate|became pre-candidate|became follower|received signal|ignored MsgVote|rejected MsgPreVote' | tail -n 60",
                ])
                .output()
                .unwrap();
            s.push_str(&format!(
                "--- {n}\n{}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
        s
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.cmd(&["teardown"]).output();
    }
}

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

/// `(node, path) → serial` of every certificate `certs check` read from the nodes.
fn deployed_serials(check: &serde_json::Value) -> BTreeMap<(String, String), String> {
    let mut out = BTreeMap::new();
    for n in check["nodes"].as_array().expect("nodes in certs check") {
        assert_eq!(n["reachable"], true, "{n:#}");
        for c in n["certificates"].as_array().unwrap() {
            out.insert(
                (
                    n["node"].as_str().unwrap().to_string(),
                    c["path"].as_str().unwrap().to_string(),
                ),
                c["serial"].as_str().unwrap_or_default().to_string(),
            );
        }
    }
    out
}

#[test]
fn etcd_certificates_rotate_member_by_member_with_zero_failed_requests() {
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test boots systemd-nspawn nodes: run as root"
    );
    let m = mirror::build(&mirror::default_cache_dir()).expect("test mirror");
    let (x, lock) = support::subnet::reserve_subnet();
    let c = Cluster {
        home: tempfile::tempdir().unwrap(),
        mirror: m.root.display().to_string(),
        name: format!("rot-{x}"),
        cidr: format!("198.19.{x}.0/24"),
        _subnet_lock: lock,
    };
    let _ = c.cmd(&["teardown"]).output();

    // 1. Three stacked etcd members over TLS (no Kubernetes binaries needed).
    for p in ["provision", "pki", "etcd"] {
        let out = c.up_only(p);
        assert!(out.status.success(), "up --only {p}: {}", text(&out));
    }

    // 2. The cluster lock names its holder; a dead holder's lock is taken over with a line.
    let lock_path = c.dir().join(".lock");
    let f = fs::OpenOptions::new().write(true).open(&lock_path).unwrap();
    // SAFETY: flock on an fd we own.
    assert_eq!(
        unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) },
        0
    );
    fs::write(
        &lock_path,
        r#"{"pid":4242,"host":"ci-host","command":"k8sforge up --profile local-ha","since":"2026-12-01T00:00:00Z"}"#,
    )
    .unwrap();
    let out = c.up_only("pki");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        err.contains("is locked by another k8sforge run (pid 4242 on ci-host, `k8sforge up --profile local-ha`, since 2026-12-01T00:00:00Z)"),
        "{err}"
    );
    let out = c.certs("rotate", &["--dry-run"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("pid 4242"),
        "{}",
        text(&out)
    );
    drop(f); // the "holder" dies without clearing its record
    let out = c.up_only("pki");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}", text(&out));
    assert!(
        err.contains("was left by a run that is no longer running (pid 4242")
            && err.contains("taking it over"),
        "{err}"
    );
    assert_eq!(
        fs::read_to_string(&lock_path).unwrap(),
        "",
        "a clean exit clears the record"
    );

    // 3. certs check reads the nodes: clean, serials of what they hold.
    let out = c.certs("check", &["-o", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let before = deployed_serials(&json(&out));
    let etcd_files = [
        "/etc/etcd/server.crt",
        "/etc/etcd/peer.crt",
        "/etc/etcd/healthcheck-client.crt",
    ];
    let members = ["controlplane-1", "controlplane-2", "controlplane-3"];
    for n in members {
        for p in etcd_files {
            assert!(
                before
                    .get(&(n.to_string(), p.to_string()))
                    .is_some_and(|s| !s.is_empty()),
                "{n}:{p} not read: {before:?}"
            );
        }
    }

    // 4. Bad names get the allowed list; a CA is pointed at --ca; nothing is written.
    let pki_before = fs::read(c.dir().join("pki/etcd/server-controlplane-1.crt")).unwrap();
    let out = c.certs("rotate", &["--only", "etcd-server"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{}", text(&out));
    assert!(
        err.contains("unknown certificate \"etcd-server\"")
            && err.contains("etcd/server (every node)")
            && err.contains("apiserver"),
        "{err}"
    );
    let out = c.certs("rotate", &["--only", "etcd/ca"]);
    assert!(
        !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("--ca"),
        "{}",
        text(&out)
    );

    // 5. --dry-run: the plan — three etcd stages, one member each, in order — and no change.
    let only = [
        "--only",
        "etcd/server",
        "etcd/peer",
        "etcd/healthcheck-client",
    ];
    let state_before = fs::read(c.dir().join("state.json")).unwrap();
    let mut args = only.to_vec();
    args.extend(["--dry-run", "-o", "json"]);
    let out = c.certs("rotate", &args);
    assert!(out.status.success(), "{}", text(&out));
    let plan = json(&out);
    assert_eq!(plan["dryRun"], true);
    assert_eq!(
        plan["certificates"].as_array().unwrap().len(),
        7,
        "{plan:#}"
    );
    let stages = plan["plan"]["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 3, "{plan:#}");
    for (st, n) in stages.iter().zip(members) {
        assert_eq!(st["kind"], "etcd");
        assert_eq!(st["nodes"][0]["node"], n);
        assert_eq!(st["nodes"][0]["units"], serde_json::json!(["etcd.service"]));
        let files: Vec<&str> = st["nodes"][0]["files"]
            .as_array()
            .unwrap()
            .iter()
            .map(|f| f.as_str().unwrap())
            .collect();
        for f in etcd_files {
            assert!(files.contains(&f), "{n}: {files:?}");
        }
        assert!(
            files.iter().all(|f| f.starts_with("/etc/etcd/")),
            "{files:?}"
        );
    }
    assert_eq!(fs::read(c.dir().join("state.json")).unwrap(), state_before);
    assert_eq!(
        fs::read(c.dir().join("pki/etcd/server-controlplane-1.crt")).unwrap(),
        pki_before
    );
    let mut args = only.to_vec();
    args.push("--dry-run");
    let out = c.certs("rotate", &args);
    let plan_text = String::from_utf8_lossy(&out.stdout);
    assert!(
        plan_text.contains("3 stage(s)") && plan_text.contains("dry run: nothing was changed"),
        "{plan_text}"
    );

    // 6. The real rotation with the client loop running through all three members.
    let tools = tempfile::tempdir().unwrap();
    let etcdctl = etcdctl(&m.root, tools.path());
    // The loop keeps the client certificate it started with (still valid: same CA).
    for (from, to) in [
        ("etcd/ca.crt", "ca.crt"),
        ("etcd/healthcheck-client.crt", "client.crt"),
        ("etcd/healthcheck-client.key", "client.key"),
    ] {
        fs::copy(c.dir().join("pki").join(from), tools.path().join(to)).unwrap();
    }
    let endpoints = (11..=13)
        .map(|h| format!("https://{}:2379", c.ip(h)))
        .collect::<Vec<_>>()
        .join(",");
    let lp = EtcdLoop::start(
        etcdctl.clone(),
        endpoints.clone(),
        tools.path().to_path_buf(),
    );
    std::thread::sleep(Duration::from_secs(2));
    let elections_before = c.elections();
    let started = Instant::now();
    let mut args = only.to_vec();
    args.extend(["-o", "json"]);
    let out = c.certs("rotate", &args);
    let took = started.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let (ok, failed, retried) = lp.finish();
    assert!(out.status.success(), "{}", text(&out));
    let report = json(&out);
    // Each hand-over is one election; more means a restarted member unseated a leader.
    let elections = c.elections().saturating_sub(elections_before);
    eprintln!(
        "etcd rotation: {:.1} s, {ok} requests ok, {} failed during it, {elections} leader election(s), {} write(s) sent again after a leader election {retried:?}",
        took.as_secs_f64(),
        failed.len(),
        retried.len()
    );
    // The loop sends one request at a time: an election (milliseconds) can drop one write.
    assert!(
        retried.len() <= elections,
        "{} writes dropped in {elections} elections: {retried:?}",
        retried.len()
    );
    assert!(
        failed.is_empty(),
        "{} failed requests: {:#?}\nrotation report: {}\nleadership in the journals:\n{}",
        failed.len(),
        failed,
        String::from_utf8_lossy(&out.stdout),
        c.leadership_log()
    );
    assert!(ok > 20, "the loop ran only {ok} requests");
    assert_eq!(report["ok"], true, "{report:#}");
    let stages = report["stages"].as_array().unwrap();
    assert_eq!(stages.len(), 3);
    for (st, n) in stages.iter().zip(members) {
        assert_eq!(st["nodes"][0]["node"], n);
        assert_eq!(
            st["nodes"][0]["restarted"],
            serde_json::json!(["etcd.service"])
        );
    }
    assert!(
        c.state().get("rotation").is_none(),
        "rotation record left behind"
    );

    // 7. Every rotated certificate is deployed with the new serial the report names; the rest
    //    untouched; certs check clean.
    let out = c.certs("check", &["-o", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let after = deployed_serials(&json(&out));
    let new_serial = |name: &str| -> String {
        report["certificates"]
            .as_array()
            .unwrap()
            .iter()
            .find(|c| c["name"] == name)
            .unwrap_or_else(|| panic!("{name} not in {report:#}"))["newSerial"]
            .as_str()
            .unwrap()
            .to_string()
    };
    for n in members {
        let k = |p: &str| (n.to_string(), p.to_string());
        for (p, cert) in [
            ("/etc/etcd/server.crt", format!("etcd/server-{n}")),
            ("/etc/etcd/peer.crt", format!("etcd/peer-{n}")),
            (
                "/etc/etcd/healthcheck-client.crt",
                "etcd/healthcheck-client".into(),
            ),
        ] {
            assert_ne!(after[&k(p)], before[&k(p)], "{n}:{p} not rotated");
            assert_eq!(after[&k(p)], new_serial(&cert), "{n}:{p}");
        }
        assert_eq!(
            after[&k("/etc/etcd/ca.crt")],
            before[&k("/etc/etcd/ca.crt")]
        );
    }

    // 8. SIGKILL a rotation after its first stage; the re-run resumes (no new certificates)
    //    and finishes, the loop still sees no failure.
    let elections_before = c.elections();
    let lp = EtcdLoop::start(etcdctl, endpoints, tools.path().to_path_buf());
    let mut child = Command::new(BIN)
        .env("K8SFORGE_HOME", c.home.path())
        .args(["certs", "rotate", "--profile", "local-ha"])
        .args(["--set", &format!("name={}", c.name)])
        .args(["--set", &format!("network.nodeCIDR={}", c.cidr)])
        .args(["--only", "etcd/server"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        let done = fs::read(c.dir().join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .and_then(|s| s["rotation"]["stagesDone"].as_u64())
            .unwrap_or(0);
        if done >= 1 {
            break;
        }
        assert!(Instant::now() < deadline, "first stage never recorded");
        assert!(
            child.try_wait().unwrap().is_none(),
            "rotation ended before it could be killed"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    let rec = c.state()["rotation"].clone();
    assert!(rec.is_object(), "no rotation record after the kill");
    let issued: Vec<String> = rec["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["newSerial"].as_str().unwrap().to_string())
        .collect();
    // `up` refuses while the rotation is half-done, says how to finish it, changes nothing.
    let state_before = fs::read(c.dir().join("state.json")).unwrap();
    let out = c.cmd(&["up", "--only", "etcd"]).output().unwrap();
    let err = text(&out);
    assert!(
        !out.status.success(),
        "up ran during a half-done rotation: {err}"
    );
    assert!(
        err.contains("certificate rotation in progress")
            && err.contains("`k8sforge certs rotate --profile local-ha` resumes where it stopped"),
        "{err}"
    );
    assert_eq!(fs::read(c.dir().join("state.json")).unwrap(), state_before);
    let out = c.certs("rotate", &["-o", "json"]);
    let (_, failed, retried) = lp.finish();
    let elections = c.elections().saturating_sub(elections_before);
    eprintln!(
        "killed and resumed etcd rotation: {elections} leader election(s), {} write(s) sent again after a leader election {retried:?}",
        retried.len()
    );
    assert!(
        retried.len() <= elections,
        "{} writes dropped in {elections} elections: {retried:?}",
        retried.len()
    );
    assert!(out.status.success(), "{}", text(&out));
    let resumed = json(&out);
    assert_eq!(resumed["resumed"], true, "{resumed:#}");
    let again: Vec<String> = resumed["certificates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["newSerial"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(again, issued, "the resumed run issued new certificates");
    assert!(resumed["stagesDoneBefore"].as_u64().unwrap() >= 1);
    assert!(
        failed.is_empty(),
        "failed requests: {failed:#?}\nleadership in the journals:\n{}",
        c.leadership_log()
    );
    assert!(c.state().get("rotation").is_none());
    let out = c.certs("check", &["-o", "json"]);
    assert!(out.status.success(), "{}", text(&out));
    let last = deployed_serials(&json(&out));
    for n in members {
        let k = (n.to_string(), "/etc/etcd/server.crt".to_string());
        assert_ne!(
            last[&k], after[&k],
            "{n}: server certificate not rotated by the resumed run"
        );
    }
}
