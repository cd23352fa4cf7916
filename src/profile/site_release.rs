//! `kubernetes.extraReleases`: release rows for Kubernetes builds k8sforge has no built-in row
//! for, e.g. a site's own vetted builds of a patch release, served from its mirror.
//!
//! ```yaml
//! kubernetes:
//!   version: v1.28.7
//!   extraReleases:
//!     - kubernetes: v1.28.8
//!       basedOn: v1.28.7          # built-in row the other components come from
//!       etcd: v3.5.10              # optional: etcd, containerd, runc, cniPlugins, crictl
//!       checksums:                 # the site's files: SHA-256, or sha512:… for the tarball
//!         kubernetes-server: sha512:…
//!         kubelet: 9f…
//!         kubectl: 3c…
//! ```
//! A row must stay within the minor of the row it is based on (the component pairing is that
//! minor's); its checksums are what the files are verified against, so the mirror's own list
//! need not be trusted. A component without a checksum here needs `trustMirrorChecksums`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::diagnostic::Reporter;
use crate::artifacts::{self, site_rows::SiteRow, Component, Digest};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct ExtraRelease {
    pub kubernetes: String,
    pub based_on: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub etcd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub containerd: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runc: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cni_plugins: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub crictl: Option<String>,
    /// Component name (`kubelet`, `kubernetes-server`, …) → digest.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub checksums: BTreeMap<String, String>,
}

fn is_version(v: &str) -> bool {
    let Some(rest) = v.strip_prefix('v') else {
        return false;
    };
    let parts: Vec<&str> = rest.split('.').collect();
    parts.len() == 3
        && parts
            .iter()
            .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
}

impl ExtraRelease {
    fn versions(&self) -> Vec<(Component, &str, &Option<String>)> {
        vec![
            (Component::Etcd, "etcd", &self.etcd),
            (Component::Containerd, "containerd", &self.containerd),
            (Component::Runc, "runc", &self.runc),
            (Component::CniPlugins, "cniPlugins", &self.cni_plugins),
            (Component::Crictl, "crictl", &self.crictl),
        ]
    }

    /// The row for the artifact layer; None when it does not validate.
    pub fn site_row(&self) -> Option<SiteRow> {
        let based_on = builtin(&self.based_on)?;
        let versions = self
            .versions()
            .into_iter()
            .filter_map(|(c, _, v)| v.clone().map(|v| (c, v)))
            .collect();
        let mut checksums = Vec::new();
        for (name, d) in &self.checksums {
            checksums.push((Component::from_name(name)?, Digest::parse(d)?));
        }
        Some(SiteRow {
            kubernetes: self.kubernetes.clone(),
            based_on,
            versions,
            checksums,
        })
    }
}

fn builtin(v: &str) -> Option<&'static artifacts::Release> {
    artifacts::RELEASES.iter().find(|r| r.kubernetes == v)
}

/// Whether `version` is a built-in row or one of `rows`.
pub fn is_known(version: &str, rows: &[ExtraRelease]) -> bool {
    builtin(version).is_some() || rows.iter().any(|r| r.kubernetes == version)
}

