//! The GCP provider against a fake Compute Engine server (tests/gcp/fake.rs) that checks every
//! request against the Compute v1 schema shipped in google-cloud-cli. A real Compute Engine is
//! impossible here (no cloud access) and no usable emulator exists; the fake is as strict about
//! the wire contract as the schema allows, and gcloud itself is pointed at it to cross-check.
//!
//! Needs: google-cloud-cli (the test script apt-installs it), python3, ssh-keygen (for the CLI test).

#[path = "gcp/batch.rs"]
mod batch;
#[path = "gcp/fake.rs"]
mod fake;
#[path = "gcp/handlers.rs"]
mod handlers;
#[path = "gcp/schema.rs"]
mod schema;
#[path = "gcp/token.rs"]
mod token;

use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;
use std::time::Duration;

use ipnet::Ipv4Net;
use k8sforge::inventory::{self, Inventory, Role};
use k8sforge::profile::{self, Profile};
use k8sforge::provider::gcp::auth::Credentials;
use k8sforge::provider::gcp::client::RetryPolicy;
use k8sforge::provider::gcp::{GcpConfig, GcpProvider};
use k8sforge::provider::{Provider, ProvisionContext};
use serde_json::{json, Value};

use fake::{Fake, World};

const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGcpTestKeyOnlyForTheFakeServer0000000000000 k8sforge";

