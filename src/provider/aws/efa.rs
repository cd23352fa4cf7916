//! GPU instances that train across nodes: their Elastic Fabric Adapter interfaces at launch and
//! the cluster placement group that keeps them close (one per cluster, single zone).
//!
//! The network-card layouts are AWS's (EC2 User Guide, "Maximize network bandwidth on Amazon
//! EC2 instances with multiple network cards", the P5 example of 32 EFA devices and one ENA
//! device): the primary interface is ENA on network card 0, device 0; an EFA-only interface on
//! card 0, device 1; then one EFA-only interface on device 0 of every further card. The
//! security group's "all traffic from the group itself" rule (plan.rs, `Rule::all(SelfGroup)`)
//! and its default all-outbound rule are what EFA requires of the group.

use aws_sdk_ec2::types::{
    InstanceNetworkInterfaceSpecification, PlacementGroup, PlacementStrategy, ResourceType,
};

use super::error::AwsError;
use super::retry;
use super::session::Session;
use super::tags;

pub use crate::profile::efa_layout::{layout, EfaLayout};

/// Every network interface of one launch: the primary (ENA, the node's address) and, for an EFA
/// launch (`efa_type`: its instance type), the EFA-only interfaces. EC2 assigns a public address only to an instance launched
/// with a single interface, so an EFA instance has none (reach it inside the VPC).
pub fn interfaces(
    efa_type: Option<&str>,
    subnet: &str,
    sg: &str,
) -> Vec<InstanceNetworkInterfaceSpecification> {
    let base = |card: i32, device: i32| {
        InstanceNetworkInterfaceSpecification::builder()
            .network_card_index(card)
            .device_index(device)
            .subnet_id(subnet)
            .groups(sg)
            .delete_on_termination(true)
    };
    let Some(l) = efa_type.and_then(layout) else {
        return vec![InstanceNetworkInterfaceSpecification::builder()
            .device_index(0)
            .subnet_id(subnet)
            .groups(sg)
            .associate_public_ip_address(true)
            .delete_on_termination(true)
            .build()];
    };
    let mut out = vec![
        base(0, 0).interface_type("interface").build(),
        base(0, 1).interface_type("efa-only").build(),
    ];
    for card in 1..i32::try_from(l.network_cards).unwrap_or(1) {
        out.push(base(card, 0).interface_type("efa-only").build());
    }
    out
}

/// The cluster's placement group name.
pub fn placement_group_name(cluster: &str) -> String {
    tags::resource_name(cluster, "gpu")
}

/// Placement groups tagged for the cluster.
pub async fn describe_placement_groups(s: &Session) -> Result<Vec<PlacementGroup>, AwsError> {
    let out = retry::send(&s.opts.retry, "DescribePlacementGroups", || {
        s.ec2()
            .describe_placement_groups()
            .filters(tags::cluster_filter(&s.cluster))
            .send()
    })
    .await?;
    Ok(out
        .placement_groups()
        .iter()
        .filter(|g| tags::owned(g.tags(), &s.cluster))
        .cloned()
        .collect())
}

/// The cluster placement group (strategy `cluster`, created and tagged when missing); its name.
pub async fn ensure_placement_group(s: &Session) -> Result<String, AwsError> {
    let name = placement_group_name(&s.cluster);
    if describe_placement_groups(s)
        .await?
        .iter()
        .any(|g| g.group_name() == Some(name.as_str()))
    {
        return Ok(name);
    }
    let out = retry::send(&s.opts.retry, "CreatePlacementGroup", || {
        s.ec2()
            .create_placement_group()
            .group_name(&name)
            .strategy(PlacementStrategy::Cluster)
            .tag_specifications(tags::spec(
                ResourceType::PlacementGroup,
                &s.cluster,
                &name,
                &[],
            ))
            .send()
    })
    .await?;
    let id = out
        .placement_group()
        .and_then(|g| g.group_id())
        .unwrap_or(name.as_str())
        .to_string();
    s.created("placement-group", &id);
    Ok(name)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn p5_has_the_documented_32_efa_and_one_ena() {
        let ifs = interfaces(Some("p5.48xlarge"), "subnet-1", "sg-1");
        assert_eq!(ifs.len(), 33);
        let primary = &ifs[0];
        assert_eq!(
            (
                primary.network_card_index(),
                primary.device_index(),
                primary.interface_type()
            ),
            (Some(0), Some(0), Some("interface"))
        );
        assert_eq!(primary.associate_public_ip_address(), None);
        let efa: Vec<(i32, i32)> = ifs
            .iter()
            .filter(|i| i.interface_type() == Some("efa-only"))
            .map(|i| (i.network_card_index().unwrap(), i.device_index().unwrap()))
            .collect();
        assert_eq!(efa.len(), 32);
        assert_eq!(efa[0], (0, 1));
        assert_eq!(efa[31], (31, 0));
        let cpu = interfaces(None, "subnet-1", "sg-1");
        assert_eq!(cpu.len(), 1);
        assert_eq!(cpu[0].associate_public_ip_address(), Some(true));
    }
}
