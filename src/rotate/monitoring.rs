//! The monitoring add-on's scrape certificates Secret (`monitoring::tls_secret`: the CA
//! bundles and the client certificates Prometheus scrapes etcd and the control plane with)
//! follows the PKI a rotation commits. Without this step Prometheus keeps the certificates of
//! before the rotation: after a leaf rotation they are old (still valid until they expire);
//! after a CA rotation its etcd client certificate is signed by a CA etcd no longer trusts and
//! its CA no longer verifies the servers, so the etcd and control-plane targets go down.
//!
//! When: right after each step's material is committed, before its stages roll out (and again
//! on every resume). That order is safe at every step of a CA rotation: at trust-both the
//! Secret's CA becomes the old + new bundle while the servers still present old certificates;
//! at reissue the new client certificate is accepted because every server already trusts both
//! CAs; at drop-old only the new CA remains, and every server already presents a certificate
//! the new CA signed. Prometheus reads the mounted files again when the kubelet has synced the
//! Secret (a minute or so), well within the stages that follow.

use std::time::Duration;

use serde::Serialize;

use crate::inventory::{Inventory, Role};
use crate::kube::{self, Change};
use crate::monitoring::{scrape, NAMESPACE};
use crate::pki::layout;
use crate::profile::Profile;

/// How long the Secret's update may take, connection included.
const TIMEOUT: Duration = Duration::from_secs(60);

/// What the step did.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    /// The Secret now holds the committed material.
    Updated,
    /// It already did.
    Unchanged,
    /// Monitoring is enabled but its Secret is not in the cluster yet (`up` installs it).
    NotInstalled,
}

#[derive(Debug, thiserror::Error)]
pub enum ScrapeSecretError {
    #[error("{0}")]
    Build(#[from] crate::monitoring::TlsSecretError),
    #[error("{0}")]
    Kube(#[from] kube::KubeError),
    #[error("cannot start the async runtime: {0}")]
    Runtime(std::io::Error),
    #[error("no answer from the API within {} s", TIMEOUT.as_secs())]
    Timeout,
}

/// Re-apply the scrape certificates Secret from the material in `cluster_dir` when the profile
/// enables monitoring (None, and no API call, when it does not).
pub fn refresh(
    profile: &Profile,
    inventory: &Inventory,
    cluster_dir: &std::path::Path,
) -> Result<Option<Outcome>, ScrapeSecretError> {
    if !profile.monitoring_enabled() {
        return Ok(None);
    }
    let manifest = crate::monitoring::tls_secret(&layout::pki_dir(cluster_dir))?;
    let objects = kube::validate_all([(manifest.name, manifest.yaml.as_str())])?;
    let kubeconfig = layout::kubeconfig_path(cluster_dir, layout::ADMIN);
    // As the addons phase: when the admin kubeconfig's address does not answer from here, each
    // apiserver directly (their certificates carry the node addresses).
    let fallbacks: Vec<String> = inventory
        .with_role(Role::ControlPlane)
        .map(|n| format!("https://{}:{}", n.internal_ip, profile.api_server.port))
        .collect();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(ScrapeSecretError::Runtime)?;
    rt.block_on(async {
        let work = async {
            let cluster = kube::connect_with_fallbacks(&kubeconfig, &fallbacks).await?;
            let secrets: ::kube::Api<k8s_openapi::api::core::v1::Secret> =
                ::kube::Api::namespaced(cluster.client.clone(), NAMESPACE);
            let present = secrets
                .get_opt(scrape::TLS_SECRET)
                .await
                .map_err(|e| kube::KubeError::Read {
                    what: format!("secret {NAMESPACE}/{}", scrape::TLS_SECRET),
                    message: kube::client::error_chain(&e),
                })?
                .is_some();
            if !present {
                return Ok::<_, ScrapeSecretError>(Outcome::NotInstalled);
            }
            let report = kube::apply(&cluster, &objects).await?;
            Ok(if report.count(Change::Unchanged) == report.objects.len() {
                Outcome::Unchanged
            } else {
                Outcome::Updated
            })
        };
        tokio::time::timeout(TIMEOUT, work)
            .await
            .map_err(|_| ScrapeSecretError::Timeout)?
            .map(Some)
    })
}
