//! Artifacts: mirror resolution, the test mirror built from Debian packages, verification,
//! cache, extraction. Needs `dpkg-deb` and `apt-get download` (or the cached .debs) — see
//! `k8sforge_testkit::mirror`. All traffic stays on 127.0.0.1.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8sforge::artifacts::source::{self, DigestSource, Location, MIRROR_MANIFEST};
use k8sforge::artifacts::{
    self, extract, ArtifactError, ArtifactSource, Cache, Component, Digest, Mirror,
};
use k8sforge_testkit::mirror::{self, TestMirror};
use sha2::Digest as _;

fn test_mirror() -> TestMirror {
    mirror::build(&mirror::default_cache_dir()).unwrap_or_else(|e| panic!("test mirror: {e}"))
}

const TEST_COMPONENTS: [Component; 4] = [
    Component::Etcd,
    Component::Containerd,
    Component::Runc,
    Component::CniPlugins,
];

fn release() -> &'static artifacts::Release {
    artifacts::release(artifacts::DEFAULT_KUBERNETES_VERSION).unwrap()
}

fn source(m: Mirror, trust: bool) -> ArtifactSource {
    ArtifactSource {
        mirror: m,
        trust_mirror_checksums: trust,
    }
}

fn tar_names(path: &Path) -> Vec<String> {
    let f = std::fs::File::open(path).unwrap();
    let mut ar = tar::Archive::new(flate2::read::GzDecoder::new(f));
    ar.entries()
        .unwrap()
        .map(|e| e.unwrap().path().unwrap().to_string_lossy().into_owned())
        .collect()
}

