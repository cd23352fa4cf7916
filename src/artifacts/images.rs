//! Container images the cluster itself needs: the pod sandbox (pause), CoreDNS and the NVIDIA
//! device plugin. They travel as OCI archives in the artifact mirror and are imported into
//! containerd on every node that runs pods; nothing is pulled from a registry at run time, as at
//! air-gapped sites.
//!
//! A mirror lists its archives in `k8sforge-artifacts.json` under `images`:
//! `{"name": "pause", "reference": "registry.k8s.io/pause:3.9", "file": "images/pause.tar",
//! "sha256": "…"}`. The reference may differ from the release's default (a re-tagged private
//! copy, or a build of another version): the containerd sandbox setting and the add-on manifests
//! use whatever the mirror lists. Image archives have no upstream file to pin, so an archive is
//! verified against the checksum of the mirror's list.

use std::path::{Path, PathBuf};

use serde::Serialize;

pub use super::source::MirrorImage;
use super::source::{load_manifest, ArtifactError, ArtifactSource, Cache, Location, Mirror};
use super::{Digest, Release, MIRROR_MANIFEST_NAME};

/// The NVIDIA device plugin release k8sforge deploys.
pub const NVIDIA_DEVICE_PLUGIN_VERSION: &str = "v0.17.1";

/// Where archives land on a node; `k8sforge-images.service` imports every `*.tar` here.
pub const NODE_IMAGE_DIR: &str = "/var/lib/k8sforge/images";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum ClusterImage {
    Pause,
    CoreDns,
    NvidiaDevicePlugin,
    /// Controllers of the training stack (phase `training`).
    TrainingOperator,
    TrainerControllerManager,
    JobSet,
    Kueue,
}

impl ClusterImage {
    pub const ALL: [ClusterImage; 7] = [
        ClusterImage::Pause,
        ClusterImage::CoreDns,
        ClusterImage::NvidiaDevicePlugin,
        ClusterImage::TrainingOperator,
        ClusterImage::TrainerControllerManager,
        ClusterImage::JobSet,
        ClusterImage::Kueue,
    ];

    /// The name in a mirror's list and of the archive on the node.
    pub fn name(self) -> &'static str {
        match self {
            ClusterImage::Pause => "pause",
            ClusterImage::CoreDns => "coredns",
            ClusterImage::NvidiaDevicePlugin => "nvidia-device-plugin",
            ClusterImage::TrainingOperator => "training-operator",
            ClusterImage::TrainerControllerManager => "trainer-controller-manager",
            ClusterImage::JobSet => "jobset",
            ClusterImage::Kueue => "kueue",
        }
    }

    pub fn from_name(name: &str) -> Option<ClusterImage> {
        ClusterImage::ALL.into_iter().find(|i| i.name() == name)
    }

    /// The upstream reference paired with `release`.
    pub fn default_reference(self, release: &Release) -> String {
        match self {
            ClusterImage::Pause => format!("registry.k8s.io/pause:{}", release.pause),
            ClusterImage::CoreDns => format!("registry.k8s.io/coredns/coredns:{}", release.coredns),
            ClusterImage::NvidiaDevicePlugin => {
                format!("nvcr.io/nvidia/k8s-device-plugin:{NVIDIA_DEVICE_PLUGIN_VERSION}")
            }
            // The references the pinned upstream overlays publish (training-operator v1.9.4's
            // standalone overlay tags its image by commit).
            ClusterImage::TrainingOperator => {
                "ghcr.io/kubeflow/training-v1/training-operator:v1-93c5489".into()
            }
            ClusterImage::TrainerControllerManager => {
                "ghcr.io/kubeflow/trainer/trainer-controller-manager:v2.3.0".into()
            }
            ClusterImage::JobSet => "registry.k8s.io/jobset/jobset:v0.12.0".into(),
            ClusterImage::Kueue => "registry.k8s.io/kueue/kueue:v0.19.2".into(),
        }
    }

    /// The archive's path on a node.
    pub fn node_path(self) -> String {
        format!("{NODE_IMAGE_DIR}/{}.tar", self.name())
    }
}

