//! VPC, subnets, internet gateway, route table and the nodes' security group. Each `ensure_*`
//! finds the cluster's resource by tag and creates it only when missing, so a re-run adopts
//! what a previous (possibly interrupted) run made. Creates carry their tags in the same call.
//!
//! Creates other than RunInstances have no idempotency token: if a create's answer is lost and the
//! retry creates a second copy, that copy is tagged too; the first one found by tag (lowest id) is
//! used and teardown removes both.

use std::collections::BTreeSet;

use aws_sdk_ec2::types::{
    AttributeBooleanValue, IpPermission, IpRange, ResourceType, RouteTable, SecurityGroup,
    UserIdGroupPair, VpcAttributeName,
};
use ipnet::Ipv4Net;

use super::error::AwsError;
use super::plan::{AwsPlan, Rule, Source};
use super::retry;
use super::session::Session;
use super::tags;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Network {
    pub vpc_id: String,
    /// Subnet id per planned zone, in plan order.
    pub subnet_ids: Vec<String>,
    pub igw_id: String,
    pub route_table_id: String,
    pub sg_id: String,
}

pub async fn ensure(s: &Session, plan: &AwsPlan) -> Result<Network, AwsError> {
    let vpc_id = ensure_vpc(s, plan).await?;
    let subnet_ids = ensure_subnets(s, plan, &vpc_id).await?;
    let igw_id = ensure_igw(s, &vpc_id).await?;
    let route_table_id = ensure_route_table(s, &vpc_id, &igw_id, &subnet_ids).await?;
    let sg_id = ensure_security_group(s, plan, &vpc_id).await?;
    Ok(Network {
        vpc_id,
        subnet_ids,
        igw_id,
        route_table_id,
        sg_id,
    })
}

async fn ensure_vpc(s: &Session, plan: &AwsPlan) -> Result<String, AwsError> {
    let req = s
        .ec2()
        .describe_vpcs()
        .filters(tags::cluster_filter(&s.cluster));
    let mut vpcs = paginate_all!(&s.opts.retry, "DescribeVpcs", req)?;
    vpcs.retain(|v| tags::owned(v.tags(), &s.cluster));
    vpcs.sort_by(|a, b| a.vpc_id().cmp(&b.vpc_id()));
    if let Some(v) = vpcs.first() {
        let id = v.vpc_id().unwrap_or_default().to_string();
        if v.cidr_block() != Some(plan.vpc_cidr.to_string().as_str()) {
            return Err(AwsError::Preflight(format!(
                "the cluster's VPC {id} has range {}, the profile's network.nodeCIDR is {}; a VPC's range cannot change: tear down first or restore the range",
                v.cidr_block().unwrap_or("?"),
                plan.vpc_cidr
            )));
        }
        ensure_vpc_dns(s, &id, false).await?;
        return Ok(id);
    }
    let name = tags::resource_name(&s.cluster, "");
    let out = retry::send(&s.opts.retry, "CreateVpc", || {
        s.ec2()
            .create_vpc()
            .cidr_block(plan.vpc_cidr.to_string())
            .tag_specifications(tags::spec(ResourceType::Vpc, &s.cluster, &name, &[]))
            .send()
    })
    .await?;
    let id = out
        .vpc()
        .and_then(|v| v.vpc_id())
        .ok_or_else(|| AwsError::unexpected("CreateVpc", "no VPC id"))?
        .to_string();
    s.created("vpc", &id);
    ensure_vpc_dns(s, &id, true).await?;
    Ok(id)
}

