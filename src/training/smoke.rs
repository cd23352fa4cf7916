//! The jobs `k8sforge smoke` submits, rendered as objects (pure): a PyTorchJob (master + N
//! workers) and a TFJob (PS + N workers) of training-operator v1, a TrainJob on Trainer v2's
//! `torch-distributed` runtime, all running k8sforge's own smoke program (`smoke/`: an
//! all-reduce over TCP between the ranks the operator wires up, a checkpoint per epoch on the
//! team's checkpoint PVC, resume from the newest), and on GPU clusters an MPIJob running NCCL's
//! `all_reduce_perf` across the GPU nodes.
//!
//! Restart policy Never everywhere: a smoke job that needed a restart did not pass, and a TFJob
//! must end with its pods completed, not restarted after finishing.

use serde::Serialize;
use serde_json::{json, Value};

use super::teams::GPU_RESOURCE;

/// Prefix of every smoke job's name; `smoke` cleans up by it.
pub const PREFIX: &str = "k8sforge-smoke";
/// Label on every smoke job and its pods' template.
pub const SMOKE_LABEL: &str = "k8sforge.io/smoke";
/// The program's path in the smoke image.
pub const PROGRAM: &str = "/bin/k8sforge-smoke";
/// Where rank 0 mounts the checkpoint PVC.
pub const CHECKPOINT_MOUNT: &str = "/checkpoints";
/// Ports the operators expose between replicas (their defaults).
pub const PYTORCH_PORT: u16 = 23456;
pub const TF_PORT: u16 = 2222;
pub const TORCH_RUNTIME: &str = "torch-distributed";

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum SmokeJob {
    PyTorch,
    Tf,
    TrainJob,
    Nccl,
}

impl SmokeJob {
    pub const ALL: [SmokeJob; 4] = [
        SmokeJob::PyTorch,
        SmokeJob::Tf,
        SmokeJob::TrainJob,
        SmokeJob::Nccl,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            SmokeJob::PyTorch => "pytorch",
            SmokeJob::Tf => "tf",
            SmokeJob::TrainJob => "trainjob",
            SmokeJob::Nccl => "nccl",
        }
    }

    pub fn parse(s: &str) -> Option<SmokeJob> {
        SmokeJob::ALL.into_iter().find(|j| j.as_str() == s)
    }

    pub fn name(self) -> String {
        format!("{PREFIX}-{}", self.as_str())
    }

    /// (apiVersion, kind, plural) of the job object.
    pub fn api(self) -> (&'static str, &'static str, &'static str) {
        match self {
            SmokeJob::PyTorch => ("kubeflow.org/v1", "PyTorchJob", "pytorchjobs"),
            SmokeJob::Tf => ("kubeflow.org/v1", "TFJob", "tfjobs"),
            SmokeJob::TrainJob => ("trainer.kubeflow.org/v1alpha1", "TrainJob", "trainjobs"),
            SmokeJob::Nccl => ("kubeflow.org/v1", "MPIJob", "mpijobs"),
        }
    }

    /// The replica whose log carries the result: rank 0 of the smoke program, the launcher of
    /// the NCCL test. (replica-type label value, index)
    pub fn reporting_replica(self) -> (&'static str, &'static str) {
        match self {
            SmokeJob::PyTorch => ("master", "0"),
            SmokeJob::Tf => ("ps", "0"),
            SmokeJob::TrainJob => ("node", "0"),
            SmokeJob::Nccl => ("launcher", "0"),
        }
    }
}

/// What the jobs are rendered from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SmokeSpec {
    /// The team namespace the jobs run in.
    pub namespace: String,
    /// The smoke program's image (the mirror's `k8sforge-smoke`).
    pub image: String,
    /// Workers besides rank 0 (PyTorch master, TF PS).
    pub workers: u32,
    pub epochs: u32,
    /// Kueue is installed: jobs name the team's LocalQueue.
    pub kueue: bool,
    /// The team's checkpoint PVC, mounted by rank 0 (None: checkpoints in the pod only).
    pub checkpoint_pvc: Option<String>,
    /// GPU nodes and GPUs per node, for the NCCL job.
    pub gpu_nodes: u32,
    pub gpus_per_node: u32,
    /// An image with `mpirun` and nccl-tests' `all_reduce_perf` (none is pinned by k8sforge).
    pub nccl_image: Option<String>,
}

