//! A test artifact mirror built from Debian bookworm packages (no registry here serves the
//! upstream release archives): the binaries of `etcd-server`, `etcd-client`, `containerd`,
//! `runc` and `containernetworking-plugins` repackaged under the upstream archive names and
//! layouts, at the upstream URL paths (`<mirror>/<host>/<path>`), with a
//! `k8sforge-artifacts.json` that sets the Debian versions (etcd 3.4.23, containerd 1.6.20,
//! runc 1.1.5, CNI plugins 1.1.1) and their sums. `busybox-static` comes along for tests that
//! build a small OCI image.
//!
//! Everything is cached under `$K8SFORGE_TESTKIT_CACHE` (default `/var/cache/k8sforge-testkit`):
//! the .debs between runs, and the built mirror (one per set of .debs). Built under a lock, so
//! parallel test processes share one build. Archives are deterministic (mtime 0, root-owned).

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};

use k8sforge::artifacts::images::MirrorImage;
use k8sforge::artifacts::source::{MirrorEntry, MirrorManifest, MIRROR_MANIFEST};
use k8sforge::artifacts::Component;

/// Debian packages the mirror is made of.
pub const DEB_PACKAGES: &[&str] = &[
    "etcd-server",
    "etcd-client",
    "containerd",
    "runc",
    "containernetworking-plugins",
    "busybox-static",
];

/// Bumped when the mirror's contents change shape, so cached mirrors are rebuilt.
const MIRROR_FORMAT: &str = "2: pause image";

/// The reference of the test kit's own pause image (the mirror's list makes nodes use it).
pub const PAUSE_IMAGE: &str = "k8sforge.test/pause:1";

/// A built mirror.
#[derive(Debug, Clone)]
pub struct TestMirror {
    /// Pass this as `--mirror`.
    pub root: PathBuf,
    pub manifest: MirrorManifest,
    /// A static busybox binary (for OCI test images).
    pub busybox: PathBuf,
}

impl TestMirror {
    /// Version the mirror's list sets for a component.
    pub fn version(&self, c: Component) -> Option<&str> {
        self.manifest
            .artifacts
            .iter()
            .find(|e| e.name == c.name())
            .map(|e| e.version.as_str())
    }
}

pub fn default_cache_dir() -> PathBuf {
    std::env::var_os("K8SFORGE_TESTKIT_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/cache/k8sforge-testkit"))
}

fn err(msg: impl Into<String>) -> String {
    msg.into()
}

