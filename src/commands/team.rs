//! `k8sforge team add|list|remove` and `k8sforge user add`, through the admin kubeconfig of the
//! cluster's state directory. Team objects are validated offline before anything is written:
//! built-in kinds against the Kubernetes types, Kueue's against the CRDs the cluster serves.

use std::path::{Path, PathBuf};

use ::kube::api::{Api, DeleteParams, ListParams};
use anyhow::{bail, Context as _, Result};
use k8s_openapi::api::core::v1::{Namespace, ResourceQuota};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Serialize;

use crate::kube::{self, ApplyReport, Cluster, KindSpec};
use crate::pki::layout;
use crate::profile::storage::StorageBackend;
use crate::training::storage;
use crate::training::teams::{self, Team, TEAM_LABEL};
use crate::training::users;
use k8s_openapi::api::storage::v1::StorageClass;

/// StorageClasses k8sforge manages carry this label.
const BACKEND_LABEL: (&str, &str) = crate::training::overlay::MANAGED_BY;

/// The CRDs of the Kueue kinds a team uses.
const KUEUE_CRDS: [&str; 3] = [
    "clusterqueues.kueue.x-k8s.io",
    "localqueues.kueue.x-k8s.io",
    "resourceflavors.kueue.x-k8s.io",
];

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

/// Connect with the cluster's admin kubeconfig (under `cluster_dir`).
pub async fn connect(cluster_dir: &Path) -> Result<Cluster> {
    let kc = layout::kubeconfig_path(cluster_dir, layout::ADMIN);
    Ok(kube::connect(&kc).await?)
}

/// The Kueue kinds the cluster serves (empty when Kueue is not installed).
pub async fn kueue_kinds(cluster: &Cluster) -> Result<Vec<KindSpec>> {
    let api: Api<CustomResourceDefinition> = Api::all(cluster.client.clone());
    let mut out = Vec::new();
    for name in KUEUE_CRDS {
        match api.get_opt(name).await {
            Ok(Some(crd)) => out.extend(KindSpec::from_crd(&crd, Some("v1beta2"))),
            Ok(None) => return Ok(Vec::new()),
            Err(e) => bail!("reading CRD {name}: {}", kube::client::error_chain(&e)),
        }
    }
    Ok(out)
}

/// The backends of the StorageClasses the `training` phase marked for datasets and checkpoints
/// (None: no such class, so no such PVC).
pub async fn storage_classes(
    cluster: &Cluster,
) -> Result<(Option<StorageBackend>, Option<StorageBackend>)> {
    let api: Api<StorageClass> = Api::all(cluster.client.clone());
    let list = api
        .list(&ListParams::default().labels(&format!("{}={}", BACKEND_LABEL.0, BACKEND_LABEL.1)))
        .await
        .map_err(|e| {
            anyhow::anyhow!("listing StorageClasses: {}", kube::client::error_chain(&e))
        })?;
    let pick = |label: &str| {
        list.items.iter().find_map(|sc| {
            let l = sc.metadata.labels.as_ref()?;
            (l.get(label).map(String::as_str) == Some("true"))
                .then(|| storage::backend_of_labels(l))
                .flatten()
        })
    };
    Ok((
        pick(storage::DATASETS_LABEL),
        pick(storage::CHECKPOINTS_LABEL),
    ))
}

/// Validate and apply `teams` (one connection). Returns the apply report.
pub async fn add_teams(cluster: &Cluster, teams_: &[Team]) -> Result<ApplyReport> {
    for t in teams_ {
        t.validate()?;
    }
    let kinds = kueue_kinds(cluster).await?;
    let kueue = !kinds.is_empty();
    let shared = teams::render_shared(kueue);
    let classes = storage_classes(cluster).await?;
    let rendered: Vec<(String, String)> = teams_
        .iter()
        .map(|t| {
            let pvcs = storage::render_team_pvcs(
                t.namespace(),
                &storage::TeamStorage {
                    datasets: classes.0,
                    checkpoints: classes.1,
                    dataset_size: t
                        .dataset_size
                        .clone()
                        .unwrap_or(teams::DEFAULT_PVC_SIZE.into()),
                    checkpoint_size: t
                        .checkpoint_size
                        .clone()
                        .unwrap_or(teams::DEFAULT_PVC_SIZE.into()),
                },
            );
            (
                format!("team-{}.yaml", t.name),
                teams::render(t, kueue) + &pvcs,
            )
        })
        .collect();
    let mut files = vec![("shared.yaml", shared.as_str())];
    files.extend(rendered.iter().map(|(n, y)| (n.as_str(), y.as_str())));
    let objects = kube::validate_all_with(files, &kinds)?;
    Ok(kube::apply(cluster, &objects).await?)
}

