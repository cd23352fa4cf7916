//! Profile errors that name the file, line, column, field path, what was found and what is allowed.

use std::fmt;

use super::source_map::{Position, SourceMap};

/// Where a value came from: a line of the profile file, or a `--set` flag.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Origin {
    File { file: String, position: Position },
    Set { arg: String },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    pub origin: Origin,
    /// Field path, e.g. `network.podCIDR` or `workers[1].name`.
    pub path: String,
    pub problem: String,
    pub found: String,
    pub allowed: String,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.origin {
            Origin::File { file, position } => {
                write!(f, "{file}:{}:{}: ", position.line, position.column)?
            }
            Origin::Set { arg } => write!(f, "--set {arg}: ")?,
        }
        let path = if self.path.is_empty() {
            "(document)"
        } else {
            &self.path
        };
        write!(f, "{path}: {}", self.problem)?;
        if !self.found.is_empty() {
            write!(f, "\n    found:   {}", self.found)?;
        }
        if !self.allowed.is_empty() {
            write!(f, "\n    allowed: {}", self.allowed)?;
        }
        Ok(())
    }
}

/// Every error found in one profile, reported together.
#[derive(Debug, Clone, thiserror::Error)]
pub struct ProfileErrors {
    pub source_name: String,
    pub diagnostics: Vec<Diagnostic>,
}

impl fmt::Display for ProfileErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let n = self.diagnostics.len();
        writeln!(
            f,
            "profile {} has {n} error{}:",
            self.source_name,
            if n == 1 { "" } else { "s" }
        )?;
        for d in &self.diagnostics {
            writeln!(f, "{d}")?;
        }
        Ok(())
    }
}

/// Builds diagnostics with positions resolved against the file and the `--set` flags.
pub struct Reporter<'a> {
    pub file: &'a str,
    pub map: &'a SourceMap,
    /// `(path, original argument)` of each `--set`.
    pub sets: &'a [(String, String)],
    pub out: Vec<Diagnostic>,
}

impl<'a> Reporter<'a> {
    pub fn new(file: &'a str, map: &'a SourceMap, sets: &'a [(String, String)]) -> Self {
        Reporter {
            file,
            map,
            sets,
            out: Vec::new(),
        }
    }

    pub fn origin(&self, path: &str, at_key: bool) -> Origin {
        // The last --set that covers this path (or an ancestor of it) wins, as it did when applied.
        if let Some((_, arg)) = self.sets.iter().rev().find(|(p, _)| {
            path == p || path.starts_with(&format!("{p}.")) || path.starts_with(&format!("{p}["))
        }) {
            return Origin::Set { arg: arg.clone() };
        }
        let position = if at_key {
            self.map.key_position(path)
        } else {
            self.map.value_position(path)
        }
        .unwrap_or(Position { line: 1, column: 1 });
        Origin::File {
            file: self.file.to_string(),
            position,
        }
    }

    pub fn error(
        &mut self,
        path: &str,
        problem: impl Into<String>,
        found: impl Into<String>,
        allowed: impl Into<String>,
    ) {
        let origin = self.origin(path, false);
        self.push(origin, path, problem, found, allowed);
    }

    pub fn key_error(
        &mut self,
        path: &str,
        problem: impl Into<String>,
        found: impl Into<String>,
        allowed: impl Into<String>,
    ) {
        let origin = self.origin(path, true);
        self.push(origin, path, problem, found, allowed);
    }

    fn push(
        &mut self,
        origin: Origin,
        path: &str,
        problem: impl Into<String>,
        found: impl Into<String>,
        allowed: impl Into<String>,
    ) {
        self.out.push(Diagnostic {
            origin,
            path: path.to_string(),
            problem: problem.into(),
            found: found.into(),
            allowed: allowed.into(),
        });
    }
}
