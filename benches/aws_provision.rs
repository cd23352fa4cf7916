//! API calls and wall time to provision and tear down gpu-1000 (1003 nodes) against a local moto
//! server, for k8sforge's batched provider and for a naive one-call-per-node approach (written
//! here only to be counted). k8sforge is measured in both pod-routing modes: vxlan (gpu-1000's
//! default, no per-instance call) and hostRoutes (source/destination check off per instance).
//! Run: `cargo bench --bench aws_provision` (needs `moto[server]`).

#[path = "../tests/support/aws.rs"]
mod aws_support;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use aws_sdk_ec2::types::{
    AttributeBooleanValue, InstanceNetworkInterfaceSpecification, InstanceType, ResourceType,
};
use aws_support as peer;
use k8sforge::profile::{self, AmiLookup, Profile};
use k8sforge::provider::aws::retry::RetryPolicy;
use k8sforge::provider::aws::session::Session;
use k8sforge::provider::aws::{images, keypair, network, plan, tags, AwsProvider, Options};
use k8sforge::provider::ProvisionContext;

fn opts() -> Options {
    Options {
        retry: RetryPolicy {
            max_attempts: 8,
            base: Duration::from_millis(5),
            cap: Duration::from_millis(100),
        },
        poll_interval: Duration::from_millis(100),
        wait_timeout: Duration::from_secs(600),
        dependency_timeout: Duration::from_secs(30),
        // moto prints no cloud-init host-key block: one look, no wait.
        host_key_wait: Duration::ZERO,
        ..Options::default()
    }
}

fn profile_for(account: &str, routing: &str, extra: &[String]) -> Profile {
    let mut sets = vec![format!("network.podRouting={routing}")];
    sets.extend(extra.iter().cloned());
    let mut p = profile::load("gpu-1000", &sets).expect("profile").profile;
    p.provider.aws.as_mut().expect("aws").ami = AmiLookup {
        owner: account.into(),
        name: "k8sforge-bench-*".into(),
    };
    p
}

/// Nodes of gpu-1000: 3 control planes + 1000 GPU workers.
const NODES: u64 = 1003;

fn table(title: &str, counts: &BTreeMap<String, u64>, secs: f64) {
    table_n(title, counts, secs, NODES)
}

fn table_n(title: &str, counts: &BTreeMap<String, u64>, secs: f64, nodes: u64) {
    let total: u64 = counts.values().sum();
    println!(
        "\n{title}: {total} calls ({:.2} per node), {secs:.1} s",
        total as f64 / nodes as f64
    );
    for (k, v) in counts {
        println!("  {k:<34} {v:>6}");
    }
}

async fn batched(account: &str, routing: &str) {
    batched_with(account, routing, &[], NODES).await
}

