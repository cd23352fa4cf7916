//! OCI image archives built without a registry: a single-layer image from a static binary, for
//! `ctr images import` on nodes. k8sforge packs its own smoke program this way
//! (`artifacts::smoke_image`); the test kit packs its pause and stand-in images with it.

use std::io::Write;
use std::path::Path;

use sha2::{Digest, Sha256};

fn digest(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

fn append(
    tar: &mut tar::Builder<Vec<u8>>,
    path: &str,
    bytes: &[u8],
    mode: u32,
) -> Result<(), String> {
    let mut h = tar::Header::new_gnu();
    h.set_size(bytes.len() as u64);
    h.set_mode(mode);
    h.set_uid(0);
    h.set_gid(0);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Regular);
    tar.append_data(&mut h, path, bytes)
        .map_err(|e| format!("{path}: {e}"))
}

fn append_link(tar: &mut tar::Builder<Vec<u8>>, path: &str, target: &str) -> Result<(), String> {
    let mut h = tar::Header::new_gnu();
    h.set_size(0);
    h.set_mode(0o777);
    h.set_mtime(0);
    h.set_entry_type(tar::EntryType::Symlink);
    tar.append_link(&mut h, path, target)
        .map_err(|e| format!("{path}: {e}"))
}

/// An image whose root has `/bin/<name>` = `binary` and a symlink per `applets` entry pointing at
/// it (e.g. busybox's applets), named `name` (e.g. `docker.io/library/k8sforge-busybox:latest`).
pub fn build_archive(
    binary: &Path,
    applets: &[&str],
    cmd: &[&str],
    name: &str,
    out: &Path,
) -> Result<(), String> {
    build(binary, applets, &[], cmd, name, out)
}

/// Like [`build_archive`], with `entrypoint` as the image's entrypoint (a manifest's `args` are
/// appended to it, as with upstream images such as CoreDNS's).
pub fn build_archive_with_entrypoint(
    binary: &Path,
    entrypoint: &[&str],
    name: &str,
    out: &Path,
) -> Result<(), String> {
    build(binary, &[], entrypoint, &[], name, out)
}

fn build(
    binary: &Path,
    applets: &[&str],
    entrypoint: &[&str],
    cmd: &[&str],
    name: &str,
    out: &Path,
) -> Result<(), String> {
    let bin = std::fs::read(binary).map_err(|e| format!("{}: {e}", binary.display()))?;
    let bin_name = binary.file_name().and_then(|n| n.to_str()).unwrap_or("app");
    let mut layer = tar::Builder::new(Vec::new());
    for dir in ["bin", "etc", "tmp", "proc", "sys", "dev", "root"] {
        let mut h = tar::Header::new_gnu();
        h.set_size(0);
        h.set_mode(if dir == "tmp" { 0o1777 } else { 0o755 });
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Directory);
        layer
            .append_data(&mut h, format!("{dir}/"), std::io::empty())
            .map_err(|e| format!("{dir}: {e}"))?;
    }
    append(&mut layer, &format!("bin/{bin_name}"), &bin, 0o755)?;
    for a in applets {
        if *a != bin_name {
            append_link(&mut layer, &format!("bin/{a}"), bin_name)?;
        }
    }
    append(
        &mut layer,
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\n",
        0o644,
    )?;
    append(&mut layer, "etc/group", b"root:x:0:\n", 0o644)?;
    let layer = layer.into_inner().map_err(|e| e.to_string())?;
    let layer_digest = digest(&layer);
    let config = serde_json::json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin"], "Entrypoint": entrypoint, "Cmd": cmd, "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{layer_digest}")]},
    })
    .to_string();
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": format!("sha256:{}", digest(config.as_bytes())), "size": config.len()},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": format!("sha256:{layer_digest}"), "size": layer.len()}],
    })
    .to_string();
    let tag = name.rsplit(':').next().unwrap_or("latest");
    let index = serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": format!("sha256:{}", digest(manifest.as_bytes())),
            "size": manifest.len(),
            "platform": {"architecture": "amd64", "os": "linux"},
            "annotations": {"io.containerd.image.name": name, "org.opencontainers.image.ref.name": tag},
        }],
    })
    .to_string();
    let mut archive = tar::Builder::new(Vec::new());
    append(
        &mut archive,
        "oci-layout",
        br#"{"imageLayoutVersion":"1.0.0"}"#,
        0o644,
    )?;
    append(&mut archive, "index.json", index.as_bytes(), 0o644)?;
    for blob in [layer.as_slice(), config.as_bytes(), manifest.as_bytes()] {
        append(
            &mut archive,
            &format!("blobs/sha256/{}", digest(blob)),
            blob,
            0o644,
        )?;
    }
    let bytes = archive.into_inner().map_err(|e| e.to_string())?;
    let mut f = std::fs::File::create(out).map_err(|e| format!("{}: {e}", out.display()))?;
    f.write_all(&bytes)
        .map_err(|e| format!("{}: {e}", out.display()))
}
