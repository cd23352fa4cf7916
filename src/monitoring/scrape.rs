//! Scrape configuration for a Hard Way cluster. The control plane runs as systemd units, not
//! static pods, so there are no Services or pods for ServiceMonitors to find: every target is a
//! node address from the inventory and a port from the units k8sforge renders. The result is
//! plain Prometheus `scrape_configs`, given to the in-cluster Prometheus as additional scrape
//! configuration and runnable as is by a stand-alone Prometheus (the live test does that).
//!
//! Ports and paths (facts of the components; see the units under `units/`):
//! etcd client port 2379 (`/metrics`, TLS with a client certificate of the etcd CA),
//! kube-apiserver `apiServer.port`, kube-controller-manager 10257, kube-scheduler 10259
//! (HTTPS, authorized through the apiserver), kubelet 10250 (`/metrics`, `/metrics/cadvisor`),
//! kube-proxy 10249 (HTTP), node-exporter 9100 (HTTP).

use std::path::Path;

use serde::Serialize;

use crate::inventory::{Inventory, Node, Role};
use crate::pki::layout;
use crate::profile::Profile;

pub const ETCD_PORT: u16 = 2379;
pub const CONTROLLER_MANAGER_PORT: u16 = 10257;
pub const SCHEDULER_PORT: u16 = 10259;
pub const KUBELET_PORT: u16 = 10250;
pub const KUBE_PROXY_METRICS_PORT: u16 = 10249;
pub const NODE_EXPORTER_PORT: u16 = 9100;
/// dcgm-exporter's default listen port (its chart's `service.port`).
pub const DCGM_EXPORTER_PORT: u16 = 9400;

/// A scrape job: the `job` label every series of it carries. The names are those the
/// kubernetes-mixin and etcd-mixin dashboards and alerts select on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Job {
    Etcd,
    Apiserver,
    ControllerManager,
    Scheduler,
    Kubelet,
    Cadvisor,
    KubeProxy,
    NodeExporter,
    /// GPU nodes only.
    DcgmExporter,
}

impl Job {
    pub const ALL: [Job; 9] = [
        Job::Etcd,
        Job::Apiserver,
        Job::ControllerManager,
        Job::Scheduler,
        Job::Kubelet,
        Job::Cadvisor,
        Job::KubeProxy,
        Job::NodeExporter,
        Job::DcgmExporter,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Job::Etcd => "etcd",
            Job::Apiserver => "apiserver",
            Job::ControllerManager => "kube-controller-manager",
            Job::Scheduler => "kube-scheduler",
            Job::Kubelet => "kubelet",
            Job::Cadvisor => "cadvisor",
            Job::KubeProxy => "kube-proxy",
            Job::NodeExporter => "node-exporter",
            Job::DcgmExporter => "dcgm-exporter",
        }
    }

    /// The control-plane systemd units (as opposed to per-node agents).
    pub fn is_control_plane(self) -> bool {
        matches!(
            self,
            Job::Etcd | Job::Apiserver | Job::ControllerManager | Job::Scheduler
        )
    }

    fn path(self) -> &'static str {
        match self {
            Job::Cadvisor => "/metrics/cadvisor",
            _ => "/metrics",
        }
    }

    fn tls(self) -> Option<Identity> {
        match self {
            Job::Etcd => Some(Identity::Etcd),
            Job::Apiserver
            | Job::ControllerManager
            | Job::Scheduler
            | Job::Kubelet
            | Job::Cadvisor => Some(Identity::Kubernetes),
            Job::KubeProxy | Job::NodeExporter | Job::DcgmExporter => None,
        }
    }

    /// Whether the server's certificate is verified. The controller manager and scheduler serve
    /// a certificate they generate themselves at start (k8sforge gives them no serving
    /// certificate), which no CA signs; the client certificate still authenticates Prometheus.
    fn verifies_server(self) -> bool {
        !matches!(self, Job::ControllerManager | Job::Scheduler)
    }

    /// The nodes that run it and the port.
    fn targets<'a>(self, profile: &Profile, inv: &'a Inventory) -> (Vec<&'a Node>, u16) {
        let on = |role: Role| inv.with_role(role).collect::<Vec<_>>();
        match self {
            Job::Etcd => (on(Role::Etcd), ETCD_PORT),
            Job::Apiserver => (on(Role::ControlPlane), profile.api_server.port),
            Job::ControllerManager => (on(Role::ControlPlane), CONTROLLER_MANAGER_PORT),
            Job::Scheduler => (on(Role::ControlPlane), SCHEDULER_PORT),
            // Every node runs a kubelet and kube-proxy (control planes included).
            Job::Kubelet | Job::Cadvisor => (inv.nodes.iter().collect(), KUBELET_PORT),
            Job::KubeProxy => (inv.nodes.iter().collect(), KUBE_PROXY_METRICS_PORT),
            Job::NodeExporter => (inv.nodes.iter().collect(), NODE_EXPORTER_PORT),
            Job::DcgmExporter => (
                inv.nodes.iter().filter(|n| n.gpus > 0).collect(),
                DCGM_EXPORTER_PORT,
            ),
        }
    }
}

