//! The GCP provider: a cluster's network, firewall, API load balancer and GPU instances on
//! Compute Engine, through Google's Rust client libraries (`google-cloud-compute-v1`,
//! `google-cloud-auth`; see `client` and `auth`), found again by label or ownership
//! marker (see `names`) so that re-runs adopt and teardown removes only what is ours.
//!
//! Project, region and zone come from the profile, else from the environment
//! (`GOOGLE_CLOUD_PROJECT`/`CLOUDSDK_CORE_PROJECT`, `CLOUDSDK_COMPUTE_REGION`,
//! `CLOUDSDK_COMPUTE_ZONE`). `K8SFORGE_GCP_ENDPOINT` points the provider at another Compute
//! endpoint (a fake or emulator) and then uses no credentials at all, so that nothing ever
//! reaches Google or the metadata server from a test.

mod adopt;
pub mod auth;
pub mod client;
pub mod drift;
pub mod gpu_fabric;
pub mod host_keys;
pub mod instances;
pub mod loadbalancer;
pub mod names;
pub mod preflight;
pub mod provision;
pub mod teardown;

use crate::profile::{GcpProviderSpec, Profile};
use crate::provider::{Provider, ProviderFuture, ProvisionContext, Provisioned, TeardownReport};

use auth::Credentials;
use client::{ApiError, Compute, RetryPolicy, DEFAULT_ENDPOINT};
use names::Names;

/// Environment variable naming a Compute endpoint to use instead of Google's (anonymous).
pub const ENDPOINT_ENV: &str = "K8SFORGE_GCP_ENDPOINT";

#[derive(Debug, thiserror::Error)]
pub enum GcpError {
    #[error("GCP {what} is not set: set provider.gcp.{field} in the profile or {env}")]
    MissingSetting {
        what: &'static str,
        field: &'static str,
        env: &'static str,
    },
    #[error("provider.gcp is missing from the profile (provider.kind is gcp)")]
    NoSpec,
    #[error("{0}")]
    Config(String),
    #[error(transparent)]
    Api(#[from] ApiError),
    #[error(transparent)]
    Auth(#[from] auth::AuthError),
    #[error("{0}")]
    Preflight(String),
    #[error("{kind} {name} exists but is not owned by cluster {cluster} (no `k8sforge-io-cluster` label or `k8sforge.io/cluster` description); refusing to adopt or change it — rename the cluster or remove that resource yourself")]
    NotOwned {
        kind: &'static str,
        name: String,
        cluster: String,
    },
    /// Adopted instances differ from the profile (see `drift`).
    #[error("drift: {0}")]
    Drift(String),
    #[error("{}", instances::describe_bulk_failure(.created, .failed))]
    InstancesFailed {
        created: usize,
        /// `(instance name, reason)` for every instance that does not exist after bulkInsert.
        failed: Vec<(String, String)>,
    },
    #[error(
        "instance {0} has no {1}; it may still be starting, re-run `k8sforge up --only provision`"
    )]
    Incomplete(String, &'static str),
}

/// Everything that says where and how to talk to Compute Engine.
#[derive(Debug, Clone)]
pub struct GcpConfig {
    pub project: String,
    pub region: String,
    pub zone: String,
    /// API root, e.g. `https://compute.googleapis.com/compute/v1/`.
    pub endpoint: String,
    pub credentials: Credentials,
    pub retry: RetryPolicy,
    /// Concurrent calls when many resources are deleted at once (or host keys asked for).
    pub concurrency: usize,
    /// How long provision waits for new instances' host keys in their guest attributes
    /// (`provider.gcp.hostKeyWaitSeconds`); zero: one look.
    pub host_key_wait: std::time::Duration,
}

fn env(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.trim().is_empty())
}

