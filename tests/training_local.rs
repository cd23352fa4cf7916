//! The training stack on a real local cluster (systemd-nspawn nodes, real kubelets; Kubernetes
//! binaries from `K8SFORGE_TEST_KUBE_BIN`, one skip line otherwise):
//!
//! - `up` runs every phase including `training` (training-operator v1 on v1.28, its CRDs
//!   Established; controllers awaited only when their images are given, see below), and the
//!   local storage: the volume directories exist on every worker, one local PV per directory
//!   with node affinity, Available; a second `up --only training` writes nothing.
//! - GPU quota without a GPU: `nvidia.com/gpu` advertised on both workers as an extended
//!   resource (node status capacity patched, the documented way); `team add` makes the team's
//!   quota and its dataset and checkpoint PVCs; a Job within the quota (2 GPUs, k8sforge's smoke
//!   program as one rank, checkpoint PVC mounted) is scheduled onto a GPU-advertising worker by
//!   the real scheduler, runs on a real kubelet to Succeeded and binds the checkpoint PVC to a
//!   local PV; a Job over it (3 GPUs) gets no pod and the quota's own message.
//! - The smoke image for real (imported from the mirror by the runtime phase, never pulled):
//!   two ranks as pods, rank 1 reaching rank 0 through a Service over the pod network, the
//!   PyTorch rendezvous variables set as the operator would; all-reduce verified by both; the
//!   pods are deleted, the PVC survives, and the re-submitted pair resumes after the newest
//!   checkpoint.
//! - Operator-driven (`k8sforge smoke`, PyTorchJob and TFJob): only with the controller images
//!   as OCI archives in `K8SFORGE_TEST_TRAINING_IMAGES` (nobody can build them here); skipped
//!   with one line otherwise.

mod support;

use std::path::{Path, PathBuf};
use std::process::Output;

use k8sforge_testkit::kube::{self, KUBE_BIN_ENV};
use k8sforge_testkit::{mirror, training};

use support::kubectl::{advertise_extended, until, until_or, Kubectl};
use support::local_cluster::{phase, LocalCluster};

fn upstream_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("K8SFORGE_TEST_UPSTREAM")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/upstream"));
    dir.join("raw.githubusercontent.com")
        .is_dir()
        .then_some(dir)
}

/// The local cluster with kubectl from the given binaries.
struct Cluster {
    lc: LocalCluster,
    kubectl: Kubectl,
}

impl std::ops::Deref for Cluster {
    type Target = LocalCluster;
    fn deref(&self) -> &LocalCluster {
        &self.lc
    }
}

impl Cluster {
    fn kubectl_out(&self, args: &[&str], stdin: Option<&str>) -> Output {
        self.kubectl.output(args, stdin)
    }

    fn kubectl(&self, args: &[&str]) -> String {
        self.kubectl.ok(args)
    }

    fn create(&self, obj: &serde_json::Value) {
        self.kubectl.create(obj)
    }

    fn json(&self, args: &[&str]) -> serde_json::Value {
        self.kubectl.json(args)
    }

    fn until<T>(&self, what: &str, secs: u64, f: impl FnMut() -> Option<T>) -> T {
        until(what, secs, f)
    }

    fn until_or<T>(
        &self,
        what: &str,
        secs: u64,
        why: &dyn Fn() -> String,
        f: impl FnMut() -> Option<T>,
    ) -> T {
        until_or(what, secs, why, f)
    }

    fn pod_phase(&self, ns: &str, name: &str) -> String {
        self.kubectl(&[
            "-n",
            ns,
            "get",
            "pod",
            name,
            "-o",
            "jsonpath={.status.phase}",
        ])
    }

    fn wait_pod_done(&self, ns: &str, name: &str) -> String {
        self.until(&format!("pod {ns}/{name} to finish"), 240, || {
            let p = self.pod_phase(ns, name);
            (p == "Succeeded" || p == "Failed").then_some(p)
        })
    }
}

fn advertise_gpus(c: &Cluster, node: &str, n: u32) {
    advertise_extended(&c.kubectl, node, "nvidia.com/gpu", n);
}

