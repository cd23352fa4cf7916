//! The slice of the cluster one remote phase is responsible for (its own module so that the
//! remote step and the node-side fetch both read it without importing each other).

use super::{Context, PhaseError, PhaseName};
use crate::artifacts::Component;
use crate::inventory::Node;
use crate::remote::{Executor, ExecutorOptions};

/// The slice of the cluster one phase is responsible for.
pub struct RemoteStep {
    pub phase: PhaseName,
    /// Which nodes take part.
    pub nodes: fn(&Node) -> bool,
    /// Units this phase owns, in start order.
    pub units: &'static [&'static str],
    /// Files under these prefixes belong to the phase even when they restart nothing.
    pub path_prefixes: &'static [&'static str],
    /// Artifacts whose binaries the phase installs, with the units each restarts on change.
    pub components: &'static [(Component, &'static [&'static str])],
    /// Ship the cluster's image archives (imported by `k8sforge-images.service`).
    pub images: bool,
}

impl RemoteStep {
    pub(super) fn owns(&self, f: &crate::render::BundleFile) -> bool {
        f.restarts.iter().any(|u| self.units.contains(&u.as_str()))
            || self.path_prefixes.iter().any(|p| f.path.starts_with(p))
    }
}

/// The executor every remote phase uses (progress bars as the run asks).
pub fn executor(ctx: &Context) -> Result<Executor, PhaseError> {
    let defaults = ExecutorOptions::default();
    let opts = ExecutorOptions {
        progress: ctx.progress,
        concurrency: ctx
            .loaded
            .profile
            .ssh
            .concurrency
            .map_or(defaults.concurrency, |c| c as usize),
        ..defaults
    };
    Executor::new(&ctx.dir.root, opts).map_err(|e| PhaseError::Failed(e.to_string()))
}
