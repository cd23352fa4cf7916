//! Offline validation of custom resources against their CRD's `openAPIV3Schema`, the way the
//! apiserver reads a structural schema: `type`, `properties`, `required`, `items`,
//! `additionalProperties`, `enum`, `nullable`, string/number/array bounds, `pattern`, `allOf`/
//! `anyOf`/`oneOf`/`not`, and the Kubernetes extensions `x-kubernetes-int-or-string`,
//! `x-kubernetes-preserve-unknown-fields` and `x-kubernetes-embedded-resource`.
//!
//! Stricter than the apiserver in one way, on purpose: a field the schema does not know is an
//! error (the apiserver would silently prune it, so a misspelt field would be lost). CEL rules
//! (`x-kubernetes-validations`) are not evaluated here; the apiserver checks them on apply.

use std::collections::BTreeMap;
use std::sync::Mutex;

use serde_json::Value;

/// Compiled `pattern`s, shared by every validation in the process.
static PATTERNS: Mutex<BTreeMap<String, Option<regex::Regex>>> = Mutex::new(BTreeMap::new());

fn pattern_matches(pattern: &str, s: &str) -> bool {
    let mut cache = PATTERNS.lock().unwrap_or_else(|p| p.into_inner());
    let re = cache
        .entry(pattern.to_string())
        .or_insert_with(|| regex::Regex::new(pattern).ok());
    // A pattern the regex crate cannot compile (look-around) is left to the apiserver.
    re.as_ref().is_none_or(|r| r.is_match(s))
}

fn flag(schema: &Value, key: &str) -> bool {
    schema.get(key).and_then(Value::as_bool).unwrap_or(false)
}

fn type_name(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "boolean",
        Value::Number(n) if n.is_i64() || n.is_u64() => "integer",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

/// Validate `value` against `schema`; every problem is returned as `path: what`.
pub fn validate(schema: &Value, value: &Value) -> Vec<String> {
    let mut errors = Vec::new();
    check(schema, value, "", true, &mut errors);
    errors
}

/// `structural`: report fields the schema does not declare (off inside `anyOf`/`oneOf`/`not`
/// branches, which in a structural schema only constrain values).
fn check(schema: &Value, v: &Value, path: &str, structural: bool, errors: &mut Vec<String>) {
    let at = |p: &str| {
        if p.is_empty() {
            "(root)".to_string()
        } else {
            p.to_string()
        }
    };
    if v.is_null() {
        if flag(schema, "nullable") || schema.get("type").is_none() {
            return;
        }
        errors.push(format!("{}: null is not allowed", at(path)));
        return;
    }
    if flag(schema, "x-kubernetes-int-or-string") {
        if !matches!(type_name(v), "integer" | "string") {
            errors.push(format!(
                "{}: must be an integer or a string, found {}",
                at(path),
                type_name(v)
            ));
        }
        return;
    }
    if let Some(t) = schema.get("type").and_then(Value::as_str) {
        let found = type_name(v);
        let ok = t == found || (t == "number" && found == "integer");
        if !ok {
            errors.push(format!("{}: must be {t}, found {found}", at(path)));
            return;
        }
    }
    if let Some(allowed) = schema.get("enum").and_then(Value::as_array) {
        if !allowed.contains(v) {
            let list: Vec<String> = allowed.iter().map(Value::to_string).collect();
            errors.push(format!(
                "{}: {v} is not one of {}",
                at(path),
                list.join(", ")
            ));
        }
    }
    match v {
        Value::String(s) => {
            let len = s.chars().count() as u64;
            if let Some(max) = schema.get("maxLength").and_then(Value::as_u64) {
                if len > max {
                    errors.push(format!("{}: longer than {max} characters", at(path)));
                }
            }
            if let Some(min) = schema.get("minLength").and_then(Value::as_u64) {
                if len < min {
                    errors.push(format!("{}: shorter than {min} characters", at(path)));
                }
            }
            if let Some(p) = schema.get("pattern").and_then(Value::as_str) {
                if !pattern_matches(p, s) {
                    errors.push(format!("{}: {s:?} does not match {p}", at(path)));
                }
            }
        }
        Value::Number(n) => {
            let x = n.as_f64().unwrap_or(0.0);
            if let Some(max) = schema.get("maximum").and_then(Value::as_f64) {
                if x > max {
                    errors.push(format!("{}: {n} is above the maximum {max}", at(path)));
                }
            }
            if let Some(min) = schema.get("minimum").and_then(Value::as_f64) {
                if x < min {
                    errors.push(format!("{}: {n} is below the minimum {min}", at(path)));
                }
            }
        }
        Value::Array(items) => {
            let n = items.len() as u64;
            if let Some(max) = schema.get("maxItems").and_then(Value::as_u64) {
                if n > max {
                    errors.push(format!("{}: more than {max} items", at(path)));
                }
            }
            if let Some(min) = schema.get("minItems").and_then(Value::as_u64) {
                if n < min {
                    errors.push(format!("{}: fewer than {min} items", at(path)));
                }
            }
            if let Some(item_schema) = schema.get("items") {
                for (i, item) in items.iter().enumerate() {
                    check(
                        item_schema,
                        item,
                        &join(path, &i.to_string()),
                        structural,
                        errors,
                    );
                }
            }
        }
        Value::Object(map) => check_object(schema, map, path, structural, errors),
        _ => {}
    }
    for sub in schema
        .get("allOf")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        check(sub, v, path, false, errors);
    }
    if let Some(any) = schema.get("anyOf").and_then(Value::as_array) {
        if !any.iter().any(|s| branch_ok(s, v, path)) {
            errors.push(format!(
                "{}: matches none of the schema's anyOf alternatives",
                at(path)
            ));
        }
    }
    if let Some(one) = schema.get("oneOf").and_then(Value::as_array) {
        let n = one.iter().filter(|s| branch_ok(s, v, path)).count();
        if n != 1 {
            errors.push(format!(
                "{}: matches {n} of the schema's oneOf alternatives, not exactly one",
                at(path)
            ));
        }
    }
    if let Some(not) = schema.get("not") {
        if branch_ok(not, v, path) {
            errors.push(format!(
                "{}: matches a form the schema forbids (not)",
                at(path)
            ));
        }
    }
}

