//! Render tests: every unit passes a real `systemd-analyze verify`, every config parses and carries
//! the security settings, per-node values land on the right node, and re-rendering is
//! byte-identical.
//!
//! PKI input is placeholder files at the `pki::layout` paths (see tests/support/mod.rs): the PKI
//! phase lands on another branch; render copies PKI files verbatim, so placeholders exercise the
//! same path. Needs `systemd-analyze` (Debian package `systemd`) and /usr/lib/systemd/system.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use k8sforge::inventory::{self, Inventory, Role};
use k8sforge::pki::layout;
use k8sforge::profile::{self, Profile};
use k8sforge::render::{self, Bundle, NodeBundle};

struct Fixture {
    profile: Profile,
    inventory: Inventory,
    dir: tempfile::TempDir,
    bundle: Bundle,
}

impl Fixture {
    fn cluster_dir(&self) -> &Path {
        self.dir.path()
    }
}

fn fixture(name: &str, sets: &[&str]) -> Fixture {
    let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
    let profile = profile::load(name, &sets)
        .unwrap_or_else(|e| panic!("profile {name}: {e}"))
        .profile;
    let inventory = inventory::planned(&profile, &BTreeMap::new()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    support::write_placeholder_pki(dir.path(), &inventory);
    let bundle = render::render(&profile, &inventory, dir.path()).unwrap();
    Fixture {
        profile,
        inventory,
        dir,
        bundle,
    }
}

fn node<'a>(b: &'a Bundle, name: &str) -> &'a NodeBundle {
    b.nodes
        .get(name)
        .unwrap_or_else(|| panic!("no node {name} in bundle"))
}

fn file<'a>(nb: &'a NodeBundle, path: &str) -> &'a render::BundleFile {
    nb.files
        .iter()
        .find(|f| f.path == path)
        .unwrap_or_else(|| panic!("no file {path}"))
}

fn text(nb: &NodeBundle, path: &str) -> String {
    String::from_utf8(file(nb, path).content.clone()).unwrap()
}

fn has(nb: &NodeBundle, path: &str) -> bool {
    nb.files.iter().any(|f| f.path == path)
}

fn yaml(nb: &NodeBundle, path: &str) -> serde_yaml_ng::Value {
    serde_yaml_ng::from_str(&text(nb, path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// `--flag=value` pairs of a unit's ExecStart (continuation lines joined).
fn flags(unit: &str) -> BTreeMap<String, String> {
    let joined = unit.replace("\\\n", " ");
    let exec = joined
        .lines()
        .find(|l| l.starts_with("ExecStart="))
        .expect("ExecStart");
    exec.split_whitespace()
        .filter_map(|w| w.strip_prefix("--"))
        .map(|w| match w.split_once('=') {
            Some((k, v)) => (k.to_string(), v.to_string()),
            None => (w.to_string(), String::new()),
        })
        .collect()
}

fn unit_text(nb: &NodeBundle, unit: &str) -> String {
    text(nb, &format!("/etc/systemd/system/{unit}"))
}

// ---------- systemd-analyze verify ----------

fn systemd_analyze() -> &'static str {
    let ok = Command::new("systemd-analyze")
        .arg("--version")
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false);
    assert!(
        ok,
        "systemd-analyze is required for the unit tests: apt-get install -y systemd"
    );
    assert!(
        Path::new("/usr/lib/systemd/system/multi-user.target").exists(),
        "/usr/lib/systemd/system is required (apt-get install -y systemd)"
    );
    "systemd-analyze"
}

/// A root holding systemd's own units (targets the rendered units order against), every file of
/// the node's bundle, and an executable stub at every binary path the manifest lists.
fn node_root(nb: &NodeBundle) -> tempfile::TempDir {
    let root = tempfile::tempdir().unwrap();
    let lib = root.path().join("usr/lib/systemd");
    std::fs::create_dir_all(&lib).unwrap();
    let st = Command::new("cp")
        .args(["-a", "/usr/lib/systemd/system"])
        .arg(&lib)
        .status()
        .unwrap();
    assert!(st.success());
    for f in &nb.files {
        let p = root.path().join(f.path.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, &f.content).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(f.mode)).unwrap();
    }
    // The node's own OS provides /bin/sh (the pod-routes unit runs its script with it) and
    // /bin/mkdir (the local-volumes unit).
    let system = ["/bin/sh".to_string(), "/bin/mkdir".to_string()];
    for p in nb.binaries.iter().map(|b| &b.path).chain(system.iter()) {
        let p = root.path().join(p.trim_start_matches('/'));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, "#!/bin/sh\nexit 0\n").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    root
}

