//! Where artifacts come from and the local cache they land in.
//!
//! - Upstream release URLs by default.
//! - A mirror (directory or http(s) URL) laid out as `<mirror>/<host>/<path of the upstream URL>`,
//!   the convention of kubespray's `files_repo`.
//! - A mirror may carry `k8sforge-artifacts.json` (see `MirrorManifest`) whose versions override
//!   the release's. Its checksums are used only with an explicit opt-in
//!   (`artifacts.trustMirrorChecksums: true` / `--trust-mirror-checksums`); without it, every
//!   artifact must have a pinned digest, and a mirror version without one is refused.
//! - Everything fetched is verified, then renamed into `$K8SFORGE_HOME/cache/<hex digest>`; a
//!   second fetch of the same digest is a cache hit and touches no network.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use sha2::Digest as _;

use super::{pins, Component, Digest, Release};
use crate::fsutil;

/// File name of a mirror's own artifact list, at the mirror's root.
pub const MIRROR_MANIFEST: &str = "k8sforge-artifacts.json";

#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    #[error("artifact mirror directory {} does not exist or is not a directory", .0.display())]
    MirrorMissing(PathBuf),
    #[error(
        "checksum mismatch for {file}: expected {expected}, got {actual}. The file was not used."
    )]
    ChecksumMismatch {
        file: String,
        expected: String,
        actual: String,
    },
    #[error(
        "mirror list {file} sets {component} to {version}, which has no pinned checksum in k8sforge. \
         Its own checksum is not trusted unless you opt in: set artifacts.trustMirrorChecksums: true \
         in the profile or pass --trust-mirror-checksums"
    )]
    UntrustedMirrorChecksum {
        file: String,
        component: String,
        version: String,
    },
    #[error("mirror list {file}: {reason}")]
    BadManifest { file: String, reason: String },
    #[error("no pinned checksum for {component} {version}")]
    NotPinned { component: String, version: String },
    #[error("cannot download {url}: {reason}")]
    Download { url: String, reason: String },
    #[error("{file} not found in the artifact mirror (expected at {location})")]
    NotInMirror { file: String, location: String },
    #[error(
        "the {image} image ({reference}) is not in the artifact mirror{where_}. Images are never \
         pulled at run time: put an OCI archive of it in the mirror and list it under \"images\" in \
         {manifest} (e.g. `skopeo copy docker://{reference} oci-archive:images/{image}.tar:{reference}`)"
    )]
    ImageNotInMirror {
        image: String,
        reference: String,
        where_: String,
        manifest: &'static str,
    },
    #[error("archive {archive}: {reason}")]
    Archive { archive: String, reason: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ArtifactError + '_ {
    move |source| ArtifactError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where downloads come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mirror {
    Upstream,
    Dir(PathBuf),
    /// Base URL without a trailing slash.
    Http(String),
}

/// A file's place in a mirror.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Location {
    File(PathBuf),
    Url(String),
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Location::File(p) => write!(f, "{}", p.display()),
            Location::Url(u) => f.write_str(u),
        }
    }
}

impl Mirror {
    /// `None` → upstream; `http://…`/`https://…` → HTTP mirror; `s3://bucket/prefix` and
    /// `gs://bucket/prefix` → the bucket's HTTPS endpoint (objects readable by the nodes, e.g.
    /// through a bucket policy for the cluster's VPC); anything else → directory.
    pub fn parse(spec: Option<&str>) -> Result<Mirror, ArtifactError> {
        match spec.map(str::trim) {
            None | Some("") => Ok(Mirror::Upstream),
            Some(s) if s.starts_with("s3://") || s.starts_with("gs://") => {
                let rest = s[5..].trim_end_matches('/');
                let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
                if bucket.is_empty() {
                    return Err(ArtifactError::BadManifest {
                        file: s.to_string(),
                        reason: "the bucket URL names no bucket".into(),
                    });
                }
                let base = if s.starts_with("s3://") {
                    format!("https://{bucket}.s3.amazonaws.com")
                } else {
                    format!("https://storage.googleapis.com/{bucket}")
                };
                Ok(Mirror::Http(if prefix.is_empty() {
                    base
                } else {
                    format!("{base}/{prefix}")
                }))
            }
            Some(s) if s.starts_with("http://") || s.starts_with("https://") => {
                Ok(Mirror::Http(s.trim_end_matches('/').to_string()))
            }
            Some(s) => {
                let p = PathBuf::from(s.strip_prefix("file://").unwrap_or(s));
                if p.is_dir() {
                    Ok(Mirror::Dir(p))
                } else {
                    Err(ArtifactError::MirrorMissing(p))
                }
            }
        }
    }

