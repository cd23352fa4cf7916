//! A real etcd + kube-apiserver + kube-controller-manager on 127.0.0.1 with k8sforge's own PKI,
//! for tests of what k8sforge applies through the API. The Kubernetes binaries come from
//! `K8SFORGE_TEST_KUBE_BIN` (see DEVELOPERS.md), etcd from the test mirror (Debian's
//! etcd-server). Processes are killed when the `ApiServer` is dropped.

use std::collections::BTreeMap;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::rbac::v1::ClusterRoleBinding;
use kube::api::Api;

use k8sforge::kube::{self as k8skube, Cluster};
use k8sforge::pki::{self, layout};
use k8sforge::profile;

pub const KUBE_BIN: &str = "K8SFORGE_TEST_KUBE_BIN";

pub struct Proc {
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

    pub fn tail(&self) -> String {
        let log = std::fs::read_to_string(&self.log).unwrap_or_default();
        let tail: Vec<&str> = log.lines().rev().take(30).collect();
        tail.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    pub fn check_alive(&mut self) {
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

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
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

/// The binaries directory, or None (the caller prints its one skip line).
pub fn kube_bin() -> Option<PathBuf> {
    let bin = std::env::var_os(KUBE_BIN).map(PathBuf::from)?;
    for b in ["kube-apiserver", "kube-controller-manager"] {
        assert!(
            bin.join(b).is_file(),
            "{KUBE_BIN}={} has no {b}",
            bin.display()
        );
    }
    Some(bin)
}

pub struct ApiServer {
    pub profile_sets: Vec<String>,
    /// `$K8SFORGE_HOME` of the test: the cluster's state directory is `<home>/<profile name>`.
    pub home: PathBuf,
    pub cluster_dir: PathBuf,
    pub admin: PathBuf,
    pub cluster: Cluster,
    pub procs: Vec<Proc>,
    _tmp: tempfile::TempDir,
}

impl ApiServer {
    /// Start everything for built-in profile `base` pinned to `version`, with `controllers` in
    /// kube-controller-manager.
    pub async fn start(bin: &Path, base: &str, version: &str, controllers: &str) -> ApiServer {
        let etcd = etcd_binary();
        let tmp = tempfile::tempdir().unwrap();
        let root = tmp.path().to_path_buf();
        let api_port = free_port();
        let sets = vec![
            format!("kubernetes.version={version}"),
            "apiServer.endpoint=127.0.0.1".to_string(),
            format!("apiServer.port={api_port}"),
        ];
        let loaded = profile::load(base, &sets).unwrap_or_else(|e| panic!("{e}"));
        let p = loaded.profile;
        let inv = k8sforge::inventory::planned(&p, &BTreeMap::new()).unwrap();
        let home = root.join("home");
        let cluster_dir = home.join(&p.name);
        std::fs::create_dir_all(&cluster_dir).unwrap();
        pki::ensure(&p, &inv, &cluster_dir).unwrap();
        let pki_dir = layout::pki_dir(&cluster_dir);
        let crt = |n: &str| layout::cert_path(&pki_dir, n);
        let key = |n: &str| layout::key_path(&pki_dir, n);
        let admin = layout::kubeconfig_path(&cluster_dir, layout::ADMIN);
        let (client_port, peer_port) = (free_port(), free_port());
        let mut etcd = Proc::start(
            "etcd",
            Command::new(etcd)
                .arg("--name=test")
                .arg(format!("--data-dir={}", root.join("etcd").display()))
                .arg(format!(
                    "--listen-client-urls=http://127.0.0.1:{client_port}"
                ))
                .arg(format!(
                    "--advertise-client-urls=http://127.0.0.1:{client_port}"
                ))
                .arg(format!("--listen-peer-urls=http://127.0.0.1:{peer_port}"))
                .arg(format!(
                    "--initial-advertise-peer-urls=http://127.0.0.1:{peer_port}"
                ))
                .arg(format!(
                    "--initial-cluster=test=http://127.0.0.1:{peer_port}"
                )),
            &root,
        );
        let mut apiserver = Proc::start(
            "kube-apiserver",
            Command::new(bin.join("kube-apiserver"))
                .arg(format!("--etcd-servers=http://127.0.0.1:{client_port}"))
                .arg("--bind-address=127.0.0.1")
                .arg("--advertise-address=127.0.0.1")
                .arg(format!("--secure-port={api_port}"))
                .arg("--authorization-mode=Node,RBAC")
                // As k8sforge's own apiserver unit: node agents (TCPX daemon) run privileged.
                .arg("--allow-privileged=true")
                .arg("--enable-admission-plugins=NodeRestriction")
                .arg(format!("--client-ca-file={}", crt(layout::CA).display()))
                .arg(format!(
                    "--tls-cert-file={}",
                    crt(layout::APISERVER).display()
                ))
                .arg(format!(
                    "--tls-private-key-file={}",
                    key(layout::APISERVER).display()
                ))
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
                    key(layout::SERVICE_ACCOUNT).display()
                ))
                .arg(format!(
                    "--service-cluster-ip-range={}",
                    p.network.service_cidr
                )),
            &root,
        );
        let cluster = connect_when_up(&admin, &mut [&mut etcd, &mut apiserver]).await;
        let kcm = Proc::start(
            "kube-controller-manager",
            Command::new(bin.join("kube-controller-manager"))
                .arg(format!(
                    "--kubeconfig={}",
                    layout::kubeconfig_path(&cluster_dir, layout::CONTROLLER_MANAGER).display()
                ))
                .arg(format!("--controllers={controllers}"))
                .arg("--use-service-account-credentials=true")
                .arg("--leader-elect=false")
                .arg("--bind-address=127.0.0.1")
                .arg(format!("--secure-port={}", free_port()))
                .arg(format!(
                    "--service-account-private-key-file={}",
                    key(layout::SERVICE_ACCOUNT).display()
                ))
                .arg(format!(
                    "--cluster-signing-cert-file={}",
                    crt(layout::CA).display()
                ))
                .arg(format!(
                    "--cluster-signing-key-file={}",
                    key(layout::CA).display()
                ))
                .arg(format!("--root-ca-file={}", crt(layout::CA).display())),
            &root,
        );
        ApiServer {
            profile_sets: sets,
            home,
            cluster_dir,
            admin,
            cluster,
            procs: vec![etcd, apiserver, kcm],
            _tmp: tmp,
        }
    }

    pub fn check_alive(&mut self) {
        for p in &mut self.procs {
            p.check_alive();
        }
    }
}

async fn connect_when_up(kubeconfig: &Path, procs: &mut [&mut Proc]) -> Cluster {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        for p in procs.iter_mut() {
            p.check_alive();
        }
        match k8skube::connect(kubeconfig).await {
            Ok(c) => {
                // /version answers before the bootstrap RBAC policy exists; wait for it too.
                let crb: Api<ClusterRoleBinding> = Api::all(c.client.clone());
                if crb
                    .get_opt("system:kube-controller-manager")
                    .await
                    .ok()
                    .flatten()
                    .is_some()
                {
                    return c;
                }
            }
            Err(e) if Instant::now() > deadline => panic!("API never came up: {e}"),
            Err(_) => {}
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}