/// Which client certificate a job presents.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Identity {
    /// `prometheus-client` (Kubernetes CA).
    Kubernetes,
    /// `etcd/prometheus-client` (etcd CA).
    Etcd,
}

/// Where Prometheus finds the CA and client certificate files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScrapeTls {
    pub ca: String,
    pub cert: String,
    pub key: String,
    pub etcd_ca: String,
    pub etcd_cert: String,
    pub etcd_key: String,
}

/// Name of the Secret holding the scrape certificates (mounted by prometheus-operator at
/// `/etc/prometheus/secrets/<name>/`).
pub const TLS_SECRET: &str = "k8sforge-scrape-tls";

impl ScrapeTls {
    /// The Secret's keys as the in-cluster Prometheus sees them.
    pub fn in_cluster() -> ScrapeTls {
        let f = |k: &str| format!("/etc/prometheus/secrets/{TLS_SECRET}/{k}");
        ScrapeTls {
            ca: f("ca.crt"),
            cert: f("prometheus.crt"),
            key: f("prometheus.key"),
            etcd_ca: f("etcd-ca.crt"),
            etcd_cert: f("etcd-prometheus.crt"),
            etcd_key: f("etcd-prometheus.key"),
        }
    }

    /// The files in a cluster's `pki/` directory (a Prometheus outside the cluster).
    pub fn from_pki_dir(pki: &Path) -> ScrapeTls {
        let s = |p: std::path::PathBuf| p.display().to_string();
        ScrapeTls {
            ca: s(layout::cert_path(pki, layout::CA)),
            cert: s(layout::cert_path(pki, layout::PROMETHEUS_CLIENT)),
            key: s(layout::key_path(pki, layout::PROMETHEUS_CLIENT)),
            etcd_ca: s(layout::cert_path(pki, layout::ETCD_CA)),
            etcd_cert: s(layout::cert_path(pki, layout::ETCD_PROMETHEUS_CLIENT)),
            etcd_key: s(layout::key_path(pki, layout::ETCD_PROMETHEUS_CLIENT)),
        }
    }

    /// (Secret key, file in `pki/`) for every file of [`ScrapeTls::in_cluster`]. While a CA
    /// rotates, its trust bundle (old + new) stands for it: servers present certificates of
    /// either during the rotation.
    pub fn secret_files(pki: &Path) -> Vec<(&'static str, std::path::PathBuf)> {
        let trust = |name: &str| {
            let bundle = layout::trust_path(pki, name);
            if bundle.is_file() {
                bundle
            } else {
                layout::cert_path(pki, name)
            }
        };
        vec![
            ("ca.crt", trust(layout::CA)),
            (
                "prometheus.crt",
                layout::cert_path(pki, layout::PROMETHEUS_CLIENT),
            ),
            (
                "prometheus.key",
                layout::key_path(pki, layout::PROMETHEUS_CLIENT),
            ),
            ("etcd-ca.crt", trust(layout::ETCD_CA)),
            (
                "etcd-prometheus.crt",
                layout::cert_path(pki, layout::ETCD_PROMETHEUS_CLIENT),
            ),
            (
                "etcd-prometheus.key",
                layout::key_path(pki, layout::ETCD_PROMETHEUS_CLIENT),
            ),
        ]
    }
}

