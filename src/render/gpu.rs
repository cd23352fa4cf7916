//! The runtime phase's step on GPU nodes (`gpusPerNode > 0`): the NVIDIA stack beneath the device
//! plugin. Files only — a node applies them through the runtime phase like any other:
//!
//! - `k8sforge-gpu-runtime.service` running `gpu/runtime.sh`: driver R580 (server branch, open
//!   kernel modules) from the OS vendor's precompiled signed modules for the running kernel, or
//!   verified when the image carries it; Fabric Manager of exactly the driver's version where
//!   NVSwitch is present; the container toolkit pinned; a CDI spec; every package held.
//! - an unattended-upgrades blacklist for the same packages;
//! - the containerd drop-in `/etc/containerd/conf.d/99-nvidia.toml` (nvidia runtime, CDI on,
//!   `SystemdCgroup = true`), which k8sforge's own config imports;
//! - `gpu/preflight.sh`, the health check the `addons` phase runs before it lifts the node's
//!   `k8sforge.io/gpu-unverified` taint.
//!
//! Facts used (checked against upstream, cited where they shape a file):
//! - Ubuntu's precompiled, signed modules are `linux-modules-nvidia-<branch>-server-open-<kernel>`
//!   (and a `-<flavour>` meta package), userspace `nvidia-utils-<branch>-server`; Fabric Manager
//!   `nvidia-fabricmanager-<branch>` (packages.ubuntu.com, source packages
//!   linux-restricted-modules and nvidia-graphics-drivers-580-server).
//! - The nvidia runtime stanza is what `nvidia-ctk runtime configure --runtime=containerd
//!   --cdi.enabled` writes: `privileged_without_host_devices = false`, `runtime_engine = ""`,
//!   `runtime_root = ""`, `runtime_type = "io.containerd.runc.v2"`, options `BinaryName =
//!   "/usr/bin/nvidia-container-runtime"` plus the default runtime's options (here
//!   `SystemdCgroup = true`), `enable_cdi = true` on the CRI plugin (NVIDIA/nvidia-container-toolkit
//!   pkg/config/engine/containerd/config_v2_test.go "empty config not default runtime with
//!   overrides", cmd/nvidia-ctk/runtime/configure/configure_test.go "containerd: enable CDI" and
//!   the drop-in cases writing `/etc/containerd/conf.d/99-nvidia.toml`).
//! - containerd 1.x replaces a whole plugin section with an imported file's section
//!   (services/server/config: "Replace entire sections instead of merging map's values"), which
//!   is why the drop-in carries the complete CRI section.

use minijinja::value::Serde;
use minijinja::{context, Value};
use serde::Serialize;

use crate::artifacts::source::{Location, Mirror};
use crate::inventory::Node;
use crate::profile::efa_layout::{
    efa_installer_url, layout, EFA_INSTALLER_SHA256, EFA_INSTALLER_VERSION,
};
use crate::profile::{Profile, ProviderKind};

pub use crate::profile::schema::{TOOLKIT_APT_KEY_URL, TOOLKIT_APT_REPOSITORY, TOOLKIT_VERSION};
const TOOLKIT_KEYRING: &str = "/usr/share/keyrings/nvidia-container-toolkit-keyring.gpg";

/// The oneshot unit that installs and verifies the NVIDIA stack (real GPU machines only).
pub const GPU_UNIT: &str = "k8sforge-gpu-runtime.service";
/// Taint every GPU node registers with; the `addons` phase removes it once the preflight passes.
pub const UNVERIFIED_TAINT: &str = "k8sforge.io/gpu-unverified";
/// The toolkit's runtime binary, a runc wrapper (the containerd `nvidia` runtime's BinaryName).
pub const NVIDIA_RUNTIME_BINARY: &str = "/usr/bin/nvidia-container-runtime";
/// The containerd handler and RuntimeClass name.
pub const RUNTIME_HANDLER: &str = "nvidia";