/// DNS support and hostnames on: one attribute per call is all the API takes.
async fn ensure_vpc_dns(s: &Session, vpc: &str, fresh: bool) -> Result<(), AwsError> {
    for attr in [
        VpcAttributeName::EnableDnsSupport,
        VpcAttributeName::EnableDnsHostnames,
    ] {
        if !fresh {
            let out = retry::send(&s.opts.retry, "DescribeVpcAttribute", || {
                s.ec2()
                    .describe_vpc_attribute()
                    .vpc_id(vpc)
                    .attribute(attr.clone())
                    .send()
            })
            .await?;
            let on = match attr {
                VpcAttributeName::EnableDnsSupport => out.enable_dns_support(),
                _ => out.enable_dns_hostnames(),
            }
            .and_then(|v| v.value())
            .unwrap_or(false);
            if on {
                continue;
            }
        }
        let yes = AttributeBooleanValue::builder().value(true).build();
        let mut req = s.ec2().modify_vpc_attribute().vpc_id(vpc);
        req = match attr {
            VpcAttributeName::EnableDnsSupport => req.enable_dns_support(yes),
            _ => req.enable_dns_hostnames(yes),
        };
        retry::send(&s.opts.retry, "ModifyVpcAttribute", || req.clone().send()).await?;
    }
    Ok(())
}

async fn ensure_subnets(s: &Session, plan: &AwsPlan, vpc: &str) -> Result<Vec<String>, AwsError> {
    let req = s
        .ec2()
        .describe_subnets()
        .filters(tags::cluster_filter(&s.cluster))
        .filters(tags::filter("vpc-id", &[vpc]));
    let mut found = paginate_all!(&s.opts.retry, "DescribeSubnets", req)?;
    found.retain(|x| tags::owned(x.tags(), &s.cluster));
    found.sort_by(|a, b| a.subnet_id().cmp(&b.subnet_id()));
    let mut ids = Vec::new();
    for want in &plan.subnets {
        let cidr = want.cidr.to_string();
        if let Some(x) = found.iter().find(|x| x.cidr_block() == Some(cidr.as_str())) {
            if x.availability_zone() != Some(want.zone.as_str()) {
                return Err(AwsError::Preflight(format!(
                    "the cluster's subnet {} ({cidr}) is in {}, the profile puts it in {}; tear down first or restore provider.aws.zones",
                    x.subnet_id().unwrap_or("?"),
                    x.availability_zone().unwrap_or("?"),
                    want.zone
                )));
            }
            ids.push(x.subnet_id().unwrap_or_default().to_string());
            continue;
        }
        let name = tags::resource_name(&s.cluster, &want.zone);
        let out = retry::send(&s.opts.retry, "CreateSubnet", || {
            s.ec2()
                .create_subnet()
                .vpc_id(vpc)
                .cidr_block(&cidr)
                .availability_zone(&want.zone)
                .tag_specifications(tags::spec(ResourceType::Subnet, &s.cluster, &name, &[]))
                .send()
        })
        .await?;
        let id = out
            .subnet()
            .and_then(|x| x.subnet_id())
            .ok_or_else(|| AwsError::unexpected("CreateSubnet", "no subnet id"))?
            .to_string();
        s.created("subnet", &id);
        ids.push(id);
    }
    Ok(ids)
}

async fn ensure_igw(s: &Session, vpc: &str) -> Result<String, AwsError> {
    let req = s
        .ec2()
        .describe_internet_gateways()
        .filters(tags::cluster_filter(&s.cluster));
    let mut found = paginate_all!(&s.opts.retry, "DescribeInternetGateways", req)?;
    found.retain(|x| tags::owned(x.tags(), &s.cluster));
    found.sort_by(|a, b| a.internet_gateway_id().cmp(&b.internet_gateway_id()));
    let (id, attached) = match found.first() {
        Some(g) => (
            g.internet_gateway_id().unwrap_or_default().to_string(),
            g.attachments().iter().any(|a| a.vpc_id() == Some(vpc)),
        ),
        None => {
            let name = tags::resource_name(&s.cluster, "");
            let out = retry::send(&s.opts.retry, "CreateInternetGateway", || {
                s.ec2()
                    .create_internet_gateway()
                    .tag_specifications(tags::spec(
                        ResourceType::InternetGateway,
                        &s.cluster,
                        &name,
                        &[],
                    ))
                    .send()
            })
            .await?;
            let id = out
                .internet_gateway()
                .and_then(|g| g.internet_gateway_id())
                .ok_or_else(|| AwsError::unexpected("CreateInternetGateway", "no id"))?
                .to_string();
            s.created("internet-gateway", &id);
            (id, false)
        }
    };
    if !attached {
        retry::send(&s.opts.retry, "AttachInternetGateway", || {
            s.ec2()
                .attach_internet_gateway()
                .internet_gateway_id(&id)
                .vpc_id(vpc)
                .send()
        })
        .await?;
    }
    Ok(id)
}

