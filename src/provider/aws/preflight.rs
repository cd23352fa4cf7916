//! Checks before anything is created: the instance types are offered in the zones they are
//! placed in, and the On-Demand vCPU quota of each family covers the cluster. A failure says
//! what is needed, what is allowed, where, and the command that asks for more.

use std::collections::{BTreeMap, BTreeSet};

use aws_sdk_ec2::types::{InstanceType, LocationType};

use super::error::{AwsError, QuotaShortfall};
use super::plan::AwsPlan;
use super::retry;
use super::session::Session;
use super::tags;

/// The Service Quotas code and name of the On-Demand vCPU quota an instance type counts against.
pub fn quota_for(instance_type: &str) -> (&'static str, &'static str) {
    let family: String = instance_type
        .split('.')
        .next()
        .unwrap_or_default()
        .chars()
        .take_while(|c| c.is_ascii_alphabetic())
        .collect::<String>()
        .to_ascii_lowercase();
    match family.as_str() {
        "p" => ("L-417A185B", "Running On-Demand P instances"),
        "g" | "vt" => ("L-DB2E81BA", "Running On-Demand G and VT instances"),
        "f" => ("L-74FC7D96", "Running On-Demand F instances"),
        "inf" => ("L-1945791B", "Running On-Demand Inf instances"),
        "trn" => ("L-2C3B7624", "Running On-Demand Trn instances"),
        "dl" => ("L-6E869C2A", "Running On-Demand DL instances"),
        "x" => ("L-7295265B", "Running On-Demand X instances"),
        "u" => ("L-43DA4232", "Running On-Demand High Memory instances"),
        _ => (
            "L-1216C47A",
            "Running On-Demand Standard (A, C, D, H, I, M, R, T, Z) instances",
        ),
    }
}

pub async fn run(s: &Session, plan: &AwsPlan) -> Result<(), AwsError> {
    let mut counts: BTreeMap<&str, u64> = BTreeMap::new();
    let mut placed: BTreeSet<(&str, &str)> = BTreeSet::new();
    for n in &plan.nodes {
        *counts.entry(n.instance_type.as_str()).or_default() += 1;
        if let Some(z) = plan.subnets.get(n.zone) {
            placed.insert((n.instance_type.as_str(), z.zone.as_str()));
        }
    }
    let types: Vec<&str> = counts.keys().copied().collect();
    check_offerings(s, plan, &types, &placed).await?;
    let vcpus = vcpus(s, &types).await?;
    check_quotas(s, plan, &counts, &vcpus).await
}

async fn check_offerings(
    s: &Session,
    plan: &AwsPlan,
    types: &[&str],
    placed: &BTreeSet<(&str, &str)>,
) -> Result<(), AwsError> {
    let zones: Vec<&str> = plan.subnets.iter().map(|z| z.zone.as_str()).collect();
    let req = s
        .ec2()
        .describe_instance_type_offerings()
        .location_type(LocationType::AvailabilityZone)
        .filters(tags::filter("instance-type", types))
        .filters(tags::filter("location", &zones));
    let offers = paginate_all!(&s.opts.retry, "DescribeInstanceTypeOfferings", req)?;
    let offered: BTreeSet<(String, String)> = offers
        .iter()
        .filter_map(|o| {
            Some((
                o.instance_type()?.as_str().to_string(),
                o.location()?.to_string(),
            ))
        })
        .collect();
    let missing: Vec<String> = placed
        .iter()
        .filter(|(t, z)| !offered.contains(&(t.to_string(), z.to_string())))
        .map(|(t, z)| format!("{t} in {z}"))
        .collect();
    if !missing.is_empty() {
        return Err(AwsError::Preflight(format!(
            "instance type not offered: {} (region {}); pick zones that offer it (aws ec2 describe-instance-type-offerings --location-type availability-zone --filters Name=instance-type,Values={} --region {}) and set provider.aws.zones",
            missing.join(", "),
            plan.region,
            types.join(","),
            plan.region
        )));
    }
    Ok(())
}

