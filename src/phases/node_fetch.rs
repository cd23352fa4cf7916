//! Nodes fetch their artifacts themselves (`artifacts.delivery: fetch | seed`): instead of
//! uploading binaries and image archives over SSH, each node's plan carries a fetch list (URL,
//! pinned digest, install layout) that the node runs with curl, verifying every download on the
//! node (`remote::fetch`). The operator's machine sends configs, certificates and that script.
//!
//! Seed mode, for nodes that cannot reach any source: the first `artifacts.seeds` nodes get
//! every artifact of the step first — downloaded from the source where they can reach it, or
//! pushed from this machine when the source is a local directory — and serve them over the
//! cluster network (`k8sforge-seed.service`, plain HTTP by digest); the other nodes fetch from
//! the seeds, then from the source, and verify the digest again.

use std::collections::BTreeMap;

use super::step::RemoteStep;
use super::{Context, PhaseError};
use crate::artifacts::source::{load_manifest, Mirror, ResolvedArtifact};
use crate::artifacts::{self, images, ArtifactSource, ClusterImage, Component, Digest, Layout};
use crate::inventory::{Inventory, Node};
use crate::profile::schema::{Delivery, ProviderKind};
use crate::remote::fetch::{self, FetchItem, FetchPlan, Install};
use crate::remote::sync::{FileSource, NodePlan, SyncFile};
use crate::remote::PhaseReport;

/// Seed nodes serve on this port unless `artifacts.seedPort` says otherwise.
pub const DEFAULT_SEED_PORT: u16 = 8079;
const DEFAULT_SEEDS: u32 = 3;
const SEED_UNIT: &str = "k8sforge-seed.service";
const SEED_SCRIPT: &str = "/usr/local/lib/k8sforge/seed-serve.sh";

/// The delivery mode in effect: the profile's choice, else `push` for local nodes and for a
/// mirror directory on this machine (nodes cannot reach it), `fetch` everywhere else.
pub fn delivery(ctx: &Context, source: &ArtifactSource) -> Delivery {
    let p = &ctx.loaded.profile;
    p.artifacts
        .delivery
        .unwrap_or(match (p.provider.kind, &source.mirror) {
            (ProviderKind::Local, _) | (_, Mirror::Dir(_)) => Delivery::Push,
            _ => Delivery::Fetch,
        })
}

/// Where a node downloads `upstream_url` from.
fn node_url(mirror: &Mirror, upstream_url: &str) -> Option<String> {
    match mirror.location(upstream_url) {
        artifacts::source::Location::Url(u) => Some(u),
        artifacts::source::Location::File(_) => None,
    }
}

/// One thing to fetch, before it is tailored to a node.
struct Wanted {
    id: String,
    digest: Digest,
    /// URL at the source (None: the source is a directory on this machine).
    url: Option<String>,
    layout: Layout,
    component: Option<Component>,
    restarts: Vec<String>,
    /// Image archives: where the file is in a directory mirror (for seed pushes).
    local_file: Option<std::path::PathBuf>,
}