impl GcpConfig {
    /// From the profile, then the environment; credentials are application-default unless an
    /// endpoint override is set.
    pub fn from_profile(profile: &Profile) -> Result<GcpConfig, GcpError> {
        let spec = profile.provider.gcp.as_ref().ok_or(GcpError::NoSpec)?;
        let (endpoint, credentials) = match env(ENDPOINT_ENV) {
            Some(e) => (e, Credentials::Anonymous),
            None => (
                DEFAULT_ENDPOINT.to_string(),
                Credentials::application_default()?,
            ),
        };
        GcpConfig::resolve(spec, endpoint, credentials)
    }

    /// Settings with explicit endpoint and credentials (tests pass a fake and `Anonymous`).
    pub fn resolve(
        spec: &GcpProviderSpec,
        endpoint: String,
        credentials: Credentials,
    ) -> Result<GcpConfig, GcpError> {
        let project = spec
            .project
            .clone()
            .or_else(|| env("GOOGLE_CLOUD_PROJECT"))
            .or_else(|| env("CLOUDSDK_CORE_PROJECT"))
            .or_else(|| credentials.project_hint())
            .ok_or(GcpError::MissingSetting {
                what: "project",
                field: "project",
                env: "GOOGLE_CLOUD_PROJECT",
            })?;
        let zone = spec
            .zone
            .clone()
            .or_else(|| env("CLOUDSDK_COMPUTE_ZONE"))
            .ok_or(GcpError::MissingSetting {
                what: "zone",
                field: "zone",
                env: "CLOUDSDK_COMPUTE_ZONE",
            })?;
        // A zone is `<region>-<letter>`.
        let region = spec
            .region
            .clone()
            .or_else(|| env("CLOUDSDK_COMPUTE_REGION"))
            .or_else(|| zone.rsplit_once('-').map(|(r, _)| r.to_string()))
            .ok_or(GcpError::MissingSetting {
                what: "region",
                field: "region",
                env: "CLOUDSDK_COMPUTE_REGION",
            })?;
        if !zone.starts_with(&format!("{region}-")) {
            return Err(GcpError::Config(format!(
                "GCP zone {zone} is not in region {region}"
            )));
        }
        Ok(GcpConfig {
            project,
            region,
            zone,
            endpoint,
            credentials,
            retry: RetryPolicy::default(),
            concurrency: 64,
            host_key_wait: std::time::Duration::from_secs(
                spec.host_key_wait_seconds.unwrap_or(120),
            ),
        })
    }
}

pub struct GcpProvider {
    pub cfg: GcpConfig,
    pub api: Compute,
}

impl GcpProvider {
    pub fn new(cfg: GcpConfig) -> Result<GcpProvider, GcpError> {
        auth::install_crypto();
        let api = Compute::new(
            &cfg.endpoint,
            &cfg.project,
            cfg.credentials.clone(),
            cfg.retry,
        );
        Ok(GcpProvider { cfg, api })
    }
}

impl Provider for GcpProvider {
    fn name(&self) -> &'static str {
        "gcp"
    }

    fn preflight<'a>(&'a self, ctx: &'a ProvisionContext<'a>) -> ProviderFuture<'a, ()> {
        Box::pin(async move { preflight::run(self, ctx).await.map_err(Into::into) })
    }

    fn provision<'a>(&'a self, ctx: &'a ProvisionContext<'a>) -> ProviderFuture<'a, Provisioned> {
        Box::pin(async move {
            let out = provision::run(self, ctx).await?;
            let calls = self.api.call_counts();
            tracing::debug!(
                "{} API calls: {}",
                calls.values().sum::<u64>(),
                calls
                    .iter()
                    .map(|(k, v)| format!("{}={v}", k.trim_start_matches("compute.")))
                    .collect::<Vec<_>>()
                    .join(" ")
            );
            Ok(out)
        })
    }

    fn teardown<'a>(
        &'a self,
        ctx: &'a ProvisionContext<'a>,
        dry_run: bool,
    ) -> ProviderFuture<'a, TeardownReport> {
        Box::pin(async move {
            teardown::run(self, &Names::new(&ctx.profile.name), dry_run)
                .await
                .map_err(Into::into)
        })
    }
}
