//! `k8sforge mirror` against real peers on loopback: Debian's docker-registry holding images the
//! test pushes with skopeo, and an HTTP server holding upstream-layout files (the test mirror,
//! plus small stand-ins for the Kubernetes downloads no registry here ships). The mirror it
//! writes is complete and verified (binaries, cluster images, the training stack's pinned
//! upstream files and its pinned controller image); a second run fetches nothing; a corrupted
//! file or image archive is detected and fetched again. Bad input, each a clear error naming
//! artifact and source, with nothing left at the final path and the last good list kept, and a
//! re-run after the fix finishing: a digest the registry lacks (404), a source that does not
//! answer, a file whose bytes do not match, a file the source lacks, and a registry that wants
//! credentials (401 from a real htpasswd-protected docker-registry; then given them).

mod support;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Command, Output};

use k8sforge::artifacts::source::MirrorManifest;
use k8sforge_testkit::http::FileServer;
use k8sforge_testkit::mirror;
use k8sforge_testkit::registry::Registry;
use sha2::Digest as _;
use support::mirror_source::{source_tree, upstream_dir};

const BIN: &str = env!("CARGO_BIN_EXE_k8sforge");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Replace `rel` under `root` by other bytes (a new inode: the cached test mirror stays intact);
/// returns the original bytes.
fn replace_corrupted(root: &Path, rel: &str) -> Vec<u8> {
    let p = root.join(rel);
    let orig = std::fs::read(&p).unwrap();
    std::fs::remove_file(&p).unwrap();
    let mut bad = orig.clone();
    bad[orig.len() / 2] ^= 0xff;
    std::fs::write(&p, bad).unwrap();
    orig
}

fn put_back(root: &Path, rel: &str, bytes: &[u8]) {
    let p = root.join(rel);
    let _ = std::fs::remove_file(&p);
    std::fs::write(&p, bytes).unwrap();
}

fn list_of(out: &Path) -> MirrorManifest {
    serde_json::from_slice(
        &std::fs::read(out.join(k8sforge::artifacts::MIRROR_MANIFEST_NAME)).unwrap(),
    )
    .unwrap()
}

