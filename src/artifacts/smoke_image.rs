//! The smoke image (`k8sforge-smoke`) in a directory mirror: k8sforge's own static smoke program
//! packed as a single-layer OCI archive under `images/`, listed in the mirror's
//! `k8sforge-artifacts.json`, from where the `runtime` phase ships it to every node and imports
//! it like the pause image. No registry ever serves it.

use std::path::Path;

use super::images::{ClusterImage, MirrorImage, SMOKE_IMAGE_TAG};
use super::source::{MirrorManifest, MIRROR_MANIFEST};

/// The reference the image is listed and imported under.
pub fn default_reference() -> String {
    format!("k8sforge.local/k8sforge-smoke:{SMOKE_IMAGE_TAG}")
}

fn sha256_file(path: &Path) -> Result<String, String> {
    use sha2::{Digest, Sha256};
    let bytes = std::fs::read(path).map_err(|e| format!("{}: {e}", path.display()))?;
    Ok(hex::encode(Sha256::digest(&bytes)))
}

/// Pack `binary` (static; it is the whole image, as `/bin/k8sforge-smoke`) into the directory
/// mirror `dir` under `reference`, replacing an earlier smoke entry. Other entries are kept.
pub fn add_to_mirror(dir: &Path, binary: &Path, reference: &str) -> Result<MirrorImage, String> {
    let name = binary.file_name().and_then(|n| n.to_str()).unwrap_or("");
    if name != "k8sforge-smoke" {
        return Err(format!(
            "{}: the smoke program's file must be named k8sforge-smoke (it becomes /bin/k8sforge-smoke in the image)",
            binary.display()
        ));
    }
    let list = dir.join(MIRROR_MANIFEST);
    let mut manifest: MirrorManifest = match std::fs::read(&list) {
        Ok(b) => serde_json::from_slice(&b).map_err(|e| format!("{}: {e}", list.display()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => MirrorManifest {
            artifacts: Vec::new(),
            images: Vec::new(),
        },
        Err(e) => return Err(format!("{}: {e}", list.display())),
    };
    let file = format!("images/{}.tar", ClusterImage::Smoke.name());
    let archive = dir.join(&file);
    if let Some(d) = archive.parent() {
        std::fs::create_dir_all(d).map_err(|e| format!("{}: {e}", d.display()))?;
    }
    let tmp = archive.with_extension("tar.partial");
    super::oci_pack::build_archive(binary, &[], &["/bin/k8sforge-smoke"], reference, &tmp)?;
    std::fs::rename(&tmp, &archive).map_err(|e| format!("{}: {e}", archive.display()))?;
    let entry = MirrorImage {
        name: ClusterImage::Smoke.name().to_string(),
        reference: reference.to_string(),
        file,
        sha256: sha256_file(&archive)?,
    };
    manifest.images.retain(|i| i.name != entry.name);
    manifest.images.push(entry.clone());
    let text = serde_json::to_vec_pretty(&manifest).map_err(|e| e.to_string())?;
    crate::fsutil::write_atomic(&list, &text, crate::fsutil::PUBLIC)
        .map_err(|e| format!("{}: {e}", list.display()))?;
    Ok(entry)
}
