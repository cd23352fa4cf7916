//! `artifacts.registryMirrors` → containerd's registry host configuration: one
//! `/etc/containerd/certs.d/<registry>/hosts.toml` per mirrored registry (containerd's
//! `config_path`), with the mirrors' CA beside it. Credentials become a basic-auth header in the
//! hosts file, so a file that carries them is written 0600 and never logged.
//!
//! containerd reads these files at each pull: changing them restarts nothing.

use base64::Engine as _;

use super::bundle::BundleFile;
use super::RenderError;
use crate::fsutil;
use crate::profile::schema::RegistryMirror;

/// containerd's `config_path` for registry hosts.
pub const CERTS_D: &str = super::paths::CONTAINERD_CERTS_D;
/// The same with a trailing slash (what the runtime phase owns).
pub const CERTS_D_PREFIX: &str = "/etc/containerd/certs.d/";

/// The server an image name's registry stands for (what containerd falls back to).
fn upstream_server(registry: &str) -> String {
    match registry {
        // Docker Hub's registry API is not served at docker.io itself.
        "docker.io" => "https://registry-1.docker.io".to_string(),
        r => format!("https://{r}"),
    }
}

fn toml_str(s: &str) -> String {
    // Endpoints and paths are validated (no quotes or control characters); JSON string
    // escaping is valid TOML basic-string escaping for the rest.
    serde_json::to_string(s).unwrap_or_else(|_| format!("\"{s}\""))
}

fn read(path: &str) -> Result<Vec<u8>, RenderError> {
    std::fs::read(path).map_err(|source| RenderError::Io {
        path: path.into(),
        source,
    })
}

/// The files of every mirrored registry (identical on every node that runs pods).
pub fn files(mirrors: &[RegistryMirror]) -> Result<Vec<BundleFile>, RenderError> {
    let mut out = Vec::new();
    for m in mirrors {
        let dir = format!("{CERTS_D}/{}", m.registry);
        let ca_path = format!("{dir}/ca.crt");
        if let Some(ca) = &m.ca_file {
            out.push(BundleFile {
                path: ca_path.clone(),
                mode: fsutil::PUBLIC,
                owner: super::paths::OWNER.to_string(),
                content: read(ca)?,
                restarts: Vec::new(),
            });
        }
        let auth = match (&m.username, &m.password_file) {
            (Some(user), Some(file)) => {
                let text = String::from_utf8(read(file)?).map_err(|_| RenderError::Io {
                    path: file.into(),
                    source: std::io::Error::new(
                        std::io::ErrorKind::InvalidData,
                        "the password file is not UTF-8",
                    ),
                })?;
                let password = text.lines().next().unwrap_or("").to_string();
                Some(base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}")))
            }
            _ => None,
        };
        let mut s = format!(
            "# Rendered by k8sforge from artifacts.registryMirrors; overwritten on the next `up`.\n\
             # Mirrors of {registry}, tried in order{fallback}.\n",
            registry = m.registry,
            fallback = if m.fallback_to_upstream {
                ", then the registry itself"
            } else {
                "; the registry itself is never contacted"
            },
        );
        // `server` is where containerd goes when every host fails: without fallback, the first
        // mirror again, so no pull leaves the site.
        let server = if m.fallback_to_upstream && m.registry != "_default" {
            Some(upstream_server(&m.registry))
        } else {
            m.endpoints.first().cloned()
        };
        if let Some(server) = server {
            s.push_str(&format!("server = {}\n", toml_str(&server)));
        }
        for e in &m.endpoints {
            s.push_str(&format!(
                "\n[host.{}]\n  capabilities = [\"pull\", \"resolve\"]\n",
                toml_str(e)
            ));
            if m.ca_file.is_some() {
                s.push_str(&format!("  ca = {}\n", toml_str(&ca_path)));
            }
            if m.skip_verify {
                s.push_str("  skip_verify = true\n");
            }
            if let Some(a) = &auth {
                s.push_str(&format!(
                    "  [host.{}.header]\n    Authorization = [\"Basic {a}\"]\n",
                    toml_str(e)
                ));
            }
        }
        out.push(BundleFile {
            path: format!("{dir}/hosts.toml"),
            mode: if auth.is_some() {
                fsutil::SECRET
            } else {
                fsutil::PUBLIC
            },
            owner: super::paths::OWNER.to_string(),
            content: s.into_bytes(),
            restarts: Vec::new(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn mirror(registry: &str, endpoints: &[&str]) -> RegistryMirror {
        RegistryMirror {
            registry: registry.into(),
            endpoints: endpoints.iter().map(|s| s.to_string()).collect(),
            ca_file: None,
            username: None,
            password_file: None,
            skip_verify: false,
            fallback_to_upstream: true,
        }
    }

    #[test]
    fn hosts_toml_lists_mirrors_in_order_with_upstream_fallback() {
        let f = files(&[mirror(
            "docker.io",
            &["https://m1.example:5000", "http://198.18.0.1:5000"],
        )])
        .unwrap();
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].path, "/etc/containerd/certs.d/docker.io/hosts.toml");
        assert_eq!(f[0].mode, fsutil::PUBLIC);
        let text = String::from_utf8(f[0].content.clone()).unwrap();
        assert!(
            text.contains("server = \"https://registry-1.docker.io\""),
            "{text}"
        );
        let a = text.find("[host.\"https://m1.example:5000\"]").unwrap();
        let b = text.find("[host.\"http://198.18.0.1:5000\"]").unwrap();
        assert!(a < b, "{text}");
        assert!(text.contains("capabilities = [\"pull\", \"resolve\"]"));
    }

    #[test]
    fn credentials_make_the_file_secret_and_ca_travels_along() {
        let dir = tempfile::tempdir().unwrap();
        let pw = dir.path().join("pw");
        std::fs::write(&pw, "s3cret\n").unwrap();
        let ca = dir.path().join("ca.pem");
        std::fs::write(&ca, "-----BEGIN CERTIFICATE-----\n").unwrap();
        let mut m = mirror("registry.k8s.io", &["https://m.example"]);
        m.username = Some("puller".into());
        m.password_file = Some(pw.display().to_string());
        m.ca_file = Some(ca.display().to_string());
        m.fallback_to_upstream = false;
        let f = files(&[m]).unwrap();
        let hosts = f.iter().find(|f| f.path.ends_with("hosts.toml")).unwrap();
        assert_eq!(hosts.mode, fsutil::SECRET);
        let text = String::from_utf8(hosts.content.clone()).unwrap();
        // base64("puller:s3cret")
        assert!(
            text.contains("Authorization = [\"Basic cHVsbGVyOnMzY3JldA==\"]"),
            "{text}"
        );
        assert!(text.contains("server = \"https://m.example\""), "{text}");
        assert!(text.contains("ca = \"/etc/containerd/certs.d/registry.k8s.io/ca.crt\""));
        assert!(f
            .iter()
            .any(|f| f.path == "/etc/containerd/certs.d/registry.k8s.io/ca.crt"));
    }
}
