//! Host keys from the provider: cloud-init prints every SSH host public key of a new instance to
//! its console between `-----BEGIN SSH HOST KEY KEYS-----` and `-----END SSH HOST KEY KEYS-----`,
//! and EC2 returns that console text (GetConsoleOutput). Keys read there are pinned before the
//! first SSH connection, so the first contact is already checked; a node presenting another key
//! is refused by name by the SSH layer. The console appears about a minute after boot: nodes
//! without keys are asked again every few seconds within `Options::host_key_wait` (one call per
//! node and round, `parallelism` in flight), then fall back to first contact, saying so.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use base64::Engine;
use tokio::task::JoinSet;

use super::session::Session;
use crate::inventory::Inventory;
use crate::sshkeys::{self, PinnedKey};

const BEGIN: &str = "-----BEGIN SSH HOST KEY KEYS-----";
const END: &str = "-----END SSH HOST KEY KEYS-----";
/// Between two rounds of GetConsoleOutput for the nodes still without keys.
const ROUND: Duration = Duration::from_secs(10);

/// The public keys (`type base64`, comment dropped) of the last host-key block in `console`.
pub fn parse_console(console: &str) -> Vec<String> {
    let Some(start) = console.rfind(BEGIN) else {
        return Vec::new();
    };
    let rest = &console[start + BEGIN.len()..];
    let Some(end) = rest.find(END) else {
        return Vec::new();
    };
    rest[..end]
        .lines()
        // Console lines may carry a "[  12.3] cloud-init[..]: " style prefix.
        .filter_map(|l| {
            let words: Vec<&str> = l.split_whitespace().collect();
            let i = words
                .iter()
                .position(|w| w.starts_with("ssh-") || w.starts_with("ecdsa-"))?;
            let key = words.get(i + 1)?;
            base64::engine::general_purpose::STANDARD
                .decode(key)
                .ok()
                .map(|_| format!("{} {key}", words[i]))
        })
        .collect()
}

/// What happened per node.
#[derive(Debug, Default)]
pub struct HostKeyReport {
    /// Nodes pinned from the console now.
    pub pinned: Vec<String>,
    /// Nodes already pinned before (left as they are).
    pub already: Vec<String>,
    /// Nodes whose console showed no keys within the wait: first contact will pin them.
    pub first_contact: Vec<String>,
}

/// Pin the console-reported host keys of every node of `inv` not pinned yet
/// (`instance_ids`: node name → instance id).
pub async fn pin_from_console(
    s: &Session,
    inv: &Inventory,
    instance_ids: &BTreeMap<String, String>,
    cluster_dir: &Path,
) -> HostKeyReport {
    let mut report = HostKeyReport::default();
    let mut todo: Vec<(String, String, IpAddr, u16)> = Vec::new();
    for n in &inv.nodes {
        if sshkeys::pinned_key(cluster_dir, n.ssh.host, n.ssh.port).is_some() {
            report.already.push(n.name.clone());
        } else if let Some(id) = instance_ids.get(&n.name) {
            todo.push((n.name.clone(), id.clone(), n.ssh.host, n.ssh.port));
        }
    }
    let deadline = Instant::now() + s.opts.host_key_wait;
    let mut pins: Vec<PinnedKey> = Vec::new();
    loop {
        let found = console_round(s, todo.iter().map(|t| t.1.clone()).collect()).await;
        let mut done = vec![false; todo.len()];
        for (i, keys) in found {
            if keys.is_empty() {
                continue;
            }
            let (name, _, host, port) = &todo[i];
            pins.extend(keys.iter().map(|k| PinnedKey::new(*host, *port, k, name)));
            report.pinned.push(name.clone());
            done[i] = true;
        }
        let mut i = 0;
        todo.retain(|_| {
            i += 1;
            !done[i - 1]
        });
        if todo.is_empty() || Instant::now() + ROUND > deadline {
            break;
        }
        tokio::time::sleep(ROUND).await;
    }
    report.first_contact = todo.into_iter().map(|(n, ..)| n).collect();
    if !pins.is_empty() {
        if let Err(e) = sshkeys::pin_host_keys(cluster_dir, &pins) {
            eprintln!("warning: cannot pin the console-reported host keys: {e}");
            report.first_contact.append(&mut report.pinned);
        }
    }
    report.pinned.sort();
    report.first_contact.sort();
    report
}

/// One GetConsoleOutput per instance, `parallelism` in flight: `(index, keys)`.
async fn console_round(s: &Session, ids: Vec<String>) -> Vec<(usize, Vec<String>)> {
    let mut out = Vec::new();
    let mut next = ids.into_iter().enumerate();
    let mut set = JoinSet::new();
    loop {
        while set.len() < s.opts.parallelism.max(1) {
            let Some((i, id)) = next.next() else { break };
            let s = s.clone();
            set.spawn(async move { (i, console_keys(&s, &id).await) });
        }
        match set.join_next().await {
            None => break,
            Some(Ok(r)) => out.push(r),
            Some(Err(e)) => tracing::debug!("GetConsoleOutput task: {e}"),
        }
    }
    out
}

/// The keys in one instance's console output; none when it has no block (yet) or the call
/// failed (the fallback is first contact, never a failed provision).
async fn console_keys(s: &Session, instance_id: &str) -> Vec<String> {
    let out = match s
        .ec2()
        .get_console_output()
        .instance_id(instance_id)
        .latest(true)
        .send()
        .await
    {
        Ok(o) => o,
        Err(e) => {
            tracing::debug!("GetConsoleOutput {instance_id}: {e}");
            return Vec::new();
        }
    };
    let Some(b64) = out.output() else {
        return Vec::new();
    };
    let text = base64::engine::general_purpose::STANDARD
        .decode(b64.trim())
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    parse_console(&text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_cloud_init_block() {
        let console = "[   10.1] cloud-init[800]: Cloud-init v. 24.1 running\n\
            -----BEGIN SSH HOST KEY KEYS-----\n\
            ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTY= root@ip-10-0-0-1\n\
            ssh-ed25519 AAAAC3NzaC1lZDI1NTE5 root@ip-10-0-0-1\n\
            -----END SSH HOST KEY KEYS-----\n\
            [   11.0] cloud-init[800]: done\n";
        assert_eq!(
            parse_console(console),
            vec![
                "ecdsa-sha2-nistp256 AAAAE2VjZHNhLXNoYTItbmlzdHAyNTY=".to_string(),
                "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5".to_string()
            ]
        );
        assert!(parse_console("no keys here").is_empty());
        assert!(parse_console(&format!("{BEGIN}\nssh-ed25519 AAAA")).is_empty());
        // Not base64: ignored, not pinned.
        assert!(parse_console(&format!("{BEGIN}\nssh-ed25519 !!!\n{END}")).is_empty());
    }
}
