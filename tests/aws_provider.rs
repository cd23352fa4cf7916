//! The AWS provider against a real EC2/ELBv2 API server: moto in server mode on 127.0.0.1 with its
//! strict validation on, behind a counting, fault-injecting proxy (see support/aws.rs). Needs
//! `pip install 'moto[server]'`; fails with that hint when moto is missing.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use k8sforge::inventory::{self, Inventory};
use k8sforge::profile::{self, AmiLookup, Profile};
use k8sforge::provider::aws::plan::{Rule, Source};
use k8sforge::provider::aws::retry::RetryPolicy;
use k8sforge::provider::aws::{network, AwsError, AwsProvider, Clients, Options};
use k8sforge::provider::{ProvisionContext, CLUSTER_TAG};
use support::aws::{self as peer, Fault, FaultMode};

const AMI_NAME: &str = "k8sforge-test-noble-20260101";

fn opts() -> Options {
    Options {
        retry: RetryPolicy {
            max_attempts: 8,
            base: Duration::from_millis(5),
            cap: Duration::from_millis(100),
        },
        poll_interval: Duration::from_millis(100),
        wait_timeout: Duration::from_secs(300),
        dependency_timeout: Duration::from_secs(30),
        parallelism: 16,
        // moto prints no cloud-init host-key block: one look, no wait.
        host_key_wait: Duration::ZERO,
        ..Options::default()
    }
}

/// A built-in profile pointed at the account's test AMI, looked up by owner and name pattern.
fn profile_for(name: &str, account: &str, sets: &[&str]) -> Profile {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let mut p = profile::load(name, &sets).expect("profile").profile;
    p.provider.aws.as_mut().expect("aws section").ami = AmiLookup {
        owner: account.to_string(),
        name: "k8sforge-test-noble-*".to_string(),
    };
    p
}

struct Env {
    account: String,
    clients: Clients,
    provider: AwsProvider,
    dir: tempfile::TempDir,
    key: String,
}

async fn env(account: &str) -> Env {
    let clients = peer::clients(account);
    peer::register_ami(&clients, AMI_NAME).await;
    peer::proxy().reset(account);
    Env {
        account: account.to_string(),
        provider: AwsProvider::new(clients.clone(), opts()),
        clients,
        dir: tempfile::tempdir().unwrap(),
        key: peer::ssh_public_key(),
    }
}

impl Env {
    fn ctx<'a>(&'a self, p: &'a Profile, planned: &'a Inventory) -> ProvisionContext<'a> {
        ProvisionContext {
            profile: p,
            planned,
            cluster_dir: self.dir.path().to_path_buf(),
            ssh_public_key: self.key.clone(),
            replace_drifted: false,
        }
    }

    fn counts(&self) -> BTreeMap<String, u64> {
        peer::proxy().counts(&self.account)
    }
}

fn planned(p: &Profile) -> Inventory {
    inventory::planned(p, &BTreeMap::new()).unwrap()
}

fn mutating(counts: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    counts
        .iter()
        .filter(|(k, _)| !k.starts_with("Describe") && !k.starts_with("Get"))
        .map(|(k, v)| (k.clone(), *v))
        .collect()
}

fn tagged(tags: &[aws_sdk_ec2::types::Tag], cluster: &str) -> bool {
    tags.iter()
        .any(|t| t.key() == Some(CLUSTER_TAG) && t.value() == Some(cluster))
}