    /// `<mirror>/<host>/<path>` for an upstream URL (upstream itself for `Upstream`).
    pub fn location(&self, upstream_url: &str) -> Location {
        let rest = upstream_url
            .strip_prefix("https://")
            .or_else(|| upstream_url.strip_prefix("http://"))
            .unwrap_or(upstream_url);
        match self {
            Mirror::Upstream => Location::Url(upstream_url.to_string()),
            Mirror::Dir(root) => Location::File(root.join(rest)),
            Mirror::Http(base) => Location::Url(format!("{base}/{rest}")),
        }
    }

    fn manifest_location(&self) -> Option<Location> {
        match self {
            Mirror::Upstream => None,
            Mirror::Dir(root) => Some(Location::File(root.join(MIRROR_MANIFEST))),
            Mirror::Http(base) => Some(Location::Url(format!("{base}/{MIRROR_MANIFEST}"))),
        }
    }
}

pub use super::spec::ArtifactsSpec;

/// Mirror plus the trust decision, from profile and flags.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ArtifactSource {
    pub mirror: Mirror,
    pub trust_mirror_checksums: bool,
}

impl ArtifactSource {
    /// The `--mirror` flag wins over the profile's `artifacts.mirror`; trust is on when either the
    /// profile or the flag says so.
    pub fn from_profile(
        spec: &ArtifactsSpec,
        cli_mirror: Option<&str>,
        cli_trust: bool,
    ) -> Result<ArtifactSource, ArtifactError> {
        Ok(ArtifactSource {
            mirror: Mirror::parse(cli_mirror.or(spec.mirror.as_deref()))?,
            trust_mirror_checksums: cli_trust || spec.trust_mirror_checksums,
        })
    }
}

/// `k8sforge-artifacts.json`: what a mirror carries.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorManifest {
    pub artifacts: Vec<MirrorEntry>,
    /// OCI image archives (pause and add-on images), see `super::images`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub images: Vec<MirrorImage>,
}

/// One image archive of a mirror's list.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorImage {
    /// `pause`, `coredns` or `nvidia-device-plugin`.
    pub name: String,
    /// The image reference inside the archive (what containerd will know it as).
    pub reference: String,
    /// Path of the archive relative to the mirror's root.
    pub file: String,
    pub sha256: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MirrorEntry {
    /// Component name (`etcd`, `containerd`, `runc`, `cni-plugins`, …).
    pub name: String,
    pub version: String,
    /// The upstream URL the file stands for (must match the component's URL for `version`).
    pub url: String,
    pub sha256: String,
}

/// Whose checksum an artifact is verified against.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum DigestSource {
    Pinned,
    Mirror,
}

/// An artifact with its final version, URL and expected digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResolvedArtifact {
    pub component: Component,
    pub version: String,
    pub upstream_url: String,
    pub digest: Digest,
    pub digest_source: DigestSource,
}

