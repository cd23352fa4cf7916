//! Local nodes standing in for cloud instances (tests/aws_e2e.rs, tests/gcp_e2e.rs): one
//! systemd-nspawn node (real systemd, sshd) for every instance the cloud peer reports, booted at
//! the instance's private address, in the cloud-image flavour of `cloud_nodes` (the launch's key
//! authorized for `ubuntu` with passwordless sudo, root login refused); a TCP stand-in for the
//! API load balancer; and the `strace -e connect` trace that proves k8sforge never dialled an
//! address the peer invented.
//!
//! The local provider boots the nodes from an inventory whose API endpoint is NOT the host's
//! bridge address: otherwise it would start its own host-side balancer there (what it does for a
//! multi-control-plane local cluster) and the harness's stand-in would find the port taken.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use ipnet::Ipv4Net;
use k8sforge::inventory::{Inventory, Role};
use k8sforge::provider::local::{LocalConfig, LocalProvider};
use k8sforge::provider::ProvisionContext;

use super::cloud_nodes::{self, LOGIN_USER};

pub const BIN: &str = env!("CARGO_BIN_EXE_k8sforge");

/// The booted stand-ins; dropping this stops them.
pub struct StandIns {
    hosts: LocalProvider,
    /// The cluster's private key (its public half is the launch's key pair).
    pub key: PathBuf,
    /// Name and private address of every stand-in, in inventory order.
    pub nodes: Vec<(String, Ipv4Addr)>,
}