fn branch_ok(schema: &Value, v: &Value, path: &str) -> bool {
    let mut e = Vec::new();
    check(schema, v, path, false, &mut e);
    e.is_empty()
}

fn check_object(
    schema: &Value,
    map: &serde_json::Map<String, Value>,
    path: &str,
    structural: bool,
    errors: &mut Vec<String>,
) {
    let at = |p: &str| {
        if p.is_empty() {
            "(root)".to_string()
        } else {
            p.to_string()
        }
    };
    for r in schema
        .get("required")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        if let Some(name) = r.as_str() {
            if !map.contains_key(name) {
                errors.push(format!(
                    "{}: required field {name} is missing",
                    join(path, name)
                ));
            }
        }
    }
    let embedded = flag(schema, "x-kubernetes-embedded-resource");
    let preserve = flag(schema, "x-kubernetes-preserve-unknown-fields");
    let props = schema.get("properties").and_then(Value::as_object);
    let additional = schema.get("additionalProperties");
    for (key, val) in map {
        let p = join(path, key);
        // Object metadata is ObjectMeta whatever the CRD says (`type: object` without
        // properties); DynamicObject parsing and the apiserver check it.
        if key == "metadata" && (path.is_empty() || embedded) {
            continue;
        }
        if let Some(s) = props.and_then(|ps| ps.get(key)) {
            check(s, val, &p, structural, errors);
            continue;
        }
        match additional {
            Some(Value::Bool(true)) => {}
            Some(s @ Value::Object(_)) => check(s, val, &p, structural, errors),
            _ => {
                let implicit =
                    embedded && matches!(key.as_str(), "apiVersion" | "kind" | "metadata");
                let root_meta =
                    path.is_empty() && matches!(key.as_str(), "apiVersion" | "kind" | "metadata");
                if structural && !preserve && !implicit && !root_meta {
                    let known: Vec<&str> = props
                        .map(|ps| ps.keys().map(String::as_str).collect())
                        .unwrap_or_default();
                    errors.push(format!(
                        "{}: unknown field{}",
                        at(&p),
                        if known.is_empty() {
                            String::new()
                        } else {
                            format!(" (known here: {})", known.join(", "))
                        }
                    ));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn schema() -> Value {
        json!({
            "type": "object",
            "properties": {
                "apiVersion": {"type": "string"},
                "kind": {"type": "string"},
                "metadata": {"type": "object"},
                "spec": {
                    "type": "object",
                    "required": ["replicas"],
                    "properties": {
                        "replicas": {"type": "integer", "minimum": 1},
                        "policy": {"type": "string", "enum": ["Never", "Always"]},
                        "port": {"x-kubernetes-int-or-string": true},
                        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
                        "template": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                        "name": {"type": "string", "pattern": "^[a-z]+$", "maxLength": 5},
                        "list": {"type": "array", "items": {"type": "object", "properties": {"a": {"type": "boolean"}}}},
                        "quantity": {"anyOf": [{"type": "integer"}, {"type": "string"}], "x-kubernetes-int-or-string": true}
                    }
                }
            }
        })
    }

    #[test]
    fn a_valid_object_passes() {
        let v = json!({"apiVersion": "x/v1", "kind": "K", "metadata": {"name": "n"},
            "spec": {"replicas": 2, "policy": "Never", "port": "http", "labels": {"a": "b"},
                     "template": {"anything": {"goes": 1}}, "name": "abc", "list": [{"a": true}],
                     "quantity": "10Gi"}});
        assert_eq!(validate(&schema(), &v), Vec::<String>::new());
    }

    #[test]
    fn every_mistake_is_named_with_its_path() {
        let v = json!({"spec": {"replicas": 0, "policy": "Sometimes", "port": true,
            "labels": {"a": 1}, "name": "ABCDEFG", "list": [{"b": 1}], "replica": 1}});
        let e = validate(&schema(), &v).join("\n");
        for needle in [
            "spec.replicas: 0 is below the minimum",
            "spec.policy: \"Sometimes\" is not one of",
            "spec.port: must be an integer or a string",
            "spec.labels.a: must be string",
            "spec.name: \"ABCDEFG\" does not match",
            "spec.name: longer than 5",
            "spec.list.0.b: unknown field (known here: a)",
            "spec.replica: unknown field",
        ] {
            assert!(e.contains(needle), "{needle} not in:\n{e}");
        }
        let e = validate(&schema(), &json!({"spec": {}})).join("\n");
        assert!(
            e.contains("spec.replicas: required field replicas is missing"),
            "{e}"
        );
    }
}