/// Everything of every type the provider creates that carries the cluster tag.
async fn tagged_inventory(c: &Clients, cluster: &str) -> BTreeMap<&'static str, usize> {
    let f = || {
        aws_sdk_ec2::types::Filter::builder()
            .name(format!("tag:{CLUSTER_TAG}"))
            .values(cluster)
            .build()
    };
    let mut m = BTreeMap::new();
    let ec2 = &c.ec2;
    m.insert(
        "vpc",
        ec2.describe_vpcs()
            .filters(f())
            .send()
            .await
            .unwrap()
            .vpcs()
            .len(),
    );
    m.insert(
        "subnet",
        ec2.describe_subnets()
            .filters(f())
            .send()
            .await
            .unwrap()
            .subnets()
            .len(),
    );
    m.insert(
        "internet-gateway",
        ec2.describe_internet_gateways()
            .filters(f())
            .send()
            .await
            .unwrap()
            .internet_gateways()
            .len(),
    );
    m.insert(
        "route-table",
        ec2.describe_route_tables()
            .filters(f())
            .send()
            .await
            .unwrap()
            .route_tables()
            .len(),
    );
    m.insert(
        "security-group",
        ec2.describe_security_groups()
            .filters(f())
            .send()
            .await
            .unwrap()
            .security_groups()
            .len(),
    );
    m.insert(
        "key-pair",
        ec2.describe_key_pairs()
            .filters(f())
            .send()
            .await
            .unwrap()
            .key_pairs()
            .len(),
    );
    let live = ec2
        .describe_instances()
        .filters(f())
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("instance-state-name")
                .values("pending")
                .values("running")
                .values("stopping")
                .values("stopped")
                .build(),
        )
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap();
    m.insert("instance", live.iter().map(|r| r.instances().len()).sum());
    m.insert(
        "volume",
        ec2.describe_volumes()
            .filters(f())
            .send()
            .await
            .unwrap()
            .volumes()
            .len(),
    );
    let lbs = c.elb.describe_load_balancers().send().await.unwrap();
    let tgs = c.elb.describe_target_groups().send().await.unwrap();
    let arns: Vec<String> = lbs
        .load_balancers()
        .iter()
        .filter_map(|l| l.load_balancer_arn().map(String::from))
        .chain(
            tgs.target_groups()
                .iter()
                .filter_map(|t| t.target_group_arn().map(String::from)),
        )
        .collect();
    let mut elb_tagged = 0;
    if !arns.is_empty() {
        let t = c
            .elb
            .describe_tags()
            .set_resource_arns(Some(arns))
            .send()
            .await
            .unwrap();
        elb_tagged = t
            .tag_descriptions()
            .iter()
            .filter(|d| {
                d.tags()
                    .iter()
                    .any(|t| t.key() == Some(CLUSTER_TAG) && t.value() == Some(cluster))
            })
            .count();
    }
    m.insert("load-balancer+target-group", elb_tagged);
    m
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gpu_1000_provision_adopt_and_teardown() {
    let e = env("100000000001").await;
    let c = &e.clients;
    // An unrelated, untagged VPC in the same account: teardown must leave it alone.
    let foreign = c
        .ec2
        .create_vpc()
        .cidr_block("172.31.0.0/16")
        .send()
        .await
        .unwrap();
    let foreign_id = foreign.vpc().unwrap().vpc_id().unwrap().to_string();
    peer::proxy().reset(&e.account);

    let p = profile_for("gpu-1000", &e.account, &[]);
    let plan_inv = planned(&p);
    let ctx = e.ctx(&p, &plan_inv);
    let started = std::time::Instant::now();
    let out = e
        .provider
        .provision_outcome(&ctx)
        .await
        .expect("provision gpu-1000");
    eprintln!("provision of 1003 nodes took {:?}", started.elapsed());
    let counts = e.counts();
    eprintln!("calls: {counts:?}");

    // Batching: 3 control planes + 2 x 500 GPU workers = 3 RunInstances for 1003 nodes. (This
    // used to flake at 4: moto failed one of two launches racing in the subnet with a 500 after
    // creating part of it, and the provider re-sent it blindly. The proxy now passes launches to
    // moto one at a time, and the provider looks before re-sending: see
    // lost_run_instances_answers_launch_no_duplicates.)
    let moto_failures: Vec<String> = peer::proxy()
        .log(&e.account)
        .into_iter()
        .filter(|a| a.starts_with("(moto ") && a.ends_with("on RunInstances)"))
        .collect();
    assert!(moto_failures.is_empty(), "{moto_failures:?}");
    assert_eq!(counts["RunInstances"], 3);
    assert!(counts["RunInstances"] <= 1003u64.div_ceil(500));
    // The call budget: pod traffic is VXLAN (gpu-1000's default), so no instance needs its
    // source/destination check turned off and nothing is called per node: everything together is
    // well under one call per 16 nodes.
    let nodes = 1003u64;
    assert_eq!(counts.get("ModifyInstanceAttribute"), None, "{counts:?}");
    // The one per-node call: GetConsoleOutput (host keys to pin; EC2 has no batch form). With
    // `host_key_wait` 0 exactly one per node; each further round of the wait asks only the nodes
    // still without keys. Counted apart from the budget.
    assert_eq!(counts.get("GetConsoleOutput"), Some(&nodes), "{counts:?}");
    let total: u64 = counts
        .iter()
        .filter(|(a, _)| a.as_str() != "GetConsoleOutput")
        .map(|(_, n)| n)
        .sum();
    assert!(total < nodes / 16, "{total} calls: {counts:?}");
    // Waiting: one describe per batch per round, not per instance.
    assert!(counts["DescribeInstances"] < 20, "{counts:?}");

    // Inventory: every planned node, real distinct addresses, planned pod CIDRs, LB endpoint.
    let inv = &out.inventory;
    assert!(!inv.planned);
    assert_eq!(inv.nodes.len(), 1003);
    let ips: BTreeSet<_> = inv.nodes.iter().map(|n| n.internal_ip).collect();
    assert_eq!(ips.len(), 1003);
    let node_net: ipnet::Ipv4Net = "10.0.0.0/20".parse().unwrap();
    assert!(inv.nodes.iter().all(|n| node_net.contains(&n.internal_ip)));
    assert!(inv.nodes.iter().all(|n| n.external_ip.is_some()));
    assert!(inv.nodes.iter().all(|n| Some(n.ssh.host) == n.external_ip));
    for (a, b) in inv.nodes.iter().zip(&plan_inv.nodes) {
        assert_eq!((&a.name, a.pod_cidr), (&b.name, b.pod_cidr));
    }
    let lbs = c.elb.describe_load_balancers().send().await.unwrap();
    assert_eq!(lbs.load_balancers().len(), 1);
    let lb = &lbs.load_balancers()[0];
    assert_eq!(inv.api.host, lb.dns_name().unwrap());
    assert_eq!(inv.api.port, 6443);
    assert_eq!(lb.r#type().unwrap().as_str(), "network");

    // Every resource exists and is tagged.
    let have = tagged_inventory(c, "gpu-1000").await;
    let want: BTreeMap<&str, usize> = [
        ("vpc", 1),
        ("subnet", 1),
        ("internet-gateway", 1),
        ("route-table", 1),
        ("security-group", 1),
        ("key-pair", 1),
        ("instance", 1003),
        ("volume", 1003),
        ("load-balancer+target-group", 2),
    ]
    .into_iter()
    .collect();
    assert_eq!(have, want);

    // Instances: right types, all tagged, in the cluster's subnet.
    let all = c
        .ec2
        .describe_instances()
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap();
    let instances: Vec<_> = all.iter().flat_map(|r| r.instances().to_vec()).collect();
    assert_eq!(instances.len(), 1003);
    assert!(instances.iter().all(|i| tagged(i.tags(), "gpu-1000")));
    // VXLAN: the check stays on everywhere (it never sees a pod address).
    assert!(instances
        .iter()
        .all(|i| i.source_dest_check() != Some(false)));
    let p5 = instances
        .iter()
        .filter(|i| i.instance_type().map(|t| t.as_str()) == Some("p5.48xlarge"))
        .count();
    assert_eq!(p5, 1000);
    let vpc = c
        .ec2
        .describe_vpcs()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name(format!("tag:{CLUSTER_TAG}"))
                .values("gpu-1000")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let vpc = &vpc.vpcs()[0];
    assert_eq!(vpc.cidr_block(), Some("10.0.0.0/20"));
    let vpc_id = vpc.vpc_id().unwrap();
    for attr in [
        aws_sdk_ec2::types::VpcAttributeName::EnableDnsSupport,
        aws_sdk_ec2::types::VpcAttributeName::EnableDnsHostnames,
    ] {
        let a = c
            .ec2
            .describe_vpc_attribute()
            .vpc_id(vpc_id)
            .attribute(attr.clone())
            .send()
            .await
            .unwrap();
        let on = a
            .enable_dns_support()
            .or(a.enable_dns_hostnames())
            .and_then(|v| v.value());
        assert_eq!(on, Some(true), "{attr:?}");
    }
    assert!(instances.iter().all(|i| i.vpc_id() == Some(vpc_id)));

    // Security group rules exactly as specified.
    let sgs = c
        .ec2
        .describe_security_groups()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name(format!("tag:{CLUSTER_TAG}"))
                .values("gpu-1000")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let sg = &sgs.security_groups()[0];
    let rules: BTreeSet<(Rule, Option<String>)> = network::current_rules(sg);
    let admin: ipnet::Ipv4Net = "203.0.113.0/24".parse().unwrap();
    let tcp = |port: i32, source| Rule {
        protocol: "tcp".into(),
        from: port,
        to: port,
        source,
    };
    let all_from = |source| Rule {
        protocol: "-1".into(),
        from: -1,
        to: -1,
        source,
    };
    let want_rules: BTreeSet<(Rule, Option<String>)> = [
        tcp(22, Source::Cidr(admin)),
        tcp(6443, Source::Cidr(admin)),
        tcp(6443, Source::Cidr(node_net)),
        // Every protocol between the nodes: this admits VXLAN (UDP 4789 between node
        // addresses). No rule for the pod range: in VXLAN mode no packet carries a pod address
        // outside the tunnel.
        all_from(Source::SelfGroup),
    ]
    .into_iter()
    .map(|r| (r, None))
    .collect();
    assert_eq!(rules, want_rules);

    // Route table: default route to the IGW, associated with the subnet.
    let rts = c
        .ec2
        .describe_route_tables()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name(format!("tag:{CLUSTER_TAG}"))
                .values("gpu-1000")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let rt = &rts.route_tables()[0];
    assert!(rt
        .routes()
        .iter()
        .any(|r| r.destination_cidr_block() == Some("0.0.0.0/0")
            && r.gateway_id().is_some_and(|g| g.starts_with("igw-"))));
    assert_eq!(
        rt.associations()
            .iter()
            .filter(|a| a.subnet_id().is_some())
            .count(),
        1
    );

    // Target group: TCP on the API port, the three control planes registered.
    let tg = c.elb.describe_target_groups().send().await.unwrap();
    let tg = &tg.target_groups()[0];
    assert_eq!(tg.port(), Some(6443));
    let health = c
        .elb
        .describe_target_health()
        .target_group_arn(tg.target_group_arn().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(health.target_health_descriptions().len(), 3);
    let listeners = c
        .elb
        .describe_listeners()
        .load_balancer_arn(lb.load_balancer_arn().unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(listeners.listeners().len(), 1);
    assert_eq!(listeners.listeners()[0].port(), Some(6443));

    // Second up: adopts everything, creates nothing, changes nothing.
    peer::proxy().reset(&e.account);
    let again = e.provider.provision_outcome(&ctx).await.expect("second up");
    assert_eq!(again.created, Vec::<(String, String)>::new());
    let counts = e.counts();
    assert_eq!(
        mutating(&counts),
        BTreeMap::new(),
        "second up must only read: {counts:?}"
    );
    assert_eq!(again.inventory, out.inventory);
    assert_eq!(tagged_inventory(c, "gpu-1000").await, want);

    // Dry run lists and deletes nothing.
    peer::proxy().reset(&e.account);
    let dry = e
        .provider
        .teardown_report(&ctx, true)
        .await
        .expect("dry run");
    assert!(dry.dry_run);
    assert_eq!(dry.deleted.len(), 1 + 1 + 1003 + 1 + 1 + 1 + 1 + 1 + 1);
    assert_eq!(mutating(&e.counts()), BTreeMap::new());

    // Teardown: termination is held back by the proxy for a few describes, as real instances
    // take minutes to shut down; nothing that instances use may be deleted before they are gone.
    peer::proxy().reset(&e.account);
    peer::proxy().defer_terminate(&e.account, 3);
    let started = std::time::Instant::now();
    let report = e
        .provider
        .teardown_report(&ctx, false)
        .await
        .expect("teardown");
    eprintln!("teardown of 1003 nodes took {:?}", started.elapsed());
    let log = peer::proxy().log(&e.account);
    eprintln!("teardown calls: {:?}", e.counts());
    let pos = |what: &str| {
        log.iter()
            .position(|a| a == what)
            .unwrap_or_else(|| panic!("no {what} in {log:?}"))
    };
    let terminated = pos("(termination applied)");
    assert!(pos("TerminateInstances") < terminated);
    let polls = log[pos("TerminateInstances")..terminated]
        .iter()
        .filter(|a| *a == "DescribeInstances")
        .count();
    assert!(
        polls >= 3,
        "teardown polled {polls} times before termination"
    );
    for dependent in [
        "DeleteSubnet",
        "DeleteSecurityGroup",
        "DeleteVpc",
        "DetachInternetGateway",
    ] {
        assert!(
            pos(dependent) > terminated,
            "{dependent} before instances were gone: {log:?}"
        );
    }
    assert_eq!(report.deleted.len(), dry.deleted.len());
    let mut none = want.clone();
    none.values_mut().for_each(|v| *v = 0);
    assert_eq!(tagged_inventory(c, "gpu-1000").await, none);
    // The untagged VPC survived.
    let v = c
        .ec2
        .describe_vpcs()
        .vpc_ids(&foreign_id)
        .send()
        .await
        .unwrap();
    assert_eq!(v.vpcs().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_preflight_names_numbers_and_command_and_creates_nothing() {
    let e = env("100000000002").await;
    peer::proxy().set_quota(&e.account, "L-417A185B", 1536.0);
    let p = profile_for("gpu-1000", &e.account, &[]);
    let inv = planned(&p);
    let err = e
        .provider
        .provision_outcome(&e.ctx(&p, &inv))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, AwsError::Quota(_)), "{msg}");
    for needle in [
        "192000 vCPUs",
        "Running On-Demand P instances",
        "us-east-1",
        "1000 x p5.48xlarge (192 vCPUs each)",
        "allows 1536 vCPUs",
        "aws service-quotas request-service-quota-increase --service-code ec2 --quota-code L-417A185B --desired-value 192000 --region us-east-1",
        "Nothing was created",
    ] {
        assert!(msg.contains(needle), "missing {needle:?} in:\n{msg}");
    }
    let counts = e.counts();
    assert_eq!(mutating(&counts), BTreeMap::new(), "{counts:?}");
    assert_eq!(
        counts.get("GetServiceQuota"),
        Some(&2),
        "P and Standard quotas read: {counts:?}"
    );
    let have = tagged_inventory(&e.clients, "gpu-1000").await;
    assert!(have.values().all(|v| *v == 0), "{have:?}");
}

/// An account with no GPU quota at all (the AWS default for "Running On-Demand P instances" in
/// a new account is 0): the preflight says what is missing, how much, where to ask, and nothing
/// is created. The quota is answered by the test kit's Service Quotas peer (moto 5.2 has no
/// GetServiceQuota for EC2 codes), in that API's JSON shape.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn zero_gpu_quota_is_explained_and_nothing_is_created() {
    let e = env("100000000014").await;
    peer::proxy().set_quota(&e.account, "L-417A185B", 0.0);
    let p = profile_for(
        "gpu-dev",
        &e.account,
        &["workers[1].aws.instanceType=p5.48xlarge"],
    );
    let inv = planned(&p);
    let err = e
        .provider
        .provision_outcome(&e.ctx(&p, &inv))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, AwsError::Quota(_)), "{msg}");
    for needle in [
        "needs 384 vCPUs of \"Running On-Demand P instances\" in us-east-1",
        "2 x p5.48xlarge (192 vCPUs each)",
        "allows 0 vCPUs",
        "--quota-code L-417A185B --desired-value 384 --region us-east-1",
        "https://console.aws.amazon.com/servicequotas/home/services/ec2/quotas/L-417A185B",
        "Nothing was created",
    ] {
        assert!(msg.contains(needle), "missing {needle:?} in:\n{msg}");
    }
    let counts = e.counts();
    assert_eq!(mutating(&counts), BTreeMap::new(), "{counts:?}");
    let have = tagged_inventory(&e.clients, "gpu-dev").await;
    assert!(have.values().all(|v| *v == 0), "{have:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn offering_preflight_fails_for_a_zone_without_the_type() {
    let e = env("100000000005").await;
    let p = profile_for(
        "gpu-dev",
        &e.account,
        &[
            "workers[1].aws.instanceType=g4dn.12xlarge",
            "provider.aws.zones=[us-east-1e]",
        ],
    );
    let inv = planned(&p);
    let err = e
        .provider
        .provision_outcome(&e.ctx(&p, &inv))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("instance type not offered") && err.contains("g4dn.12xlarge in us-east-1e"),
        "{err}"
    );
    assert!(err.contains("Nothing was created"), "{err}");
    assert_eq!(mutating(&e.counts()), BTreeMap::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn throttling_is_retried_and_route_table_mode_adds_one_route_per_node() {
    let e = env("100000000003").await;
    let fault = |action: &str, code: &str, status: u16, times: u32| Fault {
        account: e.account.clone(),
        action: action.into(),
        body_contains: None,
        code: code.into(),
        status,
        times,
        mode: FaultMode::Instead,
    };
    let proxy = peer::proxy();
    proxy.inject(fault("CreateVpc", "RequestLimitExceeded", 503, 2));
    proxy.inject(fault("RunInstances", "RequestLimitExceeded", 503, 3));
    proxy.inject(fault("DescribeInstances", "RequestLimitExceeded", 503, 2));
    proxy.inject(fault(
        "ModifyInstanceAttribute",
        "RequestLimitExceeded",
        503,
        3,
    ));
    proxy.inject(fault("CreateRoute", "InternalError", 500, 1));
    proxy.inject(fault("CreateLoadBalancer", "Throttling", 400, 2));
    let p = profile_for("gpu-dev", &e.account, &["network.podRouting=routeTable"]);
    let inv = planned(&p);
    let out = e
        .provider
        .provision_outcome(&e.ctx(&p, &inv))
        .await
        .expect("provision despite throttling");
    let counts = e.counts();
    assert_eq!(counts["CreateVpc"], 3, "{counts:?}");
    // 3 groups (control plane, cpu, gpu) = 3 batches, plus 3 throttled attempts.
    assert_eq!(counts["RunInstances"], 3 + 3, "{counts:?}");
    assert_eq!(counts["ModifyInstanceAttribute"], 5 + 3, "{counts:?}");
    assert_eq!(counts["CreateLoadBalancer"], 3, "{counts:?}");
    assert_eq!(out.inventory.nodes.len(), 5);
    // One VPC, one of each, despite the retried creates.
    let have = tagged_inventory(&e.clients, "gpu-dev").await;
    assert_eq!(have["vpc"], 1);
    assert_eq!(have["instance"], 5);

    // routeTable mode: one route per node's pod CIDR, to that node's instance.
    let rts = e
        .clients
        .ec2
        .describe_route_tables()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name(format!("tag:{CLUSTER_TAG}"))
                .values("gpu-dev")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let routes: BTreeMap<String, String> = rts.route_tables()[0]
        .routes()
        .iter()
        .filter_map(|r| {
            Some((
                r.destination_cidr_block()?.to_string(),
                r.instance_id()?.to_string(),
            ))
        })
        .collect();
    assert_eq!(routes.len(), 5, "{routes:?}");
    for n in &out.inventory.nodes {
        assert!(
            routes.contains_key(&n.pod_cidr.to_string()),
            "{} {routes:?}",
            n.pod_cidr
        );
    }
    let report = e
        .provider
        .teardown_report(&e.ctx(&p, &inv), false)
        .await
        .expect("teardown");
    assert!(!report.deleted.is_empty());
    let left = tagged_inventory(&e.clients, "gpu-dev").await;
    assert!(left.values().all(|v| *v == 0), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capacity_error_names_the_batch_and_a_rerun_launches_only_the_rest() {
    let e = env("100000000004").await;
    peer::proxy().inject(Fault {
        account: e.account.clone(),
        action: "RunInstances".into(),
        body_contains: Some("p4d.24xlarge".into()),
        code: "InsufficientInstanceCapacity".into(),
        status: 500,
        times: 1,
        mode: FaultMode::Instead,
    });
    let p = profile_for("gpu-dev", &e.account, &[]);
    let inv = planned(&p);
    let ctx = e.ctx(&p, &inv);
    let err = e.provider.provision_outcome(&ctx).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, AwsError::Capacity(_)), "{msg}");
    for needle in [
        "1 of 3 launch batches failed",
        "batch gpu-1..gpu-2 (2 x p4d.24xlarge in us-east-1a)",
        "InsufficientInstanceCapacity",
        "Re-run `k8sforge up`",
        "k8sforge teardown",
    ] {
        assert!(msg.contains(needle), "missing {needle:?} in:\n{msg}");
    }
    // Not retried: capacity errors never succeed by hammering.
    assert_eq!(e.counts()["RunInstances"], 3);
    // The other nodes exist, tagged; the GPU ones do not.
    assert_eq!(tagged_inventory(&e.clients, "gpu-dev").await["instance"], 3);

    // Re-run: only the failed batch is launched.
    peer::proxy().reset(&e.account);
    let out = e.provider.provision_outcome(&ctx).await.expect("re-run");
    assert_eq!(e.counts()["RunInstances"], 1);
    assert_eq!(out.inventory.nodes.len(), 5);
    assert_eq!(
        out.created.iter().filter(|(k, _)| k == "instance").count(),
        2
    );

    e.provider
        .teardown_report(&ctx, false)
        .await
        .expect("teardown");
    let left = tagged_inventory(&e.clients, "gpu-dev").await;
    assert!(left.values().all(|v| *v == 0), "{left:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn untagged_key_pair_with_the_cluster_name_is_refused_and_survives_teardown() {
    let e = env("100000000006").await;
    e.clients
        .ec2
        .import_key_pair()
        .key_name("k8sforge-gpu-dev")
        .public_key_material(aws_sdk_ec2::primitives::Blob::new(peer::ssh_public_key()))
        .send()
        .await
        .unwrap();
    peer::proxy().reset(&e.account);
    let p = profile_for("gpu-dev", &e.account, &[]);
    let inv = planned(&p);
    let ctx = e.ctx(&p, &inv);
    let err = e.provider.provision_outcome(&ctx).await.unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, AwsError::NotOwned(_)), "{msg}");
    assert!(
        msg.contains("key pair k8sforge-gpu-dev")
            && msg.contains("without the tag k8sforge.io/cluster=gpu-dev"),
        "{msg}"
    );
    let left = tagged_inventory(&e.clients, "gpu-dev").await;
    assert!(left.values().all(|v| *v == 0), "{left:?}");
    // Teardown finds nothing of the cluster's and leaves the user's key alone.
    let report = e.provider.teardown_report(&ctx, false).await.unwrap();
    assert_eq!(report.deleted, Vec::<(String, String)>::new());
    let keys = e
        .clients
        .ec2
        .describe_key_pairs()
        .key_names("k8sforge-gpu-dev")
        .send()
        .await
        .unwrap();
    assert_eq!(keys.key_pairs().len(), 1);
}

/// A RunInstances whose answer is lost after the server acted (a 5xx from a front end, a dropped
/// connection, a launch that failed half-way as moto's do when they race) must not launch its
/// instances twice: moto, like an expired ClientToken, does not deduplicate, so only the
/// provider's look-before-re-send keeps the count right. A launch that never reached the server
/// is re-sent; a half-done one is completed with its missing nodes only.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lost_run_instances_answers_launch_no_duplicates() {
    let e = env("100000000007").await;
    let fault = |body: &str, mode: FaultMode| Fault {
        account: e.account.clone(),
        action: "RunInstances".into(),
        body_contains: Some(format!("InstanceType={body}")),
        code: "InternalError".into(),
        status: 500,
        times: 1,
        mode,
    };
    let proxy = peer::proxy();
    // Control plane (1 node): a 500 before moto saw anything, so it is re-sent; moto launches
    // the re-sent one but its answer is a 500 too, so it is found by tag, not sent a third time.
    proxy.inject(fault("m6i.xlarge", FaultMode::Instead));
    proxy.inject(fault("m6i.xlarge", FaultMode::AfterForwarding));
    // CPU batch (2 nodes): moto launches both, the connection closes without an answer.
    proxy.inject(fault("m6i.2xlarge", FaultMode::DropAfterForwarding));
    // GPU batch (2 nodes): moto launches 1 of 2, then the client sees a 500.
    proxy.inject(fault("p4d.24xlarge", FaultMode::PartialAfterForwarding(1)));
    // hostRoutes mode: pod addresses on the wire, so every instance's check goes off.
    let p = profile_for("gpu-dev", &e.account, &["network.podRouting=hostRoutes"]);
    let inv = planned(&p);
    let ctx = e.ctx(&p, &inv);
    let out = e
        .provider
        .provision_outcome(&ctx)
        .await
        .expect("provision despite lost answers");
    let log = proxy.log(&e.account);
    let counts = e.counts();
    assert!(
        log.iter().any(|a| a == "(RunInstances answer dropped)"),
        "the drop fault did not fire: {log:?}"
    );
    // 3 batches + the control plane's re-send + one launch of the missing GPU node.
    assert_eq!(counts["RunInstances"], 5, "{counts:?}");

    // Exactly one instance per node, in the whole account, and every node mapped.
    let all = e
        .clients
        .ec2
        .describe_instances()
        .into_paginator()
        .items()
        .send()
        .collect::<Result<Vec<_>, _>>()
        .await
        .unwrap();
    let ids: Vec<String> = all
        .iter()
        .flat_map(|r| r.instances())
        .filter_map(|i| i.instance_id().map(String::from))
        .collect();
    assert_eq!(ids.len(), 5, "duplicate launches: {ids:?}");
    // hostRoutes: one ModifyInstanceAttribute per instance (EC2 takes one per call), and the
    // check is off on all of them.
    assert_eq!(counts["ModifyInstanceAttribute"], 5, "{counts:?}");
    assert!(all
        .iter()
        .flat_map(|r| r.instances())
        .all(|i| i.source_dest_check() == Some(false)));
    // The half-launched GPU batch was completed by a launch of its missing node alone.
    let mut batches: BTreeMap<String, usize> = BTreeMap::new();
    for i in all.iter().flat_map(|r| r.instances()) {
        let tag = i
            .tags()
            .iter()
            .find(|t| t.key() == Some("k8sforge.io/batch"))
            .and_then(|t| t.value())
            .unwrap_or("none");
        *batches.entry(tag.to_string()).or_default() += 1;
    }
    let want: BTreeMap<String, usize> = [
        ("controlPlane/1", 1),
        ("cpu/1", 2),
        ("gpu/1", 1),
        ("gpu/2", 1),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), v))
    .collect();
    assert_eq!(batches, want);
    assert_eq!(out.inventory.nodes.len(), 5);
    let created: BTreeSet<&str> = out
        .created
        .iter()
        .filter(|(k, _)| k == "instance")
        .map(|(_, id)| id.as_str())
        .collect();
    assert_eq!(created, ids.iter().map(String::as_str).collect());
    let ips: BTreeSet<_> = out.inventory.nodes.iter().map(|n| n.internal_ip).collect();
    assert_eq!(ips.len(), 5);

    // A re-run adopts all five and launches nothing.
    proxy.reset(&e.account);
    let again = e.provider.provision_outcome(&ctx).await.expect("re-run");
    assert_eq!(again.created, Vec::<(String, String)>::new());
    assert_eq!(e.counts().get("RunInstances"), None);

    e.provider
        .teardown_report(&ctx, false)
        .await
        .expect("teardown");
    let left = tagged_inventory(&e.clients, "gpu-dev").await;
    assert!(left.values().all(|v| *v == 0), "{left:?}");
}

