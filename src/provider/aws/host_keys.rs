//! Host keys from the provider: cloud-init prints every SSH host public key of a new instance to
//! its console between `-----BEGIN SSH HOST KEY KEYS-----` and `-----END SSH HOST KEY KEYS-----`,
//! and EC2 returns that console text (GetConsoleOutput). Keys read there are pinned before the
//! first SSH connection, so the first contact is already checked; a node presenting another key
//! is refused by name by the SSH layer. The console appears about a minute after boot: nodes
//! without keys are asked again every few seconds within `Options::host_key_wait` (one call per
//! node and round, `parallelism` in flight), then fall back to first contact, saying so — the
//! loop is `provider::host_keys`, shared with GCP; this module has only the EC2 call.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use base64::Engine;

use super::session::Session;
use crate::inventory::Inventory;
pub use crate::provider::host_keys::HostKeyReport;
use crate::provider::host_keys::{pin_reported, Polling, Reported};

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

/// Pin the console-reported host keys of every node of `inv` not pinned yet
/// (`instance_ids`: node name → instance id), through the providers' one pinning loop.
pub async fn pin_from_console(
    s: &Session,
    inv: &Inventory,
    instance_ids: &BTreeMap<String, String>,
    cluster_dir: &Path,
) -> HostKeyReport {
    let polling = Polling {
        wait: s.opts.host_key_wait,
        round: ROUND,
        parallelism: s.opts.parallelism,
    };
    pin_reported(inv, instance_ids, cluster_dir, polling, |id| {
        let s = s.clone();
        async move {
            // No block yet and a failed call look the same: ask again within the wait.
            let keys = console_keys(&s, &id).await;
            if keys.is_empty() {
                Reported::NotYet
            } else {
                Reported::Keys(keys)
            }
        }
    })
    .await
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
