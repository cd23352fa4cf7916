//! API calls by method and wall time to provision, re-run and tear down `gpu-1000` on GCP,
//! against the fake Compute Engine server of the tests (tests/gcp/fake.rs) on 127.0.0.1.
//! The fake answers at once, so the times are k8sforge's own cost plus loopback HTTP, not
//! Google's; the call counts are what a real run would make.
//!
//! Run: `cargo bench --bench gcp_fake` (needs google-cloud-cli for the schema, like the tests).

#[path = "../tests/gcp/batch.rs"]
mod batch;
#[path = "../tests/gcp/fake.rs"]
#[allow(dead_code)]
mod fake;
#[path = "../tests/gcp/handlers.rs"]
mod handlers;
#[path = "../tests/gcp/schema.rs"]
#[allow(dead_code)]
mod schema;
#[path = "../tests/gcp/token.rs"]
// Only the provider tests set up credentials.
#[allow(dead_code)]
mod token;

use std::collections::BTreeMap;
use std::time::Instant;

use k8sforge::provider::gcp::auth::Credentials;
use k8sforge::provider::gcp::{GcpConfig, GcpProvider};
use k8sforge::provider::{Provider, ProvisionContext};

fn table(title: &str, secs: f64, counts: &BTreeMap<String, u64>) {
    let total: u64 = counts.values().sum();
    println!("\n### {title}: {secs:.2} s, {total} API calls\n");
    println!("| method | calls |\n|---|---|");
    for (m, n) in counts {
        println!("| {m} | {n} |");
    }
}

fn diff(after: &BTreeMap<String, u64>, before: &BTreeMap<String, u64>) -> BTreeMap<String, u64> {
    after
        .iter()
        .map(|(k, v)| (k.clone(), v - before.get(k).copied().unwrap_or(0)))
        .filter(|(_, v)| *v > 0)
        .collect()
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async {
        let fake = fake::Fake::start(fake::World::default()).await;
        let loaded = k8sforge::profile::load(
            "gpu-1000",
            &[
                "provider.kind=gcp".into(),
                "provider.gcp.project=k8sforge-test".into(),
            ],
        )
        .expect("profile");
        let p = loaded.profile;
        let inv = k8sforge::inventory::planned(&p, &BTreeMap::new()).expect("inventory");
        let mut cfg = GcpConfig::resolve(
            p.provider.gcp.as_ref().expect("gcp"),
            fake.endpoint(),
            Credentials::Anonymous,
        )
        .expect("config");
        // No guest agent behind the fake: one look for host keys, no wait.
        cfg.host_key_wait = std::time::Duration::ZERO;
        let gcp = GcpProvider::new(cfg).expect("provider");
        let ctx = ProvisionContext {
            profile: &p,
            planned: &inv,
            cluster_dir: std::env::temp_dir(),
            ssh_public_key: "ssh-ed25519 AAAA bench".into(),
            replace_drifted: false,
        };
        println!(
            "## GCP provider, gpu-1000 ({} nodes) against the fake Compute API",
            inv.nodes.len()
        );

        let t = Instant::now();
        gcp.preflight(&ctx).await.expect("preflight");
        gcp.provision(&ctx).await.expect("provision");
        let first = gcp.api.call_counts();
        table(
            "provision (preflight + create)",
            t.elapsed().as_secs_f64(),
            &first,
        );

        let t = Instant::now();
        gcp.preflight(&ctx).await.expect("preflight");
        gcp.provision(&ctx).await.expect("re-run");
        let second = gcp.api.call_counts();
        table(
            "re-run (adopt, nothing created)",
            t.elapsed().as_secs_f64(),
            &diff(&second, &first),
        );

        let t = Instant::now();
        let r = gcp.teardown(&ctx, false).await.expect("teardown");
        let third = gcp.api.call_counts();
        table(
            &format!("teardown ({} resources)", r.deleted.len()),
            t.elapsed().as_secs_f64(),
            &diff(&third, &second),
        );
        assert!(fake.violations().is_empty(), "{:?}", fake.violations());
    });
}
