//! The training stack's test fixtures: k8sforge's smoke program built statically (`rustc
//! -C target-feature=+crt-static` on `smoke/src/main.rs`, std only) and packed as an OCI image
//! archive, and a mirror for the `training` phase on local clusters: a cluster mirror plus the
//! pinned upstream trees (`../shared/upstream`, by link) plus the smoke image, plus the training
//! controllers' images when a directory of OCI archives is named by
//! [`TRAINING_IMAGES_ENV`] (nobody can build those here; tests needing them skip otherwise).

use std::path::{Path, PathBuf};
use std::process::Command;

use k8sforge::artifacts::images::{ClusterImage, MirrorImage};
use k8sforge::artifacts::source::{MirrorManifest, MIRROR_MANIFEST};

use crate::mirror::{run, sha256_of, TestMirror};

/// Directory of controller image archives: `<name>.tar` for `training-operator`, `jobset`,
/// `trainer-controller-manager`, `kueue`, each with an optional `<name>.ref` holding the image
/// reference inside the archive (default: the upstream reference k8sforge pins).
pub const TRAINING_IMAGES_ENV: &str = "K8SFORGE_TEST_TRAINING_IMAGES";

/// Reference of the smoke image in test mirrors.
pub const SMOKE_IMAGE: &str = "k8sforge.test/k8sforge-smoke:0.1.0";

/// The smoke program's source (the `k8sforge-smoke` crate's entry point).
pub fn smoke_source() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../smoke/src/main.rs")
}

/// Build the static smoke program at `out` (its file name is the program's name in the image).
pub fn build_smoke(out: &Path) -> Result<(), String> {
    run(
        Command::new(std::env::var_os("RUSTC").unwrap_or_else(|| "rustc".into()))
            .args([
                "--edition=2021",
                "-Copt-level=2",
                "-Cstrip=symbols",
                "-Cpanic=abort",
                "-Ctarget-feature=+crt-static",
                "--crate-name=k8sforge_smoke",
                "-o",
            ])
            .arg(out)
            .arg(smoke_source()),
    )
    .map(|_| ())
    .map_err(|e| format!("building the smoke program: {e}"))
}

fn link(src: &Path, dst: &Path) -> Result<(), String> {
    if let Some(d) = dst.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let _ = std::fs::remove_file(dst);
    std::os::unix::fs::symlink(src, dst)
        .map_err(|e| format!("{} → {}: {e}", src.display(), dst.display()))
}

/// A fresh mirror under `dir`: everything of `cluster` (by link), the upstream trees of
/// `upstream` (its `raw.githubusercontent.com`), the smoke image (packed by
/// `k8sforge::artifacts::smoke_image`, as `k8sforge smoke --pack-image` does), and the controller images of
/// [`TRAINING_IMAGES_ENV`] when set. Returns the mirror and whether controller images are in it.
pub fn training_mirror(
    cluster: &TestMirror,
    upstream: &Path,
    release: &k8sforge::artifacts::Release,
    dir: &Path,
) -> Result<(TestMirror, bool), String> {
    let root = dir.to_path_buf();
    std::fs::create_dir_all(&root).map_err(|e| format!("{}: {e}", root.display()))?;
    let entries = std::fs::read_dir(&cluster.root).map_err(|e| e.to_string())?;
    for e in entries.flatten() {
        let name = e.file_name();
        if name == MIRROR_MANIFEST || name == "images" {
            continue;
        }
        link(&e.path(), &root.join(&name))?;
    }
    link(
        &upstream.join("raw.githubusercontent.com"),
        &root.join("raw.githubusercontent.com"),
    )?;
    let mut manifest: MirrorManifest = cluster.manifest.clone();
    for i in &manifest.images {
        link(&cluster.root.join(&i.file), &root.join(&i.file))?;
    }
    let images = root.join("images");
    std::fs::create_dir_all(&images).map_err(|e| e.to_string())?;
    let bin_dir = root.join("smoke-build");
    std::fs::create_dir_all(&bin_dir).map_err(|e| e.to_string())?;
    let bin = bin_dir.join("k8sforge-smoke");
    build_smoke(&bin)?;
    let mut controllers = false;
    if let Some(src) = std::env::var_os(TRAINING_IMAGES_ENV).map(PathBuf::from) {
        for img in [
            ClusterImage::TrainingOperator,
            ClusterImage::JobSet,
            ClusterImage::TrainerControllerManager,
            ClusterImage::Kueue,
        ] {
            let tar = src.join(format!("{}.tar", img.name()));
            if !tar.exists() {
                continue;
            }
            let reference = std::fs::read_to_string(src.join(format!("{}.ref", img.name())))
                .map(|s| s.trim().to_string())
                .unwrap_or_else(|_| img.default_reference(release));
            let file = format!("images/{}.tar", img.name());
            link(&tar, &root.join(&file))?;
            manifest.images.push(MirrorImage {
                name: img.name().into(),
                reference,
                file,
                sha256: sha256_of(&tar)?,
            });
            controllers |= img == ClusterImage::TrainingOperator;
        }
    }
    let json = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
    std::fs::write(root.join(MIRROR_MANIFEST), json).map_err(|e| e.to_string())?;
    // The product's own packer puts the smoke image into the mirror.
    let entry = k8sforge::artifacts::smoke_image::add_to_mirror(&root, &bin, SMOKE_IMAGE)?;
    manifest.images.push(entry);
    Ok((
        TestMirror {
            root,
            manifest,
            busybox: cluster.busybox.clone(),
        },
        controllers,
    ))
}
