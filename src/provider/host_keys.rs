//! Host keys a cloud provider reports for its instances, pinned in `<cluster_dir>/known_hosts`
//! before the first SSH connection, so that the first contact is already checked and a node
//! presenting another key is refused by name by the SSH layer. One loop for every provider:
//! each provider supplies only the call that asks for one instance's keys (AWS: the console
//! output; GCP: the `hostkeys/` guest attributes).
//!
//! Nodes already pinned are left as they are (never re-pinned from the provider: a key that
//! changed is for the operator to judge). Nodes whose keys are not there yet are asked again
//! every `round` within `wait` (one call per node and round, `parallelism` in flight); nodes
//! still without keys, or whose provider cannot report them, are left to first contact.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use tokio::task::JoinSet;

use crate::inventory::Inventory;
use crate::sshkeys::{self, PinnedKey};

/// What the provider said about one instance's host keys.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reported {
    /// The public keys (`type base64`, no comment).
    Keys(Vec<String>),
    /// Not there yet (the instance is still booting): worth asking again within the wait.
    NotYet,
    /// The provider will not report them for this instance (why, in a few words): first
    /// contact at once, no further asking.
    Unavailable(String),
}

/// How long and how wide to ask.
#[derive(Debug, Clone, Copy)]
pub struct Polling {
    /// Total time to wait for keys that are not there yet; zero: one look.
    pub wait: Duration,
    /// Between two rounds for the nodes still without keys.
    pub round: Duration,
    /// Calls in flight at once.
    pub parallelism: usize,
}

/// What happened per node.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct HostKeyReport {
    /// Nodes pinned from the provider now.
    pub pinned: Vec<String>,
    /// Nodes already pinned before (left as they are).
    pub already: Vec<String>,
    /// Nodes without keys within the wait: first contact will pin them.
    pub first_contact: Vec<String>,
    /// Nodes the provider cannot report keys for, with the reason: first contact as well.
    pub unavailable: Vec<(String, String)>,
}

/// Pin the provider-reported host keys of every node of `inv` not pinned yet. `instances`:
/// node name → the provider's handle for it (instance id or name); `ask` makes the one call
/// for one instance. Never fails: what cannot be pinned is left to first contact.
pub async fn pin_reported<F, Fut>(
    inv: &Inventory,
    instances: &BTreeMap<String, String>,
    cluster_dir: &Path,
    polling: Polling,
    ask: F,
) -> HostKeyReport
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Reported> + Send + 'static,
{
    let mut report = HostKeyReport::default();
    let mut todo: Vec<(String, String, IpAddr, u16)> = Vec::new();
    for n in &inv.nodes {
        if sshkeys::pinned_key(cluster_dir, n.ssh.host, n.ssh.port).is_some() {
            report.already.push(n.name.clone());
        } else if let Some(id) = instances.get(&n.name) {
            todo.push((n.name.clone(), id.clone(), n.ssh.host, n.ssh.port));
        }
    }
    let deadline = Instant::now() + polling.wait;
    let mut pins: Vec<PinnedKey> = Vec::new();
    while !todo.is_empty() {
        let answers = round(&ask, polling.parallelism, &todo).await;
        let mut keep = Vec::new();
        for (t, answer) in todo.into_iter().zip(answers) {
            let (name, _, host, port) = &t;
            match answer {
                Reported::Keys(keys) if !keys.is_empty() => {
                    pins.extend(keys.iter().map(|k| PinnedKey::new(*host, *port, k, name)));
                    report.pinned.push(name.clone());
                }
                Reported::Unavailable(why) => report.unavailable.push((name.clone(), why)),
                Reported::Keys(_) | Reported::NotYet => keep.push(t),
            }
        }
        todo = keep;
        if todo.is_empty() || Instant::now() + polling.round > deadline {
            break;
        }
        tokio::time::sleep(polling.round).await;
    }
    report.first_contact = todo.into_iter().map(|(n, ..)| n).collect();
    if !pins.is_empty() {
        if let Err(e) = sshkeys::pin_host_keys(cluster_dir, &pins) {
            tracing::warn!("cannot pin the provider-reported host keys: {e}");
            report.first_contact.append(&mut report.pinned);
        }
    }
    report.pinned.sort();
    report.first_contact.sort();
    report.unavailable.sort();
    report
}

