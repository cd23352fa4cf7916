//! The scrape configuration against real components: a real Prometheus (Debian's `prometheus`)
//! runs k8sforge's rendered `scrape_configs` against a real etcd (TLS, client certificates
//! required), kube-apiserver, kube-controller-manager, kube-scheduler and node-exporter (Debian's
//! `prometheus-node-exporter`), all started the way k8sforge's units start them (etcd client
//! port over TLS, the controller manager and scheduler on the node address, authorizing through
//! the apiserver) with certificates from k8sforge's own PKI, and every target must be `up` in
//! Prometheus's HTTP API. Before the monitoring RBAC is applied the apiserver, controller
//! manager and scheduler refuse the Prometheus certificate's user (403): the test shows that
//! first, so the RBAC is what makes them `up`.
//!
//! The "node" is a loopback address of its own (127.x.y.z, random per run), so the fixed ports
//! the scrape configuration names (2379, 10257, 10259, 9100) do not collide with anything else
//! on the machine; the apiserver port is free-picked as in the profile.
//!
//! Not checked here: the kubelet, cAdvisor and kube-proxy jobs (no kubelet or kube-proxy runs on
//! this host; their addresses, ports and TLS are checked offline in `monitoring::scrape`), and
//! in-cluster Prometheus (the operator's images cannot be had here).
//!
//! Needs `K8SFORGE_TEST_KUBE_BIN` (kube-apiserver, kube-controller-manager, kube-scheduler; see
//! DEVELOPERS.md) and the Debian packages `prometheus` and `prometheus-node-exporter`; skipped
//! with one line when either is missing.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, TcpListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::Api;

use k8sforge::inventory::{self, Role};
use k8sforge::kube as k8skube;
use k8sforge::monitoring::{self, certs_metric, scrape};
use k8sforge::pki::{self, layout};
use k8sforge::profile;

const KUBE_BIN: &str = "K8SFORGE_TEST_KUBE_BIN";
const TEST_KUBERNETES: &str = "v1.28.7";
const PROMETHEUS: &str = "/usr/bin/prometheus";
const NODE_EXPORTER: &str = "/usr/bin/prometheus-node-exporter";

struct Proc {
    name: &'static str,
    child: Child,
    log: PathBuf,
}

impl Proc {
    fn start(name: &'static str, cmd: &mut Command, log_dir: &Path) -> Proc {
        let log = log_dir.join(format!("{name}.log"));
        let f = std::fs::File::create(&log).unwrap();
        let child = cmd
            .stdout(Stdio::from(f.try_clone().unwrap()))
            .stderr(Stdio::from(f))
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {name} ({cmd:?}): {e}"));
        Proc { name, child, log }
    }

