//! What most verbs start from: the profile (built-in or file, with `--set` overrides) and the
//! cluster's inventory.

use anyhow::{Context, Result};

use crate::cli::ProfileArgs;
use crate::inventory::{self, Inventory};
use crate::profile::{self, LoadedProfile};
use crate::state;

pub fn load_profile(args: &ProfileArgs) -> Result<LoadedProfile> {
    Ok(profile::load(&args.profile, &args.sets)?)
}

/// Worker group sizes `node add`/`node remove` recorded in the state win over the profile's;
/// a line says so when they differ, so the operator knows where the count comes from.
pub fn apply_worker_counts(loaded: &mut LoadedProfile, st: &state::State) {
    for g in loaded.profile.workers.iter_mut() {
        if let Some(&n) = st.worker_counts.get(&g.name) {
            if n != g.count {
                eprintln!(
                    "note: worker group {} has {n} node(s), set by `k8sforge node add/remove` (the profile says {})",
                    g.name, g.count
                );
                g.count = n;
            }
        }
    }
}

/// The inventory for offline work: the provider's recorded one if provisioned, else planned.
pub fn inventory_for(loaded: &LoadedProfile, st: &state::State) -> Result<Inventory> {
    if let Some(inv) = &st.inventory {
        if !inv.planned {
            return Ok(inv.clone());
        }
    }
    match loaded.profile.provider.kind {
        profile::ProviderKind::Static => {
            let spec = loaded
                .profile
                .provider
                .static_hosts
                .as_ref()
                .context("provider.static is missing")?;
            let path = loaded.base_dir.join(&spec.inventory);
            Ok(crate::provider::static_hosts::load(
                &path,
                &loaded.profile,
                &st.pod_cidrs,
            )?)
        }
        _ => Ok(inventory::planned(&loaded.profile, &st.pod_cidrs)?),
    }
}
