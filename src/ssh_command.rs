//! `k8sforge ssh NODE [cmd]`: the system `ssh` with the cluster key and the cluster's pinned
//! known_hosts (strict checking), for any provider whose inventory is in the state file.
//! A refused host key is explained by name: which node, pinned and offered fingerprints.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use anyhow::{bail, Context, Result};

use crate::inventory::Node;
use crate::sshkeys;
use crate::state::{self, ClusterDir};

/// ssh's own exit status for its errors (connection, host key, authentication).
const SSH_FAILED: i32 = 255;

#[derive(Debug, thiserror::Error)]
#[error(
    "host key of node {node} ({addr}) has changed: pinned {pinned}, the node now offers {offered}. \
     k8sforge refused to connect (possible man-in-the-middle, or the node was rebuilt outside \
     k8sforge). If the change is expected, remove the line for {addr} from {known_hosts} and \
     re-provision the node"
)]
pub struct HostKeyChanged {
    pub node: String,
    pub addr: String,
    pub pinned: String,
    pub offered: String,
    pub known_hosts: PathBuf,
}

/// The `ssh` argument list for `node` (without the remote command).
pub fn ssh_args(cluster_dir: &Path, node: &Node) -> Vec<String> {
    let key = node
        .ssh
        .key
        .clone()
        .map(PathBuf::from)
        .unwrap_or_else(|| sshkeys::cluster_key_path(cluster_dir));
    let kh = sshkeys::known_hosts_path(cluster_dir);
    let mut a = vec![
        "-i".to_string(),
        key.display().to_string(),
        "-o".into(),
        "IdentitiesOnly=yes".into(),
        "-o".into(),
        format!("UserKnownHostsFile={}", kh.display()),
        "-o".into(),
        "GlobalKnownHostsFile=/dev/null".into(),
        "-o".into(),
        "StrictHostKeyChecking=yes".into(),
        "-o".into(),
        "BatchMode=yes".into(),
        "-o".into(),
        "ConnectTimeout=10".into(),
        "-o".into(),
        "LogLevel=ERROR".into(),
        "-p".into(),
        node.ssh.port.to_string(),
    ];
    if let Some(b) = &node.ssh.bastion {
        // Not `-J`: the jump must use the same key and the same pinned known_hosts (strict).
        if let Ok(spec) = crate::remote::bastion::BastionSpec::parse(b) {
            let user = spec.user.clone().unwrap_or_else(|| node.ssh.user.clone());
            let q = |s: &str| crate::remote::sync::shell_quote(s);
            a.push("-o".into());
            a.push(format!(
                "ProxyCommand=ssh -i {} -o IdentitiesOnly=yes -o UserKnownHostsFile={} \
                 -o GlobalKnownHostsFile=/dev/null -o StrictHostKeyChecking=yes -o BatchMode=yes \
                 -o ConnectTimeout=10 -o LogLevel=ERROR -p {} -W %h:%p {}",
                q(&key.display().to_string()),
                q(&kh.display().to_string()),
                spec.port,
                q(&format!("{user}@{}", spec.host)),
            ));
        }
    }
    a.push(format!("{}@{}", node.ssh.user, node.ssh.host));
    a
}

/// Run `ssh` to `node_name` of `cluster`; the exit status is the remote command's.
pub fn run(home: &Path, cluster: &str, node_name: &str, command: &[String]) -> Result<ExitCode> {
    let root = ClusterDir::existing(home, cluster)?;
    let st = state::load_state_at(&root.join("state.json"))?;
    let inv = st.inventory.with_context(|| {
        format!("cluster {cluster} has no inventory yet: run `k8sforge up` (at least `--only provision`) first")
    })?;
    let Some(node) = inv.node(node_name) else {
        let names: Vec<&str> = inv.nodes.iter().map(|n| n.name.as_str()).collect();
        bail!(
            "cluster {cluster} has no node named {node_name:?}; its nodes are: {}",
            names.join(", ")
        );
    };
    if inv.planned {
        bail!("the nodes of cluster {cluster} are not provisioned yet (addresses are only planned): run `k8sforge up` first");
    }
    if sshkeys::pinned_key(&root, node.ssh.host, node.ssh.port).is_none() {
        bail!(
            "no pinned host key for node {node_name} ({}) in {}; k8sforge connects only to pinned keys",
            sshkeys::host_pattern(node.ssh.host, node.ssh.port),
            sshkeys::known_hosts_path(&root).display()
        );
    }
    let mut args = ssh_args(&root, node);
    if !command.is_empty() {
        args.push("--".into());
        args.extend(command.iter().cloned());
    }
    let status = Command::new("ssh")
        .args(&args)
        .status()
        .context("cannot run `ssh` (apt-get install -y openssh-client)")?;
    let code = status.code().unwrap_or(SSH_FAILED);
    if code == SSH_FAILED {
        diagnose(&root, node)?;
    }
    Ok(ExitCode::from(code.clamp(0, 255) as u8))
}

/// After ssh failed: tell a changed host key apart from other failures.
fn diagnose(cluster_dir: &Path, node: &Node) -> Result<()> {
    let Some(pinned) = sshkeys::pinned_key(cluster_dir, node.ssh.host, node.ssh.port) else {
        return Ok(());
    };
    let kind = pinned.split_whitespace().next().unwrap_or("ssh-ed25519");
    let out = Command::new("ssh-keyscan")
        .args([
            "-T",
            "5",
            "-t",
            kind,
            "-p",
            &node.ssh.port.to_string(),
            &node.ssh.host.to_string(),
        ])
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    let Ok(out) = out else { return Ok(()) };
    let text = String::from_utf8_lossy(&out.stdout);
    let offered: Vec<String> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut p = l.split_whitespace().skip(1);
            Some(format!("{} {}", p.next()?, p.next()?))
        })
        .collect();
    if offered.is_empty() {
        bail!(
            "cannot reach node {} at {}:{} (ssh failed and the node offers no host key)",
            node.name,
            node.ssh.host,
            node.ssh.port
        );
    }
    if !offered.contains(&pinned) {
        let fp = |k: &str| sshkeys::fingerprint(k).unwrap_or_else(|| k.to_string());
        return Err(HostKeyChanged {
            node: node.name.clone(),
            addr: sshkeys::host_pattern(node.ssh.host, node.ssh.port),
            pinned: fp(&pinned),
            offered: fp(&offered[0]),
            known_hosts: sshkeys::known_hosts_path(cluster_dir),
        }
        .into());
    }
    Ok(())
}