pub fn team_add(cluster_dir: &Path, team: &Team) -> Result<String> {
    team.validate()?;
    runtime()?.block_on(async {
        let cluster = connect(cluster_dir).await?;
        let kueue = !kueue_kinds(&cluster).await?.is_empty();
        let report = add_teams(&cluster, std::slice::from_ref(team)).await?;
        let written = report.count(kube::Change::Created) + report.count(kube::Change::Changed);
        Ok(format!(
            "team {}: namespace {}, {} GPU(s){}; {} objects applied, {written} written",
            team.name,
            team.namespace(),
            team.gpus,
            if kueue {
                format!(
                    ", Kueue ClusterQueue {} and LocalQueue {}/{}",
                    team.name,
                    team.name,
                    teams::LOCAL_QUEUE
                )
            } else {
                " (Kueue not installed: ResourceQuota only)".into()
            },
            report.objects.len()
        ))
    })
}

#[derive(Debug, Clone, Serialize)]
pub struct TeamRow {
    pub name: String,
    pub gpus_hard: String,
    pub gpus_used: String,
    pub cpu_hard: String,
    pub memory_hard: String,
}

pub async fn list_teams(cluster: &Cluster) -> Result<Vec<TeamRow>> {
    let ns: Api<Namespace> = Api::all(cluster.client.clone());
    let list = ns
        .list(&ListParams::default().labels(TEAM_LABEL))
        .await
        .map_err(|e| {
            anyhow::anyhow!("listing team namespaces: {}", kube::client::error_chain(&e))
        })?;
    let mut rows = Vec::new();
    for n in list.items {
        let name = n.metadata.name.unwrap_or_default();
        let rq: Api<ResourceQuota> = Api::namespaced(cluster.client.clone(), &name);
        let q = rq.get_opt("team-quota").await.ok().flatten();
        let status = q.and_then(|q| q.status).unwrap_or_default();
        let get = |m: &Option<
            std::collections::BTreeMap<
                String,
                k8s_openapi::apimachinery::pkg::api::resource::Quantity,
            >,
        >,
                   k: &str| {
            m.as_ref()
                .and_then(|m| m.get(k))
                .map(|q| q.0.clone())
                .unwrap_or_else(|| "-".into())
        };
        rows.push(TeamRow {
            gpus_hard: get(&status.hard, "requests.nvidia.com/gpu"),
            gpus_used: get(&status.used, "requests.nvidia.com/gpu"),
            cpu_hard: get(&status.hard, "requests.cpu"),
            memory_hard: get(&status.hard, "requests.memory"),
            name,
        });
    }
    rows.sort_by(|a, b| a.name.cmp(&b.name));
    Ok(rows)
}

pub fn team_list(cluster_dir: &Path, json: bool) -> Result<String> {
    let rows = runtime()?.block_on(async {
        let cluster = connect(cluster_dir).await?;
        list_teams(&cluster).await
    })?;
    if json {
        return Ok(serde_json::to_string_pretty(&rows)?);
    }
    let mut out = format!(
        "{:<24} {:>10} {:>10} {:>10} {:>12}\n",
        "TEAM", "GPUS", "GPUS-USED", "CPU", "MEMORY"
    );
    for r in &rows {
        out += &format!(
            "{:<24} {:>10} {:>10} {:>10} {:>12}\n",
            r.name, r.gpus_hard, r.gpus_used, r.cpu_hard, r.memory_hard
        );
    }
    Ok(out)
}

/// Delete a team: its ClusterQueue (with Kueue) and its namespace (everything in it).
pub async fn remove_team(cluster: &Cluster, name: &str) -> Result<()> {
    let ns: Api<Namespace> = Api::all(cluster.client.clone());
    let found = ns.get_opt(name).await.map_err(|e| {
        anyhow::anyhow!(
            "reading namespace {name}: {}",
            kube::client::error_chain(&e)
        )
    })?;
    let Some(found) = found else {
        bail!("team {name:?} does not exist (no namespace {name})");
    };
    let is_team = found
        .metadata
        .labels
        .is_some_and(|l| l.get(TEAM_LABEL).map(String::as_str) == Some(name));
    if !is_team {
        bail!("namespace {name} is not a k8sforge team (no {TEAM_LABEL}={name} label); refusing to delete it");
    }
    let kinds = kueue_kinds(cluster).await?;
    if let Some(cq) = kinds.iter().find(|k| k.resource.kind == "ClusterQueue") {
        let api: Api<::kube::core::DynamicObject> =
            Api::all_with(cluster.client.clone(), &cq.resource);
        match api.delete(name, &DeleteParams::default()).await {
            Ok(_) => {}
            Err(::kube::Error::Api(s)) if s.code == 404 => {}
            Err(e) => bail!(
                "deleting ClusterQueue {name}: {}",
                kube::client::error_chain(&e)
            ),
        }
    }
    ns.delete(name, &DeleteParams::default())
        .await
        .map_err(|e| {
            anyhow::anyhow!(
                "deleting namespace {name}: {}",
                kube::client::error_chain(&e)
            )
        })?;
    Ok(())
}

