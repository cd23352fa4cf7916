//! What the training stack consists of, what each part needs from the cluster, and which parts
//! a profile gets.

use serde::Serialize;

use crate::artifacts::images::ClusterImage;
use crate::profile::schema::{TrainingOperator, TrainingSpec};

use super::upstream::Tree;

/// One installable part of the stack.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Component {
    /// training-operator v1 (PyTorchJob, TFJob, MPIJob, …), namespace `kubeflow`.
    TrainingOperator,
    /// JobSet, which Trainer v2 runs its TrainJobs on, namespace `jobset-system`.
    JobSet,
    /// Trainer v2 controller manager, namespace `kubeflow-system`.
    Trainer,
    /// Trainer v2's ClusterTrainingRuntimes (custom resources: applied once its CRDs exist).
    TrainerRuntimes,
    /// Kueue, namespace `kueue-system`.
    Kueue,
}

impl Component {
    pub fn name(self) -> &'static str {
        match self {
            Component::TrainingOperator => "training-operator",
            Component::JobSet => "jobset",
            Component::Trainer => "trainer",
            Component::TrainerRuntimes => "trainer-runtimes",
            Component::Kueue => "kueue",
        }
    }

    /// Human name with version, for messages.
    pub fn title(self) -> String {
        match self {
            Component::TrainingOperator => format!("training-operator {}", self.tree().tag()),
            Component::JobSet => format!("JobSet {}", self.tree().tag()),
            Component::Trainer | Component::TrainerRuntimes => {
                format!("Kubeflow Trainer {}", self.tree().tag())
            }
            Component::Kueue => format!("Kueue {}", self.tree().tag()),
        }
    }

    pub fn tree(self) -> Tree {
        match self {
            Component::TrainingOperator => Tree::TrainingOperator,
            Component::JobSet => Tree::JobSet,
            Component::Trainer | Component::TrainerRuntimes => Tree::Trainer,
            Component::Kueue => Tree::Kueue,
        }
    }

    /// The namespace its controller runs in (None: cluster-scoped objects only).
    pub fn namespace(self) -> Option<&'static str> {
        match self {
            Component::TrainingOperator => Some("kubeflow"),
            Component::JobSet => Some("jobset-system"),
            Component::Trainer => Some("kubeflow-system"),
            Component::TrainerRuntimes => None,
            Component::Kueue => Some("kueue-system"),
        }
    }

    /// Its controller image (None: no controller of its own).
    pub fn image(self) -> Option<ClusterImage> {
        match self {
            Component::TrainingOperator => Some(ClusterImage::TrainingOperator),
            Component::JobSet => Some(ClusterImage::JobSet),
            Component::Trainer => Some(ClusterImage::TrainerControllerManager),
            Component::TrainerRuntimes => None,
            Component::Kueue => Some(ClusterImage::Kueue),
        }
    }

    /// The oldest Kubernetes (major, minor) upstream states it supports (`profile::training_floor`).
    pub fn min_kubernetes(self) -> (u32, u32) {
        use crate::profile::training_floor::{KUEUE, TRAINER, TRAINING_OPERATOR};
        match self {
            Component::TrainingOperator => TRAINING_OPERATOR.min,
            Component::JobSet | Component::Trainer | Component::TrainerRuntimes => TRAINER.min,
            Component::Kueue => KUEUE.min,
        }
    }

    /// Why this component cannot go on a cluster of `kubernetes` (e.g. `v1.28.7`), if so.
    pub fn refusal(self, kubernetes: &str) -> Option<String> {
        crate::profile::training_floor::refusal(&self.title(), self.min_kubernetes(), kubernetes)
    }
}

impl std::fmt::Display for Component {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The default operators for a Kubernetes version: training-operator v1 always (TFJob exists only
/// there, and it is what clusters below Trainer v2's minimum can run), Trainer v2 beside it where
/// the cluster meets Trainer's minimum.
pub fn default_operators(kubernetes: &str) -> Vec<TrainingOperator> {
    let mut ops = vec![TrainingOperator::V1];
    if Component::Trainer.refusal(kubernetes).is_none() {
        ops.push(TrainingOperator::V2);
    }
    ops
}

/// Kueue by default where the cluster meets its minimum.
pub fn default_kueue(kubernetes: &str) -> bool {
    Component::Kueue.refusal(kubernetes).is_none()
}

/// The components a profile's `training:` section selects, in install order.
pub fn selected(spec: &TrainingSpec, kubernetes: &str) -> Vec<Component> {
    if !spec.enabled {
        return Vec::new();
    }
    let ops = spec
        .operators
        .clone()
        .unwrap_or_else(|| default_operators(kubernetes));
    let mut out = Vec::new();
    if ops.contains(&TrainingOperator::V1) {
        out.push(Component::TrainingOperator);
    }
    if ops.contains(&TrainingOperator::V2) {
        out.extend([
            Component::JobSet,
            Component::Trainer,
            Component::TrainerRuntimes,
        ]);
    }
    if spec.kueue.unwrap_or_else(|| default_kueue(kubernetes)) {
        out.push(Component::Kueue);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_the_kubernetes_version() {
        let spec = TrainingSpec::default();
        assert_eq!(
            selected(&spec, "v1.28.7"),
            vec![Component::TrainingOperator]
        );
        assert_eq!(
            selected(&spec, "v1.34.2"),
            vec![
                Component::TrainingOperator,
                Component::JobSet,
                Component::Trainer,
                Component::TrainerRuntimes,
                Component::Kueue
            ]
        );
        let off = TrainingSpec {
            enabled: false,
            ..TrainingSpec::default()
        };
        assert!(selected(&off, "v1.34.2").is_empty());
    }

    #[test]
    fn refusal_names_both_versions() {
        let why = Component::Trainer.refusal("v1.28.7").unwrap();
        assert!(why.contains("v1.31") && why.contains("v1.28.7"), "{why}");
        assert!(Component::Kueue.refusal("v1.29.0").is_none());
        assert!(Component::TrainingOperator.refusal("v1.28.7").is_none());
    }
}
