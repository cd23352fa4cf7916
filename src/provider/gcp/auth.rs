//! Credentials for the Compute API: application-default credentials in production, nothing in
//! tests. ADC order, as Google's libraries do it: `GOOGLE_APPLICATION_CREDENTIALS` (service
//! account key → signed JWT exchanged for a token; or an `authorized_user` file → refresh token),
//! then gcloud's `application_default_credentials.json`, then the GCE metadata server.
//! Tokens are cached until shortly before they expire and never logged.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde::Deserialize;
use tokio::sync::Mutex;

const SCOPE: &str = "https://www.googleapis.com/auth/compute";
const DEFAULT_TOKEN_URI: &str = "https://oauth2.googleapis.com/token";
const METADATA_TOKEN_URL: &str =
    "http://169.254.169.254/computeMetadata/v1/instance/service-accounts/default/token";

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("cannot read credentials file {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("credentials file {path} is not valid: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("getting an access token from {url} failed: {reason}")]
    Token { url: String, reason: String },
}

/// Where access tokens come from.
#[derive(Clone)]
pub enum Credentials {
    /// No Authorization header: for a fake or emulator endpoint only.
    Anonymous,
    ServiceAccount(ServiceAccountKey),
    AuthorizedUser(AuthorizedUser),
    /// The GCE metadata server (k8sforge running on a Google Cloud VM).
    Metadata,
}

impl std::fmt::Debug for Credentials {
    // Never print key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Credentials::Anonymous => "Anonymous",
            Credentials::ServiceAccount(_) => "ServiceAccount",
            Credentials::AuthorizedUser(_) => "AuthorizedUser",
            Credentials::Metadata => "Metadata",
        })
    }
}

#[derive(Clone, Deserialize)]
pub struct ServiceAccountKey {
    pub client_email: String,
    pub private_key: String,
    #[serde(default)]
    pub token_uri: Option<String>,
    #[serde(default)]
    pub project_id: Option<String>,
}

#[derive(Clone, Deserialize)]
pub struct AuthorizedUser {
    pub client_id: String,
    pub client_secret: String,
    pub refresh_token: String,
    #[serde(default)]
    pub quota_project_id: Option<String>,
}

#[derive(Deserialize)]
struct CredentialsFile {
    #[serde(rename = "type")]
    kind: String,
}

impl Credentials {
    /// Application-default credentials. Never called in tests (they use `Anonymous`).
    pub fn application_default() -> Result<Credentials, AuthError> {
        if let Some(p) = std::env::var_os("GOOGLE_APPLICATION_CREDENTIALS") {
            return Credentials::from_file(Path::new(&p));
        }
        if let Some(p) = gcloud_adc_path() {
            if p.exists() {
                return Credentials::from_file(&p);
            }
        }
        Ok(Credentials::Metadata)
    }

