//! The AWS provider: a VPC with one subnet per zone, internet gateway, route table, one security
//! group for the nodes, the cluster's key pair, instances launched in batches, and an NLB for the
//! API. Everything carries `k8sforge.io/cluster=<name>` from creation on; `up` adopts what exists
//! and `teardown` removes by tag only.
//!
//! Module map: `config` (clients), `retry` (backoff), `plan` (pure layout), `preflight`
//! (offerings, quotas), `network`, `keypair`, `images`, `instances`, `loadbalancer`,
//! `inventory_map`, `teardown`.

/// Every item of a paginated describe, retried as one unit (throttling, 5xx): the shape every
/// "find by cluster tag" lookup shares.
macro_rules! paginate_all {
    ($retry:expr, $action:expr, $req:expr) => {{
        let req = $req;
        $crate::provider::aws::retry::send($retry, $action, || async {
            req.clone()
                .into_paginator()
                .items()
                .send()
                .collect::<Result<Vec<_>, _>>()
                .await
        })
        .await
    }};
}

pub mod capacity;
pub mod config;
pub mod drift;
pub mod efa;
pub mod error;
pub mod host_keys;
pub mod images;
pub mod instances;
pub mod inventory_map;
pub mod keypair;
pub mod loadbalancer;
pub mod network;
pub mod plan;
pub mod preflight;
pub mod retry;
pub mod session;
pub mod tags;
pub mod teardown;

pub use config::{Clients, StaticSettings, ENDPOINT_ENV};
pub use error::AwsError;
pub use session::Options;

use crate::inventory::{Inventory, Role};
use crate::profile::PodRouting;
use crate::provider::{Provider, ProviderFuture, ProvisionContext, Provisioned, TeardownReport};
use plan::AwsPlan;
use session::Session;

pub struct AwsProvider {
    clients: Clients,
    opts: Options,
}

/// What one `provision` did: the inventory and the resources it had to create.
#[derive(Debug, Clone)]
pub struct ProvisionOutcome {
    pub inventory: Inventory,
    pub created: Vec<(String, String)>,
    /// Instances replaced because they drifted from the profile (`--replace-drifted`).
    pub replaced: Vec<(String, String)>,
}

impl AwsProvider {
    pub fn new(clients: Clients, opts: Options) -> Self {
        AwsProvider { clients, opts }
    }

    /// Production: default credential chain, region from the profile or the environment,
    /// endpoint from `K8SFORGE_AWS_ENDPOINT_URL` when set.
    pub async fn from_environment(profile: &crate::profile::Profile) -> Self {
        let region = plan::region_of(profile);
        let cfg = config::default_config(region.as_deref()).await;
        let mut opts = Options::default();
        if let Some(w) = profile
            .provider
            .aws
            .as_ref()
            .and_then(|a| a.host_key_wait_seconds)
        {
            opts.host_key_wait = std::time::Duration::from_secs(w);
        }
        AwsProvider::new(Clients::new(&cfg), opts)
    }

    fn session(&self, ctx: &ProvisionContext<'_>) -> Session {
        Session::new(self.clients.clone(), self.opts.clone(), &ctx.profile.name)
    }

    fn plan(&self, ctx: &ProvisionContext<'_>) -> Result<AwsPlan, AwsError> {
        let region = if self.clients.region.is_empty() {
            plan::region_of(ctx.profile).ok_or_else(|| {
                AwsError::Preflight(
                    "no AWS region: set provider.aws.region in the profile or AWS_REGION".into(),
                )
            })?
        } else {
            self.clients.region.clone()
        };
        plan::plan(ctx.profile, ctx.planned, &region)
    }

    pub async fn preflight_checks(&self, ctx: &ProvisionContext<'_>) -> Result<(), AwsError> {
        let plan = self.plan(ctx)?;
        let s = self.session(ctx);
        images::find(&s, &plan.ami, &plan.region).await?;
        preflight::run(&s, &plan).await
    }

    /// Preflight, then create what is missing and adopt what exists.
    pub async fn provision_outcome(
        &self,
        ctx: &ProvisionContext<'_>,
    ) -> Result<ProvisionOutcome, AwsError> {
        let plan = self.plan(ctx)?;
        let s = self.session(ctx);
        let ami = images::find(&s, &plan.ami, &plan.region).await?;
        preflight::run(&s, &plan).await?;
        self.create(ctx, &plan, &s, &ami).await
    }

