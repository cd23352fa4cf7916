//! Machines: found by tag, launched in RunInstances batches (MinCount = MaxCount, one call per
//! batch of up to 500 contiguous nodes of one group in one subnet), waited for with one describe
//! per batch per round, and prepared for pod routing (source/destination check off, in the
//! routed modes only). A launch whose answer was lost is looked up by its batch tag before it is
//! sent again (see `launch`).
//!
//! # VXLAN (the default): no call per instance
//!
//! In `network.podRouting: vxlan` every pod packet between nodes travels inside a UDP 4789
//! packet from one node's address to the other's (`render::routes` configures the VXLAN device
//! statically on every node). EC2 sees only node addresses, so the check passes the traffic
//! with it left on and nothing below is called: provisioning stays a few dozen calls at any node
//! count. The security group's "all traffic from the group" rule admits UDP 4789.
//!
//! # Why, in the routed modes, source/destination check costs one call per instance
//!
//! Routed pod traffic (host routes in the subnet, or VPC routes to instances) sends packets whose
//! source or destination is a pod address, not the instance's: EC2 drops them unless the
//! instance's source/destination check is off. The whole provisioning takes a few dozen calls,
//! except this. The EC2 API (checked against the full API model of aws-sdk-ec2 1.274):
//! - `SourceDestCheck` can be written only by ModifyInstanceAttribute (one `InstanceId`) and
//!   ModifyNetworkInterfaceAttribute / ResetNetworkInterfaceAttribute (one
//!   `NetworkInterfaceId`). No action takes a list.
//! - It is not a launch parameter: RunInstances' `NetworkInterfaces`
//!   (InstanceNetworkInterfaceSpecification), launch template network interfaces and
//!   CreateNetworkInterface have no such field; every new interface starts with the check on.
//! - Prefix delegation (`Ipv4PrefixCount` at launch) assigns /28 prefixes of the subnet to the
//!   interface. Addresses in them are the interface's own, so pods addressed from them pass the
//!   check with it on, with no call per node (the EKS VPC CNI model). But the prefixes are
//!   picked by EC2, /28 each and not contiguous, so a node's pods get no single pod CIDR:
//!   that is a different pod network (VPC-addressed pods, a CNI with its own IPAM, a subnet
//!   sized for nodes x pods) from the planned per-node pod CIDRs this provider routes. moto
//!   does not model prefixes either, so it could not be tested against the real peer here.
//!   Chosen prefixes (`Ipv4Prefixes`) apply to every instance of a RunInstances, so they would
//!   cost one launch per node instead.
//! - Nodes turning their own check off at boot (as Calico's Felix can) make the same calls,
//!   from the nodes, and need an instance role allowed to modify instances.
//!
//! So with routed pod CIDRs the floor is one call per instance (hence VXLAN, whose pod packets
//! are never seen by the check), and in hostRoutes/routeTable mode this module pays exactly
//! that: only for instances still checking (a re-run makes none), `Options::parallelism`
//! calls in flight, throttling retried with jittered backoff. Everything else stays batched.
//!
//! A node's identity is its batch tag (`<group>/<first index>`) plus the instance's launch index
//! within the reservation: this names 500 instances without 500 tagging calls.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Instant;

use aws_sdk_ec2::types::{
    AttributeBooleanValue, BlockDeviceMapping, EbsBlockDevice, Filter, Instance, InstanceType,
    ResourceType, VolumeType,
};
use sha2::Digest;
use tokio::task::JoinSet;

use super::capacity;
use super::efa;
use super::error::AwsError;
use super::images::Ami;
use super::network::Network;
use super::plan::{self, AwsPlan, Batch, NodePlan};
use super::preflight::quota_for;
use super::retry;
use super::session::Session;
use super::tags::{self, BATCH_TAG, ROLE_TAG};
use crate::profile::PodRouting;

/// States of an instance that still exists (teardown and adoption both ignore terminated ones).
pub const LIVE_STATES: &[&str] = &["pending", "running", "stopping", "stopped", "shutting-down"];
/// States of an instance that can be adopted: one shutting down (e.g. replaced for drift) is
/// gone for provisioning, though teardown still waits for it.
pub const ADOPTABLE_STATES: &[&str] = &["pending", "running", "stopping", "stopped"];

