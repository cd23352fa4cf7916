//! Manifests: multi-document YAML → objects of known kinds, each validated offline against its
//! typed k8s-openapi struct (no unknown field, right types), ordered so that what an object
//! depends on is applied before it.

use std::any::TypeId;
use std::fmt;
use std::sync::Arc;

use ::kube::core::{ApiResource, DynamicObject};
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhookConfiguration, ValidatingWebhookConfiguration,
};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use k8s_openapi::api::core::v1::{
    ConfigMap, LimitRange, Namespace, PersistentVolume, PersistentVolumeClaim, ResourceQuota,
    Secret, Service, ServiceAccount,
};
use k8s_openapi::api::networking::v1::NetworkPolicy;
use k8s_openapi::api::node::v1::RuntimeClass;
use k8s_openapi::api::policy::v1::PodDisruptionBudget;
use k8s_openapi::api::rbac::v1::{ClusterRole, ClusterRoleBinding, Role, RoleBinding};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use k8s_openapi::api::storage::v1::StorageClass;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use k8s_openapi::NamespaceResourceScope;
use serde::de::DeserializeOwned;
use serde::Deserialize;

use super::KubeError;

/// A kind k8sforge applies: where its API lives, whether it is namespaced, when it is applied,
/// and how to check a document of it against the typed API.
#[derive(Clone)]
pub struct KindSpec {
    pub resource: ApiResource,
    pub namespaced: bool,
    /// Apply rank: lower first (namespaces, CRDs, then RBAC and accounts, config, workloads,
    /// custom resources last: their CRDs must be established first).
    pub rank: u8,
    check: Check,
}

/// How a document of a kind is checked offline.
#[derive(Clone)]
enum Check {
    /// Against its typed k8s-openapi struct (unknown fields collected).
    Typed(fn(serde_yaml_ng::Value) -> Result<Vec<String>, String>),
    /// Against the openAPIV3Schema of the CRD that defines it.
    Schema(Arc<serde_json::Value>),
}

/// Apply rank of custom resources.
pub const CUSTOM_RESOURCE_RANK: u8 = 8;

impl KindSpec {
    /// The kind a CRD defines, at its storage version (or `version` when given), checked
    /// against that version's schema.
    pub fn from_crd(crd: &CustomResourceDefinition, version: Option<&str>) -> Option<KindSpec> {
        let spec = &crd.spec;
        let v = spec.versions.iter().find(|v| match version {
            Some(want) => v.name == want,
            None => v.storage,
        })?;
        let schema = v.schema.as_ref()?.open_api_v3_schema.as_ref()?;
        let schema = serde_json::to_value(schema).ok()?;
        Some(KindSpec {
            resource: ApiResource {
                group: spec.group.clone(),
                version: v.name.clone(),
                api_version: format!("{}/{}", spec.group, v.name),
                kind: spec.names.kind.clone(),
                plural: spec.names.plural.clone(),
            },
            namespaced: spec.scope == "Namespaced",
            rank: CUSTOM_RESOURCE_RANK,
            check: Check::Schema(Arc::new(schema)),
        })
    }

    /// Every served version of every CRD among `objects`.
    pub fn from_crds(objects: &[Object]) -> Vec<KindSpec> {
        let mut out = Vec::new();
        for o in objects
            .iter()
            .filter(|o| o.spec.resource.kind == "CustomResourceDefinition")
        {
            let Ok(crd) = serde_json::to_value(&o.object)
                .and_then(serde_json::from_value::<CustomResourceDefinition>)
            else {
                continue;
            };
            for v in crd.spec.versions.iter().filter(|v| v.served) {
                out.extend(KindSpec::from_crd(&crd, Some(&v.name)));
            }
        }
        out
    }

    fn check(&self, v: serde_yaml_ng::Value) -> Result<Vec<String>, String> {
        match &self.check {
            Check::Typed(f) => f(v),
            Check::Schema(schema) => {
                let json = serde_json::to_value(&v).map_err(|e| e.to_string())?;
                let errors = super::crd_schema::validate(schema, &json);
                if errors.is_empty() {
                    Ok(Vec::new())
                } else {
                    Err(format!(
                        "does not match its CRD's schema:\n    {}",
                        errors.join("\n    ")
                    ))
                }
            }
        }
    }
}

impl fmt::Debug for KindSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KindSpec")
            .field("kind", &self.resource.kind)
            .field("api_version", &self.resource.api_version)
            .field("namespaced", &self.namespaced)
            .field("rank", &self.rank)
            .finish()
    }
}

