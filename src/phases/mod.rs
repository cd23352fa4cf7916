//! The phases of `up`, in order. Each is a Hard Way chapter: plan against current state, apply,
//! verify, and record completion in the state file with a fingerprint of its inputs.

pub mod addons;
pub mod control_plane;
pub mod etcd;
pub mod gpu_health;
pub mod image_pull;
pub mod network;
pub mod node_fetch;
pub mod node_prep;
pub mod pki;
pub mod provision;
pub mod remote_step;
pub mod runner;
pub mod runtime;
pub mod status;
pub mod step;
pub mod training;
pub mod workers;

use std::time::Duration;

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

use crate::inventory::Inventory;
use crate::profile::LoadedProfile;
use crate::state::{ClusterDir, State};

pub use runner::{run_up, UpOptions, UpReport};

/// Everything a phase reads and the state it updates; built once per `up`.
pub struct Context<'a> {
    pub loaded: &'a LoadedProfile,
    pub dir: &'a ClusterDir,
    pub state: State,
    /// Set by provision (or loaded from state); later phases need it.
    pub inventory: Option<Inventory>,
    /// `--mirror DIR|URL`, overriding the profile's artifact source.
    pub mirror: Option<String>,
    /// `--trust-mirror-checksums`: verify artifacts against the mirror's list, not the pins.
    pub trust_mirror_checksums: bool,
    /// Draw progress bars on stderr.
    pub progress: bool,
    /// `up --replace-drifted`: provision replaces adopted machines that differ from the profile.
    pub replace_drifted: bool,
    /// `node add`: remote phases touch only these nodes (the network phase still reaches
    /// every node, so peers learn the new routes). None: every node.
    pub limit_nodes: Option<std::collections::BTreeSet<String>>,
    /// The rendered bundle, computed once per run (after pki) for every remote phase.
    pub bundle: Option<crate::render::Bundle>,
}

