//! Step "kernel" of the `runtime` phase: the kernel settings Kubernetes needs, before containerd
//! and long before kubelet (which, with `protectKernelDefaults`, refuses to start on a kernel
//! whose values differ). It owns the rendered `/etc/modules-load.d/k8sforge.conf` and
//! `/etc/sysctl.d/90-k8sforge.conf` (so they also apply at every boot), then on every node:
//! loads the modules, applies the sysctls as boot would (`sysctl --system`), turns swap off (and
//! keeps it off in fstab), and READS BACK every module, sysctl and the swap state. A setting the
//! kernel refused is reported per node (which setting, wanted, found, what the kernel said).
//!
//! Exceptions are explicit: on the local provider the nodes are containers whose kernel is the
//! host's (read-only `/proc/sys`, no module loading; the local node-prep unit binds the values
//! kubelet checks), so refusals there are listed, not failures; static hosts that are containers
//! name theirs in `provider.static.kernelExceptions`.

use std::collections::BTreeMap;

use serde::Serialize;

use super::{Context, PhaseError};
use crate::inventory::Role;
use crate::profile::ProviderKind;
use crate::remote::sync::{shell_quote, NodePlan, SyncFile};
use crate::remote::{Executor, PhaseReport};
use crate::render::paths::PATHS;

/// The kernel settings of one node, read from its rendered files.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KernelSettings {
    pub modules: Vec<String>,
    /// `(key, value)` as in sysctl.d.
    pub sysctls: Vec<(String, String)>,
}

impl KernelSettings {
    pub fn parse(modules_conf: &str, sysctl_conf: &str) -> KernelSettings {
        let content = |l: &str| {
            let l = l.trim();
            (!l.is_empty() && !l.starts_with('#') && !l.starts_with(';')).then(|| l.to_string())
        };
        KernelSettings {
            modules: modules_conf.lines().filter_map(content).collect(),
            sysctls: sysctl_conf
                .lines()
                .filter_map(content)
                .filter_map(|l| {
                    let (k, v) = l.split_once('=')?;
                    Some((k.trim().to_string(), v.trim().to_string()))
                })
                .collect(),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.modules.is_empty() && self.sysctls.is_empty()
    }
}

/// One setting the node's kernel did not take.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Refused {
    /// `module overlay`, `sysctl vm.overcommit_memory` or `swap`.
    pub setting: String,
    pub wanted: String,
    pub found: String,
    /// What the kernel or tool said, when it said something.
    pub reason: String,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: wanted {}, found {}",
            self.setting, self.wanted, self.found
        )?;
        if !self.reason.is_empty() {
            write!(f, " ({})", self.reason)?;
        }
        Ok(())
    }
}

/// What the step found on one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct NodeKernel {
    pub node: String,
    /// Settings read back with the wanted value.
    pub verified: usize,
    /// Refused and not excepted: the node fails the step.
    pub refused: Vec<Refused>,
    /// Refused but excepted (container nodes whose host owns the kernel).
    pub excepted: Vec<Refused>,
}

#[derive(Debug, Clone, Default, Serialize)]
pub struct KernelReport {
    pub nodes: Vec<NodeKernel>,
    /// Nodes the step could not reach or whose files could not be pushed.
    pub failed: Vec<(String, String)>,
    pub files_changed: usize,
    /// Payload bytes pushed to each node by the step's file sync.
    pub bytes_sent: BTreeMap<String, u64>,
}

impl KernelReport {
    /// `(node, error)` for every node that is not ready for kubelet.
    pub fn failed_pairs(&self) -> Vec<(String, String)> {
        let mut out = self.failed.clone();
        for n in self.nodes.iter().filter(|n| !n.refused.is_empty()) {
            let list: Vec<String> = n.refused.iter().map(|r| r.to_string()).collect();
            out.push((
                n.node.clone(),
                format!(
                    "the kernel refused {}: {}",
                    if list.len() == 1 {
                        "a setting Kubernetes needs"
                    } else {
                        "settings Kubernetes needs"
                    },
                    list.join("; ")
                ),
            ));
        }
        out
    }
}