    pub fn from_file(path: &Path) -> Result<Credentials, AuthError> {
        let bytes = std::fs::read(path).map_err(|source| AuthError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        let invalid = |reason: String| AuthError::Invalid {
            path: path.to_path_buf(),
            reason,
        };
        let head: CredentialsFile =
            serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
        match head.kind.as_str() {
            "service_account" => {
                let key: ServiceAccountKey =
                    serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?;
                // Fail now, not at the first API call, if the key cannot sign.
                pkcs8_der(&key.private_key).map_err(invalid)?;
                Ok(Credentials::ServiceAccount(key))
            }
            "authorized_user" => Ok(Credentials::AuthorizedUser(
                serde_json::from_slice(&bytes).map_err(|e| invalid(e.to_string()))?,
            )),
            other => Err(invalid(format!(
                "credential type {other:?} is not supported (use a service_account key or `gcloud auth application-default login`)"
            ))),
        }
    }

    /// The project a service-account key belongs to, as a last-resort default.
    pub fn project_hint(&self) -> Option<String> {
        match self {
            Credentials::ServiceAccount(k) => k.project_id.clone(),
            Credentials::AuthorizedUser(u) => u.quota_project_id.clone(),
            _ => None,
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

/// Strip PEM armour from a PKCS#8 private key.
fn pkcs8_der(pem: &str) -> Result<Vec<u8>, String> {
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
    Ok(der)
}

fn b64url(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

/// A signed RS256 JWT asserting the service account, for the OAuth2 JWT bearer grant.
fn signed_assertion(key: &ServiceAccountKey, token_uri: &str) -> Result<String, String> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_err(|e| e.to_string())?
        .as_secs();
    let header = serde_json::json!({"alg": "RS256", "typ": "JWT"});
    let claims = serde_json::json!({
        "iss": key.client_email,
        "scope": SCOPE,
        "aud": token_uri,
        "iat": now,
        "exp": now + 3600,
    });
    let signing_input = format!(
        "{}.{}",
        b64url(header.to_string().as_bytes()),
        b64url(claims.to_string().as_bytes())
    );
    let der = pkcs8_der(&key.private_key)?;
    let pair = ring::signature::RsaKeyPair::from_pkcs8(&der).map_err(|e| e.to_string())?;
    let mut sig = vec![0u8; pair.public().modulus_len()];
    pair.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signing_input.as_bytes(),
        &mut sig,
    )
    .map_err(|e| e.to_string())?;
    Ok(format!("{signing_input}.{}", b64url(&sig)))
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
}

/// Hands out bearer tokens, refreshing a minute before expiry.
pub struct TokenSource {
    creds: Credentials,
    cached: Mutex<Option<(String, Instant)>>,
}

impl TokenSource {
    pub fn new(creds: Credentials) -> TokenSource {
        TokenSource {
            creds,
            cached: Mutex::new(None),
        }
    }

    pub fn is_anonymous(&self) -> bool {
        matches!(self.creds, Credentials::Anonymous)
    }

    /// A bearer token, or None for anonymous access.
    pub async fn token(&self, http: &reqwest::Client) -> Result<Option<String>, AuthError> {
        if self.is_anonymous() {
            return Ok(None);
        }
        let mut cached = self.cached.lock().await;
        if let Some((t, until)) = cached.as_ref() {
            if Instant::now() < *until {
                return Ok(Some(t.clone()));
            }
        }
        let (url, req) = match &self.creds {
            Credentials::Anonymous => return Ok(None),
            Credentials::ServiceAccount(key) => {
                let uri = key.token_uri.as_deref().unwrap_or(DEFAULT_TOKEN_URI);
                let assertion = signed_assertion(key, uri).map_err(|reason| AuthError::Token {
                    url: uri.to_string(),
                    reason,
                })?;
                let body = format!(
                    "grant_type={}&assertion={}",
                    urlencoding::encode("urn:ietf:params:oauth:grant-type:jwt-bearer"),
                    assertion
                );
                (
                    uri.to_string(),
                    http.post(uri)
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body(body),
                )
            }
            Credentials::AuthorizedUser(u) => {
                let body = format!(
                    "grant_type=refresh_token&client_id={}&client_secret={}&refresh_token={}",
                    urlencoding::encode(&u.client_id),
                    urlencoding::encode(&u.client_secret),
                    urlencoding::encode(&u.refresh_token)
                );
                (
                    DEFAULT_TOKEN_URI.to_string(),
                    http.post(DEFAULT_TOKEN_URI)
                        .header("content-type", "application/x-www-form-urlencoded")
                        .body(body),
                )
            }
            Credentials::Metadata => (
                METADATA_TOKEN_URL.to_string(),
                http.get(METADATA_TOKEN_URL)
                    .header("Metadata-Flavor", "Google"),
            ),
        };
        let fail = |reason: String| AuthError::Token {
            url: url.clone(),
            reason,
        };
        let resp = req
            .timeout(Duration::from_secs(30))
            .send()
            .await
            .map_err(|e| fail(e.to_string()))?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(|e| fail(e.to_string()))?;
        if !status.is_success() {
            // The body of a failed token call names the problem (e.g. invalid_grant), not secrets.
            return Err(fail(format!(
                "HTTP {status}: {}",
                String::from_utf8_lossy(&bytes)
                    .chars()
                    .take(300)
                    .collect::<String>()
            )));
        }
        let tr: TokenResponse = serde_json::from_slice(&bytes).map_err(|e| fail(e.to_string()))?;
        let life = Duration::from_secs(tr.expires_in.unwrap_or(3600).saturating_sub(60));
        *cached = Some((tr.access_token.clone(), Instant::now() + life));
        Ok(Some(tr.access_token))
    }
}