impl StandIns {
    /// Boot one node per instance of `inv` at its private address (`work` holds the local
    /// provider's files), authorize `pub_key` for `ubuntu` with passwordless sudo, give the
    /// kernel values a cloud kernel has, and refuse root. Asserts the flavour took.
    pub fn boot(work: &Path, inv: &Inventory, pub_key: &str, key: &Path) -> StandIns {
        let cidr: Ipv4Net = Ipv4Net::new(
            inv.nodes[0].internal_ip,
            24, // the test profiles' node ranges are /24s (support::subnet)
        )
        .unwrap()
        .trunc();
        let hosts_name = format!("{}-hosts", inv.cluster);
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
        planned.cluster = hosts_name;
        // Not the bridge address: the harness runs the balancer stand-in itself (see above).
        if let Some(cp) = inv.with_role(Role::ControlPlane).next() {
            planned.api.host = cp.internal_ip.to_string();
        }
        let dir = work.join("stand-ins");
        std::fs::create_dir_all(&dir).unwrap();
        let _ = hosts.teardown_all(false);
        let ctx = ProvisionContext::new(&local_profile, &planned, dir, pub_key.trim().to_string());
        hosts
            .provision_nodes(&ctx)
            .expect("boot the stand-in instances");
        let s = StandIns {
            hosts,
            key: key.to_path_buf(),
            nodes: inv
                .nodes
                .iter()
                .map(|n| (n.name.clone(), n.internal_ip))
                .collect(),
        };
        for (name, ip) in &s.nodes {
            for script in [
                cloud_nodes::cloudify_script(LOGIN_USER, pub_key, true),
                cloud_nodes::KERNEL_STAND_IN.to_string(),
                cloud_nodes::resolver_stand_in(Ipv4Addr::from(u32::from(cidr.network()) + 1)),
                cloud_nodes::REVOKE_ROOT.to_string(),
            ] {
                let out = openssh(key, "root", *ip, &script);
                assert!(
                    out.status.success(),
                    "{name} as root: {script}\n{}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
            let root = openssh(key, "root", *ip, "true");
            assert!(!root.status.success(), "{name}: root login must be refused");
            let user = openssh(key, LOGIN_USER, *ip, "sudo -n true");
            assert!(
                user.status.success(),
                "{name}: {LOGIN_USER} with passwordless sudo: {}",
                String::from_utf8_lossy(&user.stderr)
            );
        }
        s
    }

    /// The VPC's MTU on the stand-ins' network (AWS: 9001-byte jumbo frames, which k8sforge's
    /// VXLAN pod MTU relies on): the host bridge holding `host` and its ports, then every node's
    /// interface.
    pub fn set_network_mtu(&self, host: Ipv4Addr, mtu: u32) {
        let sh = |script: &str| {
            let out = Command::new("sh").arg("-c").arg(script).output().unwrap();
            assert!(
                out.status.success(),
                "{script}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
            String::from_utf8_lossy(&out.stdout).into_owned()
        };
        let bridge = sh(&format!(
            "ip -o -4 addr show to {host}/32 | awk '{{print $2; exit}}'"
        ));
        let bridge = bridge.trim();
        assert!(!bridge.is_empty(), "no host interface has {host}");
        sh(&format!(
            "for p in $(ip -o link show master {bridge} | awk -F': ' '{{print $2}}' | cut -d@ -f1); do \
             ip link set \"$p\" mtu {mtu}; done; ip link set {bridge} mtu {mtu}"
        ));
        for (n, ip) in &self.nodes {
            self.ssh_ok(
                n,
                &format!(
                    "dev=$(ip -o -4 addr show to {ip}/32 | awk '{{print $2; exit}}'); sudo -n ip link set \"$dev\" mtu {mtu}"
                ),
            );
        }
    }

    /// Run `script` as `ubuntu` on stand-in `node` (the harness's own access, plain OpenSSH).
    pub fn ssh(&self, node: &str, script: &str) -> Output {
        let ip = self
            .nodes
            .iter()
            .find(|(n, _)| n == node)
            .unwrap_or_else(|| panic!("no stand-in {node}"))
            .1;
        openssh(&self.key, LOGIN_USER, ip, script)
    }

    pub fn ssh_ok(&self, node: &str, script: &str) -> String {
        let out = self.ssh(node, script);
        assert!(
            out.status.success(),
            "on {node}: {script}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `script` as `ubuntu` on `node` with `file` as its stdin, which must succeed.
    pub fn ssh_stdin_ok(&self, node: &str, script: &str, file: &Path) {
        let ip = self
            .nodes
            .iter()
            .find(|(n, _)| n == node)
            .unwrap_or_else(|| panic!("no stand-in {node}"))
            .1;
        let mut c = openssh_cmd(&self.key, LOGIN_USER, ip, script);
        c.stdin(std::fs::File::open(file).unwrap());
        let out = c.output().unwrap();
        assert!(
            out.status.success(),
            "on {node}: {script} < {}\n{}",
            file.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Each stand-in's SSH host public keys, as `(node, ["ssh-ed25519 AAAA…", …])`.
    pub fn host_keys(&self) -> Vec<(String, Vec<String>)> {
        self.nodes
            .iter()
            .map(|(n, _)| {
                let text = self.ssh_ok(n, "cat /etc/ssh/ssh_host_*_key.pub");
                let keys = text
                    .lines()
                    .filter(|l| !l.trim().is_empty())
                    .map(|l| l.split_whitespace().take(2).collect::<Vec<_>>().join(" "))
                    .collect();
                (n.clone(), keys)
            })
            .collect()
    }
}

impl Drop for StandIns {
    fn drop(&mut self) {
        if std::env::var_os("K8SFORGE_TEST_KEEP").is_some() {
            eprintln!("K8SFORGE_TEST_KEEP is set: stand-in nodes left running");
            return;
        }
        let _ = self.hosts.teardown_all(false);
    }
}

/// The load balancer's stand-in: a TCP balancer at `listen` (the address the provider recorded
/// for the API) to every control plane's apiserver; it lives as long as the test process.
pub fn lb_stand_in(listen: SocketAddr, inv: &Inventory, port: u16) {
    let backends: Vec<SocketAddr> = inv
        .with_role(Role::ControlPlane)
        .map(|n| SocketAddr::new(IpAddr::V4(n.internal_ip), port))
        .collect();
    // Bind here first so a taken port fails the test now, with its reason.
    drop(
        std::net::TcpListener::bind(listen).unwrap_or_else(|e| {
            panic!("the load balancer stand-in cannot listen on {listen}: {e}")
        }),
    );
    std::thread::spawn(move || k8sforge::provider::local::api_proxy::run(listen, backends));
}

/// OpenSSH as `user` with `key` (the harness's own access; k8sforge is not involved).
pub fn openssh(key: &Path, user: &str, ip: Ipv4Addr, script: &str) -> Output {
    openssh_cmd(key, user, ip, script)
        .output()
        .expect("ssh (openssh-client)")
}

fn openssh_cmd(key: &Path, user: &str, ip: Ipv4Addr, script: &str) -> Command {
    let mut c = Command::new("ssh");
    c.arg("-i")
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
        .arg(script);
    c
}

/// Every connect(2) of every traced `k8sforge` run, one trace file per run under one stem.
pub struct ConnectTrace {
    stem: PathBuf,
}

impl ConnectTrace {
    pub fn new(stem: PathBuf) -> ConnectTrace {
        ConnectTrace { stem }
    }

    /// `k8sforge` under `strace -f -e connect` (the caller adds arguments and environment).
    pub fn k8sforge(&self) -> Command {
        let mut c = Command::new("strace");
        c.args(["-f", "-qq", "-e", "trace=connect", "-o"])
            .arg(self.stem.with_extension(format!("{}", unique())))
            .arg(BIN);
        c
    }

    /// Every IPv4/IPv6 address any traced run dialled.
    pub fn dialled(&self) -> Vec<IpAddr> {
        let dir = self.stem.parent().unwrap();
        let stem = self.stem.file_name().unwrap().to_string_lossy().to_string();
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

    /// The traced runs reached `node` and nothing outside loopback and 198.18.0.0/15.
    pub fn assert_only_test_ranges(&self, node: Ipv4Addr) {
        let dialled = self.dialled();
        assert!(
            dialled.contains(&IpAddr::V4(node)),
            "the trace saw no connection to the nodes at all: {dialled:?}"
        );
        let bad: Vec<&IpAddr> = dialled.iter().filter(|a| !allowed(a)).collect();
        assert!(
            bad.is_empty(),
            "k8sforge dialled outside loopback and 198.18.0.0/15: {bad:?}"
        );
    }
}

fn unique() -> u64 {
    use std::time::{SystemTime, UNIX_EPOCH};
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0)
}

/// Loopback, the unspecified address (a socket's own connect(AF_UNSPEC)) and 198.18.0.0/15.
pub fn allowed(a: &IpAddr) -> bool {
    let test: Ipv4Net = "198.18.0.0/15".parse().unwrap();
    match a {
        IpAddr::V4(v) => v.is_loopback() || test.contains(v) || v.is_unspecified(),
        IpAddr::V6(v) => v.is_loopback() || v.is_unspecified(),
    }
}

/// What an operator does with `ssh-keygen -R ADDR` after a refused host key: drop every
/// known_hosts line of `addr`.
pub fn forget_host_key(known_hosts: &Path, addr: &str) {
    let kh = std::fs::read_to_string(known_hosts).unwrap();
    let kept: String = kh
        .lines()
        .filter(|l| !l.starts_with(&format!("{addr} ")))
        .map(|l| format!("{l}\n"))
        .collect();
    std::fs::write(known_hosts, kept).unwrap();
}
