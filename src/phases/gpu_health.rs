//! The GPU health gate of the `addons` phase. Every GPU node joins with the
//! `k8sforge.io/gpu-unverified:NoSchedule` taint (its kubelet's registerWithTaints); here each
//! one runs its preflight over SSH — k8sforge's `gpu/preflight.sh` (GPU count, persistence mode,
//! Fabric Manager and fabric state, EFA / gVNIC devices), or the profile's
//! `gpu.health.preflightCommand` — and only a node that passes gets the taint lifted. The result
//! is kept on the node (`/var/lib/k8sforge/gpu-health`), where `k8sforge status` reads it.

use std::time::Duration;

use crate::inventory::{Inventory, Node};
use crate::remote::sync::shell_quote;
use crate::remote::Executor;
use crate::render::gpu::{HEALTH_FILE, PREFLIGHT_SCRIPT};

/// Preflight time per node (nvidia-smi -q on 8 GPUs takes seconds).
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(120);
const RC_MARK: &str = "k8sforge-preflight-rc=";

/// One node's preflight outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Preflight {
    pub node: String,
    pub passed: bool,
    /// What failed, one line per check (empty when passed).
    pub failures: Vec<String>,
}

/// The shell run on a node: the preflight (whatever it prints is kept), its result written to
/// the health file, and the exit status reported on stdout so a failing check is an answer, not
/// a transport error.
pub fn wrapper(command: &str) -> String {
    let dir = HEALTH_FILE.rsplit_once('/').map(|(d, _)| d).unwrap_or("/");
    format!(
        "out=$(sh -c {cmd} 2>&1 </dev/null); rc=$?; mkdir -p {dir}; \
         if [ \"$rc\" -eq 0 ]; then s=passed; else s=\"failed: $(printf '%s' \"$out\" | tr '\\n' ';' | sed 's/;$//')\"; fi; \
         printf '%s\\n' \"$s\" > {f}.tmp && mv {f}.tmp {f}; \
         printf '{RC_MARK}%s\\n%s\\n' \"$rc\" \"$out\"",
        cmd = shell_quote(command),
        dir = shell_quote(dir),
        f = shell_quote(HEALTH_FILE),
    )
}

/// Read the wrapper's answer.
pub fn parse(node: &str, stdout: &str) -> Preflight {
    let mut lines = stdout.lines();
    let rc = lines
        .next()
        .and_then(|l| l.strip_prefix(RC_MARK))
        .and_then(|v| v.trim().parse::<i32>().ok());
    let rest: Vec<String> = lines
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(String::from)
        .collect();
    match rc {
        Some(0) => Preflight {
            node: node.to_string(),
            passed: true,
            failures: Vec::new(),
        },
        Some(rc) => Preflight {
            node: node.to_string(),
            passed: false,
            failures: if rest.is_empty() {
                vec![format!("preflight exited {rc} without saying why")]
            } else {
                rest
            },
        },
        None => Preflight {
            node: node.to_string(),
            passed: false,
            failures: vec![format!("unexpected preflight output: {stdout:?}")],
        },
    }
}

/// The command a node's preflight runs: the profile's, else the rendered script.
pub fn command(override_cmd: Option<&str>) -> String {
    override_cmd
        .map(str::to_string)
        .unwrap_or_else(|| PREFLIGHT_SCRIPT.to_string())
}

/// The inventory's GPU nodes.
pub fn gpu_nodes(inv: &Inventory) -> Vec<&Node> {
    inv.nodes.iter().filter(|n| n.gpus > 0).collect()
}

/// Run the preflight on `nodes`; an unreachable node fails with the transport error.
pub fn run(exec: &Executor, nodes: &[&Node], command: &str) -> Vec<Preflight> {
    let script = wrapper(command);
    exec.run_all(nodes, &script, PREFLIGHT_TIMEOUT)
        .into_iter()
        .map(|o| match o.result {
            Ok(out) => parse(&o.node, &out.stdout),
            Err(e) => Preflight {
                node: o.node,
                passed: false,
                failures: vec![format!("cannot run the preflight: {e}")],
            },
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrapper_reports_rc_and_lines_and_writes_the_health_file() {
        let dir = tempfile::tempdir().unwrap();
        let health = dir.path().join("gpu-health");
        let run = |cmd: &str| {
            let script = wrapper(cmd).replace(HEALTH_FILE, health.to_str().unwrap());
            let script = script.replace(
                &shell_quote("/var/lib/k8sforge"),
                &shell_quote(dir.path().to_str().unwrap()),
            );
            let out = std::process::Command::new("sh")
                .arg("-c")
                .arg(&script)
                .output()
                .unwrap();
            assert!(out.status.success());
            String::from_utf8(out.stdout).unwrap()
        };
        let p = parse(
            "gpu-1",
            &run("echo 'GPU count: 7 of 8'; echo \"fabric: it's down\"; exit 1"),
        );
        assert!(!p.passed);
        assert_eq!(p.failures, ["GPU count: 7 of 8", "fabric: it's down"]);
        assert_eq!(
            std::fs::read_to_string(&health).unwrap(),
            "failed: GPU count: 7 of 8;fabric: it's down\n"
        );
        let p = parse("gpu-1", &run("true"));
        assert!(p.passed && p.failures.is_empty());
        assert_eq!(std::fs::read_to_string(&health).unwrap(), "passed\n");
        let p = parse("gpu-1", &run("exit 3"));
        assert_eq!(p.failures, ["preflight exited 3 without saying why"]);
    }
}
