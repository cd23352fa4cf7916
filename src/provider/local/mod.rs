//! The `local` provider: the profile's nodes as `systemd-nspawn --boot` containers on this
//! machine, each with real systemd and sshd, its own network namespace on a per-cluster bridge,
//! its own overlayfs root over a shared debootstrap image, machine-id and SSH host key.
//!
//! Layout under the provider root (`provider.local.root`, default `/var/lib/k8sforge`):
//! `images/<suite>-<key>/rootfs` (shared, cached) and `clusters/<cluster>/nodes/<node>/`.
//! The shell recipe this follows, with its pitfalls, is the project's testbed (nodes.sh).

use std::fs;
use std::net::{IpAddr, Ipv4Addr};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use ipnet::Ipv4Net;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use super::{Provider, ProviderFuture, ProvisionContext, Provisioned, TeardownReport};
use crate::inventory::Inventory;
use crate::profile::Profile;
use crate::sshkeys::{self, PinnedKey};

pub mod api_proxy;
pub mod cgroups;
pub mod cmd;
pub mod image;
pub mod launcher;
pub mod network;
pub mod node;
pub mod ready;
pub mod sys;
pub mod teardown;
pub mod verbs;

use node::NodeDir;

pub const DEFAULT_ROOT: &str = "/var/lib/k8sforge";

#[derive(Debug, thiserror::Error)]
pub enum LocalError {
    #[error(
        "the local provider needs root: it creates network namespaces, a bridge, overlay mounts and \
         systemd-nspawn containers. Run it as root, e.g. `sudo -E k8sforge {verb} --profile …` \
         (the profile's provider.kind is `local`)"
    )]
    NotRoot { verb: String },
    #[error("`{program}` is needed but cannot be run ({source}); install it with `apt-get install -y {package}`")]
    MissingTool {
        program: String,
        package: String,
        source: std::io::Error,
    },
    #[error("cannot run `{program}`: {source}")]
    Spawn {
        program: String,
        source: std::io::Error,
    },
    #[error("`{command}` failed ({status}): {stderr}")]
    Command {
        command: String,
        status: String,
        stderr: String,
    },
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "no Debian archive to build the node image from: this machine's apt has no `deb` source \
         (/etc/apt/sources.list.d/*.sources or /etc/apt/sources.list); set K8SFORGE_DEBIAN_MIRROR \
         to the archive's URL"
    )]
    NoDebianArchive,
    #[error("building the node image failed at {step}; log: {}\n{tail}", log.display())]
    ImageBuild {
        step: String,
        log: PathBuf,
        tail: String,
    },
    #[error("node {node} did not come up: {reason}. Last lines of its console log {}:\n{tail}", log.display())]
    NodeDown {
        node: String,
        reason: String,
        log: PathBuf,
        tail: String,
    },
    #[error("local provider preflight: {0}")]
    Preflight(String),
    #[error("local provider: {0}")]
    Busy(String),
    #[error(transparent)]
    SshKey(#[from] sshkeys::SshKeyError),
}

impl LocalError {
    pub fn io(path: &Path, source: std::io::Error) -> LocalError {
        LocalError::Io {
            path: path.to_path_buf(),
            source,
        }
    }

    pub fn spawn(program: &str, source: std::io::Error) -> LocalError {
        if source.kind() == std::io::ErrorKind::NotFound {
            let package = package_of(program).to_string();
            return LocalError::MissingTool {
                program: program.to_string(),
                package,
                source,
            };
        }
        LocalError::Spawn {
            program: program.to_string(),
            source,
        }
    }
}

/// Debian package that ships each host tool.
fn package_of(program: &str) -> &'static str {
    match program {
        "systemd-nspawn" => "systemd-container",
        "debootstrap" => "debootstrap",
        "ip" => "iproute2",
        "mount" | "umount" => "mount",
        _ => "the package that provides it",
    }
}

