//! `k8sforge kubeconfig`: write the cluster's admin kubeconfig into a user's kubeconfig file,
//! merging by name like `kind export kubeconfig`: the cluster, user and context entries of this
//! cluster are replaced, every other entry is kept, and the current context switches to it.

use std::path::{Path, PathBuf};

use serde_yaml_ng::{Mapping, Value};

use crate::fsutil;

#[derive(Debug, thiserror::Error)]
pub enum MergeError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a kubeconfig: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// `$KUBECONFIG` (first entry) or `~/.kube/config`.
pub fn default_target() -> PathBuf {
    if let Some(k) = std::env::var_os("KUBECONFIG") {
        if let Some(first) = std::env::split_paths(&k).next() {
            if !first.as_os_str().is_empty() {
                return first;
            }
        }
    }
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
        .join(".kube/config")
}

fn read_yaml(path: &Path) -> Result<Value, MergeError> {
    let text = std::fs::read_to_string(path).map_err(|source| MergeError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let v: Value = serde_yaml_ng::from_str(&text).map_err(|e| MergeError::Invalid {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    if v.is_null() {
        return Ok(Value::Mapping(Mapping::new()));
    }
    if !v.is_mapping() {
        return Err(MergeError::Invalid {
            path: path.to_path_buf(),
            reason: "top level is not a mapping".into(),
        });
    }
    Ok(v)
}

/// Replace-or-append every named entry of `src[key]` into `dst[key]`.
fn merge_named(dst: &mut Mapping, src: &Mapping, key: &str) {
    let incoming = src
        .get(key)
        .and_then(Value::as_sequence)
        .cloned()
        .unwrap_or_default();
    let list = dst
        .entry(Value::from(key))
        .or_insert_with(|| Value::Sequence(Vec::new()));
    if !list.is_sequence() {
        *list = Value::Sequence(Vec::new());
    }
    let Value::Sequence(items) = list else { return };
    for entry in incoming {
        let name = entry.get("name").cloned();
        match items.iter_mut().find(|e| e.get("name") == name.as_ref()) {
            Some(existing) => *existing = entry,
            None => items.push(entry),
        }
    }
}

/// Merge `admin` into `target` (created 0600 if missing) and make its context current.
/// Returns the name of the context.
pub fn merge_into(admin: &Path, target: &Path) -> Result<String, MergeError> {
    merge_into_with_server(admin, target, None)
}

/// [`merge_into`], with every cluster entry of `admin` pointed at `server` when given (a live
/// control plane picked by the caller).
pub fn merge_into_with_server(
    admin: &Path,
    target: &Path,
    server: Option<&str>,
) -> Result<String, MergeError> {
    let src = read_yaml(admin)?;
    let mut src = src.as_mapping().cloned().unwrap_or_default();
    if let Some(server) = server {
        if let Some(Value::Sequence(clusters)) = src.get_mut("clusters") {
            for c in clusters {
                if let Some(Value::Mapping(cluster)) = c.get_mut("cluster") {
                    cluster.insert(Value::from("server"), Value::from(server));
                }
            }
        }
    }
    let context = src
        .get("current-context")
        .and_then(Value::as_str)
        .map(str::to_string)
        .ok_or_else(|| MergeError::Invalid {
            path: admin.to_path_buf(),
            reason: "no current-context".into(),
        })?;

    let mut dst = if target.exists() {
        read_yaml(target)?
    } else {
        Value::Mapping(Mapping::new())
    };
    let Value::Mapping(dst_map) = &mut dst else {
        return Err(MergeError::Invalid {
            path: target.to_path_buf(),
            reason: "top level is not a mapping".into(),
        });
    };
    dst_map
        .entry(Value::from("apiVersion"))
        .or_insert_with(|| Value::from("v1"));
    dst_map
        .entry(Value::from("kind"))
        .or_insert_with(|| Value::from("Config"));
    for key in ["clusters", "users", "contexts"] {
        merge_named(dst_map, &src, key);
    }
    dst_map.insert(Value::from("current-context"), Value::from(context.clone()));

    let text = serde_yaml_ng::to_string(&dst).map_err(|e| MergeError::Invalid {
        path: target.to_path_buf(),
        reason: e.to_string(),
    })?;
    if let Some(parent) = target.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(|source| MergeError::Write {
            path: parent.to_path_buf(),
            source,
        })?;
    }
    // The file holds the admin client key.
    fsutil::write_atomic(target, text.as_bytes(), fsutil::SECRET).map_err(|source| {
        MergeError::Write {
            path: target.to_path_buf(),
            source,
        }
    })?;
    Ok(context)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADMIN: &str = "apiVersion: v1\nkind: Config\nclusters:\n- name: c1\n  cluster: {server: 'https://10.0.0.1:6443'}\nusers:\n- name: admin@c1\n  user: {token: x}\ncontexts:\n- name: admin@c1\n  context: {cluster: c1, user: admin@c1}\ncurrent-context: admin@c1\n";

    #[test]
    fn merges_by_name_and_keeps_others() {
        let dir = tempfile::tempdir().unwrap();
        let admin = dir.path().join("admin.kubeconfig");
        std::fs::write(&admin, ADMIN).unwrap();
        let target = dir.path().join("kube/config");
        std::fs::create_dir_all(target.parent().unwrap()).unwrap();
        std::fs::write(
            &target,
            "apiVersion: v1\nkind: Config\nclusters:\n- name: other\n  cluster: {server: 'https://1.1.1.1'}\n- name: c1\n  cluster: {server: 'https://old'}\ncontexts: []\nusers: []\ncurrent-context: other\n",
        )
        .unwrap();
        assert_eq!(merge_into(&admin, &target).unwrap(), "admin@c1");
        let v: Value = serde_yaml_ng::from_str(&std::fs::read_to_string(&target).unwrap()).unwrap();
        let clusters = v["clusters"].as_sequence().unwrap();
        assert_eq!(clusters.len(), 2);
        assert_eq!(
            clusters[1]["cluster"]["server"],
            Value::from("https://10.0.0.1:6443")
        );
        assert_eq!(v["current-context"], Value::from("admin@c1"));
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(
            std::fs::metadata(&target).unwrap().permissions().mode() & 0o777,
            0o600
        );
        // Idempotent.
        merge_into(&admin, &target).unwrap();
        let v2: Value =
            serde_yaml_ng::from_str(&std::fs::read_to_string(&target).unwrap()).unwrap();
        assert_eq!(v, v2);
    }
}
