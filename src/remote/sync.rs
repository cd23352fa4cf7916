//! What to send to a node and what to restart: compare the node's current files (one remote
//! call: sha256, mode, owner of every target path) with the plan, upload only what differs, and
//! derive the unit restarts from what changed. Everything here except the scripts' execution is
//! pure, so the decisions are testable without a node.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::sync::Arc;

use crate::artifacts::InstalledFile;
use crate::render::bundle::{BundleFile, NodeBundle};

/// Where the bytes of a file come from: rendered content, or a local file (artifacts, streamed).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum FileSource {
    Bytes(Arc<[u8]>),
    Local(PathBuf),
}

/// One file to place on a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncFile {
    /// Absolute path on the node.
    pub path: String,
    pub mode: u32,
    /// `user:group`, names or numeric ids.
    pub owner: String,
    pub sha256: String,
    pub source: FileSource,
    /// Units to restart when this file changes.
    pub restarts: Vec<String>,
}

impl SyncFile {
    pub fn from_bundle(f: &BundleFile) -> SyncFile {
        SyncFile {
            path: f.path.clone(),
            mode: f.mode,
            owner: f.owner.clone(),
            sha256: f.sha256(),
            source: FileSource::Bytes(Arc::from(f.content.as_slice())),
            restarts: f.restarts.clone(),
        }
    }

    /// An extracted artifact file (root-owned, streamed from the local cache).
    pub fn from_installed(f: &InstalledFile, restarts: &[&str]) -> SyncFile {
        SyncFile {
            path: f.path.clone(),
            mode: f.mode,
            owner: "root:root".into(),
            sha256: f.sha256.clone(),
            source: FileSource::Local(f.local.clone()),
            restarts: restarts.iter().map(|s| s.to_string()).collect(),
        }
    }
}

/// Everything one node receives in a phase.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NodePlan {
    pub files: Vec<SyncFile>,
    /// Units to enable and start, in order.
    pub units: Vec<String>,
    /// Idempotent shell commands run after the files are in place, before units start.
    pub commands: Vec<String>,
    /// Artifacts the node downloads itself (after the files, before the commands).
    pub fetch: super::fetch::FetchPlan,
}

impl From<&NodeBundle> for NodePlan {
    fn from(nb: &NodeBundle) -> NodePlan {
        NodePlan {
            files: nb.files.iter().map(SyncFile::from_bundle).collect(),
            units: nb.units.clone(),
            commands: nb.commands.clone(),
            fetch: Default::default(),
        }
    }
}

/// A target file as found on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteFile {
    pub sha256: String,
    pub mode: u32,
    /// `user:group` by name.
    pub owner_names: String,
    /// `uid:gid`.
    pub owner_ids: String,
}

/// What to do with one file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FileAction {
    Skip,
    /// Content differs or the file is missing.
    Upload,
    /// Content is right; mode or owner is not.
    FixMeta,
}

pub fn decide(want: &SyncFile, have: Option<&RemoteFile>) -> FileAction {
    match have {
        None => FileAction::Upload,
        Some(h) if h.sha256 != want.sha256 => FileAction::Upload,
        Some(h)
            if h.mode != want.mode & 0o7777
                || (h.owner_names != want.owner && h.owner_ids != want.owner) =>
        {
            FileAction::FixMeta
        }
        Some(_) => FileAction::Skip,
    }
}

/// POSIX shell single-quoting.
pub use super::shell::shell_quote;

/// Paths, owners and unit names go into shell scripts and the line-oriented state listing:
/// allow only what real configs use.
pub fn validate(plan: &NodePlan) -> Result<(), String> {
    let path_ok = |p: &str| {
        p.starts_with('/')
            && !p.ends_with('/')
            && !p.split('/').any(|c| c == ".." || c == ".")
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "/._-+@:=".contains(c))
    };
    let name_ok = |s: &str| {
        !s.is_empty()
            && s.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-@\\:".contains(c))
    };
    let mut seen = BTreeSet::new();
    for f in &plan.files {
        if !path_ok(&f.path) {
            return Err(format!(
                "file path {:?} is not allowed: absolute, no `.`/`..` components, characters [A-Za-z0-9/._-+@:=] only",
                f.path
            ));
        }
        if !seen.insert(f.path.as_str()) {
            return Err(format!("file path {} appears twice", f.path));
        }
        let owner_ok = matches!(f.owner.split_once(':'), Some((u, g)) if name_ok(u) && name_ok(g));
        if !owner_ok {
            return Err(format!(
                "owner {:?} of {} is not `user:group`",
                f.owner, f.path
            ));
        }
        if f.mode > 0o7777 {
            return Err(format!("mode {:o} of {} is out of range", f.mode, f.path));
        }
        for u in &f.restarts {
            if !name_ok(u) {
                return Err(format!(
                    "unit name {u:?} (restarts of {}) is not valid",
                    f.path
                ));
            }
        }
    }
    for u in &plan.units {
        if !name_ok(u) {
            return Err(format!("unit name {u:?} is not valid"));
        }
    }
    Ok(())
}

