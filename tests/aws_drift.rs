//! Adopt-and-compare on AWS, against moto (see support/aws.rs): an instance adopted by its
//! cluster tag is compared with the profile — instance type, image (owner and name pattern),
//! root volume size and type — and a difference is refused with every instance and field named,
//! creating and deleting nothing; `replace_drifted` replaces drifted workers (never control
//! planes) and a further run changes nothing.

mod support;

use std::collections::BTreeMap;
use std::time::Duration;

use k8sforge::inventory::{self, Inventory};
use k8sforge::profile::{self, AmiLookup, Profile};
use k8sforge::provider::aws::retry::RetryPolicy;
use k8sforge::provider::aws::{AwsError, AwsProvider, Options};
use k8sforge::provider::ProvisionContext;
use support::aws as peer;

fn opts() -> Options {
    Options {
        retry: RetryPolicy {
            max_attempts: 8,
            base: Duration::from_millis(5),
            cap: Duration::from_millis(100),
        },
        poll_interval: Duration::from_millis(100),
        wait_timeout: Duration::from_secs(120),
        dependency_timeout: Duration::from_secs(30),
        // moto prints no cloud-init host-key block: one look, no wait.
        host_key_wait: Duration::ZERO,
        ..Options::default()
    }
}

fn profile(account: &str, ami_name: &str, sets: &[&str]) -> Profile {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let mut p = profile::load("gpu-dev", &sets).expect("profile").profile;
    p.provider.aws.as_mut().expect("aws section").ami = AmiLookup {
        owner: account.to_string(),
        name: ami_name.to_string(),
    };
    p
}

fn planned(p: &Profile) -> Inventory {
    inventory::planned(p, &BTreeMap::new()).unwrap()
}

fn mutating(account: &str) -> BTreeMap<String, u64> {
    peer::proxy()
        .counts(account)
        .into_iter()
        .filter(|(k, _)| !k.starts_with("Describe") && !k.starts_with("Get"))
        .collect()
}

struct Env {
    account: String,
    provider: AwsProvider,
    dir: tempfile::TempDir,
    key: String,
}

impl Env {
    async fn new(account: &str) -> Env {
        let clients = peer::clients(account);
        peer::register_ami(&clients, "k8sforge-test-noble-20260101").await;
        Env {
            account: account.into(),
            provider: AwsProvider::new(clients, opts()),
            dir: tempfile::tempdir().unwrap(),
            key: peer::ssh_public_key(),
        }
    }

    fn ctx<'a>(
        &'a self,
        p: &'a Profile,
        inv: &'a Inventory,
        replace: bool,
    ) -> ProvisionContext<'a> {
        let mut c = ProvisionContext::new(p, inv, self.dir.path().to_path_buf(), self.key.clone());
        c.replace_drifted = replace;
        c
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changed_type_disk_or_image_is_refused_by_instance_and_replaced_only_when_asked() {
    let e = Env::new("100000000011").await;
    let base = profile(&e.account, "k8sforge-test-noble-*", &[]);
    let inv = planned(&base);
    let first = e
        .provider
        .provision_outcome(&e.ctx(&base, &inv, false))
        .await
        .expect("first provision");
    let ids: BTreeMap<String, String> = first
        .inventory
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.ssh.host.to_string()))
        .collect();
    assert_eq!(ids.len(), 5);

    // A newer image of the same pattern is not drift: nothing to replace, nothing created.
    peer::register_ami(&peer::clients(&e.account), "k8sforge-test-noble-20260201").await;
    peer::proxy().reset(&e.account);
    let again = e
        .provider
        .provision_outcome(&e.ctx(&base, &inv, false))
        .await
        .expect("newer image of the same family is no drift");
    assert!(again.created.is_empty() && again.replaced.is_empty());
    assert_eq!(mutating(&e.account), BTreeMap::new());

    // instanceType of one group and the root volume of another changed: refused, every
    // instance and field named, nothing created or deleted.
    let changed = profile(
        &e.account,
        "k8sforge-test-noble-*",
        &[
            "workers[0].aws.instanceType=m6i.4xlarge",
            "workers[1].aws.rootVolumeGiB=600",
        ],
    );
    let inv2 = planned(&changed);
    peer::proxy().reset(&e.account);
    let err = e
        .provider
        .provision_outcome(&e.ctx(&changed, &inv2, false))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, AwsError::Drift(_)), "{msg}");
    for needle in [
        "4 adopted machine(s) differ from the profile",
        "workers[cpu].aws.instanceType is m6i.2xlarge, the profile asks for m6i.4xlarge",
        "workers[gpu].aws.rootVolumeGiB is 500 GiB, the profile asks for 600 GiB",
        "--replace-drifted",
        "Nothing was changed",
    ] {
        assert!(msg.contains(needle), "missing {needle:?} in:\n{msg}");
    }
    for node in ["cpu-1 (i-", "cpu-2 (i-", "gpu-1 (i-", "gpu-2 (i-"] {
        assert!(msg.contains(node), "{node} not named in:\n{msg}");
    }
    assert!(!msg.contains("controlplane-1"), "{msg}");
    assert_eq!(
        mutating(&e.account),
        BTreeMap::new(),
        "a refusal changes nothing"
    );

    // A control plane is never replaced, even when asked.
    let cp = profile(
        &e.account,
        "k8sforge-test-noble-*",
        &["controlPlane.aws.instanceType=m6i.2xlarge"],
    );
    let inv3 = planned(&cp);
    peer::proxy().reset(&e.account);
    let err = e
        .provider
        .provision_outcome(&e.ctx(&cp, &inv3, true))
        .await
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("replaces workers only: controlplane-1"),
        "{err}"
    );
    assert_eq!(mutating(&e.account), BTreeMap::new());

    // An image outside the profile's pattern is drift for every instance.
    let other_image = profile(&e.account, "k8sforge-test-jammy-*", &[]);
    peer::register_ami(&peer::clients(&e.account), "k8sforge-test-jammy-20260101").await;
    let inv4 = planned(&other_image);
    peer::proxy().reset(&e.account);
    let err = e
        .provider
        .provision_outcome(&e.ctx(&other_image, &inv4, false))
        .await
        .unwrap_err()
        .to_string();
    assert!(err.contains("5 adopted machine(s) differ"), "{err}");
    assert!(
        err.contains("provider.aws.ami is ami-") && err.contains("k8sforge-test-noble-20260101"),
        "{err}"
    );

    // Asked to replace: the four drifted workers are terminated and launched again from the
    // profile; the control plane is kept.
    peer::proxy().reset(&e.account);
    let out = e
        .provider
        .provision_outcome(&e.ctx(&changed, &inv2, true))
        .await
        .expect("replace drifted workers");
    assert_eq!(out.replaced.len(), 4, "{:?}", out.replaced);
    let counts = peer::proxy().counts(&e.account);
    assert_eq!(counts.get("TerminateInstances"), Some(&1), "{counts:?}");
    assert_eq!(
        out.created.iter().filter(|(k, _)| k == "instance").count(),
        4
    );
    let cp_before = first.inventory.node("controlplane-1").unwrap();
    assert_eq!(out.inventory.node("controlplane-1").unwrap(), cp_before);
    // The new instances have what the profile asks for.
    let ec2 = &peer::clients(&e.account).ec2;
    let live = ec2
        .describe_instances()
        .filters(
            aws_sdk_ec2::types::Filter::builder()
                .name("instance-state-name")
                .values("running")
                .build(),
        )
        .send()
        .await
        .unwrap();
    let types: Vec<String> = live
        .reservations()
        .iter()
        .flat_map(|r| r.instances())
        .filter_map(|i| i.instance_type().map(|t| t.as_str().to_string()))
        .collect();
    assert_eq!(
        types.iter().filter(|t| *t == "m6i.4xlarge").count(),
        2,
        "{types:?}"
    );
    assert_eq!(types.len(), 5, "{types:?}");

    // Converged: a further run creates, replaces and changes nothing.
    peer::proxy().reset(&e.account);
    let last = e
        .provider
        .provision_outcome(&e.ctx(&changed, &inv2, true))
        .await
        .expect("converged");
    assert!(last.created.is_empty() && last.replaced.is_empty());
    assert_eq!(mutating(&e.account), BTreeMap::new());

    e.provider
        .teardown_report(&e.ctx(&changed, &inv2, false), false)
        .await
        .expect("teardown");
}