impl Context<'_> {
    /// Whether a remote phase other than `network` works on `node` in this run (`node add`).
    pub fn in_scope(&self, node: &str) -> bool {
        self.limit_nodes.as_ref().is_none_or(|l| l.contains(node))
    }

    /// The profile's pinned release and the artifact source (profile + `--mirror` flags).
    pub fn release_and_source(
        &self,
    ) -> Result<
        (
            &'static crate::artifacts::Release,
            crate::artifacts::ArtifactSource,
        ),
        PhaseError,
    > {
        let p = &self.loaded.profile;
        let release = crate::artifacts::release(&p.kubernetes.version).ok_or_else(|| {
            PhaseError::Failed(format!(
                "no pinned release for Kubernetes {}",
                p.kubernetes.version
            ))
        })?;
        let source = crate::artifacts::ArtifactSource::from_profile(
            &p.artifacts,
            self.mirror.as_deref(),
            self.trust_mirror_checksums,
        )
        .map_err(|e| PhaseError::Failed(e.to_string()))?;
        Ok((release, source))
    }

    /// Render the bundle on first use.
    pub fn bundle(&mut self) -> Result<&crate::render::Bundle, PhaseError> {
        if self.bundle.is_none() {
            let inv = self.inventory.as_ref().ok_or(PhaseError::NoInventory {
                phase: PhaseName::Workers,
            })?;
            let p = &self.loaded.profile;
            let (pinned, source) = self.release_and_source()?;
            let release = crate::artifacts::source::effective_release(pinned, &source)
                .map_err(|e| PhaseError::Failed(e.to_string()))?;
            let images =
                crate::artifacts::ImageRefs::for_source(pinned, &p.artifacts.images, &source)
                    .map_err(|e| PhaseError::Failed(e.to_string()))?;
            let b = crate::render::render_release(p, inv, &self.dir.root, &release, &images)
                .map_err(|e| PhaseError::Failed(e.to_string()))?;
            self.bundle = Some(b);
        }
        self.bundle
            .as_ref()
            .ok_or_else(|| PhaseError::Failed("bundle missing".into()))
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PhaseError {
    #[error("phase {0} is not implemented yet in this version")]
    NotImplemented(PhaseName),
    #[error("phase {phase} needs the node inventory: run `k8sforge up --only provision` first")]
    NoInventory { phase: PhaseName },
    #[error("{0}")]
    Failed(String),
    #[error(transparent)]
    State(#[from] crate::state::StateError),
    #[error(transparent)]
    Other(#[from] anyhow::Error),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Outcome {
    Done,
    /// Inputs unchanged since the last successful run.
    Unchanged,
    Failed,
    NotImplemented,
}

/// One line of `up`'s result (also what `--output json` returns per phase).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct PhaseSummary {
    pub phase: PhaseName,
    pub outcome: Outcome,
    pub files_changed: usize,
    pub units_restarted: usize,
    /// `(node, error)` for every node the phase failed on.
    pub failed_nodes: Vec<(String, String)>,
    /// node → files changed there, for the nodes where something changed (remote phases).
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub nodes_changed: std::collections::BTreeMap<String, usize>,
    /// Things the operator must act on although the phase succeeded (printed under its line).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Short human detail, e.g. "3 nodes" or "12 certificates issued".
    pub detail: String,
    /// Payload bytes the operator's side sent each node over SSH in this phase.
    #[serde(skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub bytes_sent: std::collections::BTreeMap<String, u64>,
    /// Bytes the nodes downloaded themselves (artifact source or seed nodes), all nodes together.
    #[serde(skip_serializing_if = "is_zero")]
    pub bytes_fetched: u64,
    #[serde(with = "secs")]
    pub elapsed: Duration,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

mod secs {
    pub fn serialize<S: serde::Serializer>(
        d: &std::time::Duration,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        s.serialize_f64((d.as_secs_f64() * 1000.0).round() / 1000.0)
    }
}

/// A step of `up`, in the spirit of kind's actions and k0sctl's phases: a title for the status
/// line, an optional fingerprint of its inputs (None: always run, because the phase converges
/// cheaply), and run.
pub trait Phase {
    fn name(&self) -> PhaseName;
    /// Status-line title, e.g. "Preparing nodes".
    fn title(&self) -> &'static str;
    fn fingerprint(&self, _ctx: &Context) -> Result<Option<String>, PhaseError> {
        Ok(None)
    }
    fn run(&self, ctx: &mut Context) -> Result<PhaseSummary, PhaseError>;
}

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum PhaseName {
    Provision,
    Pki,
    Etcd,
    Runtime,
    ControlPlane,
    Workers,
    Network,
    Addons,
    Training,
}

impl PhaseName {
    pub const ALL: [PhaseName; 9] = [
        PhaseName::Provision,
        PhaseName::Pki,
        PhaseName::Etcd,
        PhaseName::Runtime,
        PhaseName::ControlPlane,
        PhaseName::Workers,
        PhaseName::Network,
        PhaseName::Addons,
        PhaseName::Training,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            PhaseName::Provision => "provision",
            PhaseName::Pki => "pki",
            PhaseName::Etcd => "etcd",
            PhaseName::Runtime => "runtime",
            PhaseName::ControlPlane => "control-plane",
            PhaseName::Workers => "workers",
            PhaseName::Network => "network",
            PhaseName::Addons => "addons",
            PhaseName::Training => "training",
        }
    }

    /// The phases `up` runs for `--only`/`--from`.
    pub fn selection(only: Option<PhaseName>, from: Option<PhaseName>) -> Vec<PhaseName> {
        match (only, from) {
            (Some(p), _) => vec![p],
            (None, Some(f)) => Self::ALL.iter().copied().filter(|p| *p >= f).collect(),
            (None, None) => Self::ALL.to_vec(),
        }
    }
}

impl std::fmt::Display for PhaseName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}