/// Deserialize into `K`, collecting every field `K` does not have.
fn check_as<K: DeserializeOwned>(v: serde_yaml_ng::Value) -> Result<Vec<String>, String> {
    let mut unknown = Vec::new();
    let res: Result<K, _> = serde_ignored::deserialize(v, |path| {
        // serde_ignored writes `?` for each Option level; the YAML path has none.
        let p = path.to_string();
        unknown.push(
            p.split('.')
                .filter(|s| *s != "?")
                .collect::<Vec<_>>()
                .join("."),
        );
    });
    res.map(|_| unknown).map_err(|e| e.to_string())
}

fn spec<K>(rank: u8) -> KindSpec
where
    K: ::kube::Resource<DynamicType = ()> + k8s_openapi::Resource + DeserializeOwned + 'static,
{
    KindSpec {
        resource: ApiResource::erase::<K>(&()),
        namespaced: TypeId::of::<<K as k8s_openapi::Resource>::Scope>()
            == TypeId::of::<NamespaceResourceScope>(),
        rank,
        check: Check::Typed(check_as::<K>),
    }
}

/// `apiregistration.k8s.io/v1 APIService` (Kueue's visibility API), which k8s-openapi does not
/// carry: its fields as the Kubernetes API reference documents them.
mod apiservice {
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use serde::Deserialize;

    #[allow(dead_code)]
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct ApiService {
        pub api_version: String,
        pub kind: String,
        pub metadata: ObjectMeta,
        pub spec: Option<Spec>,
        pub status: Option<serde_json::Value>,
    }

    #[allow(dead_code)]
    #[derive(Deserialize)]
    #[serde(rename_all = "camelCase")]
    pub struct Spec {
        pub group: Option<String>,
        pub version: Option<String>,
        pub service: Option<ServiceReference>,
        pub ca_bundle: Option<String>,
        #[serde(rename = "insecureSkipTLSVerify")]
        pub insecure_skip_tls_verify: Option<bool>,
        pub group_priority_minimum: i32,
        pub version_priority: i32,
    }

    #[allow(dead_code)]
    #[derive(Deserialize)]
    pub struct ServiceReference {
        pub name: Option<String>,
        pub namespace: Option<String>,
        pub port: Option<i32>,
    }
}

fn api_service_spec() -> KindSpec {
    KindSpec {
        resource: ApiResource {
            group: "apiregistration.k8s.io".into(),
            version: "v1".into(),
            api_version: "apiregistration.k8s.io/v1".into(),
            kind: "APIService".into(),
            plural: "apiservices".into(),
        },
        namespaced: false,
        // After the Service it names.
        rank: 6,
        check: Check::Typed(check_as::<apiservice::ApiService>),
    }
}

/// The kinds the add-ons use. Another kind is an error (a k8sforge defect, caught by tests),
/// which keeps apply free of discovery round trips.
pub fn kinds() -> Vec<KindSpec> {
    vec![
        spec::<Namespace>(0),
        spec::<CustomResourceDefinition>(1),
        spec::<PriorityClass>(1),
        spec::<RuntimeClass>(1),
        spec::<StorageClass>(1),
        spec::<PersistentVolume>(1),
        spec::<ServiceAccount>(2),
        spec::<ClusterRole>(2),
        spec::<Role>(2),
        spec::<ClusterRoleBinding>(3),
        spec::<RoleBinding>(3),
        spec::<ConfigMap>(4),
        spec::<Secret>(4),
        spec::<ResourceQuota>(4),
        spec::<LimitRange>(4),
        spec::<PersistentVolumeClaim>(4),
        spec::<NetworkPolicy>(4),
        spec::<Service>(5),
        spec::<Deployment>(6),
        spec::<DaemonSet>(6),
        spec::<PodDisruptionBudget>(6),
        api_service_spec(),
        // Webhooks last among the built-in kinds: once registered they intercept writes, and
        // their Service and Deployment should exist first.
        spec::<MutatingWebhookConfiguration>(7),
        spec::<ValidatingWebhookConfiguration>(7),
    ]
}

pub fn kind_spec(api_version: &str, kind: &str) -> Option<KindSpec> {
    kinds()
        .into_iter()
        .find(|k| k.resource.api_version == api_version && k.resource.kind == kind)
}

/// `Kind namespace/name` (or `Kind name` when cluster-scoped), as kubectl prints them.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ObjectRef {
    pub kind: String,
    pub namespace: Option<String>,
    pub name: String,
}

impl fmt::Display for ObjectRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.namespace {
            Some(ns) => write!(f, "{} {ns}/{}", self.kind, self.name),
            None => write!(f, "{} {}", self.kind, self.name),
        }
    }
}

