//! Errors of the AWS provider: each one says what failed, where, and what to do about it.

use std::fmt;

use aws_sdk_ec2::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_smithy_runtime_api::client::orchestrator::HttpResponse;

#[derive(Debug, thiserror::Error)]
pub enum AwsError {
    /// The service answered with an error code.
    #[error("{op} failed: {code}: {message}")]
    Api {
        op: &'static str,
        code: String,
        message: String,
    },
    /// The request did not get an answer (connection, timeout, unreadable response).
    #[error("{op} failed: {detail}")]
    Transport { op: &'static str, detail: String },
    #[error("preflight: {0}\nNothing was created.")]
    Preflight(String),
    #[error("{0}")]
    Quota(Box<QuotaShortfall>),
    #[error("capacity: {0}")]
    Capacity(String),
    /// Adopted instances differ from the profile (see `drift`).
    #[error("drift: {0}")]
    Drift(String),
    /// Something exists under the cluster's names without the cluster's tag.
    #[error("refusing to touch {0}")]
    NotOwned(String),
    #[error("timed out after {secs}s waiting for {what}")]
    Timeout { what: String, secs: u64 },
    /// Unexpected shape of an answer (a field AWS always sets is missing).
    #[error("{op}: unexpected response: {detail}")]
    Unexpected { op: &'static str, detail: String },
}

impl AwsError {
    pub fn code(&self) -> Option<&str> {
        match self {
            AwsError::Api { code, .. } => Some(code),
            _ => None,
        }
    }

    pub fn unexpected(op: &'static str, detail: impl Into<String>) -> Self {
        AwsError::Unexpected {
            op,
            detail: detail.into(),
        }
    }

    pub fn from_sdk<E>(op: &'static str, err: &SdkError<E, HttpResponse>) -> Self
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match err {
            SdkError::ServiceError(se) => AwsError::Api {
                op,
                code: se.err().code().unwrap_or("Unknown").to_string(),
                message: se.err().message().unwrap_or_default().to_string(),
            },
            other => AwsError::Transport {
                op,
                detail: DisplayErrorContext(other).to_string(),
            },
        }
    }
}

/// Not enough On-Demand vCPU quota for the instances the profile asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaShortfall {
    pub region: String,
    pub quota_code: String,
    pub quota_name: String,
    pub needed_vcpus: u64,
    pub allowed_vcpus: u64,
    /// `(count, instance type, vCPUs each)` making up the need.
    pub breakdown: Vec<(u64, String, u64)>,
}

impl QuotaShortfall {
    pub fn request_command(&self) -> String {
        format!(
            "aws service-quotas request-service-quota-increase --service-code ec2 --quota-code {} --desired-value {} --region {}",
            self.quota_code, self.needed_vcpus, self.region
        )
    }
}

impl fmt::Display for QuotaShortfall {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<String> = self
            .breakdown
            .iter()
            .map(|(n, t, v)| format!("{n} x {t} ({v} vCPUs each)"))
            .collect();
        write!(
            f,
            "quota too low: the cluster needs {} vCPUs of \"{}\" in {} ({}), but the account's quota {} allows {} vCPUs.\n\
             Instances of this family already running in the account count against the same quota.\n\
             Request more with:\n  {}\n\
             or in the Service Quotas console: https://console.aws.amazon.com/servicequotas/home/services/ec2/quotas/{} (region {}).\n\
             Nothing was created.",
            self.needed_vcpus,
            self.quota_name,
            self.region,
            parts.join(" + "),
            self.quota_code,
            self.allowed_vcpus,
            self.request_command(),
            self.quota_code,
            self.region
        )
    }
}
