//! What every AWS step needs: the clients, the retry policy, the cluster name, and a log of the
//! resources created in this run (so a re-run can show it created nothing).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::config::Clients;
use super::retry::RetryPolicy;

/// Knobs for waiting and parallelism; tests shorten the intervals.
#[derive(Debug, Clone)]
pub struct Options {
    pub retry: RetryPolicy,
    /// Time between two describes while waiting for instances.
    pub poll_interval: Duration,
    /// Longest wait for instances to run or terminate.
    pub wait_timeout: Duration,
    /// Longest time teardown retries a delete that fails with DependencyViolation.
    pub dependency_timeout: Duration,
    /// Requests in flight for per-instance calls (source/destination check).
    pub parallelism: usize,
    pub max_batch: usize,
    /// How long provision waits for new instances' consoles to show their SSH host keys
    /// (`provider.aws.hostKeyWaitSeconds`); 0: one look.
    pub host_key_wait: Duration,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            retry: RetryPolicy::default(),
            poll_interval: Duration::from_secs(5),
            wait_timeout: Duration::from_secs(20 * 60),
            dependency_timeout: Duration::from_secs(10 * 60),
            parallelism: 16,
            max_batch: super::config::MAX_BATCH,
            host_key_wait: Duration::from_secs(120),
        }
    }
}

#[derive(Clone)]
pub struct Session {
    pub clients: Clients,
    pub opts: Options,
    pub cluster: String,
    created: Arc<Mutex<Vec<(String, String)>>>,
}

impl Session {
    pub fn new(clients: Clients, opts: Options, cluster: &str) -> Self {
        Session {
            clients,
            opts,
            cluster: cluster.to_string(),
            created: Arc::default(),
        }
    }

    pub fn ec2(&self) -> &aws_sdk_ec2::Client {
        &self.clients.ec2
    }

    pub fn elb(&self) -> &aws_sdk_elasticloadbalancingv2::Client {
        &self.clients.elb
    }

    pub fn created(&self, kind: &str, id: &str) {
        tracing::info!(kind, id, "created");
        if let Ok(mut v) = self.created.lock() {
            v.push((kind.to_string(), id.to_string()));
        }
    }

    pub fn created_list(&self) -> Vec<(String, String)> {
        self.created.lock().map(|v| v.clone()).unwrap_or_default()
    }
}
