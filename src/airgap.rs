//! `k8sforge mirror --out DIR`: an air-gap mirror for a profile, in exactly the layout `up
//! --mirror DIR` reads — every pinned binary at `<DIR>/<host>/<upstream path>`, verified; every
//! image the profile needs pulled by digest through the registry API (mirrors of
//! `artifacts.registryMirrors` first) into `<DIR>/images/<name>.tar` (an OCI archive holding the
//! pinned index, the linux/amd64 manifest and its blobs); and `k8sforge-artifacts.json` listing
//! both.
//!
//! Resumable: a file whose digest still matches is not fetched again; blobs of unfinished image
//! pulls stay in `<DIR>/.oci-blobs` (each re-verified before use), so a corrupted file or blob is
//! detected and fetched again.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde::Serialize;
use sha2::Digest as _;

use crate::artifacts::images::{ClusterImage, ImageRefs, MirrorImage};
use crate::artifacts::registry::{self, ImageName, RegistryError, Session};
use crate::artifacts::source::{
    effective_release, resolve, ArtifactError, ArtifactSource, Cache, Location, Mirror,
    MirrorEntry, MirrorManifest, MIRROR_MANIFEST,
};
use crate::artifacts::{Component, Digest, Release};
use crate::profile::schema::Profile;

#[derive(Debug, thiserror::Error)]
pub enum MirrorError {
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error(transparent)]
    Registry(#[from] RegistryError),
    #[error("image {reference}: every source failed:{details}")]
    AllSourcesFailed { reference: String, details: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> MirrorError + '_ {
    move |source| MirrorError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// What a run did (`--output json` prints it).
#[derive(Debug, Clone, Default, Serialize)]
pub struct MirrorSummary {
    pub out: PathBuf,
    pub files: usize,
    pub images: usize,
    /// Items fetched in this run (the rest were present and verified).
    pub fetched: usize,
    pub reused: usize,
    pub bytes_fetched: u64,
    pub bytes_total: u64,
    pub sources: BTreeSet<String>,
    /// Images the profile needs that have no digest pin (release table or
    /// `artifacts.images`), so they cannot be mirrored verifiably: named, not fetched.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unpinned_images: Vec<String>,
    pub elapsed_secs: f64,
}

impl MirrorSummary {
    pub fn line(&self) -> String {
        let mut line = self.counts_line();
        if !self.unpinned_images.is_empty() {
            line.push_str(&format!(
                "\nnot mirrored (no digest pin; set artifacts.images.<name> to name:tag@sha256:…): {}",
                self.unpinned_images.join(", ")
            ));
        }
        line
    }

    fn counts_line(&self) -> String {
        format!(
            "mirror {}: {} files + {} images ({} fetched, {} already verified); {:.1} MiB fetched of {:.1} MiB; sources: {} ({:.1}s)",
            self.out.display(),
            self.files,
            self.images,
            self.fetched,
            self.reused,
            self.bytes_fetched as f64 / 1048576.0,
            self.bytes_total as f64 / 1048576.0,
            self.sources.iter().cloned().collect::<Vec<_>>().join(", "),
            self.elapsed_secs
        )
    }
}

fn hash_file(path: &Path, d: &Digest) -> std::io::Result<String> {
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; 1 << 20];
    let mut h256 = sha2::Sha256::new();
    let mut h512 = sha2::Sha512::new();
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        match d {
            Digest::Sha256(_) => h256.update(&buf[..n]),
            Digest::Sha512(_) => h512.update(&buf[..n]),
        }
    }
    Ok(match d {
        Digest::Sha256(_) => hex::encode(h256.finalize()),
        Digest::Sha512(_) => hex::encode(h512.finalize()),
    })
}

fn verified(path: &Path, d: &Digest) -> bool {
    path.is_file() && hash_file(path, d).is_ok_and(|h| h == d.hex())
}

fn sha256_file(path: &Path) -> Result<String, MirrorError> {
    hash_file(path, &Digest::Sha256(String::new())).map_err(io_err(path))
}

fn size(path: &Path) -> u64 {
    std::fs::metadata(path).map(|m| m.len()).unwrap_or(0)
}

/// The cluster images `profile` needs: pause and CoreDNS always, the device plugin with GPU
/// workers. (The training stack's images are chosen by the `training` layer and passed to
/// [`build`] by the `mirror` verb.)
pub fn images_for(profile: &Profile) -> Vec<ClusterImage> {
    let gpus = profile.workers.iter().any(|w| w.gpus_per_node > 0);
    [
        ClusterImage::Pause,
        ClusterImage::CoreDns,
        ClusterImage::NvidiaDevicePlugin,
    ]
    .into_iter()
    .filter(|i| *i != ClusterImage::NvidiaDevicePlugin || gpus)
    .collect()
}