/// Parent directories of the targets, deduplicated.
fn parents(paths: &[&str]) -> Vec<String> {
    let set: BTreeSet<&str> = paths
        .iter()
        .filter_map(|p| p.rsplit_once('/').map(|(d, _)| d))
        .filter(|d| !d.is_empty())
        .collect();
    set.into_iter().map(str::to_string).collect()
}

/// Prefix of the state lines, so noise a login shell prints (profile scripts) is ignored.
const STATE_TAG: &str = "k8sforge-state";

/// One remote call: create missing parent directories, remove temp files an interrupted run
/// left behind, then print one line per target:
/// `k8sforge-state F <sha256> <octal mode> <user:group> <uid:gid> <path>`, or
/// `k8sforge-state M <path>` when absent.
///
/// Hashing every target on every run costs a full read of each binary (hundreds of MiB on a
/// worker). So the node keeps a digest cache, `digest_cache`, of lines
/// `<inode> <size> <mtime ns> <ctime ns> <sha256> <path>`: a file whose inode, size, mtime and
/// ctime all match its line is not read again (git's index does the same). Any write, rename,
/// chmod or chown changes ctime, which cannot be set back by userspace, so a changed file is
/// always hashed. A file changed less than 2 s before it was recorded is not cached (a write in
/// the same timestamp tick could go unseen), so a fresh upload is hashed once more on the next
/// run and cached from then on. The cache is only an accelerator: unreadable or unwritable, it is
/// ignored.
pub fn state_script(paths: &[&str], digest_cache: &str) -> String {
    let mut s = String::from("set -u\n");
    let dirs = parents(paths);
    if !dirs.is_empty() {
        s.push_str("mkdir -p --");
        for d in &dirs {
            s.push(' ');
            s.push_str(&shell_quote(d));
        }
        s.push_str(" || exit 1\n");
    }
    if !paths.is_empty() {
        // Temp files an interrupted run left next to its targets.
        s.push_str("rm -f --");
        for p in paths {
            s.push(' ');
            s.push_str(&shell_quote(&temp_path(p)));
        }
        s.push('\n');
    }
    let cache = shell_quote(digest_cache);
    s.push_str(&format!(
        "cache={cache}\nmkdir -p -- \"${{cache%/*}}\" 2>/dev/null\n\
         new=$(mktemp \"$cache.XXXXXX\" 2>/dev/null) || new=/dev/null\n\
         now=$(date +%s)\n"
    ));
    s.push_str("for p in");
    for p in paths {
        s.push(' ');
        s.push_str(&shell_quote(p));
    }
    s.push_str(concat!(
        "; do\n",
        "  if [ -f \"$p\" ] && [ ! -L \"$p\" ]; then\n",
        "    st=$(stat -c '%i %s %.9Y %.9Z %a %U:%G %u:%g' -- \"$p\") || exit 1\n",
        "    set -- $st\n",
        "    key=\"$1 $2 $3 $4\"; meta=\"$5 $6 $7\"; ct=${4%%.*}\n",
        "    h=$(awk -v k=\"$key\" -v p=\"$p\" '$1\" \"$2\" \"$3\" \"$4 == k && $6 == p { print $5; exit }' \"$cache\" 2>/dev/null)\n",
        "    if [ -z \"$h\" ]; then h=$(sha256sum < \"$p\") || exit 1; h=${h%% *}; fi\n",
        "    if [ $((now - ct)) -ge 2 ]; then printf '%s %s %s\\n' \"$key\" \"$h\" \"$p\" >> \"$new\"; fi\n",
        "    printf 'k8sforge-state F %s %s %s\\n' \"$h\" \"$meta\" \"$p\"\n",
        "  else\n",
        "    printf 'k8sforge-state M %s\\n' \"$p\"\n",
        "  fi\n",
        "done\n",
        "[ \"$new\" = /dev/null ] || mv -f -- \"$new\" \"$cache\" 2>/dev/null || rm -f -- \"$new\"\n",
    ));
    s
}

