//! `k8sforge teardown` for the static provider: the machines are the user's, so teardown removes
//! what k8sforge installed on them (`remote::uninstall`), node by node, and forgets the phases so
//! a later `up` installs everything again. `--dry-run` lists per node what would go.

use std::collections::BTreeSet;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use crate::artifacts::{self, ArtifactSource};
use crate::profile::LoadedProfile;
use crate::remote::uninstall::{self, UninstallPlan};
use crate::remote::{fanout, Executor, ExecutorOptions, RemoteError};
use crate::state::ClusterDir;

pub fn teardown(home: &Path, loaded: &LoadedProfile, dry_run: bool) -> Result<ExitCode> {
    let p = &loaded.profile;
    let dir = ClusterDir::open(home, &p.name)?;
    let mut st = dir.load_state()?;
    let Some(inv) = st.inventory.clone().filter(|i| !i.planned) else {
        eprintln!(
            "teardown {}: nothing was installed (no `up` recorded for this cluster)",
            p.name
        );
        return Ok(ExitCode::SUCCESS);
    };
    let pinned = artifacts::release(&p.kubernetes.version)
        .with_context(|| format!("no pinned release for Kubernetes {}", p.kubernetes.version))?;
    // Paths do not depend on where artifacts came from: the profile's source is enough.
    let source = ArtifactSource::from_profile(&p.artifacts, None, false)?;
    let release = artifacts::source::effective_release(pinned, &source).unwrap_or(pinned.clone());
    let images = artifacts::ImageRefs::for_source(pinned, &source)?;
    let bundle = crate::render::render_release(p, &inv, &dir.root, &release, &images)
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
        eprintln!(
            "teardown {} (dry run): would clean {} host(s); the hosts themselves stay",
            p.name,
            plans.len()
        );
        return Ok(ExitCode::SUCCESS);
    }

    let exec = Executor::new(
        &dir.root,
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
    for ((n, plan), r) in plans.iter().zip(results) {
        match r {
            Ok(()) => eprintln!(
                "  cleaned {}: {} units, {} files, {} directories",
                n.name,
                plan.units.len(),
                plan.files.len(),
                plan.dirs.len()
            ),
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
    // The hosts hold nothing of the cluster now: the next `up` must install everything again.
    st.phases.clear();
    st.applied_digests.clear();
    st.installed_artifacts.clear();
    dir.save_state(&st)?;
    eprintln!(
        "✓ teardown {}: removed what k8sforge installed from {} host(s); the hosts stay",
        p.name,
        plans.len()
    );
    Ok(ExitCode::SUCCESS)
}
