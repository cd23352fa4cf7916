//! GPU node files (issue 13), as rendered for `gpu-dev`'s GPU workers: the NVIDIA driver,
//! Fabric Manager and container toolkit step with pinned, held packages; the containerd drop-in
//! (nvidia runtime, CDI on, `SystemdCgroup = true`) against golden files; the preflight's logic
//! run against stand-ins of the tools it reads.
//!
//! What only a real GPU machine can prove, and these tests do not: that the packages exist for
//! the node's kernel and install, that the modules load and match the userspace, that Fabric
//! Manager trains the NVLink fabric, that the toolkit's runtime injects the devices named by the
//! CDI spec, and that EFA / gVNIC devices appear as the instance type documents. The drop-in's
//! merge by a real containerd is shown on local nodes in tests/gpu_local.rs; the units pass
//! `systemd-analyze verify` in tests/render.rs (its gpu-dev fixture includes the GPU unit).

mod support;

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

use k8sforge::inventory;
use k8sforge::profile;
use k8sforge::render::{self, gpu, Bundle, NodeBundle};

fn bundle(name: &str, sets: &[&str]) -> (tempfile::TempDir, Bundle) {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let p = profile::load(name, &sets)
        .unwrap_or_else(|e| panic!("profile {name}: {e}"))
        .profile;
    let inv = inventory::planned(&p, &BTreeMap::new()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    support::write_placeholder_pki(dir.path(), &inv);
    let b = render::render(&p, &inv, dir.path()).unwrap();
    (dir, b)
}

fn text(nb: &NodeBundle, path: &str) -> String {
    let f = nb
        .files
        .iter()
        .find(|f| f.path == path)
        .unwrap_or_else(|| panic!("no file {path}"));
    String::from_utf8(f.content.clone()).unwrap()
}

fn has(nb: &NodeBundle, path: &str) -> bool {
    nb.files.iter().any(|f| f.path == path)
}

const GPU_FILES: [&str; 6] = [
    gpu::DROP_IN,
    gpu::RUNTIME_SCRIPT,
    gpu::PREFLIGHT_SCRIPT,
    gpu::UNATTENDED_BLACKLIST,
    gpu::TOOLKIT_SOURCES,
    "/etc/systemd/system/k8sforge-gpu-runtime.service",
];

#[test]
fn gpu_nodes_get_the_nvidia_stack_and_cpu_nodes_do_not() {
    let (_d, b) = bundle("gpu-dev", &[]);
    let g = &b.nodes["gpu-1"];
    for f in GPU_FILES {
        assert!(has(g, f), "gpu-1 lacks {f}");
    }
    let restarts = |p: &str| {
        g.files
            .iter()
            .find(|f| f.path == p)
            .map(|f| f.restarts.clone())
            .unwrap()
    };
    assert_eq!(restarts(gpu::DROP_IN), ["containerd.service"]);
    assert_eq!(restarts(gpu::RUNTIME_SCRIPT), [gpu::GPU_UNIT]);
    assert!(restarts(gpu::PREFLIGHT_SCRIPT).is_empty());
    // The NVIDIA stack is in place before containerd starts.
    let pos = |u: &str| g.units.iter().position(|x| x == u).unwrap();
    assert!(
        pos(gpu::GPU_UNIT) < pos("containerd.service"),
        "{:?}",
        g.units
    );
    let unit = text(g, "/etc/systemd/system/k8sforge-gpu-runtime.service");
    assert!(
        unit.contains("Before=containerd.service kubelet.service"),
        "{unit}"
    );
    assert!(unit.contains(&format!("ExecStart={}", gpu::RUNTIME_SCRIPT)));
    for n in ["cpu-1", "controlplane-1"] {
        let nb = &b.nodes[n];
        for f in GPU_FILES {
            assert!(!has(nb, f), "{n} has {f}");
        }
        assert!(!nb.units.iter().any(|u| u == gpu::GPU_UNIT));
    }
    // Every pod-running node's own config imports drop-ins; k8sforge writes only its own there.
    for (n, nb) in &b.nodes {
        let c = text(nb, "/etc/containerd/config.toml");
        assert!(
            c.contains("imports = [\"/etc/containerd/conf.d/*.toml\"]"),
            "{n}: {c}"
        );
        let in_conf_d: Vec<&str> = nb
            .files
            .iter()
            .map(|f| f.path.as_str())
            .filter(|p| p.starts_with("/etc/containerd/conf.d/"))
            .collect();
        assert!(
            in_conf_d.is_empty() || in_conf_d == [gpu::DROP_IN],
            "{n}: {in_conf_d:?}"
        );
    }
}

#[test]
fn local_gpu_nodes_get_the_drop_in_and_preflight_but_no_driver_step() {
    // systemd-nspawn nodes have no GPU and run Debian: the driver step is a real machine's job.
    let (_d, b) = bundle("local-3", &["workers[0].gpusPerNode=2"]);
    let w = &b.nodes["worker-1"];
    assert!(has(w, gpu::DROP_IN) && has(w, gpu::PREFLIGHT_SCRIPT));
    assert!(!has(w, gpu::RUNTIME_SCRIPT) && !has(w, gpu::UNATTENDED_BLACKLIST));
    assert!(!w.units.iter().any(|u| u == gpu::GPU_UNIT));
}

/// Compare with the golden file (`K8SFORGE_UPDATE_GOLDEN=1` rewrites it after a reviewed change).
fn golden(name: &str, actual: &str) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden/gpu")
        .join(name);
    if std::env::var_os("K8SFORGE_UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, actual).unwrap();
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: {e} (K8SFORGE_UPDATE_GOLDEN=1 writes it)",
            path.display()
        )
    });
    assert_eq!(
        actual,
        want,
        "{} differs from the rendered file",
        path.display()
    );
}