/// Parse `state_script` output.
pub fn parse_state(out: &str) -> Result<BTreeMap<String, RemoteFile>, String> {
    let mut map = BTreeMap::new();
    for line in out.lines() {
        let Some(line) = line
            .strip_prefix(STATE_TAG)
            .and_then(|l| l.strip_prefix(' '))
        else {
            continue;
        };
        let parts: Vec<&str> = line.splitn(6, ' ').collect();
        match parts.as_slice() {
            ["M", _path] => {}
            ["F", sha, mode, names, ids, path] => {
                let mode = u32::from_str_radix(mode, 8)
                    .map_err(|_| format!("bad mode {mode:?} in state line {line:?}"))?;
                if sha.len() != 64 {
                    return Err(format!("bad sha256 in state line {line:?}"));
                }
                map.insert(
                    (*path).to_string(),
                    RemoteFile {
                        sha256: (*sha).to_string(),
                        mode,
                        owner_names: (*names).to_string(),
                        owner_ids: (*ids).to_string(),
                    },
                );
            }
            _ => return Err(format!("unexpected state line {line:?}")),
        }
    }
    Ok(map)
}

/// Temp name next to the target (same filesystem, so the rename is atomic).
pub fn temp_path(path: &str) -> String {
    match path.rsplit_once('/') {
        Some((dir, name)) => format!("{dir}/.{name}.k8sforge-tmp"),
        None => format!(".{path}.k8sforge-tmp"),
    }
}

/// After uploads: verify each temp file's sha256, set owner and mode, rename over the target
/// (atomic), fsync the directories; for metadata-only changes, set owner and mode in place.
///
/// `staged` are uploads a non-root login wrote to its own staging directory: each is first moved
/// to its temp path next to the target (same filesystem as the target from then on).
pub fn finalize_script(
    staged: &[(String, String)],
    uploads: &[&SyncFile],
    fix_meta: &[&SyncFile],
) -> String {
    let mut s = String::from("set -eu\n");
    for (from, to) in staged {
        s.push_str(&format!(
            "mv -f -- {} {}\n",
            shell_quote(from),
            shell_quote(to)
        ));
    }
    if !uploads.is_empty() {
        // One "OK" line per verified file: progress for the executor's no-progress bound
        // (hashing hundreds of MiB on a loaded node is slow, not stuck).
        s.push_str("sha256sum -c - <<'K8SFORGE_SUMS'\n");
        for f in uploads {
            s.push_str(&format!("{}  {}\n", f.sha256, temp_path(&f.path)));
        }
        s.push_str("K8SFORGE_SUMS\n");
    }
    for f in uploads {
        let tmp = shell_quote(&temp_path(&f.path));
        s.push_str(&format!(
            "chown {} {tmp}\nchmod {:04o} {tmp}\nmv -f -- {tmp} {}\n",
            shell_quote(&f.owner),
            f.mode,
            shell_quote(&f.path)
        ));
    }
    if !uploads.is_empty() {
        // Make the renames durable: fsync the directories that changed.
        let paths: Vec<&str> = uploads.iter().map(|f| f.path.as_str()).collect();
        s.push_str("sync --");
        for d in parents(&paths) {
            s.push(' ');
            s.push_str(&shell_quote(&d));
        }
        s.push('\n');
    }
    for f in fix_meta {
        let p = shell_quote(&f.path);
        s.push_str(&format!(
            "chown {} {p}\nchmod {:04o} {p}\n",
            shell_quote(&f.owner),
            f.mode
        ));
    }
    s
}

/// Which units to restart after a sync, and whether systemd must reload unit files.
#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize)]
pub struct RestartPlan {
    pub daemon_reload: bool,
    /// Units to restart: those in the plan's start order first, then the rest by name.
    pub restart: Vec<String>,
}

const UNIT_DIRS: &[&str] = &[
    "/etc/systemd/system/",
    "/lib/systemd/system/",
    "/usr/lib/systemd/system/",
];

