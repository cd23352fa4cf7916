//! The local provider against real systemd-nspawn nodes (needs root, systemd-container and
//! debootstrap; the node image is built once, about 1.5 min, and cached under
//! /var/lib/k8sforge/images). Each test owns a cluster with its own name and node subnet, so
//! tests can run in parallel and beside other users of the machine's 198.18.0.0/24 testbed.

mod support;

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use k8sforge::provider::local::{cgroups, network};

const BIN: &str = env!("CARGO_BIN_EXE_k8sforge");
const ROOT: &str = "/var/lib/k8sforge";

fn require_root() {
    // SAFETY: geteuid cannot fail.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "tests/local_provider.rs creates real nodes and must run as root \
         (with `apt-get install -y systemd-container debootstrap openssh-client iproute2`)"
    );
}

/// One test cluster: its own state home, name and node subnet; torn down on drop.
struct Cluster {
    home: tempfile::TempDir,
    name: String,
    cidr: String,
    /// Holds the subnet reservation for the test's lifetime.
    _subnet_lock: fs::File,
}

impl Cluster {
    fn new(kind: &str) -> Cluster {
        require_root();
        let (x, lock) = support::subnet::reserve_subnet();
        Cluster {
            home: tempfile::tempdir().unwrap(),
            // Unique per subnet, so concurrent runs never share a cluster either.
            name: format!("lpt-{kind}-{x}"),
            cidr: format!("198.19.{x}.0/24"),
            _subnet_lock: lock,
        }
    }

    fn profile_args(&self) -> Vec<String> {
        vec![
            "--profile".into(),
            "local-3".into(),
            "--set".into(),
            format!("name={}", self.name),
            "--set".into(),
            format!("network.nodeCIDR={}", self.cidr),
        ]
    }

    fn run(&self, verb: &[&str], extra: &[&str]) -> Output {
        let mut c = Command::new(BIN);
        c.args(verb)
            .args(self.profile_args())
            .args(extra)
            .env("K8SFORGE_HOME", self.home.path());
        c.output().unwrap()
    }

    /// `up --only provision`: (the phase's detail line, the inventory recorded in state).
    fn provision(&self) -> (String, serde_json::Value) {
        self.provision_with(&[])
    }

    fn provision_with(&self, extra: &[&str]) -> (String, serde_json::Value) {
        let out = self.run(&["up", "--only", "provision", "--output", "json"], extra);
        assert!(
            out.status.success(),
            "provision failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        let phase = &report["phases"][0];
        assert_eq!(phase["phase"], "provision");
        assert_eq!(phase["outcome"], "done", "{report}");
        let state: serde_json::Value = serde_json::from_slice(
            &fs::read(self.home.path().join(&self.name).join("state.json")).unwrap(),
        )
        .unwrap();
        (
            phase["detail"].as_str().unwrap().to_string(),
            state["inventory"].clone(),
        )
    }

    /// `k8sforge ssh NODE cmd`: (exit code, stdout, stderr).
    fn ssh(&self, node: &str, cmd: &str) -> (i32, String, String) {
        let mut c = Command::new(BIN);
        c.arg("ssh")
            .args(self.profile_args())
            .arg(node)
            .arg(cmd)
            .env("K8SFORGE_HOME", self.home.path())
            .stdin(std::process::Stdio::null());
        let out = c.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        )
    }

    fn ssh_ok(&self, node: &str, cmd: &str) -> String {
        let (code, out, err) = self.ssh(node, cmd);
        assert_eq!(code, 0, "ssh {node} {cmd:?} failed: {err}");
        out
    }