#[test]
fn test_mirror_has_upstream_names_and_layouts_and_etcd_runs() {
    let m = test_mirror();
    assert_eq!(m.version(Component::Etcd), Some("v3.4.23"));
    assert_eq!(m.version(Component::Containerd), Some("1.6.20"));
    assert_eq!(m.version(Component::Runc), Some("v1.1.5"));
    assert_eq!(m.version(Component::CniPlugins), Some("v1.1.1"));
    let gh = m.root.join("github.com");
    let etcd = gh.join("etcd-io/etcd/releases/download/v3.4.23/etcd-v3.4.23-linux-amd64.tar.gz");
    let names = tar_names(&etcd);
    assert!(
        names.contains(&"etcd-v3.4.23-linux-amd64/etcd".to_string()),
        "{names:?}"
    );
    assert!(
        names.contains(&"etcd-v3.4.23-linux-amd64/etcdctl".to_string()),
        "{names:?}"
    );
    let containerd = gh.join(
        "containerd/containerd/releases/download/v1.6.20/containerd-1.6.20-linux-amd64.tar.gz",
    );
    let names = tar_names(&containerd);
    for b in ["bin/containerd", "bin/ctr", "bin/containerd-shim-runc-v2"] {
        assert!(names.contains(&b.to_string()), "{b} not in {names:?}");
    }
    assert!(gh
        .join("opencontainers/runc/releases/download/v1.1.5/runc.amd64")
        .is_file());
    let cni = gh.join(
        "containernetworking/plugins/releases/download/v1.1.1/cni-plugins-linux-amd64-v1.1.1.tgz",
    );
    let names = tar_names(&cni);
    for b in ["./bridge", "./host-local", "./loopback"] {
        assert!(names.contains(&b.to_string()), "{b} not in {names:?}");
    }
    assert!(m.busybox.is_file());

    // Through k8sforge's own path: resolve (trusting the mirror), fetch, verify, extract.
    let home = tempfile::tempdir().unwrap();
    let cache = Cache::new(home.path());
    let src = source(Mirror::parse(Some(m.root.to_str().unwrap())).unwrap(), true);
    let arts = source::resolve(release(), &src, &TEST_COMPONENTS).unwrap();
    let mut installed = vec![];
    for a in &arts {
        assert_eq!(a.digest_source, DigestSource::Mirror);
        let f = cache.fetch(a, &src.mirror).unwrap();
        assert!(!f.hit);
        installed.extend(extract(&cache, a, &f.path).unwrap());
    }
    let paths: Vec<&str> = installed.iter().map(|f| f.path.as_str()).collect();
    for p in [
        "/usr/local/bin/etcd",
        "/usr/local/bin/etcdctl",
        "/usr/local/bin/containerd",
        "/usr/local/bin/ctr",
        "/usr/local/bin/containerd-shim-runc-v2",
        "/usr/local/sbin/runc",
        "/opt/cni/bin/bridge",
        "/opt/cni/bin/host-local",
        "/opt/cni/bin/loopback",
    ] {
        assert!(paths.contains(&p), "{p} not installed: {paths:?}");
    }
    for f in &installed {
        let bytes = std::fs::read(&f.local).unwrap();
        assert_eq!(
            hex::encode(sha2::Sha256::digest(&bytes)),
            f.sha256,
            "{}",
            f.path
        );
        assert_eq!(f.mode, 0o755);
    }
    let run = |path: &str, arg: &str| {
        let f = installed.iter().find(|f| f.path == path).unwrap();
        let out = Command::new("sh")
            .arg("-c")
            .arg(format!(
                "chmod 0755 '{0}' && '{0}' {arg}",
                f.local.display()
            ))
            .output()
            .unwrap();
        assert!(out.status.success(), "{path} {arg}: {out:?}");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let v = run("/usr/local/bin/etcd", "--version");
    assert!(v.contains("etcd Version: 3.4.23"), "{v}");
    let v = run("/usr/local/bin/etcdctl", "version");
    assert!(v.contains("etcdctl version: 3.4.23"), "{v}");

    // Extraction is cached too: same files, same paths.
    let again = extract(&cache, &arts[0], &cache.path_for(&arts[0].digest)).unwrap();
    assert_eq!(
        again,
        installed
            .iter()
            .filter(|f| f.path.contains("etcd"))
            .cloned()
            .collect::<Vec<_>>()
    );
}

#[test]
fn mirror_checksums_are_not_used_without_explicit_opt_in() {
    let m = test_mirror();
    let src = source(Mirror::Dir(m.root.clone()), false);
    let e = source::resolve(release(), &src, &TEST_COMPONENTS).unwrap_err();
    assert!(
        matches!(e, ArtifactError::UntrustedMirrorChecksum { .. }),
        "{e}"
    );
    let msg = e.to_string();
    assert!(msg.contains("etcd") && msg.contains("v3.4.23"), "{msg}");
    assert!(msg.contains(MIRROR_MANIFEST), "{msg}");
    assert!(
        msg.contains("trustMirrorChecksums") && msg.contains("--trust-mirror-checksums"),
        "{msg}"
    );
    // A mirror without its own list is held to the pinned sums of the release.
    let plain = tempfile::tempdir().unwrap();
    let src = source(Mirror::Dir(plain.path().to_path_buf()), false);
    let arts = source::resolve(release(), &src, &[Component::Etcd]).unwrap();
    assert_eq!(arts[0].version, release().etcd);
    assert_eq!(arts[0].digest_source, DigestSource::Pinned);
    assert_eq!(
        arts[0].digest,
        artifacts::pins::pinned(Component::Etcd, release().etcd).unwrap()
    );
}

#[test]
fn checksum_mismatch_is_a_hard_error_naming_file_expected_and_actual() {
    // A mirror that serves something else at the pinned etcd's path.
    let dir = tempfile::tempdir().unwrap();
    let src = source(Mirror::Dir(dir.path().to_path_buf()), false);
    let arts = source::resolve(release(), &src, &[Component::Etcd]).unwrap();
    let Location::File(p) = src.mirror.location(&arts[0].upstream_url) else {
        panic!("dir mirror gives a file location")
    };
    std::fs::create_dir_all(p.parent().unwrap()).unwrap();
    std::fs::write(&p, b"not etcd").unwrap();
    let actual = hex::encode(sha2::Sha256::digest(b"not etcd"));
    let home = tempfile::tempdir().unwrap();
    let cache = Cache::new(home.path());
    let e = cache.fetch(&arts[0], &src.mirror).unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, ArtifactError::ChecksumMismatch { .. }));
    assert!(msg.contains(arts[0].file_name()), "{msg}");
    assert!(msg.contains(&arts[0].digest.to_string()), "{msg}");
    assert!(msg.contains(&format!("sha256:{actual}")), "{msg}");
    // Nothing was cached, nothing half-written left.
    assert!(!cache.path_for(&arts[0].digest).exists());
    let left: Vec<PathBuf> = std::fs::read_dir(&cache.root)
        .map(|rd| rd.flatten().map(|e| e.path()).collect())
        .unwrap_or_default();
    assert!(left.is_empty(), "{left:?}");
}

/// A copy of the test mirror's runc and list, to tamper with or delete.
fn runc_only_mirror(m: &TestMirror) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let rel = "github.com/opencontainers/runc/releases/download/v1.1.5/runc.amd64";
    std::fs::create_dir_all(dir.path().join(rel).parent().unwrap()).unwrap();
    std::fs::copy(m.root.join(rel), dir.path().join(rel)).unwrap();
    std::fs::copy(
        m.root.join(MIRROR_MANIFEST),
        dir.path().join(MIRROR_MANIFEST),
    )
    .unwrap();
    dir
}