pub async fn describe(s: &Session, extra: Vec<Filter>) -> Result<Vec<Instance>, AwsError> {
    let mut req = s
        .ec2()
        .describe_instances()
        .filters(tags::cluster_filter(&s.cluster))
        .max_results(1000);
    for f in extra {
        req = req.filters(f);
    }
    let reservations = paginate_all!(&s.opts.retry, "DescribeInstances", req)?;
    Ok(reservations
        .iter()
        .flat_map(|r| r.instances().iter().cloned())
        .filter(|i| tags::owned(i.tags(), &s.cluster))
        .collect())
}

pub fn state(i: &Instance) -> &str {
    i.state()
        .and_then(|s| s.name())
        .map(|n| n.as_str())
        .unwrap_or("unknown")
}

/// Which planned node an instance is, from its batch tag and launch index.
pub fn node_of<'p>(plan: &'p AwsPlan, i: &Instance) -> Option<&'p NodePlan> {
    let (group, first) = plan::parse_batch_tag(tags::value(i.tags(), BATCH_TAG)?)?;
    let idx = u32::try_from(i.ami_launch_index()?).ok()?;
    plan.node(group, first + idx)
}

/// Instances by node name; extra instances claiming an already-mapped node are returned apart.
pub fn map_nodes(
    plan: &AwsPlan,
    all: Vec<Instance>,
) -> (BTreeMap<String, Instance>, Vec<Instance>) {
    let mut sorted = all;
    sorted.sort_by(|a, b| a.instance_id().cmp(&b.instance_id()));
    let mut nodes = BTreeMap::new();
    let mut extra = Vec::new();
    for i in sorted {
        match node_of(plan, &i) {
            Some(n) if !nodes.contains_key(&n.name) => {
                nodes.insert(n.name.clone(), i);
            }
            _ => extra.push(i),
        }
    }
    (nodes, extra)
}

/// Adopt what exists (after comparing it with the profile: see `drift`), launch what is missing,
/// wait for it, and turn off source/destination checks. Returns every node's instance and the
/// instances replaced for drift. Batches that failed (capacity, quota) are reported together at
/// the end; the ones that succeeded stay, tagged, for the next run to adopt.
pub async fn ensure(
    s: &Session,
    plan: &AwsPlan,
    net: &Network,
    ami: &Ami,
    key_name: &str,
    replace_drifted: bool,
) -> Result<(BTreeMap<String, Instance>, Vec<(String, String)>), AwsError> {
    let live = describe(
        s,
        vec![tags::filter("instance-state-name", ADOPTABLE_STATES)],
    )
    .await?;
    let (mut nodes, extra) = map_nodes(plan, live);
    let drifts = super::drift::compare(s, plan, ami, &nodes).await?;
    let mut replaced = Vec::new();
    if !drifts.is_empty() {
        if !replace_drifted || drifts.iter().any(|d| d.control_plane) {
            return Err(AwsError::Drift(crate::provider::drift::refusal(
                &drifts,
                replace_drifted,
            )));
        }
        let mut ids: Vec<String> = drifts.iter().map(|d| d.resource.clone()).collect();
        ids.dedup();
        for d in &drifts {
            tracing::warn!("replacing {d}");
        }
        super::drift::terminate(s, &ids).await?;
        for d in &drifts {
            if nodes.remove(&d.node).is_some() {
                replaced.push((
                    "instance".to_string(),
                    format!("{} ({})", d.resource, d.node),
                ));
            }
        }
    }
    for i in &extra {
        tracing::warn!(
            instance = i.instance_id().unwrap_or("?"),
            "instance tagged for this cluster does not map to a planned node; teardown removes it"
        );
    }
    let missing: Vec<&NodePlan> = plan
        .nodes
        .iter()
        .filter(|n| !nodes.contains_key(&n.name))
        .collect();
    let batches = plan::batches(&missing, s.opts.max_batch);
    if !batches.is_empty() {
        tracing::info!(
            nodes = missing.len(),
            batches = batches.len(),
            "launching instances"
        );
    }
    let nonce: u64 = rand::random();
    // EFA instances train together: one cluster placement group keeps them close (their
    // batches are all in the first zone, see plan.rs).
    let placement = if plan.nodes.iter().any(|n| n.efa) {
        Some(efa::ensure_placement_group(s).await?)
    } else {
        None
    };
    let mut set = JoinSet::new();
    let shared = Arc::new(plan.clone());
    for b in batches.clone() {
        let s = s.clone();
        let plan = shared.clone();
        let spec = LaunchSpec {
            subnet: net.subnet_ids.get(b.zone).cloned().unwrap_or_default(),
            sg: net.sg_id.clone(),
            ami: ami.clone(),
            key: key_name.to_string(),
            nonce,
            placement: placement.clone().filter(|_| b.efa),
        };
        set.spawn(async move {
            let r = launch(&s, &plan, &b, &spec).await;
            (b, r)
        });
    }
    let mut launched: Vec<(Batch, Vec<String>)> = Vec::new();
    let mut failed: Vec<String> = Vec::new();
    while let Some(joined) = set.join_next().await {
        let (b, r) = joined.map_err(|e| AwsError::unexpected("RunInstances", e.to_string()))?;
        match r {
            Ok(parts) => {
                for (part, ids) in parts {
                    for id in &ids {
                        s.created("instance", id);
                    }
                    launched.push((part, ids));
                }
            }
            Err(e) => failed.push(explain_launch_failure(plan, &b, &e)),
        }
    }
    for i in wait_running(s, &launched).await? {
        if let Some(n) = node_of(plan, &i) {
            nodes.entry(n.name.clone()).or_insert(i);
        }
    }
    // VXLAN carries pod packets between node addresses: the check passes them as it is.
    if plan.routing != PodRouting::Vxlan {
        disable_source_dest_check(s, &nodes).await?;
    }
    if !failed.is_empty() {
        return Err(AwsError::Capacity(format!(
            "{} of {} launch batches failed:\n  {}\n\
             The instances that did launch are kept and tagged. Re-run `k8sforge up` (or `k8sforge up --only provision`) to launch only the missing nodes, or `k8sforge teardown` to remove everything.",
            failed.len(),
            batches.len(),
            failed.join("\n  ")
        )));
    }
    Ok((nodes, replaced))
}

