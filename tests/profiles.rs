//! Profile loading and validation: every built-in profile is valid, and every mistake a user can
//! make is reported with file:line:column, the field path, what was found and what is allowed —
//! all of a file's mistakes together, and nothing written to the state directory.

use std::path::Path;
use std::process::Command;

use k8sforge::profile::{self, Diagnostic, Origin};

const GOOD: &str = "\
name: demo
provider:
  kind: local
kubernetes:
  version: v1.34.2
network:
  nodeCIDR: 198.18.0.0/24
  podCIDR: 10.200.0.0/16
  podPrefixPerNode: 24
  serviceCIDR: 10.32.0.0/24
  dnsServiceIP: 10.32.0.10
controlPlane:
  count: 1
workers:
  - name: worker
    count: 2
";

fn errors_of(text: &str, sets: &[&str]) -> Vec<Diagnostic> {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    match profile::parse(text, "mine.yaml", &sets) {
        Ok(_) => Vec::new(),
        Err(e) => e.diagnostics,
    }
}

fn line_col(d: &Diagnostic) -> (usize, usize) {
    match &d.origin {
        Origin::File { file, position } => {
            assert_eq!(file, "mine.yaml");
            (position.line, position.column)
        }
        Origin::Set { arg } => panic!("expected a file position, got --set {arg}"),
    }
}

/// Replace the first occurrence of `from` in GOOD.
fn good_with(from: &str, to: &str) -> String {
    assert!(GOOD.contains(from), "fixture lacks {from:?}");
    GOOD.replacen(from, to, 1)
}

#[test]
fn builtin_profiles_are_valid() {
    for name in profile::builtin::names() {
        let loaded = profile::load(name, &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(loaded.profile.name, name);
    }
    // gpu-1000 is usable on GCP too.
    profile::load("gpu-1000", &["provider.kind=gcp".into()]).expect("gpu-1000 on gcp");
}

#[test]
fn pod_routing_defaults_by_provider_and_is_selectable() {
    use profile::PodRouting;
    let routing = |name: &str, sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        profile::load(name, &sets)
            .unwrap_or_else(|e| panic!("{name} {sets:?}: {e}"))
            .profile
            .pod_routing()
    };
    assert_eq!(routing("local-3", &[]), Some(PodRouting::HostRoutes));
    assert_eq!(routing("gpu-1000", &[]), Some(PodRouting::Vxlan));
    assert_eq!(routing("gpu-dev", &[]), Some(PodRouting::Vxlan));
    assert_eq!(routing("gpu-1000", &["provider.kind=gcp"]), None);
    assert_eq!(
        routing("local-3", &["network.podRouting=vxlan"]),
        Some(PodRouting::Vxlan)
    );
    assert_eq!(
        routing("gpu-dev", &["network.podRouting=routeTable"]),
        Some(PodRouting::RouteTable)
    );
    assert_eq!(
        routing("gpu-1000", &["network.podRouting=hostRoutes"]),
        Some(PodRouting::HostRoutes)
    );

    // GCP has one way (alias ranges): any value is refused, naming the field and the value.
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles/gpu-1000.yaml"),
    )
    .unwrap();
    let errs = errors_of(&text, &["provider.kind=gcp", "network.podRouting=vxlan"]);
    let d = errs
        .iter()
        .find(|d| d.path == "network.podRouting")
        .unwrap_or_else(|| panic!("{errs:#?}"));
    assert_eq!(d.found, "vxlan");
    assert!(d.problem.contains("alias IP ranges"), "{d}");
    // An unknown mode lists the allowed ones.
    let errs = errors_of(GOOD, &["network.podRouting=geneve"]);
    let d = errs
        .iter()
        .find(|d| d.path == "network.podRouting")
        .unwrap_or_else(|| panic!("{errs:#?}"));
    assert!(d.found.contains("geneve"), "{d}");
    assert!(
        d.allowed.contains("hostRoutes") && d.allowed.contains("vxlan"),
        "{d}"
    );
    assert!(errors_of(GOOD, &[]).is_empty());
}

struct Case {
    what: &'static str,
    text: String,
    sets: &'static [&'static str],
    path: &'static str,
    line: usize,
    column: usize,
    found: &'static str,
    allowed: &'static str,
}

