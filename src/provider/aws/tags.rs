//! Ownership by tag: every resource carries `k8sforge.io/cluster=<name>` from its creation on
//! (TagSpecifications), every lookup filters by it, and nothing without it is ever touched.

use aws_sdk_ec2::types::{Filter, ResourceType, Tag, TagSpecification};

use crate::provider::CLUSTER_TAG;

/// Which instance batch an instance was launched in: `<group>/<first index in group>`.
pub const BATCH_TAG: &str = "k8sforge.io/batch";
/// The node role of an instance (control-plane or worker).
pub const ROLE_TAG: &str = "k8sforge.io/role";

pub fn cluster_filter(cluster: &str) -> Filter {
    Filter::builder()
        .name(format!("tag:{CLUSTER_TAG}"))
        .values(cluster)
        .build()
}

pub fn filter(name: &str, values: &[&str]) -> Filter {
    let mut b = Filter::builder().name(name);
    for v in values {
        b = b.values(*v);
    }
    b.build()
}

fn tag(k: &str, v: &str) -> Tag {
    Tag::builder().key(k).value(v).build()
}

/// Tags for a resource created now: cluster, Name and any extra pairs.
pub fn spec(
    rt: ResourceType,
    cluster: &str,
    name: &str,
    extra: &[(&str, &str)],
) -> TagSpecification {
    let mut b = TagSpecification::builder()
        .resource_type(rt)
        .tags(tag(CLUSTER_TAG, cluster))
        .tags(tag("Name", name));
    for (k, v) in extra {
        b = b.tags(tag(k, v));
    }
    b.build()
}

pub fn value<'a>(tags: &'a [Tag], key: &str) -> Option<&'a str> {
    tags.iter()
        .find(|t| t.key() == Some(key))
        .and_then(|t| t.value())
}

/// True only when the resource is tagged as this cluster's: the last guard before a delete.
pub fn owned(tags: &[Tag], cluster: &str) -> bool {
    value(tags, CLUSTER_TAG) == Some(cluster)
}

/// Name used for the cluster's resources, `k8sforge-<cluster>[-suffix]`.
pub fn resource_name(cluster: &str, suffix: &str) -> String {
    if suffix.is_empty() {
        format!("k8sforge-{cluster}")
    } else {
        format!("k8sforge-{cluster}-{suffix}")
    }
}

/// ELBv2 names: at most 32 characters of [A-Za-z0-9-], no leading or trailing hyphen. Long
/// cluster names are shortened with a hash suffix so two clusters never share a name.
pub fn elb_name(cluster: &str, suffix: &str) -> String {
    let full = format!("k8s-{cluster}-{suffix}");
    let clean: String = full
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .collect();
    if clean.len() <= 32 {
        return clean.trim_matches('-').to_string();
    }
    use sha2::Digest;
    let h = hex::encode(sha2::Sha256::digest(full.as_bytes()));
    let keep = 32 - 9;
    format!("{}-{}", clean[..keep].trim_end_matches('-'), &h[..8])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn elb_names_fit_the_limit_and_stay_distinct() {
        assert_eq!(elb_name("gpu-1000", "api"), "k8s-gpu-1000-api");
        let a = elb_name("a-very-long-cluster-name-for-training-team-one", "api");
        let b = elb_name("a-very-long-cluster-name-for-training-team-two", "api");
        assert!(a.len() <= 32 && b.len() <= 32, "{a} {b}");
        assert_ne!(a, b);
        assert!(!a.starts_with('-') && !a.ends_with('-'));
    }

    #[test]
    fn ownership_needs_the_exact_cluster_value() {
        let tags = vec![tag(CLUSTER_TAG, "gpu-1000"), tag("Name", "x")];
        assert!(owned(&tags, "gpu-1000"));
        assert!(!owned(&tags, "gpu-100"));
        assert!(!owned(&[tag("Name", "x")], "gpu-1000"));
    }
}
