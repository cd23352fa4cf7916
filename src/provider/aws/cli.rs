//! The command-line edge of the AWS provider: `up --only provision` and `teardown [--dry-run]`.
//! Opens (and locks) the cluster's state directory, runs the async provider on a tokio runtime,
//! and records the provisioned inventory in state.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode};

use anyhow::{bail, Context, Result};

use super::AwsProvider;
use crate::inventory;
use crate::profile::LoadedProfile;
use crate::provider::ProvisionContext;
use crate::state::{ClusterDir, PhaseRecord};

fn runtime() -> Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")
}

/// The cluster's SSH key pair: the profile's key if it names one, else one generated with
/// ssh-keygen into the state directory (private key 0600, never printed). Returns the public key.
pub fn cluster_ssh_public_key(loaded: &LoadedProfile, cluster_dir: &Path) -> Result<String> {
    let private: PathBuf = match &loaded.profile.ssh.private_key {
        Some(k) => loaded.base_dir.join(k),
        None => {
            let dir = cluster_dir.join("ssh");
            crate::fsutil::ensure_dir(&dir, crate::fsutil::PRIVATE_DIR)
                .with_context(|| format!("creating {}", dir.display()))?;
            let key = dir.join("id_ed25519");
            if !key.exists() {
                let status = Command::new("ssh-keygen")
                    .args(["-q", "-t", "ed25519", "-N", "", "-C"])
                    .arg(format!("k8sforge-{}", loaded.profile.name))
                    .arg("-f")
                    .arg(&key)
                    .status()
                    .context("running ssh-keygen (install openssh-client) to create the cluster's SSH key")?;
                if !status.success() {
                    bail!("ssh-keygen failed to create {}", key.display());
                }
            }
            key
        }
    };
    let public = PathBuf::from(format!("{}.pub", private.display()));
    std::fs::read_to_string(&public)
        .with_context(|| format!("reading the cluster's SSH public key {}", public.display()))
}

pub fn provision(home: &Path, loaded: &LoadedProfile) -> Result<ExitCode> {
    let p = &loaded.profile;
    let dir = ClusterDir::open(home, &p.name)?;
    let mut st = dir.load_state()?;
    let planned = inventory::planned(p, &st.pod_cidrs)?;
    let key = cluster_ssh_public_key(loaded, &dir.root)?;
    let ctx = ProvisionContext {
        profile: p,
        planned: &planned,
        cluster_dir: dir.root.clone(),
        ssh_public_key: key,
    };
    let rt = runtime()?;
    let outcome = rt.block_on(async {
        let provider = AwsProvider::from_environment(p).await;
        provider.provision_outcome(&ctx).await
    })?;
    let inv = outcome.inventory;
    st.profile_source = loaded.source_name.clone();
    st.pod_cidrs = inv
        .nodes
        .iter()
        .map(|n| (n.name.clone(), n.pod_cidr))
        .collect();
    st.inventory = Some(inv.clone());
    st.phases.insert(
        "provision".into(),
        PhaseRecord {
            inputs: {
                use sha2::Digest;
                hex::encode(sha2::Sha256::digest(loaded.canonical_yaml.as_bytes()))
            },
            completed_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs().to_string())
                .unwrap_or_default(),
        },
    );
    dir.save_state(&st)?;
    eprintln!(
        "provisioned {}: {} nodes, {} resources created, API {}",
        p.name,
        inv.nodes.len(),
        outcome.created.len(),
        inv.api.url()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn teardown(home: &Path, loaded: &LoadedProfile, dry_run: bool) -> Result<ExitCode> {
    let p = &loaded.profile;
    let dir = ClusterDir::open(home, &p.name)?;
    let st = dir.load_state()?;
    let planned = inventory::planned(p, &st.pod_cidrs)?;
    let ctx = ProvisionContext {
        profile: p,
        planned: &planned,
        cluster_dir: dir.root.clone(),
        ssh_public_key: String::new(),
    };
    let rt = runtime()?;
    let report = rt.block_on(async {
        let provider = AwsProvider::from_environment(p).await;
        provider.teardown_report(&ctx, dry_run).await
    })?;
    eprintln!(
        "teardown {}: {} resources {}",
        p.name,
        report.deleted.len(),
        if dry_run {
            "would be deleted (dry run)"
        } else {
            "deleted"
        }
    );
    if !dry_run {
        let mut st = st;
        st.inventory = None;
        st.phases.remove("provision");
        dir.save_state(&st)?;
    }
    Ok(ExitCode::SUCCESS)
}
