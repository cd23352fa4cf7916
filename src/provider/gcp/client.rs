//! A small Compute Engine v1 REST client: JSON over HTTPS, retries with jittered exponential
//! backoff on rate limits and 5xx, long-running operations waited on with `operations.wait`,
//! paginated lists, and a per-method call count (for the benchmarks and the batching proof).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rand::Rng;
use reqwest::Method;
use serde::de::DeserializeOwned;
use serde::Serialize;

use super::auth::{AuthError, TokenSource};
use super::names::last_segment;
use super::types::{ErrorBody, ListPage, Operation};

pub const DEFAULT_ENDPOINT: &str = "https://compute.googleapis.com/compute/v1/";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{method} {path}: HTTP {code}: {message}{}", reason_suffix(.reasons))]
    Status {
        method: String,
        path: String,
        code: u16,
        message: String,
        reasons: Vec<String>,
    },
    #[error("{method} {path}: {source}")]
    Transport {
        method: String,
        path: String,
        source: reqwest::Error,
    },
    #[error("{method} {path}: unexpected response: {reason}")]
    Decode {
        method: String,
        path: String,
        reason: String,
    },
    #[error("operation {name} ({kind} on {target}) failed: {}", .errors.join("; "))]
    Operation {
        name: String,
        kind: String,
        target: String,
        errors: Vec<String>,
    },
    #[error(transparent)]
    Auth(#[from] AuthError),
}

fn reason_suffix(reasons: &[String]) -> String {
    if reasons.is_empty() {
        String::new()
    } else {
        format!(" ({})", reasons.join(", "))
    }
}

impl ApiError {
    pub fn is_not_found(&self) -> bool {
        matches!(self, ApiError::Status { code: 404, .. })
    }

    /// Rate limits and server-side failures are worth another try; nothing else is.
    fn is_retryable(&self) -> bool {
        match self {
            ApiError::Status { code, reasons, .. } => {
                *code == 429
                    || *code >= 500
                    || (*code == 403
                        && reasons
                            .iter()
                            .any(|r| r == "rateLimitExceeded" || r == "userRateLimitExceeded"))
            }
            ApiError::Transport { source, .. } => source.is_connect() || source.is_timeout(),
            _ => false,
        }
    }
}

/// Backoff for retried calls: `base * 2^attempt`, capped, with full jitter.
#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub attempts: u32,
    pub base: Duration,
    pub max: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            attempts: 8,
            base: Duration::from_millis(500),
            max: Duration::from_secs(32),
        }
    }
}

impl RetryPolicy {
    fn delay(&self, attempt: u32) -> Duration {
        let exp = self
            .base
            .saturating_mul(1u32.checked_shl(attempt).unwrap_or(u32::MAX))
            .min(self.max);
        let ms = exp.as_millis().max(1) as u64;
        Duration::from_millis(rand::thread_rng().gen_range(ms / 2..=ms))
    }
}

/// Where a long-running operation lives.
#[derive(Debug, Clone, PartialEq, Eq)]
enum OpScope {
    Global,
    Region(String),
    Zone(String),
}

#[derive(Clone)]
pub struct Compute {
    http: reqwest::Client,
    base: String,
    pub project: String,
    auth: Arc<TokenSource>,
    retry: RetryPolicy,
    calls: Arc<Mutex<BTreeMap<String, u64>>>,
    /// `(kind, name)` of everything created through this client, in order.
    created: Arc<Mutex<Vec<(String, String)>>>,
}

impl Compute {
    /// `endpoint` is the API root (`.../compute/v1/`); a bare host URL gets `compute/v1/` added.
    pub fn new(
        endpoint: &str,
        project: &str,
        auth: TokenSource,
        retry: RetryPolicy,
    ) -> Result<Compute, reqwest::Error> {
        let mut base = endpoint.trim_end_matches('/').to_string();
        if !base.ends_with("/compute/v1") {
            base.push_str("/compute/v1");
        }
        base.push('/');
        let http = reqwest::Client::builder()
            .user_agent(concat!("k8sforge/", env!("CARGO_PKG_VERSION")))
            .timeout(Duration::from_secs(180))
            .pool_max_idle_per_host(64)
            .build()?;
        Ok(Compute {
            http,
            base,
            project: project.to_string(),
            auth: Arc::new(auth),
            retry,
            calls: Arc::new(Mutex::new(BTreeMap::new())),
            created: Arc::default(),
        })
    }

