//! The training stack (issue 14): Kubeflow training-operator v1, Trainer v2 on JobSet, and Kueue,
//! rendered from their pinned upstream kustomize trees by a real kustomize plus k8sforge's own
//! overlays, validated offline (Kubernetes types and the CRDs' own schemas), and applied by the
//! `training` phase.

pub mod install;
pub mod kustomize;
pub mod overlay;
pub mod smoke;
pub mod smoke_run;
pub mod stack;
pub mod storage;
pub mod storage_apply;
pub mod teams;
pub mod upstream;
pub mod users;

use std::path::Path;

use crate::artifacts::source::{ArtifactError, Mirror};
use crate::artifacts::ImageRefs;

pub use kustomize::{Kustomize, KustomizeError};
pub use stack::Component;

#[derive(Debug, thiserror::Error)]
pub enum TrainingError {
    #[error(transparent)]
    Artifact(#[from] ArtifactError),
    #[error(transparent)]
    Kustomize(#[from] KustomizeError),
    #[error("{}: {source}", path.display())]
    Io {
        path: std::path::PathBuf,
        source: std::io::Error,
    },
}

/// One component rendered to multi-document YAML.
#[derive(Debug, Clone)]
pub struct Rendered {
    pub component: Component,
    /// `training/<component>.yaml`, for messages and `plan --out`.
    pub name: String,
    pub yaml: String,
}

/// Fetch the trees the `components` need through `mirror` into the cache under `home`, write
/// k8sforge's overlays beside them, and render each with `kustomize`.
pub fn render(
    home: &Path,
    mirror: &Mirror,
    kustomize: &Kustomize,
    components: &[Component],
    images: &ImageRefs,
) -> Result<Vec<Rendered>, TrainingError> {
    let mut out = Vec::new();
    for &c in components {
        let tree = upstream::materialize(home, mirror, c.tree())?;
        let dir = tree.base.join("k8sforge").join(c.name());
        let io = |path: &Path| {
            let path = path.to_path_buf();
            move |source| TrainingError::Io { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let image = c.image().map(|i| images.get(i));
        let k = overlay::kustomization(c, &tree, &dir, image, components);
        let mut files = overlay::extra_files(c);
        files.push(("kustomization.yaml", k.to_string()));
        for (name, text) in files {
            let path = dir.join(name);
            crate::fsutil::write_atomic(&path, text.as_bytes(), crate::fsutil::PUBLIC)
                .map_err(io(&path))?;
        }
        let yaml = kustomize.build(&dir)?;
        out.push(Rendered {
            component: c,
            name: format!("training/{}.yaml", c.name()),
            yaml,
        });
    }
    Ok(out)
}
