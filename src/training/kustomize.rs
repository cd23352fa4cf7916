//! A real kustomize: `kubectl kustomize` (kubectl ≥ 1.27 carries kustomize v5), or a standalone
//! `kustomize build`. The tool is found through `K8SFORGE_KUSTOMIZE` (a path to `kubectl` or
//! `kustomize`), else `kubectl` on PATH, else `kustomize` on PATH; its kustomize must be v5 or
//! newer, because the upstream trees use components, `labels` and replacement transformers
//! that older releases (e.g. Debian bookworm's kubectl 1.20 with kustomize v2) do not know.

use std::path::{Path, PathBuf};
use std::process::Command;

/// Environment variable naming the tool explicitly.
pub const TOOL_ENV: &str = "K8SFORGE_KUSTOMIZE";

/// Oldest kustomize major release that renders the pinned trees.
pub const MIN_MAJOR: u32 = 5;

#[derive(Debug, thiserror::Error)]
pub enum KustomizeError {
    #[error(
        "no kustomize found: the training stack is rendered from upstream kustomize trees with a \
         real kustomize. Install kubectl 1.27 or newer (it carries kustomize v5) or a kustomize v5 \
         binary on PATH, or name one with {TOOL_ENV}=/path/to/kubectl"
    )]
    NotFound,
    #[error(
        "{} carries kustomize {found}, which cannot render the pinned trees: kustomize v{MIN_MAJOR} \
         or newer is needed (kubectl 1.27+), or name another tool with {TOOL_ENV}",
        tool.display()
    )]
    TooOld { tool: PathBuf, found: String },
    #[error("{}: {message}", tool.display())]
    Run { tool: PathBuf, message: String },
    #[error("kustomize {}: {message}", dir.display())]
    Render { dir: PathBuf, message: String },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Flavor {
    Kubectl,
    Standalone,
}

/// A located, version-checked kustomize.
#[derive(Debug, Clone)]
pub struct Kustomize {
    pub tool: PathBuf,
    flavor: Flavor,
    /// e.g. `v5.5.0`.
    pub version: String,
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn flavor_of(tool: &Path) -> Flavor {
    if tool
        .file_name()
        .and_then(|n| n.to_str())
        .is_some_and(|n| n.starts_with("kustomize"))
    {
        Flavor::Standalone
    } else {
        Flavor::Kubectl
    }
}

/// `Kustomize Version: v5.5.0` (kubectl) or `v5.5.0` / `{Version:kustomize/v5.5.0 …}`.
fn parse_version(text: &str) -> Option<String> {
    let line = text
        .lines()
        .find(|l| l.contains("Kustomize Version"))
        .or_else(|| text.lines().find(|l| l.contains('v')))?;
    let start = line.find('v')?;
    let v: String = line[start..]
        .chars()
        .take_while(|c| c.is_ascii_alphanumeric() || *c == '.' || *c == '-')
        .collect();
    v.trim_start_matches('v')
        .split('.')
        .next()?
        .parse::<u32>()
        .ok()?;
    Some(v)
}

fn major(v: &str) -> u32 {
    v.trim_start_matches('v')
        .split('.')
        .next()
        .and_then(|m| m.parse().ok())
        .unwrap_or(0)
}

impl Kustomize {
    /// Find the tool and check its kustomize version.
    pub fn locate() -> Result<Kustomize, KustomizeError> {
        let tool = match std::env::var_os(TOOL_ENV).filter(|v| !v.is_empty()) {
            Some(t) => PathBuf::from(t),
            None => on_path("kubectl")
                .or_else(|| on_path("kustomize"))
                .ok_or(KustomizeError::NotFound)?,
        };
        let flavor = flavor_of(&tool);
        let args: &[&str] = match flavor {
            Flavor::Kubectl => &["version", "--client"],
            Flavor::Standalone => &["version"],
        };
        let out = Command::new(&tool)
            .args(args)
            .output()
            .map_err(|e| KustomizeError::Run {
                tool: tool.clone(),
                message: format!("cannot run it: {e}"),
            })?;
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let version = parse_version(&text).ok_or_else(|| KustomizeError::TooOld {
            tool: tool.clone(),
            found: "of unknown version (no \"Kustomize Version\" in its version output)".into(),
        })?;
        if major(&version) < MIN_MAJOR {
            return Err(KustomizeError::TooOld {
                tool,
                found: version,
            });
        }
        Ok(Kustomize {
            tool,
            flavor,
            version,
        })
    }

    /// Render the kustomization in `dir` to multi-document YAML.
    pub fn build(&self, dir: &Path) -> Result<String, KustomizeError> {
        let mut cmd = Command::new(&self.tool);
        match self.flavor {
            Flavor::Kubectl => cmd.arg("kustomize"),
            Flavor::Standalone => cmd.arg("build"),
        };
        let out = cmd.arg(dir).output().map_err(|e| KustomizeError::Run {
            tool: self.tool.clone(),
            message: format!("cannot run it: {e}"),
        })?;
        if !out.status.success() {
            return Err(KustomizeError::Render {
                dir: dir.to_path_buf(),
                message: String::from_utf8_lossy(&out.stderr).trim().to_string(),
            });
        }
        String::from_utf8(out.stdout).map_err(|_| KustomizeError::Render {
            dir: dir.to_path_buf(),
            message: "output is not UTF-8".into(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_from_kubectl_and_kustomize() {
        let kubectl = "Client Version: v1.32.4\nKustomize Version: v5.5.0\n";
        assert_eq!(parse_version(kubectl).as_deref(), Some("v5.5.0"));
        assert_eq!(parse_version("v5.4.3\n").as_deref(), Some("v5.4.3"));
        let old = "Client Version: version.Info{Major:\"1\"}\nKustomize Version: v2.0.3\n";
        assert_eq!(major(&parse_version(old).unwrap()), 2);
        assert_eq!(parse_version("no version here"), None);
    }
}
