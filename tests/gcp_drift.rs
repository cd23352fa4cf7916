//! Adopt-and-compare on GCP, against the project's schema-checked Compute fake (tests/gcp): an
//! adopted instance is compared with the profile — machine type, boot disk size and type (from
//! the disk resource), image (the profile's image or family) — and a difference is refused with
//! every instance and field named, creating and deleting nothing; with `replace_drifted` the
//! drifted workers are deleted and created again, and a further run changes nothing.

#![allow(dead_code)] // the fake's modules serve several test crates

#[path = "gcp/batch.rs"]
mod batch;
#[path = "gcp/fake.rs"]
mod fake;
#[path = "gcp/handlers.rs"]
mod handlers;
#[path = "gcp/schema.rs"]
mod schema;
#[path = "gcp/token.rs"]
// Only the provider tests set up credentials.
#[allow(dead_code)]
mod token;

use std::collections::BTreeMap;
use std::time::Duration;

use k8sforge::inventory::{self, Inventory};
use k8sforge::profile::{self, Profile};
use k8sforge::provider::gcp::auth::Credentials;
use k8sforge::provider::gcp::client::RetryPolicy;
use k8sforge::provider::gcp::{GcpConfig, GcpProvider};
use k8sforge::provider::{Provider, ProvisionContext, Provisioned};

use fake::{Fake, World};

const SSH_KEY: &str =
    "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIGcpTestKeyOnlyForTheFakeServer0000000000000 k8sforge";

/// 1 control plane + 2 GPU workers of gpu-1000's GCP shapes.
fn small(extra: &[&str]) -> Profile {
    let mut sets = vec![
        "provider.kind=gcp".to_string(),
        "provider.gcp.project=k8sforge-test".to_string(),
        "name=drift".to_string(),
        "controlPlane.count=1".to_string(),
        "etcd.members=1".to_string(),
        "workers[0].count=2".to_string(),
    ];
    sets.extend(extra.iter().map(|s| s.to_string()));
    profile::load("gpu-1000", &sets).expect("profile").profile
}

