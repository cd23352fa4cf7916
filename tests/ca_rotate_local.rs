//! `certs rotate --ca --only-ca etcd` on real local nodes (systemd-nspawn, real sshd and
//! systemd, Debian's etcd from the test mirror, TLS with the generated PKI), no Kubernetes
//! binaries needed: a client loop writes and reads etcd through all three members the whole
//! time with the client material the state directory holds at that moment (the trust bundle
//! while there is one, the health-check client certificate of the current step) — zero failed
//! requests (a write caught by a leader election is sent once more, at most one per election:
//! `support::etcd_loop`). k8sforge is SIGKILLed at every step boundary and inside stages (the
//! `K8SFORGE_TEST_CRASH_AT` hook), each re-run resumes and the last one finishes. Afterwards
//! `certs check` is clean, every deployed etcd certificate is signed by the new CA (authority
//! key id = the new CA's key id), the nodes trust only the new CA, and the pre-rotation client
//! certificate is refused.
//!
//! Own cluster name and reserved subnet. Needs root, systemd-container, debootstrap and apt
//! access (test mirror, cached).

mod support;

use std::fs;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8sforge_testkit::mirror;
use support::local_cluster::LocalCluster;

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status,
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

fn state(c: &LocalCluster) -> serde_json::Value {
    serde_json::from_slice(&fs::read(c.state_dir().join("state.json")).unwrap()).unwrap()
}

/// `certs VERB` with the cluster's profile flags (the verb is two words).
fn certs(c: &LocalCluster, verb: &str, args: &[&str], env: Option<(&str, &str)>) -> Output {
    let mut cmd = Command::new(support::local_cluster::BIN);
    cmd.env("K8SFORGE_HOME", c.home())
        .args(["certs", verb, "--profile", c.profile])
        .args(["--set", &format!("name={}", c.name)])
        .args(["--set", &format!("network.nodeCIDR={}", c.cidr)])
        .args(args);
    if let Some((k, v)) = env {
        cmd.env(k, v);
    }
    cmd.output().unwrap()
}

/// Whether `key_pem` is the private key of `cert_pem` (a read between the two renames of a
/// commit can see a new key with an old certificate: that is a torn read by this test, not a
/// failed request, and is read again).
fn pair_matches(cert_pem: &[u8], key_pem: &[u8]) -> bool {
    use rcgen::PublicKeyData;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let Ok(key) = std::str::from_utf8(key_pem).map(rcgen::KeyPair::from_pem) else {
        return false;
    };
    let Ok(key) = key else { return false };
    let Ok((_, pem)) = x509_parser::pem::parse_x509_pem(cert_pem) else {
        return false;
    };
    let Ok((_, x)) = X509Certificate::from_der(&pem.contents) else {
        return false;
    };
    x.public_key().raw == key.subject_public_key_info().as_slice()
}