/// p5 workers running without their EFA interfaces (launched before `aws.efa` was turned on)
/// are drift: each named with the interface counts and the flag to replace it; replaced only
/// when asked, relaunched with the 32 EFA-only interfaces, and a further run changes nothing.
/// moto keeps interfaces by device index only, so the test proxy reports the launched
/// interfaces' types as EC2 does (`support/aws.rs`, `with_efa_interfaces`). Only a real p5
/// shows the EFA devices in the guest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn p5_without_its_efa_interfaces_is_drift() {
    let e = Env::new("100000000031").await;
    let plain = profile(
        &e.account,
        "k8sforge-test-noble-*",
        &["workers[1].aws.instanceType=p5.48xlarge"],
    );
    let inv = planned(&plain);
    e.provider
        .provision_outcome(&e.ctx(&plain, &inv, false))
        .await
        .expect("p5 without EFA");

    let efa = profile(
        &e.account,
        "k8sforge-test-noble-*",
        &[
            "workers[1].aws.instanceType=p5.48xlarge",
            "workers[1].aws.efa=true",
        ],
    );
    let inv2 = planned(&efa);
    peer::proxy().reset(&e.account);
    let err = e
        .provider
        .provision_outcome(&e.ctx(&efa, &inv2, false))
        .await
        .unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, AwsError::Drift(_)), "{msg}");
    for needle in [
        "2 adopted machine(s) differ from the profile",
        "gpu-1 (i-",
        "workers[gpu].aws.efa is 0 EFA interface(s), the profile asks for 32 (one per network card of p5.48xlarge)",
        "--replace-drifted",
    ] {
        assert!(msg.contains(needle), "missing {needle:?} in:\n{msg}");
    }
    assert!(!msg.contains("cpu-1"), "{msg}");
    assert_eq!(
        mutating(&e.account),
        BTreeMap::new(),
        "a refusal changes nothing"
    );

    let out = e
        .provider
        .provision_outcome(&e.ctx(&efa, &inv2, true))
        .await
        .expect("replace");
    assert_eq!(out.replaced.len(), 2, "{:?}", out.replaced);
    let launches = peer::proxy().launches(&e.account);
    let last = launches.last().unwrap();
    assert_eq!(last["InstanceType"], "p5.48xlarge");
    assert_eq!(
        last.iter()
            .filter(|(k, v)| k.ends_with(".InterfaceType") && *v == "efa-only")
            .count(),
        32
    );

    // Converged: the relaunched instances report their 32 EFA interfaces.
    peer::proxy().reset(&e.account);
    let again = e
        .provider
        .provision_outcome(&e.ctx(&efa, &inv2, false))
        .await
        .expect("converged");
    assert!(again.created.is_empty() && again.replaced.is_empty());
    assert_eq!(mutating(&e.account), BTreeMap::new());
}
