//! A static-provider cluster over local nodes, driven through the real `k8sforge` binary: the
//! profile and hosts file (`write_static`), `up` with its JSON report, `ssh` as the login user
//! (through the bastion when a host has one). Used by tests/cloud_static.rs (cloud-image nodes
//! behind a bastion) and tests/static_ha_local.rs (three control planes, no load balancer).

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::cloud_nodes::{self, LOGIN_USER};
use super::local_cluster::BIN;

/// A static cluster over some of the nodes.
pub struct Static {
    pub home: PathBuf,
    pub dir: PathBuf,
    pub name: String,
    pub mirror: String,
}

impl Static {
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.env("K8SFORGE_HOME", &self.home)
            .arg(args[0])
            .arg("--profile")
            .arg(self.dir.join("profile.yaml"))
            .args(&args[1..]);
        c
    }

    pub fn up(&self) -> (Output, serde_json::Value) {
        let out = self
            .cmd(&[
                "up",
                "--mirror",
                &self.mirror,
                "--trust-mirror-checksums",
                "-o",
                "json",
            ])
            .output()
            .unwrap();
        let report = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        (out, report)
    }

    /// `k8sforge ssh` as the login user (through the bastion when the host has one).
    pub fn ssh(&self, node: &str, script: &str) -> String {
        let out = self.cmd(&["ssh", node, "--", script]).output().unwrap();
        assert!(
            out.status.success(),
            "on {node}: {script}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `k8sforge ssh` output (stdout and stderr), whatever the exit status.
    pub fn ssh_out(&self, node: &str, script: &str) -> String {
        let out = self.cmd(&["ssh", node, "--", script]).output().unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    pub fn known_hosts(&self) -> PathBuf {
        self.home.join(&self.name).join("known_hosts")
    }
}

pub struct Host {
    pub name: String,
    pub ip: Ipv4Addr,
    pub roles: &'static str,
    pub user: &'static str,
    pub bastion: Option<Ipv4Addr>,
}

/// The static profile and hosts file; `version`: the Kubernetes version to pin.
pub fn write_static(
    dir: &Path,
    name: &str,
    cidr: &str,
    key: &Path,
    hosts: &[Host],
    workers: usize,
    version: &str,
) {
    fs::create_dir_all(dir).unwrap();
    let exceptions = cloud_nodes::CONTAINER_KERNEL_EXCEPTIONS.join(", ");
    let control_planes = hosts
        .iter()
        .filter(|h| h.roles.contains("control-plane"))
        .count();
    let profile = format!(
        "name: {name}\n\
         provider:\n  kind: static\n  kernelExceptions: [{exceptions}]\n  containerNodes: true\n  static:\n    inventory: hosts.yaml\n\
         kubernetes:\n  version: {version}\n\
         training:\n  enabled: false\n\
         network:\n  nodeCIDR: {cidr}\n  podCIDR: 10.200.0.0/16\n  podPrefixPerNode: 24\n  serviceCIDR: 10.32.0.0/24\n  dnsServiceIP: 10.32.0.10\n\
         controlPlane:\n  count: {control_planes}\n\
         workers:\n  - name: worker\n    count: {workers}\n"
    );
    fs::write(dir.join("profile.yaml"), profile).unwrap();
    let mut h = String::from("hosts:\n");
    for host in hosts {
        h.push_str(&format!(
            "  - name: {}\n    address: {}\n    roles: [{}]\n    ssh: {{ user: {}, key: {}{} }}\n",
            host.name,
            host.ip,
            host.roles,
            host.user,
            key.display(),
            host.bastion
                .map(|b| format!(", bastion: \"{LOGIN_USER}@{b}:22\""))
                .unwrap_or_default()
        ));
    }
    fs::write(dir.join("hosts.yaml"), h).unwrap();
}