fn explain_launch_failure(plan: &AwsPlan, b: &Batch, e: &AwsError) -> String {
    let what = b.describe(&plan.subnets);
    match e.code() {
        Some("InsufficientInstanceCapacity") | Some("InsufficientCapacity") => format!(
            "batch {what}: AWS has no capacity for {} now ({e}). Retry later (capacity often returns within minutes), add another zone to provider.aws.zones (routeTable mode), use a capacity reservation or Capacity Block, or lower the group's count.",
            b.instance_type
        ),
        Some("VcpuLimitExceeded") => {
            let (code, name) = quota_for(&b.instance_type);
            format!(
                "batch {what}: the On-Demand vCPU quota \"{name}\" ({code}) in {} is too low ({e}). Request more with: aws service-quotas request-service-quota-increase --service-code ec2 --quota-code {code} --desired-value <vCPUs> --region {}",
                plan.region, plan.region
            )
        }
        _ => format!("batch {what}: {e}"),
    }
}

/// A token unique to this batch in this run: retries of the same call are deduplicated by EC2,
/// a later run (after a crash) adopts by tag instead.
fn client_token(cluster: &str, batch: &Batch, nonce: u64) -> String {
    let h = sha2::Sha256::digest(format!(
        "{cluster}\n{}\n{}\n{nonce}",
        batch.tag(),
        batch.count
    ));
    format!("k8sforge-{}", &hex::encode(h)[..40])
}

/// What every RunInstances call of one run shares.
#[derive(Clone)]
struct LaunchSpec {
    subnet: String,
    sg: String,
    ami: Ami,
    key: String,
    nonce: u64,
    /// The cluster placement group, for batches of EFA instance types.
    placement: Option<String>,
}

