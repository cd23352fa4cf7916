//! `k8sforge mirror` against real peers on loopback: Debian's docker-registry holding images the
//! test pushes with skopeo, and an HTTP server holding upstream-layout files (the test mirror,
//! plus small stand-ins for the Kubernetes downloads no registry here ships). The mirror it
//! writes is complete and verified; a second run fetches nothing; a corrupted file or image
//! archive is detected and fetched again; a digest the registry lacks fails naming image and
//! endpoint.

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Output};

use k8sforge::artifacts::source::{MirrorEntry, MirrorManifest};
use k8sforge::artifacts::Component;
use k8sforge_testkit::http::FileServer;
use k8sforge_testkit::mirror;
use k8sforge_testkit::registry::Registry;
use sha2::Digest as _;

const BIN: &str = env!("CARGO_BIN_EXE_k8sforge");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The source: the test mirror (hard links) plus stand-ins for the Kubernetes downloads,
/// listed with their sums.
fn source_tree(m: &mirror::TestMirror, kube: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    assert!(Command::new("cp")
        .arg("-al")
        .arg(format!("{}/.", m.root.display()))
        .arg(dir.path())
        .status()
        .unwrap()
        .success());
    let mut list = m.manifest.clone();
    list.images.clear();
    let crictl = k8sforge::artifacts::release(kube).unwrap().crictl;
    for (c, version) in [
        (Component::KubernetesServer, kube),
        (Component::Kubelet, kube),
        (Component::Kubectl, kube),
        (Component::Crictl, crictl),
    ] {
        let url = c.url(version);
        let rel = url.trim_start_matches("https://");
        let p = dir.path().join(rel);
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let bytes = format!("stand-in for {c} {version}\n").repeat(1000);
        std::fs::write(&p, &bytes).unwrap();
        list.artifacts.push(MirrorEntry {
            name: c.name().into(),
            version: version.into(),
            url,
            sha256: hex::encode(sha2::Sha256::digest(bytes.as_bytes())),
        });
    }
    let lp = dir.path().join(k8sforge::artifacts::MIRROR_MANIFEST_NAME);
    std::fs::remove_file(&lp).unwrap();
    std::fs::write(&lp, serde_json::to_vec_pretty(&list).unwrap()).unwrap();
    dir
}

fn run(out: &Path, from: &str, sets: &[String]) -> (Output, serde_json::Value) {
    let mut c = Command::new(BIN);
    c.args(["mirror", "--profile", "local-3", "--out"])
        .arg(out)
        .args(["--from", from, "--trust-mirror-checksums", "-o", "json"]);
    for s in sets {
        c.args(["--set", s]);
    }
    let o = c.output().unwrap();
    let v = serde_json::from_slice(&o.stdout).unwrap_or(serde_json::Value::Null);
    (o, v)
}

fn corrupt(p: &Path) {
    let mut b = std::fs::read(p).unwrap();
    let i = b.len() / 2;
    b[i] ^= 0xff;
    std::fs::write(p, b).unwrap();
}

