//! Encryption at rest for Secrets: an `EncryptionConfiguration` (apiserver.config.k8s.io/v1).
//!
//! Provider: `secretbox` (XSalsa20-Poly1305), not `aescbc`: it is authenticated encryption, and
//! the Kubernetes docs advise against aescbc because CBC is open to padding-oracle attacks.
//! `identity` follows as the read fallback, so Secrets written before encryption was enabled
//! stay readable. The 32-byte key comes from the OS RNG once and is reused on every run: a new
//! key would make every stored Secret unreadable.

use std::path::Path;

use base64::engine::general_purpose::STANDARD;
use base64::Engine;
use rand::rngs::OsRng;
use rand::RngCore;
use serde::{Deserialize, Serialize};

use crate::fsutil;

pub const KEY_NAME: &str = "key1";
const KEY_LEN: usize = 32;

#[derive(Debug, thiserror::Error)]
pub enum EncryptionError {
    #[error("cannot read or write {path}: {source}")]
    Io {
        path: String,
        source: std::io::Error,
    },
    #[error("{path} exists but {problem}; refusing to replace it with a new key (Secrets encrypted with the old key would become unreadable). Fix the file, or delete it if no cluster uses it yet")]
    Unusable { path: String, problem: String },
    #[error("cannot serialize the encryption config: {0}")]
    Serialize(#[from] serde_yaml_ng::Error),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EncryptionConfiguration {
    #[serde(rename = "apiVersion")]
    pub api_version: String,
    pub kind: String,
    pub resources: Vec<ResourceConfiguration>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceConfiguration {
    pub resources: Vec<String>,
    pub providers: Vec<ProviderConfiguration>,
}

/// One provider: exactly one field is set.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ProviderConfiguration {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub secretbox: Option<KeysConfiguration>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub identity: Option<Empty>,
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Empty {}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct KeysConfiguration {
    pub keys: Vec<Key>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Key {
    pub name: String,
    /// base64 of the 32-byte key.
    pub secret: String,
}

/// The configuration for a key.
pub fn config(key: &[u8; KEY_LEN]) -> EncryptionConfiguration {
    EncryptionConfiguration {
        api_version: "apiserver.config.k8s.io/v1".into(),
        kind: "EncryptionConfiguration".into(),
        resources: vec![ResourceConfiguration {
            resources: vec!["secrets".into()],
            providers: vec![
                ProviderConfiguration {
                    secretbox: Some(KeysConfiguration {
                        keys: vec![Key {
                            name: KEY_NAME.into(),
                            secret: STANDARD.encode(key),
                        }],
                    }),
                    identity: None,
                },
                ProviderConfiguration {
                    secretbox: None,
                    identity: Some(Empty {}),
                },
            ],
        }],
    }
}

/// The key of an existing config: the first secretbox key of the secrets resource.
fn existing_key(text: &str) -> Result<[u8; KEY_LEN], String> {
    let c: EncryptionConfiguration =
        serde_yaml_ng::from_str(text).map_err(|e| format!("does not parse ({e})"))?;
    let key = c
        .resources
        .iter()
        .flat_map(|r| &r.providers)
        .find_map(|p| p.secretbox.as_ref())
        .and_then(|s| s.keys.first())
        .ok_or("has no secretbox key")?;
    let bytes = STANDARD
        .decode(&key.secret)
        .map_err(|e| format!("key {} is not base64 ({e})", key.name))?;
    <[u8; KEY_LEN]>::try_from(bytes.as_slice())
        .map_err(|_| format!("key {} is {} bytes, not {KEY_LEN}", key.name, bytes.len()))
}

/// Write the config at `path` (mode 0600), keeping the existing key. Returns whether the file
/// changed.
pub fn ensure(path: &Path) -> Result<bool, EncryptionError> {
    let shown = path.display().to_string();
    let key = match std::fs::read_to_string(path) {
        Ok(text) => existing_key(&text).map_err(|problem| EncryptionError::Unusable {
            path: shown.clone(),
            problem,
        })?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let mut k = [0u8; KEY_LEN];
            OsRng.fill_bytes(&mut k);
            k
        }
        Err(source) => {
            return Err(EncryptionError::Io {
                path: shown,
                source,
            })
        }
    };
    let yaml = serde_yaml_ng::to_string(&config(&key))?;
    fsutil::write_if_changed(path, yaml.as_bytes(), fsutil::SECRET).map_err(|source| {
        EncryptionError::Io {
            path: shown,
            source,
        }
    })
}