fn wanted(
    step: &RemoteStep,
    release: &artifacts::Release,
    source: &ArtifactSource,
) -> Result<Vec<(Wanted, ResolvedArtifactOrImage)>, PhaseError> {
    let fail = |e: artifacts::ArtifactError| PhaseError::Failed(e.to_string());
    let comps: Vec<Component> = step.components.iter().map(|(c, _)| *c).collect();
    let mut out = Vec::new();
    for art in artifacts::source::resolve(release, source, &comps).map_err(fail)? {
        let restarts = step
            .components
            .iter()
            .find(|(c, _)| *c == art.component)
            .map(|(_, r)| r.iter().map(|s| s.to_string()).collect())
            .unwrap_or_default();
        out.push((
            Wanted {
                id: format!("{} {} ({})", art.component, art.version, art.file_name()),
                digest: art.digest.clone(),
                url: node_url(&source.mirror, &art.upstream_url),
                layout: art.component.layout(&art.version),
                component: Some(art.component),
                restarts,
                local_file: None,
            },
            ResolvedArtifactOrImage::Artifact(art),
        ));
    }
    if step.images {
        let listed = load_manifest(&source.mirror)
            .map_err(fail)?
            .map(|(_, m)| m.images)
            .unwrap_or_default();
        let want: Vec<ClusterImage> = ClusterImage::ALL
            .into_iter()
            .filter(|i| listed.iter().any(|e| e.name == i.name()))
            .collect();
        for img in images::resolve(release, source, &want).map_err(fail)? {
            let (url, local_file) = match &img.location {
                artifacts::source::Location::Url(u) => (Some(u.clone()), None),
                artifacts::source::Location::File(p) => (None, Some(p.clone())),
            };
            out.push((
                Wanted {
                    id: format!("image {} ({})", img.image.name(), img.reference),
                    digest: img.digest.clone(),
                    url,
                    layout: Layout::Binary {
                        dest: img.image.node_path(),
                    },
                    component: None,
                    restarts: vec![crate::render::node::IMAGES_UNIT.to_string()],
                    local_file,
                },
                ResolvedArtifactOrImage::Image,
            ));
        }
    }
    Ok(out)
}

enum ResolvedArtifactOrImage {
    Artifact(ResolvedArtifact),
    Image,
}

/// The install of `w` on a node whose bundle lists `binaries` (None: nothing of it is needed).
fn install_for(w: &Wanted, binaries: &[crate::render::bundle::Binary]) -> Option<Install> {
    // The Kubernetes downloads hold binaries for several roles: a node gets those its bundle
    // lists, as in push mode.
    let kube = matches!(
        w.component,
        Some(Component::KubernetesServer | Component::Kubelet | Component::Kubectl)
    );
    let needed = |dest: &str| !kube || binaries.iter().any(|b| b.path == dest);
    match &w.layout {
        Layout::Binary { dest } => needed(dest).then(|| Install::Copy {
            dest: dest.clone(),
            mode: if w.component.is_some() { 0o755 } else { 0o644 },
        }),
        Layout::Archive(entries) => {
            let m: Vec<(String, String, bool)> = entries
                .iter()
                .filter(|e| needed(&e.dest))
                .map(|e| (e.archive.clone(), e.dest.clone(), e.required))
                .collect();
            (!m.is_empty()).then_some(Install::Members(m))
        }
        Layout::ArchiveDir { prefix, dest_dir } => Some(Install::Dir {
            prefix: prefix.clone(),
            dest_dir: dest_dir.clone(),
        }),
    }
}

/// Give every plan its fetch list (and, in seed mode, seed the seed nodes first). Returns the
/// seeding's report, whose bytes belong to the phase. Push mode: nothing to do.
pub fn attach(
    ctx: &mut Context,
    step: &RemoteStep,
    release: &artifacts::Release,
    source: &ArtifactSource,
    plans: &mut BTreeMap<String, NodePlan>,
) -> Result<Option<PhaseReport>, PhaseError> {
    let mode = delivery(ctx, source);
    if mode == Delivery::Push || plans.is_empty() {
        return Ok(None);
    }
    let all = wanted(step, release, source)?;
    if all.is_empty() {
        return Ok(None);
    }
    let inv = ctx
        .inventory
        .clone()
        .ok_or(PhaseError::NoInventory { phase: step.phase })?;
    let mut seed_report = None;
    let mut seed_urls: Vec<String> = Vec::new();
    if mode == Delivery::Seed {
        let (report, urls) = seed(ctx, &inv, &all, step)?;
        seed_urls = urls;
        seed_report = Some(report);
    } else if let Some((w, _)) = all.iter().find(|(w, _)| w.url.is_none()) {
        return Err(PhaseError::Failed(format!(
            "artifacts.delivery is fetch, but {} comes from a directory on this machine \
             ({}), which nodes cannot reach: serve it over HTTP (--mirror http://…), or set \
             artifacts.delivery to push or seed",
            w.id,
            match &source.mirror {
                Mirror::Dir(p) => p.display().to_string(),
                _ => "the mirror".into(),
            }
        )));
    }
    let bundle = ctx.bundle()?;
    for (i, (name, plan)) in plans.iter_mut().enumerate() {
        let Some(nb) = bundle.nodes.get(name) else {
            continue;
        };
        let mut items = Vec::new();
        for (w, _) in &all {
            let Some(install) = install_for(w, &nb.binaries) else {
                continue;
            };
            // Spread the load: node i starts with seed i mod n.
            let mut urls: Vec<String> = Vec::new();
            for k in 0..seed_urls.len() {
                let base = &seed_urls[(i + k) % seed_urls.len()];
                urls.push(format!("{base}/{}", w.digest.hex()));
            }
            urls.extend(w.url.clone());
            items.push(FetchItem {
                id: w.id.clone(),
                digest: w.digest.clone(),
                urls,
                install,
                restarts: w.restarts.clone(),
            });
        }
        plan.fetch = FetchPlan { items };
    }
    Ok(seed_report)
}