/// The drop-in for each containerd config format, against golden files. The nvidia runtime
/// stanza is what NVIDIA's toolkit writes (`nvidia-ctk runtime configure --runtime=containerd
/// --cdi.enabled --drop-in-config=/etc/containerd/conf.d/99-nvidia.toml`): see the sources cited
/// in src/render/gpu.rs (NVIDIA/nvidia-container-toolkit pkg/config/engine/containerd
/// config_v2_test.go and cmd/nvidia-ctk/runtime/configure/configure_test.go).
#[test]
fn containerd_drop_in_matches_the_golden_files() {
    for (version, file) in [
        ("v1.28.7", "99-nvidia.containerd-1.7.toml"),
        ("v1.34.2", "99-nvidia.containerd-2.1.toml"),
        ("v1.36.0", "99-nvidia.containerd-2.3.toml"),
    ] {
        let (_d, b) = bundle("gpu-dev", &[&format!("kubernetes.version={version}")]);
        let d = text(&b.nodes["gpu-1"], gpu::DROP_IN);
        golden(file, &d);
        // The toolkit's documented keys, whatever the format.
        for line in [
            "default_runtime_name = \"nvidia\"",
            "enable_cdi = true",
            "runtime_type = \"io.containerd.runc.v2\"",
            "privileged_without_host_devices = false",
            "BinaryName = \"/usr/bin/nvidia-container-runtime\"",
        ] {
            assert!(d.contains(line), "{version}: {line}\n{d}");
        }
        let nvidia_opts = d
            .split("containerd.runtimes.nvidia.options]")
            .nth(1)
            .unwrap_or_else(|| panic!("{version}: no nvidia options table\n{d}"));
        assert!(nvidia_opts.contains("SystemdCgroup = true"), "{d}");
        // The complete CRI section travels with it (containerd 1.x replaces a whole plugin
        // section with an imported one): runc and the pinned sandbox image are still there.
        assert!(d.contains("containerd.runtimes.runc.options]"), "{d}");
        assert!(d.contains("pause"), "{d}");
        assert!(!d.contains("imports"), "a drop-in imports nothing: {d}");
    }
}

