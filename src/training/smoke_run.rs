//! Running the smoke jobs (`training::smoke`) on a cluster: validate each against the CRD the
//! cluster serves, replace a leftover of a previous run, apply, wait for the operator's verdict,
//! check what the pods say (every rank's all-reduce report; for TF, that no pod was restarted
//! or re-created after the job ended; for NCCL, the bus bandwidth) and clean up. The team's
//! checkpoint PVC is never touched, so a re-run resumes from the newest checkpoint.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use ::kube::api::{Api, DeleteParams, ListParams, LogParams};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use serde::Serialize;
use serde_json::Value;

use super::smoke::{self, SmokeJob};
use crate::kube::{self, client::error_chain, Cluster, KindSpec, KubeError, Object};

const POLL: Duration = Duration::from_secs(2);
/// How long a finished TFJob is watched for pods being restarted or re-created.
pub const SETTLE: Duration = Duration::from_secs(10);

/// The CRD behind each job kind.
pub fn crd_name(job: SmokeJob) -> String {
    let (api_version, _, plural) = job.api();
    let group = api_version.split('/').next().unwrap_or_default();
    format!("{plural}.{group}")
}

/// The kinds of `jobs` the cluster serves, checked against its CRDs' schemas; a job whose CRD
/// is missing is returned in the second list.
pub async fn served_kinds(
    cluster: &Cluster,
    jobs: &[SmokeJob],
) -> Result<(Vec<KindSpec>, Vec<SmokeJob>), KubeError> {
    let api: Api<CustomResourceDefinition> = Api::all(cluster.client.clone());
    let mut kinds = Vec::new();
    let mut missing = Vec::new();
    for &j in jobs {
        let name = crd_name(j);
        let crd = api.get_opt(&name).await.map_err(|e| KubeError::Read {
            what: format!("CRD {name}"),
            message: error_chain(&e),
        })?;
        let version = j.api().0.split('/').nth(1);
        match crd.and_then(|c| KindSpec::from_crd(&c, version)) {
            Some(k) => kinds.push(k),
            None => missing.push(j),
        }
    }
    Ok((kinds, missing))
}

/// Validate the rendered jobs against `kinds` (the real CRD schemas).
pub fn validate(jobs: &[(SmokeJob, Value)], kinds: &[KindSpec]) -> Result<Vec<Object>, KubeError> {
    let docs: Vec<(String, String)> = jobs
        .iter()
        .map(|(j, v)| (format!("smoke/{}.yaml", j.as_str()), v.to_string()))
        .collect();
    kube::validate_all_with(docs.iter().map(|(n, y)| (n.as_str(), y.as_str())), kinds)
}

#[derive(Debug, Clone, Serialize)]
pub struct JobOutcome {
    pub job: SmokeJob,
    pub name: String,
    pub passed: bool,
    /// Why it failed, or what passed (world size, epochs, resume, bandwidth).
    pub reason: String,
    pub seconds: f64,
    /// Rank 0's `K8SFORGE-SMOKE` report.
    pub report: Option<Value>,
    pub bus_bandwidth_gbps: Option<f64>,
}

fn pod_selector(job: SmokeJob, name: &str) -> String {
    match job {
        SmokeJob::TrainJob => format!("jobset.sigs.k8s.io/jobset-name={name}"),
        _ => format!("training.kubeflow.org/job-name={name}"),
    }
}

/// `type=status (reason: message)` of every condition, for messages.
fn conditions(obj: &Value) -> (Option<bool>, String) {
    let mut verdict = None;
    let mut text = Vec::new();
    for c in obj["status"]["conditions"].as_array().into_iter().flatten() {
        let t = c["type"].as_str().unwrap_or_default();
        let s = c["status"].as_str() == Some("True");
        if s && matches!(t, "Succeeded" | "Complete") {
            verdict = Some(true);
        }
        if s && t == "Failed" {
            verdict = Some(false);
        }
        text.push(format!(
            "{t}={} ({}: {})",
            c["status"].as_str().unwrap_or("?"),
            c["reason"].as_str().unwrap_or(""),
            c["message"].as_str().unwrap_or("")
        ));
    }
    (verdict, text.join("; "))
}