    /// Calls made so far, by API method id (e.g. `compute.instances.bulkInsert`), retries included.
    pub fn call_counts(&self) -> BTreeMap<String, u64> {
        self.calls.lock().map(|c| c.clone()).unwrap_or_default()
    }

    /// Record a resource this run created (for the provision summary).
    pub fn note_created(&self, kind: &str, name: &str) {
        if let Ok(mut v) = self.created.lock() {
            v.push((kind.to_string(), name.to_string()));
        }
    }

    pub fn created_list(&self) -> Vec<(String, String)> {
        self.created.lock().map(|v| v.clone()).unwrap_or_default()
    }

    /// Relative path of a project-scoped resource: `projects/<project>/<rest>`.
    pub fn path(&self, rest: &str) -> String {
        if rest.is_empty() {
            format!("projects/{}", self.project)
        } else {
            format!("projects/{}/{rest}", self.project)
        }
    }

    /// Full URL of a project-scoped resource (what the API wants in reference fields).
    pub fn url(&self, rest: &str) -> String {
        format!("{}{}", self.base, self.path(rest))
    }

    fn count(&self, method_id: &str) {
        if let Ok(mut c) = self.calls.lock() {
            *c.entry(method_id.to_string()).or_insert(0) += 1;
        }
    }

    /// One API call with retries. `path` is relative to the API root.
    pub async fn call<B: Serialize + ?Sized, R: DeserializeOwned>(
        &self,
        method_id: &str,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&B>,
    ) -> Result<R, ApiError> {
        let body_bytes = match body {
            Some(b) => Some(serde_json::to_vec(b).map_err(|e| ApiError::Decode {
                method: method.to_string(),
                path: path.to_string(),
                reason: e.to_string(),
            })?),
            None => None,
        };
        let mut attempt = 0;
        loop {
            self.count(method_id);
            match self
                .once(method.clone(), path, query, body_bytes.as_deref())
                .await
            {
                Err(e) if e.is_retryable() && attempt + 1 < self.retry.attempts => {
                    let wait = self.retry.delay(attempt);
                    tracing::debug!("{method_id}: {e}; retrying in {wait:?}");
                    tokio::time::sleep(wait).await;
                    attempt += 1;
                }
                other => return other,
            }
        }
    }

