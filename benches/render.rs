//! Render figures: `render` + `Bundle::write_to` for gpu-1000 (1003 nodes).
//!
//! Run: `/usr/bin/time -v cargo bench --bench render` (or the built bench binary directly, for a
//! clean peak RSS). The PKI phase is built on another branch; until it lands, the bench uses the
//! same placeholder PKI files as tests/render.rs (render copies PKI files verbatim, so their size
//! is what matters: placeholders are ~100-300 bytes, real ECDSA certs ~700 bytes, kubeconfigs
//! ~2.5 KiB). Setup is excluded from the timings printed.

#[path = "../tests/support/mod.rs"]
mod support;

use std::collections::BTreeMap;
use std::time::Instant;

fn main() {
    // `cargo bench` passes --bench; ignore arguments.
    let profile = k8sforge::profile::load("gpu-1000", &[])
        .expect("gpu-1000 profile")
        .profile;
    let inv = k8sforge::inventory::planned(&profile, &BTreeMap::new()).expect("inventory");
    let state = tempfile::tempdir().expect("tempdir");
    support::write_placeholder_pki(state.path(), &inv);
    // K8SFORGE_BENCH_OUT picks the filesystem the bundle is written to (e.g. /dev/shm for tmpfs).
    let out = match std::env::var_os("K8SFORGE_BENCH_OUT") {
        Some(dir) => tempfile::tempdir_in(dir).expect("tempdir in K8SFORGE_BENCH_OUT"),
        None => tempfile::tempdir().expect("tempdir"),
    };

    let runs = 5;
    let mut render_ms = Vec::new();
    for _ in 0..runs {
        let t = Instant::now();
        let b = k8sforge::render::render(&profile, &inv, state.path()).expect("render");
        render_ms.push(t.elapsed().as_secs_f64() * 1e3);
        std::hint::black_box(b);
    }
    let t = Instant::now();
    let bundle = k8sforge::render::render(&profile, &inv, state.path()).expect("render");
    let rendered = t.elapsed();
    let t = Instant::now();
    let first = bundle.write_to(&out.path().join("bundle")).expect("write");
    let first_write = t.elapsed();
    // `plan` also hashes every file once more to compare against the last applied state.
    let t = Instant::now();
    let digests = bundle.digests();
    let digest_time = t.elapsed();
    let t = Instant::now();
    let second = bundle.write_to(&out.path().join("bundle")).expect("write");
    let second_write = t.elapsed();
    let bytes: usize = bundle
        .nodes
        .values()
        .flat_map(|n| n.files.iter().map(|f| f.content.len()))
        .sum();

    render_ms.sort_by(|a, b| a.total_cmp(b));
    println!(
        "gpu-1000: {} nodes, {} files, {:.1} MiB of content",
        bundle.nodes.len(),
        bundle.file_count(),
        bytes as f64 / (1024.0 * 1024.0)
    );
    println!(
        "render (median of {runs}): {:.1} ms  [min {:.1}, max {:.1}]",
        render_ms[runs / 2],
        render_ms[0],
        render_ms[runs - 1]
    );
    println!(
        "render + first write_to (fresh dir, {} files written): {:.1} ms + {:.1} ms = {:.1} ms",
        first.changed,
        rendered.as_secs_f64() * 1e3,
        first_write.as_secs_f64() * 1e3,
        (rendered + first_write).as_secs_f64() * 1e3
    );
    println!(
        "digests (plan's change summary, {} files): {:.1} ms",
        digests.len(),
        digest_time.as_secs_f64() * 1e3
    );
    println!(
        "second write_to (nothing changed, {} written): {:.1} ms",
        second.changed,
        second_write.as_secs_f64() * 1e3
    );
}