/// Run `systemd-analyze verify --root` on `units`; Err(output) unless it exits 0 with no
/// diagnostics at all (unknown keys are only warnings with exit 0, and count as failures here).
fn verify(root: &Path, units: &[String]) -> Result<(), String> {
    let out = Command::new(systemd_analyze())
        .arg("verify")
        .arg(format!("--root={}", root.display()))
        .args(units)
        .env("SYSTEMD_LOG_COLOR", "0")
        .output()
        .unwrap();
    let diag = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    if out.status.success() && diag.trim().is_empty() {
        Ok(())
    } else {
        Err(format!("exit {:?}: {diag}", out.status.code()))
    }
}

fn unit_files(nb: &NodeBundle) -> Vec<String> {
    nb.files
        .iter()
        .filter_map(|f| f.path.strip_prefix("/etc/systemd/system/"))
        .filter(|p| p.ends_with(".service") && !p.contains('/'))
        .map(str::to_string)
        .collect()
}

#[test]
fn every_rendered_unit_passes_systemd_analyze_verify() {
    // local (nspawn workarounds), cloud (sysctl/modules path) and the older pinned version.
    let cases = [
        fixture("local-ha", &[]),
        fixture("gpu-dev", &[]),
        fixture("local-3", &["kubernetes.version=v1.28.7"]),
    ];
    let mut checked = 0;
    for fx in &cases {
        for (name, nb) in &fx.bundle.nodes {
            let units = unit_files(nb);
            assert_eq!(
                units.iter().collect::<BTreeSet<_>>(),
                nb.units.iter().collect::<BTreeSet<_>>(),
                "{name}: every unit file is started and every started unit has a file"
            );
            let root = node_root(nb);
            if let Err(e) = verify(root.path(), &units) {
                panic!(
                    "{} {name}: systemd-analyze verify failed: {e}",
                    fx.profile.name
                );
            }
            checked += units.len();
        }
    }
    assert!(checked >= 30, "verified {checked} units");
}

#[test]
fn systemd_analyze_verify_catches_broken_units() {
    let fx = fixture("local-3", &[]);
    let nb = node(&fx.bundle, "worker-1");
    let units = unit_files(nb);
    let kubelet = "/etc/systemd/system/kubelet.service";
    let original = text(nb, kubelet);
    // Baseline: the untouched node verifies, so the failures below come from the breakage.
    let root = node_root(nb);
    verify(root.path(), &units).unwrap();

    let broken: [(&str, String); 4] = [
        (
            "unknown key",
            original.replace("Restart=always", "Restart=always\nRestartSecs=5"),
        ),
        (
            "relative ExecStart",
            original.replace("ExecStart=/usr/local/bin/kubelet", "ExecStart=kubelet-bin"),
        ),
        (
            "missing dependency",
            original.replace(
                "Requires=containerd.service",
                "Requires=containerd.service no-such.service",
            ),
        ),
        (
            "binary not installed",
            original.replace("/usr/local/bin/kubelet", "/usr/local/bin/kubelet-missing"),
        ),
    ];
    for (what, content) in broken {
        assert_ne!(content, original, "{what}: mutation applied");
        std::fs::write(root.path().join(kubelet.trim_start_matches('/')), content).unwrap();
        assert!(
            verify(root.path(), &units).is_err(),
            "{what}: verify must reject it"
        );
    }
}

// ---------- configs and security settings ----------

#[test]
fn kubelet_config_is_locked_down() {
    let fx = fixture("local-ha", &[]);
    for (name, nb) in &fx.bundle.nodes {
        let k = yaml(nb, "/etc/kubernetes/kubelet-config.yaml");
        assert_eq!(k["kind"], "KubeletConfiguration");
        assert_eq!(k["authentication"]["anonymous"]["enabled"], false, "{name}");
        assert_eq!(k["authentication"]["webhook"]["enabled"], true);
        assert_eq!(
            k["authentication"]["x509"]["clientCAFile"],
            "/etc/kubernetes/pki/ca.crt"
        );
        assert!(has(nb, "/etc/kubernetes/pki/ca.crt"));
        assert_eq!(k["authorization"]["mode"], "Webhook");
        assert_eq!(k["readOnlyPort"], 0);
        assert_eq!(k["cgroupDriver"], "systemd");
        assert_eq!(
            k["containerRuntimeEndpoint"],
            "unix:///run/containerd/containerd.sock"
        );
        assert_eq!(k["clusterDNS"][0], "10.32.0.10");
        assert_eq!(k["clusterDomain"], "cluster.local");
        assert_eq!(k["tlsCertFile"], "/etc/kubernetes/pki/kubelet.crt");
        assert_eq!(k["tlsPrivateKeyFile"], "/etc/kubernetes/pki/kubelet.key");
        assert_eq!(k["registerNode"], true);
        assert_eq!(k["failCgroupV1"], false);
        assert_eq!(k["protectKernelDefaults"], false, "local nodes: node-prep");
        let n = fx.inventory.node(name).unwrap();
        assert_eq!(k["podCIDR"], n.pod_cidr.to_string().as_str());
        // The node's own kubelet cert and kubeconfig, not another node's.
        let pki = layout::pki_dir(fx.cluster_dir());
        let own = support::marker(&layout::cert_path(&pki, &layout::kubelet(name)));
        assert!(text(nb, "/etc/kubernetes/pki/kubelet.crt").contains(&own));
        let own_kc = support::marker(&layout::kubeconfig_path(
            fx.cluster_dir(),
            &layout::kubelet(name),
        ));
        assert!(text(nb, "/etc/kubernetes/kubelet.kubeconfig").contains(&own_kc));
        let unit = flags(&unit_text(nb, "kubelet.service"));
        assert_eq!(unit["config"], "/etc/kubernetes/kubelet-config.yaml");
        assert_eq!(unit["hostname-override"], *name);
        assert_eq!(unit["node-ip"], n.internal_ip.to_string());
    }
}

