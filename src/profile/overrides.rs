//! `--set path=value` overrides on the YAML tree before it is deserialized.
//!
//! Paths use the same syntax as error messages: `network.podCIDR`, `workers[0].count`.
//! The value is read as a YAML scalar or flow collection, so `count=3` is a number and
//! `zones=[a,b]` a list.

use serde_yaml_ng::{Mapping, Value};

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SetError {
    pub path: String,
    pub problem: String,
    pub found: String,
    pub allowed: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Segment {
    Key(String),
    Index(usize),
}

fn parse_path(path: &str) -> Option<Vec<Segment>> {
    let mut out = Vec::new();
    for part in path.split('.') {
        let (key, mut rest) = match part.find('[') {
            Some(i) => (&part[..i], &part[i..]),
            None => (part, ""),
        };
        if key.is_empty() {
            return None;
        }
        out.push(Segment::Key(key.to_string()));
        while !rest.is_empty() {
            let close = rest.find(']')?;
            if !rest.starts_with('[') {
                return None;
            }
            out.push(Segment::Index(rest[1..close].parse().ok()?));
            rest = &rest[close + 1..];
        }
    }
    Some(out)
}

/// Apply one `path=value` to the tree; returns the path it set.
pub fn apply(root: &mut Value, arg: &str) -> Result<String, SetError> {
    let err = |path: &str, problem: &str, found: &str, allowed: &str| SetError {
        path: path.to_string(),
        problem: problem.to_string(),
        found: found.to_string(),
        allowed: allowed.to_string(),
    };
    let Some((path, raw)) = arg.split_once('=') else {
        return Err(err(
            "",
            "not of the form path=value",
            arg,
            "path=value, e.g. network.podCIDR=10.64.0.0/12 or workers[0].count=8",
        ));
    };
    let path = path.trim();
    let Some(segments) = parse_path(path) else {
        return Err(err(
            path,
            "malformed field path",
            path,
            "dot-separated field names with [index] for list items, e.g. workers[0].count",
        ));
    };
    let value: Value = if raw.is_empty() {
        Value::String(String::new())
    } else {
        serde_yaml_ng::from_str(raw).map_err(|e| {
            err(
                path,
                "value is not valid YAML",
                raw,
                &format!("a YAML value ({e})"),
            )
        })?
    };

    let mut cur = root;
    for (i, seg) in segments.iter().enumerate() {
        let last = i + 1 == segments.len();
        match seg {
            Segment::Key(k) => {
                if cur.is_null() {
                    *cur = Value::Mapping(Mapping::new());
                }
                let Value::Mapping(m) = cur else {
                    return Err(err(
                        path,
                        &format!("`{k}` is set below a field that is not a mapping"),
                        &describe(cur),
                        "a path through mappings",
                    ));
                };
                let key = Value::String(k.clone());
                if last {
                    m.insert(key, value);
                    return Ok(path.to_string());
                }
                cur = m.entry(key).or_insert(Value::Null);
            }
            Segment::Index(idx) => {
                let Value::Sequence(seq) = cur else {
                    return Err(err(
                        path,
                        &format!("[{idx}] indexes a field that is not a list"),
                        &describe(cur),
                        "an index into an existing list",
                    ));
                };
                let len = seq.len();
                let Some(slot) = seq.get_mut(*idx) else {
                    return Err(err(
                        path,
                        &format!("index {idx} is past the end of the list"),
                        &format!("a list of {len} item(s)"),
                        &format!("an index from 0 to {}", len.saturating_sub(1)),
                    ));
                };
                if last {
                    *slot = value;
                    return Ok(path.to_string());
                }
                cur = slot;
            }
        }
    }
    Ok(path.to_string())
}

/// Remove the node at `path` (a map entry) or null it (a list item). False if absent.
pub fn remove(root: &mut Value, path: &str) -> bool {
    let Some(segments) = parse_path(path) else {
        return false;
    };
    let Some((last, parents)) = segments.split_last() else {
        return false;
    };
    let mut cur = root;
    for seg in parents {
        let next = match (seg, cur) {
            (Segment::Key(k), Value::Mapping(m)) => m.get_mut(k.as_str()),
            (Segment::Index(i), Value::Sequence(s)) => s.get_mut(*i),
            _ => None,
        };
        match next {
            Some(n) => cur = n,
            None => return false,
        }
    }
    match (last, cur) {
        (Segment::Key(k), Value::Mapping(m)) => m.remove(k.as_str()).is_some(),
        (Segment::Index(i), Value::Sequence(s)) if *i < s.len() => {
            s[*i] = Value::Null;
            true
        }
        _ => false,
    }
}

fn describe(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) => format!("the string {s:?}"),
        Value::Sequence(_) => "a list".into(),
        Value::Mapping(_) => "a mapping".into(),
        Value::Tagged(_) => "a tagged value".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sets_nested_and_indexed_fields() {
        let mut v: Value = serde_yaml_ng::from_str("a: {b: 1}\nl: [{x: 1}, {x: 2}]\n").unwrap();
        assert_eq!(apply(&mut v, "a.b=5").unwrap(), "a.b");
        assert_eq!(apply(&mut v, "l[1].x=hello").unwrap(), "l[1].x");
        apply(&mut v, "new.deep=[1,2]").unwrap();
        assert_eq!(v["a"]["b"], Value::from(5));
        assert_eq!(v["l"][1]["x"], Value::from("hello"));
        assert_eq!(v["new"]["deep"][1], Value::from(2));
        assert!(apply(&mut v, "l[7].x=1")
            .unwrap_err()
            .problem
            .contains("past the end"));
        assert!(apply(&mut v, "noequals").is_err());
        assert!(remove(&mut v, "a.b"));
        assert!(!remove(&mut v, "a.b"));
    }
}