/// One `scrape_configs` entry (the subset of Prometheus's schema k8sforge uses).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct ScrapeConfig {
    pub job_name: String,
    pub scheme: &'static str,
    pub metrics_path: &'static str,
    pub scrape_interval: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_config: Option<TlsConfig>,
    pub static_configs: Vec<StaticConfig>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TlsConfig {
    pub ca_file: String,
    pub cert_file: String,
    pub key_file: String,
    pub insecure_skip_verify: bool,
}

/// One target with its `node` label (dashboards group by node name, not address).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct StaticConfig {
    pub targets: Vec<String>,
    pub labels: std::collections::BTreeMap<String, String>,
}

/// Every scrape job for the cluster, in [`Job::ALL`] order, one target per node that runs it.
pub fn scrape_configs(profile: &Profile, inv: &Inventory, tls: &ScrapeTls) -> Vec<ScrapeConfig> {
    Job::ALL
        .iter()
        .map(|&job| {
            let (nodes, port) = job.targets(profile, inv);
            let tls_config = job.tls().map(|id| {
                let (ca, cert, key) = match id {
                    Identity::Kubernetes => (&tls.ca, &tls.cert, &tls.key),
                    Identity::Etcd => (&tls.etcd_ca, &tls.etcd_cert, &tls.etcd_key),
                };
                TlsConfig {
                    ca_file: ca.clone(),
                    cert_file: cert.clone(),
                    key_file: key.clone(),
                    insecure_skip_verify: !job.verifies_server(),
                }
            });
            ScrapeConfig {
                job_name: job.name().to_string(),
                scheme: if tls_config.is_some() {
                    "https"
                } else {
                    "http"
                },
                metrics_path: job.path(),
                scrape_interval: profile.monitoring.scrape_interval.clone(),
                tls_config,
                static_configs: nodes
                    .into_iter()
                    .map(|n| StaticConfig {
                        targets: vec![format!("{}:{port}", n.internal_ip)],
                        labels: [("node".to_string(), n.name.clone())].into(),
                    })
                    .collect(),
            }
        })
        .collect()
}

/// The `scrape_configs` list as YAML (the additional-scrape-configs Secret's content).
pub fn scrape_configs_yaml(configs: &[ScrapeConfig]) -> String {
    serde_yaml_ng::to_string(configs).unwrap_or_default()
}

