//! Semantic checks on a deserialized profile. Every problem is reported; none stops the others.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use ipnet::Ipv4Net;

use super::addressing::{pod_blocks, LOCAL_FIRST_HOST};
use super::diagnostic::Reporter;
use super::schema::*;
use crate::artifacts;

/// Name of the n-th control-plane node (1-based).
pub fn control_plane_node_name(i: u32) -> String {
    format!("controlplane-{i}")
}

/// Name of the n-th node (1-based) of a worker group.
pub fn worker_node_name(group: &str, i: u32) -> String {
    format!("{group}-{i}")
}

pub fn validate(p: &Profile, r: &mut Reporter) {
    check_name(p, r);
    check_provider(p, r);
    check_kubernetes(p, r);
    check_topology(p, r);
    check_network(p, r);
    check_pki(p, r);
    check_api_server(p, r);
    check_ssh(p, r);
    check_artifacts(p, r);
    check_gpu(p, r);
    check_training(p, r);
    check_monitoring(p, r);
    super::storage_check::check(p, r);
}

/// Prometheus durations: a number and a unit (`30s`, `15d`, `1h30m`), as Prometheus parses them.
fn is_prometheus_duration(s: &str) -> bool {
    let mut rest = s;
    if rest.is_empty() {
        return false;
    }
    while !rest.is_empty() {
        let digits = rest.chars().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 {
            return false;
        }
        rest = &rest[digits..];
        let Some(unit) = ["ms", "s", "m", "h", "d", "w", "y"]
            .iter()
            .find(|u| rest.starts_with(**u))
        else {
            return false;
        };
        rest = &rest[unit.len()..];
    }
    true
}

fn check_monitoring(p: &Profile, r: &mut Reporter) {
    let m = &p.monitoring;
    for (field, v) in [
        ("monitoring.retention", &m.retention),
        ("monitoring.scrapeInterval", &m.scrape_interval),
    ] {
        if !is_prometheus_duration(v) {
            r.error(
                field,
                "not a Prometheus duration",
                v,
                "a number and a unit: ms, s, m, h, d, w, y (e.g. 30s, 15d)",
            );
        }
    }
}

/// A component the cluster's Kubernetes is too old for is refused here, offline, naming both
/// versions; so is an empty or repeated operator list.
fn check_training(p: &Profile, r: &mut Reporter) {
    use super::training_floor::{KUEUE, TRAINER};
    let t = &p.training;
    if !t.enabled {
        return;
    }
    let version = &p.kubernetes.version;
    if let Some(ops) = &t.operators {
        if ops.is_empty() {
            r.error(
                "training.operators",
                "no training operator selected",
                "[]",
                "v1 and/or v2 (or training.enabled: false for no training stack)",
            );
        }
        for (i, op) in ops.iter().enumerate() {
            if ops[..i].contains(op) {
                r.error(
                    &format!("training.operators[{i}]"),
                    "operator listed twice",
                    op.as_str(),
                    "each of v1, v2 at most once",
                );
            }
            if *op == TrainingOperator::V2 {
                if let Some(why) = TRAINER.refusal(version) {
                    r.error(
                        &format!("training.operators[{i}]"),
                        why,
                        format!("v2 with kubernetes.version {version}"),
                        "v1 on this Kubernetes version, or a newer kubernetes.version",
                    );
                }
            }
        }
    }
    if t.kueue == Some(true) {
        if let Some(why) = KUEUE.refusal(version) {
            r.error(
                "training.kueue",
                why,
                format!("true with kubernetes.version {version}"),
                "false on this Kubernetes version, or a newer kubernetes.version",
            );
        }
    }
}