#[test]
fn apiserver_flags_carry_the_security_settings() {
    let fx = fixture("local-ha", &[]);
    let cps: Vec<_> = fx.inventory.with_role(Role::ControlPlane).collect();
    assert_eq!(cps.len(), 3);
    for cp in cps {
        let nb = node(&fx.bundle, &cp.name);
        let f = flags(&unit_text(nb, "kube-apiserver.service"));
        assert_eq!(f["authorization-mode"], "Node,RBAC");
        assert!(f["enable-admission-plugins"]
            .split(',')
            .any(|p| p == "NodeRestriction"));
        assert_eq!(f["advertise-address"], cp.internal_ip.to_string());
        assert_eq!(f["secure-port"], "6443");
        assert_eq!(f["service-cluster-ip-range"], "10.32.0.0/24");
        assert_eq!(f["profiling"], "false");
        assert!(f["etcd-servers"].starts_with("https://"));
        assert_eq!(f["etcd-servers"].split(',').count(), 3);
        // Every file a flag names is delivered to the node, and keys are private.
        for flag in [
            "client-ca-file",
            "tls-cert-file",
            "tls-private-key-file",
            "etcd-cafile",
            "etcd-certfile",
            "etcd-keyfile",
            "encryption-provider-config",
            "audit-policy-file",
            "service-account-key-file",
            "service-account-signing-key-file",
            "kubelet-certificate-authority",
            "kubelet-client-certificate",
            "kubelet-client-key",
            "requestheader-client-ca-file",
            "proxy-client-cert-file",
            "proxy-client-key-file",
        ] {
            let path = &f[flag];
            assert!(has(nb, path), "{}: --{flag}={path} not delivered", cp.name);
            if path.ends_with(".key") || flag == "encryption-provider-config" {
                assert_eq!(file(nb, path).mode, 0o600, "{path}");
            }
        }
        assert_eq!(f["audit-log-path"], "/var/log/kubernetes/audit.log");
        let enc = text(nb, &f["encryption-provider-config"]);
        let pki_enc = layout::encryption_config_path(fx.cluster_dir());
        assert!(enc.contains(&support::marker(&pki_enc)));

        let policy = yaml(nb, &f["audit-policy-file"]);
        assert_eq!(policy["apiVersion"], "audit.k8s.io/v1");
        assert_eq!(policy["kind"], "Policy");
        let rules = policy["rules"].as_sequence().unwrap();
        // Secrets, configmaps and token reviews are logged without bodies (Metadata) and the
        // catch-all is Metadata; health endpoints are not logged.
        let secret_rule = rules
            .iter()
            .find(|r| {
                serde_yaml_ng::to_string(&r["resources"])
                    .unwrap()
                    .contains("secrets")
            })
            .unwrap();
        assert_eq!(secret_rule["level"], "Metadata");
        let s = serde_yaml_ng::to_string(secret_rule).unwrap();
        assert!(s.contains("configmaps") && s.contains("tokenreviews"));
        assert_eq!(rules.last().unwrap()["level"], "Metadata");
        assert_eq!(rules[0]["level"], "None");
        assert!(serde_yaml_ng::to_string(&rules[0])
            .unwrap()
            .contains("/healthz"));

        let cm = flags(&unit_text(nb, "kube-controller-manager.service"));
        assert_eq!(cm["allocate-node-cidrs"], "false");
        assert_eq!(cm["cluster-cidr"], "10.200.0.0/16");
        assert_eq!(cm["use-service-account-credentials"], "true");
        assert_eq!(file(nb, &cm["cluster-signing-key-file"]).mode, 0o600);
        assert!(has(nb, &cm["kubeconfig"]));
        assert!(has(nb, &cm["root-ca-file"]));

        let sched = flags(&unit_text(nb, "kube-scheduler.service"));
        let sc = yaml(nb, &sched["config"]);
        assert_eq!(sc["kind"], "KubeSchedulerConfiguration");
        assert!(has(
            nb,
            sc["clientConnection"]["kubeconfig"].as_str().unwrap()
        ));
    }
}

