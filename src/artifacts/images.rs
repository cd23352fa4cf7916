//! Container images the cluster itself needs: the pod sandbox (pause), CoreDNS and the NVIDIA
//! device plugin, each pinned by digest (`IMAGE_DIGESTS`), so a moved tag or an untrusted mirror
//! serving other bytes is detected by containerd.
//!
//! By default nodes pull them online (from the upstream registry, or from the mirrors of
//! `artifacts.registryMirrors`, rendered as containerd `hosts.toml`). For air-gapped sites they
//! can also travel as OCI archives in the artifact mirror and are then imported into containerd
//! on every node that runs pods; an archive in the mirror wins over an online pull.
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
    /// k8sforge's own smoke workload (`smoke/`), built by the project, never pulled.
    Smoke,
}

impl ClusterImage {
    pub const ALL: [ClusterImage; 8] = [
        ClusterImage::Pause,
        ClusterImage::CoreDns,
        ClusterImage::NvidiaDevicePlugin,
        ClusterImage::TrainingOperator,
        ClusterImage::TrainerControllerManager,
        ClusterImage::JobSet,
        ClusterImage::Kueue,
        ClusterImage::Smoke,
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
            ClusterImage::Smoke => "k8sforge-smoke",
        }
    }

    pub fn from_name(name: &str) -> Option<ClusterImage> {
        ClusterImage::ALL.into_iter().find(|i| i.name() == name)
    }

    /// Upstream repository and tag paired with `release`.
    pub fn repository_and_tag(self, release: &Release) -> (&'static str, &'static str) {
        match self {
            ClusterImage::Pause => ("registry.k8s.io/pause", release.pause),
            ClusterImage::CoreDns => ("registry.k8s.io/coredns/coredns", release.coredns),
            ClusterImage::NvidiaDevicePlugin => (
                "nvcr.io/nvidia/k8s-device-plugin",
                NVIDIA_DEVICE_PLUGIN_VERSION,
            ),
            // The references the pinned upstream overlays publish (training-operator v1.9.4's
            // standalone overlay tags its image by commit).
            ClusterImage::TrainingOperator => (
                "ghcr.io/kubeflow/training-v1/training-operator",
                "v1-93c5489",
            ),
            ClusterImage::TrainerControllerManager => (
                "ghcr.io/kubeflow/trainer/trainer-controller-manager",
                "v2.3.0",
            ),
            ClusterImage::JobSet => ("registry.k8s.io/jobset/jobset", "v0.12.0"),
            ClusterImage::Kueue => ("registry.k8s.io/kueue/kueue", "v0.19.2"),
            // No registry serves it: it exists only where a mirror lists its archive.
            ClusterImage::Smoke => ("k8sforge.invalid/k8sforge-smoke", SMOKE_IMAGE_TAG),
        }
    }

    /// The upstream reference paired with `release`, pinned by digest when the table has one:
    /// `registry.k8s.io/pause:3.10.1@sha256:…` (containerd pulls by the digest; the tag is
    /// for people).
    pub fn default_reference(self, release: &Release) -> String {
        let (repo, tag) = self.repository_and_tag(release);
        match pinned_digest(self, tag) {
            Some(d) => format!("{repo}:{tag}@{d}"),
            None => format!("{repo}:{tag}"),
        }
    }

    /// The archive's path on a node.
    pub fn node_path(self) -> String {
        format!("{NODE_IMAGE_DIR}/{}.tar", self.name())
    }
}

/// Tag of the smoke image this k8sforge submits (the `smoke/` crate's version).
pub const SMOKE_IMAGE_TAG: &str = "0.1.0";

