//! The failure matrix's "fuzzed command lines" row (issue 15): proptest builds argument vectors
//! from the real verbs, flags and values of the command line — read from clap's own definition
//! at run time, so a new verb or flag is fuzzed without editing this file — mixed with flags of
//! other verbs, missing values and junk, and checks:
//!
//! 1. clap's parse (in process) never panics; a refused line has a message and exit status 2
//!    (0 for `--help` / `--version`);
//! 2. every accepted line goes through the validation every verb starts with (the profile and
//!    its `--set` overrides, `commands::load_profile`) without a panic, and a refusal names the
//!    profile it refuses;
//! 3. a sample of the lines is run by the real binary with an empty temporary `K8SFORGE_HOME`
//!    (and HOME and working directory), restricted to verbs that can have no effect outside it
//!    on a machine without that cluster (no `up`, `mirror`, `node`, `ssh`, `team`, `user`,
//!    `smoke`, no hidden verbs, `teardown` only with `--dry-run`): it never panics (no exit 101,
//!    no signal, no "panicked"), a non-zero exit always says why on stderr, and a line clap
//!    refused in process is refused by the binary the same way.
//!
//! About two seconds (a few hundred parses, a few dozen short runs of the binary).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::{CommandFactory, Parser};
use k8sforge::cli::{
    CertsCommand, Cli, Command as Verb, NodeCommand, ProfileArgs, ProfilesCommand, TeamCommand,
    UserCommand,
};
use proptest::prelude::*;
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

const BIN: &str = env!("CARGO_BIN_EXE_k8sforge");

/// One flag or positional argument of a verb, from clap's definition.
#[derive(Debug, Clone)]
struct ArgDef {
    /// `--long` or `-s`; None for a positional.
    flag: Option<String>,
    takes_value: bool,
    /// The value enum's names, when it has them.
    possible: Vec<String>,
    value_name: String,
    required: bool,
}

#[derive(Debug, Clone)]
struct VerbDef {
    /// `["certs", "rotate"]`.
    path: Vec<String>,
    args: Vec<ArgDef>,
}

/// The verb's arguments, without clap's own `--help` and `--version` (`argv` adds those
/// rarely: they end every parse).
fn arg_defs(cmd: &clap::Command) -> Vec<ArgDef> {
    cmd.get_arguments()
        .filter(|a| !matches!(a.get_id().as_str(), "help" | "version"))
        .map(|a| ArgDef {
            flag: a
                .get_long()
                .map(|l| format!("--{l}"))
                .or_else(|| a.get_short().map(|s| format!("-{s}"))),
            takes_value: a.get_action().takes_values(),
            possible: a
                .get_possible_values()
                .iter()
                .map(|v| v.get_name().to_string())
                .collect(),
            value_name: a
                .get_value_names()
                .and_then(|v| v.first())
                .map(|s| s.to_string())
                .unwrap_or_default(),
            required: a.is_required_set(),
        })
        .collect()
}