    /// Everything after preflight: key pair, network, instances (adopt-and-compare), routes, LB.
    async fn create(
        &self,
        ctx: &ProvisionContext<'_>,
        plan: &AwsPlan,
        s: &Session,
        ami: &images::Ami,
    ) -> Result<ProvisionOutcome, AwsError> {
        eprintln!(
            "provision {}: {} nodes in {} ({})",
            plan.cluster,
            plan.nodes.len(),
            plan.region,
            ami.name
        );
        // The key pair first: a name taken by an untagged key stops the run before anything else.
        let key = keypair::ensure(s, &ctx.ssh_public_key).await?;
        let net = network::ensure(s, plan).await?;
        let (nodes, replaced) =
            instances::ensure(s, plan, &net, ami, &key, ctx.replace_drifted).await?;
        if plan.routing == PodRouting::RouteTable {
            instances::ensure_routes(s, plan, &net.route_table_id, &nodes).await?;
        }
        let control_planes: Vec<String> = plan
            .nodes
            .iter()
            .filter(|n| n.role == Role::ControlPlane)
            .filter_map(|n| nodes.get(&n.name).and_then(|i| i.instance_id()))
            .map(str::to_string)
            .collect();
        let lb = loadbalancer::ensure(
            s,
            &net.vpc_id,
            &net.subnet_ids,
            plan.api_port,
            &control_planes,
        )
        .await?;
        let inventory = inventory_map::build(ctx.profile, ctx.planned, &nodes, &lb)?;
        let ids: std::collections::BTreeMap<String, String> = nodes
            .iter()
            .filter_map(|(n, i)| Some((n.clone(), i.instance_id()?.to_string())))
            .collect();
        let keys = host_keys::pin_from_console(s, &inventory, &ids, &ctx.cluster_dir).await;
        if !keys.pinned.is_empty() {
            eprintln!(
                "provision {}: SSH host keys of {} pinned from the AWS console output",
                plan.cluster,
                keys.pinned.join(", ")
            );
        }
        if !keys.first_contact.is_empty() {
            eprintln!(
                "provision {}: no SSH host keys in the console output of {} within {} s; they are pinned on first contact",
                plan.cluster,
                keys.first_contact.join(", "),
                s.opts.host_key_wait.as_secs()
            );
        }
        let created = s.created_list();
        eprintln!(
            "provision {}: {} resources created, API at {}",
            plan.cluster,
            created.len(),
            inventory.api.url()
        );
        Ok(ProvisionOutcome {
            inventory,
            created,
            replaced,
        })
    }

    pub async fn teardown_report(
        &self,
        ctx: &ProvisionContext<'_>,
        dry_run: bool,
    ) -> Result<TeardownReport, AwsError> {
        teardown::run(&self.session(ctx), dry_run).await
    }
}

impl Provider for AwsProvider {
    fn name(&self) -> &'static str {
        "aws"
    }

    fn preflight<'a>(&'a self, ctx: &'a ProvisionContext<'a>) -> ProviderFuture<'a, ()> {
        Box::pin(async move { Ok(self.preflight_checks(ctx).await?) })
    }

    /// After `preflight` (the facade runs it first): only the image lookup is repeated.
    fn provision<'a>(&'a self, ctx: &'a ProvisionContext<'a>) -> ProviderFuture<'a, Provisioned> {
        Box::pin(async move {
            let plan = self.plan(ctx)?;
            let s = self.session(ctx);
            let ami = images::find(&s, &plan.ami, &plan.region).await?;
            let out = self.create(ctx, &plan, &s, &ami).await?;
            Ok(Provisioned::cloud(out.inventory, out.created, out.replaced))
        })
    }

    fn teardown<'a>(
        &'a self,
        ctx: &'a ProvisionContext<'a>,
        dry_run: bool,
    ) -> ProviderFuture<'a, TeardownReport> {
        Box::pin(async move { Ok(self.teardown_report(ctx, dry_run).await?) })
    }
}