fn pod_line(p: &Pod) -> String {
    let status = p.status.as_ref();
    let restarts: i32 = status
        .and_then(|s| s.container_statuses.as_ref())
        .map(|cs| cs.iter().map(|c| c.restart_count).sum())
        .unwrap_or(0);
    let waiting: Vec<String> = status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
        .filter_map(|c| c.state.as_ref()?.waiting.as_ref())
        .map(|w| {
            format!(
                "{}: {}",
                w.reason.clone().unwrap_or_default(),
                w.message.clone().unwrap_or_default()
            )
        })
        .collect();
    format!(
        "{} {} restarts={restarts}{}",
        p.metadata.name.clone().unwrap_or_default(),
        status.and_then(|s| s.phase.clone()).unwrap_or_default(),
        if waiting.is_empty() {
            String::new()
        } else {
            format!(" ({})", waiting.join(", "))
        }
    )
}

async fn pods(cluster: &Cluster, ns: &str, job: SmokeJob, name: &str) -> Result<Vec<Pod>, String> {
    let api: Api<Pod> = Api::namespaced(cluster.client.clone(), ns);
    api.list(&ListParams::default().labels(&pod_selector(job, name)))
        .await
        .map(|l| l.items)
        .map_err(|e| format!("listing pods: {}", error_chain(&e)))
}

async fn delete_and_wait(cluster: &Cluster, o: &Object, name: &str) -> Result<(), String> {
    let api = kube::apply::api_for(cluster, o);
    let dp = DeleteParams::background();
    if api
        .get_opt(name)
        .await
        .map_err(|e| error_chain(&e))?
        .is_none()
    {
        return Ok(());
    }
    api.delete(name, &dp).await.map_err(|e| error_chain(&e))?;
    let deadline = Instant::now() + Duration::from_secs(120);
    while api
        .get_opt(name)
        .await
        .map_err(|e| error_chain(&e))?
        .is_some()
    {
        if Instant::now() > deadline {
            return Err(format!("{name} still exists 120 s after its deletion"));
        }
        tokio::time::sleep(POLL).await;
    }
    Ok(())
}

/// Run one job to its end (or `timeout`) and judge it. `workers`: the ranks besides rank 0.
pub async fn run_job(
    cluster: &Cluster,
    job: SmokeJob,
    object: &Object,
    workers: u32,
    timeout: Duration,
    keep: bool,
) -> JobOutcome {
    let started = Instant::now();
    let name = object.reference().name.clone();
    let ns = object.object.metadata.namespace.clone().unwrap_or_default();
    let mut out = JobOutcome {
        job,
        name: name.clone(),
        passed: false,
        reason: String::new(),
        seconds: 0.0,
        report: None,
        bus_bandwidth_gbps: None,
    };
    let verdict = judge(cluster, job, object, &ns, &name, workers, timeout, &mut out).await;
    match verdict {
        Ok(reason) => {
            out.passed = true;
            out.reason = reason;
        }
        Err(reason) => out.reason = reason,
    }
    out.seconds = started.elapsed().as_secs_f64();
    if !keep {
        if let Err(e) = delete_and_wait(cluster, object, &name).await {
            out.reason += &format!("; cleanup: {e}");
        }
    }
    out
}

