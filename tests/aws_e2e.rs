//! AWS end to end on local nodes standing in for the instances: moto answers the API (support/
//! aws.rs), and the harness boots one systemd-nspawn node (real systemd, sshd) for every instance
//! moto reports, at the instance's private address in the test profile's VPC (inside
//! 198.18.0.0/15), in the cloud-image flavour of tests/support/cloud_nodes.rs: the launch's key
//! pair authorized for `ubuntu` (the Ubuntu image's login user, k8sforge's AWS default) with
//! passwordless sudo, root login refused by sshd. So every remote phase runs as `ubuntu` and
//! elevates with `sudo -n`. A TCP stand-in for the load
//! balancer listens at the address the profile gives the API (`apiServer.endpoint`, the host's
//! bridge address) and forwards to the control plane. `k8sforge up` then provisions (adopting
//! what the harness saw), issues the PKI, forms etcd over TLS and installs the runtime on those
//! nodes, reached by their private addresses (`ssh.address: private`); a second `up` creates and changes nothing;
//! `teardown` removes every tagged resource and the harness stops the nodes.
//!
//! Every `k8sforge` run goes under `strace -f -e connect`, and the test asserts that no address
//! outside loopback and 198.18.0.0/15 was ever dialled (moto invents public IPs; they must never
//! be reached).
//!
//! `up` runs every phase up to the control plane, which stops the run naming the Kubernetes
//! archive the test mirror lacks (no registry here ships it), as tests/up_local.rs does; nodes
//! Ready on these stand-ins with `K8SFORGE_TEST_KUBE_BIN` is not built yet.

mod support;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::{Command, Output};

use ipnet::Ipv4Net;
use k8sforge::inventory::Inventory;
use k8sforge::provider::local::{LocalConfig, LocalProvider};
use k8sforge::provider::ProvisionContext;
use k8sforge_testkit::mirror;
use support::aws as peer;
use support::cloud_nodes::{self, LOGIN_USER};

const BIN: &str = env!("CARGO_BIN_EXE_k8sforge");

fn write_profile(dir: &Path, name: &str, account: &str, cidr: &str, api: &str) -> String {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            r#"name: {name}
provider:
  kind: aws
  kernelExceptions: [{exceptions}]
  aws:
    region: {region}
    zones: [{region}a]
    adminCIDRs: [198.18.0.0/15]
    ami: {{ owner: "{account}", name: "k8sforge-test-noble-*" }}
kubernetes:
  version: v1.34.2
network:
  nodeCIDR: {cidr}
  podCIDR: 10.200.0.0/16
  podPrefixPerNode: 24
  serviceCIDR: 10.32.0.0/24
  dnsServiceIP: 10.32.0.10
apiServer:
  endpoint: "{api}"
ssh:
  port: 22
  address: private
controlPlane:
  count: 1
  aws: {{ instanceType: m6i.large }}
workers:
  - name: worker
    count: 2
    aws: {{ instanceType: m6i.large }}
"#,
            region = peer::REGION,
            // The stand-ins are containers on this machine's kernel (see cloud_nodes.rs).
            exceptions = cloud_nodes::CONTAINER_KERNEL_EXCEPTIONS.join(", ")
        ),
    )
    .unwrap();
    path.display().to_string()
}

struct Run {
    home: std::path::PathBuf,
    account: String,
    profile: String,
    mirror: String,
    trace: std::path::PathBuf,
}

impl Run {
    /// `k8sforge <args>` under strace, every connect(2) of every thread appended to the trace.
    fn k8sforge(&self, args: &[&str]) -> Output {
        Command::new("strace")
            .args(["-f", "-qq", "-e", "trace=connect", "-o"])
            .arg(self.trace.with_extension(format!("{}", rand_suffix())))
            .arg(BIN)
            .args(args)
            .args(["--profile", &self.profile])
            .env("K8SFORGE_HOME", &self.home)
            .env("K8SFORGE_AWS_ENDPOINT_URL", peer::proxy().url())
            .env("AWS_ACCESS_KEY_ID", &self.account)
            .env("AWS_SECRET_ACCESS_KEY", "test")
            .env("AWS_REGION", peer::REGION)
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env("AWS_CONFIG_FILE", "/nonexistent")
            .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
            .env_remove("AWS_PROFILE")
            .env_remove("AWS_ENDPOINT_URL")
            .output()
            .expect("strace (apt-get install strace)")
    }