/// One validated object, ready to apply.
#[derive(Debug, Clone)]
pub struct Object {
    /// `file.yaml#3`: where it came from, for error messages.
    pub source: String,
    pub spec: KindSpec,
    pub object: DynamicObject,
}

impl Object {
    pub fn reference(&self) -> ObjectRef {
        ObjectRef {
            kind: self.spec.resource.kind.clone(),
            namespace: self.object.metadata.namespace.clone(),
            name: self.object.metadata.name.clone().unwrap_or_default(),
        }
    }
}

/// Parse and validate every document of `yaml` (named `source_name` in errors). Empty documents
/// are skipped; everything else must be a known kind, valid against its typed struct, named,
/// and namespaced exactly when the kind is.
pub fn parse(source_name: &str, yaml: &str) -> Result<Vec<Object>, KubeError> {
    parse_with(source_name, yaml, &[])
}

/// Like [`parse`], also accepting the custom kinds of `custom` (see [`KindSpec::from_crds`]).
pub fn parse_with(
    source_name: &str,
    yaml: &str,
    custom: &[KindSpec],
) -> Result<Vec<Object>, KubeError> {
    let mut out = Vec::new();
    for (source, value) in documents(source_name, yaml)? {
        out.push(parse_doc(source, value, custom)?);
    }
    Ok(out)
}

/// The non-empty documents of `yaml`, each with its `file#n` name.
fn documents(
    source_name: &str,
    yaml: &str,
) -> Result<Vec<(String, serde_yaml_ng::Value)>, KubeError> {
    let mut out = Vec::new();
    for (i, doc) in serde_yaml_ng::Deserializer::from_str(yaml).enumerate() {
        let source = format!("{source_name}#{}", i + 1);
        let value = serde_yaml_ng::Value::deserialize(doc).map_err(|e| KubeError::Manifest {
            source_name: source.clone(),
            message: e.to_string(),
        })?;
        if !value.is_null() {
            out.push((source, value));
        }
    }
    Ok(out)
}

/// Validate one document.
fn parse_doc(
    source: String,
    value: serde_yaml_ng::Value,
    custom: &[KindSpec],
) -> Result<Object, KubeError> {
    let err = |message: String| KubeError::Manifest {
        source_name: source.clone(),
        message,
    };
    if !value.is_mapping() {
        return Err(err("not a Kubernetes object: not a mapping".into()));
    }
    let field = |k: &str| value.get(k).and_then(|v| v.as_str()).map(str::to_string);
    let (Some(api_version), Some(kind)) = (field("apiVersion"), field("kind")) else {
        return Err(err("apiVersion and kind are required".into()));
    };
    let found = kind_spec(&api_version, &kind).or_else(|| {
        custom
            .iter()
            .find(|k| k.resource.api_version == api_version && k.resource.kind == kind)
            .cloned()
    });
    let spec = found.ok_or_else(|| {
        err(format!(
            "{api_version} {kind} is not a kind k8sforge applies (known: {})",
            kinds()
                .iter()
                .map(|k| format!("{} {}", k.resource.api_version, k.resource.kind))
                .collect::<Vec<_>>()
                .join(", ")
        ))
    })?;
    let unknown = spec
        .check(value.clone())
        .map_err(|e| err(format!("invalid {api_version} {kind}: {e}")))?;
    if !unknown.is_empty() {
        return Err(err(format!(
            "{kind} has field(s) the {api_version} API does not know: {}",
            unknown.join(", ")
        )));
    }
    let object: DynamicObject = serde_yaml_ng::from_value(value).map_err(|e| err(e.to_string()))?;
    if object.metadata.name.as_deref().is_none_or(str::is_empty) {
        return Err(err(format!("{kind} has no metadata.name")));
    }
    match (spec.namespaced, object.metadata.namespace.is_some()) {
        (true, false) => {
            return Err(err(format!(
                "{kind} {} is namespaced: set metadata.namespace",
                object.metadata.name.as_deref().unwrap_or_default()
            )))
        }
        (false, true) => {
            return Err(err(format!(
                "{kind} {} is cluster-scoped: remove metadata.namespace",
                object.metadata.name.as_deref().unwrap_or_default()
            )))
        }
        _ => {}
    }
    Ok(Object {
        source,
        spec,
        object,
    })
}

/// Parse several files and put the objects in apply order (by kind rank, file order within a
/// rank). Two documents for the same object are an error: the second would silently win.
pub fn validate_all<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a str)>,
) -> Result<Vec<Object>, KubeError> {
    validate_all_with(files, &[])
}