#[test]
fn mirror_pulls_binaries_and_images_and_resumes() {
    for tool in [k8sforge_testkit::registry::REGISTRY_BIN, "/usr/bin/skopeo"] {
        assert!(
            Path::new(tool).exists(),
            "{tool} missing: apt-get install docker-registry skopeo"
        );
    }
    let m = mirror::build(&mirror::default_cache_dir()).expect("test mirror");
    let kube = "v1.28.7";
    let src = source_tree(&m, kube);
    let http = FileServer::start("127.0.0.1:0".parse().unwrap(), src.path()).unwrap();
    let registry = Registry::start(SocketAddr::from(([127, 0, 0, 1], free_port()))).unwrap();
    let pause = m.root.join("images/pause.tar");
    let pause_digest = registry.push_archive(&pause, "pause", "3.9").unwrap();
    let dns_digest = registry
        .push_archive(&pause, "coredns/coredns", "v1.10.1")
        .unwrap();
    let mut sets = vec![
        format!("kubernetes.version={kube}"),
        format!(
            "artifacts.registryMirrors=[{{registry: registry.k8s.io, endpoints: [\"http://{}\"], fallbackToUpstream: false}}]",
            registry.addr
        ),
        format!("artifacts.images.pause=registry.k8s.io/pause:3.9@{pause_digest}"),
        format!("artifacts.images.coredns=registry.k8s.io/coredns/coredns:v1.10.1@{dns_digest}"),
    ];
    let out = tempfile::tempdir().unwrap();

    // 1. A complete, verified mirror.
    let (o, s) = run(out.path(), &http.url(), &sets);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(s["files"], 8, "{s:#}");
    assert_eq!(s["images"], 2, "{s:#}");
    assert_eq!(s["fetched"], 10, "{s:#}");
    let list: MirrorManifest = serde_json::from_slice(
        &std::fs::read(out.path().join(k8sforge::artifacts::MIRROR_MANIFEST_NAME)).unwrap(),
    )
    .unwrap();
    for e in &list.artifacts {
        let p = out.path().join(e.url.trim_start_matches("https://"));
        let sha = hex::encode(sha2::Sha256::digest(std::fs::read(&p).unwrap()));
        assert_eq!(sha, e.sha256, "{}", p.display());
    }
    for i in &list.images {
        let p = out.path().join(&i.file);
        let sha = hex::encode(sha2::Sha256::digest(std::fs::read(&p).unwrap()));
        assert_eq!(sha, i.sha256);
        // The archive holds the pinned digest and the name nodes will know it by.
        let listing = Command::new("tar")
            .arg("-xOf")
            .arg(&p)
            .arg("index.json")
            .output()
            .unwrap();
        let index = String::from_utf8_lossy(&listing.stdout);
        let want = if i.name == "pause" {
            &pause_digest
        } else {
            &dns_digest
        };
        assert!(
            index.contains(want.as_str()) && index.contains(&i.reference),
            "{index}"
        );
    }
    assert_eq!(list.images[0].reference, "registry.k8s.io/pause:3.9");
    // skopeo reads the archive back as a valid OCI image.
    let inspect = Command::new("skopeo")
        .arg("inspect")
        .arg(format!(
            "oci-archive:{}",
            out.path().join("images/pause.tar").display()
        ))
        .output()
        .unwrap();
    assert!(
        inspect.status.success(),
        "{}",
        String::from_utf8_lossy(&inspect.stderr)
    );

    // 2. A second run fetches nothing.
    http.clear_log();
    let (o, s) = run(out.path(), &http.url(), &sets);
    assert!(o.status.success());
    assert_eq!(
        (s["fetched"].as_u64(), s["reused"].as_u64()),
        (Some(0), Some(10)),
        "{s:#}"
    );
    assert!(
        http.requests()
            .iter()
            // Only the list is read again (by k8sforge, to resolve versions).
            .all(|r| r.status != 200 || r.path.ends_with("/k8sforge-artifacts.json")),
        "{:?}",
        http.requests()
    );

    // 3. A corrupted binary and a corrupted image archive are fetched again, and only they.
    let runc = &list
        .artifacts
        .iter()
        .find(|e| e.name == "runc")
        .unwrap()
        .url;
    corrupt(&out.path().join(runc.trim_start_matches("https://")));
    corrupt(&out.path().join("images/coredns.tar"));
    let (o, s) = run(out.path(), &http.url(), &sets);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(s["fetched"], 2, "{s:#}");
    let again: MirrorManifest = serde_json::from_slice(
        &std::fs::read(out.path().join(k8sforge::artifacts::MIRROR_MANIFEST_NAME)).unwrap(),
    )
    .unwrap();
    assert_eq!(again, list);

    // 4. A digest the registry does not hold: a clear error naming image and endpoint, and the
    //    mirror list of the last good run is left as it was.
    sets[2] = format!(
        "artifacts.images.pause=registry.k8s.io/pause:3.9@sha256:{}",
        "1".repeat(64)
    );
    std::fs::remove_file(out.path().join("images/pause.tar")).unwrap();
    let (o, _) = run(out.path(), &http.url(), &sets);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("registry.k8s.io/pause:3.9@sha256:111")
            && err.contains(&registry.addr.to_string())
            && err.contains("404"),
        "{err}"
    );
    let kept: MirrorManifest = serde_json::from_slice(
        &std::fs::read(out.path().join(k8sforge::artifacts::MIRROR_MANIFEST_NAME)).unwrap(),
    )
    .unwrap();
    assert_eq!(kept, list);
}
