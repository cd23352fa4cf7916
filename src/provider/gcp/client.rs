//! Compute Engine through Google's client library (`google-cloud-compute-v1`). What is ours
//! here is only the glue: one library client per service, built on first use against the
//! configured endpoint with the configured credentials; the library's retry loop, back-off and
//! operation poller, configured per request so that every attempt and every poll is counted by
//! API method id (the benchmarks and the batching tests read these counts); and errors turned
//! into plain words.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use google_cloud_compute_v1::client;
use google_cloud_compute_v1::model::Operation;
use google_cloud_gax::error::rpc::StatusDetails;
use google_cloud_gax::error::Error as LibError;
use google_cloud_gax::exponential_backoff::{ExponentialBackoff, ExponentialBackoffBuilder};
use google_cloud_gax::options::RequestOptionsBuilder;
use google_cloud_gax::polling_backoff_policy::PollingBackoffPolicy;
use google_cloud_gax::polling_error_policy::PollingErrorPolicy;
use google_cloud_gax::polling_state::PollingState;
use google_cloud_gax::retry_policy::RetryPolicy as LibRetryPolicy;
use google_cloud_gax::retry_result::RetryResult;
use google_cloud_gax::retry_state::RetryState;
use google_cloud_gax::retry_throttler::RetryThrottler;
use rand::Rng;
use tokio::sync::OnceCell;

use super::auth::Credentials;
use super::names::last_segment;

pub const DEFAULT_ENDPOINT: &str = "https://compute.googleapis.com/compute/v1/";

/// Where a long-running operation lives: the poller asks that scope's `operations.get`.
pub const GLOBAL_OPS: &str = "compute.globalOperations.get";
pub const REGION_OPS: &str = "compute.regionOperations.get";
pub const ZONE_OPS: &str = "compute.zoneOperations.get";

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{method} {target}: HTTP {code}: {message}{}", reason_suffix(.reasons))]
    Status {
        method: String,
        target: String,
        code: u16,
        message: String,
        reasons: Vec<String>,
    },
    #[error("{method} {target}: {reason}")]
    Transport {
        method: String,
        target: String,
        reason: String,
    },
    #[error("operation {name} ({kind} on {target}) failed: {}", .errors.join("; "))]
    Operation {
        name: String,
        kind: String,
        target: String,
        errors: Vec<String>,
    },
    #[error("cannot set up the Compute client for {service}: {reason}")]
    Setup {
        service: &'static str,
        reason: String,
    },
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
}

