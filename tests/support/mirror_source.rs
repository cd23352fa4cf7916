//! The source a test builds a mirror from with `k8sforge mirror --from`: the test mirror's
//! upstream-layout files (hard links; its image list cleared, so images come from a registry),
//! stand-ins for the Kubernetes downloads when no real binaries are given, and the training
//! stack's upstream files (symbolic links to the test data beside the repository).

use std::path::{Path, PathBuf};
use std::process::Command;

use k8sforge::artifacts::source::MirrorEntry;
use k8sforge::artifacts::Component;
use k8sforge_testkit::mirror::TestMirror;
use sha2::Digest as _;

/// The training stack's upstream files (as tests/training_apply.rs finds them).
pub fn upstream_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("K8SFORGE_TEST_UPSTREAM")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/upstream"));
    dir.join("raw.githubusercontent.com")
        .is_dir()
        .then_some(dir)
}

/// See the module doc. `stand_ins`: add text stand-ins for the Kubernetes server archive, kubelet,
/// kubectl and crictl of `kube` (the base mirror has none of them).
pub fn source_tree(m: &TestMirror, kube: &str, stand_ins: bool) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    assert!(Command::new("cp")
        .arg("-al")
        .arg(format!("{}/.", m.root.display()))
        .arg(dir.path())
        .status()
        .unwrap()
        .success());
    let mut list = m.manifest.clone();
    list.images.clear();
    let crictl = k8sforge::artifacts::release(kube).unwrap().crictl;
    let mut fake = vec![(Component::Crictl, crictl)];
    if stand_ins {
        fake.extend([
            (Component::KubernetesServer, kube),
            (Component::Kubelet, kube),
            (Component::Kubectl, kube),
        ]);
    }
    for (c, version) in fake {
        if list.artifacts.iter().any(|e| e.name == c.name()) {
            continue;
        }
        let url = c.url(version);
        let p = dir.path().join(url.trim_start_matches("https://"));
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        let bytes = format!("stand-in for {c} {version}\n").repeat(1000);
        std::fs::write(&p, &bytes).unwrap();
        list.artifacts.push(MirrorEntry {
            name: c.name().into(),
            version: version.into(),
            url,
            sha256: hex::encode(sha2::Sha256::digest(bytes.as_bytes())),
        });
    }
    let lp = dir.path().join(k8sforge::artifacts::MIRROR_MANIFEST_NAME);
    std::fs::remove_file(&lp).unwrap();
    std::fs::write(&lp, serde_json::to_vec_pretty(&list).unwrap()).unwrap();
    if let Some(up) = upstream_dir() {
        assert!(Command::new("cp")
            .arg("-rs")
            .arg(up.join("raw.githubusercontent.com"))
            .arg(dir.path())
            .status()
            .unwrap()
            .success());
    }
    dir
}
