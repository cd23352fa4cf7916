//! Nodes that fetch for themselves, and images pulled online, on real local nodes
//! (systemd-nspawn with real systemd, sshd, containerd):
//!
//! - `artifacts.delivery: fetch`: the artifact source is an HTTP server on the host's bridge
//!   address holding the test mirror (upstream layout); each node downloads etcd, containerd,
//!   runc and the CNI plugins itself and verifies them; the bytes k8sforge sends each node over
//!   SSH in the whole `up` stay under 1 MiB; a re-run downloads nothing;
//! - the pause image is not in the mirror: every node pulls it by digest from a real registry
//!   (Debian's docker-registry on the bridge address) configured as the mirror of
//!   `registry.k8s.io` through `artifacts.registryMirrors`; a digest the registry does not hold
//!   fails naming node and image;
//! - bad input: a corrupted file at the source, a missing one (the Kubernetes server archive) and
//!   a source the nodes cannot reach (it listens on the host's loopback) fail naming node,
//!   artifact and source, install nothing, and a re-run finishes; a registry that wants
//!   credentials (real htpasswd auth) fails the pull naming node and image with the 401, and
//!   passes once `username`/`passwordFile` are set (hosts.toml 0600, the password never printed);
//! - `artifacts.delivery: seed` with the HTTP source answering only the seed node: the other
//!   node gets every artifact from the seed.
//!
//! Needs root, systemd-container, debootstrap, docker-registry and skopeo.

mod support;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Command;

use k8sforge_testkit::http::FileServer;
use k8sforge_testkit::mirror;
use k8sforge_testkit::registry::Registry;

use support::local_cluster::{phase, LocalCluster};

const MIB: u64 = 1 << 20;

/// Bytes sent over SSH per node, summed over every phase of `report`.
fn bytes_per_node(report: &serde_json::Value) -> std::collections::BTreeMap<String, u64> {
    let mut out = std::collections::BTreeMap::new();
    for p in report["phases"].as_array().into_iter().flatten() {
        if let Some(m) = p["bytes_sent"].as_object() {
            for (n, b) in m {
                *out.entry(n.clone()).or_insert(0) += b.as_u64().unwrap_or(0);
            }
        }
    }
    out
}

/// The served mirror: hard links to the test mirror (never modified in place: a changed file
/// is replaced by a new one), with a list that names no image archive, so nodes pull images.
fn served_copy(root: &Path) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let st = Command::new("cp")
        .arg("-al")
        .arg(format!("{}/.", root.display()))
        .arg(dir.path())
        .status()
        .unwrap();
    assert!(st.success());
    let list = dir.path().join(k8sforge::artifacts::MIRROR_MANIFEST_NAME);
    let mut m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&list).unwrap()).unwrap();
    m["images"] = serde_json::json!([]);
    std::fs::remove_file(&list).unwrap();
    std::fs::write(&list, serde_json::to_vec_pretty(&m).unwrap()).unwrap();
    dir
}

/// Replace `rel` under `root` by other bytes (a new inode: the test mirror stays intact).
fn corrupt(root: &Path, rel: &str) -> Vec<u8> {
    let p = root.join(rel);
    let orig = std::fs::read(&p).unwrap();
    std::fs::remove_file(&p).unwrap();
    let mut bad = orig.clone();
    bad[orig.len() / 2] ^= 0xff;
    std::fs::write(&p, bad).unwrap();
    orig
}

fn restore(root: &Path, rel: &str, bytes: &[u8]) {
    let p = root.join(rel);
    std::fs::remove_file(&p).unwrap();
    std::fs::write(&p, bytes).unwrap();
}

