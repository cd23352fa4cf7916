//! Jittered exponential backoff for throttling and transient failures. The SDK's own retries are
//! turned off (see `config`) so that every attempt is visible here and in call counts.

use std::future::Future;
use std::time::Duration;

use aws_sdk_ec2::error::{ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;
use rand::Rng;

use super::error::AwsError;

/// Error codes AWS uses to say "slow down".
const THROTTLING: &[&str] = &[
    "RequestLimitExceeded",
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "EC2ThrottledException",
    "SlowDown",
];

/// Error codes that say "this never works by retrying": checked before the HTTP status,
/// because EC2 answers some of them with a 5xx.
const NEVER_RETRY: &[&str] = &[
    "InsufficientInstanceCapacity",
    "InsufficientCapacity",
    "VcpuLimitExceeded",
    "InstanceLimitExceeded",
    "Unsupported",
];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Class {
    Throttled,
    Transient,
    Fatal,
}

#[derive(Debug, Clone, Copy)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub base: Duration,
    pub cap: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 10,
            base: Duration::from_millis(200),
            cap: Duration::from_secs(20),
        }
    }
}

impl RetryPolicy {
    /// "Full jitter": uniform in [0, min(cap, base * 2^attempt)], so that many clients
    /// throttled together spread out instead of retrying in lockstep.
    pub fn delay(&self, attempt: u32) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << attempt.min(16))
            .min(self.cap);
        let ms = u64::try_from(ceiling.as_millis()).unwrap_or(u64::MAX);
        Duration::from_millis(rand::thread_rng().gen_range(0..=ms))
    }
}

pub fn classify_code(code: Option<&str>, status: Option<u16>) -> Class {
    if let Some(code) = code {
        if NEVER_RETRY.contains(&code) {
            return Class::Fatal;
        }
        if THROTTLING.contains(&code) {
            return Class::Throttled;
        }
        if code == "InternalError" || code == "ServiceUnavailable" || code == "Unavailable" {
            return Class::Transient;
        }
    }
    match status {
        Some(429) => Class::Throttled,
        Some(s) if s >= 500 => Class::Transient,
        _ => Class::Fatal,
    }
}

pub fn classify<E>(err: &SdkError<E, HttpResponse>) -> Class
where
    E: ProvideErrorMetadata,
{
    match err {
        SdkError::ServiceError(se) => {
            classify_code(se.err().code(), Some(se.raw().status().as_u16()))
        }
        // No answer, or an answer we could not read: the request may be retried. Creates that
        // are not idempotent are re-found by tag on the next run (see module docs of `network`).
        SdkError::TimeoutError(_) | SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => {
            Class::Transient
        }
        _ => Class::Fatal,
    }
}

/// Send a request, retrying throttling and transient failures with jittered backoff.
/// `make` builds and sends the request afresh for every attempt.
pub async fn send<T, E, F, Fut>(
    policy: &RetryPolicy,
    op: &'static str,
    mut make: F,
) -> Result<T, AwsError>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, SdkError<E, HttpResponse>>>,
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let mut attempt = 0;
    loop {
        match make().await {
            Ok(v) => return Ok(v),
            Err(e) => {
                let class = classify(&e);
                attempt += 1;
                if class == Class::Fatal || attempt >= policy.max_attempts {
                    return Err(AwsError::from_sdk(op, &e));
                }
                let wait = policy.delay(attempt);
                tracing::debug!(
                    op,
                    attempt,
                    ?class,
                    wait_ms = wait.as_millis() as u64,
                    "retrying"
                );
                tokio::time::sleep(wait).await;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capacity_and_quota_errors_are_never_retried_even_as_5xx() {
        assert_eq!(
            classify_code(Some("InsufficientInstanceCapacity"), Some(500)),
            Class::Fatal
        );
        assert_eq!(
            classify_code(Some("VcpuLimitExceeded"), Some(400)),
            Class::Fatal
        );
    }

    #[test]
    fn throttling_and_5xx_are_retried() {
        assert_eq!(
            classify_code(Some("RequestLimitExceeded"), Some(503)),
            Class::Throttled
        );
        assert_eq!(
            classify_code(Some("Throttling"), Some(400)),
            Class::Throttled
        );
        assert_eq!(classify_code(Some("Whatever"), Some(502)), Class::Transient);
        assert_eq!(
            classify_code(Some("InvalidParameterValue"), Some(400)),
            Class::Fatal
        );
    }

    #[test]
    fn delays_are_jittered_and_capped() {
        let p = RetryPolicy {
            max_attempts: 5,
            base: Duration::from_millis(100),
            cap: Duration::from_millis(1000),
        };
        for attempt in 0..30 {
            let d = p.delay(attempt);
            assert!(d <= Duration::from_millis(1000), "{d:?}");
            assert!(d <= Duration::from_millis(100) * (1 << attempt.min(16)));
        }
        // Jitter: 50 draws at a 1 s ceiling are not all equal.
        let draws: std::collections::BTreeSet<_> = (0..50).map(|_| p.delay(10)).collect();
        assert!(draws.len() > 1);
    }
}