/// `extra`: profile overrides; `nodes`: the node count they make (for the per-node figure).
async fn batched_with(account: &str, routing: &str, extra: &[String], nodes: u64) {
    let c = peer::clients(account);
    peer::register_ami(&c, "k8sforge-bench-1").await;
    let p = profile_for(account, routing, extra);
    let planned = k8sforge::inventory::planned(&p, &BTreeMap::new()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ctx = ProvisionContext {
        profile: &p,
        planned: &planned,
        cluster_dir: dir.path().to_path_buf(),
        ssh_public_key: peer::ssh_public_key(),
        replace_drifted: false,
    };
    let provider = AwsProvider::new(c, opts());
    let proxy = peer::proxy();

    proxy.reset(account);
    let t = Instant::now();
    provider.provision_outcome(&ctx).await.expect("provision");
    table_n(
        &format!("k8sforge provision (batched, {routing})"),
        &proxy.counts(account),
        t.elapsed().as_secs_f64(),
        nodes,
    );

    proxy.reset(account);
    let t = Instant::now();
    provider.provision_outcome(&ctx).await.expect("second up");
    table_n(
        &format!("k8sforge second up (adopt, {routing})"),
        &proxy.counts(account),
        t.elapsed().as_secs_f64(),
        nodes,
    );

    proxy.reset(account);
    let t = Instant::now();
    provider
        .teardown_report(&ctx, false)
        .await
        .expect("teardown");
    table_n(
        &format!("k8sforge teardown ({routing})"),
        &proxy.counts(account),
        t.elapsed().as_secs_f64(),
        nodes,
    );
}

/// The naive approach: the same network, then per node one RunInstances, one CreateTags for its
/// Name, one DescribeInstances to wait, one ModifyInstanceAttribute; teardown per node likewise.
async fn naive(account: &str) {
    let c = peer::clients(account);
    peer::register_ami(&c, "k8sforge-bench-1").await;
    let p = profile_for(account, "hostRoutes", &[]);
    let planned = k8sforge::inventory::planned(&p, &BTreeMap::new()).unwrap();
    let s = Session::new(c.clone(), opts(), &p.name);
    let pl = plan::plan(&p, &planned, peer::REGION).unwrap();
    let proxy = peer::proxy();
    proxy.reset(account);
    let t = Instant::now();
    let ami = images::find(&s, &pl.ami, peer::REGION).await.unwrap();
    let net = network::ensure(&s, &pl).await.unwrap();
    let key = keypair::ensure(&s, &peer::ssh_public_key()).await.unwrap();
    let mut ids = Vec::new();
    for n in &pl.nodes {
        let out = c
            .ec2
            .run_instances()
            .image_id(&ami.id)
            .instance_type(InstanceType::from(n.instance_type.as_str()))
            .min_count(1)
            .max_count(1)
            .key_name(&key)
            .network_interfaces(
                InstanceNetworkInterfaceSpecification::builder()
                    .device_index(0)
                    .subnet_id(&net.subnet_ids[0])
                    .groups(&net.sg_id)
                    .associate_public_ip_address(true)
                    .build(),
            )
            .tag_specifications(tags::spec(ResourceType::Instance, &p.name, "x", &[]))
            .send()
            .await
            .unwrap();
        let id = out.instances()[0].instance_id().unwrap().to_string();
        c.ec2
            .create_tags()
            .resources(&id)
            .tags(
                aws_sdk_ec2::types::Tag::builder()
                    .key("Name")
                    .value(&n.name)
                    .build(),
            )
            .send()
            .await
            .unwrap();
        ids.push(id);
    }
    for id in &ids {
        c.ec2
            .describe_instances()
            .instance_ids(id)
            .send()
            .await
            .unwrap();
        c.ec2
            .modify_instance_attribute()
            .instance_id(id)
            .source_dest_check(AttributeBooleanValue::builder().value(false).build())
            .send()
            .await
            .unwrap();
    }
    table(
        "naive provision (one call per node)",
        &proxy.counts(account),
        t.elapsed().as_secs_f64(),
    );

    proxy.reset(account);
    let t = Instant::now();
    for id in &ids {
        c.ec2
            .terminate_instances()
            .instance_ids(id)
            .send()
            .await
            .unwrap();
    }
    for id in &ids {
        c.ec2
            .describe_instances()
            .instance_ids(id)
            .send()
            .await
            .unwrap();
    }
    table(
        "naive teardown of the instances alone (one call per node)",
        &proxy.counts(account),
        t.elapsed().as_secs_f64(),
    );
}

fn main() {
    // `cargo test --benches` runs bench binaries with --bench absent: keep that cheap.
    if !std::env::args().any(|a| a == "--bench") {
        println!("aws_provision: run with `cargo bench --bench aws_provision`");
        return;
    }
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(4)
        .enable_all()
        .build()
        .unwrap();
    // `-- --bench efa [N]`: p5 workers launched with their 32 EFA interfaces each (N workers,
    // default 1000), vxlan.
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "efa") {
        let workers: u64 = args.get(i + 1).and_then(|n| n.parse().ok()).unwrap_or(1000);
        let extra = [
            "workers[0].aws.efa=true".to_string(),
            format!("workers[0].count={workers}"),
        ];
        rt.block_on(batched_with("200000000004", "vxlan", &extra, workers + 3));
        return;
    }
    rt.block_on(async {
        batched("200000000001", "vxlan").await;
        batched("200000000003", "hostRoutes").await;
        naive("200000000002").await;
    });
}