pub const DROP_IN: &str = "/etc/containerd/conf.d/99-nvidia.toml";
pub const SCRIPT_DIR: &str = "/usr/local/lib/k8sforge/gpu/";
pub const RUNTIME_SCRIPT: &str = "/usr/local/lib/k8sforge/gpu/runtime.sh";
pub const PREFLIGHT_SCRIPT: &str = "/usr/local/lib/k8sforge/gpu/preflight.sh";
pub const APT_DIR: &str = "/etc/apt/";
pub const UNATTENDED_BLACKLIST: &str = "/etc/apt/apt.conf.d/51k8sforge-nvidia";
pub const TOOLKIT_SOURCES: &str = "/etc/apt/sources.list.d/k8sforge-nvidia-container-toolkit.list";
/// Where the last preflight result is kept on the node (`k8sforge status` reads it).
pub const HEALTH_FILE: &str = "/var/lib/k8sforge/gpu-health";
pub const CDI_SPEC: &str = "/var/run/cdi/nvidia.yaml";
/// containerd's default CDI spec directories (CRI `cdi_spec_dirs`).
pub const CDI_SPEC_DIRS: [&str; 2] = ["/etc/cdi", "/var/run/cdi"];

/// Paths of GPU files that restart nothing: the runtime phase owns them by prefix.
pub const PATH_PREFIXES: [&str; 2] = [SCRIPT_DIR, APT_DIR];

/// Fast-network devices a GPU node is expected to have: (EFA devices, gVNIC interfaces
/// including the primary). EFA devices are expected only where k8sforge launched the instance
/// with its EFA interfaces (`aws.efa`, the layout of `profile::efa_layout`: one EFA per network
/// card, AWS EC2 User Guide, "Maximize network bandwidth on accelerated instances"); an EFA
/// type launched without them has none. a3-highgpu-8g: the primary gVNIC plus 4 GPU NICs
/// (Google Cloud, "GPUDirect-TCPX"). Other types expect none (nothing is checked).
pub fn expected_fabric(provider: ProviderKind, machine: Option<&str>, efa: bool) -> (u32, u32) {
    match (provider, machine) {
        (ProviderKind::Aws, Some(t)) if efa => (layout(t).map_or(0, |l| l.network_cards), 0),
        (ProviderKind::Gcp, Some(t)) if crate::profile::gpu_nic_layout::has_gpu_nics(t) => {
            (0, 1 + crate::profile::gpu_nic_layout::GPU_NICS as u32)
        }
        _ => (0, 0),
    }
}

/// Where a node downloads `upstream_url` from: through an HTTP(S)/S3/GCS artifact mirror when
/// the profile names one, else upstream. A mirror directory on the operator's machine is not
/// reachable from a node, so such a node fetches upstream (and says so when it cannot).
pub fn node_url(mirror: Option<&str>, upstream_url: &str) -> String {
    let mirror = match mirror {
        Some(m) if m.contains("://") => Mirror::parse(Some(m)).unwrap_or(Mirror::Upstream),
        _ => Mirror::Upstream,
    };
    match mirror.location(upstream_url) {
        Location::Url(u) => u,
        Location::File(_) => upstream_url.to_string(),
    }
}

/// The EFA installer's host part on a node launched with EFA interfaces.
#[derive(Debug, Clone, Serialize)]
pub struct EfaInstallerCtx {
    pub version: &'static str,
    pub url: String,
    pub sha256: &'static str,
}