const TAG: &str = "k8sforge-kernel";

/// The apply-and-read-back script: one line per setting,
/// `k8sforge-kernel <module|sysctl|swap> <name> <ok|bad> <found> [reason…]`.
pub fn script(s: &KernelSettings) -> String {
    let mut sh = String::from("set -u\nerr=$(mktemp)\n");
    for m in &s.modules {
        let q = shell_quote(m);
        sh.push_str(&format!(
            "loaded() {{ [ -d /sys/module/$1 ] || grep -q \"^$1 \" /proc/modules || grep -qw \"$1\" /proc/filesystems; }}\n\
             if loaded {q} || modprobe {q} 2>\"$err\" && loaded {q}; then \
             echo {TAG} module {q} ok loaded; \
             else echo {TAG} module {q} bad absent \"$(head -n1 \"$err\" | tr -s ' \\t' ' ')\"; fi\n"
        ));
    }
    if !s.sysctls.is_empty() {
        // As at boot: every sysctl.d file in order, so a later file overriding ours shows up in
        // the read-back below rather than at the next reboot.
        sh.push_str(&format!(
            "sysctl --system >/dev/null 2>\"$err\" || true\n\
             if [ -f {f} ]; then sysctl -p {f} >/dev/null 2>>\"$err\" || true; fi\n",
            f = shell_quote(PATHS.sysctl_conf)
        ));
    }
    for (k, v) in &s.sysctls {
        let qk = shell_quote(k);
        let qv = shell_quote(v);
        sh.push_str(&format!(
            "have=$(sysctl -n {qk} 2>/dev/null | tr -s ' \\t' ' ') || have=missing\n\
             [ -n \"$have\" ] || have=missing\n\
             if [ \"$have\" = {qv} ]; then echo {TAG} sysctl {qk} ok \"$have\"; \
             else echo {TAG} sysctl {qk} bad \"$have\" \"$(grep -F -- {qk} \"$err\" | head -n1 | tr -s ' \\t' ' ')\"; fi\n"
        ));
    }
    // Swap: off now, and off after a reboot (fstab swap lines commented out, once).
    sh.push_str(&format!(
        "swapoff -a 2>\"$err\" || true\n\
         if grep -Eq '^[^#][^[:space:]]*[[:space:]]+[^[:space:]]+[[:space:]]+swap[[:space:]]' /etc/fstab 2>/dev/null; then \
         sed -i.k8sforge-bak -E 's@^([^#][^[:space:]]*[[:space:]]+[^[:space:]]+[[:space:]]+swap[[:space:]].*)$@# disabled by k8sforge: \\1@' /etc/fstab; fi\n\
         on=$(tail -n +2 /proc/swaps | awk '{{print $1}}' | tr '\\n' ' ')\n\
         if [ -z \"$on\" ]; then echo {TAG} swap swap ok off; \
         else echo {TAG} swap swap bad \"on:$on\" \"$(head -n1 \"$err\" | tr -s ' \\t' ' ')\"; fi\n\
         rm -f \"$err\"\n"
    ));
    sh
}

/// Parse the script's output into verified settings and refusals.
pub fn parse(node: &str, s: &KernelSettings, out: &str) -> Result<NodeKernel, String> {
    let mut nk = NodeKernel {
        node: node.to_string(),
        ..NodeKernel::default()
    };
    let mut seen = 0;
    for line in out.lines() {
        let Some(rest) = line.strip_prefix(TAG).and_then(|l| l.strip_prefix(' ')) else {
            continue;
        };
        let mut parts = rest.splitn(5, ' ');
        let (Some(kind), Some(name), Some(verdict), Some(found)) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(format!("unexpected read-back line {line:?}"));
        };
        let reason = parts.next().unwrap_or("").trim().to_string();
        seen += 1;
        if verdict == "ok" {
            nk.verified += 1;
            continue;
        }
        let wanted = match kind {
            "module" => "loaded".to_string(),
            "swap" => "off".to_string(),
            _ => s
                .sysctls
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default(),
        };
        let setting = if kind == "swap" {
            "swap".to_string()
        } else {
            format!("{kind} {name}")
        };
        nk.refused.push(Refused {
            setting,
            wanted,
            found: found.to_string(),
            reason,
        });
    }
    let expected = s.modules.len() + s.sysctls.len() + 1;
    if seen != expected {
        return Err(format!(
            "read back {seen} kernel settings, expected {expected}; output: {}",
            out.trim()
        ));
    }
    Ok(nk)
}

