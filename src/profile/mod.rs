//! Profiles: load (built-in or file), apply `--set` overrides, deserialize and validate, collecting
//! every error of the file with its position.

pub mod addressing;
pub mod builtin;
pub mod diagnostic;
pub mod efa_layout;
pub mod gpu_nic_layout;
pub mod overrides;
pub mod schema;
pub mod site_release;
pub mod source_map;
pub mod storage;
pub mod storage_check;
pub mod training_floor;
pub mod validate;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use serde_yaml_ng::Value;

pub use diagnostic::{Diagnostic, Origin, ProfileErrors};
pub use schema::*;
use source_map::{Position, SourceMap};

/// A validated profile and where it came from.
#[derive(Debug, Clone)]
pub struct LoadedProfile {
    pub profile: Profile,
    /// Shown in messages: a file path, or `built-in:<name>`.
    pub source_name: String,
    /// Directory that relative paths in the profile are resolved against.
    pub base_dir: PathBuf,
    /// The profile as YAML after overrides: the input that phases fingerprint.
    pub canonical_yaml: String,
}

impl LoadedProfile {
    /// What to pass to `--profile` to name this profile again (for commands in messages).
    pub fn cli_arg(&self) -> String {
        self.source_name
            .strip_prefix("profiles/")
            .and_then(|s| s.strip_suffix(".yaml (built-in)"))
            .map(str::to_string)
            .unwrap_or_else(|| self.source_name.clone())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error(
        "profile {spec:?} is neither a built-in profile nor a readable file\n    built-in profiles: {}",
        builtins.join(", ")
    )]
    NotFound { spec: String, builtins: Vec<String> },
    #[error("cannot read profile {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Invalid(#[from] ProfileErrors),
}

/// Load a built-in profile by name, or a YAML file by path, then apply `--set path=value` flags.
pub fn load(spec: &str, sets: &[String]) -> Result<LoadedProfile, LoadError> {
    let looks_like_path = spec.contains('/') || spec.ends_with(".yaml") || spec.ends_with(".yml");
    let (text, source_name, base_dir) = match builtin::get(spec) {
        Some(text) if !looks_like_path => (
            text.to_string(),
            format!("profiles/{spec}.yaml (built-in)"),
            std::env::current_dir().unwrap_or_else(|_| PathBuf::from(".")),
        ),
        _ => {
            let path = Path::new(spec);
            if !path.exists() {
                return Err(LoadError::NotFound {
                    spec: spec.to_string(),
                    builtins: builtin::names().iter().map(|s| s.to_string()).collect(),
                });
            }
            let text = std::fs::read_to_string(path).map_err(|source| LoadError::Io {
                path: path.to_path_buf(),
                source,
            })?;
            let dir = path
                .parent()
                .filter(|p| !p.as_os_str().is_empty())
                .map(Path::to_path_buf)
                .unwrap_or_else(|| PathBuf::from("."));
            (text, spec.to_string(), dir)
        }
    };
    let (profile, canonical_yaml) = parse(&text, &source_name, sets)?;
    Ok(LoadedProfile {
        profile,
        source_name,
        base_dir,
        canonical_yaml,
    })
}

/// Parse and validate profile text. `file` names it in messages.
pub fn parse(text: &str, file: &str, sets: &[String]) -> Result<(Profile, String), ProfileErrors> {
    let map = SourceMap::parse(text);
    let fail = |diagnostics: Vec<Diagnostic>| ProfileErrors {
        source_name: file.to_string(),
        diagnostics,
    };

    let mut value: Value = match serde_yaml_ng::from_str(text) {
        Ok(v) => v,
        Err(e) => {
            let position = e
                .location()
                .map(|l| Position {
                    line: l.line(),
                    column: l.column(),
                })
                .unwrap_or(Position { line: 1, column: 1 });
            return Err(fail(vec![Diagnostic {
                origin: Origin::File {
                    file: file.to_string(),
                    position,
                },
                path: String::new(),
                problem: "not valid YAML".into(),
                found: e.to_string(),
                allowed: "a YAML mapping with the profile fields".into(),
            }]));
        }
    };

    let mut applied = Vec::new();
    let mut set_errors = Vec::new();
    for arg in sets {
        match overrides::apply(&mut value, arg) {
            Ok(path) => applied.push((path, arg.clone())),
            Err(e) => set_errors.push(Diagnostic {
                origin: Origin::Set { arg: arg.clone() },
                path: e.path,
                problem: e.problem,
                found: e.found,
                allowed: e.allowed,
            }),
        }
    }
    if !set_errors.is_empty() {
        return Err(fail(set_errors));
    }

    default_cloud_login_user(&mut value);
    let mut reporter = diagnostic::Reporter::new(file, &map, &applied);
    let (profile, replaced) = deserialize_collecting(value.clone(), &mut reporter);
    let type_errors = reporter.out.len();
    if let Some(profile) = &profile {
        validate::validate(profile, &mut reporter);
    }
    let mut diagnostics = reporter.out;
    // Semantic errors about stand-in values are noise: the type error already covers them.
    let semantic = diagnostics.split_off(type_errors);
    diagnostics.extend(semantic.into_iter().filter(|d| {
        !replaced.iter().any(|r| {
            d.path == *r
                || d.path.starts_with(&format!("{r}."))
                || d.path.starts_with(&format!("{r}["))
        })
    }));
    sort_diagnostics(&mut diagnostics);
    match profile {
        Some(p) if diagnostics.is_empty() && replaced.is_empty() => {
            let canonical = serde_yaml_ng::to_string(&p).map_err(|e| {
                fail(vec![Diagnostic {
                    origin: Origin::File {
                        file: file.to_string(),
                        position: Position { line: 1, column: 1 },
                    },
                    path: String::new(),
                    problem: "cannot serialize profile".into(),
                    found: e.to_string(),
                    allowed: String::new(),
                }])
            })?;
            site_release::register(&p.kubernetes.extra_releases);
            Ok((p, canonical))
        }
        _ => Err(fail(diagnostics)),
    }
}

