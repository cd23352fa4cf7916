//! Wait for rollout: every Deployment has all replicas updated and available, every DaemonSet has
//! a ready, updated pod on every node it targets, each at its current generation. On timeout the
//! error names each object that is not ready, why (its status), and what its pods say (image
//! not present, unschedulable, crash loop) as far as the API knows.

use std::time::{Duration, Instant};

use ::kube::api::{Api, ListParams};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;

use super::client::{error_chain, Cluster};
use super::manifest::{Object, ObjectRef};
use super::KubeError;

const POLL: Duration = Duration::from_secs(2);
/// Pods described per object in a timeout message; more would bury the cause.
const PODS_SHOWN: usize = 5;

/// Why a Deployment is not rolled out, or None when it is.
pub fn deployment_not_ready(d: &Deployment) -> Option<String> {
    let generation = d.metadata.generation.unwrap_or(0);
    let status = d.status.clone().unwrap_or_default();
    if let Some(why) = generation_lag(generation, status.observed_generation) {
        return Some(why);
    }
    let desired = d.spec.as_ref().and_then(|s| s.replicas).unwrap_or(1);
    let updated = status.updated_replicas.unwrap_or(0);
    let available = status.available_replicas.unwrap_or(0);
    let total = status.replicas.unwrap_or(0);
    if updated < desired || available < desired {
        return Some(format!(
            "{available} of {desired} replicas available ({updated} updated)"
        ));
    }
    if total > updated {
        return Some(format!(
            "rollout in progress: {} old replica(s) still running",
            total - updated
        ));
    }
    None
}

/// Why a DaemonSet is not rolled out, or None when it is.
pub fn daemonset_not_ready(d: &DaemonSet) -> Option<String> {
    let generation = d.metadata.generation.unwrap_or(0);
    let status = d.status.clone().unwrap_or_default();
    if let Some(why) = generation_lag(generation, status.observed_generation) {
        return Some(why);
    }
    let desired = status.desired_number_scheduled;
    let ready = status.number_ready;
    let updated = status.updated_number_scheduled.unwrap_or(0);
    if desired == ready && ready == updated {
        return None;
    }
    Some(format!(
        "{ready} of {desired} pods ready ({updated} updated)"
    ))
}

fn generation_lag(generation: i64, observed: Option<i64>) -> Option<String> {
    match observed {
        Some(o) if o >= generation => None,
        Some(o) => Some(format!(
            "its controller has seen generation {o}, not yet {generation}"
        )),
        None => {
            Some("no controller has processed it yet (is kube-controller-manager running?)".into())
        }
    }
}