/// Digests of the multi-platform image indexes upstream publishes, `(image, tag, digest)`.
/// Nothing here could reach a registry, so each value comes from upstream text found through
/// the search index and is cross-checked where two independent sources exist:
/// - pause 3.9: `FROM registry.k8s.io/pause:3.9@sha256:7031c1b2…` in cilium's Dockerfiles.
/// - pause 3.10.1: the same `registry.k8s.io/pause:3.10.1@sha256:278fb9db…` in several
///   independent projects' pins (kind-based test scripts, controller tests).
/// - CoreDNS v1.10.1: coredns/corefile-migration `migration/versions.go` (`dockerImageSHA` of
///   1.10.1), matching `crictl images`/pod `imageID` output in kubevirt and other projects.
/// - CoreDNS v1.12.1: the `Image ID: registry.k8s.io/coredns/coredns@sha256:e8c26256…` of a
///   running v1.12.1 pod, and containerd's own resolver test data (the coredns index).
/// - pause 3.10.2 (Kubernetes 1.36): `registry.k8s.io/pause:3.10.2@sha256:f548e0e8…` in several
///   independent projects' pins (sandbox configs, API docs and tests of unrelated repositories).
/// - CoreDNS v1.14.2 (Kubernetes 1.36): cilium-cli's renovate-managed image pins
///   (`defaults.go`, `ConnectivityDNSTestServerImage`); one source only — re-verify.
/// - JobSet v0.12.0: `registry.k8s.io/jobset/jobset:v0.12.0@sha256:e75536f1…` in a project's
///   release pins that verify the image by digest; one source only — re-verify.
/// - training-operator v1-93c5489, Trainer v2.3.0, Kueue v0.19.2: no upstream text with their
///   index digests was found, so they have no pin and `k8sforge mirror` cannot mirror them
///   verifiably (it names them and skips them; `artifacts.images.<name>` takes a pinned reference).
///   Searched again (session 12): Kueue's promotion PR (kubernetes/k8s.io #9856, "Kueue: Promote
///   v0.19.2") shows only the Helm charts' digests in searchable text, not the `kueue` image's;
///   Trainer's "Prepare Release v2.3.0" (kubeflow/trainer #3859) and "Release Training Operator
///   Image for v1.9.4" (#3947) publish tags, no digests. A digest copied from anything weaker
///   than those would be a guess, so the tag pins stay.
/// - NVIDIA device plugin v0.17.1: `nvcr.io/nvidia/k8s-device-plugin:v0.17.1@sha256:af31e2b7…`
///   in two projects' image locks. Re-verify against the registry when one is reachable
///   (`k8sforge mirror` does, by pulling by digest).
pub const IMAGE_DIGESTS: &[(ClusterImage, &str, &str)] = &[
    (
        ClusterImage::Pause,
        "3.9",
        "sha256:7031c1b283388d2c2e09b57badb803c05ebed362dc88d84b480cc47f72a21097",
    ),
    (
        ClusterImage::Pause,
        "3.10.1",
        "sha256:278fb9dbcca9518083ad1e11276933a2e96f23de604a3a08cc3c80002767d24c",
    ),
    (
        ClusterImage::CoreDns,
        "v1.10.1",
        "sha256:a0ead06651cf580044aeb0a0feba63591858fb2e43ade8c9dea45a6a89ae7e5e",
    ),
    (
        ClusterImage::CoreDns,
        "v1.12.1",
        "sha256:e8c262566636e6bc340ece6473b0eed193cad045384401529721ddbe6463d31c",
    ),
    (
        ClusterImage::Pause,
        "3.10.2",
        "sha256:f548e0e8e3dc1896ca956272154dde3314e8cc4fde0a57577ee9fa1c63f5baf4",
    ),
    (
        ClusterImage::CoreDns,
        "v1.14.2",
        "sha256:e7e6440cfd1e919280958f5b5a6ab2b184d385bba774c12ad2a9e1e4183f90d9",
    ),
    (
        ClusterImage::JobSet,
        "v0.12.0",
        "sha256:e75536f1135b7bb2f19f8c3b620782fbdd9091d73398e3a272f9a5fed322980d",
    ),
    (
        ClusterImage::NvidiaDevicePlugin,
        "v0.17.1",
        "sha256:af31e2b7c7f89834c4e5219860def7ac2e49a207b3d4e8610d5a26772b7738e5",
    ),
];