/// Launch one batch. A RunInstances without an answer (connection lost, timeout, 5xx) may have
/// launched all of its instances: re-sending it blindly would launch them twice wherever the
/// ClientToken is not honoured (moto, or a token that expired), and twice 500 GPU nodes is
/// expensive. So before every re-send after such an answer, one describe by the batch tag says
/// what exists, and only what is missing is launched again (same ClientToken, so EC2 still
/// deduplicates if its describe lagged behind). Throttling means "not executed": re-sent as is.
///
/// Returns the launched instances grouped by the batch they were launched as (a batch found
/// half-launched is completed by smaller batches of its missing nodes).
async fn launch(
    s: &Session,
    plan: &AwsPlan,
    batch: &Batch,
    spec: &LaunchSpec,
) -> Result<Vec<(Batch, Vec<String>)>, AwsError> {
    let policy = &s.opts.retry;
    let mut done = Vec::new();
    let mut todo = vec![batch.clone()];
    let mut attempt = 0;
    while let Some(b) = todo.pop() {
        loop {
            let err = match run_instances(s, &b, spec).send().await {
                Ok(out) => {
                    let ids = out
                        .instances()
                        .iter()
                        .filter_map(|i| i.instance_id().map(str::to_string))
                        .collect();
                    done.push((b.clone(), ids));
                    break;
                }
                Err(e) => e,
            };
            let class = retry::classify(&err);
            attempt += 1;
            if class == retry::Class::Fatal || attempt >= policy.max_attempts {
                return Err(AwsError::from_sdk("RunInstances", &err));
            }
            let wait = policy.delay(attempt);
            tracing::debug!(batch = %b.tag(), attempt, ?class, wait_ms = wait.as_millis() as u64, "RunInstances retry");
            tokio::time::sleep(wait).await;
            if class == retry::Class::Throttled {
                continue;
            }
            let found = describe(
                s,
                vec![
                    tags::filter(&format!("tag:{BATCH_TAG}"), &[&b.tag()]),
                    tags::filter("instance-state-name", LIVE_STATES),
                ],
            )
            .await?;
            let (present, _) = map_nodes(plan, found);
            let mine: Vec<String> = b
                .nodes
                .iter()
                .filter_map(|n| present.get(n).and_then(|i| i.instance_id()))
                .map(str::to_string)
                .collect();
            if mine.is_empty() {
                continue;
            }
            tracing::info!(
                batch = %b.tag(),
                found = mine.len(),
                of = b.count,
                "RunInstances had launched before its answer was lost"
            );
            let missing: Vec<&NodePlan> = plan
                .nodes
                .iter()
                .filter(|n| b.nodes.contains(&n.name) && !present.contains_key(&n.name))
                .collect();
            done.push((b.clone(), mine));
            todo.extend(plan::batches(&missing, s.opts.max_batch));
            break;
        }
    }
    Ok(done)
}

fn run_instances(
    s: &Session,
    b: &Batch,
    spec: &LaunchSpec,
) -> aws_sdk_ec2::operation::run_instances::builders::RunInstancesFluentBuilder {
    let count = i32::try_from(b.count).unwrap_or(i32::MAX);
    let name = tags::resource_name(&s.cluster, &b.group.to_ascii_lowercase());
    let batch_tag = b.tag();
    let role = b.role.as_str();
    s.ec2()
        .run_instances()
        .image_id(&spec.ami.id)
        .instance_type(InstanceType::from(b.instance_type.as_str()))
        .min_count(count)
        .max_count(count)
        .key_name(&spec.key)
        .client_token(client_token(&s.cluster, b, spec.nonce))
        .set_network_interfaces(Some(efa::interfaces(
            b.efa.then_some(b.instance_type.as_str()),
            &spec.subnet,
            &spec.sg,
        )))
        .set_placement(spec.placement.as_ref().map(|g| {
            aws_sdk_ec2::types::Placement::builder()
                .group_name(g)
                .build()
        }))
        .set_capacity_reservation_specification(b.capacity.as_ref().map(capacity::specification))
        .set_instance_market_options(b.capacity.as_ref().and_then(capacity::market_options))
        .block_device_mappings(
            BlockDeviceMapping::builder()
                .device_name(&spec.ami.root_device)
                .ebs(
                    EbsBlockDevice::builder()
                        .volume_size(i32::try_from(b.root_gib).unwrap_or(i32::MAX))
                        .volume_type(VolumeType::Gp3)
                        .delete_on_termination(true)
                        .build(),
                )
                .build(),
        )
        .tag_specifications(tags::spec(
            ResourceType::Instance,
            &s.cluster,
            &name,
            &[(BATCH_TAG, &batch_tag), (ROLE_TAG, role)],
        ))
        .tag_specifications(tags::spec(
            ResourceType::Volume,
            &s.cluster,
            &name,
            &[(BATCH_TAG, &batch_tag)],
        ))
}