/// Every mistake of every row, each with its field path.
pub fn validate(rows: &[ExtraRelease], r: &mut Reporter) {
    let builtins = || {
        artifacts::RELEASES
            .iter()
            .map(|r| r.kubernetes)
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut seen = std::collections::BTreeSet::new();
    for (i, row) in rows.iter().enumerate() {
        let at = |f: &str| format!("kubernetes.extraReleases[{i}].{f}");
        if !is_version(&row.kubernetes) {
            r.error(
                &at("kubernetes"),
                "not a Kubernetes version",
                &row.kubernetes,
                "vMAJOR.MINOR.PATCH, e.g. v1.28.8",
            );
        } else if builtin(&row.kubernetes).is_some() {
            r.error(
                &at("kubernetes"),
                "k8sforge has a built-in row for this version (with upstream's checksums)",
                &row.kubernetes,
                "a version without a built-in row; remove this entry to use the built-in one",
            );
        } else if !seen.insert(row.kubernetes.clone()) {
            r.error(
                &at("kubernetes"),
                "listed twice",
                &row.kubernetes,
                "one entry per version",
            );
        }
        match builtin(&row.based_on) {
            None => r.error(
                &at("basedOn"),
                "not a built-in release row",
                &row.based_on,
                format!("one of {}", builtins()),
            ),
            Some(base) => {
                if is_version(&row.kubernetes)
                    && artifacts::minor_version(base.kubernetes)
                        != artifacts::minor_version(&row.kubernetes)
                {
                    r.error(
                        &at("basedOn"),
                        "a row's components are paired for one minor: base it on a row of the same minor",
                        &row.based_on,
                        format!(
                            "a built-in row of {} (one of {})",
                            row.kubernetes.rsplitn(2, '.').last().unwrap_or_default(),
                            builtins()
                        ),
                    );
                }
            }
        }
        for (_, field, v) in row.versions() {
            if let Some(v) = v {
                let bare = v.trim_start_matches('v');
                if bare.is_empty()
                    || !bare
                        .split('.')
                        .all(|p| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit()))
                {
                    r.error(
                        &at(field),
                        "not a version",
                        v,
                        "a release tag such as v3.5.10 or 1.7.13",
                    );
                }
            }
        }
        for (name, d) in &row.checksums {
            let path = at(&format!("checksums.{name}"));
            if Component::from_name(name).is_none() {
                let names: Vec<&str> = Component::ALL.iter().map(|c| c.name()).collect();
                r.error(
                    &path,
                    "unknown component",
                    name,
                    format!("one of {}", names.join(", ")),
                );
            } else if Digest::parse(d).is_none() {
                r.error(
                    &path,
                    "not a checksum",
                    d,
                    "64 hex digits (SHA-256), sha256:<64 hex> or sha512:<128 hex>",
                );
            }
        }
    }
}

/// Make the profile's rows known to the artifact layer (after validation passed).
pub fn register(rows: &[ExtraRelease]) {
    for row in rows {
        if let Some(site) = row.site_row() {
            artifacts::site_rows::register(&site);
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn rows_are_validated_with_their_paths() {
        let bad = "kubernetes.extraReleases=[{kubernetes: v1.28.7, basedOn: v1.28.7}, \
                   {kubernetes: v1.29.1, basedOn: v1.28.7, etcd: x.y, checksums: {kubelett: ab, kubectl: xyz}}]";
        let e = crate::profile::load("local-3", &[bad.to_string()])
            .unwrap_err()
            .to_string();
        for want in [
            "extraReleases[0].kubernetes",
            "built-in row",
            "extraReleases[1].basedOn",
            "same minor",
            "extraReleases[1].etcd",
            "checksums.kubelett",
            "unknown component",
            "checksums.kubectl",
            "not a checksum",
        ] {
            assert!(e.contains(want), "{want} missing from:\n{e}");
        }
    }

    #[test]
    fn a_valid_row_makes_its_version_usable() {
        let sum = "cd".repeat(32);
        let row = format!(
            "kubernetes.extraReleases=[{{kubernetes: v1.28.77, basedOn: v1.28.7, checksums: {{kubelet: {sum}}}}}]"
        );
        let l = crate::profile::load(
            "local-3",
            &[row.clone(), "kubernetes.version=v1.28.77".into()],
        )
        .unwrap();
        assert_eq!(l.profile.kubernetes.version, "v1.28.77");
        let r = crate::artifacts::release("v1.28.77").unwrap();
        assert_eq!(r.etcd, crate::artifacts::release("v1.28.7").unwrap().etcd);
        assert_eq!(
            crate::artifacts::pins::pinned(crate::artifacts::Component::Kubelet, "v1.28.77")
                .map(|d| d.hex().to_string()),
            Some(sum)
        );
        // Unknown without the row.
        let e = crate::profile::load("local-3", &["kubernetes.version=v1.28.78".into()])
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown Kubernetes version"), "{e}");
    }
}
