//! Host keys from Compute Engine: the guest agent of an instance whose metadata has
//! `enable-guest-attributes=TRUE` (k8sforge sets it on every instance it creates) publishes the
//! instance's SSH host public keys as guest attributes in the namespace `hostkeys` (key: the key
//! type, e.g. `ssh-ed25519`; value: the base64 key), read with `instances.getGuestAttributes`
//! and `queryPath=hostkeys/` — what `gcloud compute ssh` pins with `--strict-host-key-checking`.
//! They are pinned before the first SSH connection through the providers' one pinning loop
//! (`provider::host_keys`), so the first contact is already checked and a changed key is refused
//! by name.
//!
//! Until the agent has written them the API answers 404: asked again every 10 s within
//! `provider.gcp.hostKeyWaitSeconds` (default 120). An instance without the metadata (made by
//! an older k8sforge, or by hand) is not asked at all; its keys, like those of instances whose
//! agent never answered, are pinned on first contact, one line per node saying so.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::time::Duration;

use base64::Engine;
use google_cloud_compute_v1::model::{GuestAttributes, Instance};

use super::client::{lib, ApiError, Compute};
use super::names::Names;
use super::GcpProvider;
use crate::inventory::Inventory;
use crate::provider::host_keys::{pin_reported, HostKeyReport, Polling, Reported};

/// The instance metadata key that turns guest attributes on.
pub const METADATA_KEY: &str = "enable-guest-attributes";
/// Where the guest agent writes host keys.
pub const QUERY_PATH: &str = "hostkeys/";
const NAMESPACE: &str = "hostkeys";
/// The key types the guest agent publishes (and gcloud accepts).
const KEY_TYPES: &[&str] = &["ssh-ed25519", "ecdsa-sha2-nistp256", "ssh-rsa"];
/// Between two rounds for the instances still without keys.
const ROUND: Duration = Duration::from_secs(10);

/// Whether the instance's own metadata turns guest attributes on (`TRUE`, any case).
pub fn enabled(i: &Instance) -> bool {
    i.metadata.as_ref().is_some_and(|m| {
        m.items.iter().any(|it| {
            it.key.as_deref() == Some(METADATA_KEY)
                && it
                    .value
                    .as_deref()
                    .is_some_and(|v| v.eq_ignore_ascii_case("true"))
        })
    })
}

/// The one Compute call (kept alone so that a client-library port swaps only this):
/// `instances.getGuestAttributes` of one instance, `queryPath=hostkeys/`.
pub async fn get_host_key_attributes(
    api: &Compute,
    zone: &str,
    instance: &str,
) -> Result<GuestAttributes, ApiError> {
    let id = "compute.instances.getGuestAttributes";
    let r = api
        .call(
            id,
            api.instances()
                .await?
                .get_guest_attributes()
                .set_project(&api.project)
                .set_zone(zone)
                .set_instance(instance)
                .set_query_path(QUERY_PATH),
        )
        .send()
        .await;
    lib(id, instance, r)
}

/// The host keys (`type base64`) in a `hostkeys/` answer: entries of the `hostkeys` namespace
/// whose key is a known type and whose value is base64 of a key blob of that same type. Anything
/// else is ignored, never pinned (a value is cut at the first whitespace, as gcloud does).
pub fn parse(ga: &GuestAttributes) -> Vec<String> {
    let Some(v) = &ga.query_value else {
        return Vec::new();
    };
    let mut keys: Vec<String> = v
        .items
        .iter()
        .filter_map(|e| {
            let (ns, key, value) = (
                e.namespace.as_deref()?,
                e.key.as_deref()?,
                e.value.as_deref()?,
            );
            if ns != NAMESPACE || !KEY_TYPES.contains(&key) {
                return None;
            }
            let b64 = value.split_whitespace().next()?;
            let blob = base64::engine::general_purpose::STANDARD.decode(b64).ok()?;
            (blob_type(&blob) == Some(key.as_bytes())).then(|| format!("{key} {b64}"))
        })
        .collect();
    keys.sort();
    keys.dedup();
    keys
}

/// The key type a public key blob names (its first SSH string).
fn blob_type(blob: &[u8]) -> Option<&[u8]> {
    let len = u32::from_be_bytes(blob.get(..4)?.try_into().ok()?) as usize;
    blob.get(4..4 + len)
}

/// One instance's answer as the pinning loop sees it.
fn reported(answer: Result<GuestAttributes, ApiError>) -> Reported {
    match answer {
        Ok(ga) => match parse(&ga) {
            k if k.is_empty() => Reported::NotYet,
            k => Reported::Keys(k),
        },
        // Enabled, but the agent has not written `hostkeys/` yet.
        Err(e) if e.is_not_found() => Reported::NotYet,
        Err(ApiError::Status { code, message, .. }) if (400..500).contains(&code) => {
            Reported::Unavailable(format!("getGuestAttributes: HTTP {code}: {message}"))
        }
        Err(e) => {
            tracing::debug!("{e}");
            Reported::NotYet
        }
    }
}