/// A whole Prometheus configuration file: these jobs plus `extra` (other `scrape_configs`
/// entries, e.g. the network probe's) and `rule_files`.
pub fn prometheus_config(
    profile: &Profile,
    configs: &[ScrapeConfig],
    rule_files: &[String],
) -> String {
    #[derive(Serialize)]
    struct Global<'a> {
        scrape_interval: &'a str,
        evaluation_interval: &'a str,
        external_labels: std::collections::BTreeMap<&'static str, &'a str>,
    }
    #[derive(Serialize)]
    struct File<'a> {
        global: Global<'a>,
        rule_files: &'a [String],
        scrape_configs: &'a [ScrapeConfig],
    }
    serde_yaml_ng::to_string(&File {
        global: Global {
            scrape_interval: &profile.monitoring.scrape_interval,
            evaluation_interval: &profile.monitoring.scrape_interval,
            external_labels: [("cluster", profile.name.as_str())].into(),
        },
        rule_files,
        scrape_configs: configs,
    })
    .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn cluster(name: &str) -> (Profile, Inventory) {
        let p = crate::profile::load(name, &[]).unwrap().profile;
        let inv = crate::inventory::planned(&p, &BTreeMap::new()).unwrap();
        (p, inv)
    }

    #[test]
    fn every_component_on_every_node_that_runs_it() {
        let (p, inv) = cluster("local-ha");
        let tls = ScrapeTls::in_cluster();
        let c = scrape_configs(&p, &inv, &tls);
        let by = |j: Job| c.iter().find(|s| s.job_name == j.name()).unwrap();
        let addrs = |j: Job| -> Vec<String> {
            by(j)
                .static_configs
                .iter()
                .flat_map(|s| s.targets.clone())
                .collect()
        };
        let cps: Vec<&Node> = inv.with_role(Role::ControlPlane).collect();
        assert!(cps.len() >= 3);
        assert_eq!(
            addrs(Job::Apiserver),
            cps.iter()
                .map(|n| format!("{}:{}", n.internal_ip, p.api_server.port))
                .collect::<Vec<_>>()
        );
        assert_eq!(
            addrs(Job::Etcd),
            inv.with_role(Role::Etcd)
                .map(|n| format!("{}:2379", n.internal_ip))
                .collect::<Vec<_>>()
        );
        assert_eq!(addrs(Job::Scheduler).len(), cps.len());
        assert!(addrs(Job::ControllerManager)[0].ends_with(":10257"));
        assert!(addrs(Job::Scheduler)[0].ends_with(":10259"));
        for j in [
            Job::Kubelet,
            Job::Cadvisor,
            Job::KubeProxy,
            Job::NodeExporter,
        ] {
            assert_eq!(addrs(j).len(), inv.nodes.len(), "{j:?}");
        }
        assert_eq!(by(Job::Cadvisor).metrics_path, "/metrics/cadvisor");
        // etcd trusts only its own CA: the etcd client certificate, verified server.
        let etcd = by(Job::Etcd).tls_config.as_ref().unwrap();
        assert_eq!(etcd.ca_file, tls.etcd_ca);
        assert_eq!(etcd.cert_file, tls.etcd_cert);
        assert!(!etcd.insecure_skip_verify);
        let api = by(Job::Apiserver).tls_config.as_ref().unwrap();
        assert_eq!((&api.ca_file, &api.cert_file), (&tls.ca, &tls.cert));
        assert!(!api.insecure_skip_verify);
        assert!(
            !by(Job::Kubelet)
                .tls_config
                .as_ref()
                .unwrap()
                .insecure_skip_verify
        );
        assert!(
            by(Job::Scheduler)
                .tls_config
                .as_ref()
                .unwrap()
                .insecure_skip_verify
        );
        assert_eq!(by(Job::KubeProxy).scheme, "http");
        assert!(by(Job::NodeExporter).tls_config.is_none());
        // Each target carries its node name.
        for s in &c {
            for sc in &s.static_configs {
                let ip = sc.targets[0].split(':').next().unwrap();
                let n = inv
                    .nodes
                    .iter()
                    .find(|n| n.internal_ip.to_string() == ip)
                    .unwrap();
                assert_eq!(sc.labels["node"], n.name);
            }
        }
    }

    #[test]
    fn the_yaml_is_a_prometheus_config() {
        let (p, inv) = cluster("gpu-dev");
        let c = scrape_configs(&p, &inv, &ScrapeTls::in_cluster());
        let text = prometheus_config(&p, &c, &["/rules/a.yaml".into()]);
        let v: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).unwrap();
        assert_eq!(v["global"]["external_labels"]["cluster"], "gpu-dev");
        assert_eq!(
            v["scrape_configs"].as_sequence().unwrap().len(),
            Job::ALL.len()
        );
        let list: serde_yaml_ng::Value = serde_yaml_ng::from_str(&scrape_configs_yaml(&c)).unwrap();
        assert_eq!(list.as_sequence().unwrap().len(), Job::ALL.len());
    }
}
