//! Kubernetes binaries for the cluster-level end-to-end tests. No registry reachable here ships
//! kube-apiserver, kubelet or CoreDNS, so the tests take them from a directory named by
//! `K8SFORGE_TEST_KUBE_BIN` (kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
//! kube-proxy, kubectl of one version, optionally coredns) and skip when it is unset.
//!
//! [`cluster_mirror`] lays them out as dl.k8s.io does (the server tarball, kubelet and kubectl as
//! single files) beside the Debian-built base mirror, and adds the add-on images: CoreDNS packed
//! from the given binary, and a stand-in for the NVIDIA device plugin (no GPU here: a static
//! busybox that sleeps, under a reference that says so).

use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use crate::mirror::{run, sha256_of, write_tgz, TestMirror};
use crate::oci;
use k8sforge::artifacts::images::MirrorImage;
use k8sforge::artifacts::source::{MirrorEntry, MIRROR_MANIFEST};
use k8sforge::artifacts::Component;

pub const KUBE_BIN_ENV: &str = "K8SFORGE_TEST_KUBE_BIN";

/// The binaries every cluster test needs.
pub const REQUIRED: [&str; 6] = [
    "kube-apiserver",
    "kube-controller-manager",
    "kube-scheduler",
    "kubelet",
    "kube-proxy",
    "kubectl",
];

/// Reference of the device-plugin stand-in image.
pub const DEVICE_PLUGIN_STANDIN: &str = "k8sforge.test/nvidia-device-plugin-standin:1";

#[derive(Debug, Clone)]
pub struct KubeBinaries {
    pub dir: PathBuf,
    /// `v1.28.7`, from `kubectl version --client`.
    pub version: String,
    /// CoreDNS binary and its version (`v1.12.1`), when the directory has one.
    pub coredns: Option<(PathBuf, String)>,
}

impl KubeBinaries {
    pub fn kubectl(&self) -> PathBuf {
        self.dir.join("kubectl")
    }
}

/// The binaries named by `K8SFORGE_TEST_KUBE_BIN`: `Ok(None)` when unset, an error naming what is
/// missing when set but incomplete (a typo must not turn into a silent skip).
pub fn from_env() -> Result<Option<KubeBinaries>, String> {
    let Some(dir) = std::env::var_os(KUBE_BIN_ENV).map(PathBuf::from) else {
        return Ok(None);
    };
    from_dir(dir).map(Some)
}

/// The binaries in `dir` (as `from_env` checks them).
pub fn from_dir(dir: PathBuf) -> Result<KubeBinaries, String> {
    let missing: Vec<&str> = REQUIRED
        .iter()
        .copied()
        .filter(|b| !dir.join(b).is_file())
        .collect();
    if !missing.is_empty() {
        return Err(format!(
            "{KUBE_BIN_ENV}={} lacks {}",
            dir.display(),
            missing.join(", ")
        ));
    }
    let out = run(Command::new(dir.join("kubectl")).args(["version", "--client", "-o", "json"]))?;
    let v: serde_json::Value =
        serde_json::from_str(&out).map_err(|e| format!("kubectl version: {e}"))?;
    let version = v["clientVersion"]["gitVersion"]
        .as_str()
        .ok_or("kubectl version printed no gitVersion")?
        .to_string();
    let coredns = if dir.join("coredns").is_file() {
        let out = run(Command::new(dir.join("coredns")).arg("-version"))?;
        // "CoreDNS-1.12.1\nlinux/amd64, go1.23.9, "
        let v = out
            .split_whitespace()
            .find_map(|w| w.strip_prefix("CoreDNS-"))
            .ok_or_else(|| format!("coredns -version printed {out:?}"))?;
        Some((dir.join("coredns"), format!("v{v}")))
    } else {
        None
    };
    Ok(KubeBinaries {
        dir,
        version,
        coredns,
    })
}