/// One call per node of `todo`, `parallelism` in flight; answers in `todo`'s order (a call
/// whose task failed counts as not there yet).
async fn round<F, Fut>(
    ask: &F,
    parallelism: usize,
    todo: &[(String, String, IpAddr, u16)],
) -> Vec<Reported>
where
    F: Fn(String) -> Fut,
    Fut: Future<Output = Reported> + Send + 'static,
{
    let mut out = vec![Reported::NotYet; todo.len()];
    let mut next = todo.iter().map(|t| t.1.clone()).enumerate();
    let mut set = JoinSet::new();
    loop {
        while set.len() < parallelism.max(1) {
            let Some((i, id)) = next.next() else { break };
            let call = ask(id);
            set.spawn(async move { (i, call.await) });
        }
        match set.join_next().await {
            None => break,
            Some(Ok((i, r))) => out[i] = r,
            Some(Err(e)) => tracing::debug!("host key call: {e}"),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::inventory::{ApiEndpoint, Node, Role, SshEndpoint};
    use std::net::Ipv4Addr;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    fn inv(names: &[&str]) -> Inventory {
        Inventory {
            cluster: "c".into(),
            nodes: names
                .iter()
                .enumerate()
                .map(|(i, n)| {
                    let ip = Ipv4Addr::new(198, 18, 0, 10 + i as u8);
                    Node {
                        name: n.to_string(),
                        roles: [Role::Worker].into(),
                        internal_ip: ip,
                        external_ip: None,
                        pod_cidr: "10.200.0.0/24".parse().unwrap(),
                        ssh: SshEndpoint {
                            host: IpAddr::V4(ip),
                            port: 22,
                            user: "ubuntu".into(),
                            key: None,
                            bastion: None,
                        },
                        group: "worker".into(),
                        gpus: 0,
                        labels: Default::default(),
                        taints: vec![],
                    }
                })
                .collect(),
            api: ApiEndpoint {
                host: "198.18.0.1".into(),
                port: 6443,
                addresses: vec![],
            },
            planned: false,
        }
    }

    const K1: &str =
        "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIOh0c3QxAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA";

    #[tokio::test]
    async fn keys_pinned_not_yet_polled_unavailable_left_to_first_contact() {
        let dir = tempfile::tempdir().unwrap();
        let inv = inv(&["a", "b", "c"]);
        let ids: BTreeMap<String, String> = ["a", "b", "c"]
            .iter()
            .map(|n| (n.to_string(), format!("i-{n}")))
            .collect();
        let calls = Arc::new(AtomicUsize::new(0));
        let c = calls.clone();
        let polling = Polling {
            wait: Duration::from_millis(50),
            round: Duration::from_millis(10),
            parallelism: 2,
        };
        let report = pin_reported(&inv, &ids, dir.path(), polling, move |id| {
            c.fetch_add(1, Ordering::SeqCst);
            async move {
                match id.as_str() {
                    "i-a" => Reported::Keys(vec![K1.to_string()]),
                    "i-b" => Reported::NotYet,
                    _ => Reported::Unavailable("not enabled".into()),
                }
            }
        })
        .await;
        assert_eq!(report.pinned, vec!["a"]);
        assert_eq!(report.first_contact, vec!["b"]);
        assert_eq!(report.unavailable, vec![("c".into(), "not enabled".into())]);
        // a and c once; b every round of the wait (at least twice).
        assert!(calls.load(Ordering::SeqCst) >= 4, "{calls:?}");
        let kh = std::fs::read_to_string(sshkeys::known_hosts_path(dir.path())).unwrap();
        assert_eq!(kh, format!("198.18.0.10 {K1} a\n"));

        // A second run asks nobody about a (already pinned) and does not rewrite it.
        let again = pin_reported(&inv, &ids, dir.path(), polling, |id| async move {
            assert_ne!(id, "i-a", "a is pinned already");
            Reported::NotYet
        })
        .await;
        assert_eq!(again.already, vec!["a"]);
        assert!(again.pinned.is_empty());
    }
}