/// What the GPU templates see (as `gpu`).
#[derive(Debug, Clone, Serialize)]
pub struct GpuCtx {
    pub branch: String,
    pub driver_source: &'static str,
    pub fabric_manager: &'static str,
    pub toolkit_version: String,
    pub toolkit_repository: String,
    pub toolkit_key_url: String,
    pub toolkit_keyring: &'static str,
    pub runtime_binary: &'static str,
    pub runtime_script: &'static str,
    pub cdi_spec: &'static str,
    pub cdi_spec_dirs: [&'static str; 2],
    pub unverified_taint: &'static str,
    pub expected_efa: u32,
    pub expected_gvnic: u32,
    /// Set on nodes launched with EFA interfaces.
    pub efa_installer: Option<EfaInstallerCtx>,
}

/// Per-profile GPU settings, built once per render.
pub struct GpuCluster {
    base: GpuCtx,
    provider: ProviderKind,
    /// group name → machine type on the selected provider, and whether it has EFA interfaces.
    machines: Vec<(String, Option<String>, bool)>,
    efa_installer: EfaInstallerCtx,
}

impl GpuCluster {
    pub fn new(profile: &Profile) -> GpuCluster {
        let g = &profile.gpu;
        let provider = profile.provider.kind;
        let machines = profile
            .workers
            .iter()
            .map(|w| {
                let (m, efa) = match provider {
                    ProviderKind::Aws => w
                        .aws
                        .as_ref()
                        .map_or((None, false), |a| (Some(a.instance_type.clone()), a.efa)),
                    ProviderKind::Gcp => (w.gcp.as_ref().map(|a| a.machine_type.clone()), false),
                    _ => (None, false),
                };
                (w.name.clone(), m, efa)
            })
            .collect();
        GpuCluster {
            base: GpuCtx {
                branch: g.driver.branch.clone(),
                driver_source: g.driver.source.as_str(),
                fabric_manager: g.fabric_manager.as_str(),
                toolkit_version: g.container_toolkit.version.clone(),
                toolkit_repository: g.container_toolkit.apt_repository.clone(),
                toolkit_key_url: g.container_toolkit.apt_key_url.clone(),
                toolkit_keyring: TOOLKIT_KEYRING,
                runtime_binary: NVIDIA_RUNTIME_BINARY,
                runtime_script: RUNTIME_SCRIPT,
                cdi_spec: CDI_SPEC,
                cdi_spec_dirs: CDI_SPEC_DIRS,
                unverified_taint: UNVERIFIED_TAINT,
                expected_efa: 0,
                expected_gvnic: 0,
                efa_installer: None,
            },
            provider,
            machines,
            efa_installer: EfaInstallerCtx {
                version: EFA_INSTALLER_VERSION,
                url: node_url(
                    profile.artifacts.mirror.as_deref(),
                    &efa_installer_url(EFA_INSTALLER_VERSION),
                ),
                sha256: EFA_INSTALLER_SHA256,
            },
        }
    }

    fn ctx_for(&self, node: &Node) -> GpuCtx {
        let (machine, efa_launch) = self
            .machines
            .iter()
            .find(|(g, _, _)| *g == node.group)
            .map_or((None, false), |(_, m, e)| (m.as_deref(), *e));
        let (efa, gvnic) = expected_fabric(self.provider, machine, efa_launch);
        GpuCtx {
            expected_efa: efa,
            expected_gvnic: gvnic,
            efa_installer: (efa > 0).then(|| self.efa_installer.clone()),
            ..self.base.clone()
        }
    }
}

/// One GPU file: (path, mode, template, units it restarts).
pub struct GpuFile {
    pub path: &'static str,
    pub mode: u32,
    pub content: Vec<u8>,
    pub restarts: &'static [&'static str],
}

