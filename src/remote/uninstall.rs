//! Teardown of hosts k8sforge does not own (the static provider): remove, node by node, what
//! k8sforge installed — derived from the rendered bundle (files, units, routes, the CNI bridge,
//! the VXLAN device) and the state's record of installed artifacts (binaries, image archives),
//! plus the state those units create (data directories, pod network namespaces, the iptables
//! chains kube-proxy and the CNI bridge plugin add). `--dry-run` lists it; the run is idempotent,
//! so an interrupted teardown is simply run again. A data directory that is a mount point (a disk
//! the host dedicated to it) is emptied and its mount kept: the mount is the host's, not ours.

use std::collections::BTreeSet;

use serde::Serialize;

use crate::render::bundle::NodeBundle;
use crate::render::paths::{self, PATHS};
use crate::render::routes::{ROUTES_UNIT, VXLAN_DEV};

use super::as_found::{self, UNIT_STATE};
use super::session::STAGING_DIR;
use super::sync::shell_quote;

/// k8sforge's own directory on a node (records of how the host was found included).
const OWN_DIR: &str = "/var/lib/k8sforge";

/// Directories that are the system's, never removed even when k8sforge emptied them.
const SYSTEM_DIRS: &[&str] = &[
    "/",
    "/etc",
    "/etc/systemd",
    "/etc/systemd/system",
    "/etc/sysctl.d",
    "/etc/modules-load.d",
    "/usr",
    "/usr/local",
    "/usr/local/bin",
    "/usr/local/sbin",
    "/usr/local/lib",
    "/opt",
    "/var",
    "/var/lib",
    "/var/log",
    "/run",
    "/etc/systemd/system.conf.d",
];

/// Everything to remove from one node.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct UninstallPlan {
    pub node: String,
    /// Stopped and disabled, in this order (reverse start order).
    pub units: Vec<String>,
    pub files: Vec<String>,
    /// Removed recursively (k8sforge's own or the units' state); one that was found on the
    /// host before k8sforge (recorded by `as_found`) or is a mount point is emptied and gets its
    /// recorded mode and owner back. k8sforge's own directory, which holds the records, is last.
    pub dirs: Vec<String>,
    /// Removed when empty, deepest first.
    pub empty_dirs: Vec<String>,
    /// `ip route del` arguments (host-route pod routing).
    pub routes: Vec<String>,
    /// Network devices: the CNI bridge, the VXLAN device.
    pub links: Vec<String>,
}

impl UninstallPlan {
    pub fn is_empty(&self) -> bool {
        self.units.is_empty() && self.files.is_empty() && self.dirs.is_empty()
    }

    /// The `--dry-run` listing, one line per item.
    pub fn lines(&self) -> Vec<String> {
        let mut v = Vec::new();
        v.extend(
            self.units
                .iter()
                .map(|u| format!("unit {u} (stop, disable)")),
        );
        v.extend(self.files.iter().map(|f| format!("file {f}")));
        v.extend(
            self.dirs
                .iter()
                .map(|d| format!("directory {d} (recursive)")),
        );
        v.extend(
            self.empty_dirs
                .iter()
                .map(|d| format!("directory {d} (if empty)")),
        );
        v.extend(self.routes.iter().map(|r| format!("route {r}")));
        v.extend(self.links.iter().map(|l| format!("network device {l}")));
        v.push("network namespaces cni-* (pods)".into());
        v.push("iptables/ip6tables chains KUBE-* and CNI-* and the rules jumping to them".into());
        v.push(format!("login user's ~/{STAGING_DIR}"));
        v
    }
}