/// The seed nodes: the first `artifacts.seeds` of the inventory.
fn seed_nodes<'a>(ctx: &Context, inv: &'a Inventory) -> Vec<&'a Node> {
    let n = ctx.loaded.profile.artifacts.seeds.unwrap_or(DEFAULT_SEEDS) as usize;
    inv.nodes.iter().take(n.max(1)).collect()
}

fn seed_unit(node: &Node, port: u16) -> String {
    format!(
        "# Rendered by k8sforge for {name}: serves verified artifact downloads to the cluster.\n\
         [Unit]\nDescription=k8sforge artifact seed\nAfter=network-online.target\n\n\
         [Service]\nExecStart=socat -T 60 TCP-LISTEN:{port},bind={ip},reuseaddr,fork EXEC:{SEED_SCRIPT}\n\
         Restart=always\nRestartSec=2\n\n[Install]\nWantedBy=multi-user.target\n",
        name = node.name,
        ip = node.internal_ip,
    )
}

fn bytes_file(path: &str, mode: u32, content: String, restarts: &[&str]) -> SyncFile {
    use sha2::Digest as _;
    let bytes = content.into_bytes();
    SyncFile {
        path: path.to_string(),
        mode,
        owner: "root:root".into(),
        sha256: hex::encode(sha2::Sha256::digest(&bytes)),
        source: FileSource::Bytes(std::sync::Arc::from(bytes.as_slice())),
        restarts: restarts.iter().map(|s| s.to_string()).collect(),
    }
}

