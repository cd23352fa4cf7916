//! Positions of every field of a YAML document, so validation errors can say file:line:column.
//!
//! serde loses positions once a document is deserialized; this walks the parser's events once and
//! records where each path (`network.podCIDR`, `workers[0].count`) sits.

use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub line: usize,
    pub column: usize,
}

impl From<Marker> for Position {
    fn from(m: Marker) -> Self {
        // yaml-rust2 lines are 1-based, columns 0-based.
        Position {
            line: m.line(),
            column: m.col() + 1,
        }
    }
}

#[derive(Debug, Default, Clone)]
pub struct SourceMap {
    values: HashMap<String, Position>,
    keys: HashMap<String, Position>,
}

impl SourceMap {
    pub fn parse(text: &str) -> SourceMap {
        let mut builder = Builder::default();
        let mut parser = Parser::new_from_str(text);
        // A syntax error is reported by the serde pass; a partial map is still useful.
        let _ = parser.load(&mut builder, false);
        builder.map
    }

    /// Where the value at `path` is, or the nearest ancestor that exists in the file.
    pub fn value_position(&self, path: &str) -> Option<Position> {
        let mut p = path.to_string();
        loop {
            if let Some(pos) = self.values.get(&p) {
                return Some(*pos);
            }
            p = parent_path(&p)?;
        }
    }

    /// Where the key of `path` is (for unknown-field errors), else its value's position.
    pub fn key_position(&self, path: &str) -> Option<Position> {
        self.keys
            .get(path)
            .copied()
            .or_else(|| self.value_position(path))
    }

    pub fn contains(&self, path: &str) -> bool {
        self.values.contains_key(path)
    }
}

/// `a.b[2].c` → `a.b[2]` → `a.b` → `a` → `` → None.
pub fn parent_path(path: &str) -> Option<String> {
    if path.is_empty() {
        return None;
    }
    let cut = path.rfind(['.', '[']).unwrap_or(0);
    Some(path[..cut].to_string())
}

pub fn join_key(parent: &str, key: &str) -> String {
    if parent.is_empty() {
        key.to_string()
    } else {
        format!("{parent}.{key}")
    }
}

pub fn join_index(parent: &str, index: usize) -> String {
    format!("{parent}[{index}]")
}

enum Frame {
    Map { path: String, key: Option<String> },
    Seq { path: String, next: usize },
}

#[derive(Default)]
struct Builder {
    stack: Vec<Frame>,
    map: SourceMap,
}

impl Builder {
    /// Path of the value that starts now, or None when the event is a mapping key.
    fn value_path(&mut self, scalar_key: Option<&str>, mark: Marker) -> Option<String> {
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Map { path, key }) => match key.take() {
                Some(k) => Some(join_key(path, &k)),
                None => {
                    // This event is a key.
                    let k = scalar_key.unwrap_or("").to_string();
                    self.map
                        .keys
                        .insert(join_key(path, &k), Position::from(mark));
                    *key = Some(k);
                    None
                }
            },
            Some(Frame::Seq { path, next }) => {
                let p = join_index(path, *next);
                *next += 1;
                Some(p)
            }
        }
    }
}

impl MarkedEventReceiver for Builder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(ref s, ..) => {
                if let Some(p) = self.value_path(Some(s), mark) {
                    self.map.values.insert(p, Position::from(mark));
                }
            }
            Event::Alias(_) => {
                if let Some(p) = self.value_path(None, mark) {
                    self.map.values.insert(p, Position::from(mark));
                }
            }
            Event::MappingStart(..) => {
                let path = self.value_path(None, mark).unwrap_or_default();
                self.map.values.insert(path.clone(), Position::from(mark));
                self.stack.push(Frame::Map { path, key: None });
            }
            Event::SequenceStart(..) => {
                let path = self.value_path(None, mark).unwrap_or_default();
                self.map.values.insert(path.clone(), Position::from(mark));
                self.stack.push(Frame::Seq { path, next: 0 });
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn records_nested_positions() {
        let text =
            "name: a\nnetwork:\n  podCIDR: 10.0.0.0/16\nworkers:\n  - name: gpu\n    count: 3\n";
        let m = SourceMap::parse(text);
        assert_eq!(
            m.value_position("network.podCIDR"),
            Some(Position {
                line: 3,
                column: 12
            })
        );
        assert_eq!(
            m.key_position("network.podCIDR"),
            Some(Position { line: 3, column: 3 })
        );
        assert_eq!(
            m.value_position("workers[0].count").map(|p| p.line),
            Some(6)
        );
        // Missing field: nearest ancestor.
        assert_eq!(
            m.value_position("workers[0].labels").map(|p| p.line),
            Some(5)
        );
    }
}
