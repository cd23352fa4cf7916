//! Teams: a namespace per team with its users' Role and RoleBinding, a ResourceQuota on GPUs
//! (`requests.nvidia.com/gpu`) and optionally CPU and memory, a LimitRange with container
//! defaults, and, where Kueue is installed, a ClusterQueue with the team's nominal quota (in a
//! cohort when asked, so idle GPUs can be borrowed) and a LocalQueue `default` in the namespace.
//! Rendering is pure (team → manifests); `verbs` applies them.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::json;

/// Label on a team's namespace (value: the team name); `team list` selects by it.
pub const TEAM_LABEL: &str = "k8sforge.io/team";
/// Group of a team's users, as their client certificates carry it in O.
pub fn team_group(team: &str) -> String {
    format!("k8sforge:team:{team}")
}
/// The read-only ClusterRole for platform viewers (bound by the operator to whom they choose).
pub const VIEWER_CLUSTER_ROLE: &str = "k8sforge:platform-viewer";
/// The one Kueue ResourceFlavor k8sforge creates (nodes are not split by flavour).
pub const RESOURCE_FLAVOR: &str = "k8sforge-default";
/// The LocalQueue in each team namespace; jobs name it in `kueue.x-k8s.io/queue-name`.
pub const LOCAL_QUEUE: &str = "default";
/// The Role a team's users get in their namespace.
pub const TEAM_ROLE: &str = "k8sforge:team-member";

/// GPU resource name (the NVIDIA device plugin's).
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TeamError {
    #[error(
        "invalid team name {0:?}: 1-40 lower-case letters, digits and '-', starting with a letter \
         and ending with a letter or digit (it names a namespace and a ClusterQueue)"
    )]
    Name(String),
    #[error("--{flag} {value:?} is not a Kubernetes quantity (e.g. {example})")]
    Quantity {
        flag: &'static str,
        value: String,
        example: &'static str,
    },
    #[error(
        "--borrowing-limit needs --cohort: borrowing happens between the queues of one cohort"
    )]
    BorrowingWithoutCohort,
    #[error("invalid cohort name {0:?}: lower-case letters, digits and '-' (a DNS label)")]
    Cohort(String),
}

/// A team as `team add` describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Team {
    pub name: String,
    pub gpus: u32,
    /// Total CPU requests allowed, e.g. `64` or `500m`.
    pub cpu: Option<String>,
    /// Total memory requests allowed, e.g. `256Gi`.
    pub memory: Option<String>,
    /// Kueue cohort: queues in one cohort lend each other unused quota.
    pub cohort: Option<String>,
    /// GPUs this team may borrow beyond its nominal quota (None: no limit within the cohort).
    pub borrowing_limit: Option<u32>,
    /// Size of the dataset PVC (default [`DEFAULT_PVC_SIZE`]).
    pub dataset_size: Option<String>,
    /// Size of the checkpoint PVC (default [`DEFAULT_PVC_SIZE`]).
    pub checkpoint_size: Option<String>,
}

/// Size of a team's dataset and checkpoint PVCs unless `team add` says otherwise (fits the
/// default local volume of 10Gi).
pub const DEFAULT_PVC_SIZE: &str = "5Gi";

pub use crate::profile::storage::is_quantity;

impl Team {
    /// Check every field; the first mistake is returned.
    pub fn validate(&self) -> Result<(), TeamError> {
        let n = &self.name;
        let ok = !n.is_empty()
            && n.len() <= 40
            && n.starts_with(|c: char| c.is_ascii_lowercase())
            && crate::profile::validate::is_dns_label(n, 40);
        if !ok {
            return Err(TeamError::Name(n.clone()));
        }
        for (flag, v, example) in [
            ("cpu", &self.cpu, "64 or 500m"),
            ("memory", &self.memory, "256Gi"),
            ("dataset-size", &self.dataset_size, "100Gi"),
            ("checkpoint-size", &self.checkpoint_size, "100Gi"),
        ] {
            if let Some(v) = v {
                if !is_quantity(v) {
                    return Err(TeamError::Quantity {
                        flag,
                        value: v.clone(),
                        example,
                    });
                }
            }
        }
        if let Some(c) = &self.cohort {
            if !crate::profile::validate::is_dns_label(c, 63) {
                return Err(TeamError::Cohort(c.clone()));
            }
        }
        if self.borrowing_limit.is_some() && self.cohort.is_none() {
            return Err(TeamError::BorrowingWithoutCohort);
        }
        Ok(())
    }