    fn tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(20).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    fn check_alive(&mut self) {
        if let Ok(Some(status)) = self.child.try_wait() {
            panic!("{} exited ({status}):\n{}", self.name, self.tail());
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// A loopback address nobody else uses this run (127.0.0.0/8 is all loopback on Linux).
fn private_loopback() -> Ipv4Addr {
    loop {
        let r: [u8; 3] = rand::random();
        let ip = Ipv4Addr::new(127, 100 + r[0] % 100, r[1], 1 + r[2] % 250);
        if TcpListener::bind((ip, scrape::ETCD_PORT)).is_ok()
            && TcpListener::bind((ip, scrape::NODE_EXPORTER_PORT)).is_ok()
        {
            return ip;
        }
    }
}

fn etcd_binary() -> PathBuf {
    let mirror = k8sforge_testkit::mirror::build(&k8sforge_testkit::mirror::default_cache_dir())
        .unwrap_or_else(|e| panic!("building the test mirror (for etcd): {e}"));
    let unpacked = mirror
        .busybox
        .ancestors()
        .nth(3)
        .expect("unpacked dir")
        .to_path_buf();
    let etcd = unpacked.join("etcd-server/usr/bin/etcd");
    assert!(etcd.exists(), "no etcd at {}", etcd.display());
    etcd
}

fn get_json(url: &str) -> Result<serde_json::Value, String> {
    let mut resp = ureq::get(url).call().map_err(|e| format!("{url}: {e}"))?;
    let body = resp
        .body_mut()
        .read_to_string()
        .map_err(|e| format!("{url}: {e}"))?;
    serde_json::from_str(&body).map_err(|e| format!("{url}: {e}: {body}"))
}

/// (job, node label, health, lastError) of every active target.
fn targets(prom: &str) -> Vec<(String, String, String, String)> {
    let v = match get_json(&format!("{prom}/api/v1/targets?state=active")) {
        Ok(v) => v,
        Err(_) => return Vec::new(),
    };
    v["data"]["activeTargets"]
        .as_array()
        .cloned()
        .unwrap_or_default()
        .iter()
        .map(|t| {
            let s = |v: &serde_json::Value| v.as_str().unwrap_or_default().to_string();
            (
                s(&t["labels"]["job"]),
                s(&t["labels"]["node"]),
                s(&t["health"]),
                s(&t["lastError"]),
            )
        })
        .collect()
}

/// Wait until `pred` holds for the target list; panic with the list otherwise.
fn wait_targets(
    prom: &str,
    procs: &mut [&mut Proc],
    what: &str,
    pred: impl Fn(&[(String, String, String, String)]) -> bool,
) -> Vec<(String, String, String, String)> {
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        for p in procs.iter_mut() {
            p.check_alive();
        }
        let t = targets(prom);
        if pred(&t) {
            return t;
        }
        if Instant::now() > deadline {
            panic!("{what}: never happened; targets:\n{t:#?}");
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

fn query(prom: &str, q: &str) -> Vec<serde_json::Value> {
    let url = format!("{prom}/api/v1/query?query={}", urlencoding::encode(q));
    get_json(&url).unwrap()["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_every_control_plane_target() {
    let Some(bin) = std::env::var_os(KUBE_BIN).map(PathBuf::from) else {
        println!("skipped: set {KUBE_BIN} to a directory with kube-apiserver, kube-controller-manager and kube-scheduler {TEST_KUBERNETES} (see DEVELOPERS.md)");
        return;
    };
    if !Path::new(PROMETHEUS).is_file() || !Path::new(NODE_EXPORTER).is_file() {
        println!("skipped: needs the Debian packages prometheus and prometheus-node-exporter ({PROMETHEUS}, {NODE_EXPORTER})");
        return;
    }
    for b in [
        "kube-apiserver",
        "kube-controller-manager",
        "kube-scheduler",
    ] {
        assert!(
            bin.join(b).is_file(),
            "{KUBE_BIN}={} has no {b}",
            bin.display()
        );
    }
    let etcd_bin = etcd_binary();
    let tmp = tempfile::tempdir().unwrap();
    let root = tmp.path();
    let ip = private_loopback();
    let api_port = free_port();

    // One control-plane node (with etcd) whose address is this run's loopback address.
    let loaded = profile::load(
        "local-3",
        &[
            format!("kubernetes.version={TEST_KUBERNETES}"),
            format!("apiServer.endpoint={ip}"),
            format!("apiServer.port={api_port}"),
            "monitoring.enabled=true".into(),
            "monitoring.scrapeInterval=1s".into(),
        ],
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let p = loaded.profile;
    let mut inv = inventory::planned(&p, &BTreeMap::new()).unwrap();
    inv.nodes.retain(|n| n.has(Role::ControlPlane));
    assert_eq!(inv.nodes.len(), 1);
    assert!(inv.nodes[0].has(Role::Etcd));
    inv.nodes[0].internal_ip = ip;
    let node = inv.nodes[0].name.clone();

    let cluster_dir = root.join("cluster");
    std::fs::create_dir_all(&cluster_dir).unwrap();
    pki::ensure(&p, &inv, &cluster_dir).unwrap();
    let pki_dir = layout::pki_dir(&cluster_dir);
    let crt = |n: &str| layout::cert_path(&pki_dir, n).display().to_string();
    let key = |n: &str| layout::key_path(&pki_dir, n).display().to_string();
    let kubeconfig = |n: &str| {
        layout::kubeconfig_path(&cluster_dir, n)
            .display()
            .to_string()
    };

    // etcd as units/etcd.service.j2 runs it: client port over TLS, client certificates required.
    let mut etcd = Proc::start(
        "etcd",
        Command::new(etcd_bin)
            .arg(format!("--name={node}"))
            .arg(format!("--data-dir={}", root.join("etcd").display()))
            .arg(format!("--listen-client-urls=https://{ip}:2379"))
            .arg(format!("--advertise-client-urls=https://{ip}:2379"))
            .arg(format!("--listen-peer-urls=http://{ip}:2380"))
            .arg(format!("--initial-advertise-peer-urls=http://{ip}:2380"))
            .arg(format!("--initial-cluster={node}=http://{ip}:2380"))
            .arg("--client-cert-auth=true")
            .arg(format!("--trusted-ca-file={}", crt(layout::ETCD_CA)))
            .arg(format!("--cert-file={}", crt(&layout::etcd_server(&node))))
            .arg(format!("--key-file={}", key(&layout::etcd_server(&node)))),
        root,
    );
    let mut apiserver = Proc::start(
        "kube-apiserver",
        Command::new(bin.join("kube-apiserver"))
            .arg(format!("--etcd-servers=https://{ip}:2379"))
            .arg(format!("--etcd-cafile={}", crt(layout::ETCD_CA)))
            .arg(format!(
                "--etcd-certfile={}",
                crt(layout::APISERVER_ETCD_CLIENT)
            ))
            .arg(format!(
                "--etcd-keyfile={}",
                key(layout::APISERVER_ETCD_CLIENT)
            ))
            // As the unit: every address (the kubeconfigs of the components name 127.0.0.1).
            .arg("--bind-address=0.0.0.0")
            .arg(format!("--advertise-address={ip}"))
            .arg(format!("--secure-port={api_port}"))
            .arg("--authorization-mode=Node,RBAC")
            .arg(format!("--client-ca-file={}", crt(layout::CA)))
            .arg(format!("--tls-cert-file={}", crt(layout::APISERVER)))
            .arg(format!("--tls-private-key-file={}", key(layout::APISERVER)))
            .arg(format!(
                "--service-account-issuer=https://kubernetes.default.svc.{}",
                p.kubernetes.cluster_domain
            ))
            .arg(format!(
                "--service-account-key-file={}",
                layout::service_account_public(&pki_dir).display()
            ))
            .arg(format!(
                "--service-account-signing-key-file={}",
                key(layout::SERVICE_ACCOUNT)
            ))
            .arg(format!(
                "--service-cluster-ip-range={}",
                p.network.service_cidr
            )),
        root,
    );

    // Wait for the API and its bootstrap RBAC.
    let admin = layout::kubeconfig_path(&cluster_dir, layout::ADMIN);
    let deadline = Instant::now() + Duration::from_secs(90);
    let cluster = loop {
        etcd.check_alive();
        apiserver.check_alive();
        if let Ok(c) = k8skube::connect(&admin).await {
            let crb: Api<ClusterRoleBinding> = Api::all(c.client.clone());
            if crb
                .get_opt("system:kube-controller-manager")
                .await
                .ok()
                .flatten()
                .is_some()
            {
                break c;
            }
        }
        assert!(
            Instant::now() < deadline,
            "API never came up:\n{}",
            apiserver.tail()
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };

    // The controller manager and scheduler as their units run them with monitoring on: serving
    // on the node address, authenticating and authorizing callers through the apiserver.
    let mut kcm = Proc::start(
        "kube-controller-manager",
        Command::new(bin.join("kube-controller-manager"))
            .arg(format!(
                "--kubeconfig={}",
                kubeconfig(layout::CONTROLLER_MANAGER)
            ))
            .arg(format!(
                "--authentication-kubeconfig={}",
                kubeconfig(layout::CONTROLLER_MANAGER)
            ))
            .arg(format!(
                "--authorization-kubeconfig={}",
                kubeconfig(layout::CONTROLLER_MANAGER)
            ))
            .arg(format!("--client-ca-file={}", crt(layout::CA)))
            .arg("--controllers=serviceaccount")
            .arg("--leader-elect=false")
            .arg(format!("--bind-address={ip}"))
            .arg(format!("--secure-port={}", scrape::CONTROLLER_MANAGER_PORT))
            .arg(format!(
                "--service-account-private-key-file={}",
                key(layout::SERVICE_ACCOUNT)
            ))
            .arg(format!("--root-ca-file={}", crt(layout::CA))),
        root,
    );
    let mut sched = Proc::start(
        "kube-scheduler",
        Command::new(bin.join("kube-scheduler"))
            .arg(format!("--kubeconfig={}", kubeconfig(layout::SCHEDULER)))
            .arg(format!(
                "--authentication-kubeconfig={}",
                kubeconfig(layout::SCHEDULER)
            ))
            .arg(format!(
                "--authorization-kubeconfig={}",
                kubeconfig(layout::SCHEDULER)
            ))
            .arg("--leader-elect=false")
            .arg(format!("--bind-address={ip}"))
            .arg(format!("--secure-port={}", scrape::SCHEDULER_PORT)),
        root,
    );

    // node-exporter, with k8sforge's certificate metrics in its textfile directory.
    let textfile_dir = root.join("textfile");
    std::fs::create_dir_all(&textfile_dir).unwrap();
    let report =
        pki::check::inspect(&p, &inv, &cluster_dir, 30, time::OffsetDateTime::now_utc()).unwrap();
    std::fs::write(
        textfile_dir.join(certs_metric::TEXTFILE_NAME),
        certs_metric::textfile(&report),
    )
    .unwrap();
    let mut node_exporter = Proc::start(
        "node-exporter",
        Command::new(NODE_EXPORTER)
            .arg(format!(
                "--web.listen-address={ip}:{}",
                scrape::NODE_EXPORTER_PORT
            ))
            .arg(format!(
                "--collector.textfile.directory={}",
                textfile_dir.display()
            )),
        root,
    );

    // Prometheus with k8sforge's scrape configuration, the certificate files from pki/.
    let live_jobs = [
        scrape::Job::Etcd,
        scrape::Job::Apiserver,
        scrape::Job::ControllerManager,
        scrape::Job::Scheduler,
        scrape::Job::NodeExporter,
    ];
    let configs: Vec<scrape::ScrapeConfig> =
        scrape::scrape_configs(&p, &inv, &scrape::ScrapeTls::from_pki_dir(&pki_dir))
            .into_iter()
            .filter(|c| live_jobs.iter().any(|j| j.name() == c.job_name))
            .collect();
    assert_eq!(configs.len(), live_jobs.len());
    let config_file = root.join("prometheus.yml");
    std::fs::write(&config_file, scrape::prometheus_config(&p, &configs, &[])).unwrap();
    // The configuration is one the real Prometheus accepts as is.
    let check = Command::new("/usr/bin/promtool")
        .args(["check", "config"])
        .arg(&config_file)
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "promtool check config:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let prom_port = free_port();
    let mut prometheus = Proc::start(
        "prometheus",
        Command::new(PROMETHEUS)
            .arg(format!("--config.file={}", config_file.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                root.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{prom_port}")),
        root,
    );
    let prom = format!("http://127.0.0.1:{prom_port}");

    // Without the monitoring RBAC the components refuse the Prometheus user.
    let refused = wait_targets(
        &prom,
        &mut [
            &mut etcd,
            &mut apiserver,
            &mut kcm,
            &mut sched,
            &mut prometheus,
        ],
        "apiserver refusing the scrape with 403 and etcd up",
        |t| {
            t.iter()
                .any(|(j, _, h, e)| j == "apiserver" && h == "down" && e.contains("403"))
                && t.iter().any(|(j, _, h, _)| j == "etcd" && h == "up")
        },
    );
    println!("before RBAC: {refused:?}");

    // Apply k8sforge's monitoring objects (namespace, scrape RBAC, scrape config Secret) and the
    // certificates Secret, as the addons phase does.
    let mut manifests = monitoring::render(&p, &inv).unwrap();
    manifests.push(monitoring::tls_secret(&pki_dir).unwrap());
    let objects =
        k8skube::validate_all(manifests.iter().map(|m| (m.name, m.yaml.as_str()))).unwrap();
    k8skube::apply(&cluster, &objects).await.unwrap();

    let all_up = wait_targets(
        &prom,
        &mut [
            &mut etcd,
            &mut apiserver,
            &mut kcm,
            &mut sched,
            &mut node_exporter,
            &mut prometheus,
        ],
        "every target up",
        |t| t.len() == live_jobs.len() && t.iter().all(|(_, _, h, _)| h == "up"),
    );
    let mut jobs: Vec<&str> = all_up.iter().map(|(j, _, _, _)| j.as_str()).collect();
    jobs.sort();
    let mut want: Vec<&str> = live_jobs.iter().map(|j| j.name()).collect();
    want.sort();
    assert_eq!(jobs, want);
    assert!(all_up.iter().all(|(_, n, _, _)| *n == node), "{all_up:?}");

    // Each job's own metrics arrived (not just an HTTP 200).
    for (job, metric) in [
        ("etcd", "etcd_server_has_leader"),
        ("apiserver", "apiserver_request_total"),
        ("kube-controller-manager", "workqueue_adds_total"),
        ("kube-scheduler", "scheduler_pending_pods"),
        ("node-exporter", "node_cpu_seconds_total"),
        ("node-exporter", certs_metric::EXPIRY_METRIC),
    ] {
        let r = query(&prom, &format!("count({metric}{{job=\"{job}\"}})"));
        assert!(!r.is_empty(), "no {metric} from job {job}");
    }
    // Every certificate of the table is exported with its expiry.
    let certs = pki::table::expand(&p, &inv).len();
    let r = query(&prom, &format!("count({})", certs_metric::EXPIRY_METRIC));
    assert_eq!(r[0]["value"][1].as_str(), Some(certs.to_string().as_str()));

    // Figures for BENCHMARKS.md (printed, not asserted): samples per scrape of each job, and
    // the Prometheus process's memory for the series it holds.
    for r in query(&prom, "scrape_samples_scraped") {
        println!(
            "figure: samples per scrape job={} {}",
            r["metric"]["job"].as_str().unwrap_or_default(),
            r["value"][1].as_str().unwrap_or_default()
        );
    }
    let own = ureq::get(&format!("{prom}/metrics"))
        .call()
        .unwrap()
        .body_mut()
        .read_to_string()
        .unwrap();
    for line in own.lines() {
        if line.starts_with("prometheus_tsdb_head_series ")
            || line.starts_with("process_resident_memory_bytes ")
        {
            println!("figure: prometheus {line}");
        }
    }
}