    fn teardown(&self) {
        let out = self.run(&["teardown"], &[]);
        assert!(
            out.status.success(),
            "teardown failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn runtime_dir(&self) -> PathBuf {
        Path::new(ROOT).join("clusters").join(&self.name)
    }

    fn node_dir(&self, node: &str) -> PathBuf {
        self.runtime_dir().join("nodes").join(node)
    }

    fn pid(&self, node: &str, file: &str) -> i32 {
        fs::read_to_string(self.node_dir(node).join(file))
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn known_hosts(&self) -> String {
        fs::read_to_string(self.home.path().join(&self.name).join("known_hosts")).unwrap()
    }

    /// Everything of this cluster still on the host, checked independently of the provider's
    /// own leftover check.
    fn leftovers(&self) -> Vec<String> {
        let mut left = Vec::new();
        let subtree = cgroups::subtree_name(&self.name);
        for d in find_dirs(Path::new("/sys/fs/cgroup"), &subtree, 7) {
            let procs = procs_below(&d);
            left.push(format!("cgroup {} with processes {procs:?}", d.display()));
        }
        let rt = self.runtime_dir();
        for p in all_pids() {
            let cl = cmdline(p);
            if cl.contains(rt.to_str().unwrap()) {
                left.push(format!("process {p}: {cl}"));
            }
        }
        let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap();
        for l in mountinfo.lines() {
            if l.contains(rt.to_str().unwrap()) {
                left.push(format!("mount {l}"));
            }
        }
        if let Ok(rd) = fs::read_dir("/run/netns") {
            for e in rd.flatten() {
                let n = e.file_name().to_string_lossy().into_owned();
                if n.starts_with(&network::netns_prefix(&self.name)) {
                    left.push(format!("netns {n}"));
                }
            }
        }
        for e in fs::read_dir("/sys/class/net").unwrap().flatten() {
            let n = e.file_name().to_string_lossy().into_owned();
            if n.starts_with(&network::veth_prefix(&self.name)) {
                left.push(format!("link {n}"));
            }
        }
        if Path::new("/sys/class/net")
            .join(network::default_bridge(&self.name))
            .exists()
        {
            left.push("bridge".into());
        }
        if rt.exists() {
            left.push(format!("directory {}", rt.display()));
        }
        left
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        // Never leave nodes behind, even when an assertion failed.
        let _ = self.run(&["teardown"], &[]);
    }
}

fn find_dirs(dir: &Path, name: &str, depth: usize) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let Ok(rd) = fs::read_dir(dir) else {
        return out;
    };
    for e in rd.flatten() {
        if !e.file_type().map(|t| t.is_dir()).unwrap_or(false) {
            continue;
        }
        if e.file_name().to_str() == Some(name) {
            out.push(e.path());
        } else if depth > 0 {
            out.extend(find_dirs(&e.path(), name, depth - 1));
        }
    }
    out
}

fn procs_below(dir: &Path) -> Vec<i32> {
    let mut v: Vec<i32> = fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.parse().ok())
        .collect();
    if let Ok(rd) = fs::read_dir(dir) {
        for e in rd.flatten() {
            if e.path().is_dir() {
                v.extend(procs_below(&e.path()));
            }
        }
    }
    v
}

fn all_pids() -> Vec<i32> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse().ok())
        .collect()
}

fn cmdline(pid: i32) -> String {
    fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| String::from_utf8_lossy(&b).replace('\0', " "))
        .unwrap_or_default()
}