/// A pod of the smoke program with the PyTorchJob rendezvous variables.
#[allow(clippy::too_many_arguments)]
fn smoke_pod(
    name: &str,
    rank: u32,
    world: u32,
    master: &str,
    epochs: u32,
    ckpt_dir: &str,
    gpus: u32,
    with_pvc: bool,
) -> serde_json::Value {
    let mut pod = serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "labels": {"app": "smoke-pair", "rank": rank.to_string()}},
        "spec": {
            "restartPolicy": "Never",
            "containers": [{
                "name": "pytorch",
                "image": training::SMOKE_IMAGE,
                "imagePullPolicy": "Never",
                "command": ["/bin/k8sforge-smoke"],
                "env": [
                    {"name": "MASTER_ADDR", "value": master},
                    {"name": "MASTER_PORT", "value": "23456"},
                    {"name": "WORLD_SIZE", "value": world.to_string()},
                    {"name": "RANK", "value": rank.to_string()},
                    {"name": "K8SFORGE_SMOKE_EPOCHS", "value": epochs.to_string()},
                    {"name": "K8SFORGE_SMOKE_CHECKPOINT_DIR", "value": ckpt_dir},
                    {"name": "K8SFORGE_SMOKE_TIMEOUT", "value": "120"}
                ],
                "ports": [{"containerPort": 23456}],
                "resources": {"limits": {"nvidia.com/gpu": gpus}}
            }]
        }
    });
    if with_pvc {
        pod["spec"]["volumes"] = serde_json::json!([{"name": "ckpt", "persistentVolumeClaim": {"claimName": "checkpoints"}}]);
        pod["spec"]["containers"][0]["volumeMounts"] =
            serde_json::json!([{"name": "ckpt", "mountPath": "/checkpoints"}]);
    }
    pod
}

fn report_of(log: &str) -> serde_json::Value {
    let line = log
        .lines()
        .rev()
        .find_map(|l| l.strip_prefix("K8SFORGE-SMOKE "))
        .unwrap_or_else(|| panic!("no report in\n{log}"));
    serde_json::from_str(line).unwrap()
}