#[test]
fn driver_fabric_manager_and_toolkit_are_pinned_and_held() {
    let (_d, b) = bundle("gpu-dev", &[]);
    let g = &b.nodes["gpu-1"];
    let s = text(g, gpu::RUNTIME_SCRIPT);
    for needle in [
        "BRANCH=\"580\"",
        "DRIVER_SOURCE=\"osPackages\"",
        "FABRIC_MANAGER=\"auto\"",
        &format!("TOOLKIT_VERSION=\"{}\"", gpu::TOOLKIT_VERSION),
        // Ubuntu's precompiled, signed open modules for the running kernel.
        "modules_pkg=\"linux-modules-nvidia-${BRANCH}-server-open-${kernel}\"",
        "nvidia-utils-${BRANCH}-server",
        // Fabric Manager of exactly the driver's version.
        "\"nvidia-fabricmanager-${BRANCH}=${fm_version}\"",
        "error 802",
        // The toolkit at its pinned apt version.
        "printf '%s=%s-1 ' \"$p\" \"$TOOLKIT_VERSION\"",
        "apt-mark hold $held",
        "driver/library version mismatch",
        "nvidia-ctk cdi generate --output=\"$CDI_SPEC.tmp\"",
    ] {
        assert!(s.contains(needle), "runtime.sh lacks {needle}");
    }
    let u = text(g, gpu::UNATTENDED_BLACKLIST);
    assert!(u.contains("Unattended-Upgrade::Package-Blacklist {"), "{u}");
    for p in [
        "\"nvidia-\";",
        "\"libnvidia-\";",
        "\"linux-modules-nvidia-\";",
    ] {
        assert!(u.contains(p), "{u}");
    }
    let l = text(g, gpu::TOOLKIT_SOURCES);
    assert!(
        l.contains(&format!(
            "deb [signed-by=/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg] {}",
            gpu::TOOLKIT_APT_REPOSITORY
        )),
        "{l}"
    );
    // Both scripts are valid bash.
    for path in [gpu::RUNTIME_SCRIPT, gpu::PREFLIGHT_SCRIPT] {
        let out = Command::new("bash")
            .args(["-n", "-c", &text(g, path)])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{path}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // An image that carries the driver: verified, not installed.
    let (_d, b) = bundle(
        "gpu-dev",
        &["gpu.driver.source=preinstalled", "gpu.driver.branch=570"],
    );
    let s = text(&b.nodes["gpu-1"], gpu::RUNTIME_SCRIPT);
    assert!(s.contains("DRIVER_SOURCE=\"preinstalled\"") && s.contains("BRANCH=\"570\""));
}

#[test]
fn gpu_settings_are_validated_with_field_and_allowed_values() {
    let err = |sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        match profile::load("gpu-dev", &sets) {
            Ok(_) => panic!("{sets:?} was accepted"),
            Err(e) => e.to_string(),
        }
    };
    let e = err(&["gpu.driver.branch=58x"]);
    assert!(e.contains("gpu.driver.branch") && e.contains("580"), "{e}");
    let e = err(&["gpu.driver.source=runfile"]);
    assert!(
        e.contains("gpu.driver.source") && e.contains("preinstalled"),
        "{e}"
    );
    let e = err(&["gpu.fabricManager=sometimes"]);
    assert!(e.contains("gpu.fabricManager"), "{e}");
    let e = err(&["gpu.containerToolkit.version=latest"]);
    assert!(e.contains("gpu.containerToolkit.version"), "{e}");
    let e = err(&["workers[1].aws.capacityReservation.id=reservation-1"]);
    assert!(
        e.contains("workers[1].aws.capacityReservation.id") && e.contains("cr-0123456789abcdef0"),
        "{e}"
    );
    let ok = profile::load(
        "gpu-dev",
        &["workers[1].aws.capacityReservation.id=cr-0123456789abcdef0".to_string()],
    );
    assert!(ok.is_ok(), "{:?}", ok.err().map(|e| e.to_string()));
}

