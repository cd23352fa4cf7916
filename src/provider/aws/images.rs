//! AMI lookup by owner and name pattern, as the profile gives it: the newest available match.

use super::error::AwsError;
use super::retry;
use super::session::Session;
use super::tags;
use crate::profile::AmiLookup;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ami {
    pub id: String,
    pub name: String,
    pub root_device: String,
}

pub async fn find(s: &Session, lookup: &AmiLookup, region: &str) -> Result<Ami, AwsError> {
    let out = retry::send(&s.opts.retry, "DescribeImages", || {
        s.ec2()
            .describe_images()
            .owners(&lookup.owner)
            .filters(tags::filter("name", &[&lookup.name]))
            .filters(tags::filter("state", &["available"]))
            .send()
    })
    .await?;
    // ISO 8601 timestamps sort as strings.
    let best = out
        .images()
        .iter()
        .filter(|i| i.image_id().is_some())
        .max_by(|a, b| a.creation_date().cmp(&b.creation_date()));
    match best {
        Some(i) => Ok(Ami {
            id: i.image_id().unwrap_or_default().to_string(),
            name: i.name().unwrap_or_default().to_string(),
            root_device: i.root_device_name().unwrap_or("/dev/sda1").to_string(),
        }),
        None => Err(AwsError::Preflight(format!(
            "provider.aws.ami: no available image owned by {} matches the name {:?} in {region}; check the owner account id and the name pattern (aws ec2 describe-images --owners {} --filters Name=name,Values='{}' --region {region})",
            lookup.owner, lookup.name, lookup.owner, lookup.name
        ))),
    }
}
