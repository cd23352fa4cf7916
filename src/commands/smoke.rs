//! `k8sforge smoke`: the training smoke jobs in a team's namespace (see `training::smoke` and
//! `training::smoke_run`), one after the other, with a pass/fail line per job and a non-zero
//! exit when any failed.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use ::kube::api::Api;
use anyhow::{bail, Context as _, Result};
use k8s_openapi::api::core::v1::{Namespace, PersistentVolumeClaim};

use crate::artifacts::{self, ClusterImage, ImageRefs};
use crate::cli::{OutputFormat, SmokeArgs};
use crate::kube::Cluster;
use crate::training::smoke::{self, SmokeJob, SmokeSpec};
use crate::training::{smoke_run, storage, teams};

/// The smoke image the artifact source lists (it is never pulled from a registry).
pub fn smoke_image(args: &SmokeArgs, profile: &crate::profile::Profile) -> Result<String> {
    let release = artifacts::release(&profile.kubernetes.version).with_context(|| {
        format!(
            "no pinned release for Kubernetes {}",
            profile.kubernetes.version
        )
    })?;
    let source = artifacts::ArtifactSource::from_profile(
        &profile.artifacts,
        args.mirror.as_deref(),
        args.trust_mirror_checksums,
    )?;
    let refs = ImageRefs::for_source(release, &profile.artifacts.images, &source)?;
    if refs.smoke == ClusterImage::Smoke.default_reference(release) {
        bail!(
            "the artifact source lists no {} image: the smoke workload is k8sforge's own program, \
             imported on the nodes from the mirror's images list (build it with `cargo build -p \
             k8sforge-smoke` statically and pack it as an OCI archive into the mirror, see README \
             \"Smoke\"), then run `k8sforge up --only runtime --mirror DIR` and pass the same --mirror here",
            ClusterImage::Smoke.name()
        );
    }
    Ok(refs.smoke)
}

async fn team_exists(cluster: &Cluster, team: &str) -> Result<bool> {
    let ns: Api<Namespace> = Api::all(cluster.client.clone());
    let found = ns.get_opt(team).await.map_err(|e| {
        anyhow::anyhow!(
            "reading namespace {team}: {}",
            crate::kube::client::error_chain(&e)
        )
    })?;
    Ok(found.is_some_and(|n| {
        n.metadata
            .labels
            .is_some_and(|l| l.contains_key(teams::TEAM_LABEL))
    }))
}

