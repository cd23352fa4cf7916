//! `k8sforge up` and `teardown` with the AWS provider, the binary against moto (support/aws.rs):
//! provision is an ordinary phase of the runner (JSON outcome, state record), a capacity failure
//! is fixed by re-running `up` (what its message says), adopted instances that drifted from the
//! profile are refused by name unless `--replace-drifted`, a second `up` creates nothing, and
//! `teardown` removes every tagged resource. The binary finds its moto account by its access key
//! id (the proxy maps a 12-digit key id to the account).

mod support;

use std::path::Path;
use std::process::{Command, Output};

use support::aws::{self as peer, Fault, FaultMode};

const BIN: &str = env!("CARGO_BIN_EXE_k8sforge");

/// A small AWS test profile: 1 control plane + 2 workers, the VPC inside 198.18.0.0/15.
fn write_profile(dir: &Path, name: &str, account: &str, node_cidr: &str) -> std::path::PathBuf {
    let path = dir.join(format!("{name}.yaml"));
    std::fs::write(
        &path,
        format!(
            r#"name: {name}
provider:
  kind: aws
  aws:
    region: {region}
    zones: [{region}a]
    adminCIDRs: [198.18.0.0/15]
    ami: {{ owner: "{account}", name: "k8sforge-test-noble-*" }}
    # moto prints no cloud-init host-key block: one look, no wait.
    hostKeyWaitSeconds: 0
kubernetes:
  version: v1.28.7
network:
  nodeCIDR: {node_cidr}
  podCIDR: 10.200.0.0/16
  podPrefixPerNode: 24
  serviceCIDR: 10.32.0.0/24
  dnsServiceIP: 10.32.0.10
ssh:
  user: root
  port: 22
  address: private
controlPlane:
  count: 1
  aws: {{ instanceType: m6i.large }}
workers:
  - name: worker
    count: 2
    aws: {{ instanceType: m6i.xlarge }}
"#,
            region = peer::REGION
        ),
    )
    .unwrap();
    path
}

/// The binary with moto's endpoint and the account's credentials, and nothing that could reach
/// a real AWS endpoint or the instance metadata address.
fn k8sforge(home: &Path, account: &str) -> Command {
    let mut c = Command::new(BIN);
    c.env("K8SFORGE_HOME", home)
        .env("K8SFORGE_AWS_ENDPOINT_URL", peer::proxy().url())
        .env("AWS_ACCESS_KEY_ID", account)
        .env("AWS_SECRET_ACCESS_KEY", "test")
        .env("AWS_REGION", peer::REGION)
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
        .env_remove("AWS_PROFILE")
        .env_remove("AWS_ENDPOINT_URL");
    c
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "no JSON on stdout ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn provision_phase(report: &serde_json::Value) -> &serde_json::Value {
    let phases = report["phases"].as_array().expect("phases");
    assert_eq!(phases.len(), 1, "{report:#}");
    assert_eq!(phases[0]["phase"], "provision", "{report:#}");
    &phases[0]
}

