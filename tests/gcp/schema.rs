//! The Compute v1 wire contract, read at test time from google-cloud-cli's generated client
//! (`compute_v1_client.py` for methods and paths, `compute_v1_messages.py` for message fields)
//! by `dump_schema.py`. Nothing from the SDK is committed.

use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use serde::Deserialize;
use serde_json::Value;

pub const SDK_ROOT: &str = "/usr/lib/google-cloud-sdk";

#[derive(Debug, Clone, Deserialize)]
pub struct MethodDef {
    pub id: String,
    pub http_method: String,
    pub path: String,
    pub path_params: Vec<String>,
    pub query_params: Vec<String>,
    pub request_type: String,
    pub request_field: Option<String>,
}

#[derive(Debug, Clone, Deserialize)]
pub struct FieldDef {
    pub kind: String,
    #[serde(rename = "type")]
    pub message: Option<String>,
    #[serde(default)]
    pub values: Vec<String>,
    #[serde(default)]
    pub repeated: bool,
    #[serde(default)]
    pub required: bool,
}

#[derive(Debug, Clone, Deserialize)]
pub struct MessageDef {
    pub fields: BTreeMap<String, FieldDef>,
    #[serde(default)]
    pub map_value: Option<FieldDef>,
}

#[derive(Debug, Deserialize)]
pub struct Schema {
    pub methods: Vec<MethodDef>,
    pub messages: HashMap<String, MessageDef>,
}

/// Query parameters every Google API method accepts (apitools' StandardQueryParameters), and
/// the `$`-prefixed system parameters of Google's API platform ("System parameters" in the
/// Cloud APIs docs) that Google's Rust client libraries send (`$alt`, `$apiVersion`).
pub const STANDARD_QUERY: &[&str] = &[
    "$.xgafv",
    "$alt",
    "$apiVersion",
    "$callback",
    "$fields",
    "$key",
    "$prettyPrint",
    "$quotaUser",
    "access_token",
    "alt",
    "callback",
    "fields",
    "key",
    "oauth_token",
    "prettyPrint",
    "quotaUser",
    "trace",
    "uploadType",
    "upload_protocol",
    "userIp",
    "$alt",
    "$apiVersion",
];

/// Load once per test process. Fails loudly if google-cloud-cli is missing: the test script
/// installs it (`apt-get install -y google-cloud-cli`).
pub fn schema() -> &'static Schema {
    static S: OnceLock<Schema> = OnceLock::new();
    S.get_or_init(|| {
        let client = Path::new(SDK_ROOT)
            .join("lib/googlecloudsdk/generated_clients/apis/compute/v1/compute_v1_client.py");
        assert!(
            client.exists(),
            "google-cloud-cli is not installed ({} missing): the GCP contract tests need it; \
             install with `apt-get install -y google-cloud-cli` (Google's apt repository)",
            client.display()
        );
        // One dump per SDK version, shared by the test processes (nextest runs each test in
        // its own): keyed by the generated files' sizes and mtimes, written atomically.
        let messages = client.with_file_name("compute_v1_messages.py");
        let key = [&client, &messages]
            .iter()
            .map(|p| {
                let m = std::fs::metadata(p).expect("SDK file metadata");
                let t = m
                    .modified()
                    .ok()
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_secs());
                format!("{}-{t}", m.len())
            })
            .collect::<Vec<_>>()
            .join("-");
        let cache = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
            .join(format!("compute-v1-schema-{key}.json"));
        if let Ok(bytes) = std::fs::read(&cache) {
            if let Ok(s) = serde_json::from_slice(&bytes) {
                return s;
            }
        }
        let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/gcp/dump_schema.py");
        let out = Command::new("python3")
            .arg(&script)
            .env(
                "PYTHONPATH",
                format!("{SDK_ROOT}/lib:{SDK_ROOT}/lib/third_party"),
            )
            .output()
            .expect("python3 is needed to read the Compute schema from google-cloud-cli");
        assert!(
            out.status.success(),
            "dump_schema.py failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let tmp = cache.with_extension(format!("tmp{}", std::process::id()));
        if std::fs::write(&tmp, &out.stdout).is_ok() {
            let _ = std::fs::rename(&tmp, &cache);
        }
        serde_json::from_slice(&out.stdout).expect("schema JSON")
    })
}

/// A request that breaks the contract, in the API's terms.
#[derive(Debug, Clone)]
pub struct Violation {
    pub reason: &'static str,
    pub message: String,
}