fn labels(spec: &SmokeSpec, job: SmokeJob) -> Value {
    let managed = super::overlay::MANAGED_BY;
    let mut l = json!({SMOKE_LABEL: job.as_str(), managed.0: managed.1});
    if spec.kueue {
        l["kueue.x-k8s.io/queue-name"] = json!(super::teams::LOCAL_QUEUE);
    }
    l
}

fn env(spec: &SmokeSpec, job: SmokeJob) -> Value {
    json!([
        {"name": "K8SFORGE_SMOKE_EPOCHS", "value": spec.epochs.to_string()},
        {"name": "K8SFORGE_SMOKE_CHECKPOINT_DIR", "value": format!("{CHECKPOINT_MOUNT}/{}", job.as_str())},
        {"name": "K8SFORGE_SMOKE_TIMEOUT", "value": "300"}
    ])
}

fn resources() -> Value {
    json!({"requests": {"cpu": "100m", "memory": "64Mi"}, "limits": {"cpu": "1", "memory": "256Mi"}})
}

/// A replica's pod template; `rank0` mounts the checkpoint PVC.
fn template(
    spec: &SmokeSpec,
    job: SmokeJob,
    container: &str,
    port: (&str, u16),
    rank0: bool,
) -> Value {
    let mut c = json!({
        "name": container,
        "image": spec.image,
        "imagePullPolicy": "IfNotPresent",
        "command": [PROGRAM],
        "env": env(spec, job),
        "ports": [{"name": port.0, "containerPort": port.1}],
        "resources": resources(),
    });
    let mut pod = json!({"restartPolicy": "Never", "containers": []});
    if let (true, Some(pvc)) = (rank0, &spec.checkpoint_pvc) {
        c["volumeMounts"] = json!([{"name": "checkpoints", "mountPath": CHECKPOINT_MOUNT}]);
        pod["volumes"] =
            json!([{"name": "checkpoints", "persistentVolumeClaim": {"claimName": pvc}}]);
    }
    pod["containers"] = json!([c]);
    json!({"metadata": {"labels": {SMOKE_LABEL: job.as_str()}}, "spec": pod})
}

fn replica(replicas: u32, template: Value) -> Value {
    json!({"replicas": replicas, "restartPolicy": "Never", "template": template})
}

fn object(spec: &SmokeSpec, job: SmokeJob, body: Value) -> Value {
    let (api_version, kind, _) = job.api();
    json!({
        "apiVersion": api_version, "kind": kind,
        "metadata": {"name": job.name(), "namespace": spec.namespace, "labels": labels(spec, job)},
        "spec": body
    })
}

