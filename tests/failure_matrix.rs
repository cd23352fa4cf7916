//! Rows of the failure matrix that need no nodes: a corrupted state file (clear error naming the
//! file, nothing written, every verb that reads state refuses), and randomly damaged profiles and
//! `--set` flags (never a panic; every error names the profile file). The concurrent-run and
//! dead-holder rows run on real nodes in tests/rotate_local.rs and as unit tests in
//! src/cluster_lock.rs.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};

const BIN: &str = env!("CARGO_BIN_EXE_k8sforge");

fn files(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap().filter_map(Result::ok) {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.insert(
                    p.strip_prefix(dir).unwrap().display().to_string(),
                    std::fs::read(&p).unwrap(),
                );
            }
        }
    }
    out
}

#[test]
fn corrupted_state_file_is_refused_with_its_path_and_nothing_is_written() {
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(BIN)
            .env("K8SFORGE_HOME", home.path())
            .args(args)
            .output()
            .unwrap()
    };
    let out_dir = home.path().join("bundle-out");
    let out = run(&[
        "plan",
        "--profile",
        "local-3",
        "--out",
        out_dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = home.path().join("local-3");
    let state = dir.join("state.json");
    assert!(state.exists());
    std::fs::write(&state, b"{\"phases\": {\"pki\": tru").unwrap();
    let before = files(&dir);
    for args in [
        vec!["plan", "--profile", "local-3"],
        vec!["up", "--profile", "local-3", "--only", "pki"],
        vec!["certs", "rotate", "--profile", "local-3", "--dry-run"],
        vec!["certs", "rotate", "--profile", "local-3"],
        vec!["certs", "check", "--profile", "local-3"],
        vec!["status", "--profile", "local-3"],
    ] {
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{args:?} accepted a corrupt state file: {err}"
        );
        assert!(
            err.contains(&format!("state file {} is corrupt", state.display())),
            "{args:?}: {err}"
        );
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        let mut after = files(&dir);
        // The lock file is rewritten by every locking run and emptied again on exit.
        after.remove(".lock");
        let mut want = before.clone();
        want.remove(".lock");
        assert_eq!(after, want, "{args:?} changed the state directory");
    }
}