fn node_names(inv: &serde_json::Value) -> Vec<String> {
    inv["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["name"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn three_nodes_boot_with_pinned_keys_reach_each_other_and_reprovision_is_a_no_op() {
    let c = Cluster::new("three");
    let (detail, first) = c.provision();
    assert!(
        detail.starts_with("3 local nodes: 3 booted, 0 kept"),
        "{detail}"
    );
    let nodes = node_names(&first);
    assert_eq!(nodes, ["controlplane-1", "worker-1", "worker-2"]);
    assert_eq!(first["planned"], false);
    let ips: Vec<String> = first["nodes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["internal_ip"].as_str().unwrap().to_string())
        .collect();
    let net = c.cidr.trim_end_matches("0/24");
    assert_eq!(
        ips,
        [11, 12, 13].map(|h| format!("{net}{h}")),
        "addresses 10+i in the node subnet"
    );

    // An unknown node is named, with the ones that exist.
    let (code, _, err) = c.ssh("nope-1", "true");
    assert_ne!(code, 0);
    assert!(
        err.contains("no node named \"nope-1\"")
            && err.contains("controlplane-1, worker-1, worker-2"),
        "{err}"
    );

    // Every sshd answers with the key pinned before boot (ssh runs with
    // StrictHostKeyChecking=yes against the cluster's known_hosts only).
    let kh = c.known_hosts();
    let mut machine_ids = BTreeSet::new();
    let mut host_keys = BTreeSet::new();
    for (node, ip) in nodes.iter().zip(&ips) {
        // sshd answers before the boot has finished: wait for systemd to settle first.
        let state = c
            .ssh(node, "timeout 60 systemctl is-system-running --wait")
            .1;
        let failed = c.ssh(node, "systemctl --failed --no-legend --plain").1;
        assert_eq!(state, "running", "{node}: failed units: [{failed}]");
        assert_eq!(c.ssh_ok(node, "hostname"), *node);
        machine_ids.insert(c.ssh_ok(node, "cat /etc/machine-id"));
        let key = c.ssh_ok(node, "cat /etc/ssh/ssh_host_ed25519_key.pub");
        let key: Vec<&str> = key.split_whitespace().take(2).collect();
        let pinned = format!("{ip} {} {} {node}", key[0], key[1]);
        assert!(
            kh.lines().any(|l| l == pinned),
            "{pinned} not in known_hosts:\n{kh}"
        );
        host_keys.insert(key.join(" "));
        // cgroup v1 controllers are writable inside (containerd/runc need it).
        let ro = c.ssh_ok(
            node,
            r#"awk '$3 == "cgroup" && $4 ~ /(^|,)ro(,|$)/ { print $2 }' /proc/self/mounts"#,
        );
        assert_eq!(ro, "", "{node}: read-only cgroup hierarchies");
    }
    assert_eq!(
        machine_ids.len(),
        3,
        "machine-ids must differ: {machine_ids:?}"
    );
    assert_eq!(host_keys.len(), 3, "host keys must differ");

    // Nodes reach each other by name.
    for a in &nodes {
        for b in &nodes {
            if a != b {
                c.ssh_ok(a, &format!("ping -c1 -W2 {b}"));
            }
        }
    }
    // The host does not forward node traffic anywhere.
    let fwd = fs::read_to_string(format!(
        "/proc/sys/net/ipv4/conf/{}/forwarding",
        network::default_bridge(&c.name)
    ))
    .unwrap();
    assert_eq!(fwd.trim(), "0");
    // /proc/sys/net is writable in a node, host-global kernel settings are not.
    c.ssh_ok("worker-1", "sysctl -qw net.ipv4.conf.all.forwarding=0");
    assert_ne!(c.ssh("worker-1", "sysctl -qw kernel.panic=10").0, 0);

    // A second provision keeps everything: same nodes, same processes.
    let pids: Vec<(i32, i32)> = nodes
        .iter()
        .map(|n| (c.pid(n, "launcher.pid"), c.pid(n, "nspawn.pid")))
        .collect();
    let (detail, second) = c.provision();
    assert_eq!(node_names(&second), nodes);
    assert!(
        detail.starts_with("3 local nodes: 0 booted, 3 kept, 0 replaced, 0 removed"),
        "{detail}"
    );
    let pids2: Vec<(i32, i32)> = nodes
        .iter()
        .map(|n| (c.pid(n, "launcher.pid"), c.pid(n, "nspawn.pid")))
        .collect();
    assert_eq!(pids, pids2);
    assert_eq!(c.known_hosts(), kh, "pinned keys unchanged");

    // Another state directory (another cluster key) must not adopt these running nodes.
    let other_home = tempfile::tempdir().unwrap();
    let out = Command::new(BIN)
        .args(["up", "--only", "provision"])
        .args(c.profile_args())
        .env("K8SFORGE_HOME", other_home.path())
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "foreign nodes adopted: {err}");
    assert!(
        err.contains("belongs to another k8sforge state directory"),
        "{err}"
    );
    let pids3: Vec<(i32, i32)> = nodes
        .iter()
        .map(|n| (c.pid(n, "launcher.pid"), c.pid(n, "nspawn.pid")))
        .collect();
    assert_eq!(pids, pids3, "the refused run left the nodes alone");

    // A host key changed behind k8sforge's back is refused, naming the node.
    c.ssh_ok(
        "worker-2",
        "rm -f /etc/ssh/ssh_host_ed25519_key /etc/ssh/ssh_host_ed25519_key.pub && \
         ssh-keygen -q -t ed25519 -N '' -f /etc/ssh/ssh_host_ed25519_key && systemctl restart ssh",
    );
    let (code, out, err) = c.ssh("worker-2", "echo connected");
    assert_ne!(code, 0, "a changed host key must be refused");
    assert_ne!(out, "connected");
    assert!(
        err.contains("host key of node worker-2") && err.contains("changed"),
        "error must name the node and the change: {err}"
    );
    // Provisioning again keeps the running node and does not re-pin whatever key it shows now.
    let (detail, _) = c.provision();
    assert!(detail.contains("0 booted, 3 kept"), "{detail}");
    let (code, _, err) = c.ssh("worker-2", "true");
    assert_ne!(code, 0, "still refused after a re-provision");
    assert!(err.contains("host key of node worker-2"), "{err}");
    // The other nodes are unaffected.
    assert_eq!(c.ssh_ok("worker-1", "echo connected"), "connected");

    c.teardown();
    assert_eq!(c.leftovers(), Vec::<String>::new());
}

#[test]
fn dead_node_is_replaced_nodes_scale_and_teardown_after_sigkill_leaves_nothing() {
    let c = Cluster::new("crash");
    let (_, first) = c.provision();
    let nodes = node_names(&first);
    let before: Vec<i32> = nodes.iter().map(|n| c.pid(n, "launcher.pid")).collect();

    // worker-1 dies hard: launcher and nspawn SIGKILLed, its systemd left orphaned.
    let launcher = c.pid("worker-1", "launcher.pid");
    let nspawn = c.pid("worker-1", "nspawn.pid");
    unsafe {
        libc::kill(launcher, libc::SIGKILL);
        libc::kill(nspawn, libc::SIGKILL);
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let old_key = c.ssh_ok("worker-1", "cat /etc/ssh/ssh_host_ed25519_key.pub");

    let (detail, _) = c.provision();
    assert!(
        detail.starts_with("3 local nodes: 1 booted, 2 kept, 1 replaced (worker-1), 0 removed"),
        "{detail}"
    );
    let after: Vec<i32> = nodes.iter().map(|n| c.pid(n, "launcher.pid")).collect();
    assert_eq!(after[0], before[0]);
    assert_eq!(after[2], before[2]);
    assert_ne!(after[1], before[1]);
    // The replacement is a new machine with a new, pinned host key.
    let new_key = c.ssh_ok("worker-1", "cat /etc/ssh/ssh_host_ed25519_key.pub");
    assert_ne!(old_key, new_key);
    assert_eq!(
        c.ssh_ok("worker-1", "systemctl is-system-running --wait"),
        "running"
    );
    c.ssh_ok("worker-1", "ping -c1 -W2 controlplane-1");

    // `systemctl reboot` inside a node: nspawn exits 133 and the launcher boots it again.
    let launcher = c.pid("worker-1", "launcher.pid");
    let nspawn = c.pid("worker-1", "nspawn.pid");
    let boot_id = c.ssh_ok("worker-1", "cat /proc/sys/kernel/random/boot_id");
    let _ = c.ssh("worker-1", "systemctl reboot");
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    loop {
        let (code, id, _) = c.ssh(
            "worker-1",
            "systemctl is-system-running --wait >/dev/null; cat /etc/machine-id",
        );
        let new_nspawn = fs::read_to_string(c.node_dir("worker-1").join("nspawn.pid"))
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok());
        if code == 0 && !id.is_empty() && new_nspawn.is_some_and(|p| p != nspawn) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "worker-1 did not come back after reboot; console:\n{}",
            fs::read_to_string(c.node_dir("worker-1").join("console.log")).unwrap_or_default()
        );
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    assert_eq!(c.pid("worker-1", "launcher.pid"), launcher, "same launcher");
    assert_ne!(
        c.ssh_ok("worker-1", "cat /proc/sys/kernel/random/boot_id"),
        boot_id,
        "a new boot"
    );

    // Scale out: the new node boots, the running ones are kept and learn its name.
    let (detail, inv) = c.provision_with(&["--set", "workers[0].count=3"]);
    assert!(
        detail.starts_with("4 local nodes: 1 booted, 3 kept, 0 replaced, 0 removed"),
        "{detail}"
    );
    assert_eq!(node_names(&inv).len(), 4);
    c.ssh_ok("worker-1", "ping -c1 -W2 worker-3");
    c.ssh_ok("worker-3", "ping -c1 -W2 controlplane-1");
    // Scale back in: the node no longer in the profile is removed.
    let (detail, _) = c.provision();
    assert!(
        detail.starts_with("3 local nodes: 0 booted, 3 kept, 0 replaced, 1 removed (worker-3)"),
        "{detail}"
    );
    assert!(!c.node_dir("worker-3").exists());

    // Crash every launcher and nspawn; nodes' processes stay behind in their cgroups.
    for n in &nodes {
        unsafe {
            libc::kill(c.pid(n, "launcher.pid"), libc::SIGKILL);
            libc::kill(c.pid(n, "nspawn.pid"), libc::SIGKILL);
        }
    }
    std::thread::sleep(std::time::Duration::from_millis(300));
    let subtree = cgroups::subtree_name(&c.name);
    let orphans: usize = find_dirs(Path::new("/sys/fs/cgroup"), &subtree, 7)
        .iter()
        .map(|d| procs_below(d).len())
        .sum();
    assert!(orphans > 0, "the nodes' processes outlive their launchers");

    c.teardown();
    assert_eq!(c.leftovers(), Vec::<String>::new());
}

#[test]
fn boot_timeout_names_the_node_with_its_console_and_a_rerun_completes() {
    let c = Cluster::new("timeout");
    // No node can answer within 0 s: the error must name one and show its console log.
    let mut cmd = Command::new(BIN);
    cmd.args(["up", "--only", "provision"])
        .args(c.profile_args())
        .env("K8SFORGE_HOME", c.home.path())
        .env("K8SFORGE_LOCAL_BOOT_TIMEOUT", "0");
    let out = cmd.output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "must fail: {err}");
    assert!(
        ["controlplane-1", "worker-1", "worker-2"]
            .iter()
            .any(|n| err.contains(&format!("node {n} did not come up")))
            && err.contains("did not answer within 0s")
            && err.contains("console log")
            && err.contains("[launcher"),
        "unclear boot failure: {err}"
    );
    // The same command without the impossible timeout completes, keeping the booted nodes.
    let (detail, inv) = c.provision();
    assert!(detail.contains("3 kept"), "{detail}");
    assert_eq!(node_names(&inv).len(), 3);
    c.teardown();
    assert_eq!(c.leftovers(), Vec::<String>::new());
}

