//! Removing everything the cluster owns, found only by its tag, in dependency order: load
//! balancers, target groups, instances (and waiting until they are gone), the GPU placement group,
//! route tables, the
//! internet gateway, subnets, security groups, key pair, VPC. Deletes that AWS refuses with
//! DependencyViolation (ENIs of a deleted NLB linger for a while) are retried until a deadline.

use std::time::Instant;

use super::efa;
use super::error::AwsError;
use super::instances::{self, LIVE_STATES};
use super::loadbalancer::owned_arns;
use super::network;
use super::retry;
use super::session::Session;
use super::tags;
use crate::provider::TeardownReport;

pub async fn run(s: &Session, dry_run: bool) -> Result<TeardownReport, AwsError> {
    let mut report = TeardownReport {
        deleted: Vec::new(),
        dry_run,
    };
    let mut note = |kind: &str, id: &str| {
        if dry_run {
            eprintln!("would delete {kind} {id}");
        } else {
            eprintln!("deleted {kind} {id}");
        }
        report.deleted.push((kind.to_string(), id.to_string()));
    };

    // Load balancers (their listeners go with them), then target groups.
    let lbs = paginate_all!(
        &s.opts.retry,
        "DescribeLoadBalancers",
        s.elb().describe_load_balancers()
    )?;
    let lb_arns = owned_arns(
        s,
        lbs.iter()
            .filter_map(|l| l.load_balancer_arn().map(str::to_string))
            .collect(),
    )
    .await?;
    for arn in &lb_arns {
        if !dry_run {
            retry::send(&s.opts.retry, "DeleteLoadBalancer", || {
                s.elb().delete_load_balancer().load_balancer_arn(arn).send()
            })
            .await?;
        }
        note("load-balancer", arn);
    }
    let tgs = paginate_all!(
        &s.opts.retry,
        "DescribeTargetGroups",
        s.elb().describe_target_groups()
    )?;
    let tg_arns = owned_arns(
        s,
        tgs.iter()
            .filter_map(|t| t.target_group_arn().map(str::to_string))
            .collect(),
    )
    .await?;
    for arn in &tg_arns {
        if !dry_run {
            // In use until its load balancer's deletion completes.
            until_free(s, "DeleteTargetGroup", arn, || async {
                retry::send(&s.opts.retry, "DeleteTargetGroup", || {
                    s.elb().delete_target_group().target_group_arn(arn).send()
                })
                .await
                .map(|_| ())
            })
            .await?;
        }
        note("target-group", arn);
    }

    // Instances: terminate all at once (1000 ids per call), then wait until none is left.
    let live =
        instances::describe(s, vec![tags::filter("instance-state-name", LIVE_STATES)]).await?;
    let ids: Vec<String> = live
        .iter()
        .filter_map(|i| i.instance_id().map(str::to_string))
        .collect();
    if !dry_run {
        for chunk in ids.chunks(1000) {
            retry::send(&s.opts.retry, "TerminateInstances", || {
                s.ec2()
                    .terminate_instances()
                    .set_instance_ids(Some(chunk.to_vec()))
                    .send()
            })
            .await?;
        }
        wait_terminated(s, ids.len()).await?;
    }
    for id in &ids {
        note("instance", id);
    }

    // The GPU placement group: empty once its instances are terminated.
    for g in efa::describe_placement_groups(s).await? {
        let name = g.group_name().unwrap_or_default().to_string();
        if !dry_run {
            retry::send(&s.opts.retry, "DeletePlacementGroup", || {
                s.ec2().delete_placement_group().group_name(&name).send()
            })
            .await?;
        }
        note("placement-group", &name);
    }

    // Route tables: disassociate, then delete (their routes go with them).
    for t in network::describe_route_tables(s).await? {
        let id = t.route_table_id().unwrap_or_default().to_string();
        if !dry_run {
            for a in t.associations() {
                if a.main() == Some(true) {
                    continue;
                }
                if let Some(aid) = a.route_table_association_id() {
                    retry::send(&s.opts.retry, "DisassociateRouteTable", || {
                        s.ec2()
                            .disassociate_route_table()
                            .association_id(aid)
                            .send()
                    })
                    .await?;
                }
            }
            until_free(s, "DeleteRouteTable", &id, || async {
                retry::send(&s.opts.retry, "DeleteRouteTable", || {
                    s.ec2().delete_route_table().route_table_id(&id).send()
                })
                .await
                .map(|_| ())
            })
            .await?;
        }
        note("route-table", &id);
    }

    // Internet gateways: detach from every VPC, then delete.
    let igws = paginate_all!(
        &s.opts.retry,
        "DescribeInternetGateways",
        s.ec2()
            .describe_internet_gateways()
            .filters(tags::cluster_filter(&s.cluster))
    )?;
    for g in igws.iter().filter(|g| tags::owned(g.tags(), &s.cluster)) {
        let id = g.internet_gateway_id().unwrap_or_default();
        if !dry_run {
            for a in g.attachments() {
                if let Some(vpc) = a.vpc_id() {
                    until_free(s, "DetachInternetGateway", id, || async {
                        retry::send(&s.opts.retry, "DetachInternetGateway", || {
                            s.ec2()
                                .detach_internet_gateway()
                                .internet_gateway_id(id)
                                .vpc_id(vpc)
                                .send()
                        })
                        .await
                        .map(|_| ())
                    })
                    .await?;
                }
            }
            retry::send(&s.opts.retry, "DeleteInternetGateway", || {
                s.ec2()
                    .delete_internet_gateway()
                    .internet_gateway_id(id)
                    .send()
            })
            .await?;
        }
        note("internet-gateway", id);
    }

    let subnets = paginate_all!(
        &s.opts.retry,
        "DescribeSubnets",
        s.ec2()
            .describe_subnets()
            .filters(tags::cluster_filter(&s.cluster))
    )?;
    for x in subnets.iter().filter(|x| tags::owned(x.tags(), &s.cluster)) {
        let id = x.subnet_id().unwrap_or_default();
        if !dry_run {
            until_free(s, "DeleteSubnet", id, || async {
                retry::send(&s.opts.retry, "DeleteSubnet", || {
                    s.ec2().delete_subnet().subnet_id(id).send()
                })
                .await
                .map(|_| ())
            })
            .await?;
        }
        note("subnet", id);
    }

    for g in network::describe_security_groups(s, None).await? {
        let id = g.group_id().unwrap_or_default().to_string();
        if g.group_name() == Some("default") {
            continue;
        }
        if !dry_run {
            until_free(s, "DeleteSecurityGroup", &id, || async {
                retry::send(&s.opts.retry, "DeleteSecurityGroup", || {
                    s.ec2().delete_security_group().group_id(&id).send()
                })
                .await
                .map(|_| ())
            })
            .await?;
        }
        note("security-group", &id);
    }

    for k in super::keypair::describe(s).await? {
        let name = k.key_name().unwrap_or_default().to_string();
        if !dry_run {
            retry::send(&s.opts.retry, "DeleteKeyPair", || {
                // By name: it is unique per region, and every implementation accepts it.
                s.ec2().delete_key_pair().key_name(&name).send()
            })
            .await?;
        }
        note("key-pair", &name);
    }

    let vpcs = paginate_all!(
        &s.opts.retry,
        "DescribeVpcs",
        s.ec2()
            .describe_vpcs()
            .filters(tags::cluster_filter(&s.cluster))
    )?;
    for v in vpcs.iter().filter(|v| tags::owned(v.tags(), &s.cluster)) {
        let id = v.vpc_id().unwrap_or_default();
        if !dry_run {
            until_free(s, "DeleteVpc", id, || async {
                retry::send(&s.opts.retry, "DeleteVpc", || {
                    s.ec2().delete_vpc().vpc_id(id).send()
                })
                .await
                .map(|_| ())
            })
            .await?;
        }
        note("vpc", id);
    }
    Ok(report)
}