/// Every leaf verb of the CLI with its arguments (global ones included).
fn verbs() -> Vec<VerbDef> {
    let mut root = Cli::command();
    root.build();
    let mut out = Vec::new();
    // Hidden verbs are parsed too (never run: `safe_to_run`).
    let mut stack: Vec<(Vec<String>, clap::Command)> = root
        .get_subcommands()
        .map(|c| (vec![c.get_name().to_string()], c.clone()))
        .collect();
    while let Some((path, cmd)) = stack.pop() {
        if cmd.has_subcommands() {
            for sub in cmd.get_subcommands() {
                let mut p = path.clone();
                p.push(sub.get_name().to_string());
                stack.push((p, sub.clone()));
            }
            continue;
        }
        // clap's `help` verbs only print: one of them is enough.
        if path.contains(&"help".to_string()) && path.len() > 1 {
            continue;
        }
        out.push(VerbDef {
            path,
            args: arg_defs(&cmd),
        });
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

/// Values a user might give for a value name, good and bad; paths stay under `tmp`.
fn values_for(name: &str, tmp: &Path) -> Vec<String> {
    let p = |s: &str| tmp.join(s).display().to_string();
    let v: Vec<String> = match name {
        "NAME|FILE" => {
            let mut v: Vec<String> = k8sforge::profile::builtin::names()
                .into_iter()
                .map(String::from)
                .collect();
            v.extend([
                "nope".into(),
                p("missing.yaml"),
                p("junk.yaml"),
                p("empty.yaml"),
                p("dir.yaml"),
            ]);
            v
        }
        "PATH=VALUE" => {
            let paths = [
                "name",
                "controlPlane.count",
                "workers[0].count",
                "workers[9].count",
                "network.podCIDR",
                "kubernetes.version",
                "pki.keyAlgorithm",
                "apiServer.port",
                "provider.kind",
                "monitoring.enabled",
                "nosuch.field",
            ];
            let vals = [
                "2",
                "0",
                "-1",
                "x",
                "",
                "true",
                "[]",
                "{a: b}",
                "10.0.0.0/40",
            ];
            let mut v = Vec::new();
            for (i, path) in paths.iter().enumerate() {
                v.push(format!("{path}={}", vals[i % vals.len()]));
                v.push(format!("{path}={}", vals[(i * 5 + 3) % vals.len()]));
            }
            v.extend(["noequals".into(), "=x".into(), "a..b=1".into()]);
            v
        }
        "DIR" | "FILE" | "DIR|URL" | "BINARY" => vec![
            p("out"),
            p("missing/deep/dir"),
            p("junk.yaml"),
            String::new(),
            "http://127.0.0.1:9/mirror".into(),
            "ftp://x".into(),
        ],
        "N" => ["0", "1", "3", "-1", "18446744073709551616", "x", ""]
            .map(String::from)
            .to_vec(),
        "DURATION" => [
            "30d",
            "12h",
            "90m",
            "7",
            "3w",
            "d",
            "",
            "-5d",
            "99999999999999999999d",
        ]
        .map(String::from)
        .to_vec(),
        "vX.Y.Z" => ["v1.28.7", "v1.28.8", "v1.34.2", "1.28", "vX", "v99.0.0", ""]
            .map(String::from)
            .to_vec(),
        "NODE" => ["controlplane-1", "worker-1", "nosuch", ""]
            .map(String::from)
            .to_vec(),
        _ => [
            "alice",
            "smoke",
            "",
            "-x",
            "a/b",
            "ümlaut",
            "pytorch,tf",
            "0",
        ]
        .map(String::from)
        .to_vec(),
    };
    v
}

/// Turn proptest's choices into an argument vector: a verb (sometimes a prefix of one, or
/// none), usually its required arguments, then more of its flags with values, flags of other
/// verbs, missing values and junk.
fn argv(verbs: &[VerbDef], picks: &[u32], junk: &[String], tmp: &Path) -> Vec<String> {
    let mut it = picks.iter().copied();
    let mut next = move || it.next().unwrap_or(0) as usize;
    let verb = &verbs[next() % verbs.len()];
    let mut out = vec!["k8sforge".to_string()];
    match next() % 10 {
        0 => {}                                     // no verb at all
        1 => out.push(verb.path[0].clone()),        // the group only (`certs`)
        _ => out.extend(verb.path.iter().cloned()), // the whole verb
    }
    let mut junk = junk.iter();
    let mut chosen: Vec<&ArgDef> = Vec::new();
    if next() % 5 != 0 {
        chosen.extend(verb.args.iter().filter(|a| a.required));
    }
    for _ in 0..next() % 6 {
        let v = if next() % 10 == 0 {
            &verbs[next() % verbs.len()]
        } else {
            verb
        };
        if let Some(a) = v.args.get(next() % v.args.len().max(1)) {
            chosen.push(a);
        }
    }
    for a in chosen {
        match next() % 16 {
            0 => {
                if let Some(j) = junk.next() {
                    out.push(j.clone());
                }
                continue;
            }
            1 => {
                // A flag whose value is missing (or swallowed by the next flag).
                if let Some(f) = &a.flag {
                    out.push(f.clone());
                }
                continue;
            }
            _ => {}
        }
        let value = if !a.possible.is_empty() && next() % 4 != 0 {
            a.possible[next() % a.possible.len()].clone()
        } else {
            let pool = values_for(&a.value_name, tmp);
            pool[next() % pool.len()].clone()
        };
        match (&a.flag, a.takes_value) {
            (Some(f), true) if next() % 3 == 0 && f.starts_with("--") => {
                out.push(format!("{f}={value}"))
            }
            (Some(f), true) => {
                out.push(f.clone());
                out.push(value);
            }
            (Some(f), false) => out.push(f.clone()),
            (None, _) => out.push(value),
        }
    }
    match next() % 40 {
        0 => out.push("--help".into()),
        1 => out.push("--version".into()),
        _ => {}
    }
    out
}

/// The profile selection of a parsed line (every verb that reads a profile has one).
fn profile_args(cmd: &Verb) -> Option<&ProfileArgs> {
    Some(match cmd {
        Verb::Plan { profile, .. }
        | Verb::Up { profile, .. }
        | Verb::Mirror { profile, .. }
        | Verb::Upgrade { profile, .. }
        | Verb::Teardown { profile, .. }
        | Verb::Status { profile, .. }
        | Verb::Kubeconfig { profile, .. }
        | Verb::Ssh { profile, .. } => profile,
        Verb::Certs(CertsCommand::Check { profile, .. })
        | Verb::Certs(CertsCommand::Rotate { profile, .. }) => profile,
        Verb::Node(NodeCommand::Add { profile, .. })
        | Verb::Node(NodeCommand::Remove { profile, .. }) => profile,
        Verb::Team(TeamCommand::Add { profile, .. })
        | Verb::Team(TeamCommand::List { profile, .. })
        | Verb::Team(TeamCommand::Remove { profile, .. }) => profile,
        Verb::User(UserCommand::Add { profile, .. }) => profile,
        Verb::Smoke(args) => &args.profile,
        Verb::Profiles(ProfilesCommand::List | ProfilesCommand::Show { .. })
        | Verb::LocalNodeLauncher { .. }
        | Verb::LocalApiProxy { .. }
        | Verb::Completion { .. } => return None,
    })
}

/// Whether running the binary with `cmd` can touch nothing outside the temporary home on a
/// machine that has no such cluster (see the file comment), and stays quick: the profile, when
/// it loads, is a small local one (a cloud profile would call its provider's API).
fn safe_to_run(cmd: &Verb) -> bool {
    let local_and_small = profile_args(cmd).is_none_or(|p| {
        k8sforge::commands::load_profile(p)
            .map(|l| {
                l.profile.provider.kind == k8sforge::profile::ProviderKind::Local
                    && k8sforge::profile::validate::total_nodes(&l.profile) <= 12
            })
            .unwrap_or(true)
    });
    local_and_small
        && match cmd {
            Verb::Teardown { dry_run, .. } => *dry_run,
            Verb::Plan { .. }
            | Verb::Certs(_)
            | Verb::Status { .. }
            | Verb::Upgrade { .. }
            | Verb::Profiles(_)
            | Verb::Completion { .. } => true,
            _ => false,
        }
}

/// Run the binary; (exit code or None for a signal, stderr). Killed after 60 s.
fn run_binary(args: &[String], tmp: &Path) -> (Option<i32>, String) {
    let mut child = Command::new(BIN)
        .args(&args[1..])
        .current_dir(tmp)
        .env("K8SFORGE_HOME", tmp.join("home"))
        .env("HOME", tmp)
        .env_remove("K8SFORGE_TEST_CRASH_AT")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("k8sforge {args:?} did not finish within 60 s");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let out = child.wait_with_output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn scratch() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::write(tmp.path().join("junk.yaml"), "name: [unclosed\n  - :: x").unwrap();
    std::fs::write(tmp.path().join("empty.yaml"), "").unwrap();
    std::fs::create_dir(tmp.path().join("dir.yaml")).unwrap();
    std::fs::create_dir(tmp.path().join("home")).unwrap();
    tmp
}

#[test]
fn fuzzed_command_lines_never_panic_and_refusals_say_why() {
    let verbs = verbs();
    // The walk found the verbs the README documents (a sanity check of the walk itself).
    let names: Vec<String> = verbs.iter().map(|v| v.path.join(" ")).collect();
    for want in [
        "plan",
        "up",
        "certs rotate",
        "certs check",
        "node add",
        "upgrade",
    ] {
        assert!(names.iter().any(|n| n == want), "{want} not in {names:?}");
    }
    let tmp = scratch();
    let tmp_path: PathBuf = tmp.path().to_path_buf();
    // A fixed seed keeps CI deterministic; K8SFORGE_FUZZ_SEED=N explores other lines (and
    // PROPTEST_CASES=N more of them).
    let seed: u64 = std::env::var("K8SFORGE_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x006b_3873_6663_6c69);
    eprintln!("cli fuzz seed {seed} (K8SFORGE_FUZZ_SEED)");
    let mut seed_bytes = [0u8; 32];
    seed_bytes[..8].copy_from_slice(&seed.to_le_bytes());
    let mut runner = TestRunner::new_with_rng(
        Config {
            cases: std::env::var("PROPTEST_CASES")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(400),
            failure_persistence: None,
            ..Config::default()
        },
        TestRng::from_seed(RngAlgorithm::ChaCha, &seed_bytes),
    );
    let strategy = (
        proptest::collection::vec(any::<u32>(), 1..24),
        proptest::collection::vec("[-=a-z0-9./ ]{0,10}|\\PC{0,6}", 0..3),
    );
    let stats = std::cell::RefCell::new([0usize; 4]); // parsed, refused, profile refused, binary runs
    runner
        .run(&strategy, |(picks, junk)| {
            let args = argv(&verbs, &picks, &junk, &tmp_path);
            let parsed = std::panic::catch_unwind(|| Cli::try_parse_from(&args));
            let parsed = match parsed {
                Ok(p) => p,
                Err(_) => panic!("clap panicked on {args:?}"),
            };
            let sample = picks.first().is_some_and(|p| p % 10 == 0);
            match parsed {
                Err(e) => {
                    stats.borrow_mut()[1] += 1;
                    let informational = matches!(
                        e.kind(),
                        clap::error::ErrorKind::DisplayHelp
                            | clap::error::ErrorKind::DisplayVersion
                    );
                    let want = if informational { 0 } else { 2 };
                    prop_assert_eq!(e.exit_code(), want, "{:?}: {}", args, e);
                    prop_assert!(!e.render().to_string().trim().is_empty(), "{:?}", args);
                    if sample && !informational {
                        stats.borrow_mut()[3] += 1;
                        let (code, err) = run_binary(&args, &tmp_path);
                        prop_assert_eq!(code, Some(2), "{:?}: {}", args, err);
                        // A missing verb prints the usage instead of an error line.
                        let usage = e.kind()
                            == clap::error::ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand;
                        prop_assert!(
                            err.contains("error:") || (usage && err.contains("Usage:")),
                            "{:?}: {}",
                            args,
                            err
                        );
                    }
                }
                Ok(cli) => {
                    stats.borrow_mut()[0] += 1;
                    if let Some(p) = profile_args(&cli.command) {
                        let loaded = std::panic::catch_unwind(|| {
                            k8sforge::commands::load_profile(p).map(|_| ())
                        });
                        match loaded {
                            Err(_) => panic!("loading the profile of {args:?} panicked"),
                            Ok(Ok(())) => {}
                            Ok(Err(e)) => {
                                stats.borrow_mut()[2] += 1;
                                let msg = format!("{e:#}");
                                prop_assert!(!msg.trim().is_empty(), "{:?}", args);
                                // The refusal names the profile (built-in or file) it refuses.
                                let named = msg.contains(&p.profile)
                                    || msg.contains("profile")
                                    || msg.contains(".yaml");
                                prop_assert!(named, "{:?}: {}", args, msg);
                            }
                        }
                    }
                    if sample && safe_to_run(&cli.command) {
                        stats.borrow_mut()[3] += 1;
                        let (code, err) = run_binary(&args, &tmp_path);
                        prop_assert!(code.is_some(), "{:?} ended by a signal: {}", args, err);
                        prop_assert_ne!(code, Some(101), "{:?} panicked: {}", args, err);
                        prop_assert!(!err.contains("panicked"), "{:?}: {}", args, err);
                        if code != Some(0) {
                            prop_assert!(
                                !err.trim().is_empty(),
                                "{:?} exited {:?} without a word",
                                args,
                                code
                            );
                        }
                    }
                }
            }
            Ok(())
        })
        .unwrap_or_else(|e| panic!("{e}"));
    let [parsed, refused, profile_refused, runs] = *stats.borrow();
    eprintln!(
        "{parsed} lines parsed ({profile_refused} refused by profile validation), {refused} refused by clap, {runs} run by the binary"
    );
    // The generator reaches both sides of every check.
    assert!(
        parsed > 40 && refused > 40,
        "{parsed} parsed, {refused} refused"
    );
    assert!(
        profile_refused > 5,
        "only {profile_refused} profile refusals"
    );
    assert!(runs > 10, "only {runs} binary runs");
}