/// The object `job` submits. NCCL needs `nccl_image` and GPU nodes: None otherwise.
pub fn render(spec: &SmokeSpec, job: SmokeJob) -> Option<Value> {
    let run_policy = json!({"cleanPodPolicy": "None", "backoffLimit": 0});
    Some(match job {
        SmokeJob::PyTorch => {
            let port = ("pytorchjob-port", PYTORCH_PORT);
            let mut replicas = json!({
                "Master": replica(1, template(spec, job, "pytorch", port, true)),
            });
            if spec.workers > 0 {
                replicas["Worker"] =
                    replica(spec.workers, template(spec, job, "pytorch", port, false));
            }
            object(
                spec,
                job,
                json!({"runPolicy": run_policy, "pytorchReplicaSpecs": replicas}),
            )
        }
        SmokeJob::Tf => {
            let port = ("tfjob-port", TF_PORT);
            // successPolicy default: the job succeeds when worker 0 does; every replica of the
            // smoke program exits after the last epoch, so all end Succeeded.
            object(
                spec,
                job,
                json!({"runPolicy": run_policy, "tfReplicaSpecs": {
                    "PS": replica(1, template(spec, job, "tensorflow", port, true)),
                    "Worker": replica(spec.workers.max(1), template(spec, job, "tensorflow", port, false)),
                }}),
            )
        }
        SmokeJob::TrainJob => {
            let mut patches = Vec::new();
            if let Some(pvc) = &spec.checkpoint_pvc {
                // Every node of a TrainJob shares one template: all mount the PVC, rank 0 writes.
                patches.push(json!({
                    "manager": "k8sforge.io/smoke",
                    "trainingRuntimeSpec": {"template": {"spec": {"replicatedJobs": [{
                        "name": "node",
                        "template": {"spec": {"template": {"spec": {
                            "volumes": [{"name": "checkpoints", "persistentVolumeClaim": {"claimName": pvc}}],
                            "containers": [{"name": "node", "volumeMounts": [
                                {"name": "checkpoints", "mountPath": CHECKPOINT_MOUNT}
                            ]}]
                        }}}}
                    }]}}}
                }));
            }
            let mut body = json!({
                "runtimeRef": {"name": TORCH_RUNTIME, "kind": "ClusterTrainingRuntime",
                    "apiGroup": "trainer.kubeflow.org"},
                "trainer": {
                    "image": spec.image,
                    "command": [PROGRAM],
                    "numNodes": spec.workers + 1,
                    "numProcPerNode": 1,
                    "env": env(spec, job),
                    "resourcesPerNode": resources(),
                }
            });
            if !patches.is_empty() {
                body["runtimePatches"] = json!(patches);
            }
            object(spec, job, body)
        }
        SmokeJob::Nccl => {
            let image = spec.nccl_image.as_ref()?;
            if spec.gpu_nodes == 0 || spec.gpus_per_node == 0 {
                return None;
            }
            let ranks = spec.gpu_nodes * spec.gpus_per_node;
            let launcher = json!({"spec": {"restartPolicy": "Never", "containers": [{
                "name": "launcher", "image": image,
                "command": ["mpirun", "--allow-run-as-root", "-np", ranks.to_string(),
                    "-bind-to", "none", "-x", "NCCL_DEBUG=INFO",
                    "all_reduce_perf", "-b", "8", "-e", "1G", "-f", "2", "-g", "1"],
                "resources": resources(),
            }]}});
            let worker = json!({"spec": {
                "restartPolicy": "Never",
                "tolerations": [{"key": GPU_RESOURCE, "operator": "Exists", "effect": "NoSchedule"}],
                "containers": [{
                    "name": "worker", "image": image,
                    "command": ["sleep", "infinity"],
                    "resources": {"limits": {GPU_RESOURCE: spec.gpus_per_node}},
                }]
            }});
            object(
                spec,
                job,
                json!({
                    "slotsPerWorker": spec.gpus_per_node,
                    "runPolicy": {"cleanPodPolicy": "Running", "backoffLimit": 0},
                    "mpiReplicaSpecs": {
                        "Launcher": replica(1, launcher),
                        "Worker": replica(spec.gpu_nodes, worker),
                    }
                }),
            )
        }
    })
}

/// The `K8SFORGE-SMOKE {json}` line of the smoke program's log (the last one), parsed.
pub fn program_report(log: &str) -> Option<Value> {
    log.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix("K8SFORGE-SMOKE "))
        .and_then(|j| serde_json::from_str(j).ok())
}

/// nccl-tests' `# Avg bus bandwidth    : 123.45` (GB/s), from the launcher's log.
pub fn nccl_bus_bandwidth(log: &str) -> Option<f64> {
    log.lines()
        .find_map(|l| l.trim().strip_prefix("# Avg bus bandwidth"))
        .and_then(|rest| rest.trim_start().strip_prefix(':'))
        .and_then(|v| v.trim().parse().ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reports_are_read_from_logs() {
        let log = "rank 0/3 (master): joined\nK8SFORGE-SMOKE {\"result\":\"pass\",\"world\":3}\n";
        assert_eq!(program_report(log).unwrap()["world"], 3);
        assert!(program_report("nothing").is_none());
        let nccl = "#  Out of bounds values : 0 OK\n# Avg bus bandwidth    : 183.52 \n#\n";
        assert_eq!(nccl_bus_bandwidth(nccl), Some(183.52));
    }
}