/// The reference of every cluster image: the release's defaults, replaced by the mirror's list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ImageRefs {
    pub pause: String,
    pub coredns: String,
    pub nvidia_device_plugin: String,
    pub training_operator: String,
    pub trainer_controller_manager: String,
    pub jobset: String,
    pub kueue: String,
}

impl ImageRefs {
    pub fn defaults(release: &Release) -> ImageRefs {
        ImageRefs {
            pause: ClusterImage::Pause.default_reference(release),
            coredns: ClusterImage::CoreDns.default_reference(release),
            nvidia_device_plugin: ClusterImage::NvidiaDevicePlugin.default_reference(release),
            training_operator: ClusterImage::TrainingOperator.default_reference(release),
            trainer_controller_manager: ClusterImage::TrainerControllerManager
                .default_reference(release),
            jobset: ClusterImage::JobSet.default_reference(release),
            kueue: ClusterImage::Kueue.default_reference(release),
        }
    }

    pub fn get(&self, image: ClusterImage) -> &str {
        match image {
            ClusterImage::Pause => &self.pause,
            ClusterImage::CoreDns => &self.coredns,
            ClusterImage::NvidiaDevicePlugin => &self.nvidia_device_plugin,
            ClusterImage::TrainingOperator => &self.training_operator,
            ClusterImage::TrainerControllerManager => &self.trainer_controller_manager,
            ClusterImage::JobSet => &self.jobset,
            ClusterImage::Kueue => &self.kueue,
        }
    }

    fn set(&mut self, image: ClusterImage, reference: String) {
        match image {
            ClusterImage::Pause => self.pause = reference,
            ClusterImage::CoreDns => self.coredns = reference,
            ClusterImage::NvidiaDevicePlugin => self.nvidia_device_plugin = reference,
            ClusterImage::TrainingOperator => self.training_operator = reference,
            ClusterImage::TrainerControllerManager => self.trainer_controller_manager = reference,
            ClusterImage::JobSet => self.jobset = reference,
            ClusterImage::Kueue => self.kueue = reference,
        }
    }

    /// What the nodes will hold, given the artifact source.
    pub fn for_source(
        release: &Release,
        source: &ArtifactSource,
    ) -> Result<ImageRefs, ArtifactError> {
        let mut refs = ImageRefs::defaults(release);
        if let Some((file, manifest)) = load_manifest(&source.mirror)? {
            for (image, entry) in checked_entries(&file, &manifest.images)? {
                refs.set(image, entry.reference.clone());
            }
        }
        Ok(refs)
    }
}

fn checked_entries<'a>(
    file: &str,
    images: &'a [MirrorImage],
) -> Result<Vec<(ClusterImage, &'a MirrorImage)>, ArtifactError> {
    let bad = |reason: String| ArtifactError::BadManifest {
        file: file.to_string(),
        reason,
    };
    let mut out: Vec<(ClusterImage, &MirrorImage)> = Vec::new();
    for e in images {
        let image = ClusterImage::from_name(&e.name).ok_or_else(|| {
            bad(format!(
                "images: unknown name {:?}; allowed: {}",
                e.name,
                ClusterImage::ALL.map(ClusterImage::name).join(", ")
            ))
        })?;
        if out.iter().any(|(i, _)| *i == image) {
            return Err(bad(format!("images: {} is listed twice", e.name)));
        }
        if e.reference.trim().is_empty() || e.reference.contains(char::is_whitespace) {
            return Err(bad(format!(
                "images: {}: reference {:?} is not an image reference",
                e.name, e.reference
            )));
        }
        // The archive must stay inside the mirror.
        if e.file.starts_with('/') || e.file.split('/').any(|c| c == "..") || e.file.is_empty() {
            return Err(bad(format!(
                "images: {}: file {:?} must be a path relative to the mirror's root",
                e.name, e.file
            )));
        }
        if !matches!(Digest::parse(&e.sha256), Some(Digest::Sha256(_))) {
            return Err(bad(format!(
                "images: {}: sha256 {:?} is not 64 hex digits",
                e.name, e.sha256
            )));
        }
        out.push((image, e));
    }
    Ok(out)
}

/// An image archive to fetch: its reference, where the mirror has it, and its checksum.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedImage {
    pub image: ClusterImage,
    pub reference: String,
    pub location: Location,
    pub digest: Digest,
}