/// Copies of `kube`'s binaries under `out` with every occurrence of their version string
/// replaced by `to` (same length: Go strings are pointer + length, so the programs stay valid
/// and report `to`). Stands in for a second release where only one was built. Cached: an
/// existing complete copy is reused.
pub fn rewritten(kube: &KubeBinaries, to: &str, out: &Path) -> Result<KubeBinaries, String> {
    let from = kube.version.as_bytes();
    if from.len() != to.len() {
        return Err(format!(
            "{} → {to}: the replacement must have the same length",
            kube.version
        ));
    }
    std::fs::create_dir_all(out).map_err(|e| format!("{}: {e}", out.display()))?;
    for b in REQUIRED {
        let dst = out.join(b);
        let src_meta = std::fs::metadata(kube.dir.join(b)).map_err(|e| format!("{b}: {e}"))?;
        if std::fs::metadata(&dst).is_ok_and(|m| m.len() == src_meta.len()) {
            continue;
        }
        let mut bytes = std::fs::read(kube.dir.join(b)).map_err(|e| format!("{b}: {e}"))?;
        let mut n = 0;
        let mut i = 0;
        while i + from.len() <= bytes.len() {
            if &bytes[i..i + from.len()] == from {
                bytes[i..i + from.len()].copy_from_slice(to.as_bytes());
                n += 1;
                i += from.len();
            } else {
                i += 1;
            }
        }
        if n == 0 {
            return Err(format!("{b} does not contain {}", kube.version));
        }
        let tmp = out.join(format!(".{b}.tmp"));
        std::fs::write(&tmp, &bytes).map_err(|e| format!("{}: {e}", tmp.display()))?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        std::fs::rename(&tmp, &dst).map_err(|e| e.to_string())?;
    }
    let mut k = from_dir(out.to_path_buf())?;
    k.coredns = kube.coredns.clone();
    if k.version != to {
        return Err(format!("rewritten kubectl reports {}, not {to}", k.version));
    }
    Ok(k)
}

/// `mirror` (a cluster mirror) plus a second Kubernetes release, `kube`, beside the first:
/// its server tarball, kubelet and kubectl at their dl.k8s.io paths and their entries in the
/// list. Built once under `cache_dir`.
pub fn with_release(
    mirror: &TestMirror,
    kube: &KubeBinaries,
    cache_dir: &Path,
) -> Result<TestMirror, String> {
    let mut key = Sha256::new();
    key.update(mirror.root.as_os_str().as_encoded_bytes());
    key.update(kube.dir.as_os_str().as_encoded_bytes());
    key.update(kube.version.as_bytes());
    for b in REQUIRED {
        let m = std::fs::metadata(kube.dir.join(b)).map_err(|e| format!("{b}: {e}"))?;
        key.update(format!("{b}:{}:{:?}", m.len(), m.modified().ok()).as_bytes());
    }
    let key = hex::encode(key.finalize());
    let root = cache_dir.join(format!("two-release-mirror-{}", &key[..16]));
    if let Ok(bytes) = std::fs::read(root.join(MIRROR_MANIFEST)) {
        if let Ok(manifest) = serde_json::from_slice(&bytes) {
            return Ok(TestMirror {
                root,
                manifest,
                busybox: mirror.busybox.clone(),
            });
        }
    }
    let tmp = cache_dir.join(format!(".two-release-mirror-{}.tmp", &key[..16]));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;
    let mut manifest = mirror.manifest.clone();
    for e in &manifest.artifacts {
        let rel = e.url.trim_start_matches("https://");
        link_or_copy(&mirror.root.join(rel), &tmp.join(rel))?;
    }
    for i in &manifest.images {
        link_or_copy(&mirror.root.join(&i.file), &tmp.join(&i.file))?;
    }
    place_kube(&tmp, kube, &mut manifest)?;
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
    std::fs::write(tmp.join(MIRROR_MANIFEST), json).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&root);
    std::fs::rename(&tmp, &root).map_err(|e| format!("{}: {e}", root.display()))?;
    Ok(TestMirror {
        root,
        manifest,
        busybox: mirror.busybox.clone(),
    })
}

/// The dl.k8s.io layout of `kube` under `root`, listed in `manifest`.
fn place_kube(
    root: &Path,
    kube: &KubeBinaries,
    manifest: &mut k8sforge::artifacts::source::MirrorManifest,
) -> Result<(), String> {
    let v = &kube.version;
    let place = |c: Component| -> PathBuf { root.join(c.url(v).trim_start_matches("https://")) };
    let server = place(Component::KubernetesServer);
    if let Some(d) = server.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let entries: Vec<(String, PathBuf)> = [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
        "kube-proxy",
    ]
    .iter()
    .map(|b| (format!("kubernetes/server/bin/{b}"), kube.dir.join(b)))
    .collect();
    write_tgz(&server, &entries)?;
    link_or_copy(&kube.dir.join("kubelet"), &place(Component::Kubelet))?;
    link_or_copy(&kube.dir.join("kubectl"), &place(Component::Kubectl))?;
    for c in [
        Component::KubernetesServer,
        Component::Kubelet,
        Component::Kubectl,
    ] {
        manifest.artifacts.push(MirrorEntry {
            name: c.name().to_string(),
            version: v.clone(),
            url: c.url(v),
            sha256: sha256_of(&place(c))?,
        });
    }
    Ok(())
}

