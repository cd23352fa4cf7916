//! The phases of `up`, in order. Each is a Hard Way chapter: plan against current state, apply,
//! verify, and record completion in the state file with a fingerprint of its inputs.

use clap::ValueEnum;
use serde::{Deserialize, Serialize};

#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, ValueEnum, Serialize, Deserialize,
)]
#[serde(rename_all = "kebab-case")]
pub enum PhaseName {
    Provision,
    Pki,
    Etcd,
    ControlPlane,
    Workers,
    Network,
    Addons,
    Training,
}

impl PhaseName {
    pub const ALL: [PhaseName; 8] = [
        PhaseName::Provision,
        PhaseName::Pki,
        PhaseName::Etcd,
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