pub fn run(home: &Path, args: &SmokeArgs) -> Result<ExitCode> {
    if let Some(binary) = &args.pack_image {
        let Some(dir) = args.mirror.as_deref().filter(|m| !m.contains("://")) else {
            bail!(
                "--pack-image needs --mirror DIR: the directory mirror to add the smoke image to"
            );
        };
        let e = artifacts::smoke_image::add_to_mirror(
            Path::new(dir),
            binary,
            &artifacts::smoke_image::default_reference(),
        )
        .map_err(anyhow::Error::msg)?;
        eprintln!(
            "smoke image {} added to {dir} ({}, sha256 {})",
            e.reference, e.file, e.sha256
        );
        return Ok(ExitCode::SUCCESS);
    }
    let loaded = crate::commands::load_profile(&args.profile)?;
    let p = &loaded.profile;
    let requested: Vec<SmokeJob> = args
        .jobs
        .iter()
        .map(|j| {
            SmokeJob::parse(j).with_context(|| {
                format!(
                    "--jobs: unknown job {j:?}; allowed: {}",
                    SmokeJob::ALL.map(SmokeJob::as_str).join(", ")
                )
            })
        })
        .collect::<Result<_>>()?;
    if args.epochs == 0 {
        bail!("--epochs 0: the smoke program needs at least one epoch");
    }
    let image = smoke_image(args, p)?;
    let dir = home.join(&p.name);
    let gpu_nodes: u32 = p
        .workers
        .iter()
        .filter(|w| w.gpus_per_node > 0)
        .map(|w| w.count)
        .sum();
    let gpus_per_node = p.workers.iter().map(|w| w.gpus_per_node).max().unwrap_or(0);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")?;
    let outcomes = rt.block_on(async {
        let cluster = crate::commands::team::connect(&dir).await?;
        if !team_exists(&cluster, &args.team).await? {
            bail!(
                "team {:?} does not exist: create it first (`k8sforge team add {} --gpus 0`)",
                args.team,
                args.team
            );
        }
        let candidates = if requested.is_empty() {
            SmokeJob::ALL.to_vec()
        } else {
            requested.clone()
        };
        let (kinds, missing) = smoke_run::served_kinds(&cluster, &candidates).await?;
        let explicit_missing: Vec<_> = missing.iter().filter(|j| requested.contains(j)).collect();
        if let Some(j) = explicit_missing.first() {
            bail!(
                "--jobs {}: the cluster serves no {} (CRD {}): install its operator with the `training` phase",
                j.as_str(),
                j.api().1,
                smoke_run::crd_name(**j)
            );
        }
        let pvcs: Api<PersistentVolumeClaim> = Api::namespaced(cluster.client.clone(), &args.team);
        let checkpoint_pvc = pvcs
            .get_opt(storage::CHECKPOINT_PVC)
            .await
            .ok()
            .flatten()
            .map(|_| storage::CHECKPOINT_PVC.to_string());
        let kueue = !crate::commands::team::kueue_kinds(&cluster).await?.is_empty();
        let spec = SmokeSpec {
            namespace: args.team.clone(),
            image,
            workers: args.workers,
            epochs: args.epochs,
            kueue,
            checkpoint_pvc,
            gpu_nodes,
            gpus_per_node,
            nccl_image: args.nccl_image.clone(),
        };
        let mut rendered = Vec::new();
        let mut skipped: Vec<smoke_run::JobOutcome> = missing
            .iter()
            .map(|j| smoke_run::JobOutcome {
                job: *j,
                name: j.name(),
                passed: true,
                reason: format!("skipped: the cluster serves no {}", j.api().1),
                seconds: 0.0,
                report: None,
                bus_bandwidth_gbps: None,
            })
            .collect();
        for j in candidates.into_iter().filter(|j| !missing.contains(j)) {
            match smoke::render(&spec, j) {
                Some(v) => rendered.push((j, v)),
                None => skipped.push(smoke_run::JobOutcome {
                    job: j,
                    name: j.name(),
                    passed: !requested.contains(&j),
                    reason: if gpu_nodes == 0 {
                        "skipped: no GPU workers in the profile".into()
                    } else {
                        "skipped: no --nccl-image (an image with mpirun and nccl-tests' all_reduce_perf)".into()
                    },
                    seconds: 0.0,
                    report: None,
                    bus_bandwidth_gbps: None,
                }),
            }
        }
        let objects = smoke_run::validate(&rendered, &kinds)?;
        let mut outcomes = skipped;
        for (j, o) in rendered.iter().map(|(j, _)| *j).zip(&objects) {
            eprintln!("smoke: {} {} …", j.api().1, o.reference().name);
            outcomes.push(
                smoke_run::run_job(
                    &cluster,
                    j,
                    o,
                    args.workers,
                    Duration::from_secs(args.timeout),
                    args.keep,
                )
                .await,
            );
        }
        Ok::<_, anyhow::Error>(outcomes)
    })?;
    let failed = outcomes.iter().any(|o| !o.passed);
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&outcomes)?),
        OutputFormat::Text => {
            for o in &outcomes {
                println!(
                    "{:<6} {:<9} {:<24} {:>6.1} s  {}",
                    if o.passed { "PASS" } else { "FAIL" },
                    o.job.as_str(),
                    o.name,
                    o.seconds,
                    o.reason
                );
            }
        }
    }
    Ok(if failed {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    })
}