#[test]
fn etcd_members_list_every_member_over_tls() {
    let fx = fixture("local-ha", &[]);
    let members: Vec<_> = fx.inventory.with_role(Role::Etcd).collect();
    assert_eq!(members.len(), 3);
    let expected = members
        .iter()
        .map(|m| format!("{}=https://{}:2380", m.name, m.internal_ip))
        .collect::<Vec<_>>()
        .join(",");
    for m in &members {
        let nb = node(&fx.bundle, &m.name);
        let f = flags(&unit_text(nb, "etcd.service"));
        assert_eq!(f["initial-cluster"], expected);
        assert_eq!(f["name"], m.name);
        assert_eq!(
            f["listen-client-urls"],
            format!("https://{}:2379,https://127.0.0.1:2379", m.internal_ip)
        );
        assert_eq!(f["client-cert-auth"], "true");
        assert_eq!(f["peer-client-cert-auth"], "true");
        for flag in [
            "trusted-ca-file",
            "cert-file",
            "key-file",
            "peer-trusted-ca-file",
            "peer-cert-file",
            "peer-key-file",
        ] {
            assert!(
                f[flag].starts_with("/etc/etcd/") && has(nb, &f[flag]),
                "{flag}"
            );
        }
        // The member's own server cert.
        let pki = layout::pki_dir(fx.cluster_dir());
        let own = support::marker(&layout::cert_path(&pki, &layout::etcd_server(&m.name)));
        assert!(text(nb, &f["cert-file"]).contains(&own));
        assert_eq!(file(nb, &f["key-file"]).mode, 0o600);
    }
    // Workers carry no etcd material.
    for w in fx.inventory.with_role(Role::Worker) {
        let nb = node(&fx.bundle, &w.name);
        assert!(!nb.files.iter().any(|f| f.path.starts_with("/etc/etcd/")));
        assert!(!has(nb, "/etc/kubernetes/pki/ca.key"));
    }
}

#[test]
fn cni_config_carries_each_nodes_pod_cidr() {
    let fx = fixture("local-ha", &[]);
    let mut seen = BTreeSet::new();
    for n in &fx.inventory.nodes {
        let nb = node(&fx.bundle, &n.name);
        let c: serde_json::Value =
            serde_json::from_str(&text(nb, "/etc/cni/net.d/10-bridge.conf")).unwrap();
        assert_eq!(c["type"], "bridge");
        assert_eq!(c["bridge"], "cni0");
        assert_eq!(c["isGateway"], true);
        assert_eq!(c["ipMasq"], true);
        assert_eq!(c["hairpinMode"], true);
        assert_eq!(c["ipam"]["type"], "host-local");
        let subnet = c["ipam"]["ranges"][0][0]["subnet"].as_str().unwrap();
        assert_eq!(subnet, n.pod_cidr.to_string());
        assert!(seen.insert(subnet.to_string()), "pod CIDRs are distinct");
        assert_eq!(c["ipam"]["routes"][0]["dst"], "0.0.0.0/0");
        let lo: serde_json::Value =
            serde_json::from_str(&text(nb, "/etc/cni/net.d/99-loopback.conf")).unwrap();
        assert_eq!(lo["type"], "loopback");
        let kp = yaml(nb, "/etc/kubernetes/kube-proxy-config.yaml");
        assert_eq!(kp["mode"], "iptables");
        assert_eq!(kp["clusterCIDR"], "10.200.0.0/16");
        assert_eq!(kp["hostnameOverride"], n.name.as_str());
        assert!(has(
            nb,
            kp["clientConnection"]["kubeconfig"].as_str().unwrap()
        ));
    }
}