/// One upstream file pinned by digest outside the release table (the training stack's
/// kustomize trees): mirrored at `<out>/<host>/<path>` like the binaries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedFile {
    pub url: String,
    pub digest: Digest,
}

/// What the mirror holds beyond the release's binaries and cluster images; chosen by the layers
/// above (the training stack's images and upstream files) and passed in by the `mirror` verb.
#[derive(Debug, Clone, Default)]
pub struct Extra {
    pub images: Vec<ClusterImage>,
    pub files: Vec<PinnedFile>,
}

/// Build (or complete) the mirror at `out` for `profile`: binaries and `extra.files` from
/// `source`, the cluster images plus `extra.images` from their registries.
pub fn build(
    profile: &Profile,
    pinned: &Release,
    source: &ArtifactSource,
    out: &Path,
    extra: &Extra,
    progress: bool,
) -> Result<MirrorSummary, MirrorError> {
    let started = Instant::now();
    std::fs::create_dir_all(out).map_err(io_err(out))?;
    let release = effective_release(pinned, source)?;
    let arts = resolve(&release, source, &Component::ALL)?;
    let refs = ImageRefs::with_overrides(pinned, &profile.artifacts.images);
    let mut wanted = images_for(profile);
    for i in &extra.images {
        if !wanted.contains(i) {
            wanted.push(*i);
        }
    }
    let bar = if progress {
        let b = indicatif::ProgressBar::new((arts.len() + extra.files.len() + wanted.len()) as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} mirror [{bar:30}] {pos}/{len} {msg}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.enable_steady_tick(Duration::from_millis(200));
        b
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut summary = MirrorSummary {
        out: out.to_path_buf(),
        ..MirrorSummary::default()
    };
    let dest_root = Mirror::Dir(out.to_path_buf());
    let staging = Cache {
        root: out.join(".partial"),
    };
    let mut entries = Vec::new();
    for art in &arts {
        bar.set_message(art.file_name().to_string());
        let Location::File(dest) = dest_root.location(&art.upstream_url) else {
            unreachable!("a directory mirror has file locations")
        };
        if verified(&dest, &art.digest) {
            summary.reused += 1;
        } else {
            let loc = source.mirror.location(&art.upstream_url);
            let fetched = staging
                .fetch_from(&loc, &art.digest, art.file_name())
                .map_err(|e| unstage(out, e))?;
            if let Some(dir) = dest.parent() {
                std::fs::create_dir_all(dir).map_err(io_err(dir))?;
            }
            std::fs::rename(&fetched.path, &dest).map_err(io_err(&dest))?;
            summary.fetched += 1;
            summary.bytes_fetched += size(&dest);
            summary.sources.insert(origin(&loc.to_string()));
        }
        summary.bytes_total += size(&dest);
        summary.files += 1;
        let sha256 = match &art.digest {
            Digest::Sha256(h) => h.clone(),
            Digest::Sha512(_) => sha256_file(&dest)?,
        };
        entries.push(MirrorEntry {
            name: art.component.name().to_string(),
            version: art.version.clone(),
            url: art.upstream_url.clone(),
            sha256,
        });
        bar.inc(1);
    }
    for f in &extra.files {
        let Location::File(dest) = dest_root.location(&f.url) else {
            unreachable!("a directory mirror has file locations")
        };
        let name = f.url.rsplit('/').next().unwrap_or(&f.url);
        bar.set_message(name.to_string());
        if verified(&dest, &f.digest) {
            summary.reused += 1;
        } else {
            let loc = source.mirror.location(&f.url);
            let fetched = staging
                .fetch_from(&loc, &f.digest, name)
                .map_err(|e| unstage(out, e))?;
            if let Some(dir) = dest.parent() {
                std::fs::create_dir_all(dir).map_err(io_err(dir))?;
            }
            std::fs::rename(&fetched.path, &dest).map_err(io_err(&dest))?;
            summary.fetched += 1;
            summary.bytes_fetched += size(&dest);
            summary.sources.insert(origin(&loc.to_string()));
        }
        summary.bytes_total += size(&dest);
        summary.files += 1;
        bar.inc(1);
    }
    let previous = std::fs::read(out.join(MIRROR_MANIFEST))
        .ok()
        .and_then(|b| serde_json::from_slice::<MirrorManifest>(&b).ok());
    let mut images = Vec::new();
    for image in wanted {
        let reference = refs.get(image).to_string();
        bar.set_message(reference.clone());
        if !crate::artifacts::images::is_digest_pinned(&reference) {
            tracing::warn!(image = image.name(), %reference,
                "no digest pin: not mirrored (set artifacts.images to a name:tag@sha256:… reference)");
            summary
                .unpinned_images
                .push(format!("{} ({reference})", image.name()));
            bar.inc(1);
            continue;
        }
        let name = ImageName::parse(&reference)?;
        let file = format!("images/{}.tar", image.name());
        let archive = out.join(&file);
        // Reused only when the archive still matches what the last run recorded for this digest.
        let known = previous.as_ref().and_then(|m| {
            m.images
                .iter()
                .find(|e| e.name == image.name() && e.file == file)
                .filter(|e| e.reference == name.tagged())
                .map(|e| e.sha256.clone())
        });
        let recorded_digest = std::fs::read_to_string(archive.with_extension("digest")).ok();
        let sha256 = match known {
            Some(sha)
                if recorded_digest.as_deref().map(str::trim) == Some(name.digest.as_str())
                    && verified(&archive, &Digest::Sha256(sha.clone())) =>
            {
                summary.reused += 1;
                sha
            }
            _ => {
                let (bytes, endpoint) = pull_archive(&name, &reference, profile, out, &archive)?;
                std::fs::write(archive.with_extension("digest"), &name.digest)
                    .map_err(io_err(&archive))?;
                summary.fetched += 1;
                summary.bytes_fetched += bytes;
                summary.sources.insert(endpoint);
                sha256_file(&archive)?
            }
        };
        summary.bytes_total += size(&archive);
        summary.images += 1;
        images.push(MirrorImage {
            name: image.name().to_string(),
            reference: name.tagged(),
            file,
            sha256,
        });
        bar.inc(1);
    }
    // Entries this run did not handle stay listed while their archive is intact: above all the
    // packed smoke image (`k8sforge smoke --pack`), which no registry serves, but also images of
    // another profile mirrored into the same directory. A mirror only grows.
    if let Some(prev) = &previous {
        for e in &prev.images {
            if images.iter().any(|i| i.name == e.name) {
                continue;
            }
            if verified(&out.join(&e.file), &Digest::Sha256(e.sha256.clone())) {
                images.push(e.clone());
            } else {
                tracing::warn!(image = %e.name, file = %e.file,
                    "listed by the previous run but its archive is missing or changed: dropped from the list");
            }
        }
    }
    let manifest = MirrorManifest {
        artifacts: entries,
        images,
    };
    let list = out.join(MIRROR_MANIFEST);
    let text = serde_json::to_vec_pretty(&manifest).map_err(|e| MirrorError::Io {
        path: list.clone(),
        source: std::io::Error::other(e),
    })?;
    crate::fsutil::write_atomic(&list, &text, crate::fsutil::PUBLIC).map_err(io_err(&list))?;
    let _ = std::fs::remove_dir_all(out.join(".partial"));
    bar.finish_and_clear();
    summary.elapsed_secs = started.elapsed().as_secs_f64();
    Ok(summary)
}

/// A failed download leaves no staging directory behind (the temp file is already gone).
fn unstage(out: &Path, e: ArtifactError) -> MirrorError {
    let _ = std::fs::remove_dir_all(out.join(".partial"));
    e.into()
}

/// `scheme://host[:port]` of a URL (the summary names sources, not every path).
fn origin(url: &str) -> String {
    match url.split_once("://") {
        Some((scheme, rest)) => format!("{scheme}://{}", rest.split('/').next().unwrap_or("")),
        None => url.to_string(),
    }
}

/// Pull `name` (by its pinned digest) from the first endpoint that delivers it and write the
/// OCI archive. Returns the bytes fetched and the endpoint.
fn pull_archive(
    name: &ImageName,
    reference: &str,
    profile: &Profile,
    out: &Path,
    archive: &Path,
) -> Result<(u64, String), MirrorError> {
    let endpoints = registry::endpoints(&name.registry, &profile.artifacts.registry_mirrors)?;
    let mut details = String::new();
    for ep in &endpoints {
        let mut s = Session::new(ep, name, reference);
        match pull_with(&mut s, name, out, archive) {
            Ok(bytes) => return Ok((bytes, ep.base.clone())),
            Err(MirrorError::Registry(e)) => details.push_str(&format!("\n  {e}")),
            Err(e) => return Err(e),
        }
    }
    Err(MirrorError::AllSourcesFailed {
        reference: reference.to_string(),
        details,
    })
}

fn blob_path(out: &Path, digest: &str) -> PathBuf {
    out.join(".oci-blobs/sha256")
        .join(digest.trim_start_matches("sha256:"))
}

fn pull_with(
    s: &mut Session<'_>,
    name: &ImageName,
    out: &Path,
    archive: &Path,
) -> Result<u64, MirrorError> {
    let mut fetched = 0u64;
    let (top_type, top) = s.manifest(&name.digest)?;
    let mut manifests: Vec<(String, Vec<u8>)> = vec![(name.digest.clone(), top.clone())];
    let top_json: serde_json::Value = serde_json::from_slice(&top).unwrap_or_default();
    let manifest_json = if top_type.contains("index") || top_type.contains("manifest.list") {
        let chosen = top_json["manifests"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|m| {
                m["platform"]["os"] == "linux"
                    && m["platform"]["architecture"] == crate::artifacts::ARCH
            })
            .and_then(|m| m["digest"].as_str())
            .ok_or_else(|| RegistryError::Manifest {
                reference: name.tagged(),
                reason: format!(
                    "the index {} has no linux/{} image",
                    name.digest,
                    crate::artifacts::ARCH
                ),
            })?
            .to_string();
        let (_, m) = s.manifest(&chosen)?;
        manifests.push((chosen, m.clone()));
        serde_json::from_slice(&m).unwrap_or_default()
    } else {
        top_json
    };
    let mut blobs: Vec<String> = Vec::new();
    if let Some(d) = manifest_json["config"]["digest"].as_str() {
        blobs.push(d.to_string());
    }
    for l in manifest_json["layers"].as_array().into_iter().flatten() {
        if let Some(d) = l["digest"].as_str() {
            blobs.push(d.to_string());
        }
    }
    if blobs.is_empty() {
        return Err(RegistryError::Manifest {
            reference: name.tagged(),
            reason: "the image manifest lists no config or layers".into(),
        }
        .into());
    }
    for d in &blobs {
        let p = blob_path(out, d);
        let want = Digest::Sha256(d.trim_start_matches("sha256:").to_string());
        if !verified(&p, &want) {
            fetched += s.blob(d, &p)?;
        }
    }
    // The archive: the pinned index (so its digest is what the release pins), the platform
    // manifest and its blobs, named as `ctr images import` expects.
    let dir = archive.parent().unwrap_or(out);
    std::fs::create_dir_all(dir).map_err(io_err(dir))?;
    let tmp = archive.with_extension("tar.partial");
    {
        let f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        let mut t = tar::Builder::new(std::io::BufWriter::new(f));
        let mut add = |path: &str, bytes: &[u8]| -> Result<(), MirrorError> {
            let mut h = tar::Header::new_gnu();
            h.set_size(bytes.len() as u64);
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_entry_type(tar::EntryType::Regular);
            t.append_data(&mut h, path, bytes).map_err(io_err(&tmp))
        };
        add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#)?;
        let index = serde_json::json!({
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.index.v1+json",
            "manifests": [{
                "mediaType": top_type,
                "digest": name.digest,
                "size": top.len(),
                "annotations": {
                    "io.containerd.image.name": name.tagged(),
                    "org.opencontainers.image.ref.name": name.tag.clone().unwrap_or_else(|| "latest".into()),
                },
            }],
        })
        .to_string();
        add("index.json", index.as_bytes())?;
        for (d, bytes) in &manifests {
            add(
                &format!("blobs/sha256/{}", d.trim_start_matches("sha256:")),
                bytes,
            )?;
        }
        for d in &blobs {
            let p = blob_path(out, d);
            let mut h = tar::Header::new_gnu();
            h.set_size(size(&p));
            h.set_mode(0o644);
            h.set_mtime(0);
            h.set_entry_type(tar::EntryType::Regular);
            let f = std::fs::File::open(&p).map_err(io_err(&p))?;
            t.append_data(
                &mut h,
                format!("blobs/sha256/{}", d.trim_start_matches("sha256:")),
                f,
            )
            .map_err(io_err(&tmp))?;
        }
        let mut w = t.into_inner().map_err(io_err(&tmp))?;
        w.flush().map_err(io_err(&tmp))?;
        w.get_ref().sync_all().map_err(io_err(&tmp))?;
    }
    std::fs::rename(&tmp, archive).map_err(io_err(archive))?;
    for d in &blobs {
        let _ = std::fs::remove_file(blob_path(out, d));
    }
    Ok(fetched + manifests.iter().map(|(_, b)| b.len() as u64).sum::<u64>())
}
