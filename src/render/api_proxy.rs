//! The node-local API endpoint (kubespray's model, with the kernel as the balancer): on every
//! node that runs pods but no apiserver, kubelet and kube-proxy dial `https://127.0.0.1:<port>`
//! exactly as they do on a control plane (where the apiserver itself listens there), and an
//! iptables DNAT in the node's `nat OUTPUT` spreads those connections over every apiserver's
//! cluster address, round robin. A small watcher (`k8sforge-api-proxy.service`, POSIX sh + curl +
//! iptables, all already on the node) asks each apiserver's `/readyz` every two seconds with the
//! cluster CA and rewrites the DNAT chain atomically (`iptables-restore --noflush`) when the set of
//! ready apiservers changes; when none answers it keeps all of them (fail open).
//!
//! Why this and not a proxy process: nothing is downloaded or pushed (a few KiB of script, the
//! node already has iptables for kube-proxy and curl for fetching artifacts); there is no
//! userspace hop or process whose death cuts every kubelet off (existing connections live in
//! conntrack; if the watcher dies the last good set stays); and the cloud load balancer is never
//! in the kubelet's path, so the AWS NLB hairpin (a target reaching itself through the NLB with
//! client-IP preservation is dropped) cannot bite and 1000 kubelets do not ride on the LB.
//! What it costs: a stopped apiserver is taken out within about one probe round (2–4 s); until
//! then a share of *new* connections to it fail and are retried by the clients. Loopback DNAT
//! needs `route_localnet`, as kube-proxy's localhost NodePorts do; the watcher also installs the
//! guard kube-proxy uses (drop packets for 127/8 that did not come from loopback).

use super::bundle::BundleFile;
use crate::inventory::{Node, Role};

pub const API_PROXY_UNIT: &str = "k8sforge-api-proxy.service";
pub const API_PROXY_SCRIPT: &str = "/usr/local/lib/k8sforge/api-proxy.sh";
/// The nat chain the watcher owns.
pub const CHAIN: &str = "K8SFORGE-API";
/// Seconds between two probe rounds.
pub const PROBE_INTERVAL_S: u32 = 2;

/// Whether `node` gets the node-local balancer: it runs kubelet but no apiserver.
pub fn wanted(node: &Node) -> bool {
    node.has(Role::Worker) && !node.has(Role::ControlPlane)
}

/// The script and unit for `node`, or nothing when it has its own apiserver.
/// `backends`: every control plane's cluster address.
pub fn files(node: &Node, backends: &[String], api_port: u16, ca_path: &str) -> Vec<BundleFile> {
    if !wanted(node) {
        return Vec::new();
    }
    let script = script(&node.name, backends, api_port, ca_path);
    let unit = format!(
        "# Rendered by k8sforge for {node}; changes are overwritten on the next `up`.\n\
         [Unit]\n\
         Description=k8sforge node-local API endpoint 127.0.0.1:{api_port} -> {list}\n\
         After=network-online.target\n\
         Wants=network-online.target\n\
         Before=kubelet.service kube-proxy.service\n\
         \n\
         [Service]\n\
         ExecStart={API_PROXY_SCRIPT}\n\
         Restart=always\n\
         RestartSec=2\n\
         \n\
         [Install]\n\
         WantedBy=multi-user.target\n",
        node = node.name,
        list = backends.join(" ")
    );
    vec![
        BundleFile {
            path: API_PROXY_SCRIPT.to_string(),
            mode: 0o755,
            owner: "root:root".into(),
            content: script.into_bytes(),
            restarts: vec![API_PROXY_UNIT.to_string()],
        },
        BundleFile {
            path: format!("/etc/systemd/system/{API_PROXY_UNIT}"),
            mode: 0o644,
            owner: "root:root".into(),
            content: unit.into_bytes(),
            restarts: vec![API_PROXY_UNIT.to_string()],
        },
    ]
}