fn mutating(account: &str) -> Vec<String> {
    peer::proxy()
        .log(account)
        .into_iter()
        .filter(|a| !a.starts_with("Describe") && !a.starts_with("Get") && !a.starts_with('('))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn up_provisions_aws_as_a_phase_refuses_drift_and_teardown_removes_everything() {
    let account = "100000000021";
    let clients = peer::clients(account);
    peer::register_ami(&clients, "k8sforge-test-noble-20260101").await;
    let work = tempfile::tempdir().unwrap();
    let home = work.path().join("home");
    let name = "aws-up-cli";
    let profile = write_profile(work.path(), name, account, "198.18.200.0/24");
    let profile_arg = profile.display().to_string();
    let up = |extra: &[&str]| -> Output {
        k8sforge(&home, account)
            .args(["up", "--profile", &profile_arg, "-o", "json"])
            .args(extra)
            .output()
            .unwrap()
    };

    // 1. No capacity for the workers' type: the phase fails through the runner (JSON, exit 1)
    //    with a message that says to re-run `k8sforge up`; the control plane is kept.
    peer::proxy().reset(account);
    peer::proxy().inject(Fault {
        account: account.into(),
        action: "RunInstances".into(),
        body_contains: Some("m6i.xlarge".into()),
        code: "InsufficientInstanceCapacity".into(),
        status: 500,
        times: 1,
        mode: FaultMode::Instead,
    });
    let out = up(&["--only", "provision"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&out);
    let p = provision_phase(&report);
    assert_eq!(p["outcome"], "failed", "{report:#}");
    let detail = p["detail"].as_str().unwrap();
    assert!(
        detail.contains("InsufficientInstanceCapacity") && detail.contains("Re-run `k8sforge up`"),
        "{detail}"
    );

    // 2. The re-run the message asks for: `up` itself provisions (no side door), launching only
    //    the missing workers; the phase is recorded in state with the real inventory.
    peer::proxy().reset(account);
    let out = up(&["--only", "provision"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = json(&out);
    let p = provision_phase(&report);
    assert_eq!(p["outcome"], "done", "{report:#}");
    assert!(p["detail"].as_str().unwrap().starts_with("3 nodes"), "{p}");
    let counts = peer::proxy().counts(account);
    assert_eq!(counts.get("RunInstances"), Some(&1), "{counts:?}");
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(home.join(name).join("state.json")).unwrap())
            .unwrap();
    assert!(
        state["phases"]["provision"]["completed_at"].is_string(),
        "{state:#}"
    );
    let nodes = state["inventory"]["nodes"].as_array().unwrap();
    assert_eq!(nodes.len(), 3);
    assert_eq!(state["inventory"]["planned"], false);
    for n in nodes {
        let ip = n["internal_ip"].as_str().unwrap();
        assert!(ip.starts_with("198.18.200."), "{n}");
        // `ssh.address: private`: k8sforge dials the private address, never moto's public one.
        assert_eq!(n["ssh"]["host"], ip, "{n}");
    }

    // 3. A second `up` creates nothing and changes nothing.
    peer::proxy().reset(account);
    let out = up(&["--only", "provision"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let detail = provision_phase(&json(&out))["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(detail.contains("0 resources created"), "{detail}");
    assert_eq!(mutating(account), Vec::<String>::new());

    // 4. The workers' instanceType changed in the profile: refused, per instance, nothing changed.
    peer::proxy().reset(account);
    let out = up(&[
        "--only",
        "provision",
        "--set",
        "workers[0].aws.instanceType=m6i.2xlarge",
    ]);
    assert_eq!(out.status.code(), Some(1));
    let detail = provision_phase(&json(&out))["detail"]
        .as_str()
        .unwrap()
        .to_string();
    for needle in [
        "2 adopted machine(s) differ from the profile",
        "worker-1 (i-",
        "worker-2 (i-",
        "workers[worker].aws.instanceType is m6i.xlarge, the profile asks for m6i.2xlarge",
        "--replace-drifted",
    ] {
        assert!(detail.contains(needle), "missing {needle:?} in {detail}");
    }
    assert_eq!(mutating(account), Vec::<String>::new());

    // 5. With --replace-drifted the two workers are replaced; the control plane stays.
    peer::proxy().reset(account);
    let out = up(&[
        "--only",
        "provision",
        "--set",
        "workers[0].aws.instanceType=m6i.2xlarge",
        "--replace-drifted",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let detail = provision_phase(&json(&out))["detail"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(detail.contains("2 replaced (drifted)"), "{detail}");
    let m = mutating(account);
    assert_eq!(
        m.iter().filter(|a| *a == "TerminateInstances").count(),
        1,
        "{m:?}"
    );
    assert_eq!(
        m.iter().filter(|a| *a == "RunInstances").count(),
        1,
        "{m:?}"
    );

    // 6. teardown (same verb path as every provider): every tagged resource gone, state forgets.
    let out = k8sforge(&home, account)
        .args([
            "teardown",
            "--profile",
            &profile_arg,
            "--set",
            "workers[0].aws.instanceType=m6i.2xlarge",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("teardown aws-up-cli (aws): deleted"),
        "{stderr}"
    );
    let ec2 = &clients.ec2;
    let tag = aws_sdk_ec2::types::Filter::builder()
        .name(format!("tag:{}", k8sforge::provider::CLUSTER_TAG))
        .values(name)
        .build();
    let live = ec2
        .describe_instances()
        .filters(tag.clone())
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("instance-state-name")
                .values("running")
                .values("pending")
                .build(),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(
        live.reservations()
            .iter()
            .map(|r| r.instances().len())
            .sum::<usize>(),
        0
    );
    let vpcs = ec2.describe_vpcs().filters(tag).send().await.unwrap();
    assert!(vpcs.vpcs().is_empty());
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(home.join(name).join("state.json")).unwrap())
            .unwrap();
    assert!(state["inventory"].is_null(), "{state:#}");
}