fn provider(fake: &Fake, p: &Profile) -> GcpProvider {
    let spec = p.provider.gcp.as_ref().expect("gcp section");
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

async fn up(fake: &Fake, p: &Profile, replace: bool) -> Result<Provisioned, String> {
    let inv: Inventory = inventory::planned(p, &BTreeMap::new()).expect("planned");
    let gcp = provider(fake, p);
    let mut c = ProvisionContext::new(p, &inv, std::env::temp_dir(), SSH_KEY.to_string());
    c.replace_drifted = replace;
    gcp.preflight(&c).await.map_err(|e| e.to_string())?;
    let r = gcp.provision(&c).await.map_err(|e| e.to_string());
    assert_eq!(
        fake.violations(),
        Vec::<String>::new(),
        "requests broke the Compute v1 contract"
    );
    r
}

/// Calls that change something (every method but get/list/wait).
fn mutating(fake: &Fake) -> Vec<String> {
    fake.calls()
        .into_iter()
        .map(|c| c.method_id)
        .filter(|m| {
            !(m.ends_with(".get")
                || m.ends_with(".list")
                || m.ends_with(".wait")
                || m.ends_with(".getGuestAttributes")
                || m.ends_with("aggregatedList")
                || m.ends_with("listInstances"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn drifted_instances_are_refused_by_name_and_replaced_only_when_asked() {
    let fake = Fake::start(World::default()).await;
    let base = small(&[]);
    let first = up(&fake, &base, false).await.expect("provision");
    assert_eq!(first.inventory.nodes.len(), 3);
    // Boot disks exist as resources, of the type and image the profile asks for.
    let disks = fake.all("disks");
    assert_eq!(disks.len(), 3, "{disks:?}");

    // Same profile: adopted, nothing created.
    fake.clear_calls();
    let again = up(&fake, &base, false).await.expect("re-run");
    assert!(
        again.created.is_empty() && again.replaced.is_empty(),
        "{:?}",
        again.created
    );
    assert_eq!(mutating(&fake), Vec::<String>::new());

    // Workers' boot disk size and the control plane's machine type changed.
    let changed = small(&["workers[0].gcp.bootDiskGiB=600"]);
    fake.clear_calls();
    let err = up(&fake, &changed, false).await.expect_err("drift refused");
    for needle in [
        "2 adopted machine(s) differ from the profile",
        "gpu-1 (drift-gpu-1): workers[gpu].gcp.bootDiskGiB is 500 GB, the profile asks for 600 GB",
        "gpu-2 (drift-gpu-2)",
        "--replace-drifted",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    assert_eq!(
        mutating(&fake),
        Vec::<String>::new(),
        "a refusal changes nothing"
    );

    let cp = small(&["controlPlane.gcp.machineType=n1-standard-8"]);
    let err = up(&fake, &cp, true)
        .await
        .expect_err("control planes are never replaced");
    assert!(
        err.contains(
            "controlPlane.gcp.machineType is n2-standard-16, the profile asks for n1-standard-8"
        ) && err.contains("replaces workers only: controlplane-1"),
        "{err}"
    );

    // Another image than the profile's family: drift on every instance.
    let image = small(&[
        "provider.gcp.image=projects/ubuntu-os-cloud/global/images/family/ubuntu-2204-lts",
    ]);
    let err = up(&fake, &image, false).await.expect_err("image drift");
    assert!(
        err.contains("3 adopted machine(s) differ")
            && err.contains("provider.gcp.image is projects/"),
        "{err}"
    );

    // Asked to replace: the two workers are deleted and created again with 600 GB disks.
    fake.clear_calls();
    let out = up(&fake, &changed, true).await.expect("replace");
    assert_eq!(out.replaced.len(), 2, "{:?}", out.replaced);
    let m = mutating(&fake);
    assert_eq!(
        m.iter()
            .filter(|c| *c == "compute.instances.delete")
            .count(),
        2,
        "{m:?}"
    );
    assert_eq!(
        m.iter()
            .filter(|c| *c == "compute.instances.bulkInsert")
            .count(),
        1,
        "{m:?}"
    );
    let sizes: Vec<String> = fake
        .all("disks")
        .iter()
        .map(|d| {
            format!(
                "{}={}",
                d["name"].as_str().unwrap_or("?"),
                d["sizeGb"].as_str().unwrap_or("?")
            )
        })
        .collect();
    assert!(
        sizes.contains(&"drift-gpu-1=600".to_string())
            && sizes.contains(&"drift-gpu-2=600".to_string()),
        "{sizes:?}"
    );
    assert_eq!(
        sizes.len(),
        3,
        "old boot disks were deleted with their instances: {sizes:?}"
    );

    // Converged.
    fake.clear_calls();
    let last = up(&fake, &changed, true).await.expect("converged");
    assert!(last.created.is_empty() && last.replaced.is_empty());
    assert_eq!(mutating(&fake), Vec::<String>::new());
}

/// An A3 High instance created with nic0 only (before k8sforge gave A3 its GPU NICs, or by
/// hand) where the profile wants nic0 + 4 GPU gVNICs: drift, named with both counts and the
/// flag to replace it; replaced only when asked, with all 5 NICs. Only a real A3 shows that
/// the replaced VM's GPU NICs come up in the guest.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a3_instance_without_its_gpu_nics_is_drift() {
    let fake = Fake::start(World::default()).await;
    let p = small(&[]);
    up(&fake, &p, false).await.expect("provision");
    let mut inst = fake
        .all("instances")
        .into_iter()
        .find(|i| i["name"] == "drift-gpu-1")
        .expect("drift-gpu-1");
    assert_eq!(inst["networkInterfaces"].as_array().unwrap().len(), 5);
    let link = inst["selfLink"].as_str().unwrap().to_string();
    let zone = link
        .split("/zones/")
        .nth(1)
        .and_then(|z| z.split('/').next())
        .unwrap()
        .to_string();
    let mut nic0 = inst["networkInterfaces"][0].clone();
    nic0.as_object_mut().unwrap().remove("nicType");
    inst["networkInterfaces"] = serde_json::json!([nic0]);
    fake.seed(&format!("zones/{zone}/instances"), "drift-gpu-1", inst);

    fake.clear_calls();
    let err = up(&fake, &p, false).await.expect_err("NIC drift refused");
    for needle in [
        "1 adopted machine(s) differ from the profile",
        "gpu-1 (drift-gpu-1): network interfaces is 1 (0 gVNIC), the profile asks for 5 gVNICs (nic0 + 4 GPU NICs of a3-highgpu-8g)",
        "--replace-drifted",
    ] {
        assert!(err.contains(needle), "missing {needle:?} in:\n{err}");
    }
    assert!(!err.contains("gpu-2"), "{err}");
    assert_eq!(
        mutating(&fake),
        Vec::<String>::new(),
        "a refusal changes nothing"
    );

    let out = up(&fake, &p, true).await.expect("replace");
    assert_eq!(out.replaced.len(), 1, "{:?}", out.replaced);
    let inst = fake
        .all("instances")
        .into_iter()
        .find(|i| i["name"] == "drift-gpu-1")
        .expect("recreated");
    let nics = inst["networkInterfaces"].as_array().unwrap();
    assert_eq!(nics.len(), 5);
    assert!(nics.iter().all(|n| n["nicType"] == "GVNIC"), "{nics:?}");
    fake.clear_calls();
    let last = up(&fake, &p, false).await.expect("converged");
    assert!(last.created.is_empty() && last.replaced.is_empty());
    assert_eq!(mutating(&fake), Vec::<String>::new());
}
