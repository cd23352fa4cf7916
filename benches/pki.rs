//! PKI and plan figures; filled in with the PKI table.
use criterion::{criterion_group, criterion_main, Criterion};

fn load_profile(c: &mut Criterion) {
    c.bench_function("load gpu-1000 profile", |b| {
        b.iter(|| k8sforge::profile::load("gpu-1000", &[]).map(|p| p.profile.name))
    });
}

criterion_group!(benches, load_profile);
criterion_main!(benches);
