//! A cluster of local nodes driven through the real `k8sforge` binary: the command line every
//! local-node test builds (verb, profile, `--set`s), `up` with its JSON report, `ssh` to a node,
//! and teardown when the test ends. Tests add what is theirs on top (a wrapper struct or free
//! functions); the phase report helpers are here too.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use super::kubectl::{server_of, Kubectl};

pub const BIN: &str = env!("CARGO_BIN_EXE_k8sforge");

/// Verbs whose sub-command comes before the profile flags.
const NESTED_VERBS: [&str; 4] = ["certs", "team", "user", "node"];

pub struct LocalCluster {
    pub name: String,
    /// The node subnet, e.g. `198.19.40.0/24`.
    pub cidr: String,
    pub profile: &'static str,
    home: tempfile::TempDir,
    /// `--mirror` for `up`; none: the profile's own artifact source.
    pub mirror: Option<PathBuf>,
    /// Extra `--set path=value` on every command.
    pub sets: Vec<String>,
    /// Extra environment on every command.
    pub envs: Vec<(String, String)>,
    /// K8SFORGE_TEST_KEEP: leave the cluster running for a look around.
    pub keep: bool,
    _subnet_lock: Option<fs::File>,
}

impl LocalCluster {
    /// A cluster on a fixed subnet (the old tests that run under the fixed-e2e lock).
    pub fn fixed(name: &str, cidr: &str, profile: &'static str) -> Self {
        LocalCluster {
            name: name.to_string(),
            cidr: cidr.to_string(),
            profile,
            home: tempfile::tempdir().unwrap(),
            mirror: None,
            sets: Vec::new(),
            envs: Vec::new(),
            keep: std::env::var_os("K8SFORGE_TEST_KEEP").is_some(),
            _subnet_lock: None,
        }
    }

    /// A cluster on a subnet 198.19.X.0/24 reserved for this test's lifetime
    /// (`super::subnet`), named `<prefix>-X` so concurrent runs never share a name either.
    pub fn reserved(prefix: &str, profile: &'static str) -> Self {
        let (x, lock) = super::subnet::reserve_subnet();
        let mut c = Self::fixed(
            &format!("{prefix}-{x}"),
            &format!("198.19.{x}.0/24"),
            profile,
        );
        c._subnet_lock = Some(lock);
        c
    }

    pub fn with_mirror(mut self, mirror: impl Into<PathBuf>) -> Self {
        self.mirror = Some(mirror.into());
        self
    }

    pub fn with_set(mut self, set: impl Into<String>) -> Self {
        self.sets.push(set.into());
        self
    }

    pub fn with_env(mut self, key: &str, value: &str) -> Self {
        self.envs.push((key.to_string(), value.to_string()));
        self
    }

    /// `K8SFORGE_HOME` of the cluster.
    pub fn home(&self) -> &Path {
        self.home.path()
    }

    /// The cluster's state directory (`$K8SFORGE_HOME/<name>`).
    pub fn state_dir(&self) -> PathBuf {
        self.home().join(&self.name)
    }

    /// Where the local provider keeps a node (root file system, pid file).
    pub fn node_dir(&self, node: &str) -> PathBuf {
        Path::new("/var/lib/k8sforge/clusters")
            .join(&self.name)
            .join("nodes")
            .join(node)
    }

    /// The kubeconfig of `identity` (`admin`, a node name, …) in the state directory.
    pub fn kubeconfig(&self, identity: &str) -> PathBuf {
        self.state_dir()
            .join("kubeconfigs")
            .join(format!("{identity}.kubeconfig"))
    }

    /// kubectl `bin` as the admin.
    pub fn kubectl(&self, bin: &Path) -> Kubectl {
        Kubectl::new(bin, self.kubeconfig("admin"))
    }

    /// kubectl `bin` as `identity`. Node identities' kubeconfigs name the node-local endpoint
    /// (127.0.0.1 on the node), so from the host they are pointed at the admin's API address.
    pub fn kubectl_as(&self, bin: &Path, identity: &str) -> Kubectl {
        Kubectl::new(bin, self.kubeconfig(identity))
            .with_server(server_of(&self.kubeconfig("admin")))
    }

