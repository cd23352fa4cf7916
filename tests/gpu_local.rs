//! GPU worker nodes on real local nodes (systemd-nspawn, real systemd, sshd and containerd from
//! the test mirror's Debian packages). There is no GPU here, so:
//!
//! - `gpu_worker_containerd_merges_the_nvidia_drop_in` (always runs): a worker of a group with
//!   `gpusPerNode > 0` gets k8sforge's containerd drop-in; containerd itself (`containerd config
//!   dump`) shows the merged config: the nvidia runtime as default, with `SystemdCgroup = true`,
//!   beside k8sforge's runc and pinned sandbox image; a drop-in someone else wrote survives a
//!   forced re-run, and a tampered k8sforge drop-in is restored.
//! - `gpu_gate_and_health_taint_on_a_local_cluster` (needs K8SFORGE_TEST_KUBE_BIN): the workers
//!   get a fake GPU count the documented extended-resource way (node status capacity patched),
//!   so the `addons` gate passes only when each advertises its profile's `gpusPerNode` and names
//!   the node otherwise; GPU nodes join tainted `k8sforge.io/gpu-unverified:NoSchedule` and the
//!   taint is lifted only after the (test) preflight passes on that node; `k8sforge status`
//!   shows each node's result. The NVIDIA container runtime is a runc wrapper: a link to runc
//!   stands in for it, and the device plugin image is the test kit's stand-in.
//!
//! Only a real GPU machine proves the driver, Fabric Manager and toolkit installation
//! (`k8sforge-gpu-runtime.service`, not started on local nodes), CDI device injection, a device
//! plugin that counts real GPUs, and k8sforge's own preflight against real nvidia-smi output.

mod support;

use k8sforge_testkit::kube::{self, KUBE_BIN_ENV};
use k8sforge_testkit::mirror;

use support::kubectl::{advertise_extended, Kubectl};
use support::local_cluster::{phase, LocalCluster};

/// local-3 with two GPUs per worker, from `mirror`.
fn gpu_cluster(prefix: &str, mirror: std::path::PathBuf) -> LocalCluster {
    LocalCluster::reserved(prefix, "local-3")
        .with_mirror(mirror)
        // A fake GPU count is patched in by the test; no need to wait long for a wrong one.
        .with_env("K8SFORGE_GPU_GATE_TIMEOUT", "10")
        .with_set("workers[0].gpusPerNode=2")
        // GPU groups turn monitoring on by default; its images (DCGM exporter, …) cannot be had
        // here, and monitoring has its own live tests.
        .with_set("monitoring.enabled=false")
}

fn root() {
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "this test boots systemd-nspawn nodes: run as root"
    );
}

