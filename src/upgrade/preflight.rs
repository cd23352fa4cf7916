//! Before an upgrade touches anything: the versions the cluster runs now (read live: each
//! apiserver's `/version`, each node's kubelet version from its Node status), the skew rules for
//! the target, and the deprecated APIs clients still request that the target no longer serves
//! (the apiserver's `apiserver_requested_deprecated_apis` gauge, since 1.19).

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;

use super::version::Version;
use crate::inventory::{Inventory, Role};
use crate::phases::control_plane::local_kubectl;
use crate::remote::Executor;

/// What runs where.
#[derive(Debug, Clone, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct LiveVersions {
    /// control plane → its apiserver's gitVersion.
    pub apiservers: BTreeMap<String, String>,
    /// node → kubelet version from its Node status.
    pub kubelets: BTreeMap<String, String>,
}

/// One deprecated API that was requested since its apiserver started.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct DeprecatedApi {
    pub group: String,
    pub version: String,
    pub resource: String,
    /// `1.29`; empty when upstream has not decided.
    pub removed_release: String,
}

impl DeprecatedApi {
    pub fn describe(&self) -> String {
        let gv = if self.group.is_empty() {
            self.version.clone()
        } else {
            format!("{}/{}", self.group, self.version)
        };
        format!(
            "{gv} {} (removed in {})",
            self.resource, self.removed_release
        )
    }

    /// Removed in `target`'s minor or before.
    pub fn gone_in(&self, target: Version) -> bool {
        let mut it = self.removed_release.split('.');
        let (Some(Ok(major)), Some(Ok(minor))) = (
            it.next().map(str::parse::<u32>),
            it.next().map(str::parse::<u32>),
        ) else {
            return false;
        };
        (major, minor) <= (target.major, target.minor)
    }
}

/// The gauge's series in Prometheus text exposition (value 1: requested since start).
pub fn parse_deprecated(metrics: &str) -> Vec<DeprecatedApi> {
    let mut out = Vec::new();
    for line in metrics.lines() {
        let Some(rest) = line.strip_prefix("apiserver_requested_deprecated_apis{") else {
            continue;
        };
        let Some((labels, value)) = rest.rsplit_once('}') else {
            continue;
        };
        if value.trim().parse::<f64>().map(|v| v < 1.0).unwrap_or(true) {
            continue;
        }
        let mut l: BTreeMap<&str, String> = BTreeMap::new();
        // Label values here are API names and versions: no escaped quotes or commas.
        for pair in labels.split(',') {
            if let Some((k, v)) = pair.split_once('=') {
                l.insert(k.trim(), v.trim().trim_matches('"').to_string());
            }
        }
        let get = |k: &str| l.get(k).cloned().unwrap_or_default();
        out.push(DeprecatedApi {
            group: get("group"),
            version: get("version"),
            resource: get("resource"),
            removed_release: get("removed_release"),
        });
    }
    out.sort();
    out.dedup();
    out
}

fn run(exec: &Executor, node: &crate::inventory::Node, cmd: &str) -> Result<String, String> {
    let conn = exec
        .connect(node)
        .map_err(|e| format!("{}: {e}", node.name))?;
    let o = conn
        .exec_status(cmd, Duration::from_secs(60))
        .map_err(|e| format!("{}: {e}", node.name))?;
    if o.status != 0 {
        return Err(format!("{}: {}", node.name, o.stderr.trim()));
    }
    Ok(o.stdout)
}

/// Each apiserver's own `/version`, and the kubelet versions (through the first control plane
/// that answers).
pub fn live_versions(exec: &Executor, inv: &Inventory, port: u16) -> Result<LiveVersions, String> {
    let mut live = LiveVersions::default();
    let mut errors = Vec::new();
    let mut nodes_json = None;
    for cp in inv.with_role(Role::ControlPlane) {
        match run(exec, cp, &local_kubectl(port, "get --raw=/version")) {
            Ok(out) => {
                let v: serde_json::Value = serde_json::from_str(&out)
                    .map_err(|e| format!("{}: /version: {e}", cp.name))?;
                let gv = v["gitVersion"].as_str().unwrap_or_default().to_string();
                live.apiservers.insert(cp.name.clone(), gv);
                if nodes_json.is_none() {
                    nodes_json = run(exec, cp, &local_kubectl(port, "get nodes -o json")).ok();
                }
            }
            Err(e) => errors.push(e),
        }
    }
    if !errors.is_empty() {
        return Err(format!(
            "every apiserver must answer before an upgrade starts: {}",
            errors.join("; ")
        ));
    }
    let nodes = nodes_json.ok_or("no control plane listed the nodes")?;
    let v: serde_json::Value =
        serde_json::from_str(&nodes).map_err(|e| format!("node list: {e}"))?;
    for item in v["items"].as_array().into_iter().flatten() {
        let name = item["metadata"]["name"].as_str().unwrap_or_default();
        let kv = item["status"]["nodeInfo"]["kubeletVersion"]
            .as_str()
            .unwrap_or_default();
        live.kubelets.insert(name.to_string(), kv.to_string());
    }
    Ok(live)
}