/// Last `n` lines of a text file (for error messages).
pub fn tail_file(path: &Path, n: usize) -> String {
    let text = fs::read(path)
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    let from = lines.len().saturating_sub(n);
    lines[from..]
        .iter()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What the provider knows about a node it created (in the node directory).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct NodeRecord {
    pub name: String,
    pub ip: Ipv4Addr,
    pub netns: String,
    pub veth: String,
    /// The cluster key authorized on the node: a running node is adopted only by the state
    /// directory that holds this key.
    #[serde(default)]
    pub authorized_key: String,
}

impl NodeRecord {
    fn path(nd: &NodeDir) -> PathBuf {
        nd.dir.join("node.json")
    }

    pub fn load(nd: &NodeDir) -> Option<NodeRecord> {
        serde_json::from_slice(&fs::read(Self::path(nd)).ok()?).ok()
    }

    fn save(&self, nd: &NodeDir) -> Result<(), LocalError> {
        let p = Self::path(nd);
        let json = serde_json::to_vec_pretty(self).unwrap_or_default();
        crate::fsutil::write_atomic(&p, &json, crate::fsutil::PUBLIC)
            .map_err(|e| LocalError::io(&p, e))
    }
}

/// Settings of the local provider for one cluster.
#[derive(Debug, Clone)]
pub struct LocalConfig {
    pub cluster: String,
    /// Image cache and node directories (`provider.local.root`; env `K8SFORGE_LOCAL_ROOT`).
    pub root: PathBuf,
    pub bridge: String,
    pub subnet: Ipv4Net,
    /// The host's address on the bridge: the subnet's first address.
    pub host_addr: Ipv4Addr,
    /// Until every sshd answers (env `K8SFORGE_LOCAL_BOOT_TIMEOUT`, seconds).
    pub boot_timeout: Duration,
    /// Graceful poweroff before SIGKILL in teardown (env `K8SFORGE_LOCAL_STOP_TIMEOUT`, seconds).
    pub stop_timeout: Duration,
    /// In-node `systemctl reboot`s honoured per boot of the launcher.
    pub max_reboots: u32,
    /// Debian archive for the image build (env `K8SFORGE_DEBIAN_MIRROR`; unset: the one this
    /// machine's apt uses).
    pub mirror: Option<String>,
    /// Executable that runs the hidden launcher verb (env `K8SFORGE_LOCAL_LAUNCHER`, else this
    /// program).
    pub launcher_exe: PathBuf,
}

fn env_secs(name: &str, default: u64) -> Result<Duration, LocalError> {
    match std::env::var(name) {
        Ok(v) => v
            .trim()
            .parse::<u64>()
            .map(Duration::from_secs)
            .map_err(|_| {
                LocalError::Preflight(format!(
                    "environment variable {name}={v:?} must be a whole number of seconds"
                ))
            }),
        Err(_) => Ok(Duration::from_secs(default)),
    }
}

impl LocalConfig {
    pub fn from_profile(profile: &Profile) -> Result<LocalConfig, LocalError> {
        let spec = profile.provider.local.clone().unwrap_or_default();
        let root = std::env::var_os("K8SFORGE_LOCAL_ROOT")
            .map(PathBuf::from)
            .or_else(|| spec.root.as_ref().map(PathBuf::from))
            .unwrap_or_else(|| PathBuf::from(DEFAULT_ROOT));
        if !root.is_absolute() {
            return Err(LocalError::Preflight(format!(
                "provider.local.root must be an absolute path, got {}",
                root.display()
            )));
        }
        let bridge = spec
            .bridge
            .clone()
            .unwrap_or_else(|| network::default_bridge(&profile.name));
        network::check_ifname(&bridge)
            .map_err(|e| LocalError::Preflight(format!("provider.local.bridge: {e}")))?;
        let subnet = profile.network.node_cidr;
        let host_addr = Ipv4Addr::from(u32::from(subnet.network()).saturating_add(1));
        let launcher_exe = match std::env::var_os("K8SFORGE_LOCAL_LAUNCHER") {
            Some(p) => PathBuf::from(p),
            None => std::env::current_exe()
                .map_err(|e| LocalError::io(Path::new("/proc/self/exe"), e))?,
        };
        Ok(LocalConfig {
            cluster: profile.name.clone(),
            root,
            bridge,
            subnet,
            host_addr,
            boot_timeout: env_secs("K8SFORGE_LOCAL_BOOT_TIMEOUT", 300)?,
            stop_timeout: env_secs("K8SFORGE_LOCAL_STOP_TIMEOUT", 15)?,
            max_reboots: 5,
            mirror: std::env::var("K8SFORGE_DEBIAN_MIRROR")
                .ok()
                .filter(|m| !m.trim().is_empty()),
            launcher_exe,
        })
    }

    pub fn runtime_dir(&self) -> PathBuf {
        self.root.join("clusters").join(&self.cluster)
    }

    pub fn node_dir(&self, node: &str) -> NodeDir {
        NodeDir::new(self.runtime_dir().join("nodes").join(node))
    }

    fn scope(&self) -> (PathBuf, String) {
        (self.runtime_dir(), self.bridge.clone())
    }
}

/// The local provider for one cluster.
pub struct LocalProvider {
    pub config: LocalConfig,
}

/// What a provision did, for the summary line.
#[derive(Debug, Default, Clone, PartialEq, Serialize)]
pub struct ProvisionReport {
    pub booted: Vec<String>,
    pub kept: Vec<String>,
    /// Dead nodes torn down before booting again.
    pub replaced: Vec<String>,
    /// Nodes no longer in the profile, removed.
    pub removed: Vec<String>,
    pub image_built: bool,
    pub seconds: f64,
}

impl LocalProvider {
    pub fn new(config: LocalConfig) -> LocalProvider {
        LocalProvider { config }
    }

    pub fn from_profile(profile: &Profile) -> Result<LocalProvider, LocalError> {
        Ok(LocalProvider::new(LocalConfig::from_profile(profile)?))
    }

    /// Root, host tools and kernel features; the node subnet must be free on the host.
    pub fn check(&self, verb: &str) -> Result<(), LocalError> {
        if !sys::is_root() {
            return Err(LocalError::NotRoot {
                verb: verb.to_string(),
            });
        }
        let mut tools = vec!["systemd-nspawn", "ip", "mount"];
        if image::cached(&self.config.root).is_none() {
            tools.push("debootstrap");
        }
        for t in tools {
            if !cmd::on_path(t) {
                return Err(LocalError::MissingTool {
                    program: t.to_string(),
                    package: package_of(t).to_string(),
                    source: std::io::Error::from(std::io::ErrorKind::NotFound),
                });
            }
        }
        let filesystems = fs::read_to_string("/proc/filesystems").unwrap_or_default();
        if !filesystems
            .lines()
            .any(|l| l.split_whitespace().last() == Some("overlay"))
        {
            return Err(LocalError::Preflight(
                "the kernel has no overlay filesystem (/proc/filesystems); nodes share one image through overlayfs".into(),
            ));
        }
        if !Path::new(cgroups::CGROUP_ROOT).is_dir() || cgroups::own_bases().is_empty() {
            return Err(LocalError::Preflight(
                "no cgroup hierarchy is mounted under /sys/fs/cgroup".into(),
            ));
        }
        if !Path::new("/proc/self/ns/net").exists() {
            return Err(LocalError::Preflight(
                "the kernel has no network namespaces".into(),
            ));
        }
        // Overlay inside a node over an overlay root fails ("wrong fs type", testbed pitfall 9):
        // the node directories, which back /var/lib/containerd, must be on a real filesystem.
        let probe = existing_ancestor(&self.config.root);
        if let Some(t) = sys::fs_type(&probe) {
            if t == "overlay" {
                return Err(LocalError::Preflight(format!(
                    "{} is on overlayfs; containerd inside nodes needs a real filesystem there (set provider.local.root)",
                    self.config.root.display()
                )));
            }
        }
        let conflicts = network::subnet_conflicts(&self.config.bridge, self.config.subnet)?;
        if !conflicts.is_empty() {
            return Err(LocalError::Preflight(format!(
                "network.nodeCIDR {} overlaps addresses already on this host: {}; choose another \
                 nodeCIDR (inside 198.18.0.0/15) for this cluster",
                self.config.subnet,
                conflicts.join(", ")
            )));
        }
        if sys::read_sysctl("net.ipv4.ip_forward").as_deref() == Some("1") {
            tracing::warn!(
                "net.ipv4.ip_forward=1 on this host; k8sforge keeps forwarding off on {} so node traffic stays on the machine",
                self.config.bridge
            );
        }
        Ok(())
    }

    /// Create what is missing, keep running nodes, replace dead ones; returns the inventory with
    /// `planned=false` and a report of what happened.
    pub fn provision_nodes(
        &self,
        ctx: &ProvisionContext<'_>,
    ) -> Result<(Inventory, ProvisionReport), LocalError> {
        let start = Instant::now();
        let cfg = &self.config;
        self.check("up")?;
        let mut report = ProvisionReport {
            image_built: image::cached(&cfg.root).is_none(),
            ..Default::default()
        };
        let img = image::ensure(&cfg.root, cfg.mirror.as_deref())?;
        let runtime = cfg.runtime_dir();
        fs::create_dir_all(runtime.join("nodes")).map_err(|e| LocalError::io(&runtime, e))?;
        let _lock = lock_dir(&runtime)?;
        network::host_setup(&cfg.bridge, cfg.host_addr, cfg.subnet)?;

        let mut inv = ctx.planned.clone();
        inv.planned = false;
        for n in &mut inv.nodes {
            if !cfg.subnet.contains(&n.internal_ip) || n.internal_ip == cfg.host_addr {
                return Err(LocalError::Preflight(format!(
                    "node {} has address {}, outside network.nodeCIDR {} or the host's own",
                    n.name, n.internal_ip, cfg.subnet
                )));
            }
            // Local nodes are reached as root on port 22 with the cluster key.
            n.ssh.host = IpAddr::V4(n.internal_ip);
            n.ssh.port = 22;
            n.ssh.user = "root".into();
            n.ssh.key = None;
        }

        // Nodes no longer in the profile.
        let (rt, br) = cfg.scope();
        let scope = teardown::ClusterScope {
            cluster: &cfg.cluster,
            runtime_dir: &rt,
            bridge: &br,
        };
        for nd in scope.node_dirs() {
            let name = dir_name(&nd);
            if inv.node(&name).is_none() {
                teardown::stop_gracefully(std::slice::from_ref(&nd), cfg.stop_timeout);
                let mut removed = Vec::new();
                teardown::remove_node(&nd, NodeRecord::load(&nd).as_ref(), &mut removed)?;
                report.removed.push(name);
            }
        }

        // Running nodes are kept; dead ones are torn down and booted again.
        let mut to_boot = Vec::new();
        for n in &inv.nodes {
            let nd = cfg.node_dir(&n.name);
            if nd.launcher_alive().is_some() && nd.nspawn_alive().is_some() {
                let theirs = NodeRecord::load(&nd)
                    .map(|r| r.authorized_key)
                    .unwrap_or_default();
                if !theirs.is_empty() && key_body(&theirs) != key_body(&ctx.ssh_public_key) {
                    return Err(LocalError::Busy(format!(
                        "node {} of cluster {} is running but belongs to another k8sforge state directory (it authorizes a different cluster key); refusing to adopt it. Run `k8sforge teardown` for this cluster (with any state directory) or choose another cluster name",
                        n.name, cfg.cluster
                    )));
                }
                report.kept.push(n.name.clone());
                continue;
            }
            if nd.dir.exists() {
                teardown::stop_gracefully(std::slice::from_ref(&nd), Duration::ZERO);
                let mut removed = Vec::new();
                teardown::remove_node(&nd, NodeRecord::load(&nd).as_ref(), &mut removed)?;
                report.replaced.push(n.name.clone());
            }
            to_boot.push(n.clone());
        }

        let hosts: Vec<(String, Ipv4Addr)> = inv
            .nodes
            .iter()
            .map(|n| (n.name.clone(), n.internal_ip))
            .collect();
        let hosts = node::hosts_file(cfg.host_addr, &hosts);
        // Kept nodes learn about added or removed nodes too. Written through the merged root on
        // the host (the same overlay mount the node uses), never into the upper dir directly.
        for name in &report.kept {
            let path = cfg.node_dir(name).root().join("etc/hosts");
            crate::fsutil::write_if_changed(&path, hosts.as_bytes(), crate::fsutil::PUBLIC)
                .map_err(|e| LocalError::io(&path, e))?;
        }

        // Prepare and start in parallel: identity, overlay, network, launcher.
        let prepared: Vec<Result<(), LocalError>> = to_boot
            .par_iter()
            .map(|n| {
                let nd = cfg.node_dir(&n.name);
                let rec = NodeRecord {
                    name: n.name.clone(),
                    ip: n.internal_ip,
                    netns: network::netns_name(&cfg.cluster, &n.name),
                    veth: network::veth_name(&cfg.cluster, cfg.subnet, n.internal_ip),
                    authorized_key: ctx.ssh_public_key.trim().to_string(),
                };
                fs::create_dir_all(&nd.dir).map_err(|e| LocalError::io(&nd.dir, e))?;
                rec.save(&nd)?;
                let (_, mid) = node::write_identity(
                    &nd,
                    &node::Identity {
                        hostname: n.name.clone(),
                        hosts: hosts.clone(),
                        authorized_key: ctx.ssh_public_key.clone(),
                    },
                )?;
                node::mount_root(&nd, &img.rootfs)?;
                network::node_setup(&network::NodeNet {
                    netns: &rec.netns,
                    veth: &rec.veth,
                    bridge: &cfg.bridge,
                    ip: n.internal_ip,
                    subnet: cfg.subnet,
                    gateway: cfg.host_addr,
                })?;
                let spec = node::LaunchSpec {
                    machine: n.name.clone(),
                    uuid: node::machine_id_uuid(&mid),
                    root: nd.root(),
                    netns: network::netns_path(&rec.netns),
                    binds: vec![(nd.containerd(), "/var/lib/containerd".into())],
                    cgroup: vec![cgroups::subtree_name(&cfg.cluster), n.name.clone()],
                    api_vfs_writable: "network".into(),
                    max_reboots: cfg.max_reboots,
                };
                let json = serde_json::to_vec_pretty(&spec).unwrap_or_default();
                crate::fsutil::write_atomic(&nd.spec(), &json, crate::fsutil::PUBLIC)
                    .map_err(|e| LocalError::io(&nd.spec(), e))?;
                Ok(())
            })
            .collect();
        prepared.into_iter().collect::<Result<Vec<()>, _>>()?;

        // Pin every node's host key up front: k8sforge generated them, so none is learnt on
        // first contact.
        let mut pins = Vec::new();
        for n in &inv.nodes {
            let nd = cfg.node_dir(&n.name);
            let key = fs::read_to_string(nd.host_pubkey())
                .map_err(|e| LocalError::io(&nd.host_pubkey(), e))?;
            pins.push(PinnedKey::new(IpAddr::V4(n.internal_ip), 22, &key, &n.name));
        }
        sshkeys::pin_host_keys(&ctx.cluster_dir, &pins)?;

        let mut launchers = Vec::new();
        for n in &to_boot {
            let nd = cfg.node_dir(&n.name);
            launchers.push(node::start_launcher(&nd, &cfg.launcher_exe)?);
        }
        for (n, pid) in to_boot.iter().zip(launchers) {
            let nd = cfg.node_dir(&n.name);
            if !node::wait_launcher_ready(&nd, pid, Duration::from_secs(60)) {
                return Err(LocalError::NodeDown {
                    node: n.name.clone(),
                    reason: "its launcher did not start systemd-nspawn".into(),
                    log: nd.console_log(),
                    tail: tail_file(&nd.console_log(), 30),
                });
            }
        }
        report.booted = to_boot.iter().map(|n| n.name.clone()).collect();

        let bar = indicatif::ProgressBar::new(inv.nodes.len() as u64);
        bar.set_style(
            indicatif::ProgressStyle::with_template(
                "{spinner} booting nodes {pos}/{len} sshd up {elapsed}",
            )
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
        let pending = inv
            .nodes
            .iter()
            .map(|n| ready::Pending {
                name: n.name.clone(),
                ip: IpAddr::V4(n.internal_ip),
                dir: cfg.node_dir(&n.name),
            })
            .collect();
        let waited = ready::wait_all(pending, cfg.boot_timeout, &bar);
        bar.finish_and_clear();
        waited?;

        // Several control planes and no endpoint of the user's: the API load balancer on the
        // host's bridge address (the inventory put the endpoint there).
        if inv.api.host == cfg.host_addr.to_string() {
            let port = ctx.profile.api_server.port;
            let backends: Vec<std::net::SocketAddr> = inv
                .with_role(crate::inventory::Role::ControlPlane)
                .map(|n| std::net::SocketAddr::new(IpAddr::V4(n.internal_ip), port))
                .collect();
            api_proxy::ensure(
                &runtime,
                &cfg.launcher_exe,
                std::net::SocketAddr::new(IpAddr::V4(cfg.host_addr), inv.api.port),
                &backends,
            )?;
        }
        report.seconds = start.elapsed().as_secs_f64();
        Ok((inv, report))
    }

    /// Remove every node, namespace, veth, mount, cgroup and the bridge of this cluster.
    pub fn teardown_all(&self, dry_run: bool) -> Result<TeardownReport, LocalError> {
        self.check_root("teardown")?;
        let (rt, br) = self.config.scope();
        let scope = teardown::ClusterScope {
            cluster: &self.config.cluster,
            runtime_dir: &rt,
            bridge: &br,
        };
        if dry_run {
            return Ok(TeardownReport {
                deleted: scope.inventory(),
                dry_run: true,
            });
        }
        let _lock = if rt.exists() {
            Some(lock_dir(&rt)?)
        } else {
            None
        };
        api_proxy::stop(&rt);
        let deleted = scope.remove_all(self.config.stop_timeout)?;
        Ok(TeardownReport {
            deleted,
            dry_run: false,
        })
    }

    pub fn check_root(&self, verb: &str) -> Result<(), LocalError> {
        if sys::is_root() {
            Ok(())
        } else {
            Err(LocalError::NotRoot {
                verb: verb.to_string(),
            })
        }
    }
}

/// Key type and base64 of a one-line OpenSSH public key (comment ignored).
fn key_body(k: &str) -> String {
    k.split_whitespace().take(2).collect::<Vec<_>>().join(" ")
}

fn dir_name(nd: &NodeDir) -> String {
    nd.dir
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn existing_ancestor(p: &Path) -> PathBuf {
    let mut cur = p.to_path_buf();
    while !cur.exists() {
        match cur.parent() {
            Some(parent) => cur = parent.to_path_buf(),
            None => break,
        }
    }
    cur
}

/// Exclusive lock on a cluster's runtime directory (two k8sforge homes may name the same
/// cluster); released on drop.
pub struct DirLock {
    _lock: fd_lock::RwLock<fs::File>,
}

fn lock_dir(dir: &Path) -> Result<DirLock, LocalError> {
    let path = dir.join(".lock");
    let file = fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&path)
        .map_err(|e| LocalError::io(&path, e))?;
    let mut lock = fd_lock::RwLock::new(file);
    match lock.try_write() {
        Ok(guard) => std::mem::forget(guard),
        Err(_) => {
            return Err(LocalError::Busy(format!(
                "another k8sforge run is working on the local nodes of this cluster ({} is locked)",
                path.display()
            )))
        }
    }
    Ok(DirLock { _lock: lock })
}

impl Provider for LocalProvider {
    fn name(&self) -> &'static str {
        "local"
    }

    fn preflight<'a>(&'a self, _ctx: &'a ProvisionContext<'a>) -> ProviderFuture<'a, ()> {
        Box::pin(async move { Ok(self.check("up")?) })
    }

    fn provision<'a>(&'a self, ctx: &'a ProvisionContext<'a>) -> ProviderFuture<'a, Provisioned> {
        Box::pin(async move {
            let (inv, report) = self.provision_nodes(ctx)?;
            tracing::info!(
                "local nodes: {} booted, {} kept, {} replaced, {} removed in {:.1}s",
                report.booted.len(),
                report.kept.len(),
                report.replaced.len(),
                report.removed.len(),
                report.seconds
            );
            let created = report
                .booted
                .iter()
                .map(|n| ("node".to_string(), n.clone()))
                .collect();
            let replaced = report
                .replaced
                .iter()
                .map(|n| ("node".to_string(), n.clone()))
                .collect();
            Ok(Provisioned {
                detail: report.detail(inv.nodes.len()),
                inventory: inv,
                created,
                replaced,
            })
        })
    }

    fn teardown<'a>(
        &'a self,
        _ctx: &'a ProvisionContext<'a>,
        dry_run: bool,
    ) -> ProviderFuture<'a, TeardownReport> {
        Box::pin(async move { Ok(self.teardown_all(dry_run)?) })
    }
}
