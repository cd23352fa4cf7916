//! Credentials for the Compute API, made by `google-cloud-auth`: a service-account key, an
//! authorized-user file (`gcloud auth application-default login`), an `external_account` file
//! (workload identity federation) or an `impersonated_service_account` file; without a file,
//! the library's application-default chain (gcloud's file, then the metadata server). Tokens
//! are fetched, cached and refreshed by the library and never logged. What stays here: picking
//! the file (`GOOGLE_APPLICATION_CREDENTIALS`, then gcloud's), errors that name the file, and
//! the project a key file names as a last-resort default.

use std::path::{Path, PathBuf};

use google_cloud_auth::credentials::{
    self as gauth, anonymous, external_account, impersonated, service_account, user_account,
};

/// Compute Engine read/write; nothing broader is asked for.
pub const SCOPE: &str = "https://www.googleapis.com/auth/compute";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read credentials file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("credentials file {path} is not valid: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("application-default credentials: {0}")]
    Adc(String),
}

/// Where access tokens come from.
#[derive(Clone)]
pub enum Credentials {
    /// No Authorization header: for a fake or emulator endpoint only.
    Anonymous,
    /// Credentials built by `google-cloud-auth`.
    Google {
        kind: &'static str,
        creds: gauth::Credentials,
        /// `project_id` (service account) or `quota_project_id` from the file.
        project: Option<String>,
    },
}

impl std::fmt::Debug for Credentials {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credentials::Anonymous => "Anonymous",
            Credentials::Google { kind, .. } => kind,
        })
    }
}

/// The library's TLS and key signing use the process-wide rustls provider: ring, the one
/// already in the tree. Called before any credential or client is built; an error only means
/// one is installed already.
pub fn install_crypto() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

impl Credentials {
    /// Application-default credentials. Never called in tests (they use `Anonymous` or a file).
    pub fn application_default() -> Result<Credentials, AuthError> {
        install_crypto();
        if let Some(p) = std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS") {
            return Credentials::from_file(Path::new(&p));
        }
        if let Some(p) = gcloud_adc_path() {
            if p.exists() {
                return Credentials::from_file(&p);
            }
        }
        // The library's chain ends at the metadata server (k8sforge on a Google Cloud VM).
        let creds = gauth::Builder::default()
            .with_scopes([SCOPE])
            .build()
            .map_err(|e| AuthError::Adc(e.to_string()))?;
        Ok(Credentials::Google {
            kind: "Metadata",
            creds,
            project: None,
        })
    }

    pub fn from_file(path: &Path) -> Result<Credentials, AuthError> {
        install_crypto();
        let bytes = std::fs::read(path).map_err(|source| AuthError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |reason: String| AuthError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let json: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        let field = |k: &str| json.get(k).and_then(|v| v.as_str()).map(str::to_string);
        let kind = field("type").ok_or_else(|| invalid("no `type` field".into()))?;
        let (kind, built, project) = match kind.as_str() {
            "service_account" => {
                // Fail now, not at the first API call, if the key cannot sign.
                let pem = field("private_key").ok_or_else(|| invalid("no private_key".into()))?;
                check_pkcs8(&pem).map_err(&invalid)?;
                (
                    "ServiceAccount",
                    service_account::Builder::new(json.clone())
                        .with_access_specifier(service_account::AccessSpecifier::from_scopes([
                            SCOPE,
                        ]))
                        .build(),
                    field("project_id"),
                )
            }
            "authorized_user" => (
                "AuthorizedUser",
                user_account::Builder::new(json.clone())
                    .with_scopes([SCOPE])
                    .build(),
                field("quota_project_id"),
            ),
            "external_account" => (
                "ExternalAccount",
                external_account::Builder::new(json.clone())
                    .with_scopes([SCOPE])
                    .build(),
                field("quota_project_id"),
            ),
            "impersonated_service_account" => (
                "ImpersonatedServiceAccount",
                impersonated::Builder::new(json.clone())
                    .with_scopes([SCOPE])
                    .build(),
                field("quota_project_id"),
            ),
            other => {
                return Err(invalid(format!(
                    "credential type {other:?} is not supported (use a service_account key, an authorized_user file from `gcloud auth application-default login`, an external_account file or an impersonated_service_account file)"
                )))
            }
        };
        let creds = built.map_err(|e| invalid(e.to_string()))?;
        Ok(Credentials::Google {
            kind,
            creds,
            project,
        })
    }

    /// The project a credentials file names, as a last-resort default.
    pub fn project_hint(&self) -> Option<String> {
        match self {
            Credentials::Google { project, .. } => project.clone(),
            Credentials::Anonymous => None,
        }
    }

    /// What the library clients are built with.
    pub fn library(&self) -> gauth::Credentials {
        match self {
            Credentials::Anonymous => anonymous::Builder::new().build(),
            Credentials::Google { creds, .. } => creds.clone(),
        }
    }
}

fn gcloud_adc_path() -> Option<PathBuf> {
    let base = match std::env::var_os("CLOUDSDK_CONFIG") {
        Some(d) => PathBuf::from(d),
        None => PathBuf::from(std::env::var_os("HOME")?).join(".config/gcloud"),
    };
    Some(base.join("application_default_credentials.json"))
}

/// The key must be an RSA PKCS#8 PEM, as Google issues them.
fn check_pkcs8(pem: &str) -> Result<(), String> {
    use base64::Engine;
    let body: String = pem
        .lines()
        .filter(|l| !l.starts_with("-----"))
        .collect::<Vec<_>>()
        .concat();
    let der = base64::engine::general_purpose::STANDARD
        .decode(body.trim())
        .map_err(|e| format!("private_key is not PEM: {e}"))?;
    ring::signature::RsaKeyPair::from_pkcs8(&der)
        .map_err(|e| format!("private_key is not an RSA PKCS#8 key: {e}"))?;
    Ok(())
}