/// Retry a delete while AWS says something still uses the resource.
async fn until_free<F, Fut>(s: &Session, op: &str, id: &str, mut f: F) -> Result<(), AwsError>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), AwsError>>,
{
    let start = Instant::now();
    let mut attempt = 0;
    loop {
        match f().await {
            Ok(()) => return Ok(()),
            Err(e)
                if matches!(
                    e.code(),
                    Some("DependencyViolation")
                        | Some("ResourceInUse")
                        | Some("InvalidGroup.InUse")
                ) =>
            {
                if start.elapsed() > s.opts.dependency_timeout {
                    return Err(AwsError::Timeout {
                        what: format!(
                            "{op} {id}: still in use ({e}); something not tagged for this cluster may depend on it, remove that and re-run teardown"
                        ),
                        secs: s.opts.dependency_timeout.as_secs(),
                    });
                }
                attempt += 1;
                tracing::info!(op, id, attempt, "still in use; retrying");
                tokio::time::sleep(
                    s.opts
                        .poll_interval
                        .min(s.opts.retry.delay(attempt) + s.opts.retry.base),
                )
                .await;
            }
            // Already gone (a previous, interrupted teardown): nothing to do.
            Err(e)
                if e.code()
                    .is_some_and(|c| c.ends_with(".NotFound") || c.ends_with("NotFound")) =>
            {
                return Ok(())
            }
            Err(e) => return Err(e),
        }
    }
}

/// Wait until no instance of the cluster is left in a live state: one paginated describe per round.
async fn wait_terminated(s: &Session, total: usize) -> Result<(), AwsError> {
    if total == 0 {
        return Ok(());
    }
    let start = Instant::now();
    loop {
        let left = instances::describe(s, vec![tags::filter("instance-state-name", LIVE_STATES)])
            .await?
            .len();
        if left == 0 {
            return Ok(());
        }
        tracing::info!(left, total, "waiting for instances to terminate");
        if start.elapsed() > s.opts.wait_timeout {
            return Err(AwsError::Timeout {
                what: format!("{left} of {total} instances to terminate"),
                secs: s.opts.wait_timeout.as_secs(),
            });
        }
        tokio::time::sleep(s.opts.poll_interval).await;
    }
}