    /// The verb (two words for verbs with sub-commands: `team add`, `certs rotate`, …), then the
    /// profile and the sets, then the verb's own arguments (`ssh NODE -- CMD` ends with a
    /// trailing command that must come last).
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(BIN);
        c.env("K8SFORGE_HOME", self.home());
        for (k, v) in &self.envs {
            c.env(k, v);
        }
        let verb = if NESTED_VERBS.contains(&args[0]) && args.len() > 1 {
            2
        } else {
            1
        };
        c.args(&args[..verb])
            .args(["--profile", self.profile])
            .args(["--set", &format!("name={}", self.name)])
            .args(["--set", &format!("network.nodeCIDR={}", self.cidr)]);
        for s in &self.sets {
            c.args(["--set", s]);
        }
        c.args(&args[verb..]);
        c
    }

    /// stdout and stderr of a k8sforge command that must succeed.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.cmd(args).output().unwrap();
        assert!(
            out.status.success(),
            "{args:?}\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr)
    }

    /// `up -o json` (with the mirror, trusting its checksums) plus `extra`; the report is `Null`
    /// when stdout was not JSON.
    pub fn up(&self, extra: &[&str]) -> (Output, serde_json::Value) {
        let mirror = self.mirror.as_ref().map(|m| m.display().to_string());
        let mut args = vec!["up"];
        if let Some(m) = &mirror {
            args.extend(["--mirror", m.as_str()]);
        }
        args.extend(["--trust-mirror-checksums", "-o", "json"]);
        args.extend_from_slice(extra);
        let out = self.cmd(&args).output().unwrap();
        let report = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
        (out, report)
    }

    /// `up --only PHASE`, which must succeed.
    pub fn up_only(&self, phase: &str) -> serde_json::Value {
        let (out, report) = self.up(&["--only", phase]);
        assert!(
            out.status.success(),
            "up --only {phase}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        report
    }

    /// Run `script` on `node` through `k8sforge ssh` (pinned host key, cluster key).
    pub fn ssh(&self, node: &str, script: &str) -> Output {
        self.cmd(&["ssh", node, "--", script]).output().unwrap()
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

    /// A network namespace on `node` wired by the CNI bridge plugin with the node's own CNI
    /// config (a pod without kubelet); returns the pod address.
    pub fn cni_pod(&self, node: &str) -> String {
        let out = self.ssh_ok(
            node,
            "ip netns del tpod 2>/dev/null; ip netns add tpod && \
             CNI_COMMAND=ADD CNI_CONTAINERID=tpod CNI_NETNS=/run/netns/tpod CNI_IFNAME=eth0 CNI_PATH=/opt/cni/bin \
             /opt/cni/bin/bridge < /etc/cni/net.d/10-bridge.conf",
        );
        let v: serde_json::Value =
            serde_json::from_str(&out).unwrap_or_else(|e| panic!("{node}: CNI result {out}: {e}"));
        let addr = v["ips"][0]["address"]
            .as_str()
            .unwrap_or_else(|| panic!("{node}: no address in {v}"));
        addr.split('/').next().unwrap().to_string()
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if self.keep {
            let home = std::mem::replace(&mut self.home, tempfile::tempdir().unwrap()).keep();
            eprintln!(
                "K8SFORGE_TEST_KEEP is set: cluster {} left running (K8SFORGE_HOME={})",
                self.name,
                home.display()
            );
            return;
        }
        let _ = self.cmd(&["teardown"]).output();
    }
}

/// The record of phase `name` in an `up -o json` report.
pub fn phase<'a>(report: &'a serde_json::Value, name: &str) -> &'a serde_json::Value {
    report["phases"]
        .as_array()
        .and_then(|a| a.iter().find(|p| p["phase"] == name))
        .unwrap_or_else(|| panic!("no phase {name} in {report:#}"))
}

/// Every phase of `names` ended `done`.
pub fn assert_done(report: &serde_json::Value, names: &[&str]) {
    for n in names {
        assert_eq!(phase(report, n)["outcome"], "done", "phase {n}: {report:#}");
    }
}