#[test]
fn nodes_fetch_artifacts_and_pull_images_themselves() {
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "boots systemd-nspawn nodes: run as root"
    );
    for tool in [k8sforge_testkit::registry::REGISTRY_BIN, "/usr/bin/skopeo"] {
        assert!(
            Path::new(tool).exists(),
            "{tool} is missing: apt-get install docker-registry skopeo (scripts/test-all does)"
        );
    }
    let m = mirror::build(&mirror::default_cache_dir()).expect("test mirror");
    // Two nodes: a control plane and one worker.
    let mut c = LocalCluster::reserved("fetch", "local-3").with_set("workers[0].count=1");
    let x: u8 = c.cidr.split('.').nth(2).unwrap().parse().unwrap();
    let bridge = Ipv4Addr::new(198, 19, x, 1);
    let _ = c.cmd(&["teardown"]).output();
    let (out, report) = c.up(&["--only", "provision"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(phase(&report, "provision")["outcome"], "done");

    // The sources, on the bridge address: the nodes reach them, nothing leaves the host.
    let served = served_copy(&m.root);
    let http = FileServer::start(SocketAddr::new(bridge.into(), 0), served.path()).unwrap();
    let registry = Registry::start(SocketAddr::new(bridge.into(), 42000 + u16::from(x))).unwrap();
    let pause_digest = registry
        .push_archive(&m.root.join("images/pause.tar"), "pause", "3.9")
        .unwrap();
    let pause_ref = format!("registry.k8s.io/pause:3.9@{pause_digest}");
    let mirrors = format!(
        "artifacts.registryMirrors=[{{registry: registry.k8s.io, endpoints: [\"http://{}\"], fallbackToUpstream: false}}]",
        registry.addr
    );
    c.sets.extend([
        format!("artifacts.mirror={}", http.url()),
        "artifacts.delivery=fetch".into(),
        mirrors.clone(),
        format!("artifacts.images.pause={pause_ref}"),
    ]);

    // 1. The whole run: etcd and the runtime complete with every node downloading for itself;
    //    the control plane stops the run: the node cannot get the Kubernetes server archive
    //    (the mirror has none), named with node, artifact and source.
    let (out, report) = c.up(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    for p in ["pki", "etcd", "runtime"] {
        assert_eq!(
            phase(&report, p)["outcome"],
            "done",
            "{p}: {stderr}\n{report:#}"
        );
    }
    let cp = phase(&report, "control-plane");
    assert_eq!(cp["outcome"], "failed", "{report:#}");
    let why = cp["failed_nodes"].to_string();
    assert!(
        why.contains("controlplane-1")
            && why.contains("kubernetes-server-linux-amd64.tar.gz")
            && why.contains(&http.url())
            && why.contains("404"),
        "{why}"
    );
    assert!(why.contains("nothing was installed"), "{why}");
    let sent = bytes_per_node(&report);
    eprintln!("fetch mode: bytes sent over SSH per node in the whole up: {sent:?}");
    assert_eq!(sent.len(), 2, "{sent:?}");
    for (node, b) in &sent {
        assert!(*b < MIB, "{node}: {b} bytes sent over SSH");
    }
    let got: Vec<_> = http
        .requests()
        .into_iter()
        .filter(|r| r.status == 200)
        .collect();
    for file in ["etcd-v", "containerd-", "runc.amd64", "cni-plugins-linux"] {
        assert!(
            got.iter().any(|r| r.path.contains(file) && r.bytes > 0),
            "no node downloaded {file}: {got:?}"
        );
    }
    let worker_ip = c
        .ssh_ok("worker-1", "hostname -I")
        .trim()
        .split(' ')
        .next()
        .unwrap()
        .to_string();
    assert!(
        got.iter().any(|r| r.peer.to_string() == worker_ip),
        "the worker fetched nothing itself: {got:?}"
    );
    // The runtime is the one fetched; pause came from the registry, by digest.
    assert_eq!(
        c.ssh_ok("worker-1", "systemctl is-active containerd")
            .trim(),
        "active"
    );
    let hosts = c.ssh_ok(
        "worker-1",
        "cat /etc/containerd/certs.d/registry.k8s.io/hosts.toml",
    );
    assert!(
        hosts.contains(&format!("[host.\"http://{}\"]", registry.addr)),
        "{hosts}"
    );
    let images = c.ssh_ok("worker-1", "ctr -n k8s.io images ls -q");
    assert!(images.contains(&pause_digest), "{images}");
    assert!(
        c.ssh_ok(
            "worker-1",
            "ls /var/lib/k8sforge/images/ 2>/dev/null | wc -l"
        )
        .trim()
            == "0",
        "image archives on the node"
    );
    // CoreDNS through the same registry configuration (a real pull by the node's containerd).
    let coredns_digest = registry
        .push_archive(
            &m.root.join("images/pause.tar"),
            "coredns/coredns",
            "v1.10.1",
        )
        .unwrap();
    c.ssh_ok(
        "worker-1",
        &format!(
            "ctr -n k8s.io images pull --hosts-dir /etc/containerd/certs.d registry.k8s.io/coredns/coredns:v1.10.1@{coredns_digest} >/dev/null"
        ),
    );

    // 2. A re-run downloads nothing and changes nothing.
    http.clear_log();
    let (_, report) = c.up(&["--only", "runtime"]);
    assert_eq!(phase(&report, "runtime")["outcome"], "done", "{report:#}");
    assert_eq!(phase(&report, "runtime")["files_changed"], 0, "{report:#}");
    assert!(
        http.requests()
            .iter()
            // Only the list is read again (by k8sforge, to resolve versions).
            .all(|r| r.status != 200 || r.path.ends_with("/k8sforge-artifacts.json")),
        "{:?}",
        http.requests()
    );

    // 3. A digest the registry does not hold: the node and the image are named.
    let wrong = format!("registry.k8s.io/pause:3.9@sha256:{}", "0".repeat(64));
    c.sets[4] = format!("artifacts.images.pause={wrong}");
    let (out, report) = c.up(&["--only", "runtime"]);
    assert!(!out.status.success());
    let why = phase(&report, "runtime")["failed_nodes"].to_string();
    assert!(
        why.contains("worker-1") && why.contains("cannot pull image pause") && why.contains(&wrong),
        "{why}"
    );
    c.sets[4] = format!("artifacts.images.pause={pause_ref}");

    // 4. A corrupted file at the source: checksum mismatch named with node, artifact and URL;
    //    the installed runc is untouched; after the source is repaired a re-run finishes.
    let runc_rel = k8sforge::artifacts::Component::Runc
        .url(m.version(k8sforge::artifacts::Component::Runc).unwrap())
        .trim_start_matches("https://")
        .to_string();
    let before = c.ssh_ok("worker-1", "sha256sum /usr/local/sbin/runc");
    c.ssh_ok("worker-1", "rm -rf /var/lib/k8sforge/artifacts");
    let orig = corrupt(served.path(), &runc_rel);
    let (out, report) = c.up(&["--only", "runtime"]);
    assert!(!out.status.success());
    let why = phase(&report, "runtime")["failed_nodes"].to_string();
    assert!(
        why.contains("worker-1") && why.contains("runc") && why.contains("checksum mismatch"),
        "{why}"
    );
    assert_eq!(
        c.ssh_ok("worker-1", "sha256sum /usr/local/sbin/runc"),
        before
    );
    restore(served.path(), &runc_rel, &orig);
    let (out, report) = c.up(&["--only", "runtime"]);
    assert!(out.status.success(), "{report:#}");

    // 4b. A source the nodes cannot reach (the operator reads its list on the host's loopback,
    //     which is not the nodes'): named with node, artifact and URL; nothing installed; the
    //     re-run with the reachable source finishes.
    let loopback = FileServer::start("127.0.0.1:0".parse().unwrap(), served.path()).unwrap();
    c.ssh_ok("worker-1", "rm -rf /var/lib/k8sforge/artifacts");
    c.sets[1] = format!("artifacts.mirror={}", loopback.url());
    let (out, report) = c.up(&["--only", "runtime"]);
    assert!(!out.status.success());
    let why = phase(&report, "runtime")["failed_nodes"].to_string();
    assert!(
        why.contains("worker-1")
            && why.contains("no source delivered it")
            && why.contains("nothing was installed")
            && why.contains(&loopback.url())
            && why.to_lowercase().contains("connect"),
        "{why}"
    );
    assert_eq!(
        c.ssh_ok("worker-1", "sha256sum /usr/local/sbin/runc"),
        before
    );
    c.sets[1] = format!("artifacts.mirror={}", http.url());
    let (out, report) = c.up(&["--only", "runtime"]);
    assert!(out.status.success(), "{report:#}");

    // 4c. A registry that wants credentials: the nodes' pull fails with the 401, naming node and
    //     image; with username and passwordFile (rendered into hosts.toml, 0600) it passes.
    let secret = "k8sforge-test-s3cret";
    let private = Registry::start_with_auth(
        SocketAddr::new(bridge.into(), 43000 + u16::from(x)),
        "puller",
        secret,
    )
    .unwrap();
    assert_eq!(
        private
            .push_archive(&m.root.join("images/pause.tar"), "pause", "3.9")
            .unwrap(),
        pause_digest
    );
    let private_mirrors = |creds: &str| {
        format!(
            "artifacts.registryMirrors=[{{registry: registry.k8s.io, endpoints: [\"http://{}\"], fallbackToUpstream: false{creds}}}]",
            private.addr
        )
    };
    for n in ["controlplane-1", "worker-1"] {
        c.ssh_ok(
            n,
            "ctr -n k8s.io images ls -q | grep pause | xargs -r ctr -n k8s.io images rm >/dev/null",
        );
    }
    c.sets[3] = private_mirrors("");
    let (out, report) = c.up(&["--only", "runtime"]);
    assert!(!out.status.success());
    let why = phase(&report, "runtime")["failed_nodes"].to_string();
    assert!(
        why.contains("worker-1")
            && why.contains("cannot pull image pause")
            && why.contains(&pause_ref)
            && (why.contains("401") || why.to_lowercase().contains("unauthorized")),
        "{why}"
    );
    let pw = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(pw.path(), format!("{secret}\n")).unwrap();
    c.sets[3] = private_mirrors(&format!(
        ", username: puller, passwordFile: {}",
        pw.path().display()
    ));
    let (out, report) = c.up(&["--only", "runtime"]);
    let printed = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{printed}");
    assert!(!printed.contains(secret), "the password was printed");
    assert!(c
        .ssh_ok("worker-1", "ctr -n k8s.io images ls -q")
        .contains(&pause_digest));
    assert_eq!(
        c.ssh_ok(
            "worker-1",
            "stat -c %a /etc/containerd/certs.d/registry.k8s.io/hosts.toml"
        )
        .trim(),
        "600"
    );
    drop(report);
    c.sets[3] = mirrors.clone();

    // 5. Seed mode: the source answers only the seed (controlplane-1); the worker gets every
    //    artifact from the seed over the cluster network, verified again.
    let seed_ip: IpAddr = c
        .ssh_ok("controlplane-1", "hostname -I")
        .trim()
        .split(' ')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    // The operator (the host, on the bridge address) still reads the mirror's list.
    http.allow_only(Some(vec![seed_ip, IpAddr::V4(bridge)]));
    http.clear_log();
    for n in ["controlplane-1", "worker-1"] {
        c.ssh_ok(n, "rm -rf /var/lib/k8sforge/artifacts");
    }
    c.sets[2] = "artifacts.delivery=seed".into();
    c.sets.push("artifacts.seeds=1".into());
    let (out, report) = c.up(&["--only", "runtime"]);
    assert!(
        out.status.success(),
        "{}\n{report:#}",
        String::from_utf8_lossy(&out.stderr)
    );
    let reqs = http.requests();
    assert!(
        reqs.iter().all(|r| r.peer == seed_ip
            || r.status == 403
            || r.path.ends_with("/k8sforge-artifacts.json")),
        "{reqs:?}"
    );
    assert!(
        reqs.iter().any(|r| r.peer == seed_ip && r.status == 200),
        "{reqs:?}"
    );
    assert!(phase(&report, "runtime")["bytes_fetched"].as_u64().unwrap() > MIB);
    let stored = c.ssh_ok(
        "worker-1",
        "ls /var/lib/k8sforge/artifacts | grep -vc '\\.' || true",
    );
    assert!(stored.trim().parse::<u32>().unwrap_or(0) >= 3, "{stored}");
    eprintln!(
        "seed mode: bytes sent over SSH per node in the runtime phase: {:?}; bytes fetched {}",
        bytes_per_node(&report),
        phase(&report, "runtime")["bytes_fetched"]
    );
    for (node, b) in bytes_per_node(&report) {
        assert!(b < MIB, "{node}: {b} bytes sent over SSH in seed mode");
    }
}