/// Which refusals a provider accepts: every one on local nodes (containers on this machine's
/// kernel), the listed ones on static hosts.
fn excepted(kind: ProviderKind, exceptions: &[String], r: &Refused) -> bool {
    match kind {
        ProviderKind::Local => true,
        _ => exceptions.iter().any(|e| {
            r.setting == *e || r.setting.split_once(' ').map(|(_, n)| n) == Some(e.as_str())
        }),
    }
}

/// Push the kernel files, apply them and read every setting back on every pod-running node.
pub fn run(ctx: &mut Context, exec: &Executor) -> Result<KernelReport, PhaseError> {
    let profile = &ctx.loaded.profile;
    let kind = profile.provider.kind;
    let exceptions: Vec<String> = profile
        .provider
        .static_hosts
        .as_ref()
        .map(|s| s.kernel_exceptions.clone())
        .unwrap_or_default();
    let inv = ctx.inventory.clone().ok_or(PhaseError::NoInventory {
        phase: super::PhaseName::Runtime,
    })?;
    let bundle = ctx.bundle()?;
    let mut plans: BTreeMap<String, NodePlan> = BTreeMap::new();
    let mut settings: BTreeMap<String, KernelSettings> = BTreeMap::new();
    for node in inv
        .nodes
        .iter()
        .filter(|n| n.has(Role::Worker) || n.has(Role::ControlPlane))
    {
        let Some(nb) = bundle.nodes.get(&node.name) else {
            continue;
        };
        let owned: Vec<_> = nb
            .files
            .iter()
            .filter(|f| f.path == PATHS.sysctl_conf || f.path == PATHS.modules_load_conf)
            .collect();
        let text = |p: &str| {
            owned
                .iter()
                .find(|f| f.path == p)
                .map(|f| String::from_utf8_lossy(&f.content).into_owned())
                .unwrap_or_default()
        };
        let ks = KernelSettings::parse(&text(PATHS.modules_load_conf), &text(PATHS.sysctl_conf));
        plans.insert(
            node.name.clone(),
            NodePlan {
                files: owned.iter().map(|f| SyncFile::from_bundle(f)).collect(),
                ..NodePlan::default()
            },
        );
        settings.insert(node.name.clone(), ks);
    }
    let pushed: PhaseReport = exec.apply_plans(&inv, &plans, "kernel");
    let mut report = KernelReport {
        failed: pushed.failed_pairs(),
        files_changed: pushed.files_changed,
        bytes_sent: pushed
            .nodes
            .iter()
            .map(|n| (n.node.clone(), n.bytes_sent))
            .collect(),
        ..KernelReport::default()
    };
    let ok: Vec<&crate::inventory::Node> = inv
        .nodes
        .iter()
        .filter(|n| pushed.nodes.iter().any(|r| r.node == n.name))
        .collect();
    // Nodes sharing one settings list get one script; in practice every node has the same.
    let mut by_script: BTreeMap<String, Vec<&crate::inventory::Node>> = BTreeMap::new();
    for n in ok {
        let ks = settings.get(&n.name).cloned().unwrap_or_default();
        by_script.entry(script(&ks)).or_default().push(n);
    }
    for (sh, nodes) in by_script {
        for o in exec.run_all(&nodes, &sh, exec.options().command_timeout) {
            let ks = settings.get(&o.node).cloned().unwrap_or_default();
            match o
                .result
                .map_err(|e| e.to_string())
                .and_then(|out| parse(&o.node, &ks, &out.stdout))
            {
                Ok(mut nk) => {
                    let (exc, refused): (Vec<Refused>, Vec<Refused>) = nk
                        .refused
                        .drain(..)
                        .partition(|r| excepted(kind, &exceptions, r));
                    for r in &exc {
                        tracing::debug!(node = %nk.node, "kernel setting excepted: {r}");
                    }
                    nk.refused = refused;
                    nk.excepted = exc;
                    report.nodes.push(nk);
                }
                Err(e) => report.failed.push((o.node.clone(), e)),
            }
        }
    }
    report.nodes.sort_by(|a, b| a.node.cmp(&b.node));
    Ok(report)
}

