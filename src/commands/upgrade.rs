//! `upgrade --to vX.Y.Z`: flags → options, the locked state directory, output.

use std::path::Path;
use std::process::ExitCode;
use std::time::Duration;

use anyhow::Result;

use crate::cli::{OutputFormat, ProfileArgs};
use crate::profile;
use crate::state::ClusterDir;
use crate::upgrade::{self, UpgradeOptions, UpgradeReport};

pub struct UpgradeArgs<'a> {
    pub profile: &'a ProfileArgs,
    pub to: &'a str,
    pub batch: usize,
    pub dry_run: bool,
    pub mirror: Option<String>,
    pub trust_mirror_checksums: bool,
    pub output: OutputFormat,
}

pub fn run(home: &Path, args: &UpgradeArgs) -> Result<ExitCode> {
    let as_given = super::inputs::load_profile(args.profile)?;
    if !profile::site_release::is_known(args.to, &as_given.profile.kubernetes.extra_releases) {
        anyhow::bail!(
            "--to {}: k8sforge has no release row for this version (built-in: {}{}); for a site's own builds add a kubernetes.extraReleases entry to the profile (see README, \"Upgrades\")",
            args.to,
            crate::artifacts::RELEASES
                .iter()
                .map(|r| r.kubernetes)
                .collect::<Vec<_>>()
                .join(", "),
            as_given
                .profile
                .kubernetes
                .extra_releases
                .iter()
                .map(|r| format!("; profile: {}", r.kubernetes))
                .collect::<String>()
        );
    }
    if args.batch == 0 {
        anyhow::bail!("--batch 0: a batch has at least one node");
    }
    // The profile at the target version: what every step renders and installs.
    let mut sets = args.profile.sets.clone();
    sets.push(format!("kubernetes.version={}", args.to));
    let mut loaded = profile::load(&args.profile.profile, &sets)?;
    ClusterDir::existing(home, &loaded.profile.name)?;
    let dir = ClusterDir::open(home, &loaded.profile.name)?;
    let st = dir.load_state()?;
    super::inputs::apply_worker_counts(&mut loaded, &st);
    let opts = UpgradeOptions {
        batch: args.batch,
        dry_run: args.dry_run,
        mirror: args.mirror.clone(),
        trust_mirror_checksums: args.trust_mirror_checksums,
        progress: args.output == OutputFormat::Text
            && std::io::IsTerminal::is_terminal(&std::io::stderr()),
        verify_timeout: Duration::from_secs(180),
    };
    if !args.dry_run {
        eprintln!(
            "Upgrading cluster {:?} to Kubernetes {} ...",
            loaded.profile.name, args.to
        );
    }
    let report = upgrade::run(&loaded, &dir, &opts)?;
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Text => print(&report),
    }
    if report.ok && !args.dry_run && as_given.profile.kubernetes.version != args.to {
        eprintln!(
            "note: set kubernetes.version: {} in the profile (it says {}): `up` and `node add` refuse a profile that names another version than the cluster runs",
            args.to, as_given.profile.kubernetes.version
        );
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print(r: &UpgradeReport) {
    if r.dry_run {
        println!(
            "upgrade {} from {} to {} (dry run{}): {} step(s), in this order:",
            r.cluster,
            r.from,
            r.to,
            if r.resumed { ", resuming" } else { "" },
            r.plan.steps.len()
        );
        print!("{}", upgrade::plan::describe(&r.plan));
        for d in &r.deprecated_apis {
            println!("note: deprecated API in use: {}", d.describe());
        }
        if r.resumed {
            println!("({} step(s) already done)", r.steps_done_before);
        }
        println!("dry run: nothing was changed");
        return;
    }
    if let Some(m) = &r.message {
        if r.ok {
            eprintln!("{m} in {:.1} s", r.elapsed_secs);
        } else {
            eprintln!("k8sforge: {m}");
        }
    }
}