    pub fn namespace(&self) -> &str {
        &self.name
    }
}

fn labels(team: &str) -> serde_json::Value {
    json!({TEAM_LABEL: team, crate::training::overlay::MANAGED_BY.0: crate::training::overlay::MANAGED_BY.1})
}

fn doc(v: serde_json::Value) -> String {
    // JSON is YAML; one document per object.
    format!("---\n{}\n", v)
}

/// The objects of one team, as a multi-document YAML file. `kueue`: Kueue is installed.
pub fn render(team: &Team, kueue: bool) -> String {
    let ns = team.namespace();
    let l = labels(&team.name);
    let mut out = String::new();
    out += &doc(json!({
        "apiVersion": "v1", "kind": "Namespace",
        "metadata": {"name": ns, "labels": l}
    }));
    // Users run and watch their jobs, read their logs, keep data in PVCs and ConfigMaps; no
    // access to quotas, roles or anything cluster-wide.
    out += &doc(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "Role",
        "metadata": {"name": TEAM_ROLE, "namespace": ns, "labels": l},
        "rules": [
            {"apiGroups": [""], "resources": ["pods", "pods/log", "services", "endpoints", "events",
                "persistentvolumeclaims", "configmaps", "secrets"],
             "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
            {"apiGroups": [""], "resources": ["pods/exec", "pods/portforward"], "verbs": ["create"]},
            {"apiGroups": ["batch"], "resources": ["jobs", "cronjobs"],
             "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
            {"apiGroups": ["kubeflow.org"], "resources": ["pytorchjobs", "tfjobs", "mpijobs",
                "xgboostjobs", "paddlejobs", "jaxjobs"],
             "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
            {"apiGroups": ["trainer.kubeflow.org"], "resources": ["trainjobs", "trainingruntimes"],
             "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
            {"apiGroups": ["jobset.x-k8s.io"], "resources": ["jobsets"],
             "verbs": ["get", "list", "watch", "create", "update", "patch", "delete"]},
            {"apiGroups": ["kueue.x-k8s.io"], "resources": ["localqueues", "workloads"],
             "verbs": ["get", "list", "watch"]},
            {"apiGroups": [""], "resources": ["resourcequotas", "limitranges"],
             "verbs": ["get", "list", "watch"]}
        ]
    }));
    out += &doc(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "RoleBinding",
        "metadata": {"name": TEAM_ROLE, "namespace": ns, "labels": l},
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": TEAM_ROLE},
        "subjects": [{"apiGroup": "rbac.authorization.k8s.io", "kind": "Group", "name": team_group(&team.name)}]
    }));
    let mut hard = BTreeMap::new();
    hard.insert(format!("requests.{GPU_RESOURCE}"), team.gpus.to_string());
    if let Some(c) = &team.cpu {
        hard.insert("requests.cpu".into(), c.clone());
    }
    if let Some(m) = &team.memory {
        hard.insert("requests.memory".into(), m.clone());
    }
    out += &doc(json!({
        "apiVersion": "v1", "kind": "ResourceQuota",
        "metadata": {"name": "team-quota", "namespace": ns, "labels": l},
        "spec": {"hard": hard}
    }));
    // Default requests so a container without them still counts against the CPU/memory quota
    // (the apiserver rejects such pods when the quota covers those resources). No default
    // limit: one below a container's own request would make the pod invalid.
    out += &doc(json!({
        "apiVersion": "v1", "kind": "LimitRange",
        "metadata": {"name": "team-defaults", "namespace": ns, "labels": l},
        "spec": {"limits": [{
            "type": "Container",
            "defaultRequest": {"cpu": "100m", "memory": "256Mi"}
        }]}
    }));
    if kueue {
        let mut gpu = json!({"name": GPU_RESOURCE, "nominalQuota": team.gpus});
        if let Some(b) = team.borrowing_limit {
            gpu["borrowingLimit"] = json!(b);
        }
        // Kueue needs a quota for every covered resource: CPU and memory without a team limit
        // get a nominal quota nobody reaches (the ResourceQuota and the nodes bound them).
        let cpu = team.cpu.clone().unwrap_or_else(|| "100000".into());
        let memory = team.memory.clone().unwrap_or_else(|| "100000Ti".into());
        let mut spec = json!({
            "namespaceSelector": {"matchLabels": {TEAM_LABEL: team.name}},
            "queueingStrategy": "BestEffortFIFO",
            "resourceGroups": [{
                "coveredResources": ["cpu", "memory", GPU_RESOURCE],
                "flavors": [{"name": RESOURCE_FLAVOR, "resources": [
                    {"name": "cpu", "nominalQuota": cpu},
                    {"name": "memory", "nominalQuota": memory},
                    gpu
                ]}]
            }]
        });
        if let Some(c) = &team.cohort {
            spec["cohortName"] = json!(c);
        }
        out += &doc(json!({
            "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ClusterQueue",
            "metadata": {"name": team.name, "labels": l},
            "spec": spec
        }));
        out += &doc(json!({
            "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "LocalQueue",
            "metadata": {"name": LOCAL_QUEUE, "namespace": ns, "labels": l},
            "spec": {"clusterQueue": team.name}
        }));
    }
    out
}