/// The plan for one node from its bundle and the artifact paths it received.
pub fn plan(node: &str, nb: &NodeBundle, artifact_paths: &BTreeSet<String>) -> UninstallPlan {
    let mut units: Vec<String> = nb.units.clone();
    for f in &nb.files {
        if let Some(u) = super::sync::unit_of_path(&f.path) {
            if !units.contains(&u) {
                units.push(u);
            }
        }
    }
    // kubelet and kube-proxy first (they restart pods and rules), then the reverse start order.
    units.reverse();
    units.sort_by_key(|u| !matches!(u.as_str(), "kubelet.service" | "kube-proxy.service"));

    let mut files: BTreeSet<String> = nb.files.iter().map(|f| f.path.clone()).collect();
    files.extend(nb.binaries.iter().map(|b| b.path.clone()));
    files.extend(artifact_paths.iter().cloned());

    let mut dirs: BTreeSet<String> = BTreeSet::new();
    for (unit, state) in UNIT_STATE {
        if units.iter().any(|u| u == unit) {
            dirs.extend(state.iter().map(|s| s.to_string()));
        }
    }
    // k8sforge's own directories on the node: image archives, the sync's digest cache, the
    // as-found records.
    dirs.insert(OWN_DIR.into());
    // Drop files inside removed directories (rm -rf takes them).
    files.retain(|f| !dirs.iter().any(|d| f.starts_with(&format!("{d}/"))));
    let mut dirs: Vec<String> = dirs.into_iter().filter(|d| d != OWN_DIR).collect();
    dirs.push(OWN_DIR.into());

    let mut empty: BTreeSet<String> = BTreeSet::new();
    for f in &files {
        let mut p = f.as_str();
        while let Some((parent, _)) = p.rsplit_once('/') {
            let parent = if parent.is_empty() { "/" } else { parent };
            if SYSTEM_DIRS.contains(&parent) || parent == paths::UNIT_DIR {
                break;
            }
            empty.insert(parent.to_string());
            p = parent;
        }
    }
    let mut empty_dirs: Vec<String> = empty.into_iter().collect();
    // Deepest first, so parents are empty by the time they are tried.
    empty_dirs.sort_by_key(|d| std::cmp::Reverse(d.matches('/').count()));

    let mut routes = Vec::new();
    let mut links = Vec::new();
    for f in &nb.files {
        let text = String::from_utf8_lossy(&f.content);
        if f.path == PATHS.cni_bridge {
            if let Some(b) = json_string_field(&text, "bridge") {
                links.push(b);
            }
        }
        if f.restarts.iter().any(|u| u == ROUTES_UNIT) && !f.path.ends_with(".service") {
            for line in text.lines() {
                if let Some(rest) = line.trim().strip_prefix("ip route replace ") {
                    let args = rest.split('#').next().unwrap_or("").trim();
                    if !args.is_empty() {
                        routes.push(args.to_string());
                    }
                }
                if line.contains(VXLAN_DEV) && !links.iter().any(|l| l == VXLAN_DEV) {
                    links.push(VXLAN_DEV.to_string());
                }
            }
        }
    }
    UninstallPlan {
        node: node.to_string(),
        units,
        files: files.into_iter().collect(),
        dirs,
        empty_dirs,
        routes,
        links,
    }
}

/// `"key": "value"` from a small JSON document (the CNI config k8sforge rendered).
fn json_string_field(text: &str, key: &str) -> Option<String> {
    let v: serde_json::Value = serde_json::from_str(text).ok()?;
    v.get(key)?.as_str().map(str::to_string)
}

fn list(items: &[String]) -> String {
    items
        .iter()
        .map(|s| shell_quote(s))
        .collect::<Vec<_>>()
        .join(" ")
}

