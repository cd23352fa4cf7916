//! Building the SDK clients: region, credentials, endpoint override and the HTTPS client.
//!
//! Production uses the default credential chain and the region from the profile (or the
//! environment). Tests and local servers pass an endpoint URL, an explicit region and static
//! credentials, so nothing ever reaches the instance metadata address.

use aws_config::retry::RetryConfig;
use aws_config::{BehaviorVersion, Region, SdkConfig};
use aws_credential_types::Credentials;
use aws_smithy_http_client::tls::{self, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::client::http::SharedHttpClient;
use aws_smithy_runtime_api::client::interceptors::Intercept;

/// Most instances one RunInstances call asks for. AWS accepts more per call for small types,
/// but 500 keeps a capacity failure's blast radius and the response size reasonable.
pub const MAX_BATCH: usize = 500;

/// Environment variable pointing every AWS client at another endpoint (e.g. a local moto server).
pub const ENDPOINT_ENV: &str = "K8SFORGE_AWS_ENDPOINT_URL";

/// rustls on ring: ring is already built for the PKI, aws-lc would add a large C build.
fn https_client() -> SharedHttpClient {
    aws_smithy_http_client::Builder::new()
        .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
        .build_https()
}

/// Static settings for a local endpoint; never consults the default credential chain.
#[derive(Debug, Clone)]
pub struct StaticSettings {
    pub region: String,
    pub endpoint_url: String,
    pub access_key_id: String,
    pub secret_access_key: String,
}

pub fn static_config(s: &StaticSettings) -> SdkConfig {
    SdkConfig::builder()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new(s.region.clone()))
        .endpoint_url(s.endpoint_url.clone())
        .credentials_provider(
            aws_credential_types::provider::SharedCredentialsProvider::new(Credentials::new(
                s.access_key_id.clone(),
                s.secret_access_key.clone(),
                None,
                None,
                "k8sforge-static",
            )),
        )
        .http_client(https_client())
        .retry_config(RetryConfig::disabled())
        .build()
}

/// The production configuration: default credential chain, region from the profile or the
/// environment, endpoint from `K8SFORGE_AWS_ENDPOINT_URL` when set.
pub async fn default_config(region: Option<&str>) -> SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest())
        .http_client(https_client())
        .retry_config(RetryConfig::disabled());
    if let Some(r) = region {
        loader = loader.region(Region::new(r.to_string()));
    }
    if let Ok(url) = std::env::var(ENDPOINT_ENV) {
        if !url.is_empty() {
            loader = loader.endpoint_url(url);
        }
    }
    loader.load().await
}

/// The three clients the provider uses, sharing one configuration.
#[derive(Clone, Debug)]
pub struct Clients {
    pub ec2: aws_sdk_ec2::Client,
    pub elb: aws_sdk_elasticloadbalancingv2::Client,
    pub quotas: aws_sdk_servicequotas::Client,
    pub region: String,
}

impl Clients {
    pub fn new(cfg: &SdkConfig) -> Self {
        Self::build(cfg, None::<NoInterceptor>)
    }

    /// Clients with an interceptor on every request (tests use one to pick a moto account).
    pub fn with_interceptor<I>(cfg: &SdkConfig, interceptor: I) -> Self
    where
        I: Intercept + Clone + 'static,
    {
        Self::build(cfg, Some(interceptor))
    }

    fn build<I>(cfg: &SdkConfig, interceptor: Option<I>) -> Self
    where
        I: Intercept + Clone + 'static,
    {
        let mut ec2 = aws_sdk_ec2::config::Builder::from(cfg);
        let mut elb = aws_sdk_elasticloadbalancingv2::config::Builder::from(cfg);
        let mut quotas = aws_sdk_servicequotas::config::Builder::from(cfg);
        if let Some(i) = interceptor {
            ec2 = ec2.interceptor(i.clone());
            elb = elb.interceptor(i.clone());
            quotas = quotas.interceptor(i);
        }
        Clients {
            ec2: aws_sdk_ec2::Client::from_conf(ec2.build()),
            elb: aws_sdk_elasticloadbalancingv2::Client::from_conf(elb.build()),
            quotas: aws_sdk_servicequotas::Client::from_conf(quotas.build()),
            region: cfg.region().map(|r| r.to_string()).unwrap_or_default(),
        }
    }
}

/// Placeholder type for "no interceptor".
#[derive(Debug, Clone)]
struct NoInterceptor;

impl Intercept for NoInterceptor {
    fn name(&self) -> &'static str {
        "none"
    }
}