/// The runtime phase's summary when nodes are not ready for kubelet: stop before containerd.
pub fn summary(report: &KernelReport, started: std::time::Instant) -> super::PhaseSummary {
    let failed = report.failed_pairs();
    super::PhaseSummary {
        phase: super::PhaseName::Runtime,
        outcome: super::Outcome::Failed,
        files_changed: report.files_changed,
        units_restarted: 0,
        detail: format!(
            "kernel settings: {} of {} nodes not ready for kubelet",
            failed.len(),
            report.nodes.len() + report.failed.len()
        ),
        failed_nodes: failed,
        bytes_sent: report.bytes_sent.clone(),
        bytes_fetched: 0,
        warnings: Vec::new(),
        elapsed: started.elapsed(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings() -> KernelSettings {
        KernelSettings::parse(
            "# c\noverlay\nbr_netfilter\n",
            "# c\nnet.ipv4.ip_forward = 1\nvm.overcommit_memory=1\n",
        )
    }

    #[test]
    fn parses_the_rendered_files() {
        let s = settings();
        assert_eq!(s.modules, vec!["overlay", "br_netfilter"]);
        assert_eq!(
            s.sysctls,
            vec![
                ("net.ipv4.ip_forward".to_string(), "1".to_string()),
                ("vm.overcommit_memory".to_string(), "1".to_string())
            ]
        );
    }

    #[test]
    fn read_back_reports_each_refusal_by_name() {
        let s = settings();
        let out = "noise\n\
            k8sforge-kernel module overlay ok loaded\n\
            k8sforge-kernel module br_netfilter bad absent modprobe: FATAL: Module br_netfilter not found\n\
            k8sforge-kernel sysctl net.ipv4.ip_forward ok 1\n\
            k8sforge-kernel sysctl vm.overcommit_memory bad 0 sysctl: setting key \"vm.overcommit_memory\": Read-only file system\n\
            k8sforge-kernel swap swap ok off\n";
        let nk = parse("w1", &s, out).unwrap();
        assert_eq!(nk.verified, 3);
        assert_eq!(nk.refused.len(), 2);
        assert_eq!(nk.refused[1].setting, "sysctl vm.overcommit_memory");
        assert_eq!(nk.refused[1].wanted, "1");
        assert_eq!(nk.refused[1].found, "0");
        assert!(nk.refused[1].to_string().contains("Read-only"));
        assert!(excepted(
            ProviderKind::Static,
            &["br_netfilter".into()],
            &nk.refused[0]
        ));
        assert!(!excepted(
            ProviderKind::Static,
            &["br_netfilter".into()],
            &nk.refused[1]
        ));
        // A truncated answer is an error, never a silent pass.
        assert!(parse("w1", &s, "k8sforge-kernel swap swap ok off\n").is_err());
    }

    #[test]
    fn script_checks_every_setting() {
        let sh = script(&settings());
        assert!(sh.contains("modprobe 'br_netfilter'"));
        assert!(sh.contains("sysctl -n 'vm.overcommit_memory'"));
        assert!(sh.contains("sysctl --system"));
        assert!(sh.contains("swapoff -a"));
    }
}