pub async fn describe_route_tables(s: &Session) -> Result<Vec<RouteTable>, AwsError> {
    let req = s
        .ec2()
        .describe_route_tables()
        .filters(tags::cluster_filter(&s.cluster));
    let mut found = paginate_all!(&s.opts.retry, "DescribeRouteTables", req)?;
    found.retain(|x| tags::owned(x.tags(), &s.cluster));
    found.sort_by(|a, b| a.route_table_id().cmp(&b.route_table_id()));
    Ok(found)
}

async fn ensure_route_table(
    s: &Session,
    vpc: &str,
    igw: &str,
    subnets: &[String],
) -> Result<String, AwsError> {
    let found = describe_route_tables(s).await?;
    let existing = found.iter().find(|r| r.vpc_id() == Some(vpc)).cloned();
    let table = match existing {
        Some(t) => t,
        None => {
            let name = tags::resource_name(&s.cluster, "");
            let out = retry::send(&s.opts.retry, "CreateRouteTable", || {
                s.ec2()
                    .create_route_table()
                    .vpc_id(vpc)
                    .tag_specifications(tags::spec(
                        ResourceType::RouteTable,
                        &s.cluster,
                        &name,
                        &[],
                    ))
                    .send()
            })
            .await?;
            let t = out
                .route_table()
                .cloned()
                .ok_or_else(|| AwsError::unexpected("CreateRouteTable", "no route table"))?;
            s.created("route-table", t.route_table_id().unwrap_or_default());
            t
        }
    };
    let id = table.route_table_id().unwrap_or_default().to_string();
    let has_default = table
        .routes()
        .iter()
        .any(|r| r.destination_cidr_block() == Some("0.0.0.0/0") && r.gateway_id() == Some(igw));
    if !has_default {
        retry::send(&s.opts.retry, "CreateRoute", || {
            s.ec2()
                .create_route()
                .route_table_id(&id)
                .destination_cidr_block("0.0.0.0/0")
                .gateway_id(igw)
                .send()
        })
        .await?;
    }
    for subnet in subnets {
        let associated = table
            .associations()
            .iter()
            .any(|a| a.subnet_id() == Some(subnet.as_str()));
        if !associated {
            retry::send(&s.opts.retry, "AssociateRouteTable", || {
                s.ec2()
                    .associate_route_table()
                    .route_table_id(&id)
                    .subnet_id(subnet)
                    .send()
            })
            .await?;
        }
    }
    Ok(id)
}

/// The security group's ingress as comparable rules (group references to itself as SelfGroup;
/// references to other groups are kept as CIDR 0.0.0.0/32 markers so they show up as extra).
pub fn current_rules(sg: &SecurityGroup) -> BTreeSet<(Rule, Option<String>)> {
    let own = sg.group_id().unwrap_or_default();
    let mut out = BTreeSet::new();
    for p in sg.ip_permissions() {
        let protocol = p.ip_protocol().unwrap_or("-1").to_string();
        let (from, to) = if protocol == "-1" {
            (-1, -1)
        } else {
            (p.from_port().unwrap_or(-1), p.to_port().unwrap_or(-1))
        };
        for r in p.ip_ranges() {
            if let Some(c) = r.cidr_ip().and_then(|c| c.parse::<Ipv4Net>().ok()) {
                out.insert((
                    Rule {
                        protocol: protocol.clone(),
                        from,
                        to,
                        source: Source::Cidr(c),
                    },
                    None,
                ));
            }
        }
        for g in p.user_id_group_pairs() {
            let gid = g.group_id().unwrap_or_default();
            let (source, other) = if gid == own {
                (Source::SelfGroup, None)
            } else {
                (Source::SelfGroup, Some(gid.to_string()))
            };
            out.insert((
                Rule {
                    protocol: protocol.clone(),
                    from,
                    to,
                    source,
                },
                other,
            ));
        }
    }
    out
}

