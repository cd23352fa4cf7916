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
