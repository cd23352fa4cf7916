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
//! With Kubernetes binaries (K8SFORGE_TEST_KUBE_BIN, see DEVELOPERS.md) `up` runs every phase
//! to nodes Ready and the test checks pods on the two workers reaching each other, a Service and
//! DNS; without them (CI) `up` stops at the control plane naming the Kubernetes archive the test
//! mirror lacks, as tests/up_local.rs does, after printing one line saying the rest was skipped.
//! The stand-ins are containers on this machine's kernel: the profile says so
//! (`provider.containerNodes`, `provider.kernelExceptions`).

mod support;

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Output;
use std::time::Duration;

use ipnet::Ipv4Net;
use k8sforge::inventory::{Inventory, Role};
use k8sforge_testkit::{kube, mirror};
use support::aws as peer;
use support::cloud_nodes::{self, LOGIN_USER};
use support::kube_checks;
use support::local_cluster::phase;
use support::stand_ins::{self, ConnectTrace, StandIns};

fn write_profile(
    dir: &Path,
    name: &str,
    account: &str,
    cidr: &str,
    api: &str,
    version: &str,
) -> String {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            r#"name: {name}
provider:
  kind: aws
  kernelExceptions: [{exceptions}]
  containerNodes: true
  aws:
    region: {region}
    zones: [{region}a]
    adminCIDRs: [198.18.0.0/15]
    ami: {{ owner: "{account}", name: "k8sforge-test-noble-*" }}
    # The stand-ins boot after the first provision (their addresses come from it): that one
    # finds no keys and must not wait; the next finds them at once (the proxy below).
    hostKeyWaitSeconds: 0
kubernetes:
  version: {version}
# The training operators need images nobody can build here (tests/training_apply.rs has them).
training:
  enabled: false
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
    trace: ConnectTrace,
}

impl Run {
    /// `k8sforge <args>` under strace (support::stand_ins::ConnectTrace).
    fn k8sforge(&self, args: &[&str]) -> Output {
        self.trace
            .k8sforge()
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

    /// `up` (plus `extra`) with the mirror; the JSON report, whatever the exit status.
    fn up(&self, extra: &[&str]) -> (Output, serde_json::Value) {
        let mut args = vec![
            "up",
            "--mirror",
            &self.mirror,
            "--trust-mirror-checksums",
            "-o",
            "json",
        ];
        args.extend_from_slice(extra);
        let out = self.k8sforge(&args);
        let v = serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "up {extra:?}: no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (out, v)
    }
}

const REMOTE_PHASES: [&str; 5] = ["etcd", "runtime", "control-plane", "workers", "network"];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn aws_up_on_local_nodes_standing_in_for_the_instances() {
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test boots systemd-nspawn nodes: run as root"
    );
    let kube = kube_checks::kube_binaries("aws_up_on_local_nodes_standing_in_for_the_instances");
    let (x, _lock) = support::subnet::reserve_subnet();
    let cidr: Ipv4Net = format!("198.19.{x}.0/24").parse().unwrap();
    let host = Ipv4Addr::from(u32::from(cidr.network()) + 1);
    let account = format!("1000000{x:05}");
    let name = format!("aws-e2e-{x}");
    let clients = peer::clients(&account);
    peer::register_ami(&clients, "k8sforge-test-noble-20260101").await;
    let work = tempfile::tempdir().unwrap();
    let cache = mirror::default_cache_dir();
    let base = mirror::build(&cache).expect("test mirror");
    let m = match &kube {
        Some(k) => kube::cluster_mirror(&base, k, &cache).expect("cluster mirror"),
        None => base,
    };
    let version = kube.as_ref().map_or("v1.34.2", |k| k.version.as_str());
    let run = Run {
        home: work.path().join("home"),
        profile: write_profile(
            work.path(),
            &name,
            &account,
            &cidr.to_string(),
            &host.to_string(),
            version,
        ),
        account: account.clone(),
        mirror: m.root.display().to_string(),
        trace: ConnectTrace::new(work.path().join("connects")),
    };