impl Schema {
    /// The method a request addresses: same HTTP method, template segments match, most
    /// literal segments win (`instances/bulkInsert` over `instances/{instance}`).
    pub fn route(
        &self,
        http_method: &str,
        path: &str,
    ) -> Option<(&MethodDef, HashMap<String, String>)> {
        let segs: Vec<&str> = path.split('/').collect();
        let mut best: Option<(usize, &MethodDef, HashMap<String, String>)> = None;
        for m in self.methods.iter().filter(|m| m.http_method == http_method) {
            let t: Vec<&str> = m.path.split('/').collect();
            if t.len() != segs.len() {
                continue;
            }
            let mut params = HashMap::new();
            let mut literal = 0;
            let ok = t.iter().zip(&segs).all(|(ts, s)| {
                if ts.starts_with('{') && ts.ends_with('}') {
                    params.insert(
                        ts.trim_matches(|c| c == '{' || c == '}' || c == '+')
                            .to_string(),
                        s.to_string(),
                    );
                    !s.is_empty()
                } else {
                    literal += 1;
                    ts == s
                }
            });
            let ok = ok && m.path_params.iter().all(|p| params.contains_key(p));
            if ok && best.as_ref().is_none_or(|(l, _, _)| literal > *l) {
                best = Some((literal, m, params));
            }
        }
        best.map(|(_, m, p)| (m, p))
    }

    /// The message type of a method's request body.
    pub fn body_type(&self, m: &MethodDef) -> Option<String> {
        let field = m.request_field.as_ref()?;
        self.messages
            .get(&m.request_type)?
            .fields
            .get(field)?
            .message
            .clone()
    }

    /// Check a JSON value against a message type: unknown fields, JSON types (int64 as
    /// strings), enum values.
    pub fn check(&self, ty: &str, v: &Value, at: &str) -> Result<(), Violation> {
        let def = self.messages.get(ty).ok_or_else(|| Violation {
            reason: "invalid",
            message: format!("schema has no message {ty}"),
        })?;
        let obj = v.as_object().ok_or_else(|| Violation {
            reason: "invalid",
            message: format!("Invalid JSON payload received. Expected an object at '{at}' ({ty})."),
        })?;
        if let Some(mv) = &def.map_value {
            for (k, item) in obj {
                self.check_field(mv, item, &format!("{at}[{k}]"))?;
            }
            return Ok(());
        }
        for (name, f) in &def.fields {
            if f.required && obj.get(name).is_none_or(Value::is_null) {
                return Err(Violation {
                    reason: "required",
                    message: format!("Required field '{at}.{name}' not specified"),
                });
            }
        }
        for (k, item) in obj {
            let f = def.fields.get(k).ok_or_else(|| Violation {
                reason: "invalid",
                message: format!(
                    "Invalid JSON payload received. Unknown name \"{k}\" at '{at}': Cannot find field."
                ),
            })?;
            self.check_field(f, item, &format!("{at}.{k}"))?;
        }
        Ok(())
    }

    fn check_field(&self, f: &FieldDef, v: &Value, at: &str) -> Result<(), Violation> {
        if f.repeated {
            let arr = v.as_array().ok_or_else(|| bad(at, "a list", v))?;
            let one = FieldDef {
                repeated: false,
                ..f.clone()
            };
            for (i, item) in arr.iter().enumerate() {
                self.check_field(&one, item, &format!("{at}[{i}]"))?;
            }
            return Ok(());
        }
        let ok = match f.kind.as_str() {
            "string" | "bytes" => v.is_string(),
            "bool" => v.is_boolean(),
            // proto3 JSON: 64-bit integers are strings (the API's discovery doc says
            // "format": "int64" on a string type).
            "int64" => v.as_str().is_some_and(|s| s.parse::<i64>().is_ok()),
            "uint64" => v.as_str().is_some_and(|s| s.parse::<u64>().is_ok()),
            "int32" => v.as_i64().is_some_and(|n| i32::try_from(n).is_ok()),
            "uint32" => v.as_u64().is_some_and(|n| u32::try_from(n).is_ok()),
            "double" => v.is_number(),
            "enum" => v.as_str().is_some_and(|s| f.values.iter().any(|x| x == s)),
            "message" => {
                let ty = f.message.clone().unwrap_or_default();
                return self.check(&ty, v, at);
            }
            _ => true,
        };
        if ok {
            Ok(())
        } else {
            let want = match f.kind.as_str() {
                "int64" | "uint64" => "TYPE_INT64 (a decimal string)".to_string(),
                "enum" => format!("one of {}", f.values.join(", ")),
                k => format!("TYPE_{}", k.to_uppercase()),
            };
            Err(bad(at, &want, v))
        }
    }
}

fn bad(at: &str, want: &str, v: &Value) -> Violation {
    Violation {
        reason: "invalid",
        message: format!("Invalid value at '{at}' ({want}), {v}"),
    }
}