    fn up(&self, only: &str) -> serde_json::Value {
        let out = self.k8sforge(&[
            "up",
            "--mirror",
            &self.mirror,
            "--trust-mirror-checksums",
            "-o",
            "json",
            "--only",
            only,
        ]);
        assert!(
            out.status.success(),
            "up --only {only}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    }

    /// Every IPv4/IPv6 address any traced run dialled.
    fn dialled(&self) -> Vec<IpAddr> {
        let dir = self.trace.parent().unwrap();
        let stem = self
            .trace
            .file_name()
            .unwrap()
            .to_string_lossy()
            .to_string();
        let mut out = Vec::new();
        for e in std::fs::read_dir(dir).unwrap().flatten() {
            if !e.file_name().to_string_lossy().starts_with(&stem) {
                continue;
            }
            for line in std::fs::read_to_string(e.path()).unwrap().lines() {
                for key in ["inet_addr(\"", "inet_pton(AF_INET6, \""] {
                    if let Some(rest) = line.split(key).nth(1) {
                        if let Some(a) = rest.split('"').next().and_then(|a| a.parse().ok()) {
                            out.push(a);
                        }
                    }
                }
            }
        }
        out
    }
}

/// OpenSSH as `user` with the cluster key (the harness's own access; k8sforge is not involved).
fn openssh(key: &Path, user: &str, ip: Ipv4Addr, script: &str) -> Output {
    Command::new("ssh")
        .arg("-i")
        .arg(key)
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
            "-o",
            "ConnectTimeout=10",
        ])
        .arg(format!("{user}@{ip}"))
        .arg(script)
        .output()
        .expect("ssh (openssh-client)")
}

fn rand_suffix() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