/// The archives of `wanted` in the mirror's list; an image the list lacks is an error that says
/// how to add it.
pub fn resolve(
    release: &Release,
    source: &ArtifactSource,
    wanted: &[ClusterImage],
) -> Result<Vec<ResolvedImage>, ArtifactError> {
    let manifest = load_manifest(&source.mirror)?;
    let listed = match &manifest {
        Some((file, m)) => checked_entries(file, &m.images)?,
        None => Vec::new(),
    };
    let mut out = Vec::new();
    for &image in wanted {
        let Some((_, e)) = listed.iter().find(|(i, _)| *i == image) else {
            return Err(ArtifactError::ImageNotInMirror {
                image: image.name().to_string(),
                reference: image.default_reference(release),
                where_: match &source.mirror {
                    Mirror::Upstream => {
                        " (no mirror is configured: set artifacts.mirror in the profile or pass --mirror)"
                            .to_string()
                    }
                    Mirror::Dir(p) => format!(" {}", p.display()),
                    Mirror::Http(u) => format!(" {u}"),
                },
                manifest: MIRROR_MANIFEST_NAME,
            });
        };
        let digest = Digest::parse(&e.sha256).ok_or_else(|| ArtifactError::BadManifest {
            file: MIRROR_MANIFEST_NAME.to_string(),
            reason: format!("images: {}: bad sha256", e.name),
        })?;
        let location = match &source.mirror {
            Mirror::Dir(root) => Location::File(root.join(&e.file)),
            Mirror::Http(base) => Location::Url(format!("{base}/{}", e.file)),
            // Unreachable in practice: without a mirror there is no list.
            Mirror::Upstream => Location::Url(e.file.clone()),
        };
        out.push(ResolvedImage {
            image,
            reference: e.reference.clone(),
            location,
            digest,
        });
    }
    Ok(out)
}

/// Resolve and fetch (cached, verified) the archives of `wanted`.
pub fn prepare(
    home: &Path,
    release: &Release,
    source: &ArtifactSource,
    wanted: &[ClusterImage],
) -> Result<Vec<(ResolvedImage, PathBuf)>, ArtifactError> {
    let cache = Cache::new(home);
    let mut out = Vec::new();
    for img in resolve(release, source, wanted)? {
        let fetched = cache.fetch_from(
            &img.location,
            &img.digest,
            &format!("{}.tar", img.image.name()),
        )?;
        out.push((img, fetched.path));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, file: &str, sha: &str) -> MirrorImage {
        MirrorImage {
            name: name.into(),
            reference: "example.test/x:1".into(),
            file: file.into(),
            sha256: sha.into(),
        }
    }

    #[test]
    fn mirror_lists_are_checked_field_by_field() {
        let sha = "a".repeat(64);
        assert!(checked_entries("m.json", &[entry("pause", "images/p.tar", &sha)]).is_ok());
        for (e, needle) in [
            (entry("busybox", "images/p.tar", &sha), "unknown name"),
            (entry("pause", "../p.tar", &sha), "relative"),
            (entry("pause", "/etc/p.tar", &sha), "relative"),
            (entry("pause", "images/p.tar", "abc"), "sha256"),
        ] {
            let err = checked_entries("m.json", &[e]).unwrap_err().to_string();
            assert!(err.contains("m.json") && err.contains(needle), "{err}");
        }
        let twice = [entry("pause", "a.tar", &sha), entry("pause", "b.tar", &sha)];
        assert!(checked_entries("m.json", &twice)
            .unwrap_err()
            .to_string()
            .contains("twice"));
    }

    #[test]
    fn without_a_mirror_the_error_says_how_to_supply_images() {
        let r = super::super::release("v1.28.7").unwrap();
        let src = ArtifactSource {
            mirror: Mirror::Upstream,
            trust_mirror_checksums: false,
        };
        let err = resolve(r, &src, &[ClusterImage::Pause])
            .unwrap_err()
            .to_string();
        assert!(err.contains("registry.k8s.io/pause:3.9"), "{err}");
        assert!(err.contains("--mirror"), "{err}");
        assert!(err.contains("never pulled"), "{err}");
    }
}