fn taints(nb: &NodeBundle) -> Vec<(String, String)> {
    let k = yaml(nb, "/etc/kubernetes/kubelet-config.yaml");
    k["registerWithTaints"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["key"].as_str().unwrap().to_string(),
                t["effect"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn control_planes_are_tainted_and_gpu_nodes_keep_their_taints() {
    let fx = fixture("gpu-dev", &[]);
    let cp_taint = (
        "node-role.kubernetes.io/control-plane".to_string(),
        "NoSchedule".to_string(),
    );
    let gpu_taint = ("nvidia.com/gpu".to_string(), "NoSchedule".to_string());
    for n in &fx.inventory.nodes {
        let nb = node(&fx.bundle, &n.name);
        let t = taints(nb);
        let labels = flags(&unit_text(nb, "kubelet.service"))
            .get("node-labels")
            .cloned()
            .unwrap_or_default();
        assert!(labels.contains(&format!("k8sforge.io/node-group={}", n.group)));
        if n.has(Role::ControlPlane) {
            assert_eq!(t, vec![cp_taint.clone()], "{}", n.name);
        } else if n.group == "gpu" {
            // The profile's taint, and the one the GPU health gate lifts.
            let unverified = (
                "k8sforge.io/gpu-unverified".to_string(),
                "NoSchedule".to_string(),
            );
            assert_eq!(t, vec![unverified, gpu_taint.clone()], "{}", n.name);
            assert!(labels.contains("k8sforge.io/gpu=true"));
        } else {
            assert!(t.is_empty(), "{}", n.name);
        }
    }
}

#[test]
fn local_workarounds_only_on_local_nodes() {
    let local = fixture("local-3", &[]);
    let cloud = fixture("gpu-dev", &["network.podRouting=routeTable"]);
    let l = node(&local.bundle, "worker-1");
    let c = node(&cloud.bundle, "cpu-1");
    assert!(has(l, "/usr/local/lib/k8sforge/node-prep.sh"));
    assert_eq!(file(l, "/usr/local/lib/k8sforge/node-prep.sh").mode, 0o755);
    assert_eq!(l.units[0], "k8sforge-node-prep.service");
    assert!(text(l, "/etc/containerd/config.toml").contains("restrict_oom_score_adj = true"));
    let kp = yaml(l, "/etc/kubernetes/kube-proxy-config.yaml");
    assert_eq!(kp["conntrack"]["maxPerCore"], 0);

    assert!(!c.units.iter().any(|u| u.contains("node-prep")));
    // gpu-dev in routeTable mode routes pods through AWS route tables: nothing on the nodes.
    assert!(!c.units.iter().any(|u| u.contains("pod-routes")));
    // Host routes (local default): no MTU set on the CNI bridge, the default stays.
    assert!(!text(l, "/etc/cni/net.d/10-bridge.conf").contains("mtu"));
    let routes = text(l, "/usr/local/lib/k8sforge/pod-routes.sh");
    for other in local
        .inventory
        .nodes
        .iter()
        .filter(|n| n.name != "worker-1")
    {
        assert!(routes.contains(&format!(
            "ip route replace {} via {}",
            other.pod_cidr, other.internal_ip
        )));
    }
    assert!(!text(c, "/etc/containerd/config.toml").contains("restrict_oom_score_adj"));
    let kp = yaml(c, "/etc/kubernetes/kube-proxy-config.yaml");
    assert!(kp.get("conntrack").is_none());
    let k = yaml(c, "/etc/kubernetes/kubelet-config.yaml");
    assert_eq!(k["protectKernelDefaults"], true);
    assert_eq!(k["resolvConf"], "/run/systemd/resolve/resolv.conf");
    let sysctl = text(c, "/etc/sysctl.d/90-k8sforge.conf");
    assert!(sysctl.contains("kernel.panic = 10") && sysctl.contains("net.ipv4.ip_forward = 1"));
    assert!(c.commands.iter().any(|x| x.starts_with("sysctl --system")));
}

#[test]
fn versions_switch_flags_and_config_formats() {
    let new = fixture("local-3", &["kubernetes.version=v1.34.2"]);
    let old = fixture("local-3", &["kubernetes.version=v1.28.7"]);
    let n = node(&new.bundle, "worker-1");
    let o = node(&old.bundle, "worker-1");
    let ctd_new = text(n, "/etc/containerd/config.toml");
    let ctd_old = text(o, "/etc/containerd/config.toml");
    // containerd 2.1 (pinned with 1.34) reads version 3; 1.7 (with 1.28) version 2.
    assert!(ctd_new.contains("\nversion = 3\n"));
    assert!(ctd_new.contains("[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]\n  BinaryName = \"/usr/local/sbin/runc\"\n  SystemdCgroup = true"));
    assert!(ctd_new.contains("sandbox = \"registry.k8s.io/pause:3.10.1@sha256:278fb9dbcca9518083ad1e11276933a2e96f23de604a3a08cc3c80002767d24c\""));
    assert!(ctd_new.contains("bin_dirs = [\"/opt/cni/bin\"]"));
    assert!(ctd_old.contains("\nversion = 2\n"));
    assert!(ctd_old.contains("[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]\n  BinaryName = \"/usr/local/sbin/runc\"\n  SystemdCgroup = true"));
    assert!(ctd_old.contains("sandbox_image = \"registry.k8s.io/pause:3.9@sha256:7031c1b283388d2c2e09b57badb803c05ebed362dc88d84b480cc47f72a21097\""));
    assert!(ctd_old.contains("bin_dir = \"/opt/cni/bin\""));
    // failCgroupV1 exists from 1.31 only.
    let kn = yaml(n, "/etc/kubernetes/kubelet-config.yaml");
    let ko = yaml(o, "/etc/kubernetes/kubelet-config.yaml");
    assert_eq!(kn["failCgroupV1"], false);
    assert!(ko.get("failCgroupV1").is_none());
    // The default release (1.36, containerd 2.3): cgroup v2 required on real nodes, kept
    // allowed on the local (cgroup v1) test nodes only; containerd 2.3 still reads version 3.
    let current = fixture("local-3", &[]);
    let cloud = fixture("gpu-dev", &[]);
    let lc = node(&current.bundle, "worker-1");
    let k = yaml(lc, "/etc/kubernetes/kubelet-config.yaml");
    assert_eq!(k["failCgroupV1"], false);
    assert!(text(lc, "/etc/kubernetes/kubelet-config.yaml").contains("local test clusters only"));
    let ctd = text(lc, "/etc/containerd/config.toml");
    assert!(ctd.contains("\nversion = 3\n") && ctd.contains("bin_dirs = [\"/opt/cni/bin\"]"));
    assert!(ctd.contains("sandbox = \"registry.k8s.io/pause:3.10.2@sha256:f548e0e8e3dc1896ca956272154dde3314e8cc4fde0a57577ee9fa1c63f5baf4\""));
    for (name, nb) in &cloud.bundle.nodes {
        let k = yaml(nb, "/etc/kubernetes/kubelet-config.yaml");
        assert_eq!(
            k["failCgroupV1"], true,
            "{name}: a real node needs cgroup v2"
        );
        assert!(
            unit_text(nb, "kubelet.service").contains("(v1.36.0)"),
            "{name}"
        );
    }
    assert!(unit_text(o, "kubelet.service").contains("(v1.28.7)"));
    let kubelet_bin = o.binaries.iter().find(|b| b.name == "kubelet").unwrap();
    assert_eq!(kubelet_bin.version, "v1.28.7");
    assert_eq!(kubelet_bin.path, "/usr/local/bin/kubelet");
}

#[test]
fn units_start_in_dependency_order_after_daemon_reload() {
    let fx = fixture("local-3", &[]);
    let cp = node(&fx.bundle, "controlplane-1");
    assert_eq!(
        cp.units,
        [
            "k8sforge-node-prep.service",
            "k8sforge-pod-routes.service",
            "etcd.service",
            "kube-apiserver.service",
            "kube-controller-manager.service",
            "kube-scheduler.service",
            "containerd.service",
            "k8sforge-images.service",
            "kubelet.service",
            "kube-proxy.service"
        ]
    );
    assert_eq!(cp.commands[0], "systemctl daemon-reload");
    let starts: Vec<&str> = cp
        .commands
        .iter()
        .filter_map(|c| c.strip_prefix("systemctl enable --now "))
        .map(|c| c.trim_start_matches("--no-block "))
        .collect();
    assert_eq!(starts, cp.units);
    let w = node(&fx.bundle, "worker-1");
    assert_eq!(
        w.units,
        [
            "k8sforge-node-prep.service",
            "k8sforge-pod-routes.service",
            // The node-local API endpoint, before kubelet and kube-proxy dial it.
            "k8sforge-api-proxy.service",
            // The local PersistentVolume directories, before kubelet.
            "k8sforge-local-volumes.service",
            "containerd.service",
            "k8sforge-images.service",
            "kubelet.service",
            "kube-proxy.service"
        ]
    );
    let names: BTreeSet<&str> = w.binaries.iter().map(|b| b.name.as_str()).collect();
    for b in [
        "containerd",
        "runc",
        "kubelet",
        "kube-proxy",
        "bridge",
        "host-local",
        "loopback",
    ] {
        assert!(names.contains(b), "worker needs {b}");
    }
    assert!(!names.contains("etcd") && !names.contains("kube-apiserver"));
}

// ---------- determinism, modes, errors ----------

fn tree(dir: &Path) -> BTreeMap<PathBuf, (Vec<u8>, u32)> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let e = e.unwrap();
            let meta = e.metadata().unwrap();
            if meta.is_dir() {
                stack.push(e.path());
            } else {
                out.insert(
                    e.path().strip_prefix(dir).unwrap().to_path_buf(),
                    (
                        std::fs::read(e.path()).unwrap(),
                        meta.permissions().mode() & 0o7777,
                    ),
                );
            }
        }
    }
    out
}

