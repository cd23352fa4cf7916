//! Upstream files pinned one by one (`<host>/<path> <sha256>` lists), fetched through the
//! artifact source into the digest-named cache and laid out as a tree under
//! `<cache>/trees/<host>/<path>` for the code that reads them as a directory (kustomize, the
//! monitoring stack). A file whose bytes differ from its pin is refused, whatever the mirror says.

use std::path::{Path, PathBuf};

use super::source::{ArtifactError, Cache, Mirror};
use super::Digest;

/// Parse a pin list: `<host>/<path> <sha256>` per line, `#` comments and blank lines skipped.
pub fn parse_pins(text: &'static str) -> impl Iterator<Item = (&'static str, Digest)> {
    text.lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .filter_map(|l| {
            let (path, sum) = l.split_once(' ')?;
            Some((path, Digest::parse(sum.trim())?))
        })
}

/// Where a tree was laid out and how much was read for it.
#[derive(Debug, Clone)]
pub struct LaidOut {
    /// `<cache>/trees`: holds `<host>/<path>` of every file.
    pub base: PathBuf,
    /// Files read from the artifact source on this call (0 when everything was cached).
    pub fetched: usize,
}

/// Fetch every file of `files` from `mirror` into the cache under `home` (verified) and lay it
/// out under `<cache>/trees`. Files already there with the pinned digest are left alone;
/// anything else at a file's place is replaced.
pub fn lay_out(
    home: &Path,
    mirror: &Mirror,
    files: &[(&str, Digest)],
) -> Result<LaidOut, ArtifactError> {
    let cache = Cache::new(home);
    let base = cache.root.join("trees");
    let mut fetched = 0;
    for (path, digest) in files {
        let dest = base.join(path);
        if file_has_digest(&dest, digest) {
            continue;
        }
        let url = format!("https://{path}");
        let name = path.rsplit('/').next().unwrap_or(path);
        let got = cache.fetch_from(&mirror.location(&url), digest, name)?;
        if !got.hit {
            fetched += 1;
        }
        place(&got.path, &dest)?;
    }
    Ok(LaidOut { base, fetched })
}

fn file_has_digest(path: &Path, digest: &Digest) -> bool {
    use sha2::Digest as _;
    let Ok(bytes) = std::fs::read(path) else {
        return false;
    };
    match digest {
        Digest::Sha256(h) => hex::encode(sha2::Sha256::digest(&bytes)) == *h,
        Digest::Sha512(h) => hex::encode(sha2::Sha512::digest(&bytes)) == *h,
    }
}

/// Copy a verified cache file to its place in the tree (temp file + rename).
fn place(from: &Path, dest: &Path) -> Result<(), ArtifactError> {
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| ArtifactError::Io { path, source }
    };
    let dir = dest.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    let tmp = dir.join(format!(
        ".{}.tmp",
        dest.file_name().and_then(|n| n.to_str()).unwrap_or("file")
    ));
    std::fs::copy(from, &tmp).map_err(io(&tmp))?;
    std::fs::rename(&tmp, dest).map_err(io(dest))?;
    Ok(())
}
