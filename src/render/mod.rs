//! Render: Profile + Inventory + PKI → Bundle, the exact files and commands each node receives.
//!
//! Pure apart from reading the PKI files: the same inputs give a byte-identical bundle. Shared
//! PKI files are read once; nodes render in parallel.

pub mod api_proxy;
pub mod bundle;
pub mod context;
pub mod gpu;
pub mod local_volumes;
pub mod node;
pub mod paths;
pub mod pki_files;
pub mod registry_hosts;
pub mod routes;
pub mod templates;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use minijinja::value::Serde;
use minijinja::{context, Value};
use rayon::prelude::*;

pub use bundle::{Binary, Bundle, BundleFile, NodeBundle};

use crate::artifacts;
use crate::inventory::Inventory;
use crate::profile::{PodRouting, Profile};

#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    #[error("PKI file {path} is missing: run `k8sforge plan` (it issues the PKI) or restore it")]
    MissingPki { path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("no pinned release for Kubernetes {version}; known: {}", known.join(", "))]
    UnknownRelease { version: String, known: Vec<String> },
    #[error("cannot parse {what} version {version:?}")]
    Version { what: &'static str, version: String },
    #[error("node {node}: label {label:?} cannot be set by its kubelet: {why}")]
    Label {
        node: String,
        label: String,
        why: String,
    },
    #[error("template {template} for node {node}: {message}")]
    Template {
        node: String,
        template: String,
        message: String,
    },
    #[error("templates do not compile (a k8sforge build defect): {0}")]
    Templates(String),
    #[error("node {node}: two files render to {path}")]
    DuplicateFile { node: String, path: String },
}

/// Render every node's files from the profile, the inventory and the PKI in `cluster_dir`, for the
/// component versions pinned with the profile's Kubernetes version.
pub fn render(
    profile: &Profile,
    inventory: &Inventory,
    cluster_dir: &Path,
) -> Result<Bundle, RenderError> {
    let release = artifacts::release(&profile.kubernetes.version).ok_or_else(|| {
        RenderError::UnknownRelease {
            version: profile.kubernetes.version.clone(),
            known: artifacts::known_kubernetes_versions()
                .iter()
                .map(|s| s.to_string())
                .collect(),
        }
    })?;
    render_release(
        profile,
        inventory,
        cluster_dir,
        release,
        &artifacts::ImageRefs::with_overrides(release, &profile.artifacts.images),
    )
}

/// Render for explicit component versions: those an artifact mirror actually serves, when its
/// list overrides the pins (config formats differ between e.g. containerd 1.6 and 2.x).
pub fn render_release(
    profile: &Profile,
    inventory: &Inventory,
    cluster_dir: &Path,
    release: &artifacts::Release,
    images: &artifacts::ImageRefs,
) -> Result<Bundle, RenderError> {
    let features = context::Features::for_release(release)?;
    let env = templates::env().map_err(RenderError::Templates)?;
    let pki = pki_files::SharedPki::read(cluster_dir)?;
    let cluster = context::ClusterCtx::new(profile, inventory, release, images);
    let base = context! {
        cluster => Value::from(Serde(&cluster)),
        features => Value::from(Serde(features)),
        paths => Value::from(Serde(paths::PATHS)),
    };
    let mode = match profile.pod_routing() {
        Some(PodRouting::HostRoutes) => Some(routes::Mode::HostRoutes),
        Some(PodRouting::Vxlan) => Some(routes::Mode::Vxlan {
            mtu: routes::vxlan_mtu(profile.provider.kind),
        }),
        // The cloud network routes pod CIDRs (AWS route tables, GCP alias ranges).
        Some(PodRouting::RouteTable) | None => None,
    };
    let routes = mode.map(|m| routes::PodRoutes::new(inventory, m));
    let registry_hosts = registry_hosts::files(&profile.artifacts.registry_mirrors)?;
    let gpu = gpu::GpuCluster::new(profile);
    let api_backends: Vec<String> = inventory
        .with_role(crate::inventory::Role::ControlPlane)
        .map(|n| n.internal_ip.to_string())
        .collect();
    let shared = node::Shared {
        registry_hosts: &registry_hosts,
        env,
        gpu: &gpu,
        routes: routes.as_ref(),
        api_backends: &api_backends,
        cluster_dir,
        release,
        cluster: &cluster,
        base,
        pki: &pki,
        local_volumes: profile
            .training
            .storage
            .local_volumes(crate::profile::storage_check::cloud(profile.provider.kind)),
    };
    let nodes: Vec<(String, NodeBundle)> = inventory
        .nodes
        .par_iter()
        .map(|n| node::render_node(&shared, n).map(|b| (n.name.clone(), b)))
        .collect::<Result<_, _>>()?;
    Ok(Bundle {
        nodes: nodes.into_iter().collect::<BTreeMap<_, _>>(),
    })
}
