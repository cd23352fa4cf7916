//! The API's network load balancer: NLB, target group (TCP, instance targets), listener on the
//! API port, control planes registered. Found by name and then checked for the cluster tag:
//! ELBv2 describes cannot filter by tag.

use aws_sdk_elasticloadbalancingv2::types::{
    Action, ActionTypeEnum, LoadBalancer, LoadBalancerSchemeEnum, LoadBalancerTypeEnum,
    ProtocolEnum, Tag, TargetDescription, TargetGroup, TargetTypeEnum,
};

use super::error::AwsError;
use super::retry;
use super::session::Session;
use super::tags;
use crate::provider::CLUSTER_TAG;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiLoadBalancer {
    pub arn: String,
    pub dns_name: String,
    pub target_group_arn: String,
}

fn elb_tags(cluster: &str, name: &str) -> Vec<Tag> {
    vec![
        Tag::builder().key(CLUSTER_TAG).value(cluster).build(),
        Tag::builder().key("Name").value(name).build(),
    ]
}

/// Of these ARNs, the ones tagged as this cluster's (DescribeTags takes 20 ARNs per call).
pub async fn owned_arns(s: &Session, arns: Vec<String>) -> Result<Vec<String>, AwsError> {
    let mut out = Vec::new();
    for chunk in arns.chunks(20) {
        let res = retry::send(&s.opts.retry, "DescribeTags", || {
            s.elb()
                .describe_tags()
                .set_resource_arns(Some(chunk.to_vec()))
                .send()
        })
        .await?;
        for d in res.tag_descriptions() {
            let mine = d
                .tags()
                .iter()
                .any(|t| t.key() == Some(CLUSTER_TAG) && t.value() == Some(s.cluster.as_str()));
            if mine {
                if let Some(a) = d.resource_arn() {
                    out.push(a.to_string());
                }
            }
        }
    }
    Ok(out)
}

async fn find_lb(s: &Session, name: &str) -> Result<Option<LoadBalancer>, AwsError> {
    let res = retry::send(&s.opts.retry, "DescribeLoadBalancers", || {
        s.elb().describe_load_balancers().names(name).send()
    })
    .await;
    match res {
        Ok(out) => Ok(out.load_balancers().first().cloned()),
        Err(e) if e.code() == Some("LoadBalancerNotFound") => Ok(None),
        Err(e) => Err(e),
    }
}

async fn find_tg(s: &Session, name: &str) -> Result<Option<TargetGroup>, AwsError> {
    let res = retry::send(&s.opts.retry, "DescribeTargetGroups", || {
        s.elb().describe_target_groups().names(name).send()
    })
    .await;
    match res {
        Ok(out) => Ok(out.target_groups().first().cloned()),
        Err(e) if e.code() == Some("TargetGroupNotFound") => Ok(None),
        Err(e) => Err(e),
    }
}

async fn require_owned(s: &Session, kind: &str, name: &str, arn: &str) -> Result<(), AwsError> {
    if owned_arns(s, vec![arn.to_string()]).await?.is_empty() {
        return Err(AwsError::NotOwned(format!(
            "{kind} {name} ({arn}): it exists without the tag {CLUSTER_TAG}={}; delete or rename it, or pick another cluster name",
            s.cluster
        )));
    }
    Ok(())
}

