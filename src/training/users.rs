//! Team users: a private key generated here from the OS RNG (ECDSA P-256), a certificate
//! signing request for `CN=<user>, O=k8sforge:team:<team>` through the Kubernetes
//! CertificateSigningRequest API (signer `kubernetes.io/kube-apiserver-client`, approved by
//! k8sforge with the admin credentials, signed by kube-controller-manager: the CA key never
//! leaves the cluster's state directory and control planes), and a kubeconfig whose context
//! defaults to the team's namespace. The team's RoleBinding is what scopes the user; nothing
//! cluster-wide is granted.

use std::time::{Duration, Instant};

use ::kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use k8s_openapi::api::certificates::v1::{
    CertificateSigningRequest, CertificateSigningRequestCondition, CertificateSigningRequestSpec,
    CertificateSigningRequestStatus,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::ByteString;

use super::teams::team_group;
use crate::kube::client::error_chain;
use crate::kube::Cluster;
use crate::pki::kubeconfig::{Context, Kubeconfig, NamedContext, NamedUser, User};

pub const SIGNER: &str = "kubernetes.io/kube-apiserver-client";
/// How long kube-controller-manager gets to sign an approved request.
const SIGN_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum UserError {
    #[error(
        "invalid user name {0:?}: 1-64 characters of lower-case letters, digits, '.', '_', '@' and \
         '-', starting with a letter or digit (it becomes the certificate's CN)"
    )]
    Name(String),
    #[error("--days {0}: a client certificate lives 1 to 365 days")]
    Days(u32),
    #[error("team {team:?} does not exist (no namespace {team}): create it with `k8sforge team add {team} --gpus N`")]
    NoTeam { team: String },
    #[error("generating the user's key: {0}")]
    Key(String),
    #[error("certificate signing request {name}: {message}")]
    Csr { name: String, message: String },
    #[error("the admin kubeconfig {path}: {message}")]
    AdminKubeconfig { path: String, message: String },
}

/// Check a user name.
pub fn validate_name(user: &str) -> Result<(), UserError> {
    let ok = !user.is_empty()
        && user.len() <= 64
        && user.starts_with(|c: char| c.is_ascii_lowercase() || c.is_ascii_digit())
        && user
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._@-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(UserError::Name(user.to_string()))
    }
}

/// A new key (OS RNG) and a PEM CSR for `user` in `team`.
pub fn key_and_csr(user: &str, team: &str) -> Result<(String, String), UserError> {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256)
        .map_err(|e| UserError::Key(e.to_string()))?;
    let mut params = rcgen::CertificateParams::new(Vec::<String>::new())
        .map_err(|e| UserError::Key(e.to_string()))?;
    let mut dn = rcgen::DistinguishedName::new();
    dn.push(rcgen::DnType::CommonName, user);
    dn.push(rcgen::DnType::OrganizationName, team_group(team));
    params.distinguished_name = dn;
    let csr = params
        .serialize_request(&key)
        .and_then(|c| c.pem())
        .map_err(|e| UserError::Key(e.to_string()))?;
    Ok((key.serialize_pem(), csr))
}