#[test]
fn training_stack_storage_gpu_quota_and_smoke_on_a_local_cluster() {
    let kube = match kube::from_env() {
        Ok(Some(k)) => k,
        Ok(None) => {
            eprintln!("skipped training_local: set {KUBE_BIN_ENV} (see DEVELOPERS.md)");
            return;
        }
        Err(e) => panic!("{e}"),
    };
    let Some(upstream) = upstream_dir() else {
        eprintln!("skipped training_local: no ../shared/upstream (set K8SFORGE_TEST_UPSTREAM)");
        return;
    };
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "boots systemd-nspawn nodes: run as root"
    );
    let cache = mirror::default_cache_dir();
    let base = mirror::build(&cache).expect("test mirror");
    let cm = kube::cluster_mirror(&base, &kube, &cache).expect("cluster mirror");
    let scratch = tempfile::tempdir().unwrap();
    let release = k8sforge::artifacts::release(&kube.version).expect("a pinned release");
    let (tm, controllers) =
        training::training_mirror(&cm, &upstream, release, &scratch.path().join("mirror"))
            .expect("training mirror");
    let mut lc = LocalCluster::reserved("e2e-train", "local-3")
        .with_mirror(tm.root.clone())
        .with_set(format!("kubernetes.version={}", kube.version));
    if !controllers {
        lc = lc.with_set("training.waitForControllers=false");
    }
    let c = Cluster {
        kubectl: lc.kubectl(&kube.kubectl()),
        lc,
    };
    let _ = c.cmd(&["teardown"]).output();

    // 1. The whole cluster, training phase included.
    let (out, report) = c.up(&[]);
    let training_phase = phase(&report, "training");
    assert_eq!(
        training_phase["outcome"],
        "done",
        "{report:#}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let detail = training_phase["detail"].as_str().unwrap();
    assert!(
        detail.contains("training-operator") && detail.contains("storage: local"),
        "{detail}"
    );
    let crd = c.json(&["get", "crd", "pytorchjobs.kubeflow.org"]);
    assert!(
        crd["status"]["conditions"]
            .as_array()
            .unwrap()
            .iter()
            .any(|k| k["type"] == "Established" && k["status"] == "True"),
        "{crd:#}"
    );
    // Local storage: the directories on each worker, a PV per directory pinned to its node.
    for w in ["worker-1", "worker-2"] {
        c.ok(&[
            "ssh",
            w,
            "--",
            "test -d /var/lib/k8sforge/volumes/vol-4 && test -d /var/lib/k8sforge/volumes/vol-1",
        ]);
    }
    let pvs = c.json(&["get", "pv", "-l", "k8sforge.io/storage-backend=local"]);
    let pvs = pvs["items"].as_array().unwrap();
    assert_eq!(pvs.len(), 8, "4 per worker");
    for pv in pvs {
        assert_eq!(pv["status"]["phase"], "Available", "{pv:#}");
    }
    let sc = c.json(&["get", "storageclass", "k8sforge-local"]);
    assert_eq!(sc["volumeBindingMode"], "WaitForFirstConsumer");
    // A second run writes nothing.
    let (_, again) = c.up(&["--only", "training"]);
    assert_eq!(phase(&again, "training")["files_changed"], 0, "{again:#}");
    // For BENCHMARKS.md (not asserted: figures are not test conditions).
    eprintln!(
        "figure: training phase {} s (first), {} s (nothing to change)",
        training_phase["elapsed"],
        phase(&again, "training")["elapsed"]
    );

    // 2. GPU quota without a GPU: both workers advertise 4 nvidia.com/gpu.
    advertise_gpus(&c, "worker-1", 4);
    advertise_gpus(&c, "worker-2", 4);
    c.ok(&[
        "team",
        "add",
        "vision",
        "--gpus",
        "2",
        "--checkpoint-size",
        "1Gi",
        "--dataset-size",
        "1Gi",
    ]);
    let pvc = c.json(&["-n", "vision", "get", "pvc", "checkpoints"]);
    assert_eq!(pvc["spec"]["storageClassName"], "k8sforge-local");
    assert_eq!(pvc["spec"]["accessModes"][0], "ReadWriteOnce");
    c.json(&["-n", "vision", "get", "pvc", "datasets"]);
    c.until("the quota controller's first status", 60, || {
        let q = c.json(&["-n", "vision", "get", "resourcequota", "team-quota"]);
        q["status"]["hard"].is_object().then_some(())
    });
    // Within quota: 2 GPUs, one rank of the smoke program, checkpoints on the PVC.
    let within = serde_json::json!({
        "apiVersion": "batch/v1", "kind": "Job",
        "metadata": {"name": "within", "namespace": "vision"},
        "spec": {"backoffLimit": 0, "template": smoke_pod("x", 0, 1, "127.0.0.1", 2, "/checkpoints/single", 2, true)
            .get("spec").map(|s| serde_json::json!({"spec": s})).unwrap()}
    });
    c.create(&within);
    let pod = c.until_or(
        "the within-quota job's pod to finish",
        240,
        &|| {
            String::from_utf8_lossy(
                &c.kubectl_out(&["-n", "vision", "describe", "jobs,pods"], None)
                    .stdout,
            )
            .into_owned()
        },
        || {
            let l = c.json(&["-n", "vision", "get", "pods", "-l", "job-name=within"]);
            let p = l["items"].as_array()?.first()?.clone();
            matches!(
                p["status"]["phase"].as_str(),
                Some("Succeeded") | Some("Failed")
            )
            .then_some(p)
        },
    );
    let name = pod["metadata"]["name"].as_str().unwrap();
    let log = c.kubectl(&["-n", "vision", "logs", name]);
    assert_eq!(pod["status"]["phase"], "Succeeded", "{log}\n{pod:#}");
    assert_eq!(report_of(&log)["result"], "pass");
    let node = pod["spec"]["nodeName"].as_str().unwrap().to_string();
    assert!(node.starts_with("worker-"), "{node}");
    assert_eq!(
        pod["spec"]["containers"][0]["resources"]["requests"]["nvidia.com/gpu"],
        "2"
    );
    let pvc = c.json(&["-n", "vision", "get", "pvc", "checkpoints"]);
    assert_eq!(pvc["status"]["phase"], "Bound", "{pvc:#}");
    let bound_pv = pvc["spec"]["volumeName"].as_str().unwrap().to_string();
    assert!(
        bound_pv.starts_with(&format!("k8sforge-local-{node}-")),
        "{bound_pv} on {node}"
    );
    // The checkpoints are on that node's volume directory.
    let files = c.ok(&["ssh", &node, "--", "ls /var/lib/k8sforge/volumes/*/single/"]);
    assert!(files.contains("epoch-000002.ckpt"), "{files}");

    // Over quota: 3 GPUs > 2; no pod, the quota's message.
    let mut over = within.clone();
    over["metadata"]["name"] = "over".into();
    over["spec"]["template"]["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] =
        3.into();
    over["spec"]["template"]["spec"]["volumes"] = serde_json::Value::Null;
    over["spec"]["template"]["spec"]["containers"][0]["volumeMounts"] = serde_json::Value::Null;
    c.create(&over);
    let why = c.until("the quota's rejection of the over-quota job", 60, || {
        let ev = c.json(&[
            "-n",
            "vision",
            "get",
            "events",
            "--field-selector",
            "involvedObject.name=over",
        ]);
        ev["items"]
            .as_array()?
            .iter()
            .filter_map(|e| e["message"].as_str())
            .find(|m| m.contains("exceeded quota"))
            .map(String::from)
    });
    assert!(
        why.contains("exceeded quota: team-quota") && why.contains("requests.nvidia.com/gpu"),
        "{why}"
    );
    let l = c.json(&["-n", "vision", "get", "pods", "-l", "job-name=over"]);
    assert!(l["items"].as_array().unwrap().is_empty(), "{l:#}");

    // 3. Two ranks over the pod network: rank 1 dials rank 0 through a Service.
    c.create(&serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {"name": "smoke-master", "namespace": "vision"},
        "spec": {"selector": {"app": "smoke-pair", "rank": "0"},
                 "ports": [{"port": 23456, "targetPort": 23456}]}
    }));
    let ip = c.kubectl(&[
        "-n",
        "vision",
        "get",
        "svc",
        "smoke-master",
        "-o",
        "jsonpath={.spec.clusterIP}",
    ]);
    let pair = |epochs: u32| -> (serde_json::Value, serde_json::Value) {
        for (name, rank) in [("rank-0", 0), ("rank-1", 1)] {
            let mut p = smoke_pod(
                name,
                rank,
                2,
                &ip,
                epochs,
                "/checkpoints/pair",
                0,
                rank == 0,
            );
            p["metadata"]["namespace"] = "vision".into();
            c.create(&p);
        }
        let mut out = Vec::new();
        for name in ["rank-0", "rank-1"] {
            let phase = c.wait_pod_done("vision", name);
            let log = c.kubectl(&["-n", "vision", "logs", name]);
            assert_eq!(phase, "Succeeded", "{name}: {log}");
            out.push(report_of(&log));
        }
        // As a deleted job's pods go; the PVC stays.
        c.kubectl(&[
            "-n",
            "vision",
            "delete",
            "pod",
            "rank-0",
            "rank-1",
            "--wait=true",
        ]);
        (out.remove(0), out.remove(0))
    };
    let (r0, r1) = pair(3);
    assert_eq!(
        (r0["world"].as_u64(), r1["rank"].as_u64()),
        (Some(2), Some(1)),
        "{r0} {r1}"
    );
    assert!(r0["resumed_from"].is_null(), "{r0}");
    assert_eq!(r1["master"], format!("{ip}:23456"));
    c.json(&["-n", "vision", "get", "pvc", "checkpoints"]);
    let (r0, _) = pair(5);
    assert_eq!(r0["resumed_from"], 3, "{r0}");
    assert_eq!(r0["first_epoch"], 4, "{r0}");

    // 4. The operators' run (needs their images).
    if !controllers {
        eprintln!(
            "skipped the operator-driven smoke run: set {} to a directory of controller image archives (training-operator.tar, …)",
            training::TRAINING_IMAGES_ENV
        );
        return;
    }
    let mirror = tm.root.display().to_string();
    let run = |epochs: &str| {
        let out = c
            .cmd(&[
                "smoke",
                "--team",
                "vision",
                "--jobs",
                "pytorch,tf",
                "--epochs",
                epochs,
                "--mirror",
                &mirror,
                "--trust-mirror-checksums",
                "-o",
                "json",
            ])
            .output()
            .unwrap();
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_else(|_| {
            panic!(
                "{}\n{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
        });
        assert!(
            out.status.success(),
            "{v:#}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        v
    };
    let first = run("2");
    for j in first.as_array().unwrap() {
        assert_eq!(j["passed"], true, "{j:#}");
        assert_eq!(j["report"]["world"], 3, "{j:#}");
    }
    let second = run("4");
    for j in second.as_array().unwrap() {
        assert_eq!(j["report"]["resumed_from"], 2, "{j:#}");
    }
}
