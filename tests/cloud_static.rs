//! Hosts k8sforge does not own, as a cloud gives them: local nodes in their cloud-image flavour
//! (tests/support/cloud_nodes.rs: login user `ubuntu` with passwordless sudo, root login refused,
//! only the cluster key authorized, and a bastion as the only node this machine can reach) used
//! through the `static` provider with `ssh.bastion`. Shown here, over real sshd/systemd/etcd/
//! containerd on the nodes:
//!
//! - `up` through ONE bastion connection as `ubuntu`, elevating with `sudo -n`: etcd formed, the
//!   runtime installed; on main this failed with `Permission denied` (no sudo) and before that
//!   with "SSH through a bastion … is not supported yet".
//! - the runtime phase's kernel step pushed the sysctl/modules files, applied them and read every
//!   setting back on every node. In a container only the per-namespace `net.*` values can really
//!   be written (`net.ipv4.ip_forward` is, and is checked); the values kubelet's
//!   protectKernelDefaults checks are bound read-only by the test kit as a cloud kernel would
//!   have them, and `br_netfilter` (+ its sysctls) cannot exist in a container: the profile
//!   lists them in `provider.kernelExceptions`.
//! - a second `up` changes nothing; `status` is read-only (no known_hosts written, an unpinned
//!   host is an error); `k8sforge ssh` reaches a node through the bastion.
//! - a node whose sudo needs a password gets one clear error naming node and user.
//! - static `teardown` removes every path and unit k8sforge installed and leaves the hosts'
//!   filesystems as they were before `up` (compared file by file).
//!
//! With Kubernetes binaries (K8SFORGE_TEST_KUBE_BIN, see DEVELOPERS.md) `up` goes on to a
//! working cluster through the bastion as `ubuntu` — nodes Ready, pods on two workers reaching
//! each other, a Service, DNS (support::kube_checks; kubectl from this machine reaches the API
//! port of the control plane, the one port a cloud firewall opens to the admin) — a second `up`
//! changes nothing in any remote phase, and teardown removes the Kubernetes units and state too.
//! Without them (CI) the mirror has no Kubernetes binaries and `up` stops at the control plane,
//! as in tests/up_local.rs. The nodes are containers on this machine's kernel: the profile says
//! so (`provider.containerNodes`, `provider.kernelExceptions`). Own names and a reserved
//! 198.19.X.0/24. Needs root, systemd-container, debootstrap and apt access (test mirror,
//! cached under /var/cache/k8sforge-testkit).

mod support;

use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8sforge_testkit::{kube, mirror};
use support::cloud_nodes::{self, LOGIN_USER};
use support::kube_checks;
use support::local_cluster::phase;
use support::static_cluster::{write_static, Host, Static};

const BIN: &str = env!("CARGO_BIN_EXE_k8sforge");

struct Local {
    home: PathBuf,
    name: String,
    cidr: String,
}

impl Local {
    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.env("K8SFORGE_HOME", &self.home)
            .arg(args[0])
            .args([
                "--profile",
                "local-3",
                "--set",
                &format!("name={}", self.name),
                "--set",
                &format!("network.nodeCIDR={}", self.cidr),
                "--set",
                "workers[0].count=3",
            ])
            .args(&args[1..]);
        c
    }

    fn root_ssh(&self, node: &str, script: &str) -> String {
        let out = self.cmd(&["ssh", node, "--", script]).output().unwrap();
        assert!(
            out.status.success(),
            "as root on {node}: {script}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn key(&self) -> PathBuf {
        self.home.join(&self.name).join("ssh").join("id_ed25519")
    }
}

impl Drop for Local {
    fn drop(&mut self) {
        let _ = self.cmd(&["teardown"]).output();
        let _ = fs::remove_dir_all(&self.home);
    }
}

/// Every file and directory under the places k8sforge installs to, with type and mode: the
/// "as found" picture of a host. Paths other programs change on their own are left out.
const SNAPSHOT: &str = "find /etc /usr/local /opt /var/lib /home -xdev \
    -path /var/lib/systemd -prune -o -path /var/lib/sudo -prune -o -path /var/lib/dhcp -prune -o \
    -path /etc/ld.so.cache -prune -o -printf '%y %m %u %p\\n' 2>/dev/null | sort";

