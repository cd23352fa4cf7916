//! `plan`: compute the cluster offline (PKI, kubeconfigs, every node's files, add-on manifests),
//! write the bundle, and say what would change on nodes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{Context, Result};

use super::inputs::{inventory_for, load_profile};
use crate::cli::{OutputFormat, ProfileArgs};
use crate::inventory::Role;
use crate::state::ClusterDir;
use crate::{addons, pki, render};

#[derive(serde::Serialize)]
struct PlanSummary {
    cluster: String,
    provider: String,
    kubernetes: String,
    nodes: BTreeMap<String, usize>,
    addresses_planned: bool,
    pod_cidr: String,
    service_cidr: String,
    api_endpoint: String,
    certificates_issued: Vec<String>,
    certificates_reused: usize,
    /// Kept certificates due for renewal (`certs rotate` renews them; `plan` never does).
    certificates_due: Vec<pki::DueCert>,
    bundle_dir: PathBuf,
    bundle_files: usize,
    bundle_files_changed: usize,
    /// Files that differ from the last plan (added, changed or removed), against state.
    changed_since_last_plan: usize,
    /// True when the comparison is against what `up` installed, false against the last plan.
    compared_with_applied: bool,
}

pub fn run(
    home: &Path,
    args: &ProfileArgs,
    out: Option<&Path>,
    output: OutputFormat,
) -> Result<ExitCode> {
    // Validate everything before touching the state directory.
    let loaded = load_profile(args)?;
    let p = &loaded.profile;
    let dir = ClusterDir::open(home, &p.name)?;
    let mut st = dir.load_state()?;
    let inv = inventory_for(&loaded, &st)?;

    let pki_report = pki::ensure(p, &inv, &dir.root)?;
    let bundle = render::render(p, &inv, &dir.root)?;
    let out_dir = out
        .map(Path::to_path_buf)
        .unwrap_or_else(|| dir.root.join("bundle"));
    let written = bundle
        .write_to(&out_dir)
        .with_context(|| format!("writing bundle to {}", out_dir.display()))?;
    let addon_manifests = addons::write_for_plan(p, &out_dir)?;

    // Against what `up` installed when it ran, else against the previous plan.
    let digests = bundle.digests();
    let (baseline, against_applied) = if st.applied_digests.is_empty() {
        (&st.bundle_digests, false)
    } else {
        (&st.applied_digests, true)
    };
    let changed = digests
        .iter()
        .filter(|(k, v)| baseline.get(*k) != Some(v))
        .count()
        + baseline
            .keys()
            .filter(|k| !digests.contains_key(*k))
            .count();
    st.profile_source = loaded.source_name.clone();
    st.pod_cidrs = inv
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.pod_cidr))
        .collect();
    if st.inventory.as_ref().is_none_or(|i| i.planned) {
        st.inventory = Some(inv.clone());
    }
    st.bundle_digests = digests;
    dir.save_state(&st)?;

    let mut nodes = BTreeMap::new();
    for role in [Role::ControlPlane, Role::Etcd, Role::Worker] {
        nodes.insert(role.to_string(), inv.count(role));
    }
    let summary = PlanSummary {
        cluster: p.name.clone(),
        provider: p.provider.kind.as_str().to_string(),
        kubernetes: p.kubernetes.version.clone(),
        nodes,
        addresses_planned: inv.planned,
        pod_cidr: format!(
            "{} (/{} per node)",
            p.network.pod_cidr, p.network.pod_prefix_per_node
        ),
        service_cidr: p.network.service_cidr.to_string(),
        api_endpoint: inv.api.url(),
        certificates_issued: pki_report.issued.clone(),
        certificates_reused: pki_report.reused,
        certificates_due: pki_report.due.clone(),
        bundle_dir: out_dir.clone(),
        bundle_files: written.files,
        bundle_files_changed: written.changed,
        changed_since_last_plan: changed,
        compared_with_applied: against_applied,
    };
    if let Some(w) = pki_report.due_warning(&loaded.cli_arg()) {
        eprintln!("{w}");
    }
    match output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&summary)?),
        OutputFormat::Text => {
            eprintln!(
                "plan {} ({} provider, Kubernetes {})",
                summary.cluster, summary.provider, summary.kubernetes
            );
            eprintln!(
                "  nodes:      {} control-plane, {} etcd, {} worker{}",
                summary.nodes["control-plane"],
                summary.nodes["etcd"],
                summary.nodes["worker"],
                if inv.planned {
                    " (addresses planned; real ones come from provision)"
                } else {
                    ""
                }
            );
            eprintln!("  pods:       {}", summary.pod_cidr);
            eprintln!("  services:   {}", summary.service_cidr);
            eprintln!("  API:        {}", summary.api_endpoint);
            eprintln!(
                "  PKI:        {} issued, {} reused",
                summary.certificates_issued.len(),
                summary.certificates_reused
            );
            eprintln!(
                "  bundle:     {} files for {} nodes in {} ({} written)",
                summary.bundle_files,
                bundle.nodes.len(),
                out_dir.display(),
                summary.bundle_files_changed
            );
            eprintln!(
                "  add-ons:    {} manifests in {}",
                addon_manifests.len(),
                out_dir.join("addons").display()
            );
            eprintln!(
                "  vs {}: {} file(s) would change on nodes",
                if against_applied {
                    "last up"
                } else {
                    "last plan"
                },
                summary.changed_since_last_plan
            );
        }
    }
    Ok(ExitCode::SUCCESS)
}