pub async fn ensure(
    s: &Session,
    vpc_id: &str,
    subnet_ids: &[String],
    port: u16,
    control_planes: &[String],
) -> Result<ApiLoadBalancer, AwsError> {
    let lb_name = tags::elb_name(&s.cluster, "api");
    let lb = match find_lb(s, &lb_name).await? {
        Some(lb) => {
            require_owned(
                s,
                "load balancer",
                &lb_name,
                lb.load_balancer_arn().unwrap_or("?"),
            )
            .await?;
            lb
        }
        None => {
            let t = elb_tags(&s.cluster, &lb_name);
            let out = retry::send(&s.opts.retry, "CreateLoadBalancer", || {
                s.elb()
                    .create_load_balancer()
                    .name(&lb_name)
                    .r#type(LoadBalancerTypeEnum::Network)
                    .scheme(LoadBalancerSchemeEnum::InternetFacing)
                    .set_subnets(Some(subnet_ids.to_vec()))
                    .set_tags(Some(t.clone()))
                    .send()
            })
            .await?;
            let lb =
                out.load_balancers().first().cloned().ok_or_else(|| {
                    AwsError::unexpected("CreateLoadBalancer", "no load balancer")
                })?;
            s.created("load-balancer", lb.load_balancer_arn().unwrap_or("?"));
            lb
        }
    };
    let lb_arn = lb.load_balancer_arn().unwrap_or_default().to_string();

    let tg_name = tags::elb_name(&s.cluster, "api-tg");
    let tg = match find_tg(s, &tg_name).await? {
        Some(tg) => {
            require_owned(
                s,
                "target group",
                &tg_name,
                tg.target_group_arn().unwrap_or("?"),
            )
            .await?;
            tg
        }
        None => {
            let t = elb_tags(&s.cluster, &tg_name);
            let out = retry::send(&s.opts.retry, "CreateTargetGroup", || {
                s.elb()
                    .create_target_group()
                    .name(&tg_name)
                    .protocol(ProtocolEnum::Tcp)
                    .port(i32::from(port))
                    .vpc_id(vpc_id)
                    .target_type(TargetTypeEnum::Instance)
                    .health_check_protocol(ProtocolEnum::Tcp)
                    .set_tags(Some(t.clone()))
                    .send()
            })
            .await?;
            let tg = out
                .target_groups()
                .first()
                .cloned()
                .ok_or_else(|| AwsError::unexpected("CreateTargetGroup", "no target group"))?;
            s.created("target-group", tg.target_group_arn().unwrap_or("?"));
            tg
        }
    };
    let tg_arn = tg.target_group_arn().unwrap_or_default().to_string();

    let listeners = retry::send(&s.opts.retry, "DescribeListeners", || {
        s.elb()
            .describe_listeners()
            .load_balancer_arn(&lb_arn)
            .send()
    })
    .await?;
    if !listeners
        .listeners()
        .iter()
        .any(|l| l.port() == Some(i32::from(port)))
    {
        let action = Action::builder()
            .r#type(ActionTypeEnum::Forward)
            .target_group_arn(&tg_arn)
            .build();
        let t = elb_tags(&s.cluster, &lb_name);
        let out = retry::send(&s.opts.retry, "CreateListener", || {
            s.elb()
                .create_listener()
                .load_balancer_arn(&lb_arn)
                .protocol(ProtocolEnum::Tcp)
                .port(i32::from(port))
                .default_actions(action.clone())
                .set_tags(Some(t.clone()))
                .send()
        })
        .await?;
        s.created(
            "listener",
            out.listeners()
                .first()
                .and_then(|l| l.listener_arn())
                .unwrap_or("?"),
        );
    }

    let health = retry::send(&s.opts.retry, "DescribeTargetHealth", || {
        s.elb()
            .describe_target_health()
            .target_group_arn(&tg_arn)
            .send()
    })
    .await?;
    let registered: Vec<&str> = health
        .target_health_descriptions()
        .iter()
        .filter_map(|d| d.target().and_then(|t| t.id()))
        .collect();
    let mut targets = Vec::new();
    for id in control_planes {
        if !registered.contains(&id.as_str()) {
            targets.push(
                TargetDescription::builder()
                    .id(id)
                    .port(i32::from(port))
                    .build(),
            );
        }
    }
    if !targets.is_empty() {
        retry::send(&s.opts.retry, "RegisterTargets", || {
            s.elb()
                .register_targets()
                .target_group_arn(&tg_arn)
                .set_targets(Some(targets.clone()))
                .send()
        })
        .await?;
    }
    Ok(ApiLoadBalancer {
        arn: lb_arn,
        dns_name: lb.dns_name().unwrap_or_default().to_string(),
        target_group_arn: tg_arn,
    })
}