/// RFC 1123 label: lower-case alphanumerics and '-', starting and ending alphanumeric.
pub fn is_dns_label(s: &str, max: usize) -> bool {
    !s.is_empty()
        && s.len() <= max
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

pub fn is_dns_name(s: &str) -> bool {
    s.len() <= 253 && s.split('.').all(|l| is_dns_label(l, 63))
}

fn check_name(p: &Profile, r: &mut Reporter) {
    // Cloud resource names are `<cluster>-<node>`; GCP caps names at 63 characters.
    if !is_dns_label(&p.name, 30) {
        r.error(
            "name",
            "invalid cluster name",
            &p.name,
            "1-30 lower-case letters, digits and '-', starting and ending with a letter or digit",
        );
    }
}

fn check_provider(p: &Profile, r: &mut Reporter) {
    let kind = p.provider.kind;
    let need = |present: bool, section: &str, r: &mut Reporter| {
        if !present {
            r.error(
                "provider",
                format!(
                    "provider.kind is {} but provider.{section} is missing",
                    kind.as_str()
                ),
                "no provider.".to_string() + section + " section",
                format!("a provider.{section} section with the {section} settings"),
            );
        }
    };
    match kind {
        ProviderKind::Local => {
            let local = Ipv4Net::new(Ipv4Addr::new(198, 18, 0, 0), 15).unwrap_or_default();
            // Local nodes must live in the benchmark-testing range: traffic never leaves the host.
            if !local.contains(&p.network.node_cidr) {
                r.error(
                    "network.nodeCIDR",
                    "local nodes must use an address range reserved for testing",
                    p.network.node_cidr.to_string(),
                    "a range inside 198.18.0.0/15, e.g. 198.18.0.0/24",
                );
            }
        }
        ProviderKind::Static => {
            need(p.provider.static_hosts.is_some(), "static", r);
            if let Some(s) = &p.provider.static_hosts {
                if s.inventory.trim().is_empty() {
                    r.error(
                        "provider.static.inventory",
                        "empty inventory path",
                        "\"\"",
                        "the path of a hosts file",
                    );
                }
            }
        }
        ProviderKind::Aws => {
            need(p.provider.aws.is_some(), "aws", r);
            if let Some(aws) = &p.provider.aws {
                check_admin_cidrs("provider.aws.adminCIDRs", &aws.admin_cidrs, r);
                if let Some(region) = &aws.region {
                    if !is_dns_label(region, 32) {
                        r.error(
                            "provider.aws.region",
                            "invalid region",
                            region,
                            "an AWS region such as us-east-1",
                        );
                    }
                }
                for (i, z) in aws.zones.iter().enumerate() {
                    if let Some(region) = &aws.region {
                        if !z.starts_with(region.as_str()) {
                            r.error(
                                &format!("provider.aws.zones[{i}]"),
                                "availability zone is not in the profile's region",
                                z,
                                format!("a zone of {region}, e.g. {region}a"),
                            );
                        }
                    }
                }
                let nodes = total_nodes(p);
                if p.pod_routing() == Some(PodRouting::RouteTable)
                    && nodes > u64::from(aws.route_table_limit)
                {
                    r.error(
                        "network.podRouting",
                        format!(
                            "routeTable mode needs one VPC route per node: {nodes} nodes exceed the {} routes a route table holds",
                            aws.route_table_limit
                        ),
                        "routeTable",
                        format!(
                            "vxlan or hostRoutes (both work at any node count), or at most {} nodes (raise provider.aws.routeTableLimit only after AWS raised your quota)",
                            aws.route_table_limit
                        ),
                    );
                }
                check_machines(p, "aws", r);
            }
        }
        ProviderKind::Gcp => {
            need(p.provider.gcp.is_some(), "gcp", r);
            if let Some(gcp) = &p.provider.gcp {
                check_admin_cidrs("provider.gcp.adminCIDRs", &gcp.admin_cidrs, r);
                if let (Some(region), Some(zone)) = (&gcp.region, &gcp.zone) {
                    if !zone.starts_with(&format!("{region}-")) {
                        r.error(
                            "provider.gcp.zone",
                            "zone is not in the profile's region",
                            zone,
                            format!("a zone of {region}, e.g. {region}-a"),
                        );
                    }
                }
                if gcp.image.trim().is_empty() {
                    r.error(
                        "provider.gcp.image",
                        "empty boot image",
                        "\"\"",
                        "an image or image family URL",
                    );
                }
                check_machines(p, "gcp", r);
                for (i, g) in p.workers.iter().enumerate() {
                    if g.gpus_per_node > 0 {
                        if let Some(m) = &g.gcp {
                            if m.accelerator_type.is_none() {
                                r.error(
                                    &format!("workers[{i}].gcp"),
                                    "GPU workers on GCP need an accelerator type",
                                    "no acceleratorType",
                                    "acceleratorType, e.g. nvidia-h100-80gb or nvidia-tesla-a100",
                                );
                            }
                        }
                    }
                }
            }
        }
    }
}

/// The control plane and every worker group need a machine shape for the selected cloud.
fn check_machines(p: &Profile, cloud: &str, r: &mut Reporter) {
    let has = |aws: &Option<AwsMachine>, gcp: &Option<GcpMachine>| match cloud {
        "aws" => aws.is_some(),
        _ => gcp.is_some(),
    };
    let mut places = vec![(
        "controlPlane".to_string(),
        has(&p.control_plane.aws, &p.control_plane.gcp),
    )];
    for (i, g) in p.workers.iter().enumerate() {
        places.push((format!("workers[{i}]"), has(&g.aws, &g.gcp)));
    }
    let example = if cloud == "aws" {
        "instanceType, e.g. { instanceType: m6i.xlarge }"
    } else {
        "machineType, e.g. { machineType: n2-standard-4 }"
    };
    for (i, g) in p.workers.iter().enumerate() {
        if let Some(c) = g.aws.as_ref().and_then(|a| a.capacity_reservation.as_ref()) {
            if !is_capacity_reservation_id(&c.id) {
                r.error(
                    &format!("workers[{i}].aws.capacityReservation.id"),
                    "not a capacity reservation ID".to_string(),
                    &c.id,
                    "cr- followed by 8 or 17 lowercase hex digits, e.g. cr-0123456789abcdef0 (aws ec2 describe-capacity-reservations)",
                );
            }
        }
        if let Some(a) = g.aws.as_ref().filter(|a| a.efa) {
            if crate::profile::efa_layout::layout(&a.instance_type).is_none() {
                r.error(
                    &format!("workers[{i}].aws.efa"),
                    format!(
                        "EFA launch is not known for {}: k8sforge launches EFA interfaces by the network-card layout AWS documents per type",
                        a.instance_type
                    ),
                    &a.instance_type,
                    "an EFA layout k8sforge knows: p5.48xlarge, p5e.48xlarge (or efa: false)",
                );
            }
        }
    }
    for (path, present) in places {
        if !present {
            r.error(
                &path,
                format!(
                    "provider.kind is {cloud} but {path}.{cloud} (the machine shape) is missing"
                ),
                format!("no {cloud} section"),
                format!("a {cloud} section with {example}"),
            );
        }
    }
}

fn check_admin_cidrs(path: &str, cidrs: &[Ipv4Net], r: &mut Reporter) {
    if cidrs.is_empty() {
        r.error(
            path,
            "no admin CIDRs: nobody could reach the API or SSH",
            "[]",
            "one or more CIDRs of your office or VPN, e.g. [203.0.113.0/24]",
        );
    }
}

fn check_kubernetes(p: &Profile, r: &mut Reporter) {
    super::site_release::validate(&p.kubernetes.extra_releases, r);
    if !super::site_release::is_known(&p.kubernetes.version, &p.kubernetes.extra_releases) {
        r.error(
            "kubernetes.version",
            "unknown Kubernetes version",
            &p.kubernetes.version,
            format!(
                "one of {}{}",
                artifacts::RELEASES
                    .iter()
                    .map(|r| r.kubernetes)
                    .collect::<Vec<_>>()
                    .join(", "),
                p.kubernetes
                    .extra_releases
                    .iter()
                    .map(|r| format!(", {}", r.kubernetes))
                    .collect::<String>()
            ),
        );
    }
    if !is_dns_name(&p.kubernetes.cluster_domain) {
        r.error(
            "kubernetes.clusterDomain",
            "invalid cluster domain",
            &p.kubernetes.cluster_domain,
            "a DNS name such as cluster.local",
        );
    }
}

pub fn total_nodes(p: &Profile) -> u64 {
    u64::from(p.control_plane.count) + p.worker_count()
}

fn check_topology(p: &Profile, r: &mut Reporter) {
    let cp = p.control_plane.count;
    if cp == 0 {
        r.error(
            "controlPlane.count",
            "a cluster needs a control plane",
            "0",
            "1, 3 or 5 (odd, for etcd quorum)",
        );
    }
    let members = p.etcd_members();
    let etcd_path = if p.etcd.members.is_some() {
        "etcd.members"
    } else {
        "controlPlane.count"
    };
    if members == 0 || members.is_multiple_of(2) {
        r.error(
            etcd_path,
            format!(
                "an even etcd member count ({members}) tolerates no more failures than {} and risks split votes",
                members.saturating_sub(1)
            ),
            members.to_string(),
            "an odd number of etcd members: 1, 3, 5 or 7",
        );
    } else if members > 7 {
        r.error(
            etcd_path,
            "too many etcd members: writes slow down with every member",
            members.to_string(),
            "1, 3, 5 or 7",
        );
    }
    if members > cp && cp > 0 {
        r.error(
            "etcd.members",
            "etcd members are stacked on control-plane nodes: more members than control planes",
            format!("{members} members, {cp} control planes"),
            format!("at most {cp}"),
        );
    }

    // Every node name must be unique: control planes, then each worker group.
    let mut seen: BTreeMap<String, String> = BTreeMap::new();
    for i in 1..=cp.min(100) {
        seen.insert(control_plane_node_name(i), "controlPlane".to_string());
    }
    let mut group_names: BTreeMap<&str, usize> = BTreeMap::new();
    for (gi, g) in p.workers.iter().enumerate() {
        let path = format!("workers[{gi}].name");
        if !is_dns_label(&g.name, 40) {
            r.error(
                &path,
                "invalid worker group name",
                &g.name,
                "lower-case letters, digits and '-', at most 40 characters",
            );
        }
        if let Some(prev) = group_names.insert(&g.name, gi) {
            r.error(
                &path,
                format!("duplicate worker group name: workers[{prev}] is also named {:?}, so their node names collide", g.name),
                &g.name,
                "a name used by no other worker group",
            );
            continue;
        }
        // Only the first node of each group can collide across groups/control planes
        // (names are `<group>-<i>`), but a group named e.g. "controlplane" collides with them.
        for i in 1..=g.count.min(100) {
            let n = worker_node_name(&g.name, i);
            if let Some(owner) = seen.get(&n) {
                r.error(
                    &path,
                    format!("duplicate node name {n}: it is also a node of {owner}"),
                    &g.name,
                    "a group name whose node names (<name>-<index>) no other node uses",
                );
                break;
            }
            seen.insert(n, format!("workers[{gi}]"));
        }
        if g.gpus_per_node > 16 {
            r.error(
                &format!("workers[{gi}].gpusPerNode"),
                "more GPUs per node than any machine offers",
                g.gpus_per_node.to_string(),
                "0 to 16",
            );
        }
        for (key, value) in &g.labels {
            if !is_label_key(key) || value.len() > 63 {
                r.error(
                    &format!("workers[{gi}].labels"),
                    format!("invalid node label {key}={value}"),
                    format!("{key}={value}"),
                    "keys as [prefix/]name (name ≤ 63 chars of [A-Za-z0-9._-]), values ≤ 63 chars",
                );
            }
        }
        for (ti, t) in g.taints.iter().enumerate() {
            if !is_label_key(&t.key) {
                r.error(
                    &format!("workers[{gi}].taints[{ti}].key"),
                    "invalid taint key",
                    &t.key,
                    "[prefix/]name as for labels",
                );
            }
        }
    }
    if p.worker_count() == 0 {
        r.error(
            "workers",
            "no worker nodes: training pods would have nowhere to run",
            "0 workers",
            "at least one worker group with count ≥ 1",
        );
    }
}

fn is_label_key(key: &str) -> bool {
    let (prefix, name) = match key.rsplit_once('/') {
        Some((p, n)) => (Some(p), n),
        None => (None, key),
    };
    let name_ok = !name.is_empty()
        && name.len() <= 63
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
        && name.as_bytes()[0].is_ascii_alphanumeric()
        && name.as_bytes()[name.len() - 1].is_ascii_alphanumeric();
    name_ok && prefix.is_none_or(is_dns_name)
}

fn check_network(p: &Profile, r: &mut Reporter) {
    let n = &p.network;
    let nodes = total_nodes(p);

    match (p.provider.kind, n.pod_routing) {
        (ProviderKind::Gcp, Some(mode)) => r.error(
            "network.podRouting",
            "GCP routes pod CIDRs through alias IP ranges; there is no other mode",
            mode.as_str(),
            "no network.podRouting for provider kind gcp",
        ),
        (kind, Some(PodRouting::RouteTable)) if kind != ProviderKind::Aws => r.error(
            "network.podRouting",
            format!(
                "routeTable uses VPC route tables, which only provider kind aws has, not {}",
                kind.as_str()
            ),
            "routeTable",
            "hostRoutes or vxlan",
        ),
        _ => {}
    }

    // Pod range: one block of podPrefixPerNode per node (control planes register too).
    if n.pod_prefix_per_node < n.pod_cidr.prefix_len() || n.pod_prefix_per_node > 28 {
        r.error(
            "network.podPrefixPerNode",
            "per-node pod block must fit inside the pod range and hold some pods",
            format!("/{}", n.pod_prefix_per_node),
            format!("a prefix from /{} to /28", n.pod_cidr.prefix_len()),
        );
    } else {
        let blocks = pod_blocks(n.pod_cidr, n.pod_prefix_per_node);
        if blocks < nodes {
            let need_bits = 64 - (nodes.saturating_sub(1)).leading_zeros();
            let need_prefix = u32::from(n.pod_prefix_per_node).saturating_sub(need_bits);
            r.error(
                "network.podCIDR",
                format!(
                    "pod range too small: a /{} with /{} per node holds {blocks} nodes, not {nodes}",
                    n.pod_cidr.prefix_len(),
                    n.pod_prefix_per_node
                ),
                n.pod_cidr.to_string(),
                format!("a /{need_prefix} or larger range (or a longer podPrefixPerNode)"),
            );
        }
    }

    // The machines' own subnet must hold every node (local nodes start at .11).
    let offset = if p.provider.kind == ProviderKind::Local {
        LOCAL_FIRST_HOST
    } else {
        4
    };
    let node_hosts =
        (1u64 << (32 - u32::from(n.node_cidr.prefix_len()))).saturating_sub(offset + 1);
    if p.provider.kind != ProviderKind::Static && node_hosts < nodes {
        r.error(
            "network.nodeCIDR",
            format!("node subnet too small: it has room for {node_hosts} machines, the profile has {nodes}"),
            n.node_cidr.to_string(),
            "a larger subnet, e.g. a /20 for up to 4000 machines",
        );
    }

    let ranges = [
        ("network.nodeCIDR", n.node_cidr),
        ("network.podCIDR", n.pod_cidr),
        ("network.serviceCIDR", n.service_cidr),
    ];
    for (i, (pa, a)) in ranges.iter().enumerate() {
        for (pb, b) in &ranges[i + 1..] {
            if a.contains(&b.network()) || b.contains(&a.network()) {
                r.error(
                    pb,
                    format!("{pb} overlaps {pa} ({a}): traffic could not be routed"),
                    b.to_string(),
                    format!("a range disjoint from {a}"),
                );
            }
        }
    }

    if n.service_cidr.prefix_len() < 12 {
        r.error(
            "network.serviceCIDR",
            "service range too large for kube-apiserver",
            n.service_cidr.to_string(),
            "a prefix of /12 or longer",
        );
    }
    let first = first_host(n.service_cidr);
    if let Some(api) = n.api_service_ip {
        if api != first {
            r.error(
                "network.apiServiceIP",
                "the kubernetes Service always gets the first address of the service range",
                api.to_string(),
                format!("{first} (or leave apiServiceIP out)"),
            );
        }
    }
    if !n.service_cidr.contains(&n.dns_service_ip)
        || n.dns_service_ip == n.service_cidr.network()
        || n.dns_service_ip == n.service_cidr.broadcast()
    {
        r.error(
            "network.dnsServiceIP",
            format!(
                "the cluster DNS address is not inside the service range {}",
                n.service_cidr
            ),
            n.dns_service_ip.to_string(),
            format!("a host address of {} other than {first}", n.service_cidr),
        );
    } else if n.dns_service_ip == first {
        r.error(
            "network.dnsServiceIP",
            "the cluster DNS address is taken by the kubernetes Service",
            n.dns_service_ip.to_string(),
            format!(
                "a host address of {} other than {first}, e.g. .10",
                n.service_cidr
            ),
        );
    }
}

fn check_pki(p: &Profile, r: &mut Reporter) {
    let k = &p.pki;
    if k.ca_validity_days == 0 || k.ca_validity_days > 36500 {
        r.error(
            "pki.caValidityDays",
            "CA lifetime out of range",
            k.ca_validity_days.to_string(),
            "1 to 36500 days",
        );
    }
    if k.cert_validity_days == 0 || k.cert_validity_days > k.ca_validity_days {
        r.error(
            "pki.certValidityDays",
            "certificate lifetime must be positive and not outlive its CA",
            k.cert_validity_days.to_string(),
            format!("1 to {} days (pki.caValidityDays)", k.ca_validity_days),
        );
    }
}

fn check_api_server(p: &Profile, r: &mut Reporter) {
    let a = &p.api_server;
    if a.port == 0 {
        r.error(
            "apiServer.port",
            "invalid port",
            "0",
            "1 to 65535, usually 6443",
        );
    }
    if let Some(e) = &a.endpoint {
        if e.parse::<std::net::IpAddr>().is_err() && !is_dns_name(e) {
            r.error(
                "apiServer.endpoint",
                "invalid API endpoint",
                e,
                "a DNS name or IP address (no scheme, no port)",
            );
        }
    }
    for (i, s) in a.extra_sans.iter().enumerate() {
        let wildcard_ok = s.strip_prefix("*.").is_some_and(is_dns_name);
        if s.parse::<std::net::IpAddr>().is_err() && !is_dns_name(s) && !wildcard_ok {
            r.error(
                &format!("apiServer.extraSANs[{i}]"),
                "invalid subject alternative name",
                s,
                "a DNS name or an IP address",
            );
        }
    }
    if a.audit_log_max_age_days == 0 {
        r.error(
            "apiServer.auditLogMaxAgeDays",
            "audit logs would be deleted at once",
            "0",
            "1 or more days",
        );
    }
}

/// Each session is a thread with its own socket; beyond this the operator's machine runs out
/// of file descriptors before the nodes are the limit.
const MAX_SSH_CONCURRENCY: u32 = 4096;

fn check_ssh(p: &Profile, r: &mut Reporter) {
    if p.ssh.user.is_empty() || p.ssh.user.contains(char::is_whitespace) {
        r.error(
            "ssh.user",
            "invalid SSH user",
            &p.ssh.user,
            "a login name such as root or ubuntu",
        );
    }
    if p.ssh.port == 0 {
        r.error("ssh.port", "invalid SSH port", "0", "1 to 65535");
    }
    if let Some(c) = p.ssh.concurrency {
        if !(1..=MAX_SSH_CONCURRENCY).contains(&c) {
            r.error(
                "ssh.concurrency",
                "invalid number of SSH sessions in flight",
                c.to_string(),
                format!("1 to {MAX_SSH_CONCURRENCY}"),
            );
        }
    }
}

/// `artifacts`: delivery, seeds, registry mirrors and image overrides.
fn check_artifacts(p: &Profile, r: &mut Reporter) {
    let a = &p.artifacts;
    if a.delivery == Some(Delivery::Seed) {
        let total = total_nodes(p);
        let seeds = u64::from(a.seeds.unwrap_or(3));
        if seeds == 0 || seeds > total {
            r.error(
                "artifacts.seeds",
                "invalid number of seed nodes",
                seeds.to_string(),
                format!("1 to {total} (the cluster's node count)"),
            );
        }
    }
    if a.seed_port == Some(0) {
        r.error("artifacts.seedPort", "invalid port", "0", "1 to 65535");
    }
    let mut seen = std::collections::BTreeSet::new();
    for (i, m) in a.registry_mirrors.iter().enumerate() {
        let base = format!("artifacts.registryMirrors[{i}]");
        if !is_registry_host(&m.registry) {
            r.error(
                &format!("{base}.registry"),
                "invalid registry",
                &m.registry,
                "a registry host as images name it (registry.k8s.io, docker.io, nvcr.io, \
                 host:port), or _default for every registry",
            );
        } else if !seen.insert(m.registry.as_str()) {
            r.error(
                &format!("{base}.registry"),
                "registry listed twice",
                &m.registry,
                "one entry per registry (list several endpoints in it)",
            );
        }
        if m.endpoints.is_empty() {
            r.error(
                &format!("{base}.endpoints"),
                "no mirror endpoint",
                "[]",
                "one or more URLs such as https://mirror.example.com:5000",
            );
        }
        for (j, e) in m.endpoints.iter().enumerate() {
            if let Err(why) = check_endpoint(e) {
                r.error(
                    &format!("{base}.endpoints[{j}]"),
                    format!("invalid mirror endpoint: {why}"),
                    e,
                    "http(s)://host[:port][/path], no credentials, query or fragment",
                );
            }
        }
        if m.username.is_some() != m.password_file.is_some() {
            r.error(
                &base,
                "credentials need both username and passwordFile",
                if m.username.is_some() {
                    "username without passwordFile"
                } else {
                    "passwordFile without username"
                },
                "both username and passwordFile, or neither",
            );
        }
        if let Some(u) = &m.username {
            if u.is_empty() || u.contains(':') || u.contains(char::is_control) {
                r.error(
                    &format!("{base}.username"),
                    "invalid user name",
                    u,
                    "a non-empty name without ':' or control characters",
                );
            }
        }
        for (field, f) in [("caFile", &m.ca_file), ("passwordFile", &m.password_file)] {
            if let Some(f) = f {
                if !std::path::Path::new(f).is_file() {
                    r.error(
                        &format!("{base}.{field}"),
                        "file not found",
                        f,
                        "a readable file on this machine",
                    );
                }
            }
        }
    }
    for ((field, o), image) in a.images.all().into_iter().zip(artifacts::ClusterImage::ALL) {
        if let Some(reference) = o {
            if !artifacts::images::is_digest_pinned(reference) {
                r.error(
                    &format!("artifacts.images.{field}"),
                    "image reference is not pinned by digest",
                    reference,
                    format!(
                        "name[:tag]@sha256:<64 hex digits>, e.g. {}",
                        artifacts::images::ImageRefs::defaults(
                            artifacts::release(crate::artifacts::DEFAULT_KUBERNETES_VERSION)
                                .unwrap_or(&artifacts::RELEASES[0])
                        )
                        .get(image)
                    ),
                );
            }
        }
    }
}

/// A registry host as image references name it: `_default`, or a DNS name / IPv4 address with
/// an optional port.
fn is_registry_host(s: &str) -> bool {
    if s == "_default" {
        return true;
    }
    let (host, port) = match s.rsplit_once(':') {
        Some((h, p)) => (h, Some(p)),
        None => (s, None),
    };
    let port_ok = port.is_none_or(|p| p.parse::<u16>().is_ok_and(|n| n > 0));
    let host_ok = host.parse::<std::net::Ipv4Addr>().is_ok()
        || (host.contains('.') || host == "localhost") && is_dns_name(host);
    port_ok && host_ok
}

fn check_endpoint(e: &str) -> Result<(), &'static str> {
    let rest = e
        .strip_prefix("https://")
        .or_else(|| e.strip_prefix("http://"))
        .ok_or("the scheme must be http:// or https://")?;
    let host = rest.split('/').next().unwrap_or("");
    if host.is_empty() {
        return Err("no host");
    }
    if host.contains('@') {
        return Err("credentials in the URL (use username and passwordFile)");
    }
    if e.contains(['?', '#']) || e.contains(char::is_whitespace) || e.contains('"') {
        return Err("query, fragment, quotes or spaces");
    }
    if !is_registry_host(host) {
        return Err("not a host[:port]");
    }
    Ok(())
}
fn check_gpu(p: &Profile, r: &mut Reporter) {
    let g = &p.gpu;
    // A branch is a major driver number (e.g. 580): it names packages and is compared with the
    // version nvidia-smi reports, so anything else would silently match nothing.
    let b = &g.driver.branch;
    if b.len() != 3 || !b.bytes().all(|c| c.is_ascii_digit()) {
        r.error(
            "gpu.driver.branch",
            "invalid NVIDIA driver branch",
            b,
            "a three-digit driver branch such as 580 (the long-term R580 branch)",
        );
    }
    let v = &g.container_toolkit.version;
    let parts: Vec<&str> = v.split('.').collect();
    if parts.len() != 3
        || parts
            .iter()
            .any(|x| x.is_empty() || !x.bytes().all(|c| c.is_ascii_digit()))
    {
        r.error(
            "gpu.containerToolkit.version",
            "invalid NVIDIA container toolkit version",
            v,
            "a release version such as 1.18.0",
        );
    }
    let repo = &g.container_toolkit.apt_repository;
    if !(repo.starts_with("https://") || repo.starts_with("http://") || repo.starts_with("file:/"))
        || repo.contains(['\n', '[', ']', '\'', '"'])
    {
        r.error(
            "gpu.containerToolkit.aptRepository",
            "invalid apt repository",
            repo,
            "an apt URI and suite, e.g. `https://host/path/deb/$(ARCH) /` (no options, no quotes)",
        );
    }
    if let Some(cmd) = &g.health.preflight_command {
        if cmd.trim().is_empty() || cmd.contains('\n') {
            r.error(
                "gpu.health.preflightCommand",
                "invalid preflight command",
                cmd,
                "one non-empty shell command line (unset: k8sforge's own GPU preflight)",
            );
        }
    }
}

/// `cr-` and 8 or 17 lowercase hex digits (EC2 resource ID formats).
fn is_capacity_reservation_id(id: &str) -> bool {
    id.strip_prefix("cr-").is_some_and(|h| {
        (h.len() == 8 || h.len() == 17)
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}