/// A rotation that stopped half-way (its record in the state file, as `certs rotate` leaves it
/// when killed after stage 1 of 2): `up` refuses before touching anything, names the next stage
/// and tells how to finish; nothing in the state directory changes. (The same refusal after a
/// real SIGKILLed rotation on real nodes: tests/rotate_local.rs.)
#[test]
fn up_refuses_while_a_rotation_is_half_done_and_says_how_to_finish() {
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(BIN)
            .env("K8SFORGE_HOME", home.path())
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["plan", "--profile", "local-3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = home.path().join("local-3");
    let state_path = dir.join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    state["rotation"] = serde_json::json!({
        "startedAt": "2026-12-01T10:00:00Z",
        "certificates": [
            {"name": "etcd/server-controlplane-1", "oldSerial": "01", "newSerial": "02"},
            {"name": "apiserver", "oldSerial": "03", "newSerial": "04"}
        ],
        "plan": {"stages": [
            {"kind": "etcd", "nodes": [{"node": "controlplane-1", "units": ["etcd.service"],
                "files": ["/etc/etcd/server.crt", "/etc/etcd/server.key"]}]},
            {"kind": "api-server", "nodes": [{"node": "controlplane-1",
                "units": ["kube-apiserver.service"],
                "files": ["/var/lib/kubernetes/apiserver.crt"]}]}
        ]},
        "stagesDone": 1
    });
    std::fs::write(&state_path, serde_json::to_vec_pretty(&state).unwrap()).unwrap();
    let before = files(&dir);
    for args in [
        vec!["up", "--profile", "local-3"],
        vec!["up", "--profile", "local-3", "--only", "pki"],
    ] {
        let out = run(&args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(
            !out.status.success(),
            "{args:?} ran during a half-done rotation: {err}"
        );
        for want in [
            "cluster local-3 has a certificate rotation in progress",
            "1 of 2 stages done; next: stage 2/2, kube-apiserver on controlplane-1",
            "`k8sforge certs rotate --profile local-3` resumes where it stopped",
        ] {
            assert!(err.contains(want), "{args:?}: {want:?} not in: {err}");
        }
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        let mut after = files(&dir);
        after.remove(".lock");
        let mut want = before.clone();
        want.remove(".lock");
        assert_eq!(after, want, "{args:?} changed the state directory");
    }
}

/// Damage a valid profile in ways a user might (truncation, a deleted line, a changed value, a
/// wrong type, a stray character) and check the loader answers with an error naming the file —
/// or accepts it — but never panics.
#[test]
fn damaged_profiles_and_overrides_never_panic_and_errors_name_the_file() {
    let base = k8sforge::profile::builtin::get("local-ha")
        .unwrap()
        .to_string();
    let lines: Vec<&str> = base.lines().collect();
    let mut rng = StdRng::seed_from_u64(0x6b38_73666f726765);
    let junk = [
        "",
        "-1",
        "0",
        "99999999999999999999",
        "true",
        "null",
        "[]",
        "{}",
        "\"x\"",
        "a: b",
        "1.2.3.4/40",
        "::",
        "v0.0.0",
        "ümlaut",
        "\t",
        "- -",
        "&a *a",
        "!!binary AAAA",
    ];
    let paths = [
        "name",
        "controlPlane.count",
        "etcd.members",
        "workers[0].count",
        "workers[0].name",
        "network.podCIDR",
        "network.nodeCIDR",
        "network.podPrefixPerNode",
        "network.serviceCIDR",
        "kubernetes.version",
        "pki.keyAlgorithm",
        "pki.certValidityDays",
        "apiServer.port",
        "provider.kind",
        "workers[7].count",
        "nosuch.field",
    ];
    let mut errors = 0;
    for i in 0..400 {
        let text: String;
        let mut sets: Vec<String> = Vec::new();
        match i % 5 {
            0 => {
                let cut = rng.gen_range(0..base.len());
                text = base[..base.floor_char_boundary_compat(cut)].to_string();
            }
            1 => {
                let skip = rng.gen_range(0..lines.len());
                text = lines
                    .iter()
                    .enumerate()
                    .filter(|(j, _)| *j != skip)
                    .map(|(_, l)| *l)
                    .collect::<Vec<_>>()
                    .join("\n");
            }
            2 => {
                let j = rng.gen_range(0..lines.len());
                let mut ls: Vec<String> = lines.iter().map(|s| s.to_string()).collect();
                if let Some((k, _)) = ls[j].split_once(':') {
                    ls[j] = format!("{k}: {}", junk[rng.gen_range(0..junk.len())]);
                }
                text = ls.join("\n");
            }
            3 => {
                text = base.clone();
                sets.push(format!(
                    "{}={}",
                    paths[rng.gen_range(0..paths.len())],
                    junk[rng.gen_range(0..junk.len())]
                ));
            }
            _ => {
                let mut b = base.clone().into_bytes();
                let at = rng.gen_range(0..b.len());
                let chars = b"{}[]:-#&*!|>'\"%@`\t\n ";
                b[at] = chars[rng.gen_range(0..chars.len())];
                text = String::from_utf8_lossy(&b).into_owned();
            }
        }
        let result = std::panic::catch_unwind(|| {
            k8sforge::profile::parse(&text, "damaged.yaml", &sets).map(|_| ())
        });
        match result {
            Err(_) => panic!("the profile loader panicked on case {i}:\n{text}\n--set {sets:?}"),
            Ok(Ok(())) => {}
            Ok(Err(e)) => {
                errors += 1;
                let msg = e.to_string();
                assert!(
                    msg.contains("damaged.yaml"),
                    "case {i}: error without the file: {msg}"
                );
                assert!(!msg.trim().is_empty());
            }
        }
    }
    assert!(
        errors > 100,
        "only {errors} of 400 damaged profiles were refused"
    );
}

/// `str::floor_char_boundary` is unstable; the same for this test.
trait FloorBoundary {
    fn floor_char_boundary_compat(&self, i: usize) -> usize;
}

impl FloorBoundary for String {
    fn floor_char_boundary_compat(&self, mut i: usize) -> usize {
        while i > 0 && !self.is_char_boundary(i) {
            i -= 1;
        }
        i
    }
}

/// Every file under `dir` with its mode (for "byte-identical, modes included").
fn files_and_modes(dir: &Path) -> BTreeMap<String, (Vec<u8>, u32)> {
    use std::os::unix::fs::PermissionsExt;
    files(dir)
        .into_iter()
        .map(|(p, bytes)| {
            let mode = std::fs::metadata(dir.join(&p))
                .unwrap()
                .permissions()
                .mode();
            (p, (bytes, mode))
        })
        .collect()
}

/// `certs rotate --dry-run` (leaves, `--ca`, `--sa-keys`) writes nothing: the state directory
/// is byte-identical afterwards (every file, its mode, no file added), also when the PKI is
/// incomplete — the dry run then refuses, naming what is missing, instead of issuing it — and a
/// real rotation refused for the same reason leaves it as it was too. The cluster is `plan`'s,
/// marked provisioned in its state file: rotation plans offline, before any node is contacted.
#[test]
fn certs_rotate_dry_run_writes_nothing_into_the_state_directory() {
    let home = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(BIN)
            .env("K8SFORGE_HOME", home.path())
            .args(args)
            .output()
            .unwrap()
    };
    let out = run(&["plan", "--profile", "local-3"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = home.path().join("local-3");
    let state_path = dir.join("state.json");
    let mut state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&state_path).unwrap()).unwrap();
    state["inventory"]["planned"] = serde_json::json!(false);
    std::fs::write(&state_path, serde_json::to_vec_pretty(&state).unwrap()).unwrap();

    let unchanged = |args: &[&str], want_ok: bool, want_text: &str| {
        let before = files_and_modes(&dir);
        let out = run(args);
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert_eq!(out.status.success(), want_ok, "{args:?}: {text}");
        assert!(
            text.contains(want_text),
            "{args:?}: {want_text:?} not in {text}"
        );
        assert!(!text.contains("panicked"), "{args:?}: {text}");
        let after = files_and_modes(&dir);
        let changed: Vec<&String> = after
            .iter()
            .filter(|(p, v)| before.get(*p) != Some(v))
            .map(|(p, _)| p)
            .chain(before.keys().filter(|p| !after.contains_key(*p)))
            .collect();
        assert!(changed.is_empty(), "{args:?} changed {changed:?}");
    };
    let rotate = ["certs", "rotate", "--profile", "local-3"];
    let with = |extra: &[&'static str]| -> Vec<&str> {
        let mut a = rotate.to_vec();
        a.extend_from_slice(extra);
        a
    };
    // A complete PKI: the plans are printed, nothing is written.
    unchanged(&with(&["--dry-run"]), true, "dry run: nothing was changed");
    unchanged(
        &with(&["--dry-run", "-o", "json"]),
        true,
        "\"dryRun\": true",
    );
    unchanged(
        &with(&["--dry-run", "--only", "apiserver"]),
        true,
        "1 certificate(s) to renew: apiserver",
    );
    unchanged(&with(&["--ca", "--dry-run"]), true, "step 4/4 drop-old");
    unchanged(&with(&["--sa-keys", "--dry-run"]), true, "sa-switch");

    // An incomplete PKI: refused with what is missing, still nothing written (the old dry run
    // issued the missing certificate into the state directory).
    std::fs::remove_file(dir.join("pki/apiserver.crt")).unwrap();
    std::fs::remove_file(dir.join("pki/apiserver.key")).unwrap();
    for args in [
        with(&["--dry-run"]),
        with(&[]),
        with(&["--ca", "--dry-run"]),
        with(&["--ca"]),
    ] {
        unchanged(
            &args,
            false,
            "is incomplete (1 missing or invalid: apiserver)",
        );
    }
    assert!(!dir.join("pki/apiserver.crt").exists());
}

/// The concurrent-second-run row with two real k8sforge processes: while one run holds the
/// cluster (a `plan` of gpu-1000 with its bundle, which takes seconds), a second `plan`, `up`
/// or `certs rotate` on the same cluster fails at once (the lock is the first thing a run
/// takes), naming the holder's pid, command and start; once the holder is SIGKILLed, the next
/// run takes its lock over with a line saying so. (A dead holder's lock
/// being taken over, on real nodes: tests/rotate_local.rs; the lock itself:
/// src/cluster_lock.rs.)
#[test]
fn a_second_run_on_a_held_cluster_fails_at_once_naming_the_holder() {
    let home = tempfile::tempdir().unwrap();
    let cmd = |args: &[&str]| {
        let mut c = Command::new(BIN);
        c.env("K8SFORGE_HOME", home.path()).args(args);
        c
    };
    let out_dir = home.path().join("bundle");
    let mut first = cmd(&[
        "plan",
        "--profile",
        "gpu-1000",
        "--out",
        out_dir.to_str().unwrap(),
    ])
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::piped())
    .spawn()
    .unwrap();
    let lock = home.path().join("gpu-1000/.lock");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
    // The holder record is written right after the lock is taken.
    while std::fs::read_to_string(&lock).map_or(true, |s| s.trim().is_empty()) {
        assert!(
            std::time::Instant::now() < deadline,
            "the first run never took the lock"
        );
        assert!(
            first.try_wait().unwrap().is_none(),
            "the first run ended early"
        );
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let mut refused = 0;
    for args in [
        vec!["plan", "--profile", "gpu-1000"],
        vec!["up", "--profile", "gpu-1000", "--only", "pki"],
        vec!["certs", "rotate", "--profile", "gpu-1000", "--dry-run"],
    ] {
        let started = std::time::Instant::now();
        let out = cmd(&args).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        if first.try_wait().unwrap().is_some() {
            break; // the first finished meanwhile: nothing left to contend with
        }
        refused += 1;
        assert!(!out.status.success(), "{args:?} ran beside a holder: {err}");
        assert!(
            err.contains("cluster gpu-1000 is locked by another k8sforge run (pid ")
                && err.contains(&format!("pid {} on ", first.id()))
                && err.contains("`k8sforge plan --profile gpu-1000 --out")
                && err.contains("since 20"),
            "{args:?}: {err}"
        );
        assert!(
            started.elapsed() < std::time::Duration::from_secs(10),
            "{args:?} waited for the lock"
        );
    }
    assert!(
        refused >= 1,
        "the first run ended before any second run could contend"
    );
    // The holder dies without clearing its record: the next run takes the lock over, saying so.
    let pid = first.id();
    let _ = first.kill();
    let _ = first.wait();
    let out = cmd(&["certs", "rotate", "--profile", "gpu-1000", "--dry-run"])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!err.contains("is locked by another"), "{err}");
    assert!(
        err.contains(&format!(
            "was left by a run that is no longer running (pid {pid}"
        )) && err.contains("taking it over"),
        "{err}"
    );
}