/// Stand-ins for nvidia-smi, lspci and systemctl answering in their documented formats
/// (`--query-gpu=... --format=csv,noheader`, `lspci -n`, `nvidia-smi -q`'s Fabric block): the
/// preflight's parsing and decisions, not the hardware.
fn run_preflight(
    script: &str,
    gpus: u32,
    persistence_off: Option<u32>,
    nvswitch: bool,
    fabric: &str,
) -> (i32, String) {
    let dir = tempfile::tempdir().unwrap();
    let write = |name: &str, body: String| {
        let p = dir.path().join(name);
        std::fs::write(&p, body).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    };
    let mut csv_idx = String::new();
    let mut csv_pm = String::new();
    let mut q = String::new();
    for i in 0..gpus {
        csv_idx.push_str(&format!("{i}\n"));
        let pm = if persistence_off == Some(i) {
            "Disabled"
        } else {
            "Enabled"
        };
        csv_pm.push_str(&format!("{i}, {pm}\n"));
        q.push_str(&format!("GPU 00000000:{i:02X}:00.0\n    Fabric\n        State                             : {fabric}\n        Status                            : Success\n"));
    }
    write(
        "nvidia-smi",
        format!(
            "#!/bin/sh\ncase \"$*\" in\n  *persistence_mode*) printf '{csv_pm}' ;;\n  *--query-gpu=index*) printf '{csv_idx}' ;;\n  -q) cat <<'Q'\n{q}Q\n ;;\nesac\n"
        ),
    );
    let lspci = if nvswitch {
        "0000:07:00.0 0680: 10de:22a3 (rev a1)\n0000:18:00.0 0302: 10de:2330 (rev a1)"
    } else {
        "0000:18:00.0 0302: 10de:2330 (rev a1)"
    };
    write("lspci", format!("#!/bin/sh\necho '{lspci}'\n"));
    write("systemctl", "#!/bin/sh\nexit 0\n".into());
    let path = format!(
        "{}:{}",
        dir.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    let out = Command::new("bash")
        .args(["-c", script])
        .env("PATH", path)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn preflight_checks_count_persistence_fabric_and_network_devices() {
    let (_d, b) = bundle(
        "gpu-dev",
        &[
            "workers[1].aws.instanceType=p5.48xlarge",
            "workers[1].aws.efa=true",
        ],
    );
    let s = text(&b.nodes["gpu-1"], gpu::PREFLIGHT_SCRIPT);
    assert!(s.contains("EXPECTED_GPUS=8"), "{s}");
    // A p5 launched with its EFA interfaces has 32 EFA devices; this machine has none, which
    // the check names.
    assert!(s.contains("EXPECTED_EFA=32"), "{s}");
    let (rc, out) = run_preflight(&s, 8, None, true, "Completed");
    assert_eq!(rc, 1, "{out}");
    assert_eq!(
        out.trim(),
        "EFA devices: 0 present, 32 expected for this instance type"
    );
    // The same type launched without EFA interfaces (efa: false), or a p4d (k8sforge launches
    // it without EFA): no EFA device is expected.
    for sets in [&["workers[1].aws.instanceType=p5.48xlarge"][..], &[][..]] {
        let (_d, b) = bundle("gpu-dev", sets);
        let s = text(&b.nodes["gpu-1"], gpu::PREFLIGHT_SCRIPT);
        assert!(s.contains("EXPECTED_EFA=0"), "{sets:?}: {s}");
        assert_eq!(
            run_preflight(&s, 8, None, true, "Completed"),
            (0, String::new())
        );
    }

    // Without fast-network expectations (a type k8sforge has no documented layout for).
    let (_d, b) = bundle("gpu-dev", &["workers[1].aws.instanceType=g6.48xlarge"]);
    let s = text(&b.nodes["gpu-1"], gpu::PREFLIGHT_SCRIPT);
    assert!(
        s.contains("EXPECTED_EFA=0") && s.contains("EXPECTED_GVNIC=0"),
        "{s}"
    );
    assert_eq!(
        run_preflight(&s, 8, None, true, "Completed"),
        (0, String::new())
    );
    let (rc, out) = run_preflight(&s, 7, Some(3), true, "In Progress");
    assert_eq!(rc, 1);
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(
        lines,
        [
            "GPU count: nvidia-smi sees 7 GPUs, the profile expects 8",
            "persistence mode is off on GPU(s) 3",
            "NVLink fabric not complete on 7 GPU(s) (In Progress x7)",
        ],
        "{out}"
    );
    // No NVSwitch (PCIe GPUs): the fabric is not checked.
    assert_eq!(run_preflight(&s, 8, None, false, "In Progress").0, 0);

    // The documented fast-network layouts of the training machine types.
    let (_d, b) = bundle(
        "gpu-dev",
        &[
            "provider.kind=gcp",
            "workers[1].gcp.machineType=a3-highgpu-8g",
        ],
    );
    assert!(text(&b.nodes["gpu-1"], gpu::PREFLIGHT_SCRIPT).contains("EXPECTED_GVNIC=5"));
}

/// p5 nodes launched with EFA interfaces get the EFA installer's host part in their GPU runtime
/// step: pinned version, fetched through the artifact source (an HTTP mirror when the profile
/// names one), its SHA-256 checked before it runs, the packages held; and the node label the
/// EFA device plugin selects on. Only a real p5 shows that the installer builds the efa module
/// for the node's kernel and that 32 EFA devices appear.
#[test]
fn efa_nodes_get_the_pinned_efa_host_software_and_label() {
    use k8sforge::profile::efa_layout::{
        efa_installer_url, EFA_INSTALLER_SHA256, EFA_INSTALLER_VERSION, EFA_LABEL_KEY,
    };
    let efa = [
        "workers[1].aws.instanceType=p5.48xlarge",
        "workers[1].aws.efa=true",
    ];
    let (_d, b) = bundle("gpu-dev", &efa);
    let g = &b.nodes["gpu-1"];
    let s = text(g, gpu::RUNTIME_SCRIPT);
    let upstream = efa_installer_url(EFA_INSTALLER_VERSION);
    for needle in [
        format!("EFA_VERSION=\"{EFA_INSTALLER_VERSION}\""),
        format!("EFA_URL=\"{upstream}\""),
        format!("EFA_SHA256=\"{EFA_INSTALLER_SHA256}\""),
        "./efa_installer.sh -y --minimal".to_string(),
        "[ \"$got\" = \"$EFA_SHA256\" ] || fail".to_string(),
        "modprobe efa".to_string(),
        "${efa_pkgs:-}".to_string(),
    ] {
        assert!(s.contains(&needle), "runtime.sh lacks {needle}");
    }
    // The checksum is verified before the installer runs.
    assert!(s.find("$EFA_SHA256\" ] || fail").unwrap() < s.find("./efa_installer.sh").unwrap());
    let out = Command::new("bash")
        .args(["-n", "-c", &s])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let kubelet = text(g, "/etc/systemd/system/kubelet.service");
    assert!(
        kubelet.contains(&format!("{EFA_LABEL_KEY}=true")),
        "{kubelet}"
    );
    // CPU nodes and GPU nodes without EFA: neither the installer nor the label.
    for n in ["cpu-1", "controlplane-1"] {
        let nb = &b.nodes[n];
        assert!(!text(nb, "/etc/systemd/system/kubelet.service").contains(EFA_LABEL_KEY));
    }
    let (_d, b) = bundle("gpu-dev", &efa[..1]);
    let g = &b.nodes["gpu-1"];
    assert!(!text(g, gpu::RUNTIME_SCRIPT).contains("efa_installer.sh"));
    assert!(!text(g, "/etc/systemd/system/kubelet.service").contains(EFA_LABEL_KEY));

    // Through an HTTP artifact mirror: `<mirror>/<host>/<upstream path>`.
    let mut sets = efa.to_vec();
    sets.push("artifacts.mirror=http://198.18.0.1:8080/mirror");
    let (_d, b) = bundle("gpu-dev", &sets);
    let s = text(&b.nodes["gpu-1"], gpu::RUNTIME_SCRIPT);
    assert!(
        s.contains("EFA_URL=\"http://198.18.0.1:8080/mirror/efa-installer.amazonaws.com/aws-efa-installer-1.41.0.tar.gz\""),
        "{s}"
    );
}