/// Put every wanted artifact into the seeds' stores and start their servers. Returns the
/// seeding report and the seeds' base URLs (seeds that failed are left out; all failing is an
/// error naming each).
fn seed(
    ctx: &mut Context,
    inv: &Inventory,
    all: &[(Wanted, ResolvedArtifactOrImage)],
    step: &RemoteStep,
) -> Result<(PhaseReport, Vec<String>), PhaseError> {
    let port = ctx
        .loaded
        .profile
        .artifacts
        .seed_port
        .unwrap_or(DEFAULT_SEED_PORT);
    let seeds = seed_nodes(ctx, inv);
    let home = ctx.dir.root.parent().unwrap_or(&ctx.dir.root).to_path_buf();
    let cache = artifacts::Cache::new(&home);
    // What must be pushed (the source is a directory here): fetched into the local cache once.
    let mut pushed: Vec<SyncFile> = Vec::new();
    let mut fetched: Vec<FetchItem> = Vec::new();
    for (w, what) in all {
        let store_path = format!("{}/{}", fetch::NODE_STORE, w.digest.hex());
        match &w.url {
            Some(u) => fetched.push(FetchItem {
                id: w.id.clone(),
                digest: w.digest.clone(),
                urls: vec![u.clone()],
                install: Install::StoreOnly,
                restarts: Vec::new(),
            }),
            None => {
                let local = match (what, &w.local_file) {
                    (ResolvedArtifactOrImage::Artifact(art), _) => {
                        let mirror = match &ctx.mirror {
                            Some(m) => Mirror::parse(Some(m)),
                            None => Mirror::parse(ctx.loaded.profile.artifacts.mirror.as_deref()),
                        }
                        .map_err(|e| PhaseError::Failed(e.to_string()))?;
                        cache
                            .fetch(art, &mirror)
                            .map_err(|e| PhaseError::Failed(e.to_string()))?
                            .path
                    }
                    (ResolvedArtifactOrImage::Image, Some(p)) => {
                        cache
                            .fetch_from(
                                &artifacts::source::Location::File(p.clone()),
                                &w.digest,
                                &w.id,
                            )
                            .map_err(|e| PhaseError::Failed(e.to_string()))?
                            .path
                    }
                    (ResolvedArtifactOrImage::Image, None) => continue,
                };
                let sha256 = match &w.digest {
                    Digest::Sha256(h) => h.clone(),
                    Digest::Sha512(_) => sha256_of(&local)?,
                };
                pushed.push(SyncFile {
                    path: store_path,
                    mode: 0o644,
                    owner: "root:root".into(),
                    sha256,
                    source: FileSource::Local(local),
                    restarts: Vec::new(),
                });
            }
        }
    }
    let mut plans = BTreeMap::new();
    for s in &seeds {
        let mut files = pushed.clone();
        files.push(bytes_file(
            SEED_SCRIPT,
            0o755,
            fetch::seed_server_script(),
            &[SEED_UNIT],
        ));
        files.push(bytes_file(
            &format!("/etc/systemd/system/{SEED_UNIT}"),
            0o644,
            seed_unit(s, port),
            &[SEED_UNIT],
        ));
        // Pushed downloads need their `.ok` stamp, which the node writes after checking them.
        let mut commands = Vec::new();
        for f in &pushed {
            commands.push(format!(
                "stat -c '%i %s %.9Y %.9Z' -- {p} > {p}.ok",
                p = crate::remote::sync::shell_quote(&f.path)
            ));
        }
        plans.insert(
            s.name.clone(),
            NodePlan {
                files,
                units: vec![SEED_UNIT.to_string()],
                commands,
                fetch: FetchPlan {
                    items: fetched.clone(),
                },
            },
        );
    }
    let exec = super::step::executor(ctx)?;
    let label = format!("{} (seeds)", step.phase.as_str());
    let report = exec.apply_plans(inv, &plans, &label);
    let ok: Vec<&&Node> = seeds
        .iter()
        .filter(|s| report.nodes.iter().any(|n| n.node == s.name))
        .collect();
    if ok.is_empty() {
        return Err(PhaseError::Failed(format!(
            "no seed node could be seeded: {}",
            report
                .failed
                .iter()
                .map(|f| f.error.clone())
                .collect::<Vec<_>>()
                .join("; ")
        )));
    }
    for f in &report.failed {
        tracing::warn!(node = %f.node, error = %f.error, "seed node left out");
    }
    let urls = ok
        .iter()
        .map(|s| format!("http://{}:{port}", s.internal_ip))
        .collect();
    Ok((report, urls))
}

fn sha256_of(path: &std::path::Path) -> Result<String, PhaseError> {
    use sha2::Digest as _;
    use std::io::Read;
    let mut f = std::fs::File::open(path)
        .map_err(|e| PhaseError::Failed(format!("{}: {e}", path.display())))?;
    let mut h = sha2::Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        let n = f
            .read(&mut buf)
            .map_err(|e| PhaseError::Failed(format!("{}: {e}", path.display())))?;
        if n == 0 {
            break;
        }
        h.update(&buf[..n]);
    }
    Ok(hex::encode(h.finalize()))
}