/// The unit a path defines or configures: `/etc/systemd/system/etcd.service` → etcd.service,
/// `/etc/systemd/system/containerd.service.d/10-x.conf` → containerd.service.
pub fn unit_of_path(path: &str) -> Option<String> {
    let rest = UNIT_DIRS.iter().find_map(|d| path.strip_prefix(d))?;
    match rest.split_once('/') {
        None => Some(rest.to_string()),
        Some((dropin, file)) if file.ends_with(".conf") && !file.contains('/') => {
            dropin.strip_suffix(".d").map(str::to_string)
        }
        Some(_) => None,
    }
}

/// The restart decision: a unit restarts only when one of its files changed (listed in the
/// file's `restarts`, or the unit file / a drop-in of it changed); daemon-reload when any unit
/// file or drop-in changed.
pub fn restart_plan(
    files: &[SyncFile],
    changed: &BTreeSet<String>,
    units: &[String],
) -> RestartPlan {
    let mut reload = false;
    let mut wanted: BTreeSet<String> = BTreeSet::new();
    for f in files.iter().filter(|f| changed.contains(&f.path)) {
        wanted.extend(f.restarts.iter().cloned());
        if let Some(u) = unit_of_path(&f.path) {
            reload = true;
            wanted.insert(u);
        }
    }
    let mut restart: Vec<String> = units
        .iter()
        .filter(|u| wanted.contains(*u))
        .cloned()
        .collect();
    for u in &wanted {
        if !restart.contains(u) {
            restart.push(u.clone());
        }
    }
    RestartPlan {
        daemon_reload: reload,
        restart,
    }
}

