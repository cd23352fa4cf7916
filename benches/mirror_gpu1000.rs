//! `k8sforge mirror --profile gpu-1000` against real peers on loopback: an HTTP server holding
//! upstream-layout files and Debian's docker-registry holding the images. Measures a cold run
//! (everything fetched and verified) and a second run (everything verified, nothing fetched):
//! files, images, bytes and wall time, from the command's own `--output json` summary.
//!
//! No registry reachable here ships the Kubernetes release files, so the binaries are the test
//! kit's (Debian's etcd/containerd/runc/CNI under upstream names; with K8SFORGE_TEST_KUBE_BIN the
//! given Kubernetes binaries laid out as dl.k8s.io does, else small stand-ins), the images the
//! test kit's (its pause image under the pause, CoreDNS, device-plugin and training-operator
//! names; CoreDNS and the device-plugin stand-in from the given binaries when present), all
//! pushed into the registry and pinned by the digests it reports. The profile is gpu-1000 at the
//! binaries' Kubernetes version (v1.28.7 without them), so its training stack is
//! training-operator v1 (21 pinned upstream files) when ../shared/upstream is present.
//!
//!   [K8SFORGE_TEST_KUBE_BIN=DIR] cargo bench --bench mirror_gpu1000

#[path = "../tests/support/mirror_source.rs"]
mod mirror_source;

use std::net::{SocketAddr, TcpListener};
use std::process::Command;
use std::time::Instant;

use k8sforge_testkit::http::FileServer;
use k8sforge_testkit::registry::Registry;
use k8sforge_testkit::{kube, mirror};

const BIN: &str = env!("CARGO_BIN_EXE_k8sforge");

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn main() {
    let cache = mirror::default_cache_dir();
    let m = mirror::build(&cache).expect("test mirror");
    let kube = kube::from_env().expect(kube::KUBE_BIN_ENV);
    let (base, version) = match &kube {
        Some(k) => (
            kube::cluster_mirror(&m, k, &cache).expect("cluster mirror"),
            k.version.clone(),
        ),
        None => (m.clone(), "v1.28.7".to_string()),
    };
    let release = k8sforge::artifacts::release(&version).expect("release row");
    let src = mirror_source::source_tree(&base, &version, kube.is_none());
    let http = FileServer::start("127.0.0.1:0".parse().unwrap(), src.path()).unwrap();
    let registry = Registry::start(SocketAddr::from(([127, 0, 0, 1], free_port()))).unwrap();
    let img = |name: &str| {
        let p = base.root.join(format!("images/{name}.tar"));
        if p.is_file() {
            p
        } else {
            base.root.join("images/pause.tar")
        }
    };
    let push =
        |name: &str, repo: &str, tag: &str| registry.push_archive(&img(name), repo, tag).unwrap();
    let pause = push("pause", "pause", release.pause);
    let coredns = push("coredns", "coredns/coredns", release.coredns);
    let plugin = push(
        "nvidia-device-plugin",
        "nvidia/k8s-device-plugin",
        "v0.17.1",
    );
    let operator = push(
        "pause",
        "kubeflow/training-v1/training-operator",
        "v1-93c5489",
    );
    let r = registry.addr;
    let sets = [
        format!("kubernetes.version={version}"),
        format!("training.enabled={}", mirror_source::upstream_dir().is_some()),
        format!(
            "artifacts.registryMirrors=[{{registry: registry.k8s.io, endpoints: [\"http://{r}\"], fallbackToUpstream: false}}, \
             {{registry: nvcr.io, endpoints: [\"http://{r}\"], fallbackToUpstream: false}}, \
             {{registry: ghcr.io, endpoints: [\"http://{r}\"], fallbackToUpstream: false}}]"
        ),
        format!("artifacts.images.pause=registry.k8s.io/pause:{}@{pause}", release.pause),
        format!(
            "artifacts.images.coredns=registry.k8s.io/coredns/coredns:{}@{coredns}",
            release.coredns
        ),
        format!("artifacts.images.nvidiaDevicePlugin=nvcr.io/nvidia/k8s-device-plugin:v0.17.1@{plugin}"),
        format!("artifacts.images.trainingOperator=ghcr.io/kubeflow/training-v1/training-operator:v1-93c5489@{operator}"),
    ];
    let out = tempfile::tempdir().unwrap();
    println!(
        "k8sforge mirror --profile gpu-1000 (Kubernetes {version}, {} binaries)",
        if kube.is_some() {
            "real Kubernetes"
        } else {
            "stand-in Kubernetes"
        }
    );
    println!("| run | wall s | files | images | fetched | reused | MiB fetched | MiB total |");
    println!("|---|---|---|---|---|---|---|---|");
    for run in ["cold", "second (resume)"] {
        let mut c = Command::new(BIN);
        c.args(["mirror", "--profile", "gpu-1000", "--out"])
            .arg(out.path())
            .args([
                "--from",
                &http.url(),
                "--trust-mirror-checksums",
                "-o",
                "json",
            ]);
        for s in &sets {
            c.args(["--set", s]);
        }
        let t = Instant::now();
        let o = c.output().unwrap();
        let wall = t.elapsed().as_secs_f64();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let s: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        let mib = |k: &str| s[k].as_f64().unwrap_or(0.0) / 1048576.0;
        println!(
            "| {run} | {wall:.1} | {} | {} | {} | {} | {:.1} | {:.1} |",
            s["files"],
            s["images"],
            s["fetched"],
            s["reused"],
            mib("bytes_fetched"),
            mib("bytes_total")
        );
    }
}
