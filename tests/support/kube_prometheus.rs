//! Where tests find kube-prometheus's release files laid out as an upstream mirror
//! (`<dir>/raw.githubusercontent.com/prometheus-operator/kube-prometheus/<tag>/manifests/…`).
//! No package registry CI reaches carries them unmodified (npm and PyPI have only generated
//! models of the CRDs), so they come from `K8SFORGE_TEST_KUBE_PROMETHEUS`, else
//! `../shared/upstream` when it holds them; tests skip with one line otherwise. DEVELOPERS.md
//! says how to export them from the release tags.

use std::path::{Path, PathBuf};

pub const VAR: &str = "K8SFORGE_TEST_KUBE_PROMETHEUS";

pub fn dir() -> Option<PathBuf> {
    let has = |d: &Path| {
        d.join("raw.githubusercontent.com/prometheus-operator/kube-prometheus")
            .is_dir()
    };
    if let Some(d) = std::env::var_os(VAR).map(PathBuf::from) {
        assert!(
            has(&d),
            "{VAR}={} has no raw.githubusercontent.com/prometheus-operator/kube-prometheus/",
            d.display()
        );
        return Some(d);
    }
    let shared = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/upstream");
    has(&shared).then_some(shared)
}

pub fn skip_line() -> String {
    format!(
        "skipped: no kube-prometheus release files (set {VAR} to a mirror root holding raw.githubusercontent.com/prometheus-operator/kube-prometheus/<tag>/manifests, see DEVELOPERS.md)"
    )
}