/// Poll until every launched instance runs: one describe per pending batch per round.
async fn wait_running(
    s: &Session,
    launched: &[(Batch, Vec<String>)],
) -> Result<Vec<Instance>, AwsError> {
    let start = Instant::now();
    let mut pending: Vec<&(Batch, Vec<String>)> = launched.iter().collect();
    let mut ready = Vec::new();
    while !pending.is_empty() {
        let mut still = Vec::new();
        for entry in pending {
            let (b, ids) = entry;
            let found = describe(
                s,
                vec![tags::filter(&format!("tag:{BATCH_TAG}"), &[&b.tag()])],
            )
            .await?;
            let want: BTreeSet<&str> = ids.iter().map(String::as_str).collect();
            let mine: Vec<Instance> = found
                .into_iter()
                .filter(|i| i.instance_id().is_some_and(|id| want.contains(id)))
                .collect();
            if let Some(bad) = mine
                .iter()
                .find(|i| matches!(state(i), "terminated" | "shutting-down"))
            {
                return Err(AwsError::Capacity(format!(
                    "instance {} of batch {} went to {} while starting: {}",
                    bad.instance_id().unwrap_or("?"),
                    b.tag(),
                    state(bad),
                    bad.state_reason()
                        .and_then(|r| r.message())
                        .unwrap_or("no reason given")
                )));
            }
            let running = mine.iter().filter(|i| state(i) == "running").count();
            if running == want.len() {
                ready.extend(mine);
            } else {
                still.push(entry);
            }
        }
        pending = still;
        if pending.is_empty() {
            break;
        }
        if start.elapsed() > s.opts.wait_timeout {
            return Err(AwsError::Timeout {
                what: format!("{} batches of instances to run", pending.len()),
                secs: s.opts.wait_timeout.as_secs(),
            });
        }
        tokio::time::sleep(s.opts.poll_interval).await;
    }
    Ok(ready)
}

/// Pods send and receive with addresses that are not the node's: EC2 must not drop them.
/// The API takes one instance per call (see the module docs), so only instances still checking
/// are changed, with bounded parallelism; a re-run makes no calls.
async fn disable_source_dest_check(
    s: &Session,
    nodes: &BTreeMap<String, Instance>,
) -> Result<(), AwsError> {
    let todo: Vec<String> = nodes
        .values()
        .filter(|i| i.source_dest_check() != Some(false))
        .filter_map(|i| i.instance_id().map(str::to_string))
        .collect();
    if todo.is_empty() {
        return Ok(());
    }
    tracing::info!(
        instances = todo.len(),
        "turning off source/destination check"
    );
    let mut ids = todo.into_iter();
    let mut set = JoinSet::new();
    loop {
        while set.len() < s.opts.parallelism.max(1) {
            let Some(id) = ids.next() else { break };
            let s = s.clone();
            set.spawn(async move {
                retry::send(&s.opts.retry, "ModifyInstanceAttribute", || {
                    s.ec2()
                        .modify_instance_attribute()
                        .instance_id(&id)
                        .source_dest_check(AttributeBooleanValue::builder().value(false).build())
                        .send()
                })
                .await
            });
        }
        match set.join_next().await {
            None => break,
            Some(r) => {
                r.map_err(|e| AwsError::unexpected("ModifyInstanceAttribute", e.to_string()))??;
            }
        }
    }
    Ok(())
}

/// routeTable mode: one VPC route per node, pod CIDR → instance.
pub async fn ensure_routes(
    s: &Session,
    plan: &AwsPlan,
    route_table_id: &str,
    nodes: &BTreeMap<String, Instance>,
) -> Result<(), AwsError> {
    let tables = super::network::describe_route_tables(s).await?;
    let table = tables
        .iter()
        .find(|t| t.route_table_id() == Some(route_table_id))
        .ok_or_else(|| AwsError::unexpected("DescribeRouteTables", "route table vanished"))?;
    let have: BTreeMap<String, Option<String>> = table
        .routes()
        .iter()
        .filter_map(|r| {
            Some((
                r.destination_cidr_block()?.to_string(),
                r.instance_id().map(str::to_string),
            ))
        })
        .collect();
    for n in &plan.nodes {
        let Some(id) = nodes.get(&n.name).and_then(|i| i.instance_id()) else {
            continue;
        };
        let dest = n.pod_cidr.to_string();
        match have.get(&dest) {
            Some(Some(cur)) if cur == id => {}
            Some(_) => {
                retry::send(&s.opts.retry, "ReplaceRoute", || {
                    s.ec2()
                        .replace_route()
                        .route_table_id(route_table_id)
                        .destination_cidr_block(&dest)
                        .instance_id(id)
                        .send()
                })
                .await?;
            }
            None => {
                retry::send(&s.opts.retry, "CreateRoute", || {
                    s.ec2()
                        .create_route()
                        .route_table_id(route_table_id)
                        .destination_cidr_block(&dest)
                        .instance_id(id)
                        .send()
                })
                .await?;
                s.created("route", &dest);
            }
        }
    }
    Ok(())
}
