//! The state directories k8sforge's units create at run time, and how each was found before
//! k8sforge first touched it. A host may already have some of them — a disk mounted at
//! `/var/lib/containerd`, an empty `/var/log/pods` from the image — and daemons change them
//! when they start (containerd and etcd chmod their roots to 0700), so teardown can leave the
//! host as it was found only if the mode and owner were recorded before the first start.
//!
//! The record is taken on the node (one small file per directory under [`RECORD_DIR`]) by the
//! sync, before any file of a plan that starts one of these units is written, and never
//! overwritten: a re-run keeps the first record. Teardown reads it before removing the record
//! directory with the rest of `/var/lib/k8sforge`.

use super::sync::shell_quote;
use crate::render::paths::PATHS;

/// Where the records live on a node (inside k8sforge's own directory).
pub const RECORD_DIR: &str = "/var/lib/k8sforge/as-found";

/// State directories each unit creates at run time (not in the bundle, but k8sforge's doing).
pub const UNIT_STATE: &[(&str, &[&str])] = &[
    ("etcd.service", &[PATHS.etcd_data_dir]),
    (
        "containerd.service",
        &[
            "/var/lib/containerd",
            "/run/containerd",
            "/opt/containerd",
            "/var/lib/cni",
            "/run/cni",
        ],
    ),
    (
        "kubelet.service",
        &["/var/lib/kubelet", "/var/log/pods", "/var/log/containers"],
    ),
    ("kube-apiserver.service", &["/var/log/kubernetes"]),
];

/// The state directories of the units in `units`, in table order.
pub fn state_dirs<'a>(units: impl IntoIterator<Item = &'a String>) -> Vec<&'static str> {
    let units: Vec<&String> = units.into_iter().collect();
    UNIT_STATE
        .iter()
        .filter(|(u, _)| units.iter().any(|x| x.as_str() == *u))
        .flat_map(|(_, dirs)| dirs.iter().copied())
        .collect()
}

/// Shell expression for a directory's record file (`/` spelled `%`, never in these paths).
fn record_of(var: &str) -> String {
    format!("{RECORD_DIR}/$(printf %s \"${var}\" | tr / %)")
}

/// Record, once, how each of `dirs` was found: `MODE UID GID` (octal mode) or `absent`. Prints
/// nothing, so it can lead another script whose output is parsed.
pub fn record_script(dirs: &[&str]) -> Option<String> {
    if dirs.is_empty() {
        return None;
    }
    let list: Vec<String> = dirs.iter().map(|d| shell_quote(d)).collect();
    Some(format!(
        "mkdir -p {RECORD_DIR}\n\
         for d in {}; do r=\"{}\"; [ -e \"$r\" ] && continue; \
         if [ -d \"$d\" ]; then stat -c '%a %u %g' \"$d\" > \"$r.tmp\"; else echo absent > \"$r.tmp\"; fi; \
         mv -f \"$r.tmp\" \"$r\"; done\n",
        list.join(" "),
        record_of("d")
    ))
}

/// Shell that sets `found` to the record of the directory in `$d` (empty when none was taken,
/// e.g. a cluster installed by a version that did not record).
pub fn read_record_sh() -> String {
    format!(
        "r=\"{}\"; found=; [ -f \"$r\" ] && found=$(cat \"$r\")",
        record_of("d")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirs_follow_the_units_and_the_record_is_taken_once() {
        let units = vec!["containerd.service".to_string(), "foo.service".to_string()];
        let dirs = state_dirs(&units);
        assert!(dirs.contains(&"/var/lib/containerd"));
        assert!(!dirs.contains(&"/var/lib/etcd"));
        assert!(record_script(&[]).is_none());
        let sh = record_script(&dirs).unwrap_or_default();
        assert!(sh.contains("[ -e \"$r\" ] && continue"), "{sh}");
        assert!(sh.contains("stat -c '%a %u %g'"), "{sh}");
        assert!(!sh.contains("echo \"$"), "prints nothing: {sh}");
    }

    #[test]
    fn record_script_runs_and_keeps_the_first_record() {
        // Run against a scratch root: the same script with RECORD_DIR and paths under it.
        let tmp = std::env::temp_dir().join(format!("k8sforge-as-found-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&tmp);
        let present = tmp.join("present");
        std::fs::create_dir_all(&present).unwrap_or_default();
        let absent = tmp.join("absent");
        let rec = tmp.join("rec");
        let p = present.display().to_string();
        let a = absent.display().to_string();
        let sh = record_script(&[p.as_str(), a.as_str()])
            .unwrap_or_default()
            .replace(RECORD_DIR, &rec.display().to_string());
        let run = |s: &str| {
            std::process::Command::new("sh")
                .args(["-c", s])
                .status()
                .map(|st| st.success())
                .unwrap_or(false)
        };
        assert!(run(&sh));
        let name = |d: &str| rec.join(d.replace('/', "%"));
        let first = std::fs::read_to_string(name(&p)).unwrap_or_default();
        assert!(first.split_whitespace().count() == 3, "{first}");
        assert_eq!(
            std::fs::read_to_string(name(&a)).unwrap_or_default().trim(),
            "absent"
        );
        // The directory appears later (a daemon created it): the first record stays.
        std::fs::create_dir_all(&absent).unwrap_or_default();
        assert!(run(&sh));
        assert_eq!(
            std::fs::read_to_string(name(&a)).unwrap_or_default().trim(),
            "absent"
        );
        let _ = std::fs::remove_dir_all(&tmp);
    }
}