/// Nothing but finished, verified files in the mirror: no staging or partial file left.
fn assert_no_partial_files(out: &Path) {
    let out_s = Command::new("find")
        .arg(out)
        .args([
            "-name",
            "*.partial",
            "-o",
            "-name",
            ".fetch-*",
            "-o",
            "-name",
            ".blob-*",
        ])
        .output()
        .unwrap();
    let found = String::from_utf8_lossy(&out_s.stdout);
    assert!(found.trim().is_empty(), "partial files left: {found}");
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
    let src = source_tree(&m, kube, true);
    let http = FileServer::start("127.0.0.1:0".parse().unwrap(), src.path()).unwrap();
    let registry = Registry::start(SocketAddr::from(([127, 0, 0, 1], free_port()))).unwrap();
    let pause = m.root.join("images/pause.tar");
    let pause_digest = registry.push_archive(&pause, "pause", "3.9").unwrap();
    let dns_digest = registry
        .push_archive(&pause, "coredns/coredns", "v1.10.1")
        .unwrap();
    // A stand-in under the training-operator's name (its upstream index has no digest pin in
    // k8sforge; a pinned `artifacts.images` reference makes it mirrorable).
    let operator_digest = registry
        .push_archive(
            &pause,
            "kubeflow/training-v1/training-operator",
            "v1-93c5489",
        )
        .unwrap();
    let mirrors_of = |addr: &SocketAddr, creds: &str| {
        format!(
            "artifacts.registryMirrors=[{{registry: registry.k8s.io, endpoints: [\"http://{addr}\"], fallbackToUpstream: false{creds}}}, {{registry: ghcr.io, endpoints: [\"http://{}\"], fallbackToUpstream: false}}]",
            registry.addr
        )
    };
    // Kubernetes 1.28 selects training-operator v1 only (Kueue and Trainer need newer).
    let training = upstream_dir().is_some();
    if !training {
        eprintln!("no training-stack test data (../shared/upstream): training stack off here");
    }
    let mut sets = vec![
        format!("kubernetes.version={kube}"),
        mirrors_of(&registry.addr, ""),
        format!("artifacts.images.pause=registry.k8s.io/pause:3.9@{pause_digest}"),
        format!("artifacts.images.coredns=registry.k8s.io/coredns/coredns:v1.10.1@{dns_digest}"),
        format!("training.enabled={training}"),
        format!("artifacts.images.trainingOperator=ghcr.io/kubeflow/training-v1/training-operator:v1-93c5489@{operator_digest}"),
    ];
    let out = tempfile::tempdir().unwrap();
    let (want_files, want_images) = if training { (8 + 21, 3) } else { (8, 2) };

    // 1. A complete, verified mirror.
    let (o, s) = run(out.path(), &http.url(), &sets);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(s["files"], want_files, "{s:#}");
    assert_eq!(s["images"], want_images, "{s:#}");
    assert_eq!(s["fetched"], want_files + want_images, "{s:#}");
    if training {
        // Every pinned file of the training-operator tree, byte for byte the upstream file.
        let tree = out
            .path()
            .join("raw.githubusercontent.com/kubeflow/trainer/v1.9.4/manifests");
        let n = Command::new("find")
            .arg(&tree)
            .args(["-type", "f"])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&n.stdout).lines().count(), 21);
    }
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
        let want = match i.name.as_str() {
            "pause" => &pause_digest,
            "coredns" => &dns_digest,
            _ => &operator_digest,
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
        (Some(0), Some(want_files + want_images)),
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
    let good_pause = sets[2].clone();
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
    assert!(!out.path().join("images/pause.tar").exists());
    assert_no_partial_files(out.path());
    assert_eq!(list_of(out.path()), list);
    sets[2] = good_pause;

    // 5. A source that does not answer: named with the address and the reason.
    let dead = format!("http://127.0.0.1:{}", free_port());
    let (o, _) = run(out.path(), &dead, &sets);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains(&dead) && err.to_lowercase().contains("connection refused"),
        "{err}"
    );
    assert_eq!(list_of(out.path()), list);

    // 6. A file whose bytes do not match its checksum at the source: named with file, source,
    //    expected and actual; nothing at the final path; after the source is fixed a re-run
    //    fetches just that file (and the pause archive of step 4).
    let etcd = list
        .artifacts
        .iter()
        .find(|e| e.name == "etcd")
        .unwrap()
        .url
        .trim_start_matches("https://")
        .to_string();
    std::fs::remove_file(out.path().join(&etcd)).unwrap();
    let orig = replace_corrupted(src.path(), &etcd);
    let (o, _) = run(out.path(), &http.url(), &sets);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    let file = etcd.rsplit('/').next().unwrap();
    assert!(
        err.contains("checksum mismatch")
            && err.contains(file)
            && err.contains(&http.url())
            && err.contains("expected sha256:"),
        "{err}"
    );
    assert!(
        !out.path().join(&etcd).exists(),
        "a bad file at the final path"
    );
    assert_no_partial_files(out.path());
    assert_eq!(list_of(out.path()), list);
    put_back(src.path(), &etcd, &orig);

    // 7. A file the source lacks (404): named with file and where it was expected.
    let runc_rel = runc.trim_start_matches("https://").to_string();
    let runc_bytes = std::fs::read(src.path().join(&runc_rel)).unwrap();
    std::fs::remove_file(src.path().join(&runc_rel)).unwrap();
    std::fs::remove_file(out.path().join(&runc_rel)).unwrap();
    let (o, _) = run(out.path(), &http.url(), &sets);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("runc.amd64 not found") && err.contains(&format!("{}/{runc_rel}", http.url())),
        "{err}"
    );
    assert!(!out.path().join(&runc_rel).exists());
    put_back(src.path(), &runc_rel, &runc_bytes);
    let (o, s) = run(out.path(), &http.url(), &sets);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    // etcd came in the failed run of this step (before runc's 404); now runc and the pause
    // archive of step 4.
    assert_eq!(s["fetched"], 2, "{s:#}");
    assert_eq!(list_of(out.path()), list);

    // 8. A registry that wants credentials (real htpasswd auth): 401 named with image, endpoint
    //    and what to set; with username and passwordFile the pull goes through.
    let secret = "k8sforge-test-s3cret";
    let private = Registry::start_with_auth(
        SocketAddr::from(([127, 0, 0, 1], free_port())),
        "puller",
        secret,
    )
    .unwrap();
    assert_eq!(
        private.push_archive(&pause, "pause", "3.9").unwrap(),
        pause_digest
    );
    sets[1] = mirrors_of(&private.addr, "");
    std::fs::remove_file(out.path().join("images/pause.tar")).unwrap();
    let (o, _) = run(out.path(), &http.url(), &sets);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success());
    assert!(
        err.contains("registry.k8s.io/pause:3.9")
            && err.contains(&private.addr.to_string())
            && err.contains("401")
            && err.contains("passwordFile"),
        "{err}"
    );
    assert!(!out.path().join("images/pause.tar").exists());
    let pw = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(pw.path(), format!("{secret}\n")).unwrap();
    sets[1] = mirrors_of(
        &private.addr,
        &format!(", username: puller, passwordFile: {}", pw.path().display()),
    );
    let (o, s) = run(out.path(), &http.url(), &sets);
    let all = format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    assert!(o.status.success(), "{all}");
    assert_eq!(s["fetched"], 1, "{s:#}");
    assert!(
        s["sources"].to_string().contains(&private.addr.to_string()),
        "{s:#}"
    );
    assert!(!all.contains(secret), "the password was printed");
    assert_eq!(list_of(out.path()), list);

    // 9. Without a digest pin an image is named, not mirrored (and the run still succeeds).
    if training {
        sets.pop();
        let (o, s) = run(out.path(), &http.url(), &sets);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        assert_eq!(s["images"], 2, "{s:#}");
        let unpinned = s["unpinned_images"].to_string();
        assert!(
            unpinned.contains("training-operator")
                && unpinned.contains("ghcr.io/kubeflow/training-v1/training-operator:v1-93c5489"),
            "{s:#}"
        );
        assert!(String::from_utf8_lossy(&o.stderr).contains("not mirrored (no digest pin"));
    }

    // 10. A smoke image packed into the mirror (`k8sforge smoke --pack`) survives the next
    // `k8sforge mirror`: it has no registry to come from, so mirror keeps its entry and archive.
    let bin_dir = tempfile::tempdir().unwrap();
    let smoke_bin = bin_dir.path().join("k8sforge-smoke");
    std::fs::write(&smoke_bin, b"#!/bin/true\n").unwrap();
    let packed = k8sforge::artifacts::smoke_image::add_to_mirror(
        out.path(),
        &smoke_bin,
        &k8sforge::artifacts::smoke_image::default_reference(),
    )
    .unwrap();
    let (o, _) = run(out.path(), &http.url(), &sets);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let after = list_of(out.path());
    let kept = after
        .images
        .iter()
        .find(|i| i.name == "k8sforge-smoke")
        .unwrap_or_else(|| panic!("the packed smoke image was dropped: {after:?}"));
    assert_eq!(kept, &packed);
    let sha = hex::encode(sha2::Sha256::digest(
        std::fs::read(out.path().join(&kept.file)).unwrap(),
    ));
    assert_eq!(sha, packed.sha256, "its archive is still there, unchanged");
}