#[test]
fn each_mistake_is_located_and_explained() {
    let cases = vec![
        Case {
            what: "pod CIDR too small for the node count",
            text: good_with(
                "  - name: worker\n    count: 2",
                "  - name: worker\n    count: 1002",
            ),
            sets: &[],
            path: "network.podCIDR",
            line: 8,
            column: 12,
            found: "10.200.0.0/16",
            allowed: "a /14 or larger range",
        },
        Case {
            what: "overlapping pod and service ranges",
            text: good_with("serviceCIDR: 10.32.0.0/24", "serviceCIDR: 10.200.5.0/24")
                .replace("dnsServiceIP: 10.32.0.10", "dnsServiceIP: 10.200.5.10"),
            sets: &[],
            path: "network.serviceCIDR",
            line: 10,
            column: 16,
            found: "10.200.5.0/24",
            allowed: "disjoint from 10.200.0.0/16",
        },
        Case {
            what: "overlapping node and pod ranges",
            text: good_with("podCIDR: 10.200.0.0/16", "podCIDR: 198.18.0.0/16"),
            sets: &[],
            path: "network.podCIDR",
            line: 8,
            column: 12,
            found: "198.18.0.0/16",
            allowed: "disjoint from 198.18.0.0/24",
        },
        Case {
            what: "DNS IP outside the service range",
            text: good_with("dnsServiceIP: 10.32.0.10", "dnsServiceIP: 10.33.0.10"),
            sets: &[],
            path: "network.dnsServiceIP",
            line: 11,
            column: 17,
            found: "10.33.0.10",
            allowed: "a host address of 10.32.0.0/24",
        },
        Case {
            what: "API service IP not the first service address",
            text: good_with(
                "  dnsServiceIP: 10.32.0.10",
                "  dnsServiceIP: 10.32.0.10\n  apiServiceIP: 10.40.0.1",
            ),
            sets: &[],
            path: "network.apiServiceIP",
            line: 12,
            column: 17,
            found: "10.40.0.1",
            allowed: "10.32.0.1",
        },
        Case {
            what: "unknown Kubernetes version",
            text: good_with("version: v1.34.2", "version: v1.99.0"),
            sets: &[],
            path: "kubernetes.version",
            line: 5,
            column: 12,
            found: "v1.99.0",
            allowed: "one of v1.",
        },
        Case {
            what: "duplicate node names",
            text: good_with(
                "    count: 2\n",
                "    count: 2\n  - name: worker\n    count: 1\n",
            ),
            sets: &[],
            path: "workers[1].name",
            line: 17,
            column: 11,
            found: "worker",
            allowed: "a name used by no other worker group",
        },
        Case {
            what: "worker group whose names collide with control-plane nodes",
            text: good_with("  - name: worker", "  - name: controlplane"),
            sets: &[],
            path: "workers[0].name",
            line: 15,
            column: 11,
            found: "controlplane",
            allowed: "no other node uses",
        },
        Case {
            what: "even etcd member count",
            text: good_with("controlPlane:\n  count: 1", "controlPlane:\n  count: 2"),
            sets: &[],
            path: "controlPlane.count",
            line: 13,
            column: 10,
            found: "2",
            allowed: "an odd number of etcd members",
        },
        Case {
            what: "unknown field",
            text: good_with(
                "  podPrefixPerNode: 24",
                "  podPrefixPerNode: 24\n  podCidr: 10.0.0.0/8",
            ),
            sets: &[],
            path: "network.podCidr",
            line: 10,
            column: 3,
            found: "podCidr",
            allowed: "one of nodeCIDR, podCIDR",
        },
        Case {
            what: "wrong type",
            text: good_with("    count: 2", "    count: two"),
            sets: &[],
            path: "workers[0].count",
            line: 16,
            column: 12,
            found: "invalid type: string \"two\"",
            allowed: "a whole number",
        },
        Case {
            what: "unknown provider kind",
            text: good_with("kind: local", "kind: azure"),
            sets: &[],
            path: "provider.kind",
            line: 3,
            column: 9,
            found: "azure",
            allowed: "`local`, `static`, `aws`, `gcp`",
        },
        Case {
            what: "AWS route-table mode above the route limit",
            text: String::from_utf8(
                std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles/gpu-1000.yaml"))
                    .unwrap(),
            )
            .unwrap()
            .replacen("network:\n", "network:\n  podRouting: routeTable\n", 1),
            sets: &[],
            path: "network.podRouting",
            line: 23,
            column: 15,
            found: "routeTable",
            allowed: "vxlan or hostRoutes",
        },
        Case {
            what: "pod routing at its old place under provider.aws",
            text: String::from_utf8(
                std::fs::read(Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles/gpu-1000.yaml"))
                    .unwrap(),
            )
            .unwrap()
            .replacen("    ami:\n", "    podRouting: hostRoutes\n    ami:\n", 1),
            sets: &[],
            path: "provider.aws.podRouting",
            line: 11,
            column: 5,
            found: "podRouting",
            allowed: "moved to network.podRouting (hostRoutes, vxlan or routeTable)",
        },
        Case {
            what: "route-table mode on local nodes",
            text: good_with(
                "  dnsServiceIP: 10.32.0.10\n",
                "  dnsServiceIP: 10.32.0.10\n  podRouting: routeTable\n",
            ),
            sets: &[],
            path: "network.podRouting",
            line: 12,
            column: 15,
            found: "routeTable",
            allowed: "hostRoutes or vxlan",
        },
    ];
    for c in cases {
        let errs = errors_of(&c.text, c.sets);
        let d = errs
            .iter()
            .find(|d| d.path == c.path)
            .unwrap_or_else(|| panic!("{}: no error at {}; got {errs:#?}", c.what, c.path));
        assert_eq!(
            line_col(d),
            (c.line, c.column),
            "{}: position of {d}",
            c.what
        );
        assert!(
            d.found.contains(c.found),
            "{}: found {:?} lacks {:?}",
            c.what,
            d.found,
            c.found
        );
        assert!(
            d.allowed.contains(c.allowed),
            "{}: allowed {:?} lacks {:?}",
            c.what,
            d.allowed,
            c.allowed
        );
        // The rendered message carries all of it on its first line.
        let msg = d.to_string();
        assert!(
            msg.starts_with(&format!("mine.yaml:{}:{}: {}:", c.line, c.column, c.path)),
            "{msg}"
        );
    }
}

#[test]
fn all_errors_of_a_file_are_reported_together() {
    let text = good_with("version: v1.34.2", "version: v9.9.9")
        .replace(
            "dnsServiceIP: 10.32.0.10",
            "dnsServiceIP: 10.99.0.10\n  colour: blue",
        )
        .replace("    count: 2", "    count: lots");
    let errs = errors_of(&text, &[]);
    let paths: Vec<&str> = errs.iter().map(|d| d.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "kubernetes.version",
            "network.dnsServiceIP",
            "network.colour",
            "workers[0].count"
        ],
        "{errs:#?}"
    );
}