async fn vcpus(s: &Session, types: &[&str]) -> Result<BTreeMap<String, u64>, AwsError> {
    let req = s
        .ec2()
        .describe_instance_types()
        .set_instance_types(Some(types.iter().map(|t| InstanceType::from(*t)).collect()));
    let out = paginate_all!(&s.opts.retry, "DescribeInstanceTypes", req)?;
    let map: BTreeMap<String, u64> = out
        .iter()
        .filter_map(|t| {
            let v = t.v_cpu_info()?.default_v_cpus()?;
            Some((
                t.instance_type()?.as_str().to_string(),
                u64::try_from(v).ok()?,
            ))
        })
        .collect();
    for t in types {
        if !map.contains_key(*t) {
            return Err(AwsError::Preflight(format!(
                "instance type {t} is unknown in this region (DescribeInstanceTypes has no vCPU count for it)"
            )));
        }
    }
    Ok(map)
}

/// Per quota: its name, the vCPUs needed, and `(count, type, vCPUs each)`.
type Need = (&'static str, u64, Vec<(u64, String, u64)>);

async fn check_quotas(
    s: &Session,
    plan: &AwsPlan,
    counts: &BTreeMap<&str, u64>,
    vcpus: &BTreeMap<String, u64>,
) -> Result<(), AwsError> {
    let mut need: BTreeMap<&'static str, Need> = BTreeMap::new();
    for (t, n) in counts {
        let (code, name) = quota_for(t);
        let each = vcpus.get(*t).copied().unwrap_or(0);
        let e = need.entry(code).or_insert((name, 0, Vec::new()));
        e.1 += n * each;
        e.2.push((*n, t.to_string(), each));
    }
    for (code, (name, needed, breakdown)) in need {
        let allowed = match quota_value(s, code).await {
            Ok(v) => v,
            Err(e) => {
                // No permission to read quotas is not a reason to stop; RunInstances still reports
                // VcpuLimitExceeded, with the batch, if the quota is short.
                tracing::warn!(quota = code, error = %e, "could not read the vCPU quota; not checked");
                continue;
            }
        };
        if needed > allowed {
            return Err(AwsError::Quota(Box::new(QuotaShortfall {
                region: plan.region.clone(),
                quota_code: code.to_string(),
                quota_name: name.to_string(),
                needed_vcpus: needed,
                allowed_vcpus: allowed,
                breakdown,
            })));
        }
        tracing::info!(quota = code, needed, allowed, "vCPU quota ok");
    }
    Ok(())
}

/// The account's applied quota, or AWS's default where none was ever applied.
async fn quota_value(s: &Session, code: &str) -> Result<u64, AwsError> {
    let q = &s.clients.quotas;
    let applied = retry::send(&s.opts.retry, "GetServiceQuota", || {
        q.get_service_quota()
            .service_code("ec2")
            .quota_code(code)
            .send()
    })
    .await;
    let value = match applied {
        Ok(out) => out.quota().and_then(|q| q.value()),
        Err(e) if e.code() == Some("NoSuchResourceException") => {
            let out = retry::send(&s.opts.retry, "GetAWSDefaultServiceQuota", || {
                q.get_aws_default_service_quota()
                    .service_code("ec2")
                    .quota_code(code)
                    .send()
            })
            .await?;
            out.quota().and_then(|q| q.value())
        }
        Err(e) => return Err(e),
    };
    let v =
        value.ok_or_else(|| AwsError::unexpected("GetServiceQuota", "quota without a value"))?;
    Ok(if v.is_finite() && v > 0.0 {
        v as u64
    } else {
        0
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_map_to_their_quotas() {
        assert_eq!(quota_for("p5.48xlarge").0, "L-417A185B");
        assert_eq!(quota_for("p4d.24xlarge").0, "L-417A185B");
        assert_eq!(quota_for("g6e.12xlarge").0, "L-DB2E81BA");
        assert_eq!(quota_for("m6i.4xlarge").0, "L-1216C47A");
        assert_eq!(quota_for("trn1.32xlarge").0, "L-2C3B7624");
        assert_eq!(quota_for("inf2.xlarge").0, "L-1945791B");
        assert_eq!(quota_for("x2idn.16xlarge").0, "L-7295265B");
    }
}