/// systemd steps after a sync: daemon-reload if needed, then each unit of the plan in order —
/// restarted when its files changed, else enabled and started (a no-op when already running) —
/// then restarts of units outside the start list. Those belong to another phase (a CA shared by
/// the apiserver and kubelet, say) and may not be installed yet: `try-restart` restarts them only
/// when they run.
pub fn units_script(rp: &RestartPlan, units: &[String]) -> Option<String> {
    if units.is_empty() && rp.restart.is_empty() && !rp.daemon_reload {
        return None;
    }
    let mut s = String::from("set -eu\n");
    if rp.daemon_reload {
        s.push_str("systemctl daemon-reload\n");
    }
    for u in units {
        let q = shell_quote(u);
        if rp.restart.contains(u) {
            s.push_str(&format!("systemctl enable -q {q}\nsystemctl restart {q}\n"));
        } else {
            s.push_str(&format!("systemctl enable -q --now {q}\n"));
        }
        // Progress for the no-progress bound: each unit has that long, not all of them together.
        s.push_str(&format!("echo k8sforge-unit {q} up\n"));
    }
    for u in rp.restart.iter().filter(|u| !units.contains(u)) {
        // Exit status 5: the unit is not installed (yet) — nothing to restart.
        s.push_str(&format!(
            "systemctl try-restart {} || test $? -eq 5\n",
            shell_quote(u)
        ));
    }
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(path: &str, content: &[u8], restarts: &[&str]) -> SyncFile {
        SyncFile::from_bundle(&BundleFile {
            path: path.into(),
            mode: 0o644,
            owner: "root:root".into(),
            content: content.to_vec(),
            restarts: restarts.iter().map(|s| s.to_string()).collect(),
        })
    }

    fn set(v: &[&str]) -> BTreeSet<String> {
        v.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn restarts_only_units_whose_files_changed() {
        let files = vec![
            file("/etc/etcd/etcd.pem", b"cert", &["etcd.service"]),
            file(
                "/etc/containerd/config.toml",
                b"cfg",
                &["containerd.service"],
            ),
            file("/etc/systemd/system/kubelet.service", b"[Unit]", &[]),
            file("/etc/cni/net.d/10-bridge.conf", b"{}", &[]),
        ];
        let units: Vec<String> = ["etcd.service", "containerd.service", "kubelet.service"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        // Nothing changed: nothing restarts, no reload.
        assert_eq!(
            restart_plan(&files, &set(&[]), &units),
            RestartPlan::default()
        );
        // A file without restarts changed: still nothing.
        assert_eq!(
            restart_plan(&files, &set(&["/etc/cni/net.d/10-bridge.conf"]), &units),
            RestartPlan::default()
        );
        // The containerd config changed: only containerd, no reload.
        assert_eq!(
            restart_plan(&files, &set(&["/etc/containerd/config.toml"]), &units),
            RestartPlan {
                daemon_reload: false,
                restart: vec!["containerd.service".into()]
            }
        );
        // A unit file changed: reload and restart that unit; order follows the start list.
        assert_eq!(
            restart_plan(
                &files,
                &set(&["/etc/systemd/system/kubelet.service", "/etc/etcd/etcd.pem"]),
                &units
            ),
            RestartPlan {
                daemon_reload: true,
                restart: vec!["etcd.service".into(), "kubelet.service".into()]
            }
        );
    }

    #[test]
    fn units_script_restarts_changed_and_starts_the_rest() {
        let units = vec!["etcd.service".to_string(), "kubelet.service".to_string()];
        let rp = RestartPlan {
            daemon_reload: true,
            restart: vec!["kubelet.service".into(), "containerd.service".into()],
        };
        let s = units_script(&rp, &units).unwrap();
        assert_eq!(
            s,
            "set -eu\nsystemctl daemon-reload\nsystemctl enable -q --now 'etcd.service'\n\
             echo k8sforge-unit 'etcd.service' up\n\
             systemctl enable -q 'kubelet.service'\nsystemctl restart 'kubelet.service'\n\
             echo k8sforge-unit 'kubelet.service' up\n\
             systemctl try-restart 'containerd.service' || test $? -eq 5\n"
        );
        assert_eq!(units_script(&RestartPlan::default(), &[]), None);
    }

    #[test]
    fn unit_paths_and_dropins() {
        assert_eq!(
            unit_of_path("/etc/systemd/system/etcd.service").as_deref(),
            Some("etcd.service")
        );
        assert_eq!(
            unit_of_path("/etc/systemd/system/containerd.service.d/10-cgroup.conf").as_deref(),
            Some("containerd.service")
        );
        assert_eq!(unit_of_path("/etc/etcd/etcd.conf"), None);
    }

    #[test]
    fn decides_per_file() {
        let f = file("/etc/a", b"x", &[]);
        let same = RemoteFile {
            sha256: f.sha256.clone(),
            mode: 0o644,
            owner_names: "root:root".into(),
            owner_ids: "0:0".into(),
        };
        assert_eq!(decide(&f, None), FileAction::Upload);
        assert_eq!(decide(&f, Some(&same)), FileAction::Skip);
        let other = RemoteFile {
            sha256: "0".repeat(64),
            ..same.clone()
        };
        assert_eq!(decide(&f, Some(&other)), FileAction::Upload);
        let mode = RemoteFile {
            mode: 0o600,
            ..same.clone()
        };
        assert_eq!(decide(&f, Some(&mode)), FileAction::FixMeta);
        let numeric = SyncFile {
            owner: "0:0".into(),
            ..f.clone()
        };
        assert_eq!(decide(&numeric, Some(&same)), FileAction::Skip);
    }

    #[test]
    fn state_lines_parse() {
        let sha = "a".repeat(64);
        let out = format!(
            "motd noise\nk8sforge-state F {sha} 600 root:root 0:0 /etc/k\nk8sforge-state M /etc/missing\n"
        );
        let m = parse_state(&out).unwrap();
        assert_eq!(m.len(), 1);
        assert_eq!(m["/etc/k"].mode, 0o600);
        assert!(parse_state("k8sforge-state X y").is_err());
        let script = state_script(&["/etc/k"], "/var/lib/k8sforge/digests/n1");
        assert!(
            script.contains("printf 'k8sforge-state F %s %s %s\\n'"),
            "{script}"
        );
        assert!(
            script.contains("cache='/var/lib/k8sforge/digests/n1'"),
            "{script}"
        );
    }

    #[test]
    fn rejects_unsafe_paths_and_names() {
        let mut plan = NodePlan {
            files: vec![file("/etc/ok.conf", b"", &[])],
            ..NodePlan::default()
        };
        assert!(validate(&plan).is_ok());
        plan.files[0].path = "/etc/../x".into();
        assert!(validate(&plan).is_err());
        plan.files[0].path = "/etc/a b".into();
        assert!(validate(&plan).unwrap_err().contains("not allowed"));
        plan.files[0].path = "/etc/ok".into();
        plan.units = vec!["x; rm -rf /".into()];
        assert!(validate(&plan).is_err());
        assert_eq!(temp_path("/etc/a/b.pem"), "/etc/a/.b.pem.k8sforge-tmp");
        assert_eq!(shell_quote("it's"), r"'it'\''s'");
    }
}
