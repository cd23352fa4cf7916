//! The oldest Kubernetes each training-stack component supports, at the profile layer so that
//! validation can refuse a component offline (`training::stack` reads the same floors).
//! - Trainer v2: "Kubernetes >= 1.31" (kubeflow.org, Trainer operator guide, Installation);
//!   JobSet is installed only as Trainer's dependency and shares that floor.
//! - Kueue: 1.29, as the issue states for the current releases.
//! - training-operator v1: "Version >= 1.23 of Kubernetes" (its README's prerequisites).

/// A component's title (with its pinned tag) and its minimum Kubernetes (major, minor).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Floor {
    pub title: &'static str,
    pub min: (u32, u32),
}

pub const TRAINING_OPERATOR: Floor = Floor {
    title: "training-operator v1.9.4",
    min: (1, 23),
};
pub const TRAINER: Floor = Floor {
    title: "Kubeflow Trainer v2.3.0",
    min: (1, 31),
};
pub const KUEUE: Floor = Floor {
    title: "Kueue v0.19.2",
    min: (1, 29),
};

impl Floor {
    /// Why this component cannot go on a cluster of `kubernetes` (e.g. `v1.28.7`), if so.
    pub fn refusal(&self, kubernetes: &str) -> Option<String> {
        refusal(self.title, self.min, kubernetes)
    }
}

/// "<title> needs Kubernetes vX.Y or newer; this cluster runs <kubernetes>", when it does not.
pub fn refusal(title: &str, (maj, min): (u32, u32), kubernetes: &str) -> Option<String> {
    let have = crate::artifacts::minor_version(kubernetes)?;
    (have < (maj, min)).then(|| {
        format!("{title} needs Kubernetes v{maj}.{min} or newer; this cluster runs {kubernetes}")
    })
}