/// Directories whose contents the running components change on their own (etcd's WAL, pods,
/// images, IP allocations): left out when comparing what k8sforge installed between runs.
const RUNTIME_STATE: &[&str] = &[
    "/var/lib/etcd",
    "/var/lib/kubelet",
    "/var/lib/containerd",
    "/var/lib/cni",
    "/var/lib/kube-proxy",
];

#[test]
fn cloud_image_nodes_through_a_bastion_as_ubuntu() {
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test boots systemd-nspawn nodes: run as root"
    );
    let kube = kube_checks::kube_binaries("cloud_image_nodes_through_a_bastion_as_ubuntu");
    let cache = mirror::default_cache_dir();
    let base = mirror::build(&cache).expect("test mirror");
    let m = match &kube {
        Some(k) => kube::cluster_mirror(&base, k, &cache).expect("cluster mirror"),
        None => base,
    };
    let version = kube.as_ref().map_or("v1.34.2", |k| k.version.as_str());
    let (x, _lock) = support::subnet::reserve_subnet();
    let scratch = tempfile::tempdir().unwrap();
    let local = Local {
        home: scratch.path().join("local-home"),
        name: format!("cld-{x}"),
        cidr: format!("198.19.{x}.0/24"),
    };
    let _ = local.cmd(&["teardown"]).output();

    // 1. Boot four nodes; the last worker becomes the bastion.
    let out = local.cmd(&["up", "--only", "provision"]).output().unwrap();
    assert!(
        out.status.success(),
        "local provision: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let st: serde_json::Value =
        serde_json::from_slice(&fs::read(local.home.join(&local.name).join("state.json")).unwrap())
            .unwrap();
    let nodes: Vec<(String, Ipv4Addr)> = st["inventory"]["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| {
            (
                n["name"].as_str().unwrap().to_string(),
                n["internal_ip"]
                    .as_str()
                    .or_else(|| n["internalIp"].as_str())
                    .unwrap()
                    .parse()
                    .unwrap(),
            )
        })
        .collect();
    assert_eq!(nodes.len(), 4, "{st:#}");
    let (bastion_name, bastion_ip) = nodes[3].clone();
    let cluster: Vec<(String, Ipv4Addr)> = nodes[..3].to_vec();

    // 2. The cloud-image flavour.
    let pub_key = fs::read_to_string(local.key().with_extension("pub")).unwrap();
    let gateway = Ipv4Addr::from(u32::from(bastion_ip) & 0xffff_ff00 | 1);
    for (n, _) in &nodes {
        local.root_ssh(n, &cloud_nodes::cloudify_script(LOGIN_USER, &pub_key, true));
        if *n != bastion_name {
            local.root_ssh(n, cloud_nodes::KERNEL_STAND_IN);
            local.root_ssh(n, &cloud_nodes::resolver_stand_in(gateway));
        }
    }
    // One more login on the bastion whose sudo asks for a password.
    local.root_ssh(
        &bastion_name,
        &cloud_nodes::cloudify_script("needpw", &pub_key, false),
    );
    // The hosts as found (before k8sforge touches them), to compare after teardown.
    let found: Vec<String> = cluster
        .iter()
        .map(|(n, _)| local.root_ssh(n, SNAPSHOT))
        .collect();
    for (n, _) in &nodes {
        local.root_ssh(n, cloud_nodes::REVOKE_ROOT);
    }
    let ips: Vec<Ipv4Addr> = cluster.iter().map(|(_, ip)| *ip).collect();
    // With a control plane to reach, its API port stays open to this machine (the admin), as a
    // cloud firewall opens it to the admin ranges; SSH still only reaches the bastion.
    let api_open: Vec<(Ipv4Addr, u16)> = kube.iter().map(|_| (ips[0], 6443)).collect();
    let _isolation = cloud_nodes::Isolation::new(&ips, &api_open);
    for ip in &ips {
        assert!(
            !cloud_nodes::reachable(*ip, 22),
            "{ip}:22 must be unreachable from this machine"
        );
    }
    assert!(cloud_nodes::reachable(bastion_ip, 22), "bastion reachable");
    // Root login is refused by sshd (the cluster key is authorized for ubuntu only).
    let root_try = Command::new("ssh")
        .args(["-i"])
        .arg(local.key())
        .args([
            "-o",
            "BatchMode=yes",
            "-o",
            "StrictHostKeyChecking=no",
            "-o",
            "UserKnownHostsFile=/dev/null",
            "-o",
            "LogLevel=ERROR",
        ])
        .arg(format!("root@{bastion_ip}"))
        .arg("true")
        .output()
        .unwrap();
    assert!(!root_try.status.success(), "root login must be refused");

    // Snapshots of the hosts as found, to compare after teardown.
    let snapshot = |st: &Static| -> Vec<String> {
        cluster
            .iter()
            .map(|(n, _)| st.ssh(n, &format!("sudo -n sh -c \"{SNAPSHOT}\"")))
            .collect()
    };
    // What k8sforge installed, without what the running components write on their own.
    let installed = |st: &Static| -> Vec<String> {
        snapshot(st)
            .into_iter()
            .map(|snap| {
                snap.lines()
                    .filter(|l| !RUNTIME_STATE.iter().any(|d| l.contains(&format!(" {d}/"))))
                    .map(|l| format!("{l}\n"))
                    .collect()
            })
            .collect()
    };

    // 3. The static cluster through the bastion as ubuntu.
    let st = Static {
        home: scratch.path().join("static-home"),
        dir: scratch.path().join("static"),
        name: format!("cst-{x}"),
        mirror: m.root.display().to_string(),
    };
    let hosts: Vec<Host> = cluster
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
            user: LOGIN_USER,
            bastion: Some(bastion_ip),
        })
        .collect();
    write_static(
        &st.dir,
        &st.name,
        &local.cidr,
        &local.key(),
        &hosts,
        2,
        version,
    );
    // `plan` pins nothing and connects nowhere; it also gives us the bundle to check against.
    let bundle_dir = scratch.path().join("bundle");
    let out = st
        .cmd(&["plan", "--out", bundle_dir.to_str().unwrap()])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "plan: {}",
        String::from_utf8_lossy(&out.stderr)
    );

    let (out, report) = st.up();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    for p in ["provision", "pki", "etcd", "runtime"] {
        assert_eq!(
            phase(&report, p)["outcome"],
            "done",
            "{p}: {stderr}\n{report:#}"
        );
    }
    // Host keys: pinned on first contact, each with a line saying so — the bastion's too.
    assert!(
        stderr.contains("on first contact") && stderr.contains("bastion"),
        "{stderr}"
    );
    let kh = fs::read_to_string(st.known_hosts()).unwrap();
    for ip in ips.iter().chain([&bastion_ip]) {
        assert!(kh.contains(&format!("{ip}")), "{ip} pinned in\n{kh}");
    }
    if let Some(k) = &kube {
        // 3b. A working cluster, through the bastion as ubuntu.
        for p in ["control-plane", "workers", "network", "addons"] {
            assert_eq!(
                phase(&report, p)["outcome"],
                "done",
                "{p}: {stderr}\n{report:#}"
            );
        }
        assert_eq!(out.status.code(), Some(0), "{stderr}");
        let kubectl = kube_checks::kubectl(
            k,
            st.home.join(&st.name).join("kubeconfigs/admin.kubeconfig"),
        );
        let names: Vec<&str> = cluster.iter().map(|(n, _)| n.as_str()).collect();
        kube_checks::wait_nodes_ready(&kubectl, &names, std::time::Duration::from_secs(120));
        let archive = scratch.path().join("busybox.tar");
        kube_checks::busybox_archive(&m, &archive);
        for (n, _) in &cluster[1..] {
            let ok = st
                .cmd(&["ssh", n, "--", kube_checks::IMPORT_FROM_STDIN])
                .stdin(fs::File::open(&archive).unwrap())
                .status()
                .unwrap();
            assert!(ok.success(), "import busybox on {n} through the bastion");
        }
        kube_checks::workload_across(&kubectl, &cluster[1].0, &cluster[2].0, k.coredns.is_some());
    } else {
        // No control-plane binaries in this mirror: the run stops there, naming why.
        assert_ne!(phase(&report, "control-plane")["outcome"], "done");
    }
    // The installed picture, for the second up to leave exactly as it is.
    let snap_before = installed(&st);

    // 4. Kernel settings on every node, read back by the phase and checked here.
    let detail = phase(&report, "runtime")["detail"]
        .as_str()
        .unwrap_or("")
        .to_string();
    assert!(
        detail.contains("kernel settings read back on 3 nodes"),
        "{detail}"
    );
    for (n, _) in &cluster {
        let got = st.ssh(
            n,
            "sudo -n sysctl -n net.ipv4.ip_forward; sudo -n sysctl -n vm.overcommit_memory; \
             stat -c '%U:%G %a' /etc/sysctl.d/90-k8sforge.conf /etc/modules-load.d/k8sforge.conf; \
             cat /etc/modules-load.d/k8sforge.conf",
        );
        assert_eq!(
            got.lines().collect::<Vec<_>>(),
            vec!["1", "1", "root:root 644", "root:root 644", "# Rendered by k8sforge: overlayfs for containerd, br_netfilter so bridged pod traffic meets iptables.", "overlay", "br_netfilter"],
            "{n}"
        );
        // etcd and containerd run, as root, installed by ubuntu through sudo.
        let units = st.ssh(
            n,
            "systemctl is-active containerd.service; ls -ld /etc/cni/net.d | cut -d' ' -f3",
        );
        assert!(units.starts_with("active\nroot"), "{n}: {units}");
        // The staging directory is the login user's and holds nothing after a run.
        let staged = st.ssh(n, "ls -A ~/.k8sforge-staging 2>/dev/null | wc -l");
        assert_eq!(staged.trim(), "0", "{n}: staged files left");
    }
    let etcd = st.ssh(&cluster[0].0, "sudo -n systemctl is-active etcd.service");
    assert_eq!(etcd.trim(), "active");

    // 5. A second up changes nothing; status is read-only.
    let (out, report2) = st.up();
    let stderr2 = String::from_utf8_lossy(&out.stderr);
    let remote: &[&str] = if kube.is_some() {
        &["etcd", "runtime", "control-plane", "workers", "network"]
    } else {
        &["etcd", "runtime"]
    };
    for p in remote {
        let ph = phase(&report2, p);
        assert!(
            ph["outcome"] == "unchanged"
                || (ph["outcome"] == "done"
                    && ph["files_changed"] == 0
                    && ph["units_restarted"] == 0),
            "{p} changed on the second up: {ph:#}\n{stderr2}"
        );
    }
    assert_eq!(
        installed(&st),
        snap_before,
        "second up changed files on the nodes"
    );
    let kh_before = fs::read(st.known_hosts()).unwrap();
    let status = st.cmd(&["status", "-o", "json"]).output().unwrap();
    let sj: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap_or_default();
    assert!(
        sj["nodes"]
            .as_array()
            .map(|a| a.iter().all(|n| n["reachable"] == true))
            == Some(true),
        "status through the bastion: {sj:#}\n{}",
        String::from_utf8_lossy(&status.stderr)
    );
    assert_eq!(
        fs::read(st.known_hosts()).unwrap(),
        kh_before,
        "status wrote known_hosts"
    );
    // With nothing pinned, status refuses to trust and still writes nothing.
    fs::rename(st.known_hosts(), st.known_hosts().with_extension("saved")).unwrap();
    let status = st.cmd(&["status", "-o", "json"]).output().unwrap();
    let text = String::from_utf8_lossy(&status.stdout).into_owned()
        + &String::from_utf8_lossy(&status.stderr);
    assert!(
        !status.status.success(),
        "status must fail without pins: {text}"
    );
    assert!(text.contains("no SSH host key is pinned"), "{text}");
    assert!(!st.known_hosts().exists(), "status created known_hosts");
    fs::rename(st.known_hosts().with_extension("saved"), st.known_hosts()).unwrap();

    // 6. sudo that needs a password: one clear error naming node and user.
    let pw = Static {
        home: scratch.path().join("pw-home"),
        dir: scratch.path().join("pw"),
        name: format!("cpw-{x}"),
        mirror: m.root.display().to_string(),
    };
    write_static(
        &pw.dir,
        &pw.name,
        &local.cidr,
        &local.key(),
        &[Host {
            name: bastion_name.clone(),
            ip: bastion_ip,
            roles: "control-plane, etcd",
            user: "needpw",
            bastion: None,
        }],
        1,
        version,
    );
    let (out, report) = pw.up();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    let failed = format!("{report}{stderr}");
    assert!(
        failed.contains(&format!(
            "node {bastion_name}: user needpw cannot run commands as root without a password"
        )),
        "{failed}"
    );

    // 7. Static teardown: dry run lists, the real one removes, nothing k8sforge put is left.
    let dry = st.cmd(&["teardown", "--dry-run"]).output().unwrap();
    let dry_text = String::from_utf8_lossy(&dry.stderr);
    assert!(dry.status.success(), "{dry_text}");
    assert!(
        dry_text.contains("would remove unit etcd.service")
            && dry_text.contains("would remove file /usr/local/bin/containerd"),
        "{dry_text}"
    );
    assert_eq!(installed(&st), snap_before, "dry run changed something");
    let td = st.cmd(&["teardown"]).output().unwrap();
    assert!(
        td.status.success(),
        "teardown: {}",
        String::from_utf8_lossy(&td.stderr)
    );
    // Teardown forgets the inventory; the static provision reads the hosts file again (it
    // touches no host), so `k8sforge ssh` can look at what is left.
    let prov = st.cmd(&["up", "--only", "provision"]).output().unwrap();
    assert!(
        prov.status.success(),
        "provision after teardown: {}",
        String::from_utf8_lossy(&prov.stderr)
    );
    let bundle_paths: Vec<String> = walk(&bundle_dir)
        .into_iter()
        .filter_map(|p| {
            let rel = p
                .strip_prefix(&bundle_dir)
                .ok()?
                .to_string_lossy()
                .into_owned();
            // <bundle>/<node>/<path on the node>
            let (node, path) = rel.split_once('/')?;
            Some(format!("{node} /{path}"))
        })
        .collect();
    assert!(bundle_paths.len() > 20, "bundle listing: {bundle_paths:?}");
    let after = snapshot(&st);
    for (i, (n, _)) in cluster.iter().enumerate() {
        for bp in bundle_paths
            .iter()
            .filter_map(|l| l.strip_prefix(&format!("{n} ")))
        {
            assert!(
                !after[i].lines().any(|l| l.ends_with(&format!(" {bp}"))),
                "{n}: {bp} left after teardown"
            );
        }
        for p in [
            "/usr/local/bin/containerd",
            "/opt/cni/bin/bridge",
            "/var/lib/etcd",
            "/var/lib/k8sforge",
            "/etc/cni/net.d",
            "/usr/local/bin/kubelet",
            "/usr/local/bin/kube-apiserver",
            "/var/lib/kubelet",
            "/etc/kubernetes",
        ] {
            assert!(
                !after[i].lines().any(|l| l.ends_with(&format!(" {p}"))),
                "{n}: {p} left after teardown"
            );
        }
        // Hosts as they were found, file by file (type, mode, owner, path).
        let was: std::collections::BTreeSet<&str> = found[i].lines().collect();
        let is: std::collections::BTreeSet<&str> = after[i].lines().collect();
        let added: Vec<&&str> = is.difference(&was).collect();
        let removed: Vec<&&str> = was.difference(&is).collect();
        assert!(
            added.is_empty() && removed.is_empty(),
            "{n} not left as found:\n  added: {added:?}\n  removed: {removed:?}"
        );
        let units = st.ssh(n, "systemctl is-active etcd.service containerd.service kubelet.service kube-apiserver.service 2>/dev/null; pgrep -f '[c]ontainerd-shim' >/dev/null && echo shim; ip link show cni0 >/dev/null 2>&1 && echo cni0; true");
        assert!(
            !units.contains("\nactive")
                && !units.starts_with("active")
                && !units.contains("cni0")
                && !units.contains("shim"),
            "{n}: {units}"
        );
    }
    // Re-run after teardown: a teardown is repeatable and the next up starts over.
    let td = st.cmd(&["teardown"]).output().unwrap();
    assert!(
        td.status.success(),
        "second teardown: {}",
        String::from_utf8_lossy(&td.stderr)
    );
}

fn walk(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = fs::read_dir(&d) else { continue };
        for e in rd.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out
}