/// The deprecated APIs requested since each apiserver started, all control planes together.
pub fn deprecated_in_use(
    exec: &Executor,
    inv: &Inventory,
    port: u16,
) -> Result<Vec<DeprecatedApi>, String> {
    let mut all = Vec::new();
    for cp in inv.with_role(Role::ControlPlane) {
        let metrics = run(exec, cp, &local_kubectl(port, "get --raw=/metrics"))?;
        all.extend(parse_deprecated(&metrics));
    }
    all.sort();
    all.dedup();
    Ok(all)
}

/// The skew checks: one problem per line, empty when the upgrade to `target` may start.
/// `from` is the oldest apiserver.
pub fn skew_problems(live: &LiveVersions, target: Version) -> Vec<String> {
    let mut problems = Vec::new();
    let parse = |what: &str, node: &str, v: &str, problems: &mut Vec<String>| {
        let p = Version::parse(v);
        if p.is_none() {
            problems.push(format!(
                "{what} on {node} reports version {v:?}, which is not vX.Y.Z"
            ));
        }
        p
    };
    for (node, v) in &live.apiservers {
        let Some(v) = parse("kube-apiserver", node, v, &mut problems) else {
            continue;
        };
        if v.major != target.major {
            problems.push(format!(
                "kube-apiserver on {node} runs {v}: k8sforge does not move between major versions (target {target})"
            ));
        } else if v > target {
            problems.push(format!(
                "kube-apiserver on {node} runs {v}, newer than the target {target}: downgrades are not supported"
            ));
        } else if target.minor > v.minor + 1 {
            problems.push(format!(
                "kube-apiserver on {node} runs {v}: upgrades go one minor at a time, so upgrade to {} first (then to {target})",
                Version { minor: v.minor + 1, patch: 0, ..v }.minor_string()
            ));
        }
    }
    let skew = target.kubelet_skew();
    for (node, v) in &live.kubelets {
        let Some(v) = parse("kubelet", node, v, &mut problems) else {
            continue;
        };
        if v > target {
            problems.push(format!(
                "kubelet on {node} runs {v}, newer than the target {target}: a kubelet must not be newer than the apiserver"
            ));
        } else if v.major != target.major || v.minor + skew < target.minor {
            problems.push(format!(
                "kubelet on {node} runs {v}; an apiserver at {target} supports kubelets down to {} (skew policy: {skew} minors): upgrade that node's kubelet first",
                Version { minor: target.minor.saturating_sub(skew), patch: 0, ..target }.minor_string()
            ));
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn live(api: &[(&str, &str)], kubelets: &[(&str, &str)]) -> LiveVersions {
        LiveVersions {
            apiservers: api
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
            kubelets: kubelets
                .iter()
                .map(|(a, b)| (a.to_string(), b.to_string()))
                .collect(),
        }
    }

    #[test]
    fn skew_rules_name_the_node_and_the_way_out() {
        let t = Version::parse("v1.30.1").unwrap();
        assert!(skew_problems(&live(&[("cp", "v1.29.4")], &[("w", "v1.27.0")]), t).is_empty());
        let p = skew_problems(&live(&[("cp", "v1.28.7")], &[("w", "v1.28.7")]), t);
        assert!(
            p[0].contains("one minor at a time") && p[0].contains("v1.29 first"),
            "{p:?}"
        );
        let p = skew_problems(&live(&[("cp", "v1.30.2")], &[]), t);
        assert!(p[0].contains("downgrades"), "{p:?}");
        let p = skew_problems(&live(&[("cp", "v1.29.0")], &[("w1", "v1.26.3")]), t);
        assert!(
            p[0].contains("w1") && p[0].contains("down to v1.27"),
            "{p:?}"
        );
        let p = skew_problems(&live(&[("cp", "v1.29.0")], &[("w1", "v1.31.0")]), t);
        assert!(p[0].contains("newer than the target"), "{p:?}");
        // Patch upgrades within a minor.
        let t = Version::parse("v1.28.8").unwrap();
        assert!(skew_problems(&live(&[("cp", "v1.28.7")], &[("w", "v1.28.7")]), t).is_empty());
    }

    #[test]
    fn deprecated_apis_are_read_from_the_gauge() {
        let m = r#"# HELP apiserver_requested_deprecated_apis [STABLE] Gauge of deprecated APIs that have been requested, broken out by API group, version, resource, subresource, and removed_release.
# TYPE apiserver_requested_deprecated_apis gauge
apiserver_requested_deprecated_apis{group="flowcontrol.apiserver.k8s.io",removed_release="1.29",resource="flowschemas",subresource="",version="v1beta2"} 1
apiserver_requested_deprecated_apis{group="",removed_release="",resource="componentstatuses",subresource="",version="v1"} 1
apiserver_request_total{code="200"} 5
"#;
        let d = parse_deprecated(m);
        assert_eq!(d.len(), 2);
        let fs = d.iter().find(|a| a.resource == "flowschemas").unwrap();
        assert!(fs.gone_in(Version::parse("v1.29.0").unwrap()));
        assert!(!fs.gone_in(Version::parse("v1.28.8").unwrap()));
        assert_eq!(
            fs.describe(),
            "flowcontrol.apiserver.k8s.io/v1beta2 flowschemas (removed in 1.29)"
        );
        let cs = d
            .iter()
            .find(|a| a.resource == "componentstatuses")
            .unwrap();
        assert!(!cs.gone_in(Version::parse("v1.99.0").unwrap()));
    }
}