/// Pin the guest-attribute host keys of every node of `inv` not pinned yet, then say per node
/// what was left to first contact.
pub async fn pin_from_guest_attributes(
    p: &GcpProvider,
    names: &Names,
    inv: &Inventory,
    instances: &[Instance],
    cluster_dir: &Path,
) -> HostKeyReport {
    let by_name: BTreeMap<&str, &Instance> = instances
        .iter()
        .filter_map(|i| Some((i.name.as_deref()?, i)))
        .collect();
    let mut handles = BTreeMap::new();
    let mut disabled = BTreeSet::new();
    for n in &inv.nodes {
        let iname = names.instance(&n.name);
        if let Some(i) = by_name.get(iname.as_str()) {
            if !enabled(i) {
                disabled.insert(iname.clone());
            }
            handles.insert(n.name.clone(), iname);
        }
    }
    let polling = Polling {
        wait: p.cfg.host_key_wait,
        round: ROUND,
        parallelism: p.cfg.concurrency,
    };
    let report = pin_reported(inv, &handles, cluster_dir, polling, |iname| {
        let (api, zone) = (p.api.clone(), p.cfg.zone.clone());
        let off = disabled.contains(&iname);
        async move {
            if off {
                return Reported::Unavailable(format!(
                    "instance {iname} has no {METADATA_KEY}=TRUE metadata"
                ));
            }
            reported(get_host_key_attributes(&api, &zone, &iname).await)
        }
    })
    .await;
    let cluster = &names.cluster;
    if !report.pinned.is_empty() {
        tracing::info!(
            "provision {cluster}: SSH host keys of {} pinned from the GCP guest attributes ({QUERY_PATH})",
            report.pinned.join(", ")
        );
    }
    for n in &report.first_contact {
        tracing::info!(
            "provision {cluster}: node {n}: no SSH host keys in its guest attributes within {} s (guest agent not up yet); pinned on first contact",
            p.cfg.host_key_wait.as_secs()
        );
    }
    for (n, why) in &report.unavailable {
        tracing::info!(
            "provision {cluster}: node {n}: SSH host keys not available from GCP ({why}); pinned on first contact"
        );
    }
    report
}

#[cfg(test)]
mod tests {
    use super::*;
    use google_cloud_compute_v1::model::{
        metadata, GuestAttributesEntry, GuestAttributesValue, Metadata,
    };

    fn blob(kind: &str) -> String {
        let mut b = (kind.len() as u32).to_be_bytes().to_vec();
        b.extend_from_slice(kind.as_bytes());
        b.extend_from_slice(&[0, 0, 0, 32]);
        b.extend_from_slice(&[7; 32]);
        base64::engine::general_purpose::STANDARD.encode(b)
    }

    fn answer(items: &[(&str, &str, String)]) -> GuestAttributes {
        GuestAttributes::new().set_query_value(GuestAttributesValue::new().set_items(
            items.iter().map(|(ns, k, v)| {
                GuestAttributesEntry::new()
                    .set_namespace(*ns)
                    .set_key(*k)
                    .set_value(v.clone())
            }),
        ))
    }

    #[test]
    fn only_hostkeys_entries_of_their_own_type_are_keys() {
        let ed = blob("ssh-ed25519");
        let ec = blob("ecdsa-sha2-nistp256");
        let ga = answer(&[
            ("hostkeys", "ssh-ed25519", format!("{ed}\n")),
            ("hostkeys", "ecdsa-sha2-nistp256", ec.clone()),
            // Another namespace, an unknown type, a blob of another type, not base64.
            ("other", "ssh-ed25519", ed.clone()),
            ("hostkeys", "ssh-dss", blob("ssh-dss")),
            ("hostkeys", "ssh-rsa", ed.clone()),
            ("hostkeys", "ssh-rsa", "!!!".into()),
        ]);
        assert_eq!(
            parse(&ga),
            vec![
                format!("ecdsa-sha2-nistp256 {ec}"),
                format!("ssh-ed25519 {ed}")
            ]
        );
        assert!(parse(&GuestAttributes::default()).is_empty());
        assert_eq!(reported(Ok(GuestAttributes::default())), Reported::NotYet);
    }

    #[test]
    fn not_found_is_not_yet_other_client_errors_are_final() {
        let status = |code| ApiError::Status {
            method: "GET".into(),
            target: "p".into(),
            code,
            message: "m".into(),
            reasons: vec![],
        };
        assert_eq!(reported(Err(status(404))), Reported::NotYet);
        assert!(matches!(
            reported(Err(status(403))),
            Reported::Unavailable(m) if m.contains("HTTP 403")
        ));
        assert_eq!(reported(Err(status(503))), Reported::NotYet);
    }

    #[test]
    fn enabled_reads_the_instance_metadata() {
        let with = |v: &str| {
            Instance::new().set_metadata(
                Metadata::new()
                    .set_items([metadata::Items::new().set_key(METADATA_KEY).set_value(v)]),
            )
        };
        assert!(enabled(&with("TRUE")));
        assert!(enabled(&with("true")));
        assert!(!enabled(&with("FALSE")));
        assert!(!enabled(&Instance::default()));
    }
}
