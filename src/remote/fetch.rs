//! Artifacts a node downloads itself: one POSIX shell script per node (curl, tar and coreutils,
//! which every cloud image has) that, for each item,
//!
//! 1. skips it when its install stamp says every installed file is still the one it installed
//!    (inode, size, mtime and ctime, else its SHA-256);
//! 2. otherwise makes sure the download is in the node's store, `/var/lib/k8sforge/artifacts/<hex
//!    digest>`, verified against the pinned digest: an already verified copy is reused, else each
//!    source URL is tried in order and the download is checked before it is renamed into place;
//! 3. installs the item's files atomically (temp file next to the target, then rename) and writes
//!    the stamp last.
//!
//! Every download of a run comes before any install, so a failed download leaves nothing half
//! installed; a re-run picks up what is already verified. The store doubles as what seed nodes
//! serve to the others (`seed_server_script`). The operator's side only sends this script.

use std::collections::BTreeSet;

use super::shell::shell_quote;
use crate::artifacts::Digest;

/// Where nodes keep verified downloads, named by their hex digest.
pub const NODE_STORE: &str = "/var/lib/k8sforge/artifacts";
/// Tag of the script's result lines.
const TAG: &str = "k8sforge-fetch";

/// How a download becomes files on the node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Install {
    /// Keep it in the store only (seed nodes).
    StoreOnly,
    /// The download is the file (a binary, an image archive).
    Copy { dest: String, mode: u32 },
    /// Named members of a .tar.gz: `(member without ./, dest, required)`, installed 0755.
    Members(Vec<(String, String, bool)>),
    /// Every regular file directly under `prefix` of a .tar.gz, into `dest_dir`, 0755.
    Dir { prefix: String, dest_dir: String },
}

/// One artifact a node fetches.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchItem {
    /// Named in messages and result lines, e.g. `containerd 2.1.5`.
    pub id: String,
    pub digest: Digest,
    /// Tried in order (seed nodes first, then the artifact source).
    pub urls: Vec<String>,
    pub install: Install,
    /// Units to restart when the item was (re)installed.
    pub restarts: Vec<String>,
}

impl FetchItem {
    /// Installed paths (for the phase report), when known before extraction.
    pub fn paths(&self) -> Vec<String> {
        match &self.install {
            Install::StoreOnly => vec![format!("{NODE_STORE}/{}", self.digest.hex())],
            Install::Copy { dest, .. } => vec![dest.clone()],
            Install::Members(m) => m.iter().map(|(_, d, _)| d.clone()).collect(),
            Install::Dir { dest_dir, .. } => vec![format!("{dest_dir}/*")],
        }
    }

    /// Stamp name: the digest plus a short hash of the install spec (one download can be
    /// installed differently on different nodes, e.g. the Kubernetes server tarball).
    fn stamp(&self) -> String {
        use sha2::Digest as _;
        let spec = format!("{:?}", self.install);
        let h = hex::encode(sha2::Sha256::digest(spec.as_bytes()));
        format!("{NODE_STORE}/{}.{}.installed", self.digest.hex(), &h[..12])
    }
}

/// Everything one node fetches in a phase.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchPlan {
    pub items: Vec<FetchItem>,
}

