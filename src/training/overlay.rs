//! k8sforge's own kustomize overlays over the pinned upstream trees: the namespace, image
//! references from the artifact source (nodes never pull, so `IfNotPresent`), resources, and
//! placement off GPU nodes (controllers may also run on control planes). Each overlay is a
//! kustomization written beside the trees (`<cache>/trees/k8sforge/<component>/`) that names
//! upstream directories as its bases; `kubectl kustomize` renders it.

use std::path::{Path, PathBuf};

use serde_json::json;

use super::stack::Component;
use super::upstream::LocalTree;
use crate::addons::GPU_LABEL_KEY;
use crate::render::context::CONTROL_PLANE_TAINT;

/// Label on every object k8sforge renders for the training stack.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "k8sforge");

/// The image name each upstream tree renders (before k8sforge's `images` entry replaces it).
fn upstream_image_name(c: Component) -> Option<&'static str> {
    match c {
        Component::TrainingOperator => Some("ghcr.io/kubeflow/training-v1/training-operator"),
        Component::Trainer => Some("ghcr.io/kubeflow/trainer/trainer-controller-manager"),
        Component::JobSet => Some("us-central1-docker.pkg.dev/k8s-staging-images/jobset/jobset"),
        Component::Kueue => Some("us-central1-docker.pkg.dev/k8s-staging-images/kueue/kueue"),
        Component::TrainerRuntimes => None,
    }
}

/// The upstream kustomization directories each overlay builds on, relative to the tree root.
fn bases(c: Component) -> &'static [&'static str] {
    match c {
        Component::TrainingOperator => &["manifests/overlays/standalone"],
        // Trainer's own `overlays/manager` also pulls JobSet from a remote URL; k8sforge takes
        // the same pieces and renders JobSet from its pinned tree instead.
        Component::Trainer => &[
            "manifests/base/crds",
            "manifests/base/manager",
            "manifests/base/rbac",
            "manifests/base/webhook",
        ],
        Component::TrainerRuntimes => &["manifests/overlays/runtimes"],
        Component::JobSet => &["config/default"],
        Component::Kueue => &["config/default"],
    }
}

/// `registry/repo:tag` or `registry/repo@sha256:…` → (name, tag, digest).
pub fn split_reference(reference: &str) -> (String, Option<String>, Option<String>) {
    if let Some((name, digest)) = reference.split_once('@') {
        return (name.to_string(), None, Some(digest.to_string()));
    }
    let slash = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[slash..].rfind(':') {
        Some(i) => (
            reference[..slash + i].to_string(),
            Some(reference[slash + i + 1..].to_string()),
            None,
        ),
        None => (reference.to_string(), None, None),
    }
}

/// The controllers' resources: small requests so they fit beside system pods, a memory limit so
/// a leak cannot take the node down.
fn resources(c: Component) -> serde_json::Value {
    let (cpu, mem, mem_limit) = match c {
        Component::Kueue => ("100m", "256Mi", "1Gi"),
        _ => ("50m", "128Mi", "512Mi"),
    };
    json!({"requests": {"cpu": cpu, "memory": mem}, "limits": {"memory": mem_limit}})
}

/// JSON-patch operations applied to every Deployment of a component.
fn deployment_ops(c: Component) -> serde_json::Value {
    json!([
        {"op": "add", "path": "/spec/template/spec/affinity", "value": {
            "nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": [
                    {"key": GPU_LABEL_KEY, "operator": "NotIn", "values": ["true"]}
                ]}]
            }}
        }},
        {"op": "add", "path": "/spec/template/spec/tolerations", "value": [
            {"key": CONTROL_PLANE_TAINT, "operator": "Exists", "effect": "NoSchedule"}
        ]},
        {"op": "add", "path": "/spec/template/spec/containers/0/resources", "value": resources(c)},
        {"op": "add", "path": "/spec/template/spec/containers/0/imagePullPolicy", "value": "IfNotPresent"}
    ])
}

/// Kueue's manager configuration (ConfigMap `kueue-manager-config`), k8sforge's version of the
/// upstream default: the same ports and leader election, and the job kinds this stack installs
/// admitted through `kueue.x-k8s.io/queue-name`.
fn kueue_config(frameworks: &[&str]) -> String {
    let list: String = frameworks
        .iter()
        .map(|f| format!("  - \"{f}\"\n"))
        .collect();
    format!(
        "apiVersion: config.kueue.x-k8s.io/v1beta2\n\
         kind: Configuration\n\
         health:\n  healthProbeBindAddress: :8081\n\
         metrics:\n  bindAddress: :8443\n\
         webhook:\n  port: 9443\n\
         leaderElection:\n  leaderElect: true\n  resourceName: c1f6bfd2.kueue.x-k8s.io\n\
         controller:\n  groupKindConcurrency:\n    Job.batch: 5\n    Pod: 5\n    Workload.kueue.x-k8s.io: 10\n    LocalQueue.kueue.x-k8s.io: 5\n    Cohort.kueue.x-k8s.io: 1\n    ClusterQueue.kueue.x-k8s.io: 5\n    ResourceFlavor.kueue.x-k8s.io: 1\n\
         clientConnection:\n  qps: 50\n  burst: 100\n\
         integrations:\n  frameworks:\n{list}"
    )
}

