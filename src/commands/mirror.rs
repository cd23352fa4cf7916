//! `mirror`: build an air-gap artifact mirror for a profile (binaries verified against the pins,
//! images pulled through the registry API into OCI archives, `k8sforge-artifacts.json`).

use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};

use super::inputs::load_profile;
use crate::cli::{OutputFormat, ProfileArgs};

pub fn run(
    args: &ProfileArgs,
    out: &Path,
    from: Option<&str>,
    trust: bool,
    output: OutputFormat,
) -> Result<ExitCode> {
    let loaded = load_profile(args)?;
    let p = &loaded.profile;
    let release = crate::artifacts::release(&p.kubernetes.version)
        .with_context(|| format!("no pinned release for Kubernetes {}", p.kubernetes.version))?;
    // The profile's own mirror is where nodes read from, not where this one is filled from.
    let source = crate::artifacts::ArtifactSource {
        mirror: crate::artifacts::Mirror::parse(from)?,
        trust_mirror_checksums: trust,
    };
    let progress = std::io::IsTerminal::is_terminal(&std::io::stderr());
    // The training stack as the `training` phase would install it: its controllers' images and
    // every pinned file of its upstream kustomize trees.
    let components = crate::training::stack::selected(&p.training, &p.kubernetes.version);
    let mut extra = crate::airgap::Extra::default();
    let mut trees = Vec::new();
    for c in &components {
        extra.images.extend(c.image());
        if !trees.contains(&c.tree()) {
            trees.push(c.tree());
        }
    }
    for t in trees {
        for (path, digest) in t.files() {
            extra.files.push(crate::airgap::PinnedFile {
                url: format!("https://{path}"),
                digest,
            });
        }
    }
    let summary = crate::airgap::build(p, release, &source, out, &extra, progress)?;
    eprintln!("{}", summary.line());
    if output == OutputFormat::Json {
        println!("{}", serde_json::to_string_pretty(&summary)?);
    }
    Ok(ExitCode::SUCCESS)
}