/// Submit, approve and collect a client certificate for `user` in `team`, valid `days`.
/// Returns (certificate PEM, key PEM). The request object is deleted afterwards.
pub async fn issue(
    cluster: &Cluster,
    user: &str,
    team: &str,
    days: u32,
) -> Result<(String, String), UserError> {
    validate_name(user)?;
    if !(1..=365).contains(&days) {
        return Err(UserError::Days(days));
    }
    let namespaces: Api<k8s_openapi::api::core::v1::Namespace> = Api::all(cluster.client.clone());
    let exists = namespaces
        .get_opt(team)
        .await
        .map_err(|e| UserError::Csr {
            name: "-".into(),
            message: format!("cannot read namespace {team}: {}", error_chain(&e)),
        })?
        .is_some_and(|ns| {
            ns.metadata
                .labels
                .is_some_and(|l| l.get(super::teams::TEAM_LABEL).map(String::as_str) == Some(team))
        });
    if !exists {
        return Err(UserError::NoTeam {
            team: team.to_string(),
        });
    }
    let (key_pem, csr_pem) = key_and_csr(user, team)?;
    let suffix: u32 = rand::random();
    let name = format!("k8sforge-user-{user}-{suffix:08x}").replace(['@', '_'], "-");
    let err = |message: String| UserError::Csr {
        name: name.clone(),
        message,
    };
    let api: Api<CertificateSigningRequest> = Api::all(cluster.client.clone());
    let csr = CertificateSigningRequest {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            labels: Some(
                [(super::teams::TEAM_LABEL.to_string(), team.to_string())]
                    .into_iter()
                    .collect(),
            ),
            ..ObjectMeta::default()
        },
        spec: CertificateSigningRequestSpec {
            request: ByteString(csr_pem.into_bytes()),
            signer_name: SIGNER.into(),
            usages: Some(vec!["client auth".into(), "digital signature".into()]),
            expiration_seconds: Some(i32::try_from(u64::from(days) * 86_400).unwrap_or(i32::MAX)),
            ..CertificateSigningRequestSpec::default()
        },
        status: None,
    };
    api.create(&PostParams::default(), &csr)
        .await
        .map_err(|e| err(format!("cannot create it: {}", error_chain(&e))))?;
    let approval = CertificateSigningRequest {
        status: Some(CertificateSigningRequestStatus {
            conditions: Some(vec![CertificateSigningRequestCondition {
                type_: "Approved".into(),
                status: "True".into(),
                reason: Some("K8sforgeUserAdd".into()),
                message: Some(format!("k8sforge user add {user} --team {team}")),
                ..CertificateSigningRequestCondition::default()
            }]),
            certificate: None,
        }),
        ..csr.clone()
    };
    let approved = api
        .patch_approval(&name, &PatchParams::default(), &Patch::Merge(&approval))
        .await;
    if let Err(e) = approved {
        let _ = api.delete(&name, &DeleteParams::default()).await;
        return Err(err(format!("cannot approve it: {}", error_chain(&e))));
    }
    let started = Instant::now();
    let cert = loop {
        let got = api
            .get(&name)
            .await
            .map_err(|e| err(format!("cannot read it: {}", error_chain(&e))))?;
        let status = got.status.unwrap_or_default();
        if let Some(c) = status.certificate.filter(|c| !c.0.is_empty()) {
            break String::from_utf8_lossy(&c.0).to_string();
        }
        if let Some(f) = status
            .conditions
            .iter()
            .flatten()
            .find(|c| c.type_ == "Failed" || c.type_ == "Denied")
        {
            return Err(err(format!(
                "{}: {}",
                f.type_,
                f.message.clone().unwrap_or_default()
            )));
        }
        if started.elapsed() > SIGN_TIMEOUT {
            return Err(err(format!(
                "approved but not signed after {} s: is kube-controller-manager running with \
                 --cluster-signing-cert-file/--cluster-signing-key-file?",
                SIGN_TIMEOUT.as_secs()
            )));
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
    };
    let _ = api.delete(&name, &DeleteParams::default()).await;
    Ok((cert, key_pem))
}

/// The user's kubeconfig: the admin kubeconfig's cluster (server and CA), the user's
/// certificate and key, and a context in the team's namespace.
pub fn kubeconfig(
    admin: &Kubeconfig,
    user: &str,
    team: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Kubeconfig {
    let cluster = admin
        .clusters
        .first()
        .map(|c| c.name.clone())
        .unwrap_or_else(|| "cluster".into());
    let context = format!("{user}@{cluster}");
    Kubeconfig {
        api_version: "v1".into(),
        kind: "Config".into(),
        clusters: admin.clusters.iter().take(1).cloned().collect(),
        users: vec![NamedUser {
            name: user.to_string(),
            user: User {
                client_certificate_data: STANDARD.encode(cert_pem),
                client_key_data: STANDARD.encode(key_pem),
            },
        }],
        contexts: vec![NamedContext {
            name: context.clone(),
            context: Context {
                cluster,
                user: user.to_string(),
                namespace: Some(team.to_string()),
            },
        }],
        current_context: context,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_csr() {
        assert!(validate_name("alice").is_ok());
        assert!(validate_name("a.b@example.com").is_ok());
        for bad in ["", "Alice", "-x", "a b", &"a".repeat(65)] {
            assert!(validate_name(bad).is_err(), "{bad}");
        }
        let (key, csr) = key_and_csr("alice", "vision").unwrap();
        assert!(key.contains("PRIVATE KEY"));
        assert!(csr.starts_with("-----BEGIN CERTIFICATE REQUEST-----"));
    }
}