pub(crate) fn run(cmd: &mut Command) -> Result<String, String> {
    let out = cmd
        .output()
        .map_err(|e| err(format!("cannot run {cmd:?}: {e}")))?;
    if !out.status.success() {
        return Err(format!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The cached .deb of `pkg`, downloading it with `apt-get download` when missing.
fn deb(debs: &Path, pkg: &str) -> Result<PathBuf, String> {
    let find = || -> Option<PathBuf> {
        let prefix = format!("{pkg}_");
        std::fs::read_dir(debs)
            .ok()?
            .flatten()
            .map(|e| e.path())
            .filter(|p| {
                p.file_name()
                    .and_then(|n| n.to_str())
                    .is_some_and(|n| n.starts_with(&prefix) && n.ends_with(".deb"))
            })
            .max()
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    let download = || {
        run(Command::new("apt-get")
            .arg("download")
            .arg(pkg)
            .current_dir(debs))
    };
    if download().is_err() {
        // A fresh machine may have no package lists yet.
        run(Command::new("apt-get").arg("update").arg("-qq"))?;
        download().map_err(|e| {
            format!("{e}\n(the test mirror needs Debian bookworm's {pkg} from apt)")
        })?;
    }
    find().ok_or_else(|| format!("apt-get download {pkg} left no .deb in {}", debs.display()))
}

/// Upstream version of a Debian version: `1:1.6.20~ds1-1+deb12u3` → `1.6.20`.
pub fn upstream_version(debian: &str) -> String {
    let no_epoch = debian.split_once(':').map_or(debian, |(_, v)| v);
    no_epoch
        .split(['-', '~', '+'])
        .next()
        .unwrap_or(no_epoch)
        .to_string()
}

pub(crate) fn sha256_of(path: &Path) -> Result<String, String> {
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// Deterministic .tar.gz of `(name in archive, local file)` entries, mode 0755.
pub(crate) fn write_tgz(out: &Path, entries: &[(String, PathBuf)]) -> Result<(), String> {
    let f = File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
    let gz = flate2::GzBuilder::new()
        .mtime(0)
        .write(f, flate2::Compression::fast());
    let mut tar = tar::Builder::new(gz);
    let mut dirs_done = std::collections::BTreeSet::new();
    for (name, src) in entries {
        // Directory entries as upstream archives have them.
        let mut acc = String::new();
        let comps: Vec<&str> = name.split('/').collect();
        for c in &comps[..comps.len() - 1] {
            if *c == "." {
                acc.push_str("./");
                if dirs_done.insert(acc.clone()) {
                    let mut h = tar::Header::new_gnu();
                    h.set_entry_type(tar::EntryType::Directory);
                    h.set_mode(0o755);
                    h.set_size(0);
                    h.set_mtime(0);
                    h.as_old_mut().name[..2].copy_from_slice(b"./");
                    h.set_cksum();
                    tar.append(&h, std::io::empty())
                        .map_err(|e| format!("{}: {e}", out.display()))?;
                }
                continue;
            }
            acc.push_str(c);
            acc.push('/');
            if dirs_done.insert(acc.clone()) {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                h.set_mtime(0);
                h.set_uid(0);
                h.set_gid(0);
                h.set_cksum();
                tar.append_data(&mut h, &acc, std::io::empty())
                    .map_err(|e| format!("{}: {e}", out.display()))?;
            }
        }
        let data = std::fs::read(src).map_err(|e| format!("{}: {e}", src.display()))?;
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o755);
        h.set_size(data.len() as u64);
        h.set_mtime(0);
        h.set_uid(0);
        h.set_gid(0);
        // Written raw: the tar crate would normalize `./bridge` to `bridge`, and upstream's CNI
        // archive has the `./` form.
        let raw = name.as_bytes();
        let field = &mut h.as_old_mut().name;
        if raw.len() >= field.len() {
            return Err(format!("archive member name too long: {name}"));
        }
        field[..raw.len()].copy_from_slice(raw);
        h.set_cksum();
        tar.append(&h, data.as_slice())
            .map_err(|e| format!("{}: {e}", out.display()))?;
    }
    let gz = tar
        .into_inner()
        .map_err(|e| format!("{}: {e}", out.display()))?;
    let mut f = gz.finish().map_err(|e| format!("{}: {e}", out.display()))?;
    f.flush().map_err(|e| format!("{}: {e}", out.display()))?;
    f.sync_all().map_err(|e| format!("{}: {e}", out.display()))
}

/// Compile `testkit/src/images/pause.rs` into a static binary at `out` with the rustc on PATH.
fn build_pause(out: &Path) -> Result<(), String> {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("src/images/pause.rs");
    run(
        Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
            .args([
                "--edition=2021",
                "-Copt-level=s",
                "-Cstrip=symbols",
                "-Cpanic=abort",
                "-Ctarget-feature=+crt-static",
                "-o",
            ])
            .arg(out)
            .arg(&src),
    )
    .map(|_| ())
    .map_err(|e| format!("building the pause image program: {e}"))
}

/// Build (or reuse) the test mirror under `cache_dir`.
pub fn build(cache_dir: &Path) -> Result<TestMirror, String> {
    let debs = cache_dir.join("debs");
    std::fs::create_dir_all(&debs).map_err(|e| format!("{}: {e}", debs.display()))?;
    let lock_file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(cache_dir.join(".lock"))
        .map_err(|e| format!("{}: {e}", cache_dir.display()))?;
    let mut lock = fd_lock::RwLock::new(lock_file);
    let _guard = lock
        .write()
        .map_err(|e| format!("lock {}: {e}", cache_dir.display()))?;

    let mut paths = Vec::new();
    for pkg in DEB_PACKAGES {
        paths.push((*pkg, deb(&debs, pkg)?));
    }
    // One mirror per exact set of .debs and mirror format.
    let mut key = Sha256::new();
    key.update(MIRROR_FORMAT.as_bytes());
    for (_, p) in &paths {
        key.update(
            p.file_name()
                .map(|n| n.as_encoded_bytes())
                .unwrap_or_default(),
        );
    }
    let key = hex::encode(key.finalize());
    let root = cache_dir.join(format!("mirror-{}", &key[..16]));
    let unpacked = cache_dir.join(format!("unpacked-{}", &key[..16]));
    let manifest_path = root.join(MIRROR_MANIFEST);
    if let Ok(bytes) = std::fs::read(&manifest_path) {
        if let Ok(manifest) = serde_json::from_slice::<MirrorManifest>(&bytes) {
            return Ok(TestMirror {
                busybox: unpacked.join("busybox-static/bin/busybox"),
                root,
                manifest,
            });
        }
    }

    // Unpack every .deb and read its version.
    let mut version = std::collections::BTreeMap::new();
    for (pkg, p) in &paths {
        let dir = unpacked.join(pkg);
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        run(Command::new("dpkg-deb").arg("-x").arg(p).arg(&dir))?;
        let v = run(Command::new("dpkg-deb").args(["-f"]).arg(p).arg("Version"))?;
        version.insert(*pkg, upstream_version(v.trim()));
    }
    let bin = |pkg: &str, rel: &str| unpacked.join(pkg).join(rel);

    let tmp_root = cache_dir.join(format!(".mirror-{}.tmp", &key[..16]));
    let _ = std::fs::remove_dir_all(&tmp_root);
    let place = |c: Component, v: &str| -> Result<PathBuf, String> {
        let url = c.url(v);
        let rel = url
            .strip_prefix("https://")
            .ok_or_else(|| format!("unexpected URL {url}"))?;
        let p = tmp_root.join(rel);
        if let Some(d) = p.parent() {
            std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
        }
        Ok(p)
    };
    let mut artifacts = Vec::new();
    let mut add = |c: Component, v: String, file: &Path| -> Result<(), String> {
        artifacts.push(MirrorEntry {
            name: c.name().to_string(),
            url: c.url(&v),
            sha256: sha256_of(file)?,
            version: v,
        });
        Ok(())
    };

    // etcd-v3.4.23-linux-amd64.tar.gz: etcd-v3.4.23-linux-amd64/{etcd,etcdctl}
    let v = format!("v{}", version["etcd-server"]);
    let dir = format!("etcd-{v}-linux-{}", k8sforge::artifacts::ARCH);
    let out = place(Component::Etcd, &v)?;
    write_tgz(
        &out,
        &[
            (format!("{dir}/etcd"), bin("etcd-server", "usr/bin/etcd")),
            (
                format!("{dir}/etcdctl"),
                bin("etcd-client", "usr/bin/etcdctl"),
            ),
        ],
    )?;
    add(Component::Etcd, v, &out)?;

    // containerd-1.6.20-linux-amd64.tar.gz: bin/*
    let v = version["containerd"].clone();
    let out = place(Component::Containerd, &v)?;
    let mut entries = Vec::new();
    let usr_bin = unpacked.join("containerd/usr/bin");
    let mut names: Vec<String> = std::fs::read_dir(&usr_bin)
        .map_err(|e| format!("{}: {e}", usr_bin.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    for n in names {
        entries.push((format!("bin/{n}"), usr_bin.join(&n)));
    }
    write_tgz(&out, &entries)?;
    add(Component::Containerd, v, &out)?;

    // runc.amd64: the binary itself
    let v = format!("v{}", version["runc"]);
    let out = place(Component::Runc, &v)?;
    std::fs::copy(bin("runc", "usr/sbin/runc"), &out).map_err(|e| format!("runc: {e}"))?;
    add(Component::Runc, v, &out)?;

    // cni-plugins-linux-amd64-v1.1.1.tgz: ./<plugin>
    let v = format!("v{}", version["containernetworking-plugins"]);
    let out = place(Component::CniPlugins, &v)?;
    let cni = unpacked.join("containernetworking-plugins/usr/lib/cni");
    let mut names: Vec<String> = std::fs::read_dir(&cni)
        .map_err(|e| format!("{}: {e}", cni.display()))?
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    let entries: Vec<(String, PathBuf)> = names
        .iter()
        .map(|n| (format!("./{n}"), cni.join(n)))
        .collect();
    write_tgz(&out, &entries)?;
    add(Component::CniPlugins, v, &out)?;

    // The pod sandbox image: k8sforge's own pause program, static, as an OCI archive.
    let pause_bin = unpacked.join("pause");
    build_pause(&pause_bin)?;
    let images_dir = tmp_root.join("images");
    std::fs::create_dir_all(&images_dir).map_err(|e| format!("{}: {e}", images_dir.display()))?;
    let pause_tar = images_dir.join("pause.tar");
    crate::oci::build_archive(&pause_bin, &[], &["/bin/pause"], PAUSE_IMAGE, &pause_tar)?;
    let images = vec![MirrorImage {
        name: "pause".into(),
        reference: PAUSE_IMAGE.into(),
        file: "images/pause.tar".into(),
        sha256: sha256_of(&pause_tar)?,
    }];

    let manifest = MirrorManifest { artifacts, images };
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
    std::fs::write(tmp_root.join(MIRROR_MANIFEST), json).map_err(|e| e.to_string())?;
    let _ = std::fs::remove_dir_all(&root);
    std::fs::rename(&tmp_root, &root).map_err(|e| format!("{}: {e}", root.display()))?;
    Ok(TestMirror {
        busybox: unpacked.join("busybox-static/bin/busybox"),
        root,
        manifest,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debian_versions_map_to_upstream() {
        assert_eq!(upstream_version("1.6.20~ds1-1+deb12u3"), "1.6.20");
        assert_eq!(upstream_version("3.4.23-4+b4"), "3.4.23");
        assert_eq!(upstream_version("1.1.5+ds1-1+deb12u1"), "1.1.5");
        assert_eq!(upstream_version("1:1.35.0-4+deb12u1+b1"), "1.35.0");
    }
}