#[test]
fn without_root_the_local_provider_says_so_and_writes_nothing() {
    require_root();
    if Command::new("setpriv").arg("--version").output().is_err() {
        panic!("setpriv (util-linux) is needed to run k8sforge as an unprivileged user");
    }
    let home = tempfile::tempdir().unwrap();
    let mut perms = fs::metadata(home.path()).unwrap().permissions();
    std::os::unix::fs::PermissionsExt::set_mode(&mut perms, 0o777);
    fs::set_permissions(home.path(), perms).unwrap();
    let state_home = home.path().join("h");
    for verb in [&["up", "--only", "provision"][..], &["teardown"][..]] {
        let out = Command::new("setpriv")
            .args(["--reuid=65534", "--regid=65534", "--clear-groups", BIN])
            .args(verb)
            .args(["--profile", "local-3", "--set", "name=lpt-noroot"])
            .env("K8SFORGE_HOME", &state_home)
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{verb:?} must fail without root");
        assert!(
            err.contains("needs root") && err.contains("sudo"),
            "{verb:?}: unclear error: {err}"
        );
    }
    // No keys, no inventory, no node directories.
    let cluster_dir = state_home.join("lpt-noroot");
    assert!(
        !cluster_dir.join("ssh").exists(),
        "no key generated without root"
    );
    let state = fs::read(cluster_dir.join("state.json")).unwrap_or_default();
    assert!(
        !String::from_utf8_lossy(&state).contains("\"inventory\""),
        "no inventory recorded without root"
    );
    assert!(!Path::new(ROOT).join("clusters/lpt-noroot").exists());
}