/// p5 workers with `aws.efa: true`: the RunInstances request carries the 32 EFA-only interfaces
/// of the network-card layout AWS documents (plus the primary ENA interface) and the cluster
/// placement group, which provision creates tagged and teardown removes; the nodes' security
/// group keeps the all-traffic rule from itself that EFA needs. moto records the request but does
/// not model EFA devices or placement: that the interfaces come up as EFA devices and the
/// instances land close together only a real p5 launch shows.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p5_efa_interfaces_and_placement_group_created_and_torn_down() {
    let e = env("100000000013").await;
    let c = &e.clients;
    let p = profile_for(
        "gpu-dev",
        &e.account,
        &[
            "workers[1].aws.instanceType=p5.48xlarge",
            "workers[1].aws.efa=true",
            "workers[1].aws.capacityReservation.id=cr-0123456789abcdef0",
            "workers[1].aws.capacityReservation.capacityBlock=true",
        ],
    );
    let inv = planned(&p);
    let ctx = e.ctx(&p, &inv);
    let out = e.provider.provision_outcome(&ctx).await.expect("provision");
    let counts = e.counts();
    assert_eq!(counts.get("CreatePlacementGroup"), Some(&1), "{counts:?}");
    let total: u64 = counts.values().sum();
    assert!(total < 60, "{total} calls: {counts:?}");

    let launches = peer::proxy().launches(&e.account);
    let p5: Vec<_> = launches
        .iter()
        .filter(|l| l.get("InstanceType").map(String::as_str) == Some("p5.48xlarge"))
        .collect();
    assert_eq!(p5.len(), 1, "one batch for both GPU nodes: {launches:?}");
    let l = p5[0];
    assert_eq!(l["MinCount"], "2");
    let group = "k8sforge-gpu-dev-gpu";
    assert_eq!(l["Placement.GroupName"], group, "{l:?}");
    // The Capacity Block named in the profile: EC2's target shape and market type. (moto does
    // not model reservations; that EC2 accepts the block for this zone and type only a real
    // launch inside the block's window shows.)
    assert_eq!(
        l["CapacityReservationSpecification.CapacityReservationTarget.CapacityReservationId"],
        "cr-0123456789abcdef0",
        "{l:?}"
    );
    assert_eq!(
        l["InstanceMarketOptions.MarketType"], "capacity-block",
        "{l:?}"
    );
    let mut efa = Vec::new();
    let mut ena = Vec::new();
    for i in 1..=40 {
        let Some(kind) = l.get(&format!("NetworkInterface.{i}.InterfaceType")) else {
            continue;
        };
        let card: u32 = l[&format!("NetworkInterface.{i}.NetworkCardIndex")]
            .parse()
            .unwrap();
        let dev: u32 = l[&format!("NetworkInterface.{i}.DeviceIndex")]
            .parse()
            .unwrap();
        assert!(
            !l.contains_key(&format!("NetworkInterface.{i}.AssociatePublicIpAddress")),
            "EC2 refuses a public address with several interfaces: {l:?}"
        );
        match kind.as_str() {
            "efa-only" => efa.push((card, dev)),
            "interface" => ena.push((card, dev)),
            other => panic!("interface type {other}"),
        }
    }
    assert_eq!(ena, [(0, 0)], "primary ENA on card 0, device 0");
    assert_eq!(efa.len(), 32, "{efa:?}");
    assert_eq!(efa[0], (0, 1));
    assert_eq!(
        efa[1..].to_vec(),
        (1..32).map(|c| (c, 0)).collect::<Vec<_>>(),
        "one EFA-only interface per further network card"
    );
    // CPU nodes: one interface with a public address, no placement group.
    for l in launches
        .iter()
        .filter(|l| l["InstanceType"] != "p5.48xlarge")
    {
        assert!(!l.contains_key("Placement.GroupName"), "{l:?}");
        assert!(
            !l.keys()
                .any(|k| k.starts_with("CapacityReservation")
                    || k.starts_with("InstanceMarketOptions")),
            "{l:?}"
        );
        assert_eq!(l["NetworkInterface.1.AssociatePublicIpAddress"], "true");
        assert!(!l.contains_key("NetworkInterface.2.DeviceIndex"));
    }
    // The GPU nodes are reached at their VPC address (no public one).
    for n in out.inventory.nodes.iter().filter(|n| n.group == "gpu") {
        assert_eq!(
            n.ssh.host,
            std::net::IpAddr::V4(n.internal_ip),
            "{}",
            n.name
        );
    }

    // The placement group: strategy cluster, tagged for the cluster.
    let pgs = c
        .ec2
        .describe_placement_groups()
        .group_names(group)
        .send()
        .await
        .unwrap();
    let pg = &pgs.placement_groups()[0];
    assert_eq!(pg.strategy().map(|s| s.as_str()), Some("cluster"));
    assert!(tagged(pg.tags(), "gpu-dev"), "{pg:?}");
    // EFA's security-group rule: all traffic from the group itself.
    let sgs = c
        .ec2
        .describe_security_groups()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name(format!("tag:{CLUSTER_TAG}"))
                .values("gpu-dev")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let sg = &sgs.security_groups()[0];
    let sg_id = sg.group_id().unwrap();
    assert!(
        sg.ip_permissions()
            .iter()
            .any(|r| r.ip_protocol() == Some("-1")
                && r.user_id_group_pairs()
                    .iter()
                    .any(|g| g.group_id() == Some(sg_id))),
        "{sg:?}"
    );

    // A re-run adopts the group; teardown removes it.
    peer::proxy().reset(&e.account);
    e.provider.provision_outcome(&ctx).await.expect("re-run");
    assert_eq!(e.counts().get("CreatePlacementGroup"), None);
    let report = e
        .provider
        .teardown_report(&ctx, false)
        .await
        .expect("teardown");
    assert!(
        report
            .deleted
            .iter()
            .any(|(k, v)| k == "placement-group" && v == group),
        "{:?}",
        report.deleted
    );
    let left = c.ec2.describe_placement_groups().send().await.unwrap();
    assert!(
        !left
            .placement_groups()
            .iter()
            .any(|g| g.group_name() == Some(group)),
        "{left:?}"
    );
}