#[test]
fn ssh_concurrency_is_a_bounded_knob() {
    let (p, _) = profile::parse(GOOD, "mine.yaml", &["ssh.concurrency=16".into()]).unwrap();
    assert_eq!(p.ssh.concurrency, Some(16));
    let (p, _) = profile::parse(GOOD, "mine.yaml", &[]).unwrap();
    assert_eq!(p.ssh.concurrency, None, "unset: the executor's default");
    for bad in ["0", "5000"] {
        let set = format!("ssh.concurrency={bad}");
        let errs = errors_of(GOOD, &[set.as_str()]);
        assert_eq!(errs.len(), 1, "{errs:#?}");
        assert_eq!(errs[0].path, "ssh.concurrency");
        assert_eq!(errs[0].found, bad);
        assert_eq!(errs[0].allowed, "1 to 4096");
    }
}

#[test]
fn set_overrides_apply_and_are_blamed() {
    let sets: Vec<String> = vec!["workers[0].count=5".into()];
    let (p, _) = profile::parse(GOOD, "mine.yaml", &sets).unwrap();
    assert_eq!(p.workers[0].count, 5);

    let errs = errors_of(GOOD, &["network.dnsServiceIP=10.1.0.1"]);
    assert_eq!(errs.len(), 1, "{errs:#?}");
    assert_eq!(
        errs[0].origin,
        Origin::Set {
            arg: "network.dnsServiceIP=10.1.0.1".into()
        }
    );
    assert!(errs[0]
        .to_string()
        .starts_with("--set network.dnsServiceIP=10.1.0.1: network.dnsServiceIP:"));

    let errs = errors_of(GOOD, &["workers[3].count=1"]);
    assert!(errs[0].problem.contains("past the end"), "{errs:#?}");
    let errs = errors_of(GOOD, &["no-equals-sign"]);
    assert!(errs[0].allowed.contains("path=value"), "{errs:#?}");
}