fn permission(r: &Rule, sg_id: &str, other_group: Option<&str>) -> IpPermission {
    let mut b = IpPermission::builder().ip_protocol(&r.protocol);
    if r.protocol != "-1" {
        b = b.from_port(r.from).to_port(r.to);
    }
    match (&r.source, other_group) {
        (_, Some(g)) => b = b.user_id_group_pairs(UserIdGroupPair::builder().group_id(g).build()),
        (Source::SelfGroup, None) => {
            b = b.user_id_group_pairs(UserIdGroupPair::builder().group_id(sg_id).build())
        }
        (Source::Cidr(c), None) => {
            b = b.ip_ranges(IpRange::builder().cidr_ip(c.to_string()).build())
        }
    }
    b.build()
}

pub async fn describe_security_groups(
    s: &Session,
    vpc: Option<&str>,
) -> Result<Vec<SecurityGroup>, AwsError> {
    let mut req = s
        .ec2()
        .describe_security_groups()
        .filters(tags::cluster_filter(&s.cluster));
    if let Some(v) = vpc {
        req = req.filters(tags::filter("vpc-id", &[v]));
    }
    let mut found = paginate_all!(&s.opts.retry, "DescribeSecurityGroups", req)?;
    found.retain(|x| tags::owned(x.tags(), &s.cluster));
    found.sort_by(|a, b| a.group_id().cmp(&b.group_id()));
    Ok(found)
}

async fn ensure_security_group(s: &Session, plan: &AwsPlan, vpc: &str) -> Result<String, AwsError> {
    let name = tags::resource_name(&s.cluster, "nodes");
    let found = describe_security_groups(s, Some(vpc)).await?;
    let (id, have) = match found.iter().find(|g| g.group_name() == Some(name.as_str())) {
        Some(g) => (
            g.group_id().unwrap_or_default().to_string(),
            current_rules(g),
        ),
        None => {
            let out = retry::send(&s.opts.retry, "CreateSecurityGroup", || {
                s.ec2()
                    .create_security_group()
                    .group_name(&name)
                    .description(format!("k8sforge cluster {} nodes", s.cluster))
                    .vpc_id(vpc)
                    .tag_specifications(tags::spec(
                        ResourceType::SecurityGroup,
                        &s.cluster,
                        &name,
                        &[],
                    ))
                    .send()
            })
            .await?;
            let id = out
                .group_id()
                .ok_or_else(|| AwsError::unexpected("CreateSecurityGroup", "no group id"))?
                .to_string();
            s.created("security-group", &id);
            (id, BTreeSet::new())
        }
    };
    let want: BTreeSet<(Rule, Option<String>)> =
        plan.rules.iter().cloned().map(|r| (r, None)).collect();
    let missing: Vec<IpPermission> = want
        .difference(&have)
        .map(|(r, g)| permission(r, &id, g.as_deref()))
        .collect();
    let extra: Vec<IpPermission> = have
        .difference(&want)
        .map(|(r, g)| permission(r, &id, g.as_deref()))
        .collect();
    if !missing.is_empty() {
        retry::send(&s.opts.retry, "AuthorizeSecurityGroupIngress", || {
            s.ec2()
                .authorize_security_group_ingress()
                .group_id(&id)
                .set_ip_permissions(Some(missing.clone()))
                .tag_specifications(tags::spec(
                    ResourceType::SecurityGroupRule,
                    &s.cluster,
                    &name,
                    &[],
                ))
                .send()
        })
        .await?;
    }
    // Our own group holds exactly the planned rules: anything else was opened by hand.
    if !extra.is_empty() {
        tracing::warn!(group = %id, count = extra.len(), "revoking ingress rules not in the profile");
        retry::send(&s.opts.retry, "RevokeSecurityGroupIngress", || {
            s.ec2()
                .revoke_security_group_ingress()
                .group_id(&id)
                .set_ip_permissions(Some(extra.clone()))
                .send()
        })
        .await?;
    }
    Ok(id)
}
