//! The template environment: every config and unit template, embedded in the binary and compiled
//! once per process.

use std::sync::OnceLock;

use minijinja::syntax::SyntaxConfig;
use minijinja::{Environment, UndefinedBehavior, Value};

/// (name, source) of every template. Names are the file names under `templates/` and `units/`.
const TEMPLATES: &[(&str, &str)] = &[
    (
        "kubelet-config.yaml",
        include_str!("../../templates/kubelet-config.yaml.j2"),
    ),
    (
        "kube-proxy-config.yaml",
        include_str!("../../templates/kube-proxy-config.yaml.j2"),
    ),
    (
        "kube-scheduler.yaml",
        include_str!("../../templates/kube-scheduler.yaml.j2"),
    ),
    (
        "audit-policy.yaml",
        include_str!("../../templates/audit-policy.yaml.j2"),
    ),
    (
        "containerd-config.toml",
        include_str!("../../templates/containerd-config.toml.j2"),
    ),
    (
        "10-bridge.conf",
        include_str!("../../templates/10-bridge.conf.j2"),
    ),
    (
        "99-loopback.conf",
        include_str!("../../templates/99-loopback.conf.j2"),
    ),
    (
        "node-prep.sh",
        include_str!("../../templates/node-prep.sh.j2"),
    ),
    (
        "sysctl.conf",
        include_str!("../../templates/sysctl.conf.j2"),
    ),
    (
        "modules-load.conf",
        include_str!("../../templates/modules-load.conf.j2"),
    ),
    (
        "systemd-manager.conf",
        include_str!("../../templates/systemd-manager.conf.j2"),
    ),
    (
        "import-images.sh",
        include_str!("../../templates/import-images.sh.j2"),
    ),
    (
        "k8sforge-images.service",
        include_str!("../../units/k8sforge-images.service.j2"),
    ),
    ("etcd.service", include_str!("../../units/etcd.service.j2")),
    (
        "kube-apiserver.service",
        include_str!("../../units/kube-apiserver.service.j2"),
    ),
    (
        "kube-controller-manager.service",
        include_str!("../../units/kube-controller-manager.service.j2"),
    ),
    (
        "kube-scheduler.service",
        include_str!("../../units/kube-scheduler.service.j2"),
    ),
    (
        "containerd.service",
        include_str!("../../units/containerd.service.j2"),
    ),
    (
        "kubelet.service",
        include_str!("../../units/kubelet.service.j2"),
    ),
    (
        "kube-proxy.service",
        include_str!("../../units/kube-proxy.service.j2"),
    ),
    (
        "k8sforge-node-prep.service",
        include_str!("../../units/k8sforge-node-prep.service.j2"),
    ),
    (
        "gpu/runtime.sh",
        include_str!("../../templates/gpu/runtime.sh.j2"),
    ),
    (
        "gpu/preflight.sh",
        include_str!("../../templates/gpu/preflight.sh.j2"),
    ),
    (
        "gpu/unattended-upgrades.conf",
        include_str!("../../templates/gpu/unattended-upgrades.conf.j2"),
    ),
    (
        "gpu/toolkit.list",
        include_str!("../../templates/gpu/toolkit.list.j2"),
    ),
    (
        "k8sforge-gpu-runtime.service",
        include_str!("../../units/k8sforge-gpu-runtime.service.j2"),
    ),
    (
        "addons/rbac-apiserver-kubelet.yaml",
        include_str!("../../templates/addons/rbac-apiserver-kubelet.yaml.j2"),
    ),
    (
        "addons/coredns.yaml",
        include_str!("../../templates/addons/coredns.yaml.j2"),
    ),
    (
        "addons/nvidia-device-plugin.yaml",
        include_str!("../../templates/addons/nvidia-device-plugin.yaml.j2"),
    ),
    (
        "addons/fast-network.yaml",
        include_str!("../../templates/addons/fast-network.yaml.j2"),
    ),
];

/// `value|json`: the value as a JSON literal, which is also a valid YAML and TOML basic string,
/// so every string that reaches a config is quoted and escaped the same way.
fn json_filter(value: Value) -> Result<String, minijinja::Error> {
    serde_json::to_string(&value).map_err(|e| {
        minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, "not serializable")
            .with_source(e)
    })
}

fn build() -> Result<Environment<'static>, minijinja::Error> {
    let mut env = Environment::new();
    // Configs are YAML/TOML/JSON/INI, never HTML: no auto-escaping, quoting is explicit (`|json`).
    env.set_auto_escape_callback(|_| minijinja::AutoEscape::None);
    // A misspelt variable is a bug in k8sforge, not an empty string on a node.
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_syntax(
        SyntaxConfig::builder()
            .trim_blocks(true)
            .lstrip_blocks(true)
            .keep_trailing_newline(true)
            .build()?,
    );
    env.add_filter("json", json_filter);
    for (name, source) in TEMPLATES {
        env.add_template(name, source)?;
    }
    Ok(env)
}

static ENV: OnceLock<Result<Environment<'static>, String>> = OnceLock::new();

/// The compiled environment. A template that fails to compile is a build defect; the error is
/// returned (not panicked) so `plan` reports it.
pub fn env() -> Result<&'static Environment<'static>, String> {
    ENV.get_or_init(|| build().map_err(|e| format!("{e:#}")))
        .as_ref()
        .map_err(Clone::clone)
}

/// Every template name, for tests and checks.
pub fn names() -> impl Iterator<Item = &'static str> {
    TEMPLATES.iter().map(|(n, _)| *n)
}