/// Job kinds Kueue admits, given the rest of the stack.
pub fn kueue_frameworks(components: &[Component]) -> Vec<&'static str> {
    let mut f = vec!["batch/job"];
    if components.contains(&Component::TrainingOperator) {
        f.extend([
            "kubeflow.org/pytorchjob",
            "kubeflow.org/tfjob",
            "kubeflow.org/mpijob",
        ]);
    }
    if components.contains(&Component::JobSet) {
        f.push("jobset.x-k8s.io/jobset");
    }
    if components.contains(&Component::Trainer) {
        f.push("trainer.kubeflow.org/trainjob");
    }
    f
}

/// The overlay's kustomization for `c` (as YAML), with `image` the reference its controller
/// gets and `all` the whole selection (Kueue's integrations depend on it).
pub fn kustomization(
    c: Component,
    tree: &LocalTree,
    overlay_dir: &Path,
    image: Option<&str>,
    all: &[Component],
) -> serde_json::Value {
    let rel = relative(overlay_dir, &tree.base.join(tree.tree.root()));
    let mut resources: Vec<String> = bases(c)
        .iter()
        .map(|b| format!("{}/{b}", rel.display()))
        .collect();
    let mut k = json!({
        "apiVersion": "kustomize.config.k8s.io/v1beta1",
        "kind": "Kustomization",
        "labels": [{"pairs": {MANAGED_BY.0: MANAGED_BY.1}, "includeSelectors": false}],
    });
    if let Some(ns) = c.namespace() {
        k["namespace"] = json!(ns);
    }
    if let (Some(from), Some(reference)) = (upstream_image_name(c), image) {
        let (name, tag, digest) = split_reference(reference);
        let mut entry = json!({"name": from, "newName": name});
        if let Some(t) = tag {
            entry["newTag"] = json!(t);
        }
        if let Some(d) = digest {
            entry["digest"] = json!(d);
        }
        k["images"] = json!([entry]);
    }
    let mut patches = Vec::new();
    if c.image().is_some() {
        patches.push(json!({
            "target": {"group": "apps", "version": "v1", "kind": "Deployment"},
            "patch": deployment_ops(c).to_string(),
        }));
    }
    match c {
        Component::Trainer => {
            // What Trainer's `overlays/manager` adds around its bases.
            resources.insert(0, "namespace.yaml".into());
            k["secretGenerator"] = json!([{
                "name": "kubeflow-trainer-webhook-cert",
                "namespace": "kubeflow-system",
                "options": {"disableNameSuffixHash": true}
            }]);
            k["configMapGenerator"] = json!([{
                "name": "kubeflow-trainer-public",
                "literals": [format!("kubeflow_trainer_version={}", c.tree().tag())],
                "options": {"disableNameSuffixHash": true}
            }]);
        }
        Component::Kueue => {
            let cm = json!({
                "apiVersion": "v1", "kind": "ConfigMap",
                "metadata": {"name": "kueue-manager-config", "namespace": "kueue-system"},
                "data": {"controller_manager_config.yaml": kueue_config(&kueue_frameworks(all))}
            });
            patches.push(json!({"patch": cm.to_string()}));
        }
        _ => {}
    }
    k["resources"] = json!(resources);
    if !patches.is_empty() {
        k["patches"] = json!(patches);
    }
    k
}

/// Extra files an overlay needs beside its kustomization.
pub fn extra_files(c: Component) -> Vec<(&'static str, String)> {
    match c {
        Component::Trainer => vec![(
            "namespace.yaml",
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: kubeflow-system\n".into(),
        )],
        _ => Vec::new(),
    }
}

/// `to` relative to `from` (both absolute, under the same cache root).
fn relative(from: &Path, to: &Path) -> PathBuf {
    let f: Vec<_> = from.components().collect();
    let t: Vec<_> = to.components().collect();
    let common = f.iter().zip(&t).take_while(|(a, b)| a == b).count();
    let mut out = PathBuf::new();
    for _ in common..f.len() {
        out.push("..");
    }
    for c in &t[common..] {
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references_split_into_kustomize_fields() {
        assert_eq!(
            split_reference("registry.k8s.io/kueue/kueue:v0.19.2"),
            (
                "registry.k8s.io/kueue/kueue".into(),
                Some("v0.19.2".into()),
                None
            )
        );
        assert_eq!(
            split_reference("localhost:5000/kueue"),
            ("localhost:5000/kueue".into(), None, None)
        );
        let (n, t, d) = split_reference("r.example/x@sha256:abc");
        assert_eq!(
            (n.as_str(), t, d.as_deref()),
            ("r.example/x", None, Some("sha256:abc"))
        );
    }

    #[test]
    fn relative_paths_climb_to_the_common_root() {
        assert_eq!(
            relative(
                Path::new("/c/trees/k8sforge/kueue"),
                Path::new("/c/trees/h/o/r/t")
            ),
            PathBuf::from("../../h/o/r/t")
        );
    }

    #[test]
    fn kueue_admits_what_the_stack_installs() {
        let f = kueue_frameworks(&[Component::TrainingOperator, Component::Kueue]);
        assert!(f.contains(&"kubeflow.org/pytorchjob") && f.contains(&"kubeflow.org/tfjob"));
        assert!(!f.contains(&"trainer.kubeflow.org/trainjob"));
    }
}