#[test]
fn rerender_is_byte_identical_and_rewrites_nothing() {
    let fx = fixture("local-ha", &[]);
    let again = render::render(&fx.profile, &fx.inventory, fx.cluster_dir()).unwrap();
    assert_eq!(fx.bundle, again);
    let out = tempfile::tempdir().unwrap();
    let first = fx.bundle.write_to(out.path()).unwrap();
    assert_eq!(first.files, fx.bundle.file_count());
    assert_eq!(first.changed, first.files);
    let before = tree(out.path());
    let second = again.write_to(out.path()).unwrap();
    assert_eq!(second.changed, 0);
    assert_eq!(before, tree(out.path()));
    // A second, independent render into a fresh directory gives the same bytes.
    let out2 = tempfile::tempdir().unwrap();
    again.write_to(out2.path()).unwrap();
    assert_eq!(before, tree(out2.path()));
}

#[test]
fn secrets_are_0600_in_manifest_and_on_disk() {
    let fx = fixture("local-ha", &[]);
    let out = tempfile::tempdir().unwrap();
    fx.bundle.write_to(out.path()).unwrap();
    for (name, nb) in &fx.bundle.nodes {
        let manifest: serde_json::Value = serde_json::from_slice(
            &std::fs::read(out.path().join(name).join("manifest.json")).unwrap(),
        )
        .unwrap();
        let entries = manifest["files"].as_array().unwrap();
        assert_eq!(entries.len(), nb.files.len());
        for e in entries {
            let path = e["path"].as_str().unwrap();
            let secret = path.ends_with(".key")
                || path.ends_with(".kubeconfig")
                || path.ends_with("encryption-config.yaml");
            let want = if secret {
                "0600"
            } else if path.ends_with(".sh") {
                "0755"
            } else {
                "0644"
            };
            assert_eq!(e["mode"], want, "{name}:{path}");
            assert_eq!(e["owner"], "root:root");
            assert_eq!(e["sha256"].as_str().unwrap().len(), 64);
            let on_disk = out
                .path()
                .join(name)
                .join("files")
                .join(path.trim_start_matches('/'));
            let mode = std::fs::metadata(on_disk).unwrap().permissions().mode() & 0o777;
            if secret {
                assert_eq!(mode, 0o600, "{name}:{path} on disk");
            }
        }
        assert!(!manifest["binaries"].as_array().unwrap().is_empty());
        assert_eq!(manifest["units"].as_array().unwrap().len(), nb.units.len());
        // Restart rules: the kubelet restarts when its cert changes.
        let kubelet_crt = entries
            .iter()
            .find(|e| e["path"] == "/etc/kubernetes/pki/kubelet.crt")
            .unwrap();
        assert_eq!(kubelet_crt["restarts"][0], "kubelet.service");
    }
}

