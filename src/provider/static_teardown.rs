//! `k8sforge teardown` for the static provider: the machines are the user's, so teardown removes
//! what k8sforge installed on them (`remote::uninstall`), node by node; the facade then forgets
//! the phases so a later `up` installs everything again. `--dry-run` lists per node what would go.

use std::collections::BTreeSet;
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::TeardownReport;
use crate::artifacts::{self, ArtifactSource};
use crate::profile::Profile;
use crate::remote::uninstall::{self, UninstallPlan};
use crate::remote::{fanout, Executor, ExecutorOptions, RemoteError};
use crate::state::load_state_at;

/// One report entry per host: the hosts stay, k8sforge's installation on them goes.
const KIND: &str = "installation";

fn entry(node: &str, plan: &UninstallPlan) -> (String, String) {
    (
        KIND.to_string(),
        format!(
            "{node} ({} units, {} files, {} directories)",
            plan.units.len(),
            plan.files.len(),
            plan.dirs.len()
        ),
    )
}

pub fn teardown(cluster_dir: &Path, p: &Profile, dry_run: bool) -> Result<TeardownReport> {
    // The facade holds the cluster directory's lock; the state is only read here.
    let st = load_state_at(&cluster_dir.join("state.json"))?;
    let Some(inv) = st.inventory.clone().filter(|i| !i.planned) else {
        eprintln!(
            "teardown {}: nothing was installed (no `up` recorded for this cluster)",
            p.name
        );
        return Ok(TeardownReport {
            deleted: Vec::new(),
            dry_run,
        });
    };
    let pinned = artifacts::release(&p.kubernetes.version)
        .with_context(|| format!("no pinned release for Kubernetes {}", p.kubernetes.version))?;
    // Paths do not depend on where artifacts came from: the profile's source is enough.
    let source = ArtifactSource::from_profile(&p.artifacts, None, false)?;
    let release = artifacts::source::effective_release(pinned, &source).unwrap_or(*pinned);
    let images = artifacts::ImageRefs::for_source(pinned, &p.artifacts.images, &source)?;
    let bundle = crate::render::render_release(p, &inv, cluster_dir, &release, &images)
        .context("rendering the bundle to know what k8sforge installed")?;

    let plans: Vec<(crate::inventory::Node, UninstallPlan)> = inv
        .nodes
        .iter()
        .filter_map(|n| {
            let nb = bundle.nodes.get(&n.name)?;
            let arts: BTreeSet<String> = st
                .installed_artifacts
                .values()
                .filter(|r| r.nodes.contains(&n.name))
                .flat_map(|r| r.paths.iter().cloned())
                .collect();
            Some((n.clone(), uninstall::plan(&n.name, nb, &arts)))
        })
        .collect();

    if dry_run {
        for (n, plan) in &plans {
            eprintln!("{} ({}):", n.name, n.ssh.host);
            for l in plan.lines() {
                eprintln!("  would remove {l}");
            }
        }
        // The per-host detail; the facade prints one line per host from the report.
        for (n, plan) in &plans {
            eprintln!("{} ({}):", n.name, n.ssh.host);
            for l in plan.lines() {
                eprintln!("  would remove {l}");
            }
        }
        return Ok(TeardownReport {
            deleted: plans.iter().map(|(n, plan)| entry(&n.name, plan)).collect(),
            dry_run,
        });
    }

    let exec = Executor::new(
        cluster_dir,
        ExecutorOptions {
            progress: std::io::IsTerminal::is_terminal(&std::io::stderr()),
            ..ExecutorOptions::default()
        },
    )?;
    let opts = exec.options().clone();
    let results = fanout::parallel_each(
        &plans,
        opts.concurrency,
        "teardown",
        opts.progress,
        None,
        |(node, plan)| -> Result<(), RemoteError> {
            let conn = exec.connect(node)?;
            let out = conn.exec(&uninstall::script(plan, &node.ssh.user), opts.unit_timeout)?;
            let left = conn.exec(&uninstall::leftovers_script(plan), opts.command_timeout)?;
            if !left.stdout.trim().is_empty() {
                return Err(RemoteError::Config {
                    node: node.name.clone(),
                    reason: format!(
                        "still present after teardown: {}{}",
                        left.stdout.trim().replace('\n', ", "),
                        if out.stderr.trim().is_empty() {
                            String::new()
                        } else {
                            format!(" ({})", out.stderr.trim().replace('\n', "; "))
                        }
                    ),
                });
            }
            Ok(())
        },
    );
    let mut failed = Vec::new();
    let mut deleted = Vec::new();
    for ((n, plan), r) in plans.iter().zip(results) {
        match r {
            Ok(()) => deleted.push(entry(&n.name, plan)),
            Err(e) => failed.push((n.name.clone(), e.to_string())),
        }
    }
    if !failed.is_empty() {
        for (n, e) in &failed {
            eprintln!("  ✗ {n}: {e}");
        }
        bail!(
            "teardown {}: {} of {} host(s) not cleaned; run it again when they are reachable",
            p.name,
            failed.len(),
            plans.len()
        );
    }
    // The facade forgets the phases and what was applied: the next `up` installs everything.
    Ok(TeardownReport {
        deleted,
        dry_run: false,
    })
}