fn script(node: &str, backends: &[String], port: u16, ca: &str) -> String {
    format!(
        r#"#!/bin/sh
# Rendered by k8sforge for {node}: the node-local API endpoint 127.0.0.1:{port}, DNAT to every
# ready apiserver (see k8sforge's render/api_proxy.rs). `api-proxy.sh remove` takes it all out.
set -u
PORT={port}
BACKENDS="{backends}"
CA={ca}
CHAIN={CHAIN}
INTERVAL={PROBE_INTERVAL_S}

jump() {{ iptables -w -t nat "$1" OUTPUT -d 127.0.0.1/32 -p tcp --dport "$PORT" -j "$CHAIN"; }}
masq() {{ iptables -w -t nat "$1" POSTROUTING -m conntrack --ctstate DNAT --ctorigdst 127.0.0.1 --ctorigdstport "$PORT" -j MASQUERADE; }}
guard() {{ iptables -w -t filter "$1" INPUT ! -i lo -d 127.0.0.0/8 -m conntrack ! --ctstate RELATED,ESTABLISHED,DNAT -j DROP; }}

if [ "${{1:-}}" = remove ]; then
    while jump -D 2>/dev/null; do :; done
    while masq -D 2>/dev/null; do :; done
    while guard -D 2>/dev/null; do :; done
    iptables -w -t nat -F "$CHAIN" 2>/dev/null
    iptables -w -t nat -X "$CHAIN" 2>/dev/null
    exit 0
fi

# Connections to 127.0.0.1 may leave the host only with route_localnet (as kube-proxy sets it).
if ! sysctl -qw net.ipv4.conf.all.route_localnet=1; then
    echo "api-proxy: cannot set net.ipv4.conf.all.route_localnet=1" >&2
    exit 1
fi
iptables -w -t nat -N "$CHAIN" 2>/dev/null || true
jump -C 2>/dev/null || jump -I 1 || exit 1
masq -C 2>/dev/null || masq -I 1 || exit 1
guard -C 2>/dev/null || guard -I 1 || exit 1

# Replace the chain in one commit: round robin over the arguments (nat rules see only the first
# packet of a connection, so `nth` counts connections).
program() {{
    n=$#
    {{
        echo "*nat"
        echo ":$CHAIN - [0:0]"
        for b in "$@"; do
            if [ "$n" -gt 1 ]; then
                echo "-A $CHAIN -p tcp -m statistic --mode nth --every $n --packet 0 -j DNAT --to-destination $b:$PORT"
            else
                echo "-A $CHAIN -p tcp -j DNAT --to-destination $b:$PORT"
            fi
            n=$((n - 1))
        done
        echo COMMIT
    }} | iptables-restore -w --noflush
}}

ready() {{
    [ "$(curl -s --cacert "$CA" --connect-timeout 1 --max-time 2 -o /dev/null -w '%{{http_code}}' "https://$1:$PORT/readyz" 2>/dev/null)" = 200 ]
}}

current=
while :; do
    up=
    for b in $BACKENDS; do
        if ready "$b"; then up="$up $b"; fi
    done
    up=${{up# }}
    # None ready (cluster starting, or the probe itself failing): keep every apiserver.
    [ -n "$up" ] || up=$BACKENDS
    if [ "$up" != "$current" ]; then
        # shellcheck disable=SC2086
        if program $up; then
            echo "api-proxy: 127.0.0.1:$PORT -> $up"
            current=$up
        else
            echo "api-proxy: iptables-restore failed" >&2
        fi
    fi
    sleep "$INTERVAL"
done
"#,
        backends = backends.join(" "),
        CHAIN = CHAIN,
        PROBE_INTERVAL_S = PROBE_INTERVAL_S,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_robin_rules_cover_every_backend() {
        let s = script("w", &["10.0.0.5".into(), "10.0.0.6".into()], 6443, "/ca");
        assert!(s.contains(r#"BACKENDS="10.0.0.5 10.0.0.6""#), "{s}");
        assert!(s.contains("--mode nth --every $n --packet 0"), "{s}");
        assert!(s.contains("--ctorigdstport \"$PORT\" -j MASQUERADE"), "{s}");
    }
}