fn load(name: &str, extra: &[&str]) -> Profile {
    let mut sets = vec![
        "provider.kind=gcp".to_string(),
        "provider.gcp.project=k8sforge-test".to_string(),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    profile::load(name, &sets).expect("profile").profile
}

/// A small GPU cluster: 1 control plane + `workers` GPU workers, the gpu-1000 shapes.
fn small(workers: u32, extra: &[&str]) -> Profile {
    let mut sets = vec![
        "name=small".to_string(),
        "controlPlane.count=1".to_string(),
        "etcd.members=1".to_string(),
        format!("workers[0].count={workers}"),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    let refs: Vec<&str> = sets.iter().map(String::as_str).collect();
    load("gpu-1000", &refs)
}

fn provider(fake: &Fake, p: &Profile) -> GcpProvider {
    let spec = p.provider.gcp.as_ref().expect("gcp section");
    // Explicit endpoint and no credentials: never application-default credentials in tests.
    let mut cfg =
        GcpConfig::resolve(spec, fake.endpoint(), Credentials::Anonymous).expect("config");
    cfg.retry = RetryPolicy {
        attempts: 6,
        base: Duration::from_millis(10),
        max: Duration::from_millis(100),
    };
    // No guest agent runs behind the fake unless a test publishes keys: one look, no wait.
    cfg.host_key_wait = Duration::ZERO;
    GcpProvider::new(cfg).expect("provider")
}

fn planned(p: &Profile) -> Inventory {
    inventory::planned(p, &BTreeMap::new()).expect("planned inventory")
}

fn ctx<'a>(p: &'a Profile, inv: &'a Inventory) -> ProvisionContext<'a> {
    ProvisionContext {
        profile: p,
        planned: inv,
        cluster_dir: std::env::temp_dir(),
        ssh_public_key: SSH_KEY.to_string(),
        replace_drifted: false,
    }
}

async fn up(
    fake: &Fake,
    gcp: &GcpProvider,
    p: &Profile,
    inv: &Inventory,
) -> Result<Inventory, String> {
    let c = ctx(p, inv);
    gcp.preflight(&c).await.map_err(|e| e.to_string())?;
    let r = gcp
        .provision(&c)
        .await
        .map(|out| out.inventory)
        .map_err(|e| e.to_string());
    assert_eq!(
        fake.violations(),
        Vec::<String>::new(),
        "requests broke the Compute v1 contract"
    );
    r
}

fn labelled(v: &Value, cluster: &str) -> bool {
    v["labels"]["k8sforge-io-cluster"] == cluster
}

/// Count resources the cluster owns in the fake (label or exact marker).
fn owned(fake: &Fake, cluster: &str) -> usize {
    let marker = format!("k8sforge.io/cluster={cluster}");
    [
        "networks",
        "subnetworks",
        "firewalls",
        "instances",
        "instanceGroups",
        "healthChecks",
        "backendServices",
        "addresses",
        "forwardingRules",
        "resourcePolicies",
    ]
    .iter()
    .flat_map(|k| fake.all(k))
    .filter(|v| labelled(v, cluster) || v["description"] == marker.as_str())
    .count()
}

fn instance_creation_calls(fake: &Fake) -> usize {
    fake.calls()
        .iter()
        .filter(|c| {
            c.method_id == "compute.instances.bulkInsert"
                || c.method_id == "compute.instances.insert"
        })
        .count()
}

fn mutating_calls(fake: &Fake) -> Vec<String> {
    fake.calls()
        .into_iter()
        .filter(|c| {
            c.http_method != "GET"
                && !c.method_id.ends_with("Operations.wait")
                && c.method_id != "compute.instanceGroups.listInstances"
        })
        .map(|c| format!("{} {}", c.method_id, c.path))
        .collect()
}

/// gcloud pointed at the fake, isolated from the user's config; never contacts Google or the
/// metadata server.
fn gcloud(fake: &Fake, args: &[&str], batch: bool) -> Value {
    let cfg = tempfile::tempdir().expect("tempdir");
    let out = Command::new("gcloud")
        .args(args)
        .args(["--format=json", "--project=k8sforge-test"])
        .env("CLOUDSDK_CONFIG", cfg.path())
        .env("CLOUDSDK_API_ENDPOINT_OVERRIDES_COMPUTE", fake.endpoint())
        .env("CLOUDSDK_AUTH_DISABLE_CREDENTIALS", "true")
        .env("CLOUDSDK_CORE_CHECK_GCE_METADATA", "false")
        .env("CLOUDSDK_CORE_DISABLE_USAGE_REPORTING", "true")
        .env("CLOUDSDK_COMPONENT_MANAGER_DISABLE_UPDATE_CHECK", "true")
        .env("CLOUDSDK_CORE_DISABLE_PROMPTS", "1")
        // This gcloud sends a single list request directly and several as one multipart batch;
        // forcing the batch path exercises the fake's `/batch/compute/v1`.
        .env(
            "CLOUDSDK_COMPUTE_FORCE_BATCH_REQUEST",
            if batch { "true" } else { "false" },
        )
        .env("GCE_METADATA_HOST", "127.0.0.1:9")
        .env("GCE_METADATA_IP", "127.0.0.1:9")
        .output()
        .expect("gcloud must be installed (apt-get install -y google-cloud-cli)");
    assert!(
        out.status.success(),
        "gcloud {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("gcloud JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gpu_1000_provision_rerun_gcloud_and_teardown() {
    let fake = Fake::start(World::default()).await;
    // Someone else's network in the same project: must never be touched.
    fake.seed(
        "global/networks",
        "someone-elses-net",
        json!({"autoCreateSubnetworks": false, "description": "not ours"}),
    );
    let p = load("gpu-1000", &[]);
    let inv = planned(&p);
    assert_eq!(inv.nodes.len(), 1003);
    let gcp = provider(&fake, &p);

    let got = up(&fake, &gcp, &p, &inv).await.expect("provision gpu-1000");

    // Batched: one bulkInsert per group here (3 control planes, 1000 workers), ≤ 1 per 1000.
    let creations = instance_creation_calls(&fake);
    assert!(
        creations <= 1003usize.div_ceil(1000),
        "{creations} instance-creation calls for 1003 nodes"
    );
    let instances = fake.all("instances");
    assert_eq!(instances.len(), 1003);
    assert!(instances.iter().all(|i| labelled(i, "gpu-1000")));

    // Network: custom mode, subnet with the pods' secondary range.
    let nets = fake.all("networks");
    let net = nets
        .iter()
        .find(|n| n["name"] == "gpu-1000-net")
        .expect("network");
    assert_eq!(net["autoCreateSubnetworks"], false);
    let subnets: BTreeMap<String, Value> = fake
        .all("subnetworks")
        .into_iter()
        .map(|s| (s["name"].as_str().unwrap().to_string(), s))
        .collect();
    let subnet = &subnets["gpu-1000-nodes"];
    assert_eq!(subnet["ipCidrRange"], "10.0.0.0/20");
    assert_eq!(
        subnet["secondaryIpRanges"],
        json!([{"rangeName": "pods", "ipCidrRange": "10.64.0.0/14"}])
    );

    // Firewall: admin CIDRs for SSH+API, internal ranges, health checkers to 6443 only.
    let fws: BTreeMap<String, Value> = fake
        .all("firewalls")
        .into_iter()
        .map(|f| (f["name"].as_str().unwrap().to_string(), f))
        .collect();
    assert_eq!(fws.len(), 3 + 4, "{:?}", fws.keys());
    assert_eq!(
        fws["gpu-1000-allow-admin"]["sourceRanges"],
        json!(["203.0.113.0/24"])
    );
    assert_eq!(
        fws["gpu-1000-allow-admin"]["allowed"],
        json!([{"IPProtocol": "tcp", "ports": ["22", "6443"]}])
    );
    assert_eq!(
        fws["gpu-1000-allow-internal"]["sourceRanges"],
        json!(["10.0.0.0/20", "10.64.0.0/14"])
    );
    assert_eq!(
        fws["gpu-1000-allow-health-checks"]["allowed"],
        json!([{"IPProtocol": "tcp", "ports": ["6443"]}])
    );
    assert_eq!(
        fws["gpu-1000-allow-health-checks"]["targetTags"],
        json!(["k8sforge-controlplane"])
    );
    assert_eq!(
        fws["gpu-1000-allow-health-checks"]["sourceRanges"],
        json!(["35.191.0.0/16", "209.85.152.0/22", "209.85.204.0/22"])
    );

    // Workers: 8 H100 each, TERMINATE on host maintenance, boot disk size and image, SSH key.
    let by_name: BTreeMap<String, &Value> = instances
        .iter()
        .map(|i| (i["name"].as_str().unwrap().to_string(), i))
        .collect();
    let w = by_name["gpu-1000-gpu-17"];
    assert!(w["machineType"]
        .as_str()
        .unwrap()
        .ends_with("/machineTypes/a3-highgpu-8g"));
    assert_eq!(w["guestAccelerators"][0]["acceleratorCount"], 8);
    assert!(w["guestAccelerators"][0]["acceleratorType"]
        .as_str()
        .unwrap()
        .ends_with("/nvidia-h100-80gb"));
    assert_eq!(w["scheduling"]["onHostMaintenance"], "TERMINATE");
    assert_eq!(w["disks"][0]["diskSizeGb"], "500");
    assert!(w["metadata"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .any(|i| i["key"] == "ssh-keys" && i["value"].as_str().unwrap().contains(SSH_KEY)));
    // A3 High's GPU network: 4 extra gVNICs, each on its own VPC network (MTU 8244) and
    // subnetwork (the blocks of the node CIDR's size after it), an all-internal rule on each,
    // and the compact placement policy on every GPU instance. The fake checks the shapes
    // against the Compute v1 schema and the multi-NIC rules (distinct networks, one nicType);
    // that TCPX then moves NCCL traffic over them only a real a3-highgpu-8g shows.
    let nics = w["networkInterfaces"].as_array().unwrap();
    assert_eq!(nics.len(), 5, "{nics:?}");
    assert!(nics.iter().all(|n| n["nicType"] == "GVNIC"), "{nics:?}");
    for (i, nic) in nics.iter().enumerate().skip(1) {
        let name = format!("gpu-1000-gpunet-{i}");
        assert!(
            nic["subnetwork"]
                .as_str()
                .unwrap()
                .ends_with(&format!("/subnetworks/{name}")),
            "{nic:?}"
        );
        assert!(
            nic.get("accessConfigs").is_none(),
            "no external address on GPU NICs"
        );
        let net = nets
            .iter()
            .find(|n| n["name"] == name.as_str())
            .expect("gpu network");
        assert_eq!(net["mtu"], 8244);
        assert_eq!(net["autoCreateSubnetworks"], false);
        let cidr = format!("10.0.{}.0/20", 16 * i);
        assert_eq!(subnets[&name]["ipCidrRange"], cidr.as_str());
        assert_eq!(fws[&name]["sourceRanges"], json!([cidr]));
    }
    let policies = fake.all("resourcePolicies");
    assert_eq!(policies.len(), 1);
    assert_eq!(policies[0]["name"], "gpu-1000-compact");
    assert_eq!(
        policies[0]["groupPlacementPolicy"]["collocation"],
        "COLLOCATED"
    );
    assert_eq!(w["resourcePolicies"], json!([policies[0]["selfLink"]]));
    let cp = by_name["gpu-1000-controlplane-1"];
    assert_eq!(cp["networkInterfaces"].as_array().unwrap().len(), 1);
    assert!(cp["networkInterfaces"][0]
        .get("nicType")
        .is_none_or(Value::is_null));
    assert_eq!(cp["resourcePolicies"], json!([]));
    assert_eq!(cp["tags"]["items"], json!(["k8sforge-controlplane"]));
    assert_eq!(cp["disks"][0]["diskSizeGb"], "200");

    // Pod CIDRs are the alias ranges, distinct /24s from the secondary range.
    let pods: Ipv4Net = "10.64.0.0/14".parse().unwrap();
    let mut seen = BTreeSet::new();
    for n in &got.nodes {
        let i = by_name[&format!("gpu-1000-{}", n.name)];
        let alias = &i["networkInterfaces"][0]["aliasIpRanges"][0];
        assert_eq!(alias["subnetworkRangeName"], "pods");
        assert_eq!(
            alias["ipCidrRange"].as_str().unwrap(),
            n.pod_cidr.to_string()
        );
        assert_eq!(n.pod_cidr.prefix_len(), 24);
        assert!(pods.contains(&n.pod_cidr));
        assert!(
            seen.insert(n.pod_cidr),
            "pod CIDR {} handed out twice",
            n.pod_cidr
        );
        assert_eq!(
            i["networkInterfaces"][0]["networkIP"].as_str().unwrap(),
            n.internal_ip.to_string()
        );
    }
    assert!(!got.planned);
    assert_eq!(got.count(Role::Worker), 1000);

    // Load balancer: TCP health check on 6443, backend with the control planes, labelled rule.
    let hc = &fake.all("healthChecks")[0];
    assert_eq!(hc["type"], "TCP");
    assert_eq!(hc["tcpHealthCheck"]["port"], 6443);
    let bs = &fake.all("backendServices")[0];
    assert_eq!(bs["healthChecks"][0], hc["selfLink"]);
    assert_eq!(bs["loadBalancingScheme"], "EXTERNAL");
    let ig = &fake.all("instanceGroups")[0];
    assert_eq!(ig["size"], 3);
    let fr = &fake.all("forwardingRules")[0];
    assert!(labelled(fr, "gpu-1000"));
    assert_eq!(fr["ports"], json!(["6443"]));
    assert_eq!(fr["backendService"], bs["selfLink"]);
    assert_eq!(got.api.host, fr["IPAddress"].as_str().unwrap());

    // Second run: adopts everything, creates nothing.
    fake.clear_calls();
    let again = up(&fake, &gcp, &p, &inv).await.expect("second provision");
    assert_eq!(
        mutating_calls(&fake),
        Vec::<String>::new(),
        "a re-run must create nothing"
    );
    assert_eq!(again, got);

    // gcloud sees what k8sforge created (through the fake, incl. its batch endpoint).
    fake.clear_calls();
    let listed = gcloud(&fake, &["compute", "instances", "list"], false);
    let listed = listed.as_array().expect("list");
    assert_eq!(listed.len(), 1003);
    assert!(listed
        .iter()
        .all(|i| i["labels"]["k8sforge-io-cluster"] == "gpu-1000"));
    let zonal = gcloud(
        &fake,
        &[
            "compute",
            "instances",
            "list",
            "--zones=us-central1-a",
            "--filter=labels.k8sforge-io-cluster=gpu-1000",
        ],
        true,
    );
    assert_eq!(zonal.as_array().expect("list").len(), 1003);
    let nets = gcloud(&fake, &["compute", "networks", "list"], true);
    let names: BTreeSet<&str> = nets
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|n| n["name"].as_str())
        .collect();
    assert_eq!(
        names,
        BTreeSet::from([
            "gpu-1000-gpunet-1",
            "gpu-1000-gpunet-2",
            "gpu-1000-gpunet-3",
            "gpu-1000-gpunet-4",
            "gpu-1000-net",
            "someone-elses-net"
        ])
    );
    let gcloud_calls = fake.call_counts();
    eprintln!(
        "gcloud used: {gcloud_calls:?}, {} batch request(s)",
        fake.batches()
    );
    assert!(fake.batches() > 0, "gcloud lists through /batch/compute/v1");
    assert!(gcloud_calls.contains_key("compute.networks.list"));
    assert_eq!(
        fake.violations(),
        Vec::<String>::new(),
        "gcloud's requests broke the contract"
    );

    // Dry run lists, deletes nothing.
    let before = owned(&fake, "gpu-1000");
    let c = ctx(&p, &inv);
    let dry = gcp.teardown(&c, true).await.expect("dry run");
    assert!(dry.dry_run);
    assert_eq!(dry.deleted.len(), before);
    assert_eq!(owned(&fake, "gpu-1000"), before);

    // Teardown: nothing of ours left; the other network untouched.
    let report = gcp.teardown(&c, false).await.expect("teardown");
    assert_eq!(report.deleted.len(), before);
    let order: Vec<&str> = report
        .deleted
        .iter()
        .map(|(k, _)| k.as_str())
        .collect::<Vec<_>>();
    let mut kinds: Vec<&str> = order.clone();
    kinds.dedup();
    assert_eq!(
        kinds,
        [
            "forwardingRule",
            "address",
            "backendService",
            "healthCheck",
            "instanceGroup",
            "instance",
            "resourcePolicy",
            "firewall",
            "subnetwork",
            "network"
        ]
    );
    assert_eq!(owned(&fake, "gpu-1000"), 0);
    let left: Vec<Value> = fake.all("networks");
    assert_eq!(left.len(), 1);
    assert_eq!(left[0]["name"], "someone-elses-net");
    assert_eq!(fake.violations(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn quota_shortfall_is_explained_and_nothing_is_created() {
    let mut world = World::default();
    world.region_quotas.insert("NVIDIA_H100_GPUS".into(), 16.0);
    world.project_quotas.insert("GPUS_ALL_REGIONS".into(), 0.0);
    let fake = Fake::start(world).await;
    let p = load("gpu-1000", &[]);
    let inv = planned(&p);
    let gcp = provider(&fake, &p);
    let err = gcp
        .preflight(&ctx(&p, &inv))
        .await
        .expect_err("quota must be short")
        .to_string();
    assert!(
        err.contains("NVIDIA_H100_GPUS in region us-central1: this run needs 8000, allowed 16"),
        "{err}"
    );
    assert!(
        err.contains(
            "GPUS_ALL_REGIONS in project-wide (all regions): this run needs 8000, allowed 0"
        ),
        "{err}"
    );
    assert!(err.contains("nothing was created"), "{err}");
    assert!(
        err.contains("https://console.cloud.google.com/iam-admin/quotas?project=k8sforge-test"),
        "{err}"
    );
    assert!(err.contains("--quota-id=NVIDIA-H100-GPUS-per-project-region --preferred-value=8000 --dimensions=region=us-central1"), "{err}");
    assert_eq!(mutating_calls(&fake), Vec::<String>::new());
    assert_eq!(fake.violations(), Vec::<String>::new());
}

/// An A3 High cluster creates 5 VPC networks (its own and one per GPU NIC): a project that
/// already uses 12 of its 15 (the default NETWORKS quota) is told so before anything is created.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn network_quota_for_a3_gpu_networks_is_checked_before_creating() {
    let fake = Fake::start(World::default()).await;
    for i in 1..=12 {
        fake.seed(
            "global/networks",
            &format!("other-team-net-{i}"),
            serde_json::json!({"autoCreateSubnetworks": false}),
        );
    }
    let p = load("gpu-1000", &[]);
    let inv = planned(&p);
    let gcp = provider(&fake, &p);
    fake.clear_calls();
    let err = gcp
        .preflight(&ctx(&p, &inv))
        .await
        .expect_err("5 networks do not fit in 3")
        .to_string();
    for needle in [
        "NETWORKS in project-wide (all regions): this run needs 5, allowed 3 (limit 15, already in use 12)",
        "this cluster creates 5 (gpu-1000-net, gpu-1000-gpunet-1, gpu-1000-gpunet-2, gpu-1000-gpunet-3, gpu-1000-gpunet-4)",
        "A3 High needs its own network for each of its 4 GPU NICs",
        "nothing was created",
        "--quota-id=NETWORKS-per-project --preferred-value=17",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    assert_eq!(mutating_calls(&fake), Vec::<String>::new());
    assert_eq!(
        fake.call_counts().get("compute.networks.list"),
        Some(&1),
        "one list call"
    );
    // Room for exactly 5: passes.
    let fake = Fake::start(World::default()).await;
    for i in 1..=10 {
        fake.seed(
            "global/networks",
            &format!("other-team-net-{i}"),
            serde_json::json!({"autoCreateSubnetworks": false}),
        );
    }
    let gcp = provider(&fake, &p);
    gcp.preflight(&ctx(&p, &inv))
        .await
        .expect("10 + 5 fit in 15");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_accelerator_type_is_reported_before_creating() {
    let mut world = World::default();
    world.accelerator_types.remove("nvidia-h100-80gb");
    let fake = Fake::start(world).await;
    let p = small(2, &[]);
    let inv = planned(&p);
    let gcp = provider(&fake, &p);
    let err = gcp
        .preflight(&ctx(&p, &inv))
        .await
        .expect_err("no H100 in zone")
        .to_string();
    assert!(err.contains("accelerator type nvidia-h100-80gb (group gpu) does not exist in zone us-central1-a; offered there: nvidia-tesla-t4"), "{err}");
    assert_eq!(mutating_calls(&fake), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rate_limits_and_server_errors_are_retried() {
    let fake = Fake::start(World::default()).await;
    fake.inject("compute.networks.insert", 429, "rateLimitExceeded", 2);
    fake.inject("compute.instances.list", 403, "rateLimitExceeded", 1);
    fake.inject("compute.instances.bulkInsert", 503, "backendError", 1);
    let p = small(3, &[]);
    let inv = planned(&p);
    let gcp = provider(&fake, &p);
    let got = up(&fake, &gcp, &p, &inv)
        .await
        .expect("provision despite rate limits");
    assert_eq!(got.nodes.len(), 4);
    let counts = fake.call_counts();
    // The node network: two rate-limited answers, then success; then A3's 4 GPU networks.
    assert_eq!(
        counts["compute.networks.insert"],
        3 + 4,
        "two rate-limited answers, then success"
    );
    // Retried mutations reuse their requestId: still exactly 1 + 4 networks and 4 instances.
    assert_eq!(fake.all("networks").len(), 1 + 4);
    assert_eq!(fake.all("instances").len(), 4);
    assert_eq!(gcp.api.call_counts()["compute.networks.insert"], 3 + 4);
}

/// `type base64` of a fresh ed25519 key (what a guest agent would publish for its sshd).
fn host_key() -> String {
    let k = k8sforge::sshkeys::generate("host").expect("key");
    k.public_openssh
        .split_whitespace()
        .take(2)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Host keys the guest agent published are pinned before any SSH connection, with one
/// getGuestAttributes per unpinned node (`queryPath=hostkeys/`, schema-checked by the fake);
/// a node without published keys, or whose instance lacks `enable-guest-attributes=TRUE` (made
/// by an older k8sforge), is left to first contact — that instance is adopted without drift
/// and not asked at all.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn host_keys_from_guest_attributes_are_pinned_before_first_contact() {
    let fake = Fake::start(World::default()).await;
    let p = small(3, &[]);
    let inv = planned(&p);
    let gcp = provider(&fake, &p);
    let dir = tempfile::tempdir().unwrap();
    let c = ProvisionContext {
        cluster_dir: dir.path().to_path_buf(),
        ..ctx(&p, &inv)
    };
    // The agents of the control plane and gpu-1 publish keys as soon as they boot.
    let (cp, g1) = (host_key(), host_key());
    fake.set_host_keys("small-controlplane-1", std::slice::from_ref(&cp));
    fake.set_host_keys("small-gpu-1", std::slice::from_ref(&g1));
    // And something the agent did not write, which must never be pinned.
    fake.set_guest_attribute("small-gpu-1", "other", "ssh-ed25519", &host_key());
    gcp.preflight(&c).await.expect("preflight");
    let got = gcp.provision(&c).await.expect("provision").inventory;
    assert_eq!(fake.violations(), Vec::<String>::new());
    let asked: Vec<String> = fake
        .calls()
        .into_iter()
        .filter(|c| c.method_id == "compute.instances.getGuestAttributes")
        .map(|c| c.path)
        .collect();
    assert_eq!(asked.len(), 4, "one call per node: {asked:?}");
    let ssh = |n: &str| {
        let e = &got.node(n).unwrap().ssh;
        k8sforge::sshkeys::host_pattern(e.host, e.port)
    };
    let kh = std::fs::read_to_string(dir.path().join("known_hosts")).expect("known_hosts");
    assert_eq!(
        kh,
        format!(
            "{} {cp} controlplane-1\n{} {g1} gpu-1\n",
            ssh("controlplane-1"),
            ssh("gpu-1")
        )
    );

    // gpu-3 as an older k8sforge made it: no enable-guest-attributes in its metadata. Its
    // agent would publish nothing; gpu-2's publishes now.
    fake.edit("instances", "small-gpu-3", |i| {
        let items = i["metadata"]["items"].as_array_mut().unwrap();
        items.retain(|it| it["key"] != "enable-guest-attributes");
    });
    let g2 = host_key();
    fake.set_host_keys("small-gpu-2", std::slice::from_ref(&g2));
    fake.clear_calls();
    let again = gcp.provision(&c).await.expect("re-run adopts, no drift");
    assert_eq!(again.replaced, vec![]);
    assert_eq!(fake.violations(), Vec::<String>::new());
    let asked: Vec<String> = fake
        .calls()
        .into_iter()
        .filter(|c| c.method_id == "compute.instances.getGuestAttributes")
        .map(|c| c.path)
        .collect();
    // Only gpu-2: the pinned ones are not asked again, gpu-3 cannot answer.
    assert_eq!(
        asked,
        vec!["projects/k8sforge-test/zones/us-central1-a/instances/small-gpu-2/getGuestAttributes"]
    );
    let kh2 = std::fs::read_to_string(dir.path().join("known_hosts")).unwrap();
    assert!(kh2.starts_with(&kh), "earlier pins kept:\n{kh2}");
    assert!(
        kh2.ends_with(&format!("{} {g2} gpu-2\n", ssh("gpu-2"))),
        "{kh2}"
    );
    assert!(!kh2.contains(&ssh("gpu-3")), "{kh2}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn partial_bulk_insert_is_reported_per_instance_and_rerun_completes() {
    let fake = Fake::start(World::default()).await;
    fake.fail_instance("small-gpu-3", "ZONE_RESOURCE_POOL_EXHAUSTED");
    let p = small(5, &[]);
    let inv = planned(&p);
    let gcp = provider(&fake, &p);
    let err = up(&fake, &gcp, &p, &inv)
        .await
        .expect_err("one instance fails");
    assert!(
        err.contains("1 instance(s) could not be created (5 created or already there)"),
        "{err}"
    );
    assert!(
        err.contains("small-gpu-3: ZONE_RESOURCE_POOL_EXHAUSTED: The zone"),
        "{err}"
    );
    assert_eq!(fake.all("instances").len(), 5);

    // Capacity is back: the re-run creates exactly the missing one with one call.
    fake.clear_failures();
    fake.clear_calls();
    let got = up(&fake, &gcp, &p, &inv).await.expect("re-run");
    assert_eq!(got.nodes.len(), 6);
    assert_eq!(instance_creation_calls(&fake), 1);
    let bulk = fake
        .calls()
        .into_iter()
        .filter(|c| c.method_id == "compute.instances.bulkInsert")
        .count();
    assert_eq!(bulk, 1);
    assert_eq!(fake.all("instances").len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn n1_with_attached_t4s_sends_guest_accelerators() {
    let fake = Fake::start(World::default()).await;
    let p = small(
        2,
        &[
            "workers[0].gcp.machineType=n1-standard-8",
            "workers[0].gcp.acceleratorType=nvidia-tesla-t4",
            "workers[0].gpusPerNode=2",
        ],
    );
    let inv = planned(&p);
    let gcp = provider(&fake, &p);
    up(&fake, &gcp, &p, &inv).await.expect("provision");
    let w = fake
        .all("instances")
        .into_iter()
        .find(|i| i["name"] == "small-gpu-1")
        .expect("worker");
    assert_eq!(w["guestAccelerators"][0]["acceleratorCount"], 2);
    assert!(w["guestAccelerators"][0]["acceleratorType"]
        .as_str()
        .unwrap()
        .ends_with("/acceleratorTypes/nvidia-tesla-t4"));
    assert_eq!(w["scheduling"]["onHostMaintenance"], "TERMINATE");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_named_resource_without_marker_is_not_adopted() {
    let fake = Fake::start(World::default()).await;
    fake.seed(
        "global/networks",
        "small-net",
        json!({"autoCreateSubnetworks": false}),
    );
    let p = small(1, &[]);
    let inv = planned(&p);
    let gcp = provider(&fake, &p);
    let err = gcp
        .provision(&ctx(&p, &inv))
        .await
        .expect_err("not ours")
        .to_string();
    assert!(
        err.contains("network small-net exists but is not owned by cluster small"),
        "{err}"
    );
    // And teardown leaves it alone.
    let report = gcp.teardown(&ctx(&p, &inv), false).await.expect("teardown");
    assert!(report.deleted.is_empty());
    assert_eq!(fake.all("networks").len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fake_rejects_what_the_api_rejects() {
    let fake = Fake::start(World::default()).await;
    let http = reqwest::Client::new();
    let base = fake.endpoint();
    let post = |path: &str, body: Value| {
        let http = http.clone();
        let url = format!("{base}projects/k8sforge-test/{path}");
        async move {
            let mut req = http.post(url);
            if !body.is_null() {
                req = req
                    .header("content-type", "application/json")
                    .body(body.to_string());
            }
            let r = req.send().await.expect("send");
            let code = r.status().as_u16();
            (
                code,
                serde_json::from_slice::<Value>(&r.bytes().await.expect("body")).expect("json"),
            )
        }
    };
    // Unknown field.
    let (code, v) = post(
        "global/networks",
        json!({"name": "n1", "autoCreateSubnetworks": false, "colour": "red"}),
    )
    .await;
    assert_eq!(code, 400);
    assert_eq!(v["error"]["errors"][0]["reason"], "invalid");
    assert!(v["error"]["message"]
        .as_str()
        .unwrap()
        .contains("Unknown name \"colour\""));
    // int64 as a JSON number.
    let (code, v) = post(
        "zones/us-central1-a/instances/bulkInsert",
        json!({"count": 2, "perInstanceProperties": {}}),
    )
    .await;
    assert_eq!(code, 400);
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("TYPE_INT64"),
        "{v}"
    );
    // Missing required field.
    let (code, v) = post("global/networks", json!({"autoCreateSubnetworks": false})).await;
    assert_eq!(code, 400);
    assert_eq!(v["error"]["errors"][0]["reason"], "required");
    // Bad enum value.
    let (code, _) = post(
        "global/firewalls",
        json!({"name": "f", "direction": "SIDEWAYS"}),
    )
    .await;
    assert_eq!(code, 400);
    // Operations answer both get and wait.
    let (code, op) = post(
        "global/networks",
        json!({"name": "n2", "autoCreateSubnetworks": false}),
    )
    .await;
    assert_eq!(code, 200);
    assert_eq!(op["status"], "RUNNING");
    let name = op["name"].as_str().unwrap();
    let get = |url: String| {
        let http = http.clone();
        async move {
            serde_json::from_slice::<Value>(
                &http.get(url).send().await.unwrap().bytes().await.unwrap(),
            )
            .unwrap()
        }
    };
    let got = get(format!(
        "{base}projects/k8sforge-test/global/operations/{name}"
    ))
    .await;
    assert_eq!(got["status"], "DONE");
    let (_, waited) = post(&format!("global/operations/{name}/wait"), Value::Null).await;
    assert_eq!(waited["status"], "DONE");
    // Pagination and filters.
    for i in 0..5 {
        post("global/networks", json!({"name": format!("p{i}"), "autoCreateSubnetworks": false, "description": if i % 2 == 0 { "even" } else { "odd" }})).await;
    }
    let page = get(format!("{base}projects/k8sforge-test/global/networks?maxResults=2&filter=description%20%3D%20%22even%22")).await;
    assert_eq!(page["items"].as_array().unwrap().len(), 2);
    assert!(page["nextPageToken"].is_string());
    // The multi-NIC rules of Compute: an MTU out of range, a placement policy that is not
    // compact, two NICs of one instance on the same network. (Refused by the handlers, not the
    // schema: they are not contract violations.)
    let (code, _) = post(
        "global/networks",
        json!({"name": "big", "autoCreateSubnetworks": false, "mtu": 9000}),
    )
    .await;
    assert_eq!(code, 400);
    let (code, _) = post(
        "regions/us-central1/resourcePolicies",
        json!({"name": "spread", "groupPlacementPolicy": {"collocation": "UNSPECIFIED_COLLOCATION"}}),
    )
    .await;
    assert_eq!(code, 400);
    let (code, _) = post(
        "regions/us-central1/subnetworks",
        json!({"name": "s1", "network": "global/networks/n2", "ipCidrRange": "198.18.200.0/24"}),
    )
    .await;
    assert_eq!(code, 200);
    let (code, v) = post(
        "zones/us-central1-a/instances/bulkInsert",
        json!({"count": "1", "perInstanceProperties": {"i1": {}},
            "instanceProperties": {"machineType": "n2-standard-16", "networkInterfaces": [
                {"subnetwork": "regions/us-central1/subnetworks/s1", "nicType": "GVNIC"},
                {"subnetwork": "regions/us-central1/subnetworks/s1", "nicType": "GVNIC"}]}}),
    )
    .await;
    assert_eq!(code, 400, "{v}");
    assert!(
        v["error"]["message"]
            .as_str()
            .unwrap()
            .contains("must be on a different VPC network"),
        "{v}"
    );
    let v = fake.violations();
    assert_eq!(v.len(), 4, "each bad request is recorded: {v:?}");
}

/// The CLI: `k8sforge up --only provision` and `k8sforge teardown [--dry-run]` with the
/// endpoint override, as a user pointing at a fake would run them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cli_up_and_teardown_with_endpoint_override() {
    let fake = Fake::start(World::default()).await;
    let home = tempfile::tempdir().unwrap();
    let home_path = home.path().to_path_buf();
    let endpoint = fake.endpoint();
    let run = move |args: &[&str]| {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_k8sforge"));
        cmd.args(args)
            .args([
                "--profile",
                "gpu-1000",
                "--set",
                "provider.kind=gcp",
                "--set",
                "provider.gcp.project=k8sforge-test",
                "--set",
                "name=cli",
                "--set",
                "controlPlane.count=1",
                "--set",
                "etcd.members=1",
                "--set",
                "workers[0].count=2",
                "--set",
                "provider.gcp.hostKeyWaitSeconds=0",
            ])
            .env("K8SFORGE_HOME", &home_path)
            .env("K8SFORGE_GCP_ENDPOINT", &endpoint)
            .env_remove("GOOGLE_APPLICATION_CREDENTIALS");
        cmd
    };
    let r = run.clone();
    let a =
        tokio::task::spawn_blocking(move || r(&["up", "--only", "provision"]).output().unwrap())
            .await
            .unwrap();
    assert!(
        a.status.success(),
        "up: {}",
        String::from_utf8_lossy(&a.stderr)
    );
    // No guest agent publishes keys behind the fake here: one line per node saying so.
    let said = String::from_utf8_lossy(&a.stderr);
    for n in ["controlplane-1", "gpu-1", "gpu-2"] {
        assert!(
            said.contains(&format!(
                "node {n}: no SSH host keys in its guest attributes within 0 s"
            )),
            "{said}"
        );
    }
    let state: Value =
        serde_json::from_slice(&std::fs::read(home.path().join("cli/state.json")).unwrap())
            .unwrap();
    assert_eq!(state["inventory"]["planned"], false);
    assert_eq!(state["inventory"]["nodes"].as_array().unwrap().len(), 3);
    assert!(state["phases"]["provision"].is_object());
    let (b, c) = tokio::task::spawn_blocking(move || {
        let b = run(&["teardown", "--dry-run"]).output().unwrap();
        let c = run(&["teardown"]).output().unwrap();
        (b, c)
    })
    .await
    .unwrap();
    assert!(
        b.status.success(),
        "dry run: {}",
        String::from_utf8_lossy(&b.stderr)
    );
    let dry = String::from_utf8_lossy(&b.stdout);
    assert!(dry.contains("would delete network cli-net"), "{dry}");
    assert!(dry.contains("would delete instance cli-gpu-2"), "{dry}");
    assert!(
        c.status.success(),
        "teardown: {}",
        String::from_utf8_lossy(&c.stderr)
    );
    assert_eq!(owned(&fake, "cli"), 0);
    assert_eq!(fake.violations(), Vec::<String>::new());
}

/// The production credential path without Google: a service-account key file. Google's Rust
/// auth library makes no token request for a key: it signs a JWT with it and sends that as the
/// bearer (self-signed JWT, AIP-4111); the fake verifies signature and claims on every call.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn service_account_key_signs_a_jwt_and_the_token_is_used() {
    use rsa::pkcs1::EncodeRsaPublicKey;
    use rsa::pkcs8::{EncodePrivateKey, LineEnding};

    let fake = Fake::start(World::default()).await;
    let key = rsa::RsaPrivateKey::new(&mut rand::rngs::OsRng, 2048).expect("RSA key");
    let public = key
        .to_public_key()
        .to_pkcs1_der()
        .expect("public DER")
        .as_bytes()
        .to_vec();
    let email = "k8sforge-test@k8sforge-test.iam.gserviceaccount.com";
    fake.expect_auth(token::Expect::ServiceAccount {
        email: email.into(),
        public_der: public,
    });
    let pem = key.to_pkcs8_pem(LineEnding::LF).expect("PEM");
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("sa.json");
    std::fs::write(
        &file,
        json!({"type": "service_account", "project_id": "k8sforge-test",
            "client_email": email, "private_key_id": "k1",
            "private_key": pem.as_str(), "token_uri": fake.token_uri()})
        .to_string(),
    )
    .unwrap();
    let creds = Credentials::from_file(&file).expect("service account file");
    assert_eq!(
        format!("{creds:?}"),
        "ServiceAccount",
        "key material is never printed"
    );

    let p = small(1, &["provider.gcp.project=null"]);
    let spec = p.provider.gcp.as_ref().unwrap();
    // The project comes from the key file when neither the profile nor the environment sets it.
    let cfg = GcpConfig::resolve(spec, fake.endpoint(), creds).expect("config");
    assert_eq!(cfg.project, "k8sforge-test");
    let gcp = GcpProvider::new(cfg).expect("provider");
    let inv = planned(&p);
    up(&fake, &gcp, &p, &inv)
        .await
        .expect("provision with a service account");
    let (grants, refused) = fake.auth_counts();
    assert_eq!(grants, 0, "a key signs its own JWT: no token request");
    assert!(fake.token_requests().is_empty());
    assert_eq!(refused, 0, "every Compute call carried a valid signed JWT");
    assert!(fake.calls().len() > 20);
    assert_eq!(fake.self_signed_jwts(), fake.calls().len());

    // Anonymous calls are refused by this fake: the check is real.
    let with_project = small(1, &[]);
    let anon = provider(&fake, &with_project);
    let err = anon
        .preflight(&ctx(&with_project, &inv))
        .await
        .expect_err("no token");
    assert!(err.to_string().contains("HTTP 401"), "{err}");
    assert_eq!(fake.auth_counts().1, 1);
}

/// Preflight + provision of a 1-node cluster with `creds` against `fake`; every Compute call
/// must carry what the expected credential ends in.
async fn provision_with(fake: &Fake, creds: Credentials) {
    let p = small(1, &[]);
    let spec = p.provider.gcp.as_ref().unwrap();
    let mut cfg = GcpConfig::resolve(spec, fake.endpoint(), creds).expect("config");
    cfg.retry = RetryPolicy {
        attempts: 3,
        base: Duration::from_millis(10),
        max: Duration::from_millis(100),
    };
    let gcp = GcpProvider::new(cfg).expect("provider");
    up(fake, &gcp, &p, &planned(&p))
        .await
        .expect("provision with these credentials");
    assert_eq!(
        fake.auth_counts().1,
        0,
        "no Compute call went unauthenticated"
    );
    assert!(fake.calls().len() > 20);
}

fn write_json(dir: &tempfile::TempDir, name: &str, v: Value) -> std::path::PathBuf {
    let f = dir.path().join(name);
    std::fs::write(&f, v.to_string()).unwrap();
    f
}

/// An authorized-user file (`gcloud auth application-default login`): one refresh-token grant
/// at the file's token_uri, with its client id, secret and refresh token; the token is cached.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authorized_user_file_refreshes_once_at_its_token_uri() {
    let fake = Fake::start(World::default()).await;
    fake.expect_auth(token::Expect::AuthorizedUser {
        client_id: "cid.apps.example".into(),
        client_secret: "csecret".into(),
        refresh_token: "1//refresh".into(),
    });
    let dir = tempfile::tempdir().unwrap();
    let file = write_json(
        &dir,
        "adc.json",
        json!({"type": "authorized_user", "client_id": "cid.apps.example",
            "client_secret": "csecret", "refresh_token": "1//refresh",
            "quota_project_id": "k8sforge-test", "token_uri": fake.token_uri()}),
    );
    let creds = Credentials::from_file(&file).expect("authorized_user file");
    assert_eq!(format!("{creds:?}"), "AuthorizedUser");
    provision_with(&fake, creds).await;
    let reqs = fake.token_requests();
    assert_eq!(reqs.len(), 1, "one grant, cached: {reqs:?}");
    assert_eq!(reqs[0].endpoint, "/token");
    assert_eq!(reqs[0].params["grant_type"], "refresh_token");
    assert_eq!(reqs[0].params["refresh_token"], "1//refresh");
    assert!(reqs[0].params["scope"]
        .as_str()
        .unwrap_or("")
        .contains(token::SCOPE));
}

/// Workload identity federation: an external_account file whose credential source is a file
/// (e.g. a projected Kubernetes service-account token); its content is exchanged at the
/// file's token_url (RFC 8693) for the pool's audience.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_account_file_exchanges_its_subject_token() {
    let fake = Fake::start(World::default()).await;
    let audience =
        "//iam.googleapis.com/projects/123/locations/global/workloadIdentityPools/ci/providers/k8s";
    fake.expect_auth(token::Expect::ExternalAccount {
        audience: audience.into(),
        subject_token: "eyJ.subject.token".into(),
    });
    let dir = tempfile::tempdir().unwrap();
    let subject = write_json(&dir, "subject", json!("unused"));
    std::fs::write(&subject, "eyJ.subject.token").unwrap();
    let file = write_json(
        &dir,
        "wif.json",
        json!({"type": "external_account", "audience": audience,
            "subject_token_type": "urn:ietf:params:oauth:token-type:jwt",
            "token_url": fake.sts_uri(),
            "credential_source": {"file": subject.to_str().unwrap()}}),
    );
    let creds = Credentials::from_file(&file).expect("external_account file");
    assert_eq!(format!("{creds:?}"), "ExternalAccount");
    provision_with(&fake, creds).await;
    let reqs = fake.token_requests();
    assert_eq!(reqs.len(), 1, "one exchange, cached: {reqs:?}");
    let r = &reqs[0].params;
    assert_eq!(reqs[0].endpoint, "/sts");
    assert_eq!(
        r["grant_type"],
        "urn:ietf:params:oauth:grant-type:token-exchange"
    );
    assert_eq!(
        r["requested_token_type"],
        "urn:ietf:params:oauth:token-type:access_token"
    );
    assert_eq!(
        r["subject_token_type"],
        "urn:ietf:params:oauth:token-type:jwt"
    );
    assert_eq!(r["audience"], audience);
    assert!(
        r["scope"].as_str().unwrap_or("").contains(token::SCOPE),
        "{r}"
    );
}

/// Service-account impersonation: an impersonated_service_account file whose source is an
/// authorized user; the source token buys a token for the target account at
/// generateAccessToken, and only that one is good for Compute.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impersonation_trades_the_source_token_for_the_target_account() {
    let fake = Fake::start(World::default()).await;
    let target = "deployer@k8sforge-test.iam.gserviceaccount.com";
    fake.expect_auth(token::Expect::Impersonated {
        source: Box::new(token::Expect::AuthorizedUser {
            client_id: "cid".into(),
            client_secret: "cs".into(),
            refresh_token: "rt".into(),
        }),
        target: target.into(),
    });
    let dir = tempfile::tempdir().unwrap();
    let file = write_json(
        &dir,
        "impersonated.json",
        json!({"type": "impersonated_service_account",
            "service_account_impersonation_url": fake.impersonation_uri(target),
            "delegates": [],
            "source_credentials": {"type": "authorized_user", "client_id": "cid",
                "client_secret": "cs", "refresh_token": "rt", "token_uri": fake.token_uri()}}),
    );
    let creds = Credentials::from_file(&file).expect("impersonated_service_account file");
    assert_eq!(format!("{creds:?}"), "ImpersonatedServiceAccount");
    provision_with(&fake, creds).await;
    let reqs = fake.token_requests();
    let endpoints: Vec<&str> = reqs.iter().map(|r| r.endpoint.as_str()).collect();
    assert_eq!(endpoints, ["/token", "generateAccessToken"], "{reqs:?}");
    let gen = &reqs[1];
    assert_eq!(
        gen.authorization.as_deref(),
        Some(format!("Bearer {}", token::SOURCE_TOKEN).as_str())
    );
    assert!(
        gen.params["scope"]
            .as_array()
            .is_some_and(|a| a.iter().any(|s| s == token::SCOPE)),
        "{:?}",
        gen.params
    );
    assert!(gen.params["lifetime"].as_str().unwrap_or("").ends_with('s'));
}

/// A re-run after the admin CIDRs changed patches the firewall rule instead of keeping the old
/// ranges; a changed pod range is refused with a clear message instead of silently adopted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_follows_profile_changes_or_refuses_them() {
    let fake = Fake::start(World::default()).await;
    let p = small(1, &[]);
    let inv = planned(&p);
    let gcp = provider(&fake, &p);
    up(&fake, &gcp, &p, &inv).await.expect("provision");

    let changed = small(1, &["provider.gcp.adminCIDRs=[198.51.100.0/24]"]);
    fake.clear_calls();
    up(&fake, &gcp, &changed, &planned(&changed))
        .await
        .expect("re-run with new admin CIDRs");
    let admin = fake
        .all("firewalls")
        .into_iter()
        .find(|f| f["name"] == "small-allow-admin")
        .unwrap();
    assert_eq!(admin["sourceRanges"], json!(["198.51.100.0/24"]));
    assert_eq!(
        mutating_calls(&fake),
        vec![
            "compute.firewalls.patch projects/k8sforge-test/global/firewalls/small-allow-admin"
                .to_string()
        ]
    );

    let moved = small(1, &["network.podCIDR=10.128.0.0/14"]);
    let err = up(&fake, &gcp, &moved, &planned(&moved))
        .await
        .expect_err("pod range moved");
    assert!(err.contains("subnetwork small-nodes exists with range 10.0.0.0/20 and pods range 10.64.0.0/14, but the profile asks for nodeCIDR 10.0.0.0/20 and podCIDR 10.128.0.0/14"), "{err}");
}