#[allow(clippy::too_many_arguments)]
async fn judge(
    cluster: &Cluster,
    job: SmokeJob,
    object: &Object,
    ns: &str,
    name: &str,
    workers: u32,
    timeout: Duration,
    out: &mut JobOutcome,
) -> Result<String, String> {
    delete_and_wait(cluster, object, name)
        .await
        .map_err(|e| format!("removing the previous run: {e}"))?;
    kube::apply(cluster, std::slice::from_ref(object))
        .await
        .map_err(|e| e.to_string())?;
    let api = kube::apply::api_for(cluster, object);
    let deadline = Instant::now() + timeout;
    let succeeded = loop {
        let obj = api
            .get(name)
            .await
            .map_err(|e| format!("reading {name}: {}", error_chain(&e)))?;
        let (verdict, text) = conditions(&obj.data);
        if let Some(v) = verdict {
            if !v {
                let pods = pods(cluster, ns, job, name).await.unwrap_or_default();
                return Err(format!(
                    "the operator marked it Failed: {text}; pods: {}",
                    pods.iter().map(pod_line).collect::<Vec<_>>().join(", ")
                ));
            }
            break text;
        }
        if Instant::now() > deadline {
            let pods = pods(cluster, ns, job, name).await.unwrap_or_default();
            return Err(format!(
                "not finished after {} s; conditions: {}; pods: {}",
                timeout.as_secs(),
                if text.is_empty() {
                    "none (is the operator running?)".into()
                } else {
                    text
                },
                if pods.is_empty() {
                    "none".to_string()
                } else {
                    pods.iter().map(pod_line).collect::<Vec<_>>().join(", ")
                }
            ));
        }
        tokio::time::sleep(POLL).await;
    };
    tracing::debug!(job = name, conditions = %succeeded, "finished");
    let pod_list = pods(cluster, ns, job, name).await?;
    let logs: Api<Pod> = Api::namespaced(cluster.client.clone(), ns);
    let mut reports = Vec::new();
    let mut bandwidth = None;
    for p in &pod_list {
        let pname = p.metadata.name.clone().unwrap_or_default();
        let log = logs
            .logs(&pname, &LogParams::default())
            .await
            .map_err(|e| format!("log of {pname}: {}", error_chain(&e)))?;
        if job == SmokeJob::Nccl {
            bandwidth = bandwidth.or(smoke::nccl_bus_bandwidth(&log));
            continue;
        }
        let r = smoke::program_report(&log)
            .ok_or_else(|| format!("{pname}: no K8SFORGE-SMOKE report in its log"))?;
        if r["result"] != "pass" {
            return Err(format!(
                "{pname}: {}",
                r["reason"].as_str().unwrap_or("failed")
            ));
        }
        reports.push(r);
    }
    if job == SmokeJob::Nccl {
        out.bus_bandwidth_gbps = bandwidth;
        return bandwidth
            .map(|b| format!("all_reduce_perf average bus bandwidth {b} GB/s"))
            .ok_or_else(|| "no '# Avg bus bandwidth' line in the launcher's log".into());
    }
    let world = workers + 1;
    let rank0 = reports
        .iter()
        .find(|r| r["rank"] == 0)
        .cloned()
        .ok_or("no report of rank 0")?;
    if reports.len() != world as usize || rank0["world"] != world {
        return Err(format!(
            "{} ranks reported, rank 0 saw world size {}; expected {world}",
            reports.len(),
            rank0["world"]
        ));
    }
    out.report = Some(rank0.clone());
    if job == SmokeJob::Tf {
        // Ended is ended: no restarts, and no pod re-created after the job finished.
        let uids = |ps: &[Pod]| -> BTreeSet<String> {
            ps.iter().filter_map(|p| p.metadata.uid.clone()).collect()
        };
        let before = uids(&pod_list);
        tokio::time::sleep(SETTLE).await;
        let after_pods = pods(cluster, ns, job, name).await?;
        let restarted: Vec<String> = after_pods
            .iter()
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.container_statuses.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.restart_count > 0))
                    || p.status.as_ref().and_then(|s| s.phase.as_deref()) != Some("Succeeded")
            })
            .map(pod_line)
            .collect();
        if uids(&after_pods) != before || !restarted.is_empty() {
            return Err(format!(
                "pods changed after the TFJob ended (restarted or re-created): {}",
                after_pods
                    .iter()
                    .map(pod_line)
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
    }
    Ok(format!(
        "{world} ranks ({}), all-reduce verified for epochs {}..{}{}",
        rank0["style"].as_str().unwrap_or("?"),
        rank0["first_epoch"],
        rank0["epochs"],
        match rank0["resumed_from"].as_u64() {
            Some(e) => format!(", resumed after checkpoint of epoch {e}"),
            None => String::new(),
        }
    ))
}