#[test]
fn missing_pki_file_is_named() {
    let fx = fixture("local-3", &[]);
    let pki = layout::pki_dir(fx.cluster_dir());
    let gone = layout::key_path(&pki, &layout::kubelet("worker-2"));
    std::fs::remove_file(&gone).unwrap();
    let err = render::render(&fx.profile, &fx.inventory, fx.cluster_dir()).unwrap_err();
    assert!(matches!(err, render::RenderError::MissingPki { .. }));
    assert!(
        err.to_string().contains(&gone.display().to_string()),
        "{err}"
    );
    let shared = layout::encryption_config_path(fx.cluster_dir());
    std::fs::remove_file(&shared).unwrap();
    let err = render::render(&fx.profile, &fx.inventory, fx.cluster_dir()).unwrap_err();
    assert!(err.to_string().contains(&shared.display().to_string()));
}

#[test]
fn kubelet_refused_labels_are_rejected_with_node_and_label() {
    let fx = fixture("local-3", &[]);
    let mut inv = fx.inventory.clone();
    inv.nodes[1]
        .labels
        .insert("node-role.kubernetes.io/worker".into(), "".into());
    let err = render::render(&fx.profile, &inv, fx.cluster_dir()).unwrap_err();
    let msg = err.to_string();
    assert!(msg.contains(&inv.nodes[1].name) && msg.contains("node-role.kubernetes.io/worker"));
}

#[test]
fn write_to_repairs_changed_files_and_modes_only() {
    let fx = fixture("local-3", &[]);
    let out = tempfile::tempdir().unwrap();
    fx.bundle.write_to(out.path()).unwrap();
    let before = tree(out.path());
    let files = out.path().join("worker-1/files");
    let tampered = files.join("etc/kubernetes/kubelet-config.yaml");
    std::fs::write(&tampered, "tampered\n").unwrap();
    let key = files.join("etc/kubernetes/pki/kubelet.key");
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let report = fx.bundle.write_to(out.path()).unwrap();
    assert_eq!(report.changed, 1, "only the tampered file is rewritten");
    assert_eq!(before, tree(out.path()), "content and modes restored");
    // No temp files left behind.
    assert!(!tree(out.path())
        .keys()
        .any(|p| p.to_string_lossy().contains(".tmp-")));
}