/// The removal script (run as root). Every step tolerates what is already gone.
pub fn script(p: &UninstallPlan, login_user: &str) -> String {
    let mut s = String::from("set -u\n");
    if !p.units.is_empty() {
        s.push_str(&format!(
            "for u in {}; do systemctl disable --now -q \"$u\" 2>/dev/null || systemctl stop \"$u\" 2>/dev/null || true; done\n",
            list(&p.units)
        ));
    }
    // Pods (systemd cgroup driver): stopping the slice kills every container left behind.
    s.push_str("systemctl stop kubepods.slice 2>/dev/null || true\n");
    // Shims outlive containerd (KillMode=process); they are k8sforge's binaries.
    s.push_str(&format!(
        "for pid in $(ls /proc | grep -E '^[0-9]+$'); do exe=$(readlink /proc/$pid/exe 2>/dev/null) || continue; \
         case \"$exe\" in {}/containerd-shim*) kill -9 \"$pid\" 2>/dev/null || true;; esac; done\n",
        paths::BIN_DIR
    ));
    // The chains kube-proxy and the CNI bridge plugin (ipMasq) added, and every rule that jumps
    // to them; other rules are kept as they are (per table: save, filter, restore).
    s.push_str(
        "for t in iptables ip6tables; do command -v $t-save >/dev/null 2>&1 || continue\n\
         \x20 for tbl in filter nat mangle raw; do\n\
         \x20   rules=$($t-save -t $tbl 2>/dev/null) || continue\n\
         \x20   printf '%s\\n' \"$rules\" | grep -Eq '(KUBE-|CNI-)' || continue\n\
         \x20   printf '%s\\n' \"$rules\" | grep -Ev '^:(KUBE-|CNI-)|-j (KUBE-|CNI-)|^-A (KUBE-|CNI-)' | $t-restore -w 5\n\
         \x20 done\n\
         done\n",
    );
    s.push_str(
        "for ns in $(ip netns list 2>/dev/null | awk '/^cni-/ {print $1}'); do ip netns del \"$ns\" || true; done\n",
    );
    for r in &p.routes {
        s.push_str(&format!("ip route del {r} 2>/dev/null || true\n"));
    }
    for l in &p.links {
        s.push_str(&format!(
            "ip link del {} 2>/dev/null || true\n",
            shell_quote(l)
        ));
    }
    if !p.dirs.is_empty() {
        // Pod volumes and container rootfs are mounts under the state directories. A directory
        // the host had before k8sforge (its record says so) or that is a mount point (a disk the
        // host dedicated to it) is emptied, not removed, and gets its recorded mode and owner
        // back: daemons chmod their roots when they start.
        s.push_str(&format!(
            "for d in {}; do {}; \
             if mountpoint -q \"$d\" 2>/dev/null || {{ [ -n \"$found\" ] && [ \"$found\" != absent ]; }}; then own=keep; else own=dir; fi; \
             for try in 1 2 3; do [ -e \"$d\" ] || break; \
             awk -v d=\"$d/\" 'index($2, d) == 1 {{print $2}}' /proc/self/mounts | sort -r | \
             while read -r m; do umount -l \"$m\" 2>/dev/null || true; done; \
             if [ $own = keep ]; then find \"$d\" -mindepth 1 -maxdepth 1 -exec rm -rf -- {{}} + 2>/tmp/k8sforge-rm.err && break; \
             else rm -rf -- \"$d\" 2>/tmp/k8sforge-rm.err && break; fi; sleep 1; done; \
             if [ $own = keep ] && [ -d \"$d\" ] && [ -n \"$found\" ] && [ \"$found\" != absent ]; then \
             set -- $found; chmod \"$1\" \"$d\"; chown \"$2:$3\" \"$d\"; fi; \
             if [ $own = dir ] && [ -e \"$d\" ]; then echo \"cannot remove $d: $(tail -n 2 /tmp/k8sforge-rm.err | tr '\\n' ' ')\" >&2; fi; done\n\
             rm -f /tmp/k8sforge-rm.err\n",
            list(&p.dirs),
            as_found::read_record_sh()
        ));
    }
    if !p.files.is_empty() {
        s.push_str(&format!("rm -f -- {}\n", list(&p.files)));
    }
    for d in &p.empty_dirs {
        s.push_str(&format!(
            "rmdir -- {} 2>/dev/null || true\n",
            shell_quote(d)
        ));
    }
    // Swap lines the kernel step commented out.
    s.push_str(
        "if [ -f /etc/fstab.k8sforge-bak ]; then cat /etc/fstab.k8sforge-bak > /etc/fstab && rm -f /etc/fstab.k8sforge-bak; fi\n",
    );
    s.push_str(&format!(
        "home=$(getent passwd {} | cut -d: -f6); [ -n \"$home\" ] && rm -rf -- \"$home/{STAGING_DIR}\"\n",
        shell_quote(login_user)
    ));
    s.push_str("systemctl daemon-reload; systemctl reset-failed 2>/dev/null; true\n");
    s
}

