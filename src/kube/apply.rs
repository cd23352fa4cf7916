//! Server-side apply with field manager `k8sforge` and `force` (k8sforge owns these objects, so
//! a conflicting manager, e.g. a `kubectl edit`, is overridden back to the rendered state).
//! Whether an object changed is read from its resourceVersion before and after: the API server
//! skips no-op writes, so a second apply of the same manifests reports nothing changed.

use ::kube::api::{Api, Patch, PatchParams};
use ::kube::core::DynamicObject;
use serde::Serialize;

use super::client::{error_chain, Cluster};
use super::manifest::{Object, ObjectRef};
use super::{KubeError, FIELD_MANAGER};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Change {
    Created,
    Changed,
    Unchanged,
}

#[derive(Debug, Clone)]
pub struct Applied {
    pub object: ObjectRef,
    pub change: Change,
}

#[derive(Debug, Clone, Default)]
pub struct ApplyReport {
    pub objects: Vec<Applied>,
}

impl ApplyReport {
    pub fn count(&self, change: Change) -> usize {
        self.objects.iter().filter(|a| a.change == change).count()
    }
}

/// The dynamic API of an object's kind, in its namespace.
pub fn api_for(cluster: &Cluster, o: &Object) -> Api<DynamicObject> {
    match (&o.object.metadata.namespace, o.spec.namespaced) {
        (Some(ns), true) => Api::namespaced_with(cluster.client.clone(), ns, &o.spec.resource),
        _ => Api::all_with(cluster.client.clone(), &o.spec.resource),
    }
}

/// Apply `objects` in the given order (see `manifest::validate_all`), stopping at the first
/// failure (later objects may depend on it).
pub async fn apply(cluster: &Cluster, objects: &[Object]) -> Result<ApplyReport, KubeError> {
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let mut report = ApplyReport::default();
    for o in objects {
        let reference = o.reference();
        let err = |message: String| KubeError::Apply {
            object: reference.clone(),
            message: format!("{message} (from {})", o.source),
        };
        let api = api_for(cluster, o);
        let before = api
            .get_opt(&reference.name)
            .await
            .map_err(|e| err(error_chain(&e)))?
            .and_then(|b| b.metadata.resource_version);
        let after = api
            .patch(&reference.name, &params, &Patch::Apply(&o.object))
            .await
            .map_err(|e| err(error_chain(&e)))?
            .metadata
            .resource_version;
        let change = match before {
            None => Change::Created,
            Some(b) if Some(&b) == after.as_ref() => Change::Unchanged,
            Some(_) => Change::Changed,
        };
        tracing::debug!(object = %reference, ?change, "applied");
        report.objects.push(Applied {
            object: reference,
            change,
        });
    }
    Ok(report)
}
