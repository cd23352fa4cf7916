//! Release rows a site adds for Kubernetes builds k8sforge has no built-in row for (its own
//! vetted builds of a patch release, say), from the profile's `kubernetes.extraReleases`.
//!
//! A row is registered once per run, after the profile validated it; from then on
//! `artifacts::release` and the pins find it like a built-in one. Rows live for the rest of the
//! process, so they are leaked into `&'static` once each (a run registers a handful at most).

use std::sync::{Mutex, MutexGuard};

use super::{Component, Digest, Release};

struct Registered {
    rows: Vec<&'static Release>,
    pins: Vec<(Component, String, Digest)>,
}

static REGISTERED: Mutex<Registered> = Mutex::new(Registered {
    rows: Vec::new(),
    pins: Vec::new(),
});

fn registered() -> MutexGuard<'static, Registered> {
    // A panic while holding the lock leaves plain data behind: still usable.
    REGISTERED.lock().unwrap_or_else(|e| e.into_inner())
}

fn leak(s: &str) -> &'static str {
    Box::leak(s.to_string().into_boxed_str())
}

/// One site row: the Kubernetes version, the row its other components are taken from, the
/// components it names differently, and the digests of the site's files.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SiteRow {
    pub kubernetes: String,
    pub based_on: &'static Release,
    /// (component, version) replacing `based_on`'s (never a Kubernetes binary: those follow
    /// `kubernetes`).
    pub versions: Vec<(Component, String)>,
    pub checksums: Vec<(Component, Digest)>,
}

impl SiteRow {
    pub fn release(&self) -> Release {
        let mut r = *self.based_on;
        r.kubernetes = leak(&self.kubernetes);
        for (c, v) in &self.versions {
            let v = leak(v);
            match c {
                Component::Etcd => r.etcd = v,
                Component::Containerd => r.containerd = v,
                Component::Runc => r.runc = v,
                Component::CniPlugins => r.cni_plugins = v,
                Component::Crictl => r.crictl = v,
                Component::KubernetesServer | Component::Kubelet | Component::Kubectl => {}
            }
        }
        r
    }
}

/// Make `row` known to `release()` and its checksums to the pins. Registering the same version
/// again replaces nothing (the first registration of a run wins; the profile is loaded once).
pub fn register(row: &SiteRow) {
    let mut reg = registered();
    if reg.rows.iter().any(|r| r.kubernetes == row.kubernetes)
        || super::RELEASES
            .iter()
            .any(|r| r.kubernetes == row.kubernetes)
    {
        return;
    }
    let release: &'static Release = Box::leak(Box::new(row.release()));
    for (c, d) in &row.checksums {
        let version = c.version_in(release).trim_start_matches('v').to_string();
        reg.pins.push((*c, version, d.clone()));
    }
    reg.rows.push(release);
}

pub(super) fn find(kubernetes: &str) -> Option<&'static Release> {
    registered()
        .rows
        .iter()
        .copied()
        .find(|r| r.kubernetes == kubernetes)
}

pub(super) fn versions() -> Vec<&'static str> {
    registered().rows.iter().map(|r| r.kubernetes).collect()
}

/// A site checksum for `component` at `version` (without `v`).
pub(super) fn pinned(component: Component, bare_version: &str) -> Option<Digest> {
    registered()
        .pins
        .iter()
        .find(|(c, v, _)| *c == component && v == bare_version)
        .map(|(_, _, d)| d.clone())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_registered_row_is_a_release_with_its_pins() {
        let base = super::super::release("v1.28.7").unwrap();
        let row = SiteRow {
            kubernetes: "v1.28.91".into(),
            based_on: base,
            versions: vec![(Component::Etcd, "v3.5.99".into())],
            checksums: vec![(Component::Kubelet, Digest::Sha256("ab".repeat(32)))],
        };
        register(&row);
        let r = super::super::release("v1.28.91").unwrap();
        assert_eq!(r.etcd, "v3.5.99");
        assert_eq!(r.containerd, base.containerd);
        assert_eq!(
            pinned(Component::Kubelet, "1.28.91"),
            Some(Digest::Sha256("ab".repeat(32)))
        );
        // Components the row does not sum stay unpinned: a clear NotPinned later (the pins
        // module's lookup falls back to this one: tests/artifacts and site_release check it).
        assert_eq!(pinned(Component::Kubectl, "1.28.91"), None);
        assert!(super::super::known_kubernetes_versions().contains(&"v1.28.91"));
    }
}