/// The login user of the cloud providers' default images (Ubuntu on AWS and GCP) is `ubuntu`,
/// and those images refuse root: unless the profile names `ssh.user`, log in as `ubuntu` there
/// (and elevate with sudo). Local and static default to root.
pub const CLOUD_IMAGE_USER: &str = "ubuntu";

fn default_cloud_login_user(value: &mut Value) {
    let kind = value
        .get("provider")
        .and_then(|p| p.get("kind"))
        .and_then(Value::as_str);
    if !matches!(kind, Some("aws") | Some("gcp")) {
        return;
    }
    let Some(root) = value.as_mapping_mut() else {
        return;
    };
    let ssh = root
        .entry(Value::from("ssh"))
        .or_insert_with(|| Value::Mapping(Default::default()));
    if let Some(m) = ssh.as_mapping_mut() {
        m.entry(Value::from("user"))
            .or_insert_with(|| Value::from(CLOUD_IMAGE_USER));
    }
}

fn sort_diagnostics(d: &mut [Diagnostic]) {
    d.sort_by_key(|d| match &d.origin {
        Origin::Set { .. } => (0, 0, 0),
        Origin::File { position, .. } => (1, position.line, position.column),
    });
}

/// Deserialize, recording every unknown field and every type error instead of stopping at the
/// first: a bad value is replaced by a stand-in of an acceptable type and deserialization retried.
/// Semantic checks later skip the replaced paths, so stand-ins never produce errors of their own.
fn deserialize_collecting(
    mut value: Value,
    reporter: &mut diagnostic::Reporter,
) -> (Option<Profile>, BTreeSet<String>) {
    let mut replaced: BTreeSet<String> = BTreeSet::new();
    for _ in 0..64 {
        let mut unknown: Vec<String> = Vec::new();
        let result = try_deserialize(&value, &mut unknown);
        match result {
            Ok(profile) => {
                for path in unknown {
                    let field = path.rsplit(['.', '[']).next().unwrap_or(&path).to_string();
                    let parent = source_map::parent_path(&path).unwrap_or_default();
                    // The one field that moved: say where to, not just what is allowed here.
                    let allowed = if path == "provider.aws.podRouting" {
                        "pod routing moved to network.podRouting (hostRoutes, vxlan or routeTable)"
                            .to_string()
                    } else {
                        allowed_fields(&parent)
                    };
                    reporter.key_error(&path, format!("unknown field `{field}`"), field, allowed);
                }
                return (Some(profile), replaced);
            }
            Err((path, msg)) => {
                let path = path_without_dot(&path);
                if let Some(field) = missing_field(&msg) {
                    reporter.error(
                        &path,
                        format!("missing required field `{field}`"),
                        "nothing",
                        format!("`{field}` must be set"),
                    );
                    // Stand in for it so the rest of the file is still checked.
                    let full = source_map::join_key(&path, field);
                    if !replaced.insert(full.clone()) || !stand_in(&mut value, &full, &msg) {
                        return (None, replaced);
                    }
                    continue;
                }
                reporter.error(
                    &path,
                    "wrong type or value",
                    clean_serde_message(&msg),
                    expected(&msg),
                );
                if path.is_empty()
                    || !replaced.insert(path.clone())
                    || !stand_in(&mut value, &path, &msg)
                {
                    return (None, replaced);
                }
            }
        }
    }
    (None, replaced)
}

fn try_deserialize(value: &Value, unknown: &mut Vec<String>) -> Result<Profile, (String, String)> {
    let mut on_unknown = |p: serde_ignored::Path| unknown.push(ignored_path(&p));
    let ignored = serde_ignored::Deserializer::new(value.clone(), &mut on_unknown);
    let mut track = serde_path_to_error::Track::new();
    let de = serde_path_to_error::Deserializer::new(ignored, &mut track);
    Profile::deserialize(de).map_err(|e| (track.path().to_string(), e.to_string()))
}