#[test]
fn second_fetch_is_a_cache_hit_and_tampering_is_caught() {
    let m = test_mirror();
    let copy = runc_only_mirror(&m);
    let src = source(Mirror::Dir(copy.path().to_path_buf()), true);
    let arts = source::resolve(release(), &src, &[Component::Runc]).unwrap();
    let home = tempfile::tempdir().unwrap();
    let cache = Cache::new(home.path());
    let first = cache.fetch(&arts[0], &src.mirror).unwrap();
    assert!(!first.hit);
    assert_eq!(
        first.path,
        home.path().join("cache").join(arts[0].digest.hex())
    );
    // The source is gone: the second fetch never reads it.
    let rel = "github.com/opencontainers/runc/releases/download/v1.1.5/runc.amd64";
    let original = std::fs::read(copy.path().join(rel)).unwrap();
    std::fs::remove_file(copy.path().join(rel)).unwrap();
    let second = cache.fetch(&arts[0], &src.mirror).unwrap();
    assert!(second.hit);
    assert_eq!(second.path, first.path);

    // A tampered file in the mirror, against the mirror's own (trusted) sum: refused.
    let mut bad = original.clone();
    bad.push(0);
    std::fs::write(copy.path().join(rel), &bad).unwrap();
    let fresh = Cache::new(tempfile::tempdir().unwrap().path());
    let e = fresh.fetch(&arts[0], &src.mirror).unwrap_err().to_string();
    assert!(
        e.contains("runc.amd64") && e.contains(arts[0].digest.hex()),
        "{e}"
    );
    assert!(e.contains(&hex::encode(sha2::Sha256::digest(&bad))), "{e}");
    // A missing file is named with where it was looked for.
    std::fs::remove_file(copy.path().join(rel)).unwrap();
    let e = fresh.fetch(&arts[0], &src.mirror).unwrap_err().to_string();
    assert!(
        e.contains("runc.amd64 not found") && e.contains(copy.path().to_str().unwrap()),
        "{e}"
    );
}

#[test]
fn mirror_locations_follow_the_files_repo_convention() {
    let dir = tempfile::tempdir().unwrap();
    let m = Mirror::parse(Some(dir.path().to_str().unwrap())).unwrap();
    let url = Component::Kubelet.url("v1.34.2");
    assert_eq!(
        m.location(&url),
        Location::File(
            dir.path()
                .join("dl.k8s.io/release/v1.34.2/bin/linux/amd64/kubelet")
        )
    );
    let h = Mirror::parse(Some("http://127.0.0.1:8080/m/")).unwrap();
    assert_eq!(
        h.location(&url),
        Location::Url(
            "http://127.0.0.1:8080/m/dl.k8s.io/release/v1.34.2/bin/linux/amd64/kubelet".into()
        )
    );
    assert_eq!(Mirror::parse(None).unwrap(), Mirror::Upstream);
    assert_eq!(Mirror::Upstream.location(&url), Location::Url(url.clone()));
    let e = Mirror::parse(Some("/nonexistent/mirror"))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("/nonexistent/mirror") && e.contains("does not exist"),
        "{e}"
    );
    // The flag wins over the profile; trust is explicit in either.
    let spec = k8sforge::profile::schema::ArtifactsSpec {
        mirror: Some("/nonexistent/from-profile".into()),
        trust_mirror_checksums: false,
        ..Default::default()
    };
    let s = ArtifactSource::from_profile(&spec, Some(dir.path().to_str().unwrap()), false).unwrap();
    assert_eq!(s.mirror, Mirror::Dir(dir.path().to_path_buf()));
    assert!(!s.trust_mirror_checksums);
    assert!(ArtifactSource::from_profile(&spec, None, false).is_err());
    let d = Digest::Sha256("0".repeat(64));
    assert_eq!(
        Cache::new(Path::new("/h")).path_for(&d),
        Path::new("/h/cache").join("0".repeat(64))
    );
}

/// Serve `root` over HTTP/1.1 on 127.0.0.1 (GET only, one request per connection).
fn serve(root: PathBuf) -> String {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming().flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue;
            }
            loop {
                let mut h = String::new();
                if reader.read_line(&mut h).is_err() || h == "\r\n" || h.is_empty() {
                    break;
                }
            }
            let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
            let file = root.join(path.trim_start_matches('/'));
            let mut s = stream;
            match std::fs::File::open(&file) {
                Ok(mut f) if file.is_file() => {
                    let mut body = vec![];
                    f.read_to_end(&mut body).unwrap();
                    let _ = write!(
                        s,
                        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                        body.len()
                    );
                    let _ = s.write_all(&body);
                }
                _ => {
                    let _ = write!(
                        s,
                        "HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                    );
                }
            }
        }
    });
    format!("http://{addr}")
}

#[test]
fn http_mirror_serves_list_and_files() {
    let m = test_mirror();
    let copy = runc_only_mirror(&m);
    let base = serve(copy.path().to_path_buf());
    let src = source(Mirror::parse(Some(&format!("{base}/"))).unwrap(), true);
    let arts = source::resolve(release(), &src, &[Component::Runc]).unwrap();
    assert_eq!(arts[0].version, "v1.1.5");
    let home = tempfile::tempdir().unwrap();
    let cache = Cache::new(home.path());
    let f = cache.fetch(&arts[0], &src.mirror).unwrap();
    assert!(!f.hit);
    let files = extract(&cache, &arts[0], &f.path).unwrap();
    assert_eq!(files[0].path, "/usr/local/sbin/runc");
    // Not in the mirror: a clear error with the URL it tried.
    let src = source(Mirror::parse(Some(&base)).unwrap(), true);
    let arts = source::resolve(release(), &src, &[Component::Etcd]).unwrap();
    let e = Cache::new(home.path())
        .fetch(&arts[0], &src.mirror)
        .unwrap_err()
        .to_string();
    assert!(e.contains("not found") && e.contains(&base), "{e}");
}