/// Cluster-wide objects every team setup shares: the platform viewer ClusterRole and, with
/// Kueue, the ResourceFlavor.
pub fn render_shared(kueue: bool) -> String {
    let l = json!({crate::training::overlay::MANAGED_BY.0: crate::training::overlay::MANAGED_BY.1});
    let mut out = doc(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1", "kind": "ClusterRole",
        "metadata": {"name": VIEWER_CLUSTER_ROLE, "labels": l},
        // Read-only on what platform viewers need to see; Secrets are deliberately absent.
        "rules": [
            {"apiGroups": ["", "apps", "batch", "kubeflow.org", "trainer.kubeflow.org",
                "jobset.x-k8s.io", "kueue.x-k8s.io", "storage.k8s.io"],
             "resources": ["nodes", "namespaces", "pods", "pods/log", "services", "events",
                "persistentvolumes", "persistentvolumeclaims", "resourcequotas", "limitranges",
                "deployments", "daemonsets", "jobs", "pytorchjobs", "tfjobs", "mpijobs",
                "trainjobs", "clustertrainingruntimes", "trainingruntimes", "jobsets",
                "clusterqueues", "localqueues", "workloads", "resourceflavors", "cohorts",
                "storageclasses"],
             "verbs": ["get", "list", "watch"]}
        ]
    }));
    if kueue {
        out += &doc(json!({
            "apiVersion": "kueue.x-k8s.io/v1beta2", "kind": "ResourceFlavor",
            "metadata": {"name": RESOURCE_FLAVOR, "labels": l},
            "spec": {}
        }));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn team(name: &str) -> Team {
        Team {
            name: name.into(),
            gpus: 8,
            cpu: Some("64".into()),
            memory: Some("256Gi".into()),
            cohort: None,
            borrowing_limit: None,
            dataset_size: None,
            checkpoint_size: None,
        }
    }

    #[test]
    fn mistakes_are_named() {
        assert!(team("vision").validate().is_ok());
        for bad in ["", "Vision", "-a", "a_b", "1abc", &"a".repeat(41)] {
            assert_eq!(team(bad).validate(), Err(TeamError::Name(bad.to_string())));
        }
        let mut t = team("nlp");
        t.memory = Some("lots".into());
        assert!(t
            .validate()
            .unwrap_err()
            .to_string()
            .contains("--memory \"lots\""));
        let mut t = team("nlp");
        t.borrowing_limit = Some(4);
        assert_eq!(t.validate(), Err(TeamError::BorrowingWithoutCohort));
    }

    #[test]
    fn quantities() {
        for ok in ["1", "500m", "2.5", "256Gi", "1k"] {
            assert!(is_quantity(ok), "{ok}");
        }
        for bad in ["", "Gi", "1.2.3", "5 Gi", "-1", "1gb"] {
            assert!(!is_quantity(bad), "{bad}");
        }
    }

    #[test]
    fn typed_objects_validate() {
        let objs =
            crate::kube::validate_all([("team.yaml", render(&team("vision"), false).as_str())])
                .unwrap();
        let kinds: Vec<_> = objs.iter().map(|o| o.spec.resource.kind.as_str()).collect();
        assert_eq!(
            kinds,
            [
                "Namespace",
                "Role",
                "RoleBinding",
                "ResourceQuota",
                "LimitRange"
            ]
        );
        crate::kube::validate_all([("shared.yaml", render_shared(false).as_str())]).unwrap();
    }
}