/// Put a value at `path` that gets deserialization past it: the first variant an enum error
/// names, else the first of a few plain values that moves the error elsewhere.
fn stand_in(value: &mut Value, path: &str, msg: &str) -> bool {
    let mut candidates: Vec<String> = Vec::new();
    if let Some(first_variant) = msg
        .split("expected one of `")
        .nth(1)
        .and_then(|r| r.split('`').next())
    {
        candidates.push(first_variant.to_string());
    }
    candidates.extend(
        [
            "1",
            "x",
            "[]",
            "{}",
            "false",
            "10.0.0.0/8",
            "10.0.0.1",
            "{count: 1}",
            "{kind: local}",
        ]
        .map(String::from),
    );
    for c in candidates {
        let mut trial = value.clone();
        if overrides::apply(&mut trial, &format!("{path}={c}")).is_err() {
            continue;
        }
        let mut unknown = Vec::new();
        match try_deserialize(&trial, &mut unknown) {
            Err((p, _)) if path_without_dot(&p) == path => continue,
            _ => {
                *value = trial;
                return true;
            }
        }
    }
    overrides::remove(value, path)
}

/// serde_path_to_error renders the root as `.`.
fn path_without_dot(p: &str) -> String {
    if p == "." {
        String::new()
    } else {
        p.to_string()
    }
}

fn missing_field(msg: &str) -> Option<&str> {
    let rest = msg.split("missing field `").nth(1)?;
    rest.split('`').next()
}

fn clean_serde_message(msg: &str) -> String {
    msg.split(", expected").next().unwrap_or(msg).to_string()
}

fn expected(msg: &str) -> String {
    let e = msg
        .split_once("expected ")
        .map(|(_, e)| e.to_string())
        .unwrap_or_default();
    match e.as_str() {
        "u8" | "u16" | "u32" | "u64" => format!("a whole number from 0 to {}", max_of(&e)),
        "a boolean" => "true or false".into(),
        _ => e,
    }
}

fn max_of(ty: &str) -> u64 {
    match ty {
        "u8" => u8::MAX.into(),
        "u16" => u16::MAX.into(),
        "u32" => u32::MAX.into(),
        _ => u64::MAX,
    }
}

fn ignored_path(p: &serde_ignored::Path) -> String {
    match p {
        serde_ignored::Path::Root => String::new(),
        serde_ignored::Path::Seq { parent, index } => {
            source_map::join_index(&ignored_path(parent), *index)
        }
        serde_ignored::Path::Map { parent, key } => {
            source_map::join_key(&ignored_path(parent), key)
        }
        serde_ignored::Path::Some { parent }
        | serde_ignored::Path::NewtypeStruct { parent }
        | serde_ignored::Path::NewtypeVariant { parent } => ignored_path(parent),
    }
}

/// The fields a mapping at `parent` accepts, for unknown-field messages.
fn allowed_fields(parent: &str) -> String {
    let generic: String = parent
        .split('.')
        .map(|s| s.split('[').next().unwrap_or(s))
        .collect::<Vec<_>>()
        .join(".");
    let fields: &[&str] = match generic.as_str() {
        "" => &[
            "name",
            "description",
            "provider",
            "kubernetes",
            "network",
            "controlPlane",
            "etcd",
            "workers",
            "pki",
            "apiServer",
            "artifacts",
            "ssh",
        ],
        "provider" => &[
            "kind",
            "local",
            "static",
            "aws",
            "gcp",
            "kernelExceptions",
            "containerNodes",
        ],
        "provider.local" => &["bridge", "root"],
        "provider.static" => &["inventory"],
        "provider.aws" => &[
            "region",
            "zones",
            "adminCIDRs",
            "ami",
            "bastion",
            "routeTableLimit",
            "hostKeyWaitSeconds",
        ],
        "provider.aws.ami" => &["owner", "name"],
        "provider.gcp" => &[
            "project",
            "region",
            "zone",
            "adminCIDRs",
            "image",
            "hostKeyWaitSeconds",
        ],
        "kubernetes" => &["version", "clusterDomain"],
        "network" => &[
            "nodeCIDR",
            "podCIDR",
            "podPrefixPerNode",
            "serviceCIDR",
            "apiServiceIP",
            "dnsServiceIP",
            "podRouting",
        ],
        "controlPlane" => &["count", "aws", "gcp"],
        "workers" => &[
            "name",
            "count",
            "gpusPerNode",
            "labels",
            "taints",
            "aws",
            "gcp",
        ],
        "controlPlane.aws" | "workers.aws" => &["instanceType", "rootVolumeGiB"],
        "controlPlane.gcp" | "workers.gcp" => &["machineType", "acceleratorType", "bootDiskGiB"],
        "workers.taints" => &["key", "value", "effect"],
        "etcd" => &["members"],
        "pki" => &["keyAlgorithm", "certValidityDays", "caValidityDays"],
        "apiServer" => &["port", "endpoint", "extraSANs", "auditLogMaxAgeDays"],
        "artifacts" => &["mirror", "trustMirrorChecksums"],
        "ssh" => &["user", "port", "privateKey", "address", "concurrency"],
        _ => &[],
    };
    if fields.is_empty() {
        "no other fields here".to_string()
    } else {
        format!("one of {}", fields.join(", "))
    }
}
