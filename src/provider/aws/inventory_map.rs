//! The provisioned inventory: the planned nodes (names, roles, pod CIDRs) with the addresses
//! AWS gave them, SSH via the public address or the profile's bastion, and the API at the
//! load balancer's DNS name.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use aws_sdk_ec2::types::Instance;

use super::error::AwsError;
use super::loadbalancer::ApiLoadBalancer;
use crate::inventory::{ApiEndpoint, Inventory};
use crate::profile::Profile;

pub fn build(
    profile: &Profile,
    planned: &Inventory,
    instances: &BTreeMap<String, Instance>,
    lb: &ApiLoadBalancer,
) -> Result<Inventory, AwsError> {
    let bastion = profile
        .provider
        .aws
        .as_ref()
        .and_then(|a| a.bastion.clone());
    let mut nodes = Vec::with_capacity(planned.nodes.len());
    for planned_node in &planned.nodes {
        let i = instances.get(&planned_node.name).ok_or_else(|| {
            AwsError::unexpected(
                "DescribeInstances",
                format!("node {} has no instance", planned_node.name),
            )
        })?;
        let private: Ipv4Addr = i
            .private_ip_address()
            .and_then(|a| a.parse().ok())
            .ok_or_else(|| {
                AwsError::unexpected(
                    "DescribeInstances",
                    format!(
                        "instance {} ({}) has no private address",
                        i.instance_id().unwrap_or("?"),
                        planned_node.name
                    ),
                )
            })?;
        let public: Option<IpAddr> = i.public_ip_address().and_then(|a| a.parse().ok());
        let mut n = planned_node.clone();
        n.internal_ip = private;
        n.external_ip = public;
        // `ssh.address: private`: dial the private address even where a public one exists.
        let public = public.filter(|_| profile.ssh.address.is_public());
        match (&bastion, public) {
            (None, Some(p)) => {
                n.ssh.host = p;
                n.ssh.bastion = None;
            }
            _ => {
                n.ssh.host = IpAddr::V4(private);
                n.ssh.bastion = bastion.clone();
            }
        }
        nodes.push(n);
    }
    let api = match &profile.api_server.endpoint {
        // The user's own name (a CNAME to the load balancer) is what clients and certificates use.
        Some(e) => ApiEndpoint {
            host: e.clone(),
            port: profile.api_server.port,
            addresses: e.parse().into_iter().collect(),
        },
        None => ApiEndpoint {
            host: lb.dns_name.clone(),
            port: profile.api_server.port,
            addresses: Vec::new(),
        },
    };
    Ok(Inventory {
        cluster: planned.cluster.clone(),
        nodes,
        api,
        planned: false,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile;

    fn instances(inv: &Inventory) -> BTreeMap<String, Instance> {
        inv.nodes
            .iter()
            .enumerate()
            .map(|(i, n)| {
                (
                    n.name.clone(),
                    Instance::builder()
                        .instance_id(format!("i-{i}"))
                        .private_ip_address(format!("10.0.0.{}", i + 10))
                        .public_ip_address(format!("198.51.100.{}", i + 10))
                        .build(),
                )
            })
            .collect()
    }

    fn lb() -> ApiLoadBalancer {
        ApiLoadBalancer {
            arn: "arn".into(),
            dns_name: "k8s-gpu-dev-api-1.elb.us-east-1.amazonaws.com".into(),
            target_group_arn: "tg".into(),
        }
    }

    #[test]
    fn public_addresses_for_ssh_and_the_lb_for_the_api() {
        let p = profile::load("gpu-dev", &[]).unwrap().profile;
        let planned = crate::inventory::planned(&p, &Default::default()).unwrap();
        let inv = build(&p, &planned, &instances(&planned), &lb()).unwrap();
        assert!(!inv.planned);
        assert_eq!(
            inv.api.url(),
            "https://k8s-gpu-dev-api-1.elb.us-east-1.amazonaws.com:6443"
        );
        let n = &inv.nodes[0];
        assert_eq!(n.internal_ip.to_string(), "10.0.0.10");
        assert_eq!(n.ssh.host.to_string(), "198.51.100.10");
        assert_eq!(n.ssh.bastion, None);
        assert_eq!(n.pod_cidr, planned.nodes[0].pod_cidr);
    }

    #[test]
    fn a_bastion_means_ssh_to_private_addresses_through_it() {
        let p = profile::load(
            "gpu-dev",
            &["provider.aws.bastion=ubuntu@bastion.example.com:22".to_string()],
        )
        .unwrap()
        .profile;
        let planned = crate::inventory::planned(&p, &Default::default()).unwrap();
        let inv = build(&p, &planned, &instances(&planned), &lb()).unwrap();
        let n = &inv.nodes[1];
        assert_eq!(n.ssh.host.to_string(), "10.0.0.11");
        assert_eq!(
            n.ssh.bastion.as_deref(),
            Some("ubuntu@bastion.example.com:22")
        );
    }

    #[test]
    fn a_missing_instance_is_an_error_not_a_hole() {
        let p = profile::load("gpu-dev", &[]).unwrap().profile;
        let planned = crate::inventory::planned(&p, &Default::default()).unwrap();
        let mut inst = instances(&planned);
        inst.remove("gpu-2");
        let e = build(&p, &planned, &inst, &lb()).unwrap_err().to_string();
        assert!(e.contains("gpu-2"), "{e}");
    }
}