/// Shell helpers shared by every item.
const PRELUDE: &str = r#"set -u
store=__STORE__
mkdir -p "$store" || exit 1
say() { printf '__TAG__ %s\n' "$*"; }
fail() { printf '%s\n' "$*" >&2; exit 1; }
key() { stat -c '%i %s %.9Y %.9Z' -- "$1" 2>/dev/null; }
# digest FILE ALGO -> hex
digest() { d=$("$2"sum < "$1") || return 1; printf '%s' "${d%% *}"; }
# ensure ID ALGO HEX URL... : the verified download in $store/HEX
ensure() {
  id=$1 algo=$2 hex=$3; shift 3
  f="$store/$hex"
  if [ -f "$f" ] && [ -f "$f.ok" ] && [ "$(key "$f")" = "$(cat "$f.ok")" ]; then return 0; fi
  if [ -f "$f" ] && [ "$(digest "$f" "$algo")" = "$hex" ]; then key "$f" > "$f.ok"; return 0; fi
  rm -f -- "$f" "$f.ok"
  errs=""
  for u in "$@"; do
    rm -f -- "$f.part"
    if out=$(curl -fsSL --retry 2 --retry-delay 1 --connect-timeout 10 -o "$f.part" -- "$u" 2>&1); then
      got=$(digest "$f.part" "$algo")
      if [ "$got" = "$hex" ]; then
        mv -f -- "$f.part" "$f" && key "$f" > "$f.ok" || fail "$id: cannot store $f"
        say downloaded "$(stat -c %s "$f")" "$u"
        return 0
      fi
      errs="$errs
  $u: checksum mismatch: expected $algo:$hex, got $algo:$got"
    else
      errs="$errs
  $u: $(printf '%s' "$out" | tail -n 1)"
    fi
  done
  rm -f -- "$f.part"
  fail "artifact $id: no source delivered it (nothing was installed):$errs"
}
# stored HEX: the verified download is in the store
stored() { [ -f "$store/$1" ] && [ -f "$store/$1.ok" ] && [ "$(key "$store/$1")" = "$(cat "$store/$1.ok")" ]; }
# installed_ok STAMP: every file the stamp lists is unchanged
installed_ok() {
  [ -f "$1" ] || return 1
  while read -r i s m c h p; do
    [ "$(key "$p")" = "$i $s $m $c" ] && continue
    [ -f "$p" ] && [ "$(digest "$p" sha256)" = "$h" ] || return 1
  done < "$1"
  return 0
}
# place SRC DEST MODE STAMPTMP: atomic install, recorded in the stamp
place() {
  mkdir -p -- "${2%/*}" && cp -f -- "$1" "$2.k8sforge-tmp" && chmod "$3" "$2.k8sforge-tmp" \
    && mv -f -- "$2.k8sforge-tmp" "$2" || fail "$id: cannot install $2"
  printf '%s %s %s\n' "$(key "$2")" "$(digest "$2" sha256)" "$2" >> "$4"
}
"#;

/// The node's script for `plan`. Prints `k8sforge-fetch downloaded <bytes> <url>`,
/// `k8sforge-fetch installed <n>` / `k8sforge-fetch present <n>` per item (n: its index).
pub fn script(plan: &FetchPlan) -> String {
    let mut s = PRELUDE
        .replace("__STORE__", &shell_quote(NODE_STORE))
        .replace("__TAG__", TAG);
    // Downloads first: a source that fails leaves every install untouched.
    s.push_str("pending=''\n");
    for (n, item) in plan.items.iter().enumerate() {
        let stamp = shell_quote(&item.stamp());
        let mut urls = String::new();
        for u in &item.urls {
            urls.push(' ');
            urls.push_str(&shell_quote(u));
        }
        let check = if item.install == Install::StoreOnly {
            // A seed's item is done when the verified download is there.
            format!("stored {}", item.digest.hex())
        } else {
            format!("installed_ok {stamp}")
        };
        s.push_str(&format!(
            "if {check}; then say present {n}; else ensure {id} {algo} {hex}{urls} || exit 1; pending=\"$pending {n}\"; fi\n",
            id = shell_quote(&item.id),
            algo = item.digest.algorithm(),
            hex = item.digest.hex(),
        ));
    }
    for (n, item) in plan.items.iter().enumerate() {
        let stamp = item.stamp();
        let q = shell_quote(&stamp);
        let tmp = shell_quote(&format!("{stamp}.tmp"));
        let src = shell_quote(&format!("{NODE_STORE}/{}", item.digest.hex()));
        let id = shell_quote(&item.id);
        let body = match &item.install {
            Install::StoreOnly => ":".to_string(),
            Install::Copy { dest, mode } => {
                format!("place {src} {} {:04o} {tmp}", shell_quote(dest), mode)
            }
            Install::Members(members) => {
                let mut b = String::from(
                    "x=$(mktemp -d \"$store/.x.XXXXXX\") || fail \"$id: no temp dir\"\n",
                );
                for (member, dest, required) in members {
                    let m = shell_quote(member);
                    if *required {
                        b.push_str(&format!(
                            "  tar -xzf {src} -C \"$x\" --no-anchored {m} 2>/dev/null || {{ rm -rf -- \"$x\"; fail \"$id: the archive has no \"{m}; }}\n"
                        ));
                    } else {
                        b.push_str(&format!(
                            "  tar -xzf {src} -C \"$x\" --no-anchored {m} 2>/dev/null || true\n"
                        ));
                    }
                    // --no-anchored also matches a `./` prefix; take whichever landed.
                    b.push_str(&format!(
                        "  for c in \"$x\"/{m} \"$x\"/./{m}; do [ -f \"$c\" ] && {{ place \"$c\" {} 0755 {tmp}; break; }}; done\n",
                        shell_quote(dest)
                    ));
                }
                b.push_str("  rm -rf -- \"$x\"");
                b
            }
            Install::Dir { prefix, dest_dir } => format!(
                "x=$(mktemp -d \"$store/.x.XXXXXX\") || fail \"$id: no temp dir\"\n  \
                 tar -xzf {src} -C \"$x\" || {{ rm -rf -- \"$x\"; fail \"$id: cannot unpack\"; }}\n  \
                 n=0; for c in \"$x\"/{p}*; do [ -f \"$c\" ] && [ ! -L \"$c\" ] || continue; place \"$c\" {d}/\"${{c##*/}}\" 0755 {tmp}; n=$((n+1)); done\n  \
                 rm -rf -- \"$x\"; [ \"$n\" -gt 0 ] || fail \"$id: no files under {p} in the archive\"",
                p = shell_quote(prefix),
                d = shell_quote(dest_dir),
            ),
        };
        s.push_str(&format!(
            "case \" $pending \" in *\" {n} \"*)\n  id={id}; rm -f -- {tmp}\n  {body}\n  \
             [ -f {tmp} ] && mv -f -- {tmp} {q}\n  say installed {n};;\nesac\n"
        ));
    }
    s.push_str("sync\n");
    s
}