/// `ErrorInfo` reasons of a failed call (e.g. `RATE_LIMIT_EXCEEDED`).
fn reasons(e: &LibError) -> Vec<String> {
    e.status()
        .map(|s| {
            s.details
                .iter()
                .filter_map(|d| match d {
                    StatusDetails::ErrorInfo(i) => Some(i.reason.clone()),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default()
}

/// Rate limits and server-side failures are worth another try; nothing else is. Compute
/// answers some rate limits with 403, told apart by the reason.
fn retryable(e: &LibError) -> bool {
    match e.http_status_code() {
        Some(code) => {
            code == 429
                || code >= 500
                || (code == 403
                    && reasons(e).iter().any(|r| {
                        matches!(
                            r.as_str(),
                            "RATE_LIMIT_EXCEEDED" | "rateLimitExceeded" | "userRateLimitExceeded"
                        )
                    }))
        }
        None => e.is_connect() || e.is_timeout() || e.is_transient_and_before_rpc(),
    }
}

/// Turn a library error into plain words naming the method and the resource.
pub fn api_error(method: &str, target: &str, e: LibError) -> ApiError {
    if let Some(code) = e.http_status_code() {
        let message = match (e.status(), e.http_payload()) {
            (Some(s), _) => s.message.clone(),
            (None, Some(p)) => String::from_utf8_lossy(p).chars().take(300).collect(),
            (None, None) => e.to_string(),
        };
        return ApiError::Status {
            method: method.to_string(),
            target: target.to_string(),
            code,
            message,
            reasons: reasons(&e),
        };
    }
    let reason = if e.is_authentication() {
        format!("getting an access token failed: {e}")
    } else {
        e.to_string()
    };
    ApiError::Transport {
        method: method.to_string(),
        target: target.to_string(),
        reason,
    }
}

/// Retries and back-off: up to `attempts` tries, waiting `base * 2^n` (capped at `max`, with
/// jitter) between them. Operation polls back off the same way, capped at 10 s.
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

type Counts = Arc<Mutex<BTreeMap<String, u64>>>;

fn bump(calls: &Counts, method: &str) {
    if let Ok(mut c) = calls.lock() {
        *c.entry(method.to_string()).or_insert(0) += 1;
    }
}

/// The library's retry loop asks this after every failed attempt; a `Continue` means one more
/// attempt of `method`, which is counted here.
#[derive(Debug)]
struct CountedRetries {
    method: String,
    attempts: u32,
    calls: Counts,
}

impl LibRetryPolicy for CountedRetries {
    fn on_error(&self, state: &RetryState, error: LibError) -> RetryResult {
        if !retryable(&error) {
            return RetryResult::Permanent(error);
        }
        if state.attempt_count >= self.attempts {
            return RetryResult::Exhausted(error);
        }
        tracing::debug!("{}: {error}; retrying", self.method);
        bump(&self.calls, &self.method);
        RetryResult::Continue(error)
    }
}

/// Every retry the policy allows is made: the attempt limit is the only brake (the library's
/// default adaptive throttler could skip attempts, which would make the counts lie).
#[derive(Debug)]
struct NoThrottle;

impl RetryThrottler for NoThrottle {
    fn throttle_retry_attempt(&self) -> bool {
        false
    }
    fn on_retry_failure(&mut self, _flow: &RetryResult) {}
    fn on_success(&mut self) {}
}

/// The poller waits this long before each `operations.get`; each wait is one poll, counted.
#[derive(Debug)]
struct CountedPolls {
    method: &'static str,
    backoff: ExponentialBackoff,
    calls: Counts,
}

impl PollingBackoffPolicy for CountedPolls {
    fn wait_period(&self, state: &PollingState) -> Duration {
        bump(&self.calls, self.method);
        self.backoff.wait_period(state)
    }
}

/// A failed poll is retried like a failed call.
#[derive(Debug)]
struct PollErrors {
    attempts: u32,
}

impl PollingErrorPolicy for PollErrors {
    fn on_error(&self, state: &PollingState, error: LibError) -> RetryResult {
        if !retryable(&error) {
            RetryResult::Permanent(error)
        } else if state.attempt_count >= self.attempts {
            RetryResult::Exhausted(error)
        } else {
            RetryResult::Continue(error)
        }
    }
}

macro_rules! services {
    ($($field:ident: $ty:ident),* $(,)?) => {
        /// The library clients, each built on first use (building one is async).
        #[derive(Default)]
        struct Clients {
            $($field: OnceCell<client::$ty>,)*
        }

        impl Compute {
            $(
                pub async fn $field(&self) -> Result<&client::$ty, ApiError> {
                    self.clients
                        .$field
                        .get_or_try_init(|| async {
                            client::$ty::builder()
                                .with_endpoint(self.root.clone())
                                .with_credentials(self.credentials.library())
                                .with_retry_throttler(NoThrottle)
                                .build()
                                .await
                                .map_err(|e| ApiError::Setup {
                                    service: stringify!($ty),
                                    reason: e.to_string(),
                                })
                        })
                        .await
                }
            )*
        }
    };
}

services! {
    accelerator_types: AcceleratorTypes,
    addresses: Addresses,
    backend_services: RegionBackendServices,
    disks: Disks,
    firewalls: Firewalls,
    forwarding_rules: ForwardingRules,
    health_checks: RegionHealthChecks,
    images: Images,
    instance_groups: InstanceGroups,
    instances: Instances,
    machine_types: MachineTypes,
    networks: Networks,
    projects: Projects,
    regions: Regions,
    resource_policies: ResourcePolicies,
    subnetworks: Subnetworks,
}

#[derive(Clone)]
pub struct Compute {
    /// Host root the library appends `/compute/v1/...` to.
    root: String,
    /// API root for reference fields (`.../compute/v1/`).
    base: String,
    pub project: String,
    credentials: Credentials,
    retry: RetryPolicy,
    clients: Arc<Clients>,
    calls: Counts,
    /// `(kind, name)` of everything created through this client, in order.
    created: Arc<Mutex<Vec<(String, String)>>>,
}

impl Compute {
    /// `endpoint` is the API root (`.../compute/v1/`) or a bare host URL.
    pub fn new(
        endpoint: &str,
        project: &str,
        credentials: Credentials,
        retry: RetryPolicy,
    ) -> Compute {
        let root = endpoint
            .trim_end_matches('/')
            .trim_end_matches("/compute/v1")
            .to_string();
        Compute {
            base: format!("{root}/compute/v1/"),
            root,
            project: project.to_string(),
            credentials,
            retry,
            clients: Arc::default(),
            calls: Arc::default(),
            created: Arc::default(),
        }
    }

    /// Calls made so far, by API method id (e.g. `compute.instances.bulkInsert`), retries and
    /// operation polls included.
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

    fn backoff(&self, max: Duration) -> ExponentialBackoff {
        ExponentialBackoffBuilder::new()
            .with_initial_delay(self.retry.base)
            .with_maximum_delay(max.max(self.retry.base))
            .with_scaling(2.0)
            .clamp()
    }

    /// Configure one library request: counted, retried by our rules with the library's loop.
    /// Every call k8sforge makes is idempotent (mutations carry a `requestId`).
    pub fn call<B: RequestOptionsBuilder>(&self, method: &str, b: B) -> B {
        bump(&self.calls, method);
        b.with_idempotency(true)
            .with_retry_policy(CountedRetries {
                method: method.to_string(),
                attempts: self.retry.attempts.max(1),
                calls: self.calls.clone(),
            })
            .with_backoff_policy(self.backoff(self.retry.max))
            .with_retry_throttler(NoThrottle)
    }

    /// `call`, plus the poller's policies for a long-running operation in `scope`
    /// (`GLOBAL_OPS`, `REGION_OPS` or `ZONE_OPS`).
    pub fn mutation<B: RequestOptionsBuilder>(&self, method: &str, scope: &'static str, b: B) -> B {
        self.call(method, b)
            .with_polling_backoff_policy(CountedPolls {
                method: scope,
                backoff: self.backoff(self.retry.max.min(Duration::from_secs(10))),
                calls: self.calls.clone(),
            })
            .with_polling_error_policy(PollErrors {
                attempts: self.retry.attempts.max(1),
            })
    }
}

/// A finished operation, its error (if any) turned into `ApiError::Operation`.
pub fn check(op: Operation) -> Result<Operation, ApiError> {
    match &op.error {
        Some(e) if !e.errors.is_empty() => Err(ApiError::Operation {
            name: op.name.clone().unwrap_or_default(),
            kind: op.operation_type.clone().unwrap_or_default(),
            target: last_segment(op.target_link.as_deref().unwrap_or("")).to_string(),
            errors: e
                .errors
                .iter()
                .map(|i| {
                    format!(
                        "{}: {}",
                        i.code.as_deref().unwrap_or(""),
                        i.message.as_deref().unwrap_or("")
                    )
                })
                .collect(),
        }),
        _ => Ok(op),
    }
}

/// A random UUID (v4 layout) from the OS RNG, as the API's `requestId` wants: a retried
/// mutation after a lost response is de-duplicated by the API instead of done twice.
pub fn request_id() -> String {
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

/// Every item of a list call, page by page (each page is one counted call). `$base` is a list
/// request builder (cloned per page); `$method` its API method id.
#[macro_export]
#[doc(hidden)]
macro_rules! gcp_list_all {
    ($api:expr, $method:expr, $target:expr, $base:expr) => {{
        let api = &$api;
        let base = $base;
        let mut out = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let page = api
                .call(
                    $method,
                    base.clone()
                        .set_max_results(500u32)
                        .set_or_clear_page_token(token.take()),
                )
                .send()
                .await
                .map_err(|e| $crate::provider::gcp::client::api_error($method, $target, e))?;
            out.extend(page.items);
            match page.next_page_token {
                Some(t) if !t.is_empty() => token = Some(t),
                _ => break,
            }
        }
        out
    }};
}

/// A library result in plain words.
pub fn lib<T>(method: &str, target: &str, r: Result<T, LibError>) -> Result<T, ApiError> {
    r.map_err(|e| api_error(method, target, e))
}

/// A `get` whose 404 means "not there".
pub fn lib_opt<T>(
    method: &str,
    target: &str,
    r: Result<T, LibError>,
) -> Result<Option<T>, ApiError> {
    match r {
        Ok(v) => Ok(Some(v)),
        Err(e) if e.http_status_code() == Some(404) => Ok(None),
        Err(e) => Err(api_error(method, target, e)),
    }
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
    fn endpoint_forms_give_one_api_root() {
        for e in [
            "http://127.0.0.1:9/compute/v1/",
            "http://127.0.0.1:9/compute/v1",
            "http://127.0.0.1:9/",
        ] {
            let c = Compute::new(e, "p", Credentials::Anonymous, RetryPolicy::default());
            assert_eq!(c.root, "http://127.0.0.1:9");
            assert_eq!(
                c.url("global/networks/n"),
                "http://127.0.0.1:9/compute/v1/projects/p/global/networks/n"
            );
        }
    }

    #[test]
    fn only_rate_limits_and_server_errors_are_retried() {
        let e = |code: u16| LibError::http(code, Default::default(), Default::default());
        assert!(retryable(&e(429)));
        assert!(retryable(&e(503)));
        assert!(!retryable(&e(404)));
        assert!(!retryable(&e(403)));
        assert!(!retryable(&e(400)));
    }
}
