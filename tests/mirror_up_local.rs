//! `up --mirror DIR` consumes exactly what `k8sforge mirror` writes. The mirror is built by the
//! binary from real peers on loopback (an HTTP server holding upstream-layout files and Debian's
//! docker-registry holding the images, which the nodes cannot reach), then a local cluster is
//! brought up from that directory alone:
//!
//! - always: provision, pki, etcd and runtime complete; every node holds the pause image the
//!   mirror pulled by digest (imported from the mirror's OCI archive, under the reference its
//!   list names, with the pinned digest), and containerd's sandbox setting names it; nothing is
//!   read from the HTTP source or the registry during `up`;
//! - with Kubernetes binaries (`K8SFORGE_TEST_KUBE_BIN`, see DEVELOPERS.md) the mirror holds
//!   them and CoreDNS, and the run goes on through control plane, workers (every node Ready),
//!   network and add-ons (CoreDNS rolled out from the mirror's archive). Without them the mirror
//!   holds stand-ins for the Kubernetes downloads and the control plane is the first phase that
//!   cannot work, naming the server archive.
//!
//! The test mirror's etcd/containerd/runc/CNI are Debian builds with no upstream pin, so both
//! commands run with `--trust-mirror-checksums`. Needs root, systemd-container, debootstrap,
//! docker-registry and skopeo.

mod support;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Output};

use k8sforge::artifacts::source::MirrorManifest;
use k8sforge_testkit::http::FileServer;
use k8sforge_testkit::registry::Registry;
use k8sforge_testkit::{kube, mirror};
use support::local_cluster::{phase, LocalCluster, BIN};
use support::mirror_source::source_tree;

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn up_from_a_directory_written_by_k8sforge_mirror() {
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
    let cache = mirror::default_cache_dir();
    let m = mirror::build(&cache).expect("test mirror");
    let kube = kube::from_env().expect(kube::KUBE_BIN_ENV);
    if kube.is_none() {
        eprintln!(
            "{} unset: the mirror holds stand-ins for the Kubernetes downloads; up stops at the control plane",
            kube::KUBE_BIN_ENV
        );
    }
    let (base, version) = match &kube {
        Some(k) => (
            kube::cluster_mirror(&m, k, &cache).expect("cluster mirror"),
            k.version.clone(),
        ),
        None => (m.clone(), "v1.28.7".to_string()),
    };
    let release = k8sforge::artifacts::release(&version).expect("a release row for the binaries");

    // The peers `k8sforge mirror` reads from, on loopback only.
    let src = source_tree(&base, &version, kube.is_none());
    let http = FileServer::start("127.0.0.1:0".parse().unwrap(), src.path()).unwrap();
    let registry = Registry::start(SocketAddr::from(([127, 0, 0, 1], free_port()))).unwrap();
    let pause_tag = release.pause;
    let pause_digest = registry
        .push_archive(&base.root.join("images/pause.tar"), "pause", pause_tag)
        .unwrap();
    let coredns_archive = match base.root.join("images/coredns.tar") {
        p if p.is_file() => p,
        _ => base.root.join("images/pause.tar"),
    };
    let coredns_digest = registry
        .push_archive(&coredns_archive, "coredns/coredns", release.coredns)
        .unwrap();
    let pause_ref = format!("registry.k8s.io/pause:{pause_tag}");
    let coredns_ref = format!("registry.k8s.io/coredns/coredns:{}", release.coredns);

    // 1. k8sforge mirror.
    let out = tempfile::tempdir().unwrap();
    let o = Command::new(BIN)
        .args(["mirror", "--profile", "local-3", "--out"])
        .arg(out.path())
        .args(["--from", &http.url(), "--trust-mirror-checksums", "-o", "json"])
        .args(["--set", &format!("kubernetes.version={version}")])
        .args(["--set", "training.enabled=false"])
        .args([
            "--set",
            &format!(
                "artifacts.registryMirrors=[{{registry: registry.k8s.io, endpoints: [\"http://{}\"], fallbackToUpstream: false}}]",
                registry.addr
            ),
        ])
        .args(["--set", &format!("artifacts.images.pause={pause_ref}@{pause_digest}")])
        .args(["--set", &format!("artifacts.images.coredns={coredns_ref}@{coredns_digest}")])
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let list: MirrorManifest = serde_json::from_slice(
        &std::fs::read(out.path().join(k8sforge::artifacts::MIRROR_MANIFEST_NAME)).unwrap(),
    )
    .unwrap();
    assert_eq!(list.images.len(), 2, "{list:#?}");
    let pause_entry = list.images.iter().find(|i| i.name == "pause").unwrap();
    assert_eq!(pause_entry.reference, pause_ref);

    // 2. up --mirror of that directory, nothing else.
    let c = LocalCluster::reserved("mirror-up", "local-3")
        .with_mirror(out.path())
        .with_set(format!("kubernetes.version={version}"))
        .with_set("workers[0].count=1")
        .with_set("training.enabled=false");
    let _ = c.cmd(&["teardown"]).output();
    http.clear_log();
    let (o, report) = c.up(&[]);
    let err = stderr(&o);
    for p in ["provision", "pki", "etcd", "runtime"] {
        assert_eq!(
            phase(&report, p)["outcome"],
            "done",
            "{p}: {err}\n{report:#}"
        );
    }
    assert!(
        http.requests().is_empty(),
        "up read from the mirror's source: {:?}",
        http.requests()
    );
    for node in ["controlplane-1", "worker-1"] {
        let images = c.ssh_ok(node, "ctr -n k8s.io images ls");
        let line = images
            .lines()
            .find(|l| l.starts_with(&format!("{pause_ref} ")))
            .unwrap_or_else(|| panic!("{node}: no {pause_ref}:\n{images}"));
        assert!(line.contains(&pause_digest), "{node}: {line}");
        let config = c.ssh_ok(node, "cat /etc/containerd/config.toml");
        assert!(
            config.contains(&format!("\"{pause_ref}\"")),
            "{node}: {config}"
        );
        let sum = c.ssh_ok(node, "sha256sum /var/lib/k8sforge/images/pause.tar");
        assert!(sum.starts_with(&pause_entry.sha256), "{node}: {sum}");
    }
    match &kube {
        None => {
            let cp = phase(&report, "control-plane");
            assert_eq!(cp["outcome"], "failed", "{report:#}");
            assert!(
                format!("{cp}{err}").contains("kubernetes-server-linux-amd64.tar.gz"),
                "{cp}\n{err}"
            );
        }
        Some(_) => {
            // Nodes Ready is the workers phase's gate; CoreDNS rolled out is the add-ons'.
            for p in ["control-plane", "workers", "network", "addons"] {
                assert_eq!(
                    phase(&report, p)["outcome"],
                    "done",
                    "{p}: {err}\n{report:#}"
                );
            }
            let images = c.ssh_ok("worker-1", "ctr -n k8s.io images ls -q");
            assert!(images.contains(&coredns_ref), "{images}");
        }
    }
}
