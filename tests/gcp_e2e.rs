//! GCP end to end on local nodes standing in for the instances, as tests/aws_e2e.rs does for AWS:
//! the project's schema-checked Compute fake (tests/gcp/fake.rs; no Compute Engine or emulator
//! is reachable here) answers the API, and the harness boots one systemd-nspawn node (real
//! systemd, sshd) for every instance the fake reports, at the instance's `networkIP` in the test
//! profile's subnet (inside 198.18.0.0/15), in the cloud-image flavour of
//! tests/support/cloud_nodes.rs: the key of the instance's `ssh-keys` metadata authorized for the
//! user that metadata names (`ubuntu`, k8sforge's GCP default) with passwordless sudo, root login
//! refused. `k8sforge up` then provisions (adopting what exists), issues the PKI, forms etcd over
//! TLS and installs the runtime (kernel step read back) as `ubuntu` under `sudo -n`, by private
//! address (`ssh.address: private`); a second `up` sends no mutating call and changes nothing;
//! `teardown` removes every labelled resource.
//!
//! Host keys come from the provider: once the stand-ins run, the harness stores each one's REAL
//! sshd host public keys in the fake's guest attributes of its instance (`hostkeys/`, what GCE's
//! guest agent publishes), so `up` pins them before its first SSH connection and nothing is
//! trusted on first use; a node whose reported key is not the one it presents is refused by name;
//! `status` connects over the pins and writes nothing.
//!
//! Every `k8sforge` run goes under `strace -f -e connect`, and the test asserts that no address
//! outside loopback and 198.18.0.0/15 was dialled (the fake hands out 100.64/10 "external"
//! addresses and a load-balancer address there; they must never be reached).
//!
//! With Kubernetes binaries (K8SFORGE_TEST_KUBE_BIN) `up` runs every phase to nodes Ready and
//! pods on the two workers reach each other, a Service, DNS. The fake's alias IP ranges are
//! bookkeeping only, so the harness stands in for the VPC there too: each stand-in gets a route to
//! every other node's pod range via that node (what the VPC does for alias ranges). Without the
//! binaries (CI), as in aws_e2e, the run stops at the control plane naming the Kubernetes
//! archive the test mirror lacks.

#[path = "gcp/batch.rs"]
#[allow(dead_code)]
mod batch;
#[path = "gcp/fake.rs"]
#[allow(dead_code)]
mod fake;
#[path = "gcp/handlers.rs"]
#[allow(dead_code)]
mod handlers;
#[path = "gcp/schema.rs"]
#[allow(dead_code)]
mod schema;
mod support;
#[path = "gcp/token.rs"]
#[allow(dead_code)]
mod token;

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Output;

use ipnet::Ipv4Net;
use k8sforge::inventory::Inventory;
use k8sforge_testkit::kube;
use k8sforge_testkit::mirror;
use serde_json::Value;
use std::time::Duration;
use support::cloud_nodes::{self, LOGIN_USER};
use support::kube_checks;
use support::local_cluster::phase;
use support::stand_ins::{self, ConnectTrace, StandIns};

use fake::{Fake, World};

fn write_profile(dir: &Path, name: &str, cidr: &str, api: &str, version: &str) -> String {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            r#"name: {name}
provider:
  kind: gcp
  kernelExceptions: [{exceptions}]
  containerNodes: true
  gcp:
    project: k8sforge-test
    region: us-central1
    zone: us-central1-a
    adminCIDRs: [198.18.0.0/15]
    image: projects/ubuntu-os-cloud/global/images/family/ubuntu-2404-lts-amd64
    # The stand-ins boot after the first provision (their addresses come from it): that one
    # finds no guest attributes and must not wait; the next finds them at once (the fake).
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
  gcp: {{ machineType: n2-standard-16 }}
etcd:
  members: 1
workers:
  - name: worker
    count: 2
    gcp: {{ machineType: n2-standard-16 }}
"#,
            // The stand-ins are containers on this machine's kernel (see cloud_nodes.rs).
            exceptions = cloud_nodes::CONTAINER_KERNEL_EXCEPTIONS.join(", ")
        ),
    )
    .unwrap();
    path.display().to_string()
}