/// The GPU files and units of `node` (none unless it has GPUs). `render` renders a template with
/// the given context; `node_ctx` is the node's usual template context. On local nodes (no GPU
/// hardware, a Debian container) only the parts that can work there are rendered: the containerd
/// drop-in and the preflight; the driver unit is a real GPU machine's job.
pub fn render_node<E>(
    gpu: &GpuCluster,
    node: &Node,
    local: bool,
    node_ctx: &Value,
    mut render: impl FnMut(&Value, &str) -> Result<Vec<u8>, E>,
) -> Result<(Vec<GpuFile>, Vec<&'static str>), E> {
    if node.gpus == 0 {
        return Ok((Vec::new(), Vec::new()));
    }
    let g = gpu.ctx_for(node);
    let nvidia =
        context! { runtime_binary => NVIDIA_RUNTIME_BINARY, cdi_spec_dirs => CDI_SPEC_DIRS };
    let ctx = context! {
        gpu => Value::from(Serde(&g)),
        node_gpus => node.gpus,
        ..node_ctx.clone()
    };
    let dropin_ctx = context! { nvidia => nvidia, ..node_ctx.clone() };
    const CONTAINERD: &[&str] = &["containerd.service"];
    let mut files = vec![
        GpuFile {
            path: DROP_IN,
            mode: crate::fsutil::PUBLIC,
            content: render(&dropin_ctx, "containerd-config.toml")?,
            restarts: CONTAINERD,
        },
        GpuFile {
            path: PREFLIGHT_SCRIPT,
            mode: 0o755,
            content: render(&ctx, "gpu/preflight.sh")?,
            restarts: &[],
        },
    ];
    let mut units = Vec::new();
    if !local {
        const UNIT: &[&str] = &[GPU_UNIT];
        files.push(GpuFile {
            path: RUNTIME_SCRIPT,
            mode: 0o755,
            content: render(&ctx, "gpu/runtime.sh")?,
            restarts: UNIT,
        });
        files.push(GpuFile {
            path: UNIT_PATH,
            mode: crate::fsutil::PUBLIC,
            content: render(&ctx, GPU_UNIT)?,
            restarts: UNIT,
        });
        files.push(GpuFile {
            path: UNATTENDED_BLACKLIST,
            mode: crate::fsutil::PUBLIC,
            content: render(&ctx, "gpu/unattended-upgrades.conf")?,
            restarts: &[],
        });
        files.push(GpuFile {
            path: TOOLKIT_SOURCES,
            mode: crate::fsutil::PUBLIC,
            content: render(&ctx, "gpu/toolkit.list")?,
            restarts: UNIT,
        });
        units.push(GPU_UNIT);
    }
    Ok((files, units))
}

const UNIT_PATH: &str = "/etc/systemd/system/k8sforge-gpu-runtime.service";

/// The taint GPU nodes register with (added to the profile's taints).
pub fn unverified_taint() -> crate::profile::Taint {
    crate::profile::Taint {
        key: UNVERIFIED_TAINT.to_string(),
        value: None,
        effect: crate::profile::TaintEffect::NoSchedule,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_path_matches_the_unit_dir() {
        assert_eq!(UNIT_PATH, super::super::paths::unit_path(GPU_UNIT));
    }

    #[test]
    fn fabric_of_documented_types() {
        let aws = ProviderKind::Aws;
        assert_eq!(expected_fabric(aws, Some("p5.48xlarge"), true), (32, 0));
        // Launched without its EFA interfaces: no EFA device to expect.
        assert_eq!(expected_fabric(aws, Some("p5.48xlarge"), false), (0, 0));
        assert_eq!(
            expected_fabric(ProviderKind::Gcp, Some("a3-highgpu-8g"), false),
            (0, 5)
        );
        assert_eq!(expected_fabric(ProviderKind::Local, None, false), (0, 0));
    }

    #[test]
    fn installer_url_goes_through_an_http_mirror_only() {
        let up = "https://efa-installer.amazonaws.com/aws-efa-installer-1.41.0.tar.gz";
        assert_eq!(node_url(None, up), up);
        assert_eq!(node_url(Some("/srv/mirror"), up), up);
        assert_eq!(
            node_url(Some("http://10.0.0.5:8080/m/"), up),
            "http://10.0.0.5:8080/m/efa-installer.amazonaws.com/aws-efa-installer-1.41.0.tar.gz"
        );
    }
}
