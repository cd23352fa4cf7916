//! A cloud-image flavour of the local test nodes: after the local provider boots them (real
//! systemd, sshd, own network namespace), each is turned into what an Ubuntu cloud VM looks like
//! to k8sforge — login user `ubuntu` with passwordless sudo, only the cluster key authorized for
//! it, root login refused by sshd — and the host is cut off from every node but the bastion
//! (host-originated connections to the others are rejected by an OUTPUT rule on this machine;
//! bridged traffic between the nodes does not pass the host's iptables, so the bastion, which
//! shares their bridge, reaches them all).
//!
//! What a container cannot be: its kernel is this machine's. The kernel values kubelet's
//! `protectKernelDefaults` checks are read-only in the node, so they are bound read-only over
//! `/proc/sys` with the values a cloud kernel has (`kernel_stand_in`); `br_netfilter` cannot be
//! loaded from inside a container, so the tests list it (and its sysctls) as the static hosts'
//! `kernelExceptions`.

#![allow(dead_code)]

use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::process::Command;
use std::time::Duration;

pub const LOGIN_USER: &str = "ubuntu";

/// The root script that makes a booted local node look like a cloud VM. `pub_key` is the only key
/// authorized (for `user`); `nopasswd` false makes sudo ask for a password (never given).
pub fn cloudify_script(user: &str, pub_key: &str, nopasswd: bool) -> String {
    let sudo = if nopasswd {
        format!("{user} ALL=(ALL) NOPASSWD:ALL")
    } else {
        format!("{user} ALL=(ALL) ALL")
    };
    format!(
        "set -eu\n\
         id {user} >/dev/null 2>&1 || useradd -m -s /bin/bash {user}\n\
         install -d -m 0700 -o {user} -g {user} /home/{user}/.ssh\n\
         printf '%s\\n' '{key}' > /home/{user}/.ssh/authorized_keys\n\
         chown {user}:{user} /home/{user}/.ssh/authorized_keys\n\
         chmod 0600 /home/{user}/.ssh/authorized_keys\n\
         printf '%s\\n' '{sudo}' > /etc/sudoers.d/90-{user}\n\
         chmod 0440 /etc/sudoers.d/90-{user}\n\
         grep -q '^PermitRootLogin no' /etc/ssh/sshd_config || sed -i '1i PermitRootLogin no' /etc/ssh/sshd_config\n",
        key = pub_key.trim(),
    )
}

/// Run last (it removes the key the local provider authorized for root).
pub const REVOKE_ROOT: &str =
    "rm -f /root/.ssh/authorized_keys; systemctl restart ssh.service || systemctl restart sshd.service";

/// The kernel values kubelet insists on, bound read-only over the container's `/proc/sys` where
/// this machine's differ (the local provider's node-prep does the same for local clusters).
pub const KERNEL_STAND_IN: &str = "set -eu\nstate=/run/cloud-kernel\nmkdir -p $state\n\
    fix() { f=/proc/sys/$1; [ -e $f ] || return 0; [ \"$(cat $f)\" = \"$2\" ] && return 0; \
    c=$state/$(echo $1 | tr / _); echo $2 > $c; mount --bind $c $f; mount -o remount,bind,ro $f; }\n\
    fix vm/overcommit_memory 1\nfix vm/panic_on_oom 0\nfix kernel/panic 10\nfix kernel/panic_on_oops 1\n\
    fix kernel/keys/root_maxkeys 1000000\nfix kernel/keys/root_maxbytes 25000000\n\
    [ -e /dev/kmsg ] || ln -s /dev/console /dev/kmsg\n";

/// Settings a container cannot have, for the test profiles' `provider.kernelExceptions`:
/// it cannot load modules, and the swap it sees is its host's (it cannot turn that off).
pub const CONTAINER_KERNEL_EXCEPTIONS: &[&str] = &[
    "swap",
    "br_netfilter",
    "net.bridge.bridge-nf-call-iptables",
    "net.bridge.bridge-nf-call-ip6tables",
];

/// Host-originated connections to `nodes` rejected while this lives (`allow_tcp`: ports still
/// reachable, e.g. the API port standing in for a load balancer).
pub struct Isolation {
    rules: Vec<Vec<String>>,
}

impl Isolation {
    pub fn new(nodes: &[Ipv4Addr], allow_tcp: &[(Ipv4Addr, u16)]) -> Isolation {
        let mut rules = Vec::new();
        for (ip, port) in allow_tcp {
            rules.push(vec![
                "OUTPUT".to_string(),
                "-d".into(),
                ip.to_string(),
                "-p".into(),
                "tcp".into(),
                "--dport".into(),
                port.to_string(),
                "-j".into(),
                "ACCEPT".into(),
            ]);
        }
        for ip in nodes {
            rules.push(vec![
                "OUTPUT".to_string(),
                "-d".into(),
                ip.to_string(),
                "-m".into(),
                "conntrack".into(),
                "--ctstate".into(),
                "NEW".into(),
                "-j".into(),
                "REJECT".into(),
            ]);
        }
        // Appended in order (ACCEPTs first), so the allowed ports win.
        let iso = Isolation { rules };
        for r in &iso.rules {
            let st = Command::new("iptables")
                .arg("-w")
                .arg("-A")
                .args(r)
                .status()
                .expect("iptables runs");
            assert!(st.success(), "iptables -A {r:?} failed");
        }
        iso
    }
}

impl Drop for Isolation {
    fn drop(&mut self) {
        for r in &self.rules {
            let _ = Command::new("iptables")
                .arg("-w")
                .arg("-D")
                .args(r)
                .status();
        }
    }
}

/// Whether this machine can open a TCP connection to `ip:port` (within a second).
pub fn reachable(ip: Ipv4Addr, port: u16) -> bool {
    TcpStream::connect_timeout(&SocketAddr::new(ip.into(), port), Duration::from_secs(1)).is_ok()
}

/// A cloud VM has a resolver (the VPC's); the local nodes have none, and CoreDNS refuses to start
/// forwarding to an empty list. So the stand-ins name `nameserver` (the host's bridge address:
/// inside the test range, nothing answers there, cluster names never leave CoreDNS) in
/// `/etc/resolv.conf` and — Ubuntu cloud images run systemd-resolved, whose upstream list
/// k8sforge hands kubelet on AWS and GCP — in `/run/systemd/resolve/resolv.conf`.
pub fn resolver_stand_in(nameserver: Ipv4Addr) -> String {
    format!(
        "set -eu\nmkdir -p /run/systemd/resolve\n\
         rm -f /etc/resolv.conf\nprintf 'nameserver {nameserver}\\n' > /etc/resolv.conf\n\
         cp /etc/resolv.conf /run/systemd/resolve/resolv.conf\n"
    )
}