/// What the script reported.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FetchOutcome {
    /// Indexes of the items (re)installed in this run.
    pub installed: BTreeSet<usize>,
    /// Bytes the node downloaded, and from where.
    pub downloads: Vec<(u64, String)>,
}

pub fn parse(out: &str) -> FetchOutcome {
    let mut o = FetchOutcome::default();
    for line in out.lines() {
        let Some(rest) = line.strip_prefix(TAG).and_then(|l| l.strip_prefix(' ')) else {
            continue;
        };
        let mut it = rest.split(' ');
        match (it.next(), it.next(), it.next()) {
            (Some("installed"), Some(n), None) => {
                if let Ok(n) = n.parse() {
                    o.installed.insert(n);
                }
            }
            (Some("downloaded"), Some(b), Some(u)) => {
                o.downloads.push((b.parse().unwrap_or(0), u.to_string()));
            }
            _ => {}
        }
    }
    o
}

/// The tiny HTTP/1.0 server a seed node runs (one request per connection, spawned by socat):
/// `GET /<hex digest>` answers the verified download from the store, anything else 404.
pub fn seed_server_script() -> String {
    format!(
        r#"#!/bin/sh
# Rendered by k8sforge: serve verified downloads of {NODE_STORE} to the cluster's nodes.
read -r method path _ || exit 0
while read -r l; do l=$(printf '%s' "$l" | tr -d '\r'); [ -z "$l" ] && break; done
name=${{path#/}}
f={NODE_STORE}/$name
case "$name" in
  *[!0-9a-f]*|'') f=/nonexistent ;;
esac
case ${{#name}} in 64|128) ;; *) f=/nonexistent ;; esac
if [ "$method" = GET ] && [ -f "$f" ] && [ -f "$f.ok" ]; then
  printf 'HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: %s\r\nConnection: close\r\n\r\n' "$(stat -c %s "$f")"
  exec cat "$f"
fi
printf 'HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n'
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(install: Install) -> FetchItem {
        FetchItem {
            id: "runc 1.1.12".into(),
            digest: Digest::Sha256("a".repeat(64)),
            urls: vec!["http://198.18.0.1:8000/x/runc.amd64".into()],
            install,
            restarts: vec![],
        }
    }

    #[test]
    fn script_downloads_everything_before_installing() {
        let plan = FetchPlan {
            items: vec![
                item(Install::Copy {
                    dest: "/usr/local/sbin/runc".into(),
                    mode: 0o755,
                }),
                item(Install::Dir {
                    prefix: "bin/".into(),
                    dest_dir: "/usr/local/bin".into(),
                }),
            ],
        };
        let s = script(&plan);
        let last_ensure = s.rfind("ensure 'runc").unwrap();
        let first_place = s.find("place '/var/lib").unwrap();
        assert!(last_ensure < first_place, "{s}");
        assert!(s.contains("'http://198.18.0.1:8000/x/runc.amd64'"));
        // Distinct stamps for distinct install specs of one download.
        assert_ne!(plan.items[0].stamp(), plan.items[1].stamp());
    }

    #[test]
    fn result_lines_parse() {
        let o = parse("noise\nk8sforge-fetch downloaded 1234 http://h/x\nk8sforge-fetch installed 1\nk8sforge-fetch present 0\n");
        assert_eq!(o.installed, [1].into_iter().collect());
        assert_eq!(o.downloads, vec![(1234, "http://h/x".to_string())]);
    }
}
