//! A small client of the OCI distribution API (what `k8sforge mirror` pulls images with): GET
//! manifests and blobs by digest, with the registry's token dance (`WWW-Authenticate: Bearer
//! realm=…,service=…,scope=…`) or basic credentials, every byte checked against its digest.
//! Mirrors from `artifacts.registryMirrors` are tried first, as containerd does on the nodes.

use std::io::{Read, Write};
use std::path::Path;
use std::time::Duration;

use sha2::Digest as _;

use crate::artifacts::spec::RegistryMirror;

/// Manifest media types we accept (OCI and Docker, single and multi-platform).
pub const MANIFEST_ACCEPT: &str = "application/vnd.oci.image.index.v1+json, \
     application/vnd.docker.distribution.manifest.list.v2+json, \
     application/vnd.oci.image.manifest.v1+json, \
     application/vnd.docker.distribution.manifest.v2+json";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("image {reference}: {what} from {endpoint}: {reason}")]
    Fetch {
        reference: String,
        what: String,
        endpoint: String,
        reason: String,
    },
    #[error("image {reference}: {what} from {endpoint}: digest mismatch: expected {expected}, got {actual} (a moved tag or a mirror serving other bytes); nothing was kept")]
    DigestMismatch {
        reference: String,
        what: String,
        endpoint: String,
        expected: String,
        actual: String,
    },
    #[error("image reference {0:?} is not pinned by digest (name[:tag]@sha256:<64 hex>)")]
    NotPinned(String),
    #[error("image {reference}: {reason}")]
    Manifest { reference: String, reason: String },
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// `registry.k8s.io/pause:3.9@sha256:…` split as the distribution API needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageName {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: String,
}

impl ImageName {
    pub fn parse(reference: &str) -> Result<ImageName, RegistryError> {
        let (name, digest) = reference
            .rsplit_once('@')
            .filter(|(_, d)| d.starts_with("sha256:") && d.len() == 71)
            .ok_or_else(|| RegistryError::NotPinned(reference.to_string()))?;
        let (registry, rest) = match name.split_once('/') {
            Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
                (first.to_string(), rest.to_string())
            }
            _ => ("docker.io".to_string(), name.to_string()),
        };
        let (repository, tag) = match rest.rsplit_once(':') {
            Some((r, t)) if !t.contains('/') => (r.to_string(), Some(t.to_string())),
            _ => (rest, None),
        };
        let repository = if registry == "docker.io" && !repository.contains('/') {
            format!("library/{repository}")
        } else {
            repository
        };
        Ok(ImageName {
            registry,
            repository,
            tag,
            digest: digest.to_string(),
        })
    }

    /// `registry/repository[:tag]`, the name an archive gives the image.
    pub fn tagged(&self) -> String {
        match &self.tag {
            Some(t) => format!("{}/{}:{t}", self.registry, self.repository),
            None => format!("{}/{}", self.registry, self.repository),
        }
    }
}

/// One place to pull from: a mirror or the registry itself.
#[derive(Debug, Clone)]
pub struct Endpoint {
    /// Base URL, e.g. `http://127.0.0.1:5000` (the API is under `/v2/`).
    pub base: String,
    pub basic: Option<(String, String)>,
}

/// Where `registry` is pulled from: its mirrors (or `_default`'s), then the registry itself
/// unless the mirror entry forbids the fallback.
pub fn endpoints(
    registry: &str,
    mirrors: &[RegistryMirror],
) -> Result<Vec<Endpoint>, RegistryError> {
    let entry = mirrors
        .iter()
        .find(|m| m.registry == registry)
        .or_else(|| mirrors.iter().find(|m| m.registry == "_default"));
    let mut out = Vec::new();
    let mut fallback = true;
    if let Some(m) = entry {
        let basic = match (&m.username, &m.password_file) {
            (Some(u), Some(f)) => {
                let text = std::fs::read_to_string(f).map_err(|source| RegistryError::Io {
                    path: f.into(),
                    source,
                })?;
                Some((u.clone(), text.lines().next().unwrap_or("").to_string()))
            }
            _ => None,
        };
        for e in &m.endpoints {
            out.push(Endpoint {
                base: e.trim_end_matches('/').trim_end_matches("/v2").to_string(),
                basic: basic.clone(),
            });
        }
        fallback = m.fallback_to_upstream;
    }
    if fallback {
        out.push(Endpoint {
            base: match registry {
                "docker.io" => "https://registry-1.docker.io".to_string(),
                r => format!("https://{r}"),
            },
            basic: None,
        });
    }
    Ok(out)
}