/// With the real PKI phase (`pki::ensure`), each node receives its own certificates and the
/// apiserver's request-header trust names the front-proxy client certificate's actual CN.
#[test]
fn renders_from_real_pki() {
    use x509_parser::prelude::{FromDer, X509Certificate};
    let p = profile::load("local-ha", &[]).unwrap().profile;
    let inv = inventory::planned(&p, &BTreeMap::new()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    k8sforge::pki::ensure(&p, &inv, dir.path()).unwrap();
    let bundle = render::render(&p, &inv, dir.path()).unwrap();
    let cn = |pem_text: &str| -> String {
        let der = pem_der(pem_text);
        let (_, cert) = X509Certificate::from_der(&der).unwrap();
        let cn = cert
            .subject()
            .iter_common_name()
            .next()
            .unwrap()
            .as_str()
            .unwrap()
            .to_string();
        cn
    };
    for n in &inv.nodes {
        let nb = node(&bundle, &n.name);
        assert_eq!(
            cn(&text(nb, "/etc/kubernetes/pki/kubelet.crt")),
            format!("system:node:{}", n.name)
        );
        if n.has(Role::Etcd) {
            let server = text(nb, "/etc/etcd/server.crt");
            let pki = layout::pki_dir(dir.path());
            let want =
                std::fs::read_to_string(layout::cert_path(&pki, &layout::etcd_server(&n.name)))
                    .unwrap();
            assert_eq!(server, want);
        }
        if n.has(Role::ControlPlane) {
            let f = flags(&unit_text(nb, "kube-apiserver.service"));
            assert_eq!(
                f["requestheader-allowed-names"],
                cn(&text(nb, &f["proxy-client-cert-file"]))
            );
        }
    }
}

/// DER bytes of the first PEM block.
fn pem_der(pem_text: &str) -> Vec<u8> {
    use base64::Engine;
    let b64: String = pem_text
        .lines()
        .skip_while(|l| !l.starts_with("-----BEGIN"))
        .skip(1)
        .take_while(|l| !l.starts_with("-----END"))
        .collect();
    base64::engine::general_purpose::STANDARD
        .decode(b64)
        .unwrap()
}

#[test]
fn vxlan_mode_renders_the_tunnel_unit_and_the_bridge_mtu() {
    // AWS default (gpu-dev) and local nodes by choice: the same unit, MTU per provider.
    for (f, node_name, mtu) in [
        (fixture("gpu-dev", &[]), "cpu-1", 8951),
        (
            fixture("local-3", &["network.podRouting=vxlan"]),
            "worker-1",
            1450,
        ),
    ] {
        let n = node(&f.bundle, node_name);
        assert!(n.units.iter().any(|u| u == "k8sforge-pod-routes.service"));
        let script = text(n, "/usr/local/lib/k8sforge/pod-routes.sh");
        let me = f
            .inventory
            .nodes
            .iter()
            .find(|x| x.name == node_name)
            .unwrap();
        assert!(
            script.contains(&format!(
                "mtu {mtu} type vxlan id 1 dstport 4789 local {} nolearning",
                me.internal_ip
            )),
            "{script}"
        );
        // One record per other node, none for itself, and no plain host route.
        for other in &f.inventory.nodes {
            let record = format!(
                "{} {} {}\n",
                other.pod_cidr,
                other.internal_ip,
                k8sforge::render::routes::vxlan_mac(other.internal_ip)
            );
            assert_eq!(
                script.contains(&record),
                other.name != node_name,
                "{record}"
            );
        }
        assert!(!script.contains("ip route replace"), "{script}");
        let bridge: serde_json::Value =
            serde_json::from_str(&text(n, "/etc/cni/net.d/10-bridge.conf")).unwrap();
        assert_eq!(bridge["mtu"], mtu, "{bridge}");
        assert_eq!(bridge["bridge"], "cni0");
    }
}

/// With monitoring on, the scheduler and controller manager serve on the node address and
/// kube-proxy's metrics listen on it (what `monitoring::scrape` targets); off, they stay on
/// loopback as before.
#[test]
fn monitoring_moves_metrics_endpoints_to_the_node_address() {
    for (enabled, sets) in [(false, vec![]), (true, vec!["monitoring.enabled=true"])] {
        let fx = fixture("local-3", &sets);
        let cp = fx
            .inventory
            .with_role(inventory::Role::ControlPlane)
            .next()
            .unwrap();
        let nb = node(&fx.bundle, &cp.name);
        let ip = cp.internal_ip.to_string();
        let want = if enabled { ip.as_str() } else { "127.0.0.1" };
        for unit in ["kube-scheduler.service", "kube-controller-manager.service"] {
            assert_eq!(flags(&unit_text(nb, unit))["bind-address"], want, "{unit}");
        }
        let kp = yaml(nb, "/etc/kubernetes/kube-proxy-config.yaml");
        if enabled {
            assert_eq!(kp["metricsBindAddress"], format!("{ip}:10249").as_str());
        } else {
            assert!(kp.get("metricsBindAddress").is_none());
        }
    }
}
