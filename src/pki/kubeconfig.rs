//! Kubeconfig files for the identities of the certificate table that have one (admin, kubelets,
//! kube-proxy, controller-manager, scheduler). Serde types, so the output is valid YAML by
//! construction and byte-identical for the same inputs.

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use serde::{Deserialize, Serialize};

use super::table::{Cert, KubeconfigServer};
use crate::inventory::Inventory;
use crate::profile::Profile;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Kubeconfig {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    pub clusters: Vec<NamedCluster>,
    pub users: Vec<NamedUser>,
    pub contexts: Vec<NamedContext>,
    #[serde(rename = "current-context")]
    pub current_context: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedCluster {
    pub name: String,
    pub cluster: Cluster,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cluster {
    #[serde(rename = "certificate-authority-data")]
    pub certificate_authority_data: String,
    pub server: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedUser {
    pub name: String,
    pub user: User,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct User {
    #[serde(rename = "client-certificate-data")]
    pub client_certificate_data: String,
    #[serde(rename = "client-key-data")]
    pub client_key_data: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NamedContext {
    pub name: String,
    pub context: Context,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Context {
    pub cluster: String,
    pub user: String,
    /// Default namespace of the context (team users' kubeconfigs set it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
}

/// The API server URL an identity's kubeconfig uses.
pub fn server(kind: KubeconfigServer, profile: &Profile, inventory: &Inventory) -> String {
    match kind {
        KubeconfigServer::ApiEndpoint => inventory.api.url(),
        KubeconfigServer::LocalApiServer => {
            format!("https://127.0.0.1:{}", profile.api_server.port)
        }
    }
}

/// Kubeconfig for `cert`'s identity: cluster = profile name, user = the certificate's CN.
pub fn build(
    cluster: &str,
    server: String,
    cert: &Cert,
    ca_pem: &str,
    cert_pem: &str,
    key_pem: &str,
) -> Kubeconfig {
    let user = cert.user().to_string();
    let context = format!("{user}@{cluster}");
    Kubeconfig {
        api_version: "v1".into(),
        kind: "Config".into(),
        clusters: vec![NamedCluster {
            name: cluster.to_string(),
            cluster: Cluster {
                certificate_authority_data: STANDARD.encode(ca_pem),
                server,
            },
        }],
        users: vec![NamedUser {
            name: user.clone(),
            user: User {
                client_certificate_data: STANDARD.encode(cert_pem),
                client_key_data: STANDARD.encode(key_pem),
            },
        }],
        contexts: vec![NamedContext {
            name: context.clone(),
            context: Context {
                cluster: cluster.to_string(),
                user,
                namespace: None,
            },
        }],
        current_context: context,
    }
}

pub fn to_yaml(k: &Kubeconfig) -> Result<String, serde_yaml_ng::Error> {
    serde_yaml_ng::to_string(k)
}
