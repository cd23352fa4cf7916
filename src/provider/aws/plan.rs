//! What the cluster needs on AWS, computed from the profile and the planned inventory alone:
//! subnets per zone, security-group rules, and which node goes into which launch batch.
//! Pure functions, so the shape of the infrastructure can be checked without a server.

use std::collections::BTreeSet;

use ipnet::Ipv4Net;

use super::error::AwsError;
use crate::inventory::{Inventory, Role};
use crate::profile::schema::CapacityReservation;
use crate::profile::{AmiLookup, PodRouting, Profile};

pub use super::config::MAX_BATCH;
/// Addresses AWS reserves in every subnet (network, router, DNS, future, broadcast).
const SUBNET_RESERVED: u64 = 5;
/// Free addresses an NLB needs in each subnet it is placed in.
const NLB_ADDRESSES: u64 = 8;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubnetPlan {
    pub zone: String,
    pub cidr: Ipv4Net,
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Source {
    Cidr(Ipv4Net),
    /// The nodes' own security group.
    SelfGroup,
}

/// One ingress rule; protocol "-1" (all) has ports -1.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    pub protocol: String,
    pub from: i32,
    pub to: i32,
    pub source: Source,
}

impl Rule {
    fn tcp(port: u16, source: Source) -> Rule {
        Rule {
            protocol: "tcp".into(),
            from: i32::from(port),
            to: i32::from(port),
            source,
        }
    }
    fn all(source: Source) -> Rule {
        Rule {
            protocol: "-1".into(),
            from: -1,
            to: -1,
            source,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodePlan {
    pub name: String,
    /// Worker group name, or `controlPlane`.
    pub group: String,
    /// 1-based position in its group: with the batch tag, this maps instances to names.
    pub index: u32,
    pub role: Role,
    pub instance_type: String,
    pub root_gib: u32,
    pub zone: usize,
    pub pod_cidr: Ipv4Net,
    /// Launched with EFA interfaces in the cluster placement group.
    pub efa: bool,
    /// The group's capacity reservation or Capacity Block.
    pub capacity: Option<CapacityReservation>,
}

/// One RunInstances call: contiguous nodes of one group, one instance type, one subnet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Batch {
    pub group: String,
    pub first: u32,
    pub count: u32,
    pub role: Role,
    pub instance_type: String,
    pub root_gib: u32,
    pub zone: usize,
    pub nodes: Vec<String>,
    /// EFA interfaces and the cluster placement group (see efa.rs).
    pub efa: bool,
    pub capacity: Option<CapacityReservation>,
}

impl Batch {
    /// Value of the batch tag: `<group>/<first index>`.
    pub fn tag(&self) -> String {
        batch_tag(&self.group, self.first)
    }

    /// Human name: `gpu-1..gpu-500 (500 x p5.48xlarge in us-east-1a)`.
    pub fn describe(&self, zones: &[SubnetPlan]) -> String {
        let zone = zones.get(self.zone).map(|z| z.zone.as_str()).unwrap_or("?");
        format!(
            "{}..{} ({} x {} in {})",
            self.nodes.first().map(String::as_str).unwrap_or("?"),
            self.nodes.last().map(String::as_str).unwrap_or("?"),
            self.count,
            self.instance_type,
            zone
        )
    }
}

pub fn batch_tag(group: &str, first: u32) -> String {
    format!("{group}/{first}")
}

pub fn parse_batch_tag(v: &str) -> Option<(&str, u32)> {
    let (g, i) = v.rsplit_once('/')?;
    Some((g, i.parse().ok()?))
}

#[derive(Debug, Clone)]
pub struct AwsPlan {
    pub cluster: String,
    pub region: String,
    pub vpc_cidr: Ipv4Net,
    pub subnets: Vec<SubnetPlan>,
    pub rules: BTreeSet<Rule>,
    pub nodes: Vec<NodePlan>,
    pub api_port: u16,
    pub ami: AmiLookup,
    pub routing: PodRouting,
    pub bastion: Option<String>,
}

impl AwsPlan {
    pub fn node(&self, group: &str, index: u32) -> Option<&NodePlan> {
        self.nodes
            .iter()
            .find(|n| n.group == group && n.index == index)
    }
}

pub fn region_of(profile: &Profile) -> Option<String> {
    profile.provider.aws.as_ref().and_then(|a| a.region.clone())
}

pub fn plan(profile: &Profile, planned: &Inventory, region: &str) -> Result<AwsPlan, AwsError> {
    let aws =
        profile.provider.aws.as_ref().ok_or_else(|| {
            AwsError::Preflight("provider.aws is missing from the profile".into())
        })?;
    let zones: Vec<String> = if aws.zones.is_empty() {
        vec![format!("{region}a")]
    } else {
        aws.zones.clone()
    };
    // AWS profiles always have one (VXLAN by default).
    let routing = profile.pod_routing().unwrap_or(PodRouting::Vxlan);
    if zones.len() > 1 && routing == PodRouting::HostRoutes {
        return Err(AwsError::Preflight(format!(
            "network.podRouting: hostRoutes needs every node in one subnet, but provider.aws.zones lists {} zones; use one zone, or vxlan (any subnets), or routeTable for small clusters",
            zones.len()
        )));
    }
    let vpc_cidr = profile.network.node_cidr;
    if !(16..=28).contains(&vpc_cidr.prefix_len()) {
        return Err(AwsError::Preflight(format!(
            "network.nodeCIDR {vpc_cidr}: a VPC's range must be between /16 and /28"
        )));
    }
    let subnets = split(vpc_cidr, &zones)?;

    let mut nodes = Vec::new();
    let mut per_group: std::collections::BTreeMap<String, Vec<&crate::inventory::Node>> =
        Default::default();
    for n in &planned.nodes {
        per_group.entry(n.group.clone()).or_default().push(n);
    }
    for n in &planned.nodes {
        let members = &per_group[&n.group];
        let pos = members.iter().position(|m| m.name == n.name).unwrap_or(0);
        let (role, machine) = if n.has(Role::ControlPlane) {
            (Role::ControlPlane, profile.control_plane.aws.as_ref())
        } else {
            (
                Role::Worker,
                profile
                    .workers
                    .iter()
                    .find(|g| g.name == n.group)
                    .and_then(|g| g.aws.as_ref()),
            )
        };
        let machine = machine.ok_or_else(|| {
            AwsError::Preflight(format!(
                "node {} (group {}) has no aws machine section in the profile",
                n.name, n.group
            ))
        })?;
        let efa = machine.efa && super::efa::layout(&machine.instance_type).is_some();
        nodes.push(NodePlan {
            name: n.name.clone(),
            group: n.group.clone(),
            index: pos as u32 + 1,
            role,
            instance_type: machine.instance_type.clone(),
            root_gib: machine.root_volume_gib,
            // Contiguous blocks per zone keep each batch inside one subnet. EFA instances go
            // into the cluster placement group, which lives in one zone: the first.
            zone: if efa {
                0
            } else {
                pos * zones.len() / members.len().max(1)
            },
            pod_cidr: n.pod_cidr,
            efa,
            capacity: machine.capacity_reservation.clone(),
        });
    }
    for (i, s) in subnets.iter().enumerate() {
        let here = nodes.iter().filter(|n| n.zone == i).count() as u64;
        let room = (1u64 << (32 - u32::from(s.cidr.prefix_len())))
            .saturating_sub(SUBNET_RESERVED + NLB_ADDRESSES);
        if here > room {
            return Err(AwsError::Preflight(format!(
                "network.nodeCIDR {vpc_cidr}: subnet {} in {} has room for {room} machines, {here} are planned there; use a larger nodeCIDR",
                s.cidr, s.zone
            )));
        }
    }

    let port = profile.api_server.port;
    let mut rules = BTreeSet::new();
    for c in &aws.admin_cidrs {
        rules.insert(Rule::tcp(22, Source::Cidr(*c)));
        rules.insert(Rule::tcp(port, Source::Cidr(*c)));
    }
    // Everything between the cluster's machines.
    rules.insert(Rule::all(Source::SelfGroup));
    // Routed pod traffic keeps pod source addresses (no SNAT, source/destination check off),
    // which a group reference does not match. VXLAN needs no such rule: its outer packets
    // (UDP 4789) go between node addresses, which the group rule above admits.
    if routing != PodRouting::Vxlan {
        rules.insert(Rule::all(Source::Cidr(profile.network.pod_cidr)));
    }
    // The NLB's health checks and forwarded connections come from its addresses in the subnets.
    rules.insert(Rule::tcp(port, Source::Cidr(vpc_cidr)));

    Ok(AwsPlan {
        cluster: profile.name.clone(),
        region: region.to_string(),
        vpc_cidr,
        subnets,
        rules,
        nodes,
        api_port: port,
        ami: aws.ami.clone(),
        routing,
        bastion: aws.bastion.clone(),
    })
}

/// One subnet per zone: the node range itself for one zone, else equal power-of-two parts.
fn split(range: Ipv4Net, zones: &[String]) -> Result<Vec<SubnetPlan>, AwsError> {
    if zones.len() == 1 {
        return Ok(vec![SubnetPlan {
            zone: zones[0].clone(),
            cidr: range,
        }]);
    }
    let bits = (zones.len() as u32).next_power_of_two().trailing_zeros() as u8;
    let prefix = range.prefix_len() + bits;
    if prefix > 28 {
        return Err(AwsError::Preflight(format!(
            "network.nodeCIDR {range} is too small to split into {} zone subnets (each must be /28 or larger)",
            zones.len()
        )));
    }
    let parts: Vec<Ipv4Net> = range
        .subnets(prefix)
        .map_err(|e| AwsError::Preflight(format!("network.nodeCIDR {range}: {e}")))?
        .collect();
    Ok(zones
        .iter()
        .zip(parts)
        .map(|(z, c)| SubnetPlan {
            zone: z.clone(),
            cidr: c,
        })
        .collect())
}

/// Launch batches for the nodes that do not exist yet: runs of consecutive indexes of one group
/// in one zone, at most `max` each.
pub fn batches(missing: &[&NodePlan], max: usize) -> Vec<Batch> {
    let mut out: Vec<Batch> = Vec::new();
    for n in missing {
        if let Some(b) = out.last_mut() {
            if b.group == n.group
                && b.zone == n.zone
                && b.instance_type == n.instance_type
                && b.first + b.count == n.index
                && (b.count as usize) < max
            {
                b.count += 1;
                b.nodes.push(n.name.clone());
                continue;
            }
        }
        out.push(Batch {
            group: n.group.clone(),
            first: n.index,
            count: 1,
            role: n.role,
            instance_type: n.instance_type.clone(),
            root_gib: n.root_gib,
            zone: n.zone,
            nodes: vec![n.name.clone()],
            efa: n.efa,
            capacity: n.capacity.clone(),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile;

    fn gpu1000() -> (Profile, Inventory) {
        let p = profile::load("gpu-1000", &[]).unwrap().profile;
        let inv = crate::inventory::planned(&p, &Default::default()).unwrap();
        (p, inv)
    }

    #[test]
    fn gpu_1000_launches_in_three_calls() {
        let (p, inv) = gpu1000();
        let plan = plan(&p, &inv, "us-east-1").unwrap();
        let all: Vec<&NodePlan> = plan.nodes.iter().collect();
        let b = batches(&all, MAX_BATCH);
        let shape: Vec<(String, u32, u32)> = b
            .iter()
            .map(|b| (b.group.clone(), b.first, b.count))
            .collect();
        assert_eq!(
            shape,
            [
                ("controlPlane".to_string(), 1, 3),
                ("gpu".to_string(), 1, 500),
                ("gpu".to_string(), 501, 500)
            ]
        );
        assert_eq!(b[2].nodes.first().unwrap(), "gpu-501");
        assert_eq!(b[2].nodes.last().unwrap(), "gpu-1000");
    }

    #[test]
    fn gaps_split_batches() {
        let (p, inv) = gpu1000();
        let plan = plan(&p, &inv, "us-east-1").unwrap();
        let missing: Vec<&NodePlan> = plan
            .nodes
            .iter()
            .filter(|n| n.name == "gpu-7" || n.name == "gpu-8" || n.name == "gpu-10")
            .collect();
        let b = batches(&missing, MAX_BATCH);
        assert_eq!(b.len(), 2);
        assert_eq!((b[0].first, b[0].count), (7, 2));
        assert_eq!((b[1].first, b[1].count), (10, 1));
    }

    #[test]
    fn rules_are_exactly_admin_ssh_api_cluster_and_pods() {
        let (p, inv) = gpu1000();
        let vxlan = plan(&p, &inv, "us-east-1").unwrap();
        let admin: Ipv4Net = "203.0.113.0/24".parse().unwrap();
        let mut want: BTreeSet<Rule> = [
            Rule::tcp(22, Source::Cidr(admin)),
            Rule::tcp(6443, Source::Cidr(admin)),
            Rule::all(Source::SelfGroup),
            Rule::tcp(6443, Source::Cidr("10.0.0.0/20".parse().unwrap())),
        ]
        .into_iter()
        .collect();
        assert_eq!(vxlan.rules, want);
        // Routed pod traffic carries pod source addresses: the pod range is admitted too.
        let mut p = p;
        p.network.pod_routing = Some(PodRouting::HostRoutes);
        let routed = plan(&p, &inv, "us-east-1").unwrap();
        want.insert(Rule::all(Source::Cidr("10.64.0.0/14".parse().unwrap())));
        assert_eq!(routed.rules, want);
    }

    #[test]
    fn several_zones_split_the_range_and_the_groups() {
        let p = profile::load(
            "gpu-dev",
            &["provider.aws.zones=[us-east-1a,us-east-1b]".to_string()],
        )
        .unwrap()
        .profile;
        let inv = crate::inventory::planned(&p, &Default::default()).unwrap();
        let plan = plan(&p, &inv, "us-east-1").unwrap();
        let cidrs: Vec<String> = plan.subnets.iter().map(|s| s.cidr.to_string()).collect();
        assert_eq!(cidrs, ["10.0.0.0/25", "10.0.0.128/25"]);
        let gpu: Vec<usize> = plan
            .nodes
            .iter()
            .filter(|n| n.group == "gpu")
            .map(|n| n.zone)
            .collect();
        assert_eq!(gpu, [0, 1]);
    }

    #[test]
    fn host_routes_across_zones_is_refused() {
        let p = profile::load(
            "gpu-1000",
            &[
                "provider.aws.zones=[us-east-1a,us-east-1b]".to_string(),
                "network.podRouting=hostRoutes".to_string(),
            ],
        )
        .unwrap()
        .profile;
        let inv = crate::inventory::planned(&p, &Default::default()).unwrap();
        let e = plan(&p, &inv, "us-east-1").unwrap_err().to_string();
        assert!(
            e.contains("network.podRouting: hostRoutes needs every node in one subnet"),
            "{e}"
        );
    }

    #[test]
    fn vxlan_spans_zones_and_opens_no_pod_range() {
        let p = profile::load(
            "gpu-1000",
            &["provider.aws.zones=[us-east-1a,us-east-1b]".to_string()],
        )
        .unwrap()
        .profile;
        let inv = crate::inventory::planned(&p, &Default::default()).unwrap();
        let plan = plan(&p, &inv, "us-east-1").unwrap();
        assert_eq!(plan.routing, PodRouting::Vxlan);
        assert_eq!(plan.subnets.len(), 2);
        // Encapsulated pod traffic is node-to-node: the group rule covers it, the pod range
        // gets no rule of its own.
        assert!(plan.rules.contains(&Rule::all(Source::SelfGroup)));
        assert!(!plan
            .rules
            .iter()
            .any(|r| r.source == Source::Cidr(p.network.pod_cidr)));
    }
}