#[test]
fn invalid_profile_exits_nonzero_and_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let profile_path = dir.path().join("bad.yaml");
    std::fs::write(
        &profile_path,
        good_with("count: 1\nworkers", "count: 4\nworkers"),
    )
    .unwrap();
    let home = dir.path().join("home");
    let out = Command::new(env!("CARGO_BIN_EXE_k8sforge"))
        .args(["--home"])
        .arg(&home)
        .args(["plan", "--profile"])
        .arg(&profile_path)
        .arg("--out")
        .arg(dir.path().join("bundle"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "{}:13:10: controlPlane.count:",
            profile_path.display()
        )),
        "{stderr}"
    );
    assert!(
        stderr.contains("allowed: an odd number of etcd members"),
        "{stderr}"
    );
    assert!(
        !home.exists(),
        "state directory was created on a validation error"
    );
    assert!(
        !dir.path().join("bundle").exists(),
        "bundle was written on a validation error"
    );
}

#[test]
fn unknown_profile_name_lists_builtins() {
    let out = Command::new(env!("CARGO_BIN_EXE_k8sforge"))
        .args(["profiles", "show", "gpu-9999"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("local-3") && stderr.contains("gpu-1000"),
        "{stderr}"
    );
}

#[test]
fn ca_rotation_flags_are_checked_and_need_a_cluster() {
    let dir = tempfile::tempdir().unwrap();
    let run = |args: &[&str]| {
        Command::new(env!("CARGO_BIN_EXE_k8sforge"))
            .arg("--home")
            .arg(dir.path())
            .args(["certs", "rotate"])
            .args(args)
            .output()
            .unwrap()
    };
    // No cluster yet: a clear error, nothing created.
    let out = run(&["--ca"]);
    assert!(!out.status.success());
    assert_ne!(out.status.code(), Some(3), "still not implemented");
    assert!(std::fs::read_dir(dir.path()).unwrap().next().is_none());
    // Flags that do not go together are refused by the parser, naming them.
    for (args, needle) in [
        (&["--ca", "--only", "apiserver"][..], "--only"),
        (&["--only-ca", "etcd"][..], "--ca"),
        (
            &["--ca", "--only-ca", "vault"][..],
            "kubernetes, etcd, front-proxy",
        ),
        (&["--finish"][..], "--sa-keys"),
        (&["--ca", "--sa-keys"][..], "--sa-keys"),
    ] {
        let out = run(args);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(needle), "{args:?}: {err}");
    }
}

#[test]
fn artifact_settings_are_checked_field_by_field() {
    let text = format!(
        "{GOOD}artifacts:\n  delivery: seed\n  seeds: 9\n  registryMirrors:\n    - registry: registry.k8s.io\n      endpoints: [\"ftp://m.example\", \"https://user@m.example\"]\n      username: puller\n    - registry: registry.k8s.io\n      endpoints: []\n  images:\n    pause: registry.k8s.io/pause:3.9\n"
    );
    let errs = errors_of(&text, &[]);
    let find = |path: &str| {
        errs.iter()
            .find(|d| d.path == path)
            .unwrap_or_else(|| panic!("no error at {path}: {errs:#?}"))
    };
    assert!(find("artifacts.seeds").allowed.contains("1 to 3"));
    assert!(find("artifacts.registryMirrors[0].endpoints[0]")
        .problem
        .contains("http:// or https://"));
    assert!(find("artifacts.registryMirrors[0].endpoints[1]")
        .problem
        .contains("credentials"));
    assert!(find("artifacts.registryMirrors[0]")
        .problem
        .contains("passwordFile"));
    assert!(find("artifacts.registryMirrors[1].registry")
        .problem
        .contains("twice"));
    assert!(find("artifacts.registryMirrors[1].endpoints")
        .problem
        .contains("no mirror"));
    let pause = find("artifacts.images.pause");
    assert!(pause.problem.contains("not pinned by digest"));
    assert!(pause.allowed.contains("@sha256:"));
    // Every one of them located in the file.
    for d in &errs {
        assert!(matches!(d.origin, Origin::File { .. }), "{d:?}");
    }
    // A good one passes.
    let ok = format!(
        "{GOOD}artifacts:\n  delivery: fetch\n  registryMirrors:\n    - registry: docker.io\n      endpoints: [\"http://198.18.0.1:5000\"]\n      fallbackToUpstream: false\n"
    );
    assert!(errors_of(&ok, &[]).is_empty(), "{:#?}", errors_of(&ok, &[]));
}
