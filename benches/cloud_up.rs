//! `k8sforge up` of a static cluster (1 control plane + 2 workers) over local nodes, twice on the
//! same machines: as root directly, then in their cloud-image flavour (tests/support/cloud_nodes:
//! `ubuntu` with passwordless sudo, root refused, only the bastion reachable from this machine)
//! through ONE bastion connection as `ubuntu`. The difference is the overhead of `sudo -n` and the
//! jump host. Static teardown between the two leaves the hosts as found. Per phase, seconds.
//!
//! Needs root. With K8SFORGE_TEST_KUBE_BIN (DEVELOPERS.md) `up` goes to a working cluster;
//! without, it stops at the control plane (the test mirror has no Kubernetes binaries) and the
//! figure covers provision..runtime.
//!
//!   cargo bench --profile dev --bench cloud_up

#[path = "../tests/support/mod.rs"]
mod support;

use std::fs;
use std::net::Ipv4Addr;
use std::time::Instant;

use k8sforge_testkit::{kube, mirror};
use support::cloud_nodes::{self, LOGIN_USER};
use support::local_cluster::LocalCluster;
use support::static_cluster::{write_static, Host, Static};

fn phases(v: &serde_json::Value) -> Vec<(String, String, f64)> {
    v["phases"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|p| {
            (
                p["phase"].as_str().unwrap_or("?").to_string(),
                p["outcome"].as_str().unwrap_or("?").to_string(),
                p["elapsed"].as_f64().unwrap_or(0.0),
            )
        })
        .collect()
}

fn main() {
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "run as root: boots local nodes"
    );
    let kube = kube::from_env().unwrap_or_else(|e| panic!("{e}"));
    let cache = mirror::default_cache_dir();
    let base = mirror::build(&cache).expect("test mirror");
    let m = match &kube {
        Some(k) => kube::cluster_mirror(&base, k, &cache).expect("cluster mirror"),
        None => base,
    };
    let version = kube.as_ref().map_or("v1.34.2", |k| k.version.as_str());

    let machines = LocalCluster::reserved("bcu", "local-3").with_set("workers[0].count=3");
    let _ = machines.cmd(&["teardown"]).output();
    machines.up_only("provision");
    let st: serde_json::Value =
        serde_json::from_slice(&fs::read(machines.state_dir().join("state.json")).unwrap())
            .unwrap();
    let nodes: Vec<(String, Ipv4Addr)> = st["inventory"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                n["internal_ip"].as_str().unwrap().parse().unwrap(),
            )
        })
        .collect();
    let (_, bastion_ip) = nodes[3].clone();
    let cluster = &nodes[..3];
    let gateway = Ipv4Addr::from(u32::from(bastion_ip) & 0xffff_ff00 | 1);
    for (n, _) in cluster {
        machines.ssh_ok(n, cloud_nodes::KERNEL_STAND_IN);
        machines.ssh_ok(n, &cloud_nodes::resolver_stand_in(gateway));
    }
    let key = machines.state_dir().join("ssh/id_ed25519");
    let scratch = tempfile::tempdir().unwrap();
    let hosts = |user: &'static str, bastion: Option<Ipv4Addr>| -> Vec<Host> {
        cluster
            .iter()
            .enumerate()
            .map(|(i, (n, ip))| Host {
                name: n.clone(),
                ip: *ip,
                roles: if i == 0 {
                    "control-plane, etcd"
                } else {
                    "worker"
                },
                user,
                bastion,
            })
            .collect()
    };
    let measure = |label: &str, tag: &str, hosts: &[Host]| -> (f64, Vec<(String, String, f64)>) {
        let s = Static {
            home: scratch.path().join(format!("{tag}-home")),
            dir: scratch.path().join(tag),
            name: format!("{}-{tag}", machines.name),
            mirror: m.root.display().to_string(),
        };
        write_static(&s.dir, &s.name, &machines.cidr, &key, hosts, 2, version);
        let t = Instant::now();
        let (out, report) = s.up();
        let secs = t.elapsed().as_secs_f64();
        let ph = phases(&report);
        // With kube binaries every phase must finish: a failed control plane is not a figure.
        let full = kube.is_some();
        assert!(
            ph.iter()
                .filter(|p| full || ["provision", "pki", "etcd", "runtime"].contains(&p.0.as_str()))
                .all(|p| p.1 == "done"),
            "{label}: {}\n{report:#}",
            String::from_utf8_lossy(&out.stderr)
        );
        let td = s.cmd(&["teardown"]).output().unwrap();
        assert!(
            td.status.success(),
            "{label} teardown: {}",
            String::from_utf8_lossy(&td.stderr)
        );
        eprintln!("{label}: up {secs:.1} s");
        (secs, ph)
    };

    let direct = measure("as root, directly", "root", &hosts("root", None));

    // The cloud-image flavour, then only the bastion reachable.
    let pub_key = fs::read_to_string(key.with_extension("pub")).unwrap();
    for (n, _) in &nodes {
        machines.ssh_ok(n, &cloud_nodes::cloudify_script(LOGIN_USER, &pub_key, true));
    }
    for (n, _) in &nodes {
        machines.ssh_ok(n, cloud_nodes::REVOKE_ROOT);
    }
    let ips: Vec<Ipv4Addr> = cluster.iter().map(|(_, ip)| *ip).collect();
    let api: Vec<(Ipv4Addr, u16)> = kube.iter().map(|_| (ips[0], 6443)).collect();
    let _isolation = cloud_nodes::Isolation::new(&ips, &api);
    let jumped = measure(
        "as ubuntu through the bastion",
        "bastion",
        &hosts(LOGIN_USER, Some(bastion_ip)),
    );

    println!(
        "\nstatic up, 1 control plane + 2 workers (Kubernetes {version}{}), seconds:",
        if kube.is_some() {
            ""
        } else {
            "; no Kubernetes binaries: up to the runtime phase"
        }
    );
    println!("| phase | root, direct | ubuntu + sudo, through one bastion |");
    println!("|---|---|---|");
    for (name, outcome, secs) in &direct.1 {
        let other = jumped
            .1
            .iter()
            .find(|p| &p.0 == name)
            .map(|p| format!("{:.1} ({})", p.2, p.1))
            .unwrap_or_default();
        println!("| {name} | {secs:.1} ({outcome}) | {other} |");
    }
    println!(
        "| **total (wall)** | **{:.1}** | **{:.1}** |",
        direct.0, jumped.0
    );
}