/// `k=v,k=v` for a label selector's matchLabels (all the add-ons use).
fn selector_string(sel: &LabelSelector) -> String {
    sel.match_labels
        .iter()
        .flatten()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// One line about a pod that is not ready: where it is and the most specific reason.
pub fn describe_pod(p: &Pod) -> Option<String> {
    let name = p.metadata.name.clone().unwrap_or_default();
    let status = p.status.clone().unwrap_or_default();
    let conditions = status.conditions.clone().unwrap_or_default();
    let ready = conditions
        .iter()
        .any(|c| c.type_ == "Ready" && c.status == "True");
    if ready {
        return None;
    }
    let node = p
        .spec
        .as_ref()
        .and_then(|s| s.node_name.clone())
        .map(|n| format!("on node {n}"))
        .unwrap_or_else(|| "not scheduled".into());
    let mut reasons = Vec::new();
    for cs in status
        .init_container_statuses
        .iter()
        .flatten()
        .chain(status.container_statuses.iter().flatten())
    {
        let state = cs.state.clone().unwrap_or_default();
        if let Some(w) = state.waiting {
            reasons.push(join_reason(&cs.name, w.reason, w.message));
        } else if let Some(t) = state.terminated {
            reasons.push(join_reason(&cs.name, t.reason, t.message));
        } else if !cs.ready {
            reasons.push(format!("{}: running, not ready (readiness probe)", cs.name));
        }
    }
    if reasons.is_empty() {
        if let Some(c) = conditions
            .iter()
            .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        {
            reasons.push(join_reason(
                "scheduling",
                c.reason.clone(),
                c.message.clone(),
            ));
        }
    }
    let scheduled = p.spec.as_ref().is_some_and(|s| s.node_name.is_some());
    if reasons.is_empty() && !scheduled {
        reasons.push("waiting for the scheduler (is kube-scheduler running?)".into());
    }
    if reasons.is_empty() {
        reasons.push(format!(
            "phase {}",
            status.phase.unwrap_or_else(|| "Unknown".into())
        ));
    }
    Some(format!("pod {name} {node}: {}", reasons.join("; ")))
}

fn join_reason(what: &str, reason: Option<String>, message: Option<String>) -> String {
    match (reason, message.filter(|m| !m.is_empty())) {
        (Some(r), Some(m)) => format!("{what}: {r} ({m})"),
        (Some(r), None) => format!("{what}: {r}"),
        (None, Some(m)) => format!("{what}: {m}"),
        (None, None) => format!("{what}: waiting"),
    }
}

enum Workload {
    Deployment,
    DaemonSet,
}

struct Pending {
    object: ObjectRef,
    why: String,
    selector: Option<String>,
}

async fn check(cluster: &Cluster, kind: &Workload, r: &ObjectRef) -> Option<Pending> {
    let ns = r.namespace.clone().unwrap_or_else(|| "default".into());
    let pending = |why: String, selector: Option<String>| {
        Some(Pending {
            object: r.clone(),
            why,
            selector,
        })
    };
    match kind {
        Workload::Deployment => {
            let api: Api<Deployment> = Api::namespaced(cluster.client.clone(), &ns);
            match api.get(&r.name).await {
                Ok(d) => deployment_not_ready(&d).and_then(|why| {
                    pending(why, d.spec.as_ref().map(|s| selector_string(&s.selector)))
                }),
                Err(e) => pending(format!("cannot read it: {}", error_chain(&e)), None),
            }
        }
        Workload::DaemonSet => {
            let api: Api<DaemonSet> = Api::namespaced(cluster.client.clone(), &ns);
            match api.get(&r.name).await {
                Ok(d) => daemonset_not_ready(&d).and_then(|why| {
                    pending(why, d.spec.as_ref().map(|s| selector_string(&s.selector)))
                }),
                Err(e) => pending(format!("cannot read it: {}", error_chain(&e)), None),
            }
        }
    }
}

/// What a pending object's pods say, one line each (at most PODS_SHOWN).
async fn pod_lines(cluster: &Cluster, p: &Pending) -> Vec<String> {
    let (Some(ns), Some(sel)) = (&p.object.namespace, &p.selector) else {
        return Vec::new();
    };
    let api: Api<Pod> = Api::namespaced(cluster.client.clone(), ns);
    match api.list(&ListParams::default().labels(sel)).await {
        Ok(list) if list.items.is_empty() => vec!["no pods exist yet".into()],
        Ok(list) => {
            let mut lines: Vec<String> = list.items.iter().filter_map(describe_pod).collect();
            if lines.len() > PODS_SHOWN {
                let more = lines.len() - PODS_SHOWN;
                lines.truncate(PODS_SHOWN);
                lines.push(format!("… and {more} more pod(s) not ready"));
            }
            lines
        }
        Err(e) => vec![format!("cannot list its pods: {}", error_chain(&e))],
    }
}

/// Wait until every Deployment and DaemonSet among `objects` is rolled out, or `timeout`.
/// Returns how many workloads were waited for.
pub async fn wait_ready(
    cluster: &Cluster,
    objects: &[Object],
    timeout: Duration,
) -> Result<usize, KubeError> {
    let workloads: Vec<(Workload, ObjectRef)> = objects
        .iter()
        .filter_map(|o| match o.spec.resource.kind.as_str() {
            "Deployment" => Some((Workload::Deployment, o.reference())),
            "DaemonSet" => Some((Workload::DaemonSet, o.reference())),
            _ => None,
        })
        .collect();
    let started = Instant::now();
    let deadline = started + timeout;
    loop {
        let mut pending = Vec::new();
        for (kind, r) in &workloads {
            if let Some(p) = check(cluster, kind, r).await {
                pending.push(p);
            }
        }
        if pending.is_empty() {
            return Ok(workloads.len());
        }
        let now = Instant::now();
        if now >= deadline {
            let mut not_ready = Vec::new();
            for p in &pending {
                let mut line = format!("{}: {}", p.object, p.why);
                for pod in pod_lines(cluster, p).await {
                    line.push_str("\n    ");
                    line.push_str(&pod);
                }
                not_ready.push(line);
            }
            return Err(KubeError::NotReady {
                waited_secs: started.elapsed().as_secs(),
                not_ready,
            });
        }
        tokio::time::sleep(POLL.min(deadline - now)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn json<T: serde::de::DeserializeOwned>(v: serde_json::Value) -> T {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn deployment_rules() {
        let d: Deployment = json(serde_json::json!({
            "metadata": {"name": "d", "generation": 2},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": {"observedGeneration": 1}
        }));
        assert!(deployment_not_ready(&d)
            .unwrap()
            .contains("generation 1, not yet 2"));
        let d: Deployment = json(serde_json::json!({
            "metadata": {"name": "d", "generation": 2},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 1}
        }));
        assert_eq!(
            deployment_not_ready(&d).unwrap(),
            "1 of 2 replicas available (2 updated)"
        );
        let d: Deployment = json(serde_json::json!({
            "metadata": {"name": "d", "generation": 2},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": {"observedGeneration": 2, "replicas": 2, "updatedReplicas": 2, "availableReplicas": 2}
        }));
        assert_eq!(deployment_not_ready(&d), None);
    }

    #[test]
    fn daemonset_rules() {
        let d: DaemonSet = json(serde_json::json!({
            "metadata": {"name": "d", "generation": 1},
            "spec": {"selector": {}, "template": {}}
        }));
        assert!(daemonset_not_ready(&d)
            .unwrap()
            .contains("kube-controller-manager"));
        let d: DaemonSet = json(serde_json::json!({
            "metadata": {"name": "d", "generation": 1},
            "spec": {"selector": {}, "template": {}},
            "status": {"observedGeneration": 1, "currentNumberScheduled": 1, "desiredNumberScheduled": 1,
                       "numberMisscheduled": 0, "numberReady": 0, "updatedNumberScheduled": 1}
        }));
        assert_eq!(
            daemonset_not_ready(&d).unwrap(),
            "0 of 1 pods ready (1 updated)"
        );
        // No GPU node: nothing to run, which is rolled out.
        let d: DaemonSet = json(serde_json::json!({
            "metadata": {"name": "d", "generation": 1},
            "spec": {"selector": {}, "template": {}},
            "status": {"observedGeneration": 1, "currentNumberScheduled": 0, "desiredNumberScheduled": 0,
                       "numberMisscheduled": 0, "numberReady": 0}
        }));
        assert_eq!(daemonset_not_ready(&d), None);
    }

    #[test]
    fn pod_reasons() {
        let p: Pod = json(serde_json::json!({
            "metadata": {"name": "nvidia-x"},
            "spec": {"nodeName": "gpu-1", "containers": []},
            "status": {"phase": "Pending", "containerStatuses": [{
                "name": "nvidia-device-plugin-ctr", "image": "i", "imageID": "", "ready": false,
                "restartCount": 0,
                "state": {"waiting": {"reason": "ErrImageNeverPull", "message": "image not present"}}
            }]}
        }));
        assert_eq!(
            describe_pod(&p).unwrap(),
            "pod nvidia-x on node gpu-1: nvidia-device-plugin-ctr: ErrImageNeverPull (image not present)"
        );
        let p: Pod = json(serde_json::json!({
            "metadata": {"name": "c"},
            "spec": {"containers": []},
            "status": {"phase": "Pending", "conditions": [{
                "type": "PodScheduled", "status": "False", "reason": "Unschedulable",
                "message": "0/3 nodes are available"
            }]}
        }));
        assert_eq!(
            describe_pod(&p).unwrap(),
            "pod c not scheduled: scheduling: Unschedulable (0/3 nodes are available)"
        );
    }
}