#[test]
fn gpu_worker_containerd_merges_the_nvidia_drop_in() {
    root();
    let m = mirror::build(&mirror::default_cache_dir()).expect("test mirror");
    let c = gpu_cluster("e2e-gpurt", m.root.clone());
    let _ = c.cmd(&["teardown"]).output();

    // Everything up to the control plane (the mirror has no Kubernetes binaries).
    let (out, report) = c.up(&[]);
    for p in ["provision", "pki", "etcd", "runtime"] {
        assert_eq!(
            phase(&report, p)["outcome"],
            "done",
            "{p}: {report:#}\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    // containerd's own view of the merged configuration on a GPU worker.
    let dump = c.ssh_ok("worker-1", "containerd --version; containerd config dump");
    let version = dump.lines().next().unwrap_or_default().to_string();
    assert!(
        dump.contains("imports = [\"/etc/containerd/conf.d/*.toml\"]")
            || dump.contains("\"/etc/containerd/conf.d/99-nvidia.toml\""),
        "{dump}"
    );
    let nvidia = dump
        .split("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.nvidia]")
        .nth(1)
        .unwrap_or_else(|| panic!("{version}: no nvidia runtime in the merged config:\n{dump}"));
    let nvidia_section: String = nvidia
        .lines()
        .take_while(|l| !l.contains("runtimes.runc"))
        .collect::<Vec<_>>()
        .join("\n");
    for line in [
        "runtime_type = \"io.containerd.runc.v2\"",
        "BinaryName = \"/usr/bin/nvidia-container-runtime\"",
        "SystemdCgroup = true",
    ] {
        assert!(nvidia_section.contains(line), "{line} in\n{nvidia_section}");
    }
    assert!(dump.contains("default_runtime_name = \"nvidia\""), "{dump}");
    // k8sforge's own settings survived the import (containerd 1.x replaces whole sections).
    assert!(
        dump.contains("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc]"),
        "{dump}"
    );
    assert!(
        dump.contains(&format!("sandbox_image = \"{}\"", mirror::PAUSE_IMAGE)),
        "{dump}"
    );
    // CDI through the CRI exists from containerd 1.7 on (the pinned releases ship 1.7 and 2.1);
    // the test mirror's Debian containerd may be older, which ignores the setting.
    if !version.contains(" 1.6.") && !version.contains(" v1.6.") {
        assert!(dump.contains("enable_cdi = true"), "{version}\n{dump}");
    }
    // A CPU node has no nvidia runtime.
    let cp = c.ssh_ok("controlplane-1", "containerd config dump");
    assert!(!cp.contains("runtimes.nvidia"), "{cp}");
    assert!(cp.contains("default_runtime_name = \"runc\""), "{cp}");
    // The preflight is on the node; the driver step is not (no GPU, not the OS it targets).
    c.ssh_ok(
        "worker-1",
        "test -x /usr/local/lib/k8sforge/gpu/preflight.sh && ! test -e /etc/systemd/system/k8sforge-gpu-runtime.service",
    );

    // Someone else's drop-in survives a forced re-run; a tampered k8sforge drop-in is restored.
    c.ssh_ok(
        "worker-1",
        "printf 'version = 2\\n\\n[plugins.\"io.containerd.internal.v1.opt\"]\\n  path = \"/opt/site-containerd\"\\n' \
           > /etc/containerd/conf.d/50-site.toml && \
         sed -i 's/SystemdCgroup = true/SystemdCgroup = false/' /etc/containerd/conf.d/99-nvidia.toml",
    );
    let (_, report) = c.up(&["--only", "runtime", "--force"]);
    let rt = phase(&report, "runtime");
    assert_eq!(rt["outcome"], "done", "{report:#}");
    assert_eq!(rt["files_changed"], 1, "only the tampered drop-in: {rt:#}");
    let dump = c.ssh_ok(
        "worker-1",
        "cat /etc/containerd/conf.d/50-site.toml >/dev/null && containerd config dump",
    );
    assert!(dump.contains("/opt/site-containerd"), "{dump}");
    assert!(!dump.contains("SystemdCgroup = false"), "{dump}");
}

fn taint_keys(k: &Kubectl, node: &str) -> Vec<String> {
    k.json(&["get", "node", node])["spec"]["taints"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(|t| t["key"].as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

fn fake_gpus(k: &Kubectl, node: &str, n: u32) {
    advertise_extended(k, node, "nvidia.com/gpu", n);
}

const GATE: &str = "k8sforge.io/gpu-unverified";

#[test]
fn gpu_gate_and_health_taint_on_a_local_cluster() {
    let kube = match kube::from_env() {
        Ok(Some(k)) => k,
        Ok(None) => {
            eprintln!(
                "skipped gpu_gate_and_health_taint_on_a_local_cluster: set {KUBE_BIN_ENV} (see DEVELOPERS.md)"
            );
            return;
        }
        Err(e) => panic!("{e}"),
    };
    root();
    let cache = mirror::default_cache_dir();
    let base = mirror::build(&cache).expect("test mirror");
    let m = kube::cluster_mirror(&base, &kube, &cache).expect("cluster mirror");
    let c = gpu_cluster("e2e-gpugate", m.root.clone())
        .with_set(format!("kubernetes.version={}", kube.version))
        // The contract: the preflight command is replaceable; this one passes once the test
        // says so on that node.
        .with_set("gpu.health.preflightCommand=/usr/local/bin/test-gpu-preflight");
    let k = c.kubectl(&kube.kubectl());
    let _ = c.cmd(&["teardown"]).output();
    let (_, report) = c.up(&["--only", "provision"]);
    assert_eq!(phase(&report, "provision")["outcome"], "done", "{report:#}");
    for w in ["worker-1", "worker-2"] {
        c.ssh_ok(
            w,
            "ln -sf /usr/local/sbin/runc /usr/bin/nvidia-container-runtime && \
             printf '#!/bin/sh\\n[ -e /run/test-gpu-healthy ] && exit 0\\necho \"test preflight: GPU health not confirmed on $(hostname)\"\\nexit 1\\n' \
               > /usr/local/bin/test-gpu-preflight && chmod 755 /usr/local/bin/test-gpu-preflight",
        );
    }

    // 1. The whole run: the nodes join tainted; nothing advertises nvidia.com/gpu (the stand-in
    //    plugin cannot), so the addons gate fails naming both GPU nodes.
    let (out, report) = c.up(&[]);
    let addons = phase(&report, "addons");
    assert_eq!(
        addons["outcome"],
        "failed",
        "{report:#}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let detail = addons["detail"].as_str().unwrap();
    for w in ["worker-1", "worker-2"] {
        assert!(
            detail.contains(&format!(
                "node {w}: advertises no nvidia.com/gpu, its profile group expects 2"
            )),
            "{detail}"
        );
        assert!(
            taint_keys(&k, w).contains(&GATE.to_string()),
            "{w} joined untainted"
        );
    }
    assert!(!taint_keys(&k, "controlplane-1").contains(&GATE.to_string()));
    // The device plugin runs on both GPU nodes despite the taint, through the nvidia runtime.
    let pods = k.ok(&[
        "-n",
        "kube-system",
        "get",
        "pods",
        "-l",
        "name=nvidia-device-plugin-ds",
        "-o",
        "jsonpath={range .items[*]}{.spec.nodeName} {.status.phase}{\"\\n\"}{end}",
    ]);
    assert!(
        pods.contains("worker-1 Running") && pods.contains("worker-2 Running"),
        "{pods}"
    );

    // 2. Fewer GPUs than the profile on worker-2: the gate names it (and only it).
    fake_gpus(&k, "worker-1", 2);
    fake_gpus(&k, "worker-2", 1);
    let (_, report) = c.up(&["--only", "addons"]);
    let addons = phase(&report, "addons");
    assert_eq!(addons["outcome"], "failed", "{report:#}");
    let detail = addons["detail"].as_str().unwrap();
    assert!(
        detail.contains(
            "node worker-2: advertises 1 nvidia.com/gpu, its profile group expects 2 (gpusPerNode)"
        ),
        "{detail}"
    );
    assert!(!detail.contains("node worker-1"), "{detail}");

    // 3. The right counts: the gate passes, the preflight fails on both; the taints stay and
    //    each node is named with what failed.
    fake_gpus(&k, "worker-2", 2);
    let (_, report) = c.up(&["--only", "addons"]);
    let addons = phase(&report, "addons");
    assert_eq!(addons["outcome"], "failed", "{report:#}");
    let failed: Vec<(String, String)> =
        serde_json::from_value(addons["failed_nodes"].clone()).unwrap();
    assert_eq!(failed.len(), 2, "{failed:?}");
    for (n, why) in &failed {
        assert!(
            why.contains(&format!("test preflight: GPU health not confirmed on {n}")),
            "{why}"
        );
        assert!(taint_keys(&k, n).contains(&GATE.to_string()));
    }
    let status = c.cmd(&["status"]).output().unwrap();
    let table = String::from_utf8_lossy(&status.stdout);
    assert!(
        !status.status.success(),
        "status is healthy with failed preflights:\n{table}"
    );
    assert!(table.contains("gpu=failed: test preflight"), "{table}");

    // 4. worker-1 passes: only its taint is lifted.
    c.ssh_ok("worker-1", "touch /run/test-gpu-healthy");
    let (_, report) = c.up(&["--only", "addons"]);
    let addons = phase(&report, "addons");
    assert_eq!(addons["outcome"], "failed", "{report:#}");
    assert!(!taint_keys(&k, "worker-1").contains(&GATE.to_string()));
    assert!(taint_keys(&k, "worker-2").contains(&GATE.to_string()));

    // 5. Both pass: the phase is done, no GPU node is tainted, status shows both verified.
    c.ssh_ok("worker-2", "touch /run/test-gpu-healthy");
    let (_, report) = c.up(&["--only", "addons"]);
    assert_eq!(phase(&report, "addons")["outcome"], "done", "{report:#}");
    for w in ["worker-1", "worker-2"] {
        assert!(!taint_keys(&k, w).contains(&GATE.to_string()), "{w}");
    }
    let status = c.cmd(&["status"]).output().unwrap();
    let table = String::from_utf8_lossy(&status.stdout);
    assert_eq!(table.matches("gpu=passed").count(), 2, "{table}");
}