fn allowed(a: &IpAddr) -> bool {
    let test: Ipv4Net = "198.18.0.0/15".parse().unwrap();
    match a {
        IpAddr::V4(v) => v.is_loopback() || test.contains(v) || v.is_unspecified(),
        IpAddr::V6(v) => v.is_loopback() || v.is_unspecified(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_up_on_local_nodes_standing_in_for_the_instances() {
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test boots systemd-nspawn nodes: run as root"
    );
    let (x, _lock) = support::subnet::reserve_subnet();
    let cidr: Ipv4Net = format!("198.19.{x}.0/24").parse().unwrap();
    let host = Ipv4Addr::from(u32::from(cidr.network()) + 1);
    let account = format!("1000000{x:05}");
    let name = format!("aws-e2e-{x}");
    let clients = peer::clients(&account);
    peer::register_ami(&clients, "k8sforge-test-noble-20260101").await;
    let work = tempfile::tempdir().unwrap();
    let m = mirror::build(&mirror::default_cache_dir()).expect("test mirror");
    let run = Run {
        home: work.path().join("home"),
        profile: write_profile(
            work.path(),
            &name,
            &account,
            &cidr.to_string(),
            &host.to_string(),
        ),
        account: account.clone(),
        mirror: m.root.display().to_string(),
        trace: work.path().join("connects"),
    };

    // 1. Provision through `up` (moto on loopback).
    let r = tokio::task::block_in_place(|| run.up("provision"));
    assert_eq!(r["phases"][0]["outcome"], "done", "{r:#}");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.home.join(&name).join("state.json")).unwrap())
            .unwrap();
    let inv: Inventory = serde_json::from_value(state["inventory"].clone()).unwrap();
    assert_eq!(inv.nodes.len(), 3);
    for n in &inv.nodes {
        assert!(cidr.contains(&n.internal_ip), "{n:?}");
        assert_eq!(
            n.ssh.host,
            IpAddr::V4(n.internal_ip),
            "k8sforge must dial the private address"
        );
        assert!(
            n.external_ip.is_some(),
            "moto gives every instance a public address: {n:?}"
        );
    }
    assert_eq!(inv.api.host, host.to_string());

    // 2. The harness: one local node per instance moto reports, at its private address, with the
    //    launch's key pair (the cluster key k8sforge imported) authorized for root.
    let described = clients.ec2.describe_instances().send().await.unwrap();
    let by_ip: BTreeMap<String, String> = described
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| i.state().and_then(|s| s.name()).map(|s| s.as_str()) == Some("running"))
        .filter_map(|i| {
            Some((
                i.private_ip_address()?.to_string(),
                i.key_name()?.to_string(),
            ))
        })
        .collect();
    assert_eq!(by_ip.len(), 3, "{by_ip:?}");
    for n in &inv.nodes {
        assert!(
            by_ip.contains_key(&n.internal_ip.to_string()),
            "{n:?} not in {by_ip:?}"
        );
    }
    let key = std::fs::read_to_string(run.home.join(&name).join("ssh/id_ed25519.pub")).unwrap();
    let hosts_name = format!("{name}-hosts");
    let local_profile = k8sforge::profile::load(
        "local-3",
        &[
            format!("name={hosts_name}"),
            format!("network.nodeCIDR={cidr}"),
        ],
    )
    .unwrap()
    .profile;
    let mut cfg = LocalConfig::from_profile(&local_profile).unwrap();
    cfg.launcher_exe = BIN.into();
    let hosts = LocalProvider::new(cfg);
    let mut planned = inv.clone();
    planned.cluster = hosts_name.clone();
    let hosts_dir = work.path().join("hosts");
    std::fs::create_dir_all(&hosts_dir).unwrap();
    struct Stop<'a>(&'a LocalProvider);
    impl Drop for Stop<'_> {
        fn drop(&mut self) {
            let _ = self.0.teardown_all(false);
        }
    }
    let _ = hosts.teardown_all(false);
    let ctx = ProvisionContext::new(&local_profile, &planned, hosts_dir, key.trim().to_string());
    tokio::task::block_in_place(|| hosts.provision_nodes(&ctx))
        .expect("boot the stand-in instances");
    let _stop = Stop(&hosts);

    // The cloud-image flavour: the launch's key pair authorized for `ubuntu` only (passwordless
    // sudo), the kernel values kubelet checks as a cloud kernel has them, root login refused.
    let cluster_key = run.home.join(&name).join("ssh/id_ed25519");
    for n in &inv.nodes {
        for script in [
            cloud_nodes::cloudify_script(LOGIN_USER, &key, true),
            cloud_nodes::KERNEL_STAND_IN.to_string(),
            cloud_nodes::REVOKE_ROOT.to_string(),
        ] {
            let out = openssh(&cluster_key, "root", n.internal_ip, &script);
            assert!(
                out.status.success(),
                "{} as root: {script}\n{}",
                n.name,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let root = openssh(&cluster_key, "root", n.internal_ip, "true");
        assert!(
            !root.status.success(),
            "{}: root login must be refused",
            n.name
        );
        let user = openssh(&cluster_key, LOGIN_USER, n.internal_ip, "sudo -n true");
        assert!(
            user.status.success(),
            "{}: {LOGIN_USER} with passwordless sudo: {}",
            n.name,
            String::from_utf8_lossy(&user.stderr)
        );
    }

    // The load balancer's stand-in: a TCP balancer at the API endpoint, to the control plane.
    let cp = inv
        .nodes
        .iter()
        .find(|n| n.name == "controlplane-1")
        .unwrap();
    let backend = SocketAddr::new(IpAddr::V4(cp.internal_ip), 6443);
    let listen = SocketAddr::new(IpAddr::V4(host), 6443);
    std::thread::spawn(move || k8sforge::provider::local::api_proxy::run(listen, vec![backend]));

    // 3. A whole `up` (no `--only`): provision runs inside it like every other phase, then PKI,
    //    etcd over TLS and the runtime (containerd, CNI, the node-local API endpoint) on the
    //    stand-in instances, through their private addresses.
    let out = tokio::task::block_in_place(|| {
        run.k8sforge(&[
            "up",
            "--mirror",
            &run.mirror,
            "--trust-mirror-checksums",
            "-o",
            "json",
        ])
    });
    let full: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "up: no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    let phases = full["phases"].as_array().unwrap();
    for (i, want) in ["provision", "pki", "etcd", "runtime"].iter().enumerate() {
        assert_eq!(phases[i]["phase"], *want, "{full:#}");
        assert_eq!(phases[i]["outcome"], "done", "{want}: {full:#}");
    }
    // The test mirror has no Kubernetes binaries (none can be downloaded here): the run stops
    // at the control plane naming the archive, as tests/up_local.rs does for local nodes.
    assert_eq!(phases[4]["phase"], "control-plane", "{full:#}");
    assert_eq!(phases[4]["outcome"], "failed", "{full:#}");
    assert!(
        phases[4]["detail"]
            .as_str()
            .unwrap()
            .contains("kubernetes-server-linux-amd64.tar.gz"),
        "{full:#}"
    );
    // The runtime phase's kernel step read every setting back on every node (the container's
    // exceptions listed in the profile).
    assert!(
        phases[3]["detail"]
            .as_str()
            .unwrap()
            .contains("kernel settings read back on 3 nodes"),
        "{full:#}"
    );
    // Everything ran as `ubuntu` under sudo: k8sforge's staging directory is that user's.
    for n in &inv.nodes {
        let out = openssh(
            &cluster_key,
            LOGIN_USER,
            n.internal_ip,
            "stat -c '%U %a' ~/.k8sforge-staging && sudo -n test -f /etc/etcd/ca.crt -o -f /etc/containerd/config.toml && echo installed",
        );
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            text.contains(&format!("{LOGIN_USER} 700")) && text.contains("installed"),
            "{}: {text} {}",
            n.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let apiserver = std::fs::read(run.home.join(&name).join("pki/apiserver.crt")).unwrap();
    assert!(!apiserver.is_empty());

    // 4. A second run creates nothing and changes nothing.
    peer::proxy().reset(&account);
    let again = tokio::task::block_in_place(|| run.up("provision"));
    assert!(
        again["phases"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("0 resources created"),
        "{again:#}"
    );
    let mutating: Vec<String> = peer::proxy()
        .log(&account)
        .into_iter()
        .filter(|a| !a.starts_with("Describe") && !a.starts_with("Get") && !a.starts_with('('))
        .collect();
    assert_eq!(mutating, Vec::<String>::new());
    let etcd = tokio::task::block_in_place(|| run.up("etcd"));
    assert_eq!(etcd["phases"][0]["files_changed"], 0, "{etcd:#}");
    assert_eq!(etcd["phases"][0]["units_restarted"], 0, "{etcd:#}");

    // 5. teardown: nothing tagged is left.
    let out = tokio::task::block_in_place(|| run.k8sforge(&["teardown"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let tag = aws_sdk_ec2::types::Filter::builder()
        .name(format!("tag:{}", k8sforge::provider::CLUSTER_TAG))
        .values(&name)
        .build();
    let vpcs = clients
        .ec2
        .describe_vpcs()
        .filters(tag)
        .send()
        .await
        .unwrap();
    assert!(vpcs.vpcs().is_empty());

    // 6. Nobody dialled an address moto invented.
    let dialled = run.dialled();
    assert!(
        dialled.contains(&IpAddr::V4(cp.internal_ip)),
        "the trace saw no connection to the nodes at all: {dialled:?}"
    );
    let bad: Vec<&IpAddr> = dialled.iter().filter(|a| !allowed(a)).collect();
    assert!(
        bad.is_empty(),
        "k8sforge dialled outside loopback and 198.18.0.0/15: {bad:?}"
    );
}