/// The etcd client material the state directory holds now, copied into `to`.
fn snapshot_client(state_dir: &Path, to: &Path) {
    let pki = state_dir.join("pki/etcd");
    loop {
        let trust = fs::read(pki.join("ca.trust.crt")).or_else(|_| fs::read(pki.join("ca.crt")));
        let cert = fs::read(pki.join("healthcheck-client.crt"));
        let key = fs::read(pki.join("healthcheck-client.key"));
        if let (Ok(t), Ok(c), Ok(k)) = (trust, cert, key) {
            if pair_matches(&c, &k) {
                fs::write(to.join("ca.crt"), t).unwrap();
                fs::write(to.join("client.crt"), c).unwrap();
                fs::write(to.join("client.key"), k).unwrap();
                return;
            }
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Writes then reads a key through all members until stopped, each request with the client
/// material of the moment; counts requests that failed after etcdctl's own failover. A write
/// caught by a leader election is sent once more and counted apart (`support::etcd_loop`).
struct Loop {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    failed: Arc<Mutex<Vec<String>>>,
    retried: Arc<Mutex<Vec<String>>>,
    handle: Option<std::thread::JoinHandle<()>>,
}

impl Loop {
    fn start(etcdctl: PathBuf, endpoints: String, state_dir: PathBuf) -> Loop {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let failed = Arc::new(Mutex::new(Vec::new()));
        let retried = Arc::new(Mutex::new(Vec::new()));
        let (s, o, f, r) = (stop.clone(), ok.clone(), failed.clone(), retried.clone());
        let handle = std::thread::spawn(move || {
            let tmp = tempfile::tempdir().unwrap();
            let mut i = 0u64;
            while !s.load(Ordering::Relaxed) {
                i += 1;
                snapshot_client(&state_dir, tmp.path());
                for args in [
                    vec![
                        "put".to_string(),
                        format!("carot/{}", i % 50),
                        i.to_string(),
                    ],
                    vec!["get".to_string(), format!("carot/{}", i % 50)],
                ] {
                    let mut out = etcd_request(&etcdctl, &endpoints, tmp.path(), &args);
                    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
                    let why = support::etcd_loop::leader_change_answer(&stderr);
                    if let (false, "put", Some(why)) = (out.status.success(), args[0].as_str(), why)
                    {
                        r.lock().unwrap().push(why.to_string());
                        out = etcd_request(&etcdctl, &endpoints, tmp.path(), &args);
                    }
                    if out.status.success() {
                        o.fetch_add(1, Ordering::Relaxed);
                    } else {
                        f.lock()
                            .unwrap()
                            .push(String::from_utf8_lossy(&out.stderr).into_owned());
                    }
                }
            }
        });
        Loop {
            stop,
            ok,
            failed,
            retried,
            handle: Some(handle),
        }
    }

    fn finish(mut self) -> (usize, Vec<String>, Vec<String>) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            h.join().unwrap();
        }
        let failed = self.failed.lock().unwrap().clone();
        let retried = self.retried.lock().unwrap().clone();
        (self.ok.load(Ordering::Relaxed), failed, retried)
    }
}

fn etcd_request(etcdctl: &Path, endpoints: &str, certs: &Path, args: &[String]) -> Output {
    Command::new(etcdctl)
        .env("ETCDCTL_API", "3")
        .arg(format!("--endpoints={endpoints}"))
        .arg(format!("--cacert={}", certs.join("ca.crt").display()))
        .arg(format!("--cert={}", certs.join("client.crt").display()))
        .arg(format!("--key={}", certs.join("client.key").display()))
        .args(["--dial-timeout=2s", "--command-timeout=5s"])
        .args(args)
        .output()
        .unwrap()
}

/// Subject key id (hex) of the first certificate in a PEM file.
fn key_id(pem: &[u8]) -> String {
    use x509_parser::extensions::ParsedExtension;
    use x509_parser::prelude::{FromDer, X509Certificate};
    let (_, p) = x509_parser::pem::parse_x509_pem(pem).unwrap();
    let (_, x) = X509Certificate::from_der(&p.contents).unwrap();
    x.extensions()
        .iter()
        .find_map(|e| match e.parsed_extension() {
            ParsedExtension::SubjectKeyIdentifier(k) => {
                Some(k.0.iter().map(|b| format!("{b:02x}")).collect())
            }
            _ => None,
        })
        .expect("CA has a subject key id")
}

#[test]
fn etcd_ca_rotates_in_stages_surviving_a_kill_at_each_one_with_zero_failed_requests() {
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test boots systemd-nspawn nodes: run as root"
    );
    let m = mirror::build(&mirror::default_cache_dir()).expect("test mirror");
    let c = LocalCluster::reserved("carot", "local-ha").with_mirror(&m.root);
    let _ = c.cmd(&["teardown"]).output();
    for p in ["provision", "pki", "etcd"] {
        c.up_only(p);
    }
    let dir = c.state_dir();
    let old_ca = fs::read(dir.join("pki/etcd/ca.crt")).unwrap();
    let old_kube_ca = fs::read(dir.join("pki/ca.crt")).unwrap();

    // 1. --dry-run: the four steps with their plans; nothing changes.
    let state_before = fs::read(dir.join("state.json")).unwrap();
    let out = certs(
        &c,
        "rotate",
        &["--ca", "--only-ca", "etcd", "--dry-run", "-o", "json"],
        None,
    );
    assert!(out.status.success(), "{}", text(&out));
    let plan = json(&out);
    let steps: Vec<&str> = plan["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["step"].as_str().unwrap())
        .collect();
    assert_eq!(steps, ["generate", "trust-both", "reissue", "drop-old"]);
    assert_eq!(plan["cas"], serde_json::json!(["etcd/ca"]));
    let stage_kinds = |i: usize| -> Vec<String> {
        plan["steps"][i]["plan"]["stages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["kind"].as_str().unwrap().to_string())
            .collect()
    };
    assert!(stage_kinds(0).is_empty(), "generate deploys nothing");
    for i in 1..=3 {
        let k = stage_kinds(i);
        // etcd members one by one first, then the apiservers' etcd trust/client.
        assert_eq!(&k[..3], ["etcd", "etcd", "etcd"], "step {i}: {k:?}");
        assert!(k[3..].iter().all(|s| s == "api-server"), "{k:?}");
    }
    assert_eq!(
        plan["steps"][2]["certificates"].as_array().unwrap().len(),
        9,
        "3 servers, 3 peers, healthcheck, apiserver-etcd-client, prometheus: {plan:#}"
    );
    assert_eq!(fs::read(dir.join("state.json")).unwrap(), state_before);
    assert!(!dir.join("pki/etcd/ca.next.crt").exists());
    let out = certs(
        &c,
        "rotate",
        &["--ca", "--only-ca", "etcd", "--dry-run"],
        None,
    );
    let t = String::from_utf8_lossy(&out.stdout);
    assert!(
        t.contains("step 2/4 trust-both") && t.contains("dry run: nothing was changed"),
        "{t}"
    );

    // 2. The rotation, killed at every step boundary and inside stages, under the etcd loop.
    let tools = tempfile::tempdir().unwrap();
    let etcdctl = support::etcd_loop::etcdctl(&m.root, tools.path());
    let old_client = tools.path().join("old");
    fs::create_dir(&old_client).unwrap();
    snapshot_client(&dir, &old_client);
    let endpoints = (11..=13)
        .map(|h| format!("https://{}.{h}:2379", c.cidr.trim_end_matches(".0/24")))
        .collect::<Vec<_>>()
        .join(",");
    let elections = || -> usize {
        ["controlplane-1", "controlplane-2", "controlplane-3"]
            .iter()
            .map(|n| {
                c.ssh_ok(n, support::etcd_loop::ELECTIONS_CMD)
                    .trim()
                    .parse::<usize>()
                    .unwrap_or(0)
            })
            .sum()
    };
    let elections_before = elections();
    let lp = Loop::start(etcdctl.clone(), endpoints.clone(), dir.clone());
    std::thread::sleep(Duration::from_secs(2));
    let started = Instant::now();
    let crash_points = [
        ("generate:prepared", "generate"),
        ("generate:committed", "generate"),
        ("generate:done", "trust-both"),
        ("trust-both:prepared", "trust-both"),
        ("trust-both:committed", "trust-both"),
        ("trust-both:stage-1", "trust-both"),
        ("trust-both:done", "reissue"),
        ("reissue:prepared", "reissue"),
        ("reissue:committed", "reissue"),
        ("reissue:stage-2", "reissue"),
        ("reissue:done", "drop-old"),
        ("drop-old:committed", "drop-old"),
        ("drop-old:stage-3", "drop-old"),
    ];
    let step_index = |s: &str| {
        ["generate", "trust-both", "reissue", "drop-old"]
            .iter()
            .position(|x| *x == s)
            .unwrap()
    };
    let mut reissued: Option<serde_json::Value> = None;
    for (point, step_after) in crash_points {
        let out = certs(
            &c,
            "rotate",
            &["--ca", "--only-ca", "etcd", "-o", "json"],
            Some(("K8SFORGE_TEST_CRASH_AT", point)),
        );
        assert_eq!(
            out.status.signal(),
            Some(libc::SIGKILL),
            "not killed at {point}: {}",
            text(&out)
        );
        let rec = state(&c)["rotation"].clone();
        assert!(
            rec.is_object(),
            "no rotation record after a kill at {point}"
        );
        assert_eq!(rec["ca"]["flow"], "ca");
        assert_eq!(
            rec["ca"]["step"].as_u64().unwrap() as usize,
            step_index(step_after),
            "after a kill at {point}: {rec:#}"
        );
        // The re-issued certificates are chosen once: every later run keeps them.
        if point == "reissue:prepared" {
            reissued = Some(rec["certificates"].clone());
        } else if let Some(r) = &reissued {
            if step_index(step_after) == 2 {
                assert_eq!(&rec["certificates"], r, "re-issued again after {point}");
            }
        }
        if point == "trust-both:stage-1" {
            // `up` refuses mid-rotation and says how to resume.
            let up = c.cmd(&["up", "--only", "etcd"]).output().unwrap();
            let err = text(&up);
            assert!(!up.status.success(), "{err}");
            assert!(
                err.contains("CA rotation (etcd/ca) in progress") && err.contains("--ca`"),
                "{err}"
            );
            // A leaf rotation refuses too.
            let leaf = certs(&c, "rotate", &["--dry-run"], None);
            assert!(
                !leaf.status.success() && text(&leaf).contains("--ca"),
                "{}",
                text(&leaf)
            );
        }
    }
    let out = certs(
        &c,
        "rotate",
        &["--ca", "--only-ca", "etcd", "-o", "json"],
        None,
    );
    let took = started.elapsed();
    std::thread::sleep(Duration::from_secs(2));
    let (ok, failed, retried) = lp.finish();
    assert!(out.status.success(), "{}", text(&out));
    let report = json(&out);
    assert_eq!(report["ok"], true, "{report:#}");
    assert_eq!(report["resumed"], true);
    let elections = elections().saturating_sub(elections_before);
    eprintln!(
        "etcd CA rotation with {} kills: {:.1} s, {ok} etcd requests ok, {} failed, {elections} leader election(s), {} write(s) sent again after one {retried:?}",
        crash_points.len(),
        took.as_secs_f64(),
        failed.len(),
        retried.len()
    );
    assert!(failed.is_empty(), "{} failed: {failed:?}", failed.len());
    assert!(
        retried.len() <= elections,
        "{} writes dropped in {elections} elections: {retried:?}",
        retried.len()
    );
    assert!(ok > 50, "the loop ran only {ok} requests");
    assert!(state(&c).get("rotation").is_none(), "record left behind");
    assert!(!dir.join(".ca-rotate-staged").exists());
    for f in ["ca.trust.crt", "ca.next.crt", "ca.next.key"] {
        assert!(!dir.join("pki/etcd").join(f).exists(), "{f} left behind");
    }

    // 3. The new CA everywhere: state directory, nodes (certs check reads them), issuers.
    let new_ca = fs::read(dir.join("pki/etcd/ca.crt")).unwrap();
    assert_ne!(new_ca, old_ca);
    assert_eq!(fs::read(dir.join("pki/ca.crt")).unwrap(), old_kube_ca);
    let (old_id, new_id) = (key_id(&old_ca), key_id(&new_ca));
    assert_ne!(old_id, new_id);
    let out = certs(&c, "check", &["-o", "json"], None);
    assert!(out.status.success(), "certs check: {}", text(&out));
    let check = json(&out);
    let mut seen = 0;
    for n in check["nodes"].as_array().unwrap() {
        for cert in n["certificates"].as_array().unwrap() {
            let path = cert["path"].as_str().unwrap();
            assert_eq!(cert["status"], "ok", "{n:#}");
            if path == "/etc/etcd/ca.crt" {
                assert_eq!(cert["count"], 1, "{path}: old CA still trusted");
                assert_eq!(cert["keyId"], new_id.as_str());
            } else if path.starts_with("/etc/etcd/") {
                assert_eq!(
                    cert["issuerKeyId"],
                    new_id.as_str(),
                    "{path} on {}",
                    n["node"]
                );
                seen += 1;
            }
        }
    }
    assert_eq!(seen, 3 * 3, "server, peer, healthcheck on three members");
    // The pre-rotation client (old CA) is refused now; the new one works.
    let get = ["get".to_string(), "carot/1".to_string()];
    let out = etcd_request(&etcdctl, &endpoints, &old_client, &get);
    assert!(!out.status.success(), "old client accepted: {}", text(&out));
    let new_client = tools.path().join("new");
    fs::create_dir(&new_client).unwrap();
    snapshot_client(&dir, &new_client);
    let out = etcd_request(&etcdctl, &endpoints, &new_client, &get);
    assert!(out.status.success(), "{}", text(&out));
}