/// The pinned index digest of `image` at `tag`.
pub fn pinned_digest(image: ClusterImage, tag: &str) -> Option<&'static str> {
    IMAGE_DIGESTS
        .iter()
        .find(|(i, t, _)| *i == image && *t == tag)
        .map(|(_, _, d)| *d)
}

/// `repo[:tag]@sha256:<64 hex>`: the reference is pinned by digest.
pub fn is_digest_pinned(reference: &str) -> bool {
    match reference.rsplit_once('@') {
        Some((name, d)) => {
            !name.is_empty()
                && !name.contains(char::is_whitespace)
                && matches!(Digest::parse(d), Some(Digest::Sha256(_)))
                && d.starts_with("sha256:")
        }
        None => false,
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
    pub smoke: String,
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
            smoke: ClusterImage::Smoke.default_reference(release),
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
            ClusterImage::Smoke => &self.smoke,
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
            ClusterImage::Smoke => self.smoke = reference,
        }
    }

    /// The release's defaults with the profile's `artifacts.images` overrides applied.
    pub fn with_overrides(
        release: &Release,
        overrides: &crate::artifacts::spec::ImageOverrides,
    ) -> ImageRefs {
        let mut refs = ImageRefs::defaults(release);
        for ((_, o), image) in overrides.all().into_iter().zip(ClusterImage::ALL) {
            if let Some(r) = o {
                refs.set(image, r.clone());
            }
        }
        refs
    }

    /// What the nodes will hold, given the artifact source: an archive the mirror lists wins
    /// over the (online) reference.
    pub fn for_source(
        release: &Release,
        overrides: &crate::artifacts::spec::ImageOverrides,
        source: &ArtifactSource,
    ) -> Result<ImageRefs, ArtifactError> {
        let mut refs = ImageRefs::with_overrides(release, overrides);
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
    fn every_override_field_replaces_its_own_image() {
        let r = super::super::release(super::super::DEFAULT_KUBERNETES_VERSION).unwrap();
        let d = format!("sha256:{}", "b".repeat(64));
        let o = crate::artifacts::spec::ImageOverrides {
            pause: Some(format!("x.test/pause:1@{d}")),
            coredns: Some(format!("x.test/coredns:1@{d}")),
            nvidia_device_plugin: Some(format!("x.test/nvidia-device-plugin:1@{d}")),
            training_operator: Some(format!("x.test/training-operator:1@{d}")),
            trainer_controller_manager: Some(format!("x.test/trainer-controller-manager:1@{d}")),
            jobset: Some(format!("x.test/jobset:1@{d}")),
            kueue: Some(format!("x.test/kueue:1@{d}")),
        };
        let refs = ImageRefs::with_overrides(r, &o);
        for i in ClusterImage::ALL {
            // The smoke image is the project's own, never overridden (it comes from the mirror).
            if matches!(i, ClusterImage::Smoke) {
                continue;
            }
            assert_eq!(refs.get(i), format!("x.test/{}:1@{d}", i.name()));
        }
        assert!(!o.is_empty());
        assert!(crate::artifacts::spec::ImageOverrides::default().is_empty());
    }

    #[test]
    fn the_default_release_pins_its_cluster_images() {
        let r = super::super::release(super::super::DEFAULT_KUBERNETES_VERSION).unwrap();
        for i in [
            ClusterImage::Pause,
            ClusterImage::CoreDns,
            ClusterImage::JobSet,
        ] {
            assert!(is_digest_pinned(&i.default_reference(r)), "{i:?}");
        }
        assert_eq!(
            ClusterImage::Pause.default_reference(r),
            "registry.k8s.io/pause:3.10.2@sha256:f548e0e8e3dc1896ca956272154dde3314e8cc4fde0a57577ee9fa1c63f5baf4"
        );
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