    async fn once<R: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        body: Option<&[u8]>,
    ) -> Result<R, ApiError> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method.clone(), &url).query(query);
        if let Some(token) = self.auth.token(&self.http).await? {
            req = req.bearer_auth(token);
        }
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_vec());
        }
        let transport = |source| ApiError::Transport {
            method: method.to_string(),
            path: path.to_string(),
            source,
        };
        let resp = req.send().await.map_err(transport)?;
        let status = resp.status();
        let bytes = resp.bytes().await.map_err(transport)?;
        if !status.is_success() {
            let parsed: Option<ErrorBody> = serde_json::from_slice(&bytes).ok();
            let (message, reasons) = match parsed {
                Some(e) => (
                    e.error.message,
                    e.error.errors.into_iter().map(|i| i.reason).collect(),
                ),
                None => (
                    String::from_utf8_lossy(&bytes).chars().take(300).collect(),
                    Vec::new(),
                ),
            };
            return Err(ApiError::Status {
                method: method.to_string(),
                path: path.to_string(),
                code: status.as_u16(),
                message,
                reasons,
            });
        }
        serde_json::from_slice(&bytes).map_err(|e| ApiError::Decode {
            method: method.to_string(),
            path: path.to_string(),
            reason: e.to_string(),
        })
    }

    pub async fn get<R: DeserializeOwned>(
        &self,
        method_id: &str,
        rest: &str,
    ) -> Result<R, ApiError> {
        self.call::<(), R>(method_id, Method::GET, &self.path(rest), &[], None)
            .await
    }

    /// GET that maps 404 to None.
    pub async fn get_opt<R: DeserializeOwned>(
        &self,
        method_id: &str,
        rest: &str,
    ) -> Result<Option<R>, ApiError> {
        match self.get(method_id, rest).await {
            Ok(r) => Ok(Some(r)),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Every item of a list, following `nextPageToken`.
    pub async fn list_all<T: DeserializeOwned>(
        &self,
        method_id: &str,
        rest: &str,
        filter: Option<&str>,
    ) -> Result<Vec<T>, ApiError> {
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut q: Vec<(&str, &str)> = vec![("maxResults", "500")];
            if let Some(f) = filter {
                q.push(("filter", f));
            }
            if let Some(t) = &token {
                q.push(("pageToken", t));
            }
            let page: ListPage<T> = self
                .call::<(), _>(method_id, Method::GET, &self.path(rest), &q, None)
                .await?;
            out.extend(page.items);
            match page.next_page_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => return Ok(out),
            }
        }
    }

    /// Start a mutation (insert/delete/…) with a fresh `requestId`, so a retried call after a
    /// lost response is de-duplicated by the API instead of creating twice.
    pub async fn mutate<B: Serialize + ?Sized>(
        &self,
        method_id: &str,
        method: Method,
        rest: &str,
        body: Option<&B>,
    ) -> Result<Operation, ApiError> {
        let request_id = request_id();
        self.call(
            method_id,
            method,
            &self.path(rest),
            &[("requestId", request_id.as_str())],
            body,
        )
        .await
    }

    /// Wait for an operation with `operations.wait` (the server holds the call until done or
    /// about two minutes pass); returns the finished operation, error or not.
    pub async fn wait_raw(&self, op: Operation) -> Result<Operation, ApiError> {
        let mut op = op;
        while !op.is_done() {
            let scope = match (&op.zone, &op.region) {
                (Some(z), _) if !z.is_empty() => OpScope::Zone(last_segment(z).to_string()),
                (_, Some(r)) if !r.is_empty() => OpScope::Region(last_segment(r).to_string()),
                _ => OpScope::Global,
            };
            let (id, rest) = match &scope {
                OpScope::Zone(z) => (
                    "compute.zoneOperations.wait",
                    format!("zones/{z}/operations/{}/wait", op.name),
                ),
                OpScope::Region(r) => (
                    "compute.regionOperations.wait",
                    format!("regions/{r}/operations/{}/wait", op.name),
                ),
                OpScope::Global => (
                    "compute.globalOperations.wait",
                    format!("global/operations/{}/wait", op.name),
                ),
            };
            op = self
                .call::<(), _>(id, Method::POST, &self.path(&rest), &[], None)
                .await?;
        }
        Ok(op)
    }

    /// Wait and turn an operation error into `ApiError::Operation`.
    pub async fn wait(&self, op: Operation) -> Result<Operation, ApiError> {
        let op = self.wait_raw(op).await?;
        match &op.error {
            Some(e) if !e.errors.is_empty() => Err(ApiError::Operation {
                name: op.name.clone(),
                kind: op.operation_type.clone(),
                target: last_segment(&op.target_link).to_string(),
                errors: e
                    .errors
                    .iter()
                    .map(|i| format!("{}: {}", i.code, i.message))
                    .collect(),
            }),
            _ => Ok(op),
        }
    }
}

/// A random UUID (v4 layout) from the OS RNG, as the API's `requestId` wants.
fn request_id() -> String {
    let mut b = [0u8; 16];
    rand::rngs::OsRng.fill(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h = hex::encode(b);
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn request_ids_are_uuids() {
        let a = request_id();
        assert_eq!(a.len(), 36);
        assert_eq!(&a[14..15], "4");
        assert_ne!(a, request_id());
    }

    #[test]
    fn backoff_grows_and_caps() {
        let p = RetryPolicy {
            attempts: 5,
            base: Duration::from_millis(100),
            max: Duration::from_millis(400),
        };
        assert!(p.delay(0) <= Duration::from_millis(100));
        assert!(p.delay(10) <= Duration::from_millis(400));
        assert!(p.delay(10) >= Duration::from_millis(200));
    }
}