/// Lists what of the plan is still on the node (empty output: clean). Used after a teardown
/// and by tests.
pub fn leftovers_script(p: &UninstallPlan) -> String {
    let mut s = String::from("set -u\n");
    if !p.files.is_empty() || !p.dirs.is_empty() {
        if !p.files.is_empty() {
            s.push_str(&format!(
                "for f in {}; do [ -e \"$f\" ] || [ -L \"$f\" ] && echo \"left: $f\"; done\n",
                list(&p.files)
            ));
        }
        // A directory kept because the host had it (or it is a mount point) must be empty.
        s.push_str(&format!(
            "for f in {}; do [ -d \"$f\" ] && [ -n \"$(ls -A \"$f\")\" ] && echo \"left: $f/*\"; done\n",
            list(&p.dirs)
        ));
    }
    if !p.units.is_empty() {
        s.push_str(&format!(
            "for u in {}; do systemctl is-active -q \"$u\" && echo \"running: $u\"; done\n",
            list(&p.units)
        ));
    }
    for l in &p.links {
        s.push_str(&format!(
            "ip link show {} >/dev/null 2>&1 && echo \"link: {l}\"\n",
            shell_quote(l)
        ));
    }
    s.push_str("true\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::render::bundle::BundleFile;

    fn file(path: &str, content: &str, restarts: &[&str]) -> BundleFile {
        BundleFile {
            path: path.into(),
            mode: 0o644,
            owner: "root:root".into(),
            content: content.as_bytes().to_vec(),
            restarts: restarts.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn plan_comes_from_the_bundle_and_the_installed_artifacts() {
        let nb = NodeBundle {
            files: vec![
                file("/etc/etcd/ca.crt", "x", &["etcd.service"]),
                file("/etc/systemd/system/etcd.service", "x", &["etcd.service"]),
                file(
                    PATHS.cni_bridge,
                    r#"{"type":"bridge","bridge":"cni0"}"#,
                    &[],
                ),
                file(
                    "/usr/local/lib/k8sforge/pod-routes.sh",
                    "ip route replace 10.0.1.0/24 via 198.18.0.3 # w2\n",
                    &[ROUTES_UNIT],
                ),
                file("/var/lib/k8sforge/images/pause.tar", "x", &[]),
            ],
            units: vec![
                "containerd.service".into(),
                "etcd.service".into(),
                "kubelet.service".into(),
            ],
            commands: vec![],
            binaries: vec![],
        };
        let arts: BTreeSet<String> = ["/usr/local/bin/etcd".to_string()].into();
        let p = plan("cp1", &nb, &arts);
        assert_eq!(p.units[0], "kubelet.service");
        assert_eq!(p.units[1], "etcd.service");
        assert!(p.files.contains(&"/etc/etcd/ca.crt".to_string()));
        assert!(p.files.contains(&"/usr/local/bin/etcd".to_string()));
        // Inside a removed directory: not listed twice.
        assert!(!p.files.iter().any(|f| f.starts_with("/var/lib/k8sforge/")));
        assert!(p.dirs.contains(&PATHS.etcd_data_dir.to_string()));
        assert!(p.dirs.contains(&"/var/lib/kubelet".to_string()));
        assert!(p.empty_dirs.contains(&"/etc/etcd".to_string()));
        assert!(!p
            .empty_dirs
            .iter()
            .any(|d| SYSTEM_DIRS.contains(&d.as_str())));
        assert_eq!(p.routes, vec!["10.0.1.0/24 via 198.18.0.3".to_string()]);
        assert_eq!(p.links, vec!["cni0".to_string()]);
        let sh = script(&p, "ubuntu");
        assert!(sh.contains("rm -f -- "));
        assert!(sh.contains("ip route del 10.0.1.0/24 via 198.18.0.3"));
        assert!(sh.contains(".k8sforge-staging"));
    }
}
