//! The `static` provider: an inventory of existing hosts becomes the cluster's nodes, and a
//! broken hosts file is reported with positions, all mistakes at once.

use std::collections::BTreeMap;
use std::process::Command;

use k8sforge::inventory::Role;
use k8sforge::profile;
use k8sforge::provider::static_hosts;

const PROFILE: &str = "\
name: metal
provider:
  kind: static
  static:
    inventory: hosts.yaml
network:
  nodeCIDR: 10.1.0.0/24
  podCIDR: 10.200.0.0/16
  podPrefixPerNode: 24
  serviceCIDR: 10.32.0.0/24
  dnsServiceIP: 10.32.0.10
controlPlane:
  count: 1
workers:
  - name: worker
    count: 1
";

const HOSTS: &str = "\
hosts:
  - name: cp-a
    address: 10.1.0.5
    roles: [control-plane, etcd]
  - name: gpu-a
    address: 10.1.0.6
    externalAddress: 203.0.113.6
    roles: [worker]
    gpus: 8
    ssh: { user: ubuntu, port: 2222 }
";

#[test]
fn hosts_become_nodes_with_pod_cidrs() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hosts.yaml"), HOSTS).unwrap();
    let (p, _) = profile::parse(PROFILE, "metal.yaml", &[]).unwrap();
    let inv = static_hosts::load(&dir.path().join("hosts.yaml"), &p, &BTreeMap::new()).unwrap();
    assert!(!inv.planned);
    let cp = inv.node("cp-a").unwrap();
    assert!(cp.has(Role::ControlPlane) && cp.has(Role::Etcd) && !cp.has(Role::Worker));
    assert_eq!(cp.pod_cidr.to_string(), "10.200.0.0/24");
    let gpu = inv.node("gpu-a").unwrap();
    assert_eq!(gpu.pod_cidr.to_string(), "10.200.1.0/24");
    assert_eq!(gpu.gpus, 8);
    // SSH goes to the external address with the host's own user and port.
    assert_eq!(gpu.ssh.host.to_string(), "203.0.113.6");
    assert_eq!((gpu.ssh.user.as_str(), gpu.ssh.port), ("ubuntu", 2222));
    // One control plane and no LB: the API is that control plane.
    assert_eq!(inv.api.url(), "https://10.1.0.5:6443");
}

#[test]
fn broken_hosts_file_reports_every_mistake_with_position() {
    let dir = tempfile::tempdir().unwrap();
    let bad = "\
hosts:
  - name: cp-a
    address: 10.1.0.5
    roles: [control-plane, etcd]
  - name: cp-a
    address: 10.1.0.5
    roles: [worker]
  - name: far
    address: 10.9.0.1
    roles: [etcd]
";
    let path = dir.path().join("hosts.yaml");
    std::fs::write(&path, bad).unwrap();
    let (p, _) = profile::parse(PROFILE, "metal.yaml", &[]).unwrap();
    let err = static_hosts::load(&path, &p, &BTreeMap::new())
        .unwrap_err()
        .to_string();
    let file = path.display().to_string();
    for expected in [
        format!("{file}:5:11: hosts[1].name: duplicate node name"),
        format!("{file}:6:14: hosts[1].address: duplicate address"),
        format!("{file}:9:14: hosts[2].address: address outside the profile's network.nodeCIDR"),
        format!("{file}:10:12: hosts[2].roles: etcd is stacked on control-plane nodes"),
        "hosts: an even etcd member count (2)".to_string(),
    ] {
        assert!(err.contains(&expected), "missing {expected:?} in:\n{err}");
    }
}

#[test]
fn up_only_provision_records_the_static_inventory() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("hosts.yaml"), HOSTS).unwrap();
    std::fs::write(dir.path().join("metal.yaml"), PROFILE).unwrap();
    let home = dir.path().join("home");
    let out = Command::new(env!("CARGO_BIN_EXE_k8sforge"))
        .arg("--home")
        .arg(&home)
        .args(["up", "--only", "provision", "--output", "json", "--profile"])
        .arg(dir.path().join("metal.yaml"))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["phases"][0]["phase"], "provision");
    assert_eq!(report["phases"][0]["outcome"], "done");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(home.join("metal/state.json")).unwrap()).unwrap();
    assert_eq!(state["inventory"]["nodes"].as_array().unwrap().len(), 2);
    assert_eq!(state["pod_cidrs"]["gpu-a"], "10.200.1.0/24");
    assert!(state["phases"]["provision"].is_object());
}