fn agent() -> ureq::Agent {
    ureq::Agent::config_builder()
        .http_status_as_error(false)
        .timeout_connect(Some(Duration::from_secs(15)))
        .timeout_per_read(Some(Duration::from_secs(60)))
        .build()
        .into()
}

/// `key="value"` pairs of a `WWW-Authenticate: Bearer …` challenge.
fn challenge_params(h: &str) -> Vec<(String, String)> {
    let rest = h.trim_start_matches("Bearer").trim_start_matches("bearer");
    let mut out = Vec::new();
    for part in rest.split(',') {
        if let Some((k, v)) = part.trim().split_once('=') {
            out.push((k.trim().to_string(), v.trim().trim_matches('"').to_string()));
        }
    }
    out
}

/// A session with one endpoint for one repository (the token is per repository scope).
pub struct Session<'a> {
    agent: ureq::Agent,
    endpoint: &'a Endpoint,
    image: &'a ImageName,
    reference: &'a str,
    auth: Option<String>,
}

impl<'a> Session<'a> {
    pub fn new(endpoint: &'a Endpoint, image: &'a ImageName, reference: &'a str) -> Session<'a> {
        let auth = endpoint.basic.as_ref().map(|(u, p)| {
            use base64::Engine as _;
            format!(
                "Basic {}",
                base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
            )
        });
        Session {
            agent: agent(),
            endpoint,
            image,
            reference,
            auth,
        }
    }

    pub fn endpoint(&self) -> &str {
        &self.endpoint.base
    }

    fn err(&self, what: &str, reason: impl Into<String>) -> RegistryError {
        RegistryError::Fetch {
            reference: self.reference.to_string(),
            what: what.to_string(),
            endpoint: self.endpoint.base.clone(),
            reason: reason.into(),
        }
    }

    fn token(&self, challenge: &str, what: &str) -> Result<String, RegistryError> {
        let params = challenge_params(challenge);
        let get = |k: &str| {
            params
                .iter()
                .find(|(key, _)| key == k)
                .map(|(_, v)| v.clone())
        };
        let realm = get("realm").ok_or_else(|| {
            self.err(
                what,
                format!("401 with a challenge without realm: {challenge}"),
            )
        })?;
        let mut url = format!("{realm}?");
        if let Some(s) = get("service") {
            url.push_str(&format!("service={}&", urlencoding::encode(&s)));
        }
        let scope =
            get("scope").unwrap_or_else(|| format!("repository:{}:pull", self.image.repository));
        url.push_str(&format!("scope={}", urlencoding::encode(&scope)));
        let mut req = self.agent.get(&url);
        if let Some((u, p)) = &self.endpoint.basic {
            use base64::Engine as _;
            req = req.header(
                "Authorization",
                format!(
                    "Basic {}",
                    base64::engine::general_purpose::STANDARD.encode(format!("{u}:{p}"))
                ),
            );
        }
        let resp = req
            .call()
            .map_err(|e| self.err(what, format!("token from {realm}: {e}")))?;
        if resp.status().as_u16() != 200 {
            return Err(self.err(
                what,
                format!(
                    "the token service {realm} answered {} (credentials refused)",
                    resp.status()
                ),
            ));
        }
        let body = resp
            .into_body()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()
            .map_err(|e| self.err(what, format!("token from {realm}: {e}")))?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .map_err(|e| self.err(what, format!("token from {realm}: {e}")))?;
        v["token"]
            .as_str()
            .or_else(|| v["access_token"].as_str())
            .map(|t| format!("Bearer {t}"))
            .ok_or_else(|| self.err(what, format!("token service {realm} returned no token")))
    }

    /// GET `/v2/<repo>/<kind>/<digest>`, authenticating once on 401.
    fn get(
        &mut self,
        kind: &str,
        digest: &str,
        what: &str,
    ) -> Result<ureq::http::Response<ureq::Body>, RegistryError> {
        let url = format!(
            "{}/v2/{}/{kind}/{digest}",
            self.endpoint.base, self.image.repository
        );
        for attempt in 0..2 {
            let mut req = self.agent.get(&url).header("Accept", MANIFEST_ACCEPT);
            if let Some(a) = &self.auth {
                req = req.header("Authorization", a);
            }
            let resp = req.call().map_err(|e| self.err(what, e.to_string()))?;
            match resp.status().as_u16() {
                200 => return Ok(resp),
                401 if attempt == 0 => {
                    let challenge = resp
                        .headers()
                        .get("www-authenticate")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or("")
                        .to_string();
                    if challenge.to_ascii_lowercase().starts_with("bearer") {
                        self.auth = Some(self.token(&challenge, what)?);
                    } else if self.auth.is_none() {
                        return Err(self.err(
                            what,
                            "401 Unauthorized: the registry wants credentials (set username and \
                             passwordFile in artifacts.registryMirrors)",
                        ));
                    } else {
                        return Err(self.err(what, "401 Unauthorized: credentials refused"));
                    }
                }
                401 => return Err(self.err(what, "401 Unauthorized: credentials refused")),
                404 => {
                    return Err(self.err(
                        what,
                        format!("404 Not Found: the registry has no {kind} with digest {digest}"),
                    ))
                }
                s => return Err(self.err(what, format!("HTTP {s}"))),
            }
        }
        Err(self.err(what, "authentication failed"))
    }

    /// The manifest (or index) with `digest`, verified. Returns (media type, bytes).
    pub fn manifest(&mut self, digest: &str) -> Result<(String, Vec<u8>), RegistryError> {
        let what = format!("manifest {digest}");
        let resp = self.get("manifests", digest, &what)?;
        let media = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .split(';')
            .next()
            .unwrap_or("")
            .trim()
            .to_string();
        let body = resp
            .into_body()
            .with_config()
            .limit(4 << 20)
            .read_to_vec()
            .map_err(|e| self.err(&what, e.to_string()))?;
        let actual = format!("sha256:{}", hex::encode(sha2::Sha256::digest(&body)));
        if actual != digest {
            return Err(RegistryError::DigestMismatch {
                reference: self.reference.to_string(),
                what,
                endpoint: self.endpoint.base.clone(),
                expected: digest.to_string(),
                actual,
            });
        }
        // The body's own mediaType wins over the header (some registries answer generically).
        let v: serde_json::Value =
            serde_json::from_slice(&body).map_err(|e| RegistryError::Manifest {
                reference: self.reference.to_string(),
                reason: format!("manifest {digest} is not JSON: {e}"),
            })?;
        let media = v["mediaType"].as_str().map(str::to_string).unwrap_or(media);
        Ok((media, body))
    }

    /// Stream the blob with `digest` into `dest` (temp file, verified, renamed). Returns bytes.
    pub fn blob(&mut self, digest: &str, dest: &Path) -> Result<u64, RegistryError> {
        let what = format!("blob {digest}");
        let resp = self.get("blobs", digest, &what)?;
        let dir = dest.parent().unwrap_or(Path::new("."));
        let io = |source| RegistryError::Io {
            path: dest.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(dir).map_err(io)?;
        let mut tmp = tempfile::Builder::new()
            .prefix(".blob-")
            .tempfile_in(dir)
            .map_err(io)?;
        let mut reader = resp.into_body().into_reader();
        let mut h = sha2::Sha256::new();
        let mut buf = vec![0u8; 1 << 20];
        let mut total = 0u64;
        loop {
            let n = reader
                .read(&mut buf)
                .map_err(|e| self.err(&what, e.to_string()))?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
            tmp.write_all(&buf[..n]).map_err(io)?;
            total += n as u64;
        }
        let actual = format!("sha256:{}", hex::encode(h.finalize()));
        if actual != digest {
            return Err(RegistryError::DigestMismatch {
                reference: self.reference.to_string(),
                what,
                endpoint: self.endpoint.base.clone(),
                expected: digest.to_string(),
                actual,
            });
        }
        tmp.persist(dest).map_err(|e| io(e.error))?;
        Ok(total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_split_like_the_distribution_api() {
        let d = format!("sha256:{}", "a".repeat(64));
        let n = ImageName::parse(&format!("registry.k8s.io/coredns/coredns:v1.12.1@{d}")).unwrap();
        assert_eq!(
            (n.registry.as_str(), n.repository.as_str(), n.tag.as_deref()),
            ("registry.k8s.io", "coredns/coredns", Some("v1.12.1"))
        );
        assert_eq!(n.tagged(), "registry.k8s.io/coredns/coredns:v1.12.1");
        let n = ImageName::parse(&format!("busybox@{d}")).unwrap();
        assert_eq!(
            (n.registry.as_str(), n.repository.as_str()),
            ("docker.io", "library/busybox")
        );
        let n = ImageName::parse(&format!("127.0.0.1:5000/x:1@{d}")).unwrap();
        assert_eq!(n.registry, "127.0.0.1:5000");
        assert!(ImageName::parse("registry.k8s.io/pause:3.9").is_err());
    }

    #[test]
    fn bearer_challenges_parse() {
        let p = challenge_params(
            r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:x:pull""#,
        );
        assert_eq!(p[0], ("realm".into(), "https://auth.example/token".into()));
        assert_eq!(p[2].1, "repository:x:pull");
    }
}