struct Run {
    home: std::path::PathBuf,
    profile: String,
    mirror: String,
    endpoint: String,
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
            .env("K8SFORGE_GCP_ENDPOINT", &self.endpoint)
            .env_remove("GOOGLE_APPLICATION_CREDENTIALS")
            .output()
            .expect("strace (apt-get install strace)")
    }

    fn up(&self, extra: &[&str]) -> Value {
        self.up_out(extra).1
    }

    /// `up` with its output (stderr has the provider's lines).
    fn up_out(&self, extra: &[&str]) -> (Output, Value) {
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

fn labelled(v: &Value, cluster: &str) -> bool {
    v["labels"][k8sforge::provider::CLUSTER_LABEL_GCP] == cluster
}

/// Resources of the cluster the fake holds (by label, or by the description marker of the kinds
/// that have no labels).
fn owned(fake: &Fake, cluster: &str) -> Vec<String> {
    let marker = format!("k8sforge.io/cluster={cluster}");
    [
        "networks",
        "subnetworks",
        "firewalls",
        "instances",
        "instanceGroups",
        "healthChecks",
        "backendServices",
        "addresses",
        "forwardingRules",
    ]
    .iter()
    .flat_map(|k| fake.all(k).into_iter().map(move |v| (k, v)))
    .filter(|(_, v)| labelled(v, cluster) || v["description"] == marker.as_str())
    .map(|(k, v)| format!("{k}/{}", v["name"].as_str().unwrap_or("?")))
    .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcp_up_on_local_nodes_standing_in_for_the_instances() {
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test boots systemd-nspawn nodes: run as root"
    );
    let (x, _lock) = support::subnet::reserve_subnet();
    let cidr: Ipv4Net = format!("198.19.{x}.0/24").parse().unwrap();
    let host = Ipv4Addr::from(u32::from(cidr.network()) + 1);
    let name = format!("gcp-e2e-{x}");
    let fake = Fake::start(World::default()).await;
    let work = tempfile::tempdir().unwrap();
    let kube = kube_checks::kube_binaries("gcp_up_on_local_nodes_standing_in_for_the_instances");
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
            &cidr.to_string(),
            &host.to_string(),
            version,
        ),
        mirror: m.root.display().to_string(),
        endpoint: fake.endpoint(),
        trace: ConnectTrace::new(work.path().join("connects")),
    };

    // 1. Provision through `up` (the fake on loopback).
    let (out, r) = tokio::task::block_in_place(|| run.up_out(&["--only", "provision"]));
    assert_eq!(r["phases"][0]["outcome"], "done", "{r:#}");
    // No guest agent has published host keys yet (no stand-in runs): first contact, one line
    // per node saying so.
    let said = String::from_utf8_lossy(&out.stderr);
    for n in ["controlplane-1", "worker-1", "worker-2"] {
        assert!(
            said.contains(&format!(
                "node {n}: no SSH host keys in its guest attributes within 0 s"
            )) && said.contains("pinned on first contact"),
            "{said}"
        );
    }
    let state: Value =
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
        assert_eq!(n.ssh.user, LOGIN_USER, "GCP's default login user: {n:?}");
    }

    // 2. The harness: one local node per instance the fake reports, at its networkIP, with the
    //    key its `ssh-keys` metadata names authorized for that user.
    let instances = fake.all("instances");
    assert_eq!(instances.len(), 3, "{instances:#?}");
    let mut meta_key = None;
    let mut instance_of = std::collections::BTreeMap::new();
    for i in &instances {
        let ip = i["networkInterfaces"][0]["networkIP"]
            .as_str()
            .unwrap_or("");
        assert!(
            inv.nodes.iter().any(|n| n.internal_ip.to_string() == ip),
            "{ip} not in the inventory"
        );
        let items = i["metadata"]["items"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        let keys = items
            .iter()
            .find(|it| it["key"] == "ssh-keys")
            .and_then(|it| it["value"].as_str())
            .unwrap_or_default()
            .to_string();
        let (user, key) = keys.split_once(':').unwrap_or_default();
        assert_eq!(user, LOGIN_USER, "ssh-keys metadata: {keys}");
        meta_key = Some(key.trim().to_string());
        // The guest agent publishes host keys only where this metadata turns it on.
        assert!(
            items
                .iter()
                .any(|it| it["key"] == "enable-guest-attributes" && it["value"] == "TRUE"),
            "{items:?}"
        );
        let node = inv
            .nodes
            .iter()
            .find(|n| n.internal_ip.to_string() == ip)
            .unwrap();
        instance_of.insert(node.name.clone(), i["name"].as_str().unwrap().to_string());
    }
    let key = meta_key.unwrap();
    let cluster_key = run.home.join(&name).join("ssh/id_ed25519");
    let nodes =
        tokio::task::block_in_place(|| StandIns::boot(work.path(), &inv, &key, &cluster_key));
    // The load balancer's stand-in at the address the provider recorded for the API.
    stand_ins::lb_stand_in(SocketAddr::new(IpAddr::V4(host), 6443), &inv, 6443);
    // The VPC's alias-range routing, stood in by routes on the nodes.
    let pod_cidrs = &state["pod_cidrs"];
    for (n, _) in &nodes.nodes {
        for (other, ip) in nodes.nodes.iter().filter(|(o, _)| o != n) {
            let range = pod_cidrs[other].as_str().unwrap();
            nodes.ssh_ok(n, &format!("sudo -n ip route replace {range} via {ip}"));
        }
    }

    // Host keys from the provider: each instance's guest agent publishes its stand-in's REAL
    // sshd host keys under `hostkeys/` (the fake serves them through getGuestAttributes) — for
    // worker-2 first a key that is not its own, which must be refused by name on first contact.
    let real = nodes.host_keys();
    for (n, keys) in &real {
        let keys = if n == "worker-2" {
            vec![other_host_key(work.path())]
        } else {
            keys.clone()
        };
        fake.set_host_keys(&instance_of[n], &keys);
    }
    let (out, refused) = tokio::task::block_in_place(|| run.up_out(&[]));
    let said = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(!out.status.success(), "{said}");
    assert!(
        said.contains(
            "SSH host keys of controlplane-1, worker-1, worker-2 pinned from the GCP guest attributes (hostkeys/)"
        ),
        "{said}"
    );
    assert!(
        format!("{refused}{said}").contains("node worker-2: SSH HOST KEY CHANGED"),
        "{refused:#}\n{said}"
    );
    // The operator removes the wrong pin (ssh-keygen -R); the agent now shows the real keys.
    let kh_path = run.home.join(&name).join("known_hosts");
    let w2 = inv.node("worker-2").unwrap().internal_ip.to_string();
    stand_ins::forget_host_key(&kh_path, &w2);
    let w2_keys = &real.iter().find(|(n, _)| n == "worker-2").unwrap().1;
    fake.set_host_keys(&instance_of["worker-2"], w2_keys);

    // 3. A whole `up`: provision inside it, then PKI, etcd over TLS and the runtime.
    let (out, full) = tokio::task::block_in_place(|| run.up_out(&[]));
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    // Every node's keys came from the guest attributes: none was trusted on first contact.
    assert!(!stderr.contains("on first contact"), "{stderr}");
    assert!(
        stderr.contains("SSH host keys of worker-2 pinned from the GCP guest attributes"),
        "{stderr}"
    );
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
        assert_eq!(phases[i]["outcome"], "done", "{want}: {full:#}");
    }
    assert!(
        phases[3]["detail"]
            .as_str()
            .unwrap()
            .contains("kernel settings read back on 3 nodes"),
        "{full:#}"
    );
    if let Some(k) = &kube {
        for p in ["control-plane", "workers", "network", "addons"] {
            assert_eq!(phase(&full, p)["outcome"], "done", "{p}: {full:#}");
        }
        let admin = run.home.join(&name).join("kubeconfigs/admin.kubeconfig");
        let kubectl = kube_checks::kubectl(k, admin);
        kube_checks::wait_nodes_ready(
            &kubectl,
            &["controlplane-1", "worker-1", "worker-2"],
            Duration::from_secs(120),
        );
        let archive = work.path().join("busybox.tar");
        kube_checks::busybox_archive(&m, &archive);
        for w in ["worker-1", "worker-2"] {
            nodes.ssh_stdin_ok(w, kube_checks::IMPORT_FROM_STDIN, &archive);
        }
        kube_checks::workload_across(&kubectl, "worker-1", "worker-2", k.coredns.is_some());
    } else {
        assert_eq!(phases[4]["phase"], "control-plane", "{full:#}");
        assert_eq!(phases[4]["outcome"], "failed", "{full:#}");
        assert!(
            phases[4]["detail"]
                .as_str()
                .unwrap()
                .contains("kubernetes-server-linux-amd64.tar.gz"),
            "{full:#}"
        );
    }
    for (n, _) in &nodes.nodes {
        let text = nodes.ssh_ok(
            n,
            "stat -c '%U %a' ~/.k8sforge-staging && sudo -n test -f /etc/containerd/config.toml && echo installed",
        );
        assert!(
            text.contains(&format!("{LOGIN_USER} 700")) && text.contains("installed"),
            "{n}: {text}"
        );
    }

    // `status` is read-only: known_hosts is not rewritten (nothing pinned, nothing touched).
    let before = std::fs::read(&kh_path).unwrap();
    let modified = std::fs::metadata(&kh_path).unwrap().modified().unwrap();
    let st = tokio::task::block_in_place(|| run.k8sforge(&["status", "-o", "json"]));
    let sj: Value = serde_json::from_slice(&st.stdout).unwrap_or_default();
    assert!(
        sj["nodes"]
            .as_array()
            .map(|a| a.len() == 3 && a.iter().all(|n| n["reachable"] == true))
            == Some(true),
        "status over the pinned keys: {sj:#}\n{}",
        String::from_utf8_lossy(&st.stderr)
    );
    assert_eq!(
        std::fs::read(&kh_path).unwrap(),
        before,
        "status wrote known_hosts"
    );
    assert_eq!(
        std::fs::metadata(&kh_path).unwrap().modified().unwrap(),
        modified,
        "status rewrote known_hosts"
    );

    // 4. A second run sends no mutating call and changes nothing on the nodes.
    fake.clear_calls();
    let again = tokio::task::block_in_place(|| run.up(&["--only", "provision"]));
    // Every node is pinned now: host keys are not asked for again.
    assert!(
        !fake
            .calls()
            .iter()
            .any(|c| c.method_id == "compute.instances.getGuestAttributes"),
        "{:?}",
        fake.call_counts()
    );
    assert!(
        again["phases"][0]["detail"]
            .as_str()
            .unwrap()
            .contains("0 resources created"),
        "{again:#}"
    );
    let mutating: Vec<String> = fake
        .calls()
        .into_iter()
        // Read-only methods by name: `listInstances` is a POST in Compute v1.
        .filter(|c| {
            let verb = c.method_id.rsplit('.').next().unwrap_or("");
            !(verb.starts_with("get") || verb.starts_with("list") || verb == "aggregatedList")
        })
        .map(|c| format!("{} {}", c.method_id, c.path))
        .collect();
    assert_eq!(mutating, Vec::<String>::new());
    let again = tokio::task::block_in_place(|| run.up(&[]));
    let remote: &[&str] = if kube.is_some() {
        &["etcd", "runtime", "control-plane", "workers", "network"]
    } else {
        &["etcd", "runtime"]
    };
    for p in remote {
        let ph = phase(&again, p);
        assert!(
            ph["outcome"] == "unchanged"
                || (ph["outcome"] == "done"
                    && ph["files_changed"] == 0
                    && ph["units_restarted"] == 0),
            "{p} changed on the second up: {ph:#}"
        );
    }

    // 5. teardown: nothing labelled is left.
    let out = tokio::task::block_in_place(|| run.k8sforge(&["teardown"]));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(owned(&fake, &name), Vec::<String>::new());
    assert_eq!(fake.violations(), Vec::<String>::new());

    // 6. Nobody dialled an address the fake invented.
    let cp = inv
        .nodes
        .iter()
        .find(|n| n.name == "controlplane-1")
        .unwrap();
    run.trace.assert_only_test_ranges(cp.internal_ip);
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