fn link_or_copy(src: &Path, dst: &Path) -> Result<(), String> {
    if let Some(d) = dst.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    std::fs::hard_link(src, dst)
        .or_else(|_| std::fs::copy(src, dst).map(|_| ()))
        .map_err(|e| format!("{} → {}: {e}", src.display(), dst.display()))
}

/// A mirror with `base`'s artifacts plus the Kubernetes binaries and add-on images, built once
/// per set of inputs under `cache_dir`.
pub fn cluster_mirror(
    base: &TestMirror,
    kube: &KubeBinaries,
    cache_dir: &Path,
) -> Result<TestMirror, String> {
    let mut key = Sha256::new();
    // Bumped when the images built here change shape.
    key.update(b"2: coredns entrypoint");
    key.update(base.root.as_os_str().as_encoded_bytes());
    let mut inputs: Vec<PathBuf> = REQUIRED.iter().map(|b| kube.dir.join(b)).collect();
    inputs.extend(kube.coredns.iter().map(|(p, _)| p.clone()));
    for p in &inputs {
        let m = std::fs::metadata(p).map_err(|e| format!("{}: {e}", p.display()))?;
        key.update(format!("{}:{}:{:?}", p.display(), m.len(), m.modified().ok()).as_bytes());
    }
    let key = hex::encode(key.finalize());
    let root = cache_dir.join(format!("cluster-mirror-{}", &key[..16]));
    if let Ok(bytes) = std::fs::read(root.join(MIRROR_MANIFEST)) {
        if let Ok(manifest) = serde_json::from_slice(&bytes) {
            return Ok(TestMirror {
                root,
                manifest,
                busybox: base.busybox.clone(),
            });
        }
    }
    let tmp = cache_dir.join(format!(".cluster-mirror-{}.tmp", &key[..16]));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir_all(&tmp).map_err(|e| format!("{}: {e}", tmp.display()))?;

    // Everything of the base mirror (artifact trees and images), by link.
    let mut manifest = base.manifest.clone();
    for e in &manifest.artifacts {
        let rel = e.url.trim_start_matches("https://");
        link_or_copy(&base.root.join(rel), &tmp.join(rel))?;
    }
    for i in &manifest.images {
        link_or_copy(&base.root.join(&i.file), &tmp.join(&i.file))?;
    }

    // dl.k8s.io layout.
    place_kube(&tmp, kube, &mut manifest)?;

    // Add-on images.
    let images = tmp.join("images");
    let mut add_image = |name: &str, reference: &str, file: &Path| -> Result<(), String> {
        manifest.images.push(MirrorImage {
            name: name.to_string(),
            reference: reference.to_string(),
            file: format!(
                "images/{}",
                file.file_name().and_then(|n| n.to_str()).unwrap_or(name)
            ),
            sha256: sha256_of(file)?,
        });
        Ok(())
    };
    if let Some((bin, version)) = &kube.coredns {
        let reference = format!("registry.k8s.io/coredns/coredns:{version}");
        let out = images.join("coredns.tar");
        oci::build_archive_with_entrypoint(bin, &["/bin/coredns"], &reference, &out)?;
        add_image("coredns", &reference, &out)?;
    }
    let out = images.join("nvidia-device-plugin.tar");
    oci::build_archive(
        &base.busybox,
        &["sh", "sleep"],
        &["/bin/sleep", "2147483647"],
        DEVICE_PLUGIN_STANDIN,
        &out,
    )?;
    add_image("nvidia-device-plugin", DEVICE_PLUGIN_STANDIN, &out)?;

    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
    std::fs::write(tmp.join(MIRROR_MANIFEST), json).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&root);
    std::fs::rename(&tmp, &root).map_err(|e| format!("{}: {e}", root.display()))?;
    Ok(TestMirror {
        root,
        manifest,
        busybox: base.busybox.clone(),
    })
}