impl ResolvedArtifact {
    /// File name of the download (last URL segment).
    pub fn file_name(&self) -> &str {
        self.upstream_url
            .rsplit('/')
            .next()
            .unwrap_or(&self.upstream_url)
    }
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .timeout_connect(Some(Duration::from_secs(20)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// Open a location for reading; `Ok(None)` when it does not exist.
fn open(loc: &Location) -> Result<Option<Box<dyn Read>>, ArtifactError> {
    match loc {
        Location::File(p) => match std::fs::File::open(p) {
            Ok(f) => Ok(Some(Box::new(f))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(source) => Err(ArtifactError::Io {
                path: p.clone(),
                source,
            }),
        },
        Location::Url(u) => match agent().get(u).call() {
            Ok(resp) => Ok(Some(Box::new(resp.into_body().into_reader()))),
            Err(ureq::Error::StatusCode(404)) => Ok(None),
            Err(e) => Err(ArtifactError::Download {
                url: u.clone(),
                reason: e.to_string(),
            }),
        },
    }
}

/// Read and check the mirror's list, if it has one.
pub fn load_manifest(mirror: &Mirror) -> Result<Option<(String, MirrorManifest)>, ArtifactError> {
    let Some(loc) = mirror.manifest_location() else {
        return Ok(None);
    };
    let Some(r) = open(&loc)? else {
        return Ok(None);
    };
    let name = loc.to_string();
    let mut text = String::new();
    r.take(16 << 20)
        .read_to_string(&mut text)
        .map_err(|e| ArtifactError::BadManifest {
            file: name.clone(),
            reason: e.to_string(),
        })?;
    let m: MirrorManifest =
        serde_json::from_str(&text).map_err(|e| ArtifactError::BadManifest {
            file: name.clone(),
            reason: e.to_string(),
        })?;
    Ok(Some((name, m)))
}

/// The artifacts of `components` for `release`, with versions overridden by the mirror's list
/// where it has one, and the digest each must match.
pub fn resolve(
    release: &Release,
    source: &ArtifactSource,
    components: &[Component],
) -> Result<Vec<ResolvedArtifact>, ArtifactError> {
    let manifest = load_manifest(&source.mirror)?;
    let mut out = Vec::new();
    for &c in components {
        let entry = match &manifest {
            Some((file, m)) => {
                // Kubernetes binaries follow the release's version: a mirror may carry several
                // (the running one and an upgrade's target), each its own entry.
                let follows_release = matches!(
                    c,
                    Component::KubernetesServer | Component::Kubelet | Component::Kubectl
                );
                let mut found = m.artifacts.iter().filter(|e| {
                    e.name == c.name() && (!follows_release || e.version == release.kubernetes)
                });
                let first = found.next();
                if found.next().is_some() {
                    return Err(ArtifactError::BadManifest {
                        file: file.clone(),
                        reason: format!("{c} is listed twice"),
                    });
                }
                first.map(|e| (file, e))
            }
            None => None,
        };
        let resolved = match entry {
            None => {
                let version = c.version_in(release).to_string();
                let digest = pins::pinned(c, &version).ok_or_else(|| ArtifactError::NotPinned {
                    component: c.to_string(),
                    version: version.clone(),
                })?;
                ResolvedArtifact {
                    component: c,
                    upstream_url: c.url(&version),
                    version,
                    digest,
                    digest_source: DigestSource::Pinned,
                }
            }
            Some((file, e)) => {
                let url = c.url(&e.version);
                if e.url != url {
                    return Err(ArtifactError::BadManifest {
                        file: file.clone(),
                        reason: format!(
                            "{c} {}: url {} is not the upstream URL {url}",
                            e.version, e.url
                        ),
                    });
                }
                let mirror_digest =
                    Digest::parse(&e.sha256).ok_or_else(|| ArtifactError::BadManifest {
                        file: file.clone(),
                        reason: format!("{c}: sha256 {:?} is not 64 hex digits", e.sha256),
                    })?;
                let (digest, digest_source) = if source.trust_mirror_checksums {
                    tracing::warn!(component = %c, version = %e.version, file = %file,
                        "using the mirror's checksum (trustMirrorChecksums is on)");
                    (mirror_digest, DigestSource::Mirror)
                } else {
                    match pins::pinned(c, &e.version) {
                        Some(d) => (d, DigestSource::Pinned),
                        None => {
                            return Err(ArtifactError::UntrustedMirrorChecksum {
                                file: file.clone(),
                                component: c.to_string(),
                                version: e.version.clone(),
                            })
                        }
                    }
                };
                ResolvedArtifact {
                    component: c,
                    version: e.version.clone(),
                    upstream_url: url,
                    digest,
                    digest_source,
                }
            }
        };
        out.push(resolved);
    }
    Ok(out)
}

/// `$K8SFORGE_HOME/cache`: verified downloads named by their digest.
#[derive(Debug, Clone)]
pub struct Cache {
    pub root: PathBuf,
}

/// A verified file in the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fetched {
    pub path: PathBuf,
    /// True when it was already cached (nothing was read from the source).
    pub hit: bool,
}

enum Hasher {
    Sha256(sha2::Sha256),
    Sha512(sha2::Sha512),
}

impl Hasher {
    fn for_digest(d: &Digest) -> Hasher {
        match d {
            Digest::Sha256(_) => Hasher::Sha256(sha2::Sha256::new()),
            Digest::Sha512(_) => Hasher::Sha512(sha2::Sha512::new()),
        }
    }
    fn update(&mut self, b: &[u8]) {
        match self {
            Hasher::Sha256(h) => h.update(b),
            Hasher::Sha512(h) => h.update(b),
        }
    }
    fn finish(self) -> String {
        match self {
            Hasher::Sha256(h) => hex::encode(h.finalize()),
            Hasher::Sha512(h) => hex::encode(h.finalize()),
        }
    }
}

impl Cache {
    pub fn new(home: &Path) -> Cache {
        Cache {
            root: home.join("cache"),
        }
    }

    pub fn path_for(&self, d: &Digest) -> PathBuf {
        self.root.join(d.hex())
    }

    /// Fetch `art` from `mirror` into the cache, verified. A cached file is used as is: it was
    /// verified before it was renamed into place.
    pub fn fetch(&self, art: &ResolvedArtifact, mirror: &Mirror) -> Result<Fetched, ArtifactError> {
        self.fetch_from(
            &mirror.location(&art.upstream_url),
            &art.digest,
            art.file_name(),
        )
    }

    /// Fetch the file at `loc` (named `name` in messages) into the cache, verified against
    /// `digest`.
    pub fn fetch_from(
        &self,
        loc: &Location,
        digest: &Digest,
        name: &str,
    ) -> Result<Fetched, ArtifactError> {
        let dest = self.path_for(digest);
        if dest.is_file() {
            return Ok(Fetched {
                path: dest,
                hit: true,
            });
        }
        std::fs::create_dir_all(&self.root).map_err(io_err(&self.root))?;
        let mut reader = open(loc)?.ok_or_else(|| ArtifactError::NotInMirror {
            file: name.to_string(),
            location: loc.to_string(),
        })?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".fetch-")
            .tempfile_in(&self.root)
            .map_err(io_err(&self.root))?;
        let mut hasher = Hasher::for_digest(digest);
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf).map_err(|e| ArtifactError::Download {
                url: loc.to_string(),
                reason: e.to_string(),
            })?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            tmp.write_all(&buf[..n]).map_err(io_err(tmp.path()))?;
        }
        let actual = hasher.finish();
        if actual != digest.hex() {
            return Err(ArtifactError::ChecksumMismatch {
                file: format!("{name} ({loc})"),
                expected: digest.to_string(),
                actual: format!("{}:{actual}", digest.algorithm()),
            });
        }
        tmp.as_file().sync_all().map_err(io_err(tmp.path()))?;
        let f = tmp.persist(&dest).map_err(|e| ArtifactError::Io {
            path: dest.clone(),
            source: e.error,
        })?;
        drop(f);
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dest, std::fs::Permissions::from_mode(fsutil::PUBLIC))
            .map_err(io_err(&dest))?;
        tracing::info!(file = name, digest = %digest, "fetched and verified");
        Ok(Fetched {
            path: dest,
            hit: false,
        })
    }
}

/// `release` with each component's version replaced by the one the mirror's list serves (when
/// the source has a list that names it). Versions from a mirror live for the rest of the run, so
/// they are leaked into `&'static str` once per call; a run makes at most a few such calls.
pub fn effective_release(
    release: &Release,
    source: &ArtifactSource,
) -> Result<Release, ArtifactError> {
    let Some((_, manifest)) = load_manifest(&source.mirror)? else {
        return Ok(*release);
    };
    let mut r = *release;
    for e in &manifest.artifacts {
        let v: &'static str = Box::leak(e.version.clone().into_boxed_str());
        match Component::from_name(&e.name) {
            Some(Component::Etcd) => r.etcd = v,
            Some(Component::Containerd) => r.containerd = v,
            Some(Component::Runc) => r.runc = v,
            Some(Component::CniPlugins) => r.cni_plugins = v,
            Some(Component::Crictl) => r.crictl = v,
            // Kubernetes binaries share the profile's version; a mirror cannot change it.
            _ => {}
        }
    }
    Ok(r)
}
