//! `kubeconfig`: merge the cluster's admin kubeconfig into ~/.kube/config (or `--out`).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Result;

use super::inputs::load_profile;
use crate::cli::ProfileArgs;
use crate::kubeconfig_merge;
use crate::pki::layout;
use crate::state::ClusterDir;

pub fn run(home: &Path, args: &ProfileArgs, out: Option<PathBuf>) -> Result<ExitCode> {
    let loaded = load_profile(args)?;
    let root = ClusterDir::existing(home, &loaded.profile.name)?;
    let admin = layout::kubeconfig_path(&root, layout::ADMIN);
    if !admin.exists() {
        anyhow::bail!(
            "cluster {} has no admin kubeconfig yet ({}): run `k8sforge up` (or `k8sforge plan`) first",
            loaded.profile.name,
            admin.display()
        );
    }
    let target = out.unwrap_or_else(kubeconfig_merge::default_target);
    let context = kubeconfig_merge::merge_into(&admin, &target)?;
    eprintln!("Set kubectl context to {context:?} in {}", target.display());
    Ok(ExitCode::SUCCESS)
}