pub fn team_remove(cluster_dir: &Path, name: &str) -> Result<String> {
    runtime()?.block_on(async {
        let cluster = connect(cluster_dir).await?;
        remove_team(&cluster, name).await
    })?;
    Ok(format!("team {name}: namespace and queue deleted"))
}

/// Where `user add` writes a user's kubeconfig by default.
pub fn default_user_kubeconfig(cluster_dir: &Path, user: &str) -> PathBuf {
    cluster_dir.join("users").join(format!("{user}.kubeconfig"))
}

/// Issue a certificate for `user` in `team` and write their kubeconfig (0600) to `out`.
pub async fn add_user(
    cluster: &Cluster,
    admin_kubeconfig: &Path,
    user: &str,
    team: &str,
    days: u32,
    out: &Path,
) -> Result<()> {
    users::validate_name(user)?;
    let text = std::fs::read_to_string(admin_kubeconfig)
        .with_context(|| format!("reading {}", admin_kubeconfig.display()))?;
    let admin: crate::pki::kubeconfig::Kubeconfig =
        serde_yaml_ng::from_str(&text).map_err(|e| users::UserError::AdminKubeconfig {
            path: admin_kubeconfig.display().to_string(),
            message: e.to_string(),
        })?;
    let (cert, key) = users::issue(cluster, user, team, days).await?;
    let kc = users::kubeconfig(&admin, user, team, &cert, &key);
    let yaml = crate::pki::kubeconfig::to_yaml(&kc)?;
    if let Some(dir) = out.parent() {
        if !dir.as_os_str().is_empty() {
            crate::fsutil::ensure_dir(dir, crate::fsutil::PRIVATE_DIR)
                .with_context(|| format!("creating {}", dir.display()))?;
        }
    }
    crate::fsutil::write_atomic(out, yaml.as_bytes(), crate::fsutil::SECRET)
        .with_context(|| format!("writing {}", out.display()))?;
    Ok(())
}

pub fn user_add(
    cluster_dir: &Path,
    user: &str,
    team: &str,
    days: u32,
    out: Option<&Path>,
) -> Result<String> {
    users::validate_name(user)?;
    let out = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| default_user_kubeconfig(cluster_dir, user));
    let admin = layout::kubeconfig_path(cluster_dir, layout::ADMIN);
    runtime()?.block_on(async {
        let cluster = kube::connect(&admin).await?;
        add_user(&cluster, &admin, user, team, days, &out).await
    })?;
    Ok(format!(
        "user {user} (team {team}): kubeconfig written to {} (namespace {team}; valid {days} days)",
        out.display()
    ))
}

fn cluster_dir(home: &Path, profile: &crate::cli::ProfileArgs) -> Result<PathBuf> {
    let loaded = crate::commands::load_profile(profile)?;
    let dir = home.join(&loaded.profile.name);
    if !layout::kubeconfig_path(&dir, layout::ADMIN).exists() {
        bail!(
            "cluster {} has no admin kubeconfig under {}: run `k8sforge up` first",
            loaded.profile.name,
            dir.display()
        );
    }
    Ok(dir)
}

/// `k8sforge team …`.
pub fn team_command(home: &Path, cmd: crate::cli::TeamCommand) -> Result<std::process::ExitCode> {
    use crate::cli::TeamCommand;
    match cmd {
        TeamCommand::Add {
            profile,
            name,
            gpus,
            cpu,
            memory,
            cohort,
            borrowing_limit,
            dataset_size,
            checkpoint_size,
        } => {
            let team = Team {
                name,
                gpus,
                cpu,
                memory,
                cohort,
                borrowing_limit,
                dataset_size,
                checkpoint_size,
            };
            // A bad team is refused before anything else is looked at.
            team.validate()?;
            let dir = cluster_dir(home, &profile)?;
            eprintln!("{}", team_add(&dir, &team)?);
        }
        TeamCommand::List { profile, output } => {
            let dir = cluster_dir(home, &profile)?;
            print!(
                "{}",
                team_list(&dir, output == crate::cli::OutputFormat::Json)?
            );
        }
        TeamCommand::Remove { profile, name } => {
            let dir = cluster_dir(home, &profile)?;
            eprintln!("{}", team_remove(&dir, &name)?);
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

/// `k8sforge user …`.
pub fn user_command(home: &Path, cmd: crate::cli::UserCommand) -> Result<std::process::ExitCode> {
    let crate::cli::UserCommand::Add {
        profile,
        user,
        team,
        out,
        days,
    } = cmd;
    users::validate_name(&user)?;
    if !(1..=365).contains(&days) {
        return Err(users::UserError::Days(days).into());
    }
    let dir = cluster_dir(home, &profile)?;
    eprintln!("{}", user_add(&dir, &user, &team, days, out.as_deref())?);
    Ok(std::process::ExitCode::SUCCESS)
}