/// Like [`validate_all`], also accepting custom kinds: those of `custom` and those defined by the
/// CRDs among the files themselves (so a CRD and its resources validate together).
pub fn validate_all_with<'a>(
    files: impl IntoIterator<Item = (&'a str, &'a str)>,
    custom: &[KindSpec],
) -> Result<Vec<Object>, KubeError> {
    // Every document once; CRDs first, so the kinds they define are known for the rest.
    let mut docs = Vec::new();
    for (name, yaml) in files {
        docs.extend(documents(name, yaml)?);
    }
    let is_crd = |v: &serde_yaml_ng::Value| {
        v.get("kind").and_then(|k| k.as_str()) == Some("CustomResourceDefinition")
    };
    let (crd_docs, rest): (Vec<_>, Vec<_>) = docs.into_iter().partition(|(_, v)| is_crd(v));
    let mut all = Vec::new();
    for (source, value) in crd_docs {
        all.push(parse_doc(source, value, &[])?);
    }
    let mut kinds = custom.to_vec();
    kinds.extend(KindSpec::from_crds(&all));
    for (source, value) in rest {
        all.push(parse_doc(source, value, &kinds)?);
    }
    let mut seen = std::collections::BTreeMap::new();
    for o in &all {
        if let Some(first) = seen.insert(o.reference(), o.source.clone()) {
            return Err(KubeError::Manifest {
                source_name: o.source.clone(),
                message: format!("{} is also defined in {first}", o.reference()),
            });
        }
    }
    all.sort_by_key(|o| o.spec.rank);
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    const CM: &str = "apiVersion: v1\nkind: ConfigMap\nmetadata:\n  name: a\n  namespace: kube-system\ndata:\n  k: v\n";

    #[test]
    fn kinds_know_their_scope_and_plural() {
        let d = kind_spec("apps/v1", "DaemonSet").unwrap();
        assert!(d.namespaced);
        assert_eq!(d.resource.plural, "daemonsets");
        let c = kind_spec("rbac.authorization.k8s.io/v1", "ClusterRoleBinding").unwrap();
        assert!(!c.namespaced);
        assert_eq!(c.resource.group, "rbac.authorization.k8s.io");
        assert!(kind_spec("v1", "Pod").is_none());
    }

    #[test]
    fn valid_object_parses() {
        let objs = parse("t.yaml", &format!("---\n{CM}---\n")).unwrap();
        assert_eq!(objs.len(), 1);
        assert_eq!(objs[0].reference().to_string(), "ConfigMap kube-system/a");
        assert_eq!(objs[0].source, "t.yaml#1");
    }

    #[test]
    fn misspelt_field_is_named_with_its_path() {
        let y = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: x}\nspec:\n  selector: {matchLabels: {a: b}}\n  template:\n    metadata: {labels: {a: b}}\n    spec:\n      containers:\n        - name: c\n          image: i\n          imagePulPolicy: Never\n";
        let e = parse("d.yaml", y).unwrap_err().to_string();
        assert!(
            e.contains("d.yaml#1") && e.contains("spec.template.spec.containers.0.imagePulPolicy"),
            "{e}"
        );
    }

    #[test]
    fn wrong_type_unknown_kind_and_scope_are_errors() {
        let y = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: d, namespace: x}\nspec:\n  replicas: two\n  selector: {}\n  template: {}\n";
        assert!(parse("a", y)
            .unwrap_err()
            .to_string()
            .contains("invalid apps/v1 Deployment"));
        let y = "apiVersion: v1\nkind: Pod\nmetadata: {name: p, namespace: x}\n";
        assert!(parse("a", y)
            .unwrap_err()
            .to_string()
            .contains("not a kind"));
        let y = "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: p}\n";
        assert!(parse("a", y)
            .unwrap_err()
            .to_string()
            .contains("namespaced"));
        let y = "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: p, namespace: x}\n";
        assert!(parse("a", y)
            .unwrap_err()
            .to_string()
            .contains("cluster-scoped"));
    }

    #[test]
    fn order_and_duplicates() {
        let sa =
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: s, namespace: kube-system}\n";
        let ns = "apiVersion: v1\nkind: Namespace\nmetadata: {name: n}\n";
        let objs = validate_all([("a", CM), ("b", sa), ("c", ns)]).unwrap();
        let kinds: Vec<_> = objs.iter().map(|o| o.spec.resource.kind.as_str()).collect();
        assert_eq!(kinds, ["Namespace", "ServiceAccount", "ConfigMap"]);
        let e = validate_all([("a", CM), ("b", CM)])
            .unwrap_err()
            .to_string();
        assert!(e.contains("also defined in a#1"), "{e}");
    }
}