    // 1. Provision through `up` (moto on loopback).
    let (out, r) = tokio::task::block_in_place(|| run.up(&["--only", "provision"]));
    assert_eq!(r["phases"][0]["outcome"], "done", "{r:#}");
    // No instance has printed host keys yet (no stand-in runs): first contact, said so.
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        said.contains(
            "no SSH host keys in the console output of controlplane-1, worker-1, worker-2"
        ) && said.contains("pinned on first contact"),
        "{said}"
    );
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

    // 2. The harness: one local node per running instance moto reports, at its private
    //    address, with the launch's key pair (the cluster key k8sforge imported) authorized for
    //    `ubuntu` (support::stand_ins).
    let described = clients.ec2.describe_instances().send().await.unwrap();
    let by_ip: BTreeMap<String, String> = described
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter(|i| i.state().and_then(|s| s.name()).map(|s| s.as_str()) == Some("running"))
        .filter_map(|i| {
            Some((
                i.private_ip_address()?.to_string(),
                i.instance_id()?.to_string(),
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
    let cluster_key = run.home.join(&name).join("ssh/id_ed25519");
    let nodes =
        tokio::task::block_in_place(|| StandIns::boot(work.path(), &inv, &key, &cluster_key));
    // The load balancer's stand-in at the address the provider recorded for the API.
    stand_ins::lb_stand_in(SocketAddr::new(IpAddr::V4(host), 6443), &inv, 6443);
    // Instances in one VPC talk with 9001-byte frames; k8sforge's VXLAN pod MTU (8951) needs
    // them and its unit refuses a smaller underlay.
    nodes.set_network_mtu(host, 9001);

    // Host keys from the provider. moto's console output is one fixed text; a real instance's
    // has cloud-init's host-key block. So the test proxy answers GetConsoleOutput for each
    // instance with its stand-in's real host keys in that format — for worker-2 first with a key
    // that is not its own, which must be refused by name on first contact.
    let real = nodes.host_keys();
    let id_of = |node: &str| {
        let ip = inv.node(node).unwrap().internal_ip.to_string();
        by_ip[&ip].clone()
    };
    for (n, keys) in &real {
        let keys = if n == "worker-2" {
            vec![other_host_key(work.path())]
        } else {
            keys.clone()
        };
        peer::proxy().set_console(&account, &id_of(n), &console_text(n, &keys));
    }
    let (out, refused) = tokio::task::block_in_place(|| run.up(&[]));
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains("SSH host keys of controlplane-1, worker-1, worker-2 pinned from the AWS console output"),
        "{said}"
    );
    assert!(
        format!("{refused}{said}").contains("node worker-2: SSH HOST KEY CHANGED"),
        "{refused:#}\n{said}"
    );
    // The operator removes the wrong pin (ssh-keygen -R); the console now shows the real keys.
    let kh_path = run.home.join(&name).join("known_hosts");
    let w2 = inv.node("worker-2").unwrap().internal_ip.to_string();
    stand_ins::forget_host_key(&kh_path, &w2);
    let w2_keys = &real.iter().find(|(n, _)| n == "worker-2").unwrap().1;
    peer::proxy().set_console(
        &account,
        &id_of("worker-2"),
        &console_text("worker-2", w2_keys),
    );

    // 3. A whole `up` (no `--only`): provision runs inside it like every other phase, then PKI,
    //    etcd over TLS, the runtime (kernel step, containerd, CNI, the node-local API endpoint)
    //    and — with kube binaries — the control plane, workers, network and add-ons, on the
    //    stand-in instances through their private addresses.
    let (out, full) = tokio::task::block_in_place(|| run.up(&[]));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    // Every node's keys came from the console: none was trusted on first contact.
    assert!(!stderr.contains("on first contact"), "{stderr}");
    let kh = std::fs::read_to_string(&kh_path).unwrap();
    for (n, keys) in &real {
        let ip = inv.node(n).unwrap().internal_ip.to_string();
        for k in keys {
            assert!(
                kh.lines()
                    .any(|l| l.starts_with(&format!("{ip} ")) && l.contains(k.as_str())),
                "{n}: {k} not pinned in\n{kh}"
            );
        }
    }
    let phases = full["phases"].as_array().unwrap();
    for (i, want) in ["provision", "pki", "etcd", "runtime"].iter().enumerate() {
        assert_eq!(phases[i]["phase"], *want, "{full:#}");
        assert_eq!(phases[i]["outcome"], "done", "{want}: {full:#}\n{stderr}");
    }
    // The runtime phase's kernel step read every setting back on every node (the container's
    // exceptions listed in the profile).
    assert!(
        phases[3]["detail"]
            .as_str()
            .unwrap()
            .contains("kernel settings read back on 3 nodes"),
        "{full:#}"
    );
    if kube.is_none() {
        // The test mirror has no Kubernetes binaries (none can be downloaded here): the run
        // stops at the control plane naming the archive, as tests/up_local.rs does.
        assert_eq!(phases[4]["phase"], "control-plane", "{full:#}");
        assert_eq!(phases[4]["outcome"], "failed", "{full:#}");
        assert!(
            phases[4]["detail"]
                .as_str()
                .unwrap()
                .contains("kubernetes-server-linux-amd64.tar.gz"),
            "{full:#}"
        );
    } else {
        for p in ["control-plane", "workers", "network", "addons"] {
            assert_eq!(
                phase(&full, p)["outcome"],
                "done",
                "{p}: {full:#}\n{stderr}"
            );
        }
        assert_eq!(out.status.code(), Some(0), "{stderr}");
    }
    // Everything ran as `ubuntu` under sudo: k8sforge's staging directory is that user's.
    for (n, _) in &nodes.nodes {
        let text = nodes.ssh_ok(
            n,
            "stat -c '%U %a' ~/.k8sforge-staging && sudo -n test -f /etc/etcd/ca.crt -o -f /etc/containerd/config.toml && echo installed",
        );
        assert!(
            text.contains(&format!("{LOGIN_USER} 700")) && text.contains("installed"),
            "{n}: {text}"
        );
    }

    // 4. With the binaries: every node Ready through the node-local endpoint (kubelets never
    //    dial the balancer), pods on the two workers reach each other, a Service, DNS.
    if let Some(k) = &kube {
        let admin = run.home.join(&name).join("kubeconfigs/admin.kubeconfig");
        let kc = std::fs::read_to_string(&admin).unwrap();
        assert!(kc.contains(&format!("server: https://{host}:6443")), "{kc}");
        let kubectl = kube_checks::kubectl(k, admin);
        kube_checks::wait_nodes_ready(
            &kubectl,
            &["controlplane-1", "worker-1", "worker-2"],
            Duration::from_secs(120),
        );
        let kubelet = nodes.ssh_ok("worker-1", "sudo -n cat /etc/kubernetes/kubelet.kubeconfig");
        assert!(
            kubelet.contains("server: https://127.0.0.1:6443"),
            "{kubelet}"
        );
        let archive = work.path().join("busybox.tar");
        kube_checks::busybox_archive(&m, &archive);
        for w in ["worker-1", "worker-2"] {
            nodes.ssh_stdin_ok(w, kube_checks::IMPORT_FROM_STDIN, &archive);
        }
        kube_checks::workload_across(&kubectl, "worker-1", "worker-2", k.coredns.is_some());
    }

    // 5. A second run creates nothing on AWS and changes nothing on the nodes.
    peer::proxy().reset(&account);
    let (out, again) = tokio::task::block_in_place(|| run.up(&[]));
    assert!(
        phase(&again, "provision")["detail"]
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
    let remote: &[&str] = if kube.is_some() {
        &REMOTE_PHASES
    } else {
        &REMOTE_PHASES[..2]
    };
    for p in remote {
        let ph = phase(&again, p);
        assert!(
            ph["outcome"] == "unchanged"
                || (ph["outcome"] == "done"
                    && ph["files_changed"] == 0
                    && ph["units_restarted"] == 0),
            "{p} changed on the second up: {ph:#}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if kube.is_some() {
        assert_eq!(out.status.code(), Some(0));
        assert_eq!(phase(&again, "addons")["files_changed"], 0, "{again:#}");
    }

    // 6. teardown: nothing tagged is left (the harness stops the nodes when `nodes` drops).
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
        .filters(tag.clone())
        .send()
        .await
        .unwrap();
    assert!(vpcs.vpcs().is_empty());
    let left = clients
        .ec2
        .describe_instances()
        .filters(tag)
        .send()
        .await
        .unwrap();
    assert!(
        left.reservations()
            .iter()
            .flat_map(|r| r.instances())
            .all(|i| i.state().and_then(|s| s.name()).map(|s| s.as_str()) == Some("terminated")),
        "{left:?}"
    );

    // 7. Nobody dialled an address moto invented.
    let cp = inv.with_role(Role::ControlPlane).next().unwrap();
    run.trace.assert_only_test_ranges(cp.internal_ip);
}

/// Console output as cloud-init prints it on an Ubuntu instance: boot lines, then the host keys.
fn console_text(node: &str, keys: &[String]) -> String {
    let mut t = format!(
        "[    0.000000] Linux version 6.8.0-1015-aws\n[   12.345678] cloud-init[812]: Cloud-init v. 24.1.3 running 'modules:final'\n\
         -----BEGIN SSH HOST KEY FINGERPRINTS-----\n256 SHA256:placeholder root@{node} (ED25519)\n-----END SSH HOST KEY FINGERPRINTS-----\n\
         -----BEGIN SSH HOST KEY KEYS-----\n"
    );
    for k in keys {
        t.push_str(&format!("{k} root@{node}\n"));
    }
    t.push_str("-----END SSH HOST KEY KEYS-----\n[   13.0] cloud-init[812]: Cloud-init v. 24.1.3 finished\n");
    t
}

/// A fresh ed25519 public key that belongs to no stand-in.
fn other_host_key(dir: &Path) -> String {
    let f = dir.join("not-the-host-key");
    let st = std::process::Command::new("ssh-keygen")
        .args(["-q", "-t", "ed25519", "-N", "", "-f"])
        .arg(&f)
        .status()
        .expect("ssh-keygen");
    assert!(st.success());
    let pub_key = std::fs::read_to_string(f.with_extension("pub")).unwrap();
    pub_key
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}
