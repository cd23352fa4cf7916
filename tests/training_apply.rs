//! The training stack against a real API server (etcd + kube-apiserver + kube-controller-manager
//! on 127.0.0.1, k8sforge's PKI; binaries from `K8SFORGE_TEST_KUBE_BIN`, v1.28.7 here; skipped
//! with one line otherwise):
//! - the components whose stated minimum the server meets (training-operator v1 on 1.28) are
//!   accepted by server-side apply and their CRDs become Established; a second apply writes
//!   nothing; Kueue and Trainer v2 are refused by the phase naming both versions (they are
//!   validated offline in tests/training_render.rs instead);
//! - `k8sforge up --only training` (the phase through the binary) does the same, twice: the
//!   second run writes 0 objects;
//! - GPU quota without a GPU: `nvidia.com/gpu` advertised on a Node as an extended resource, a
//!   team's ResourceQuota admits a Job within it and rejects the pods of one over it;
//! - a team user's kubeconfig (certificate through the CSR API) creates a Job in its namespace
//!   and can neither read another team's Secrets nor list nodes.
//!
//! No controller image can run here (no kubelet; the images cannot be built), so the phase is
//! run with `training.waitForControllers: false`, which it reports in its summary.

#[path = "support/apiserver.rs"]
mod apiserver;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Event, Node, Pod, Secret};
use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};

use k8sforge::artifacts::source::Mirror;
use k8sforge::artifacts::{self, ImageRefs};
use k8sforge::commands::team as verbs;
use k8sforge::kube as k8skube;
use k8sforge::training::install::{self, InstallError};
use k8sforge::training::teams::Team;
use k8sforge::training::{Component, Kustomize};

const TEST_KUBERNETES: &str = "v1.28.7";

fn upstream_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("K8SFORGE_TEST_UPSTREAM")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/upstream"));
    dir.join("raw.githubusercontent.com")
        .is_dir()
        .then_some(dir)
}

fn job(name: &str, gpus: u32) -> Job {
    serde_json::from_value(serde_json::json!({
        "metadata": {"name": name},
        "spec": {"backoffLimit": 0, "template": {"spec": {
            "restartPolicy": "Never",
            "containers": [{"name": "train", "image": "k8sforge.invalid/train:1",
                "resources": {"limits": {"nvidia.com/gpu": gpus}}}]
        }}}
    }))
    .unwrap()
}

/// Wait until `f` returns Some, or panic with `what` after 60 s.
async fn eventually<T, F, Fut>(what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = f().await {
            return v;
        }
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn training_stack_teams_and_users_against_a_real_apiserver() {
    let Some(bin) = apiserver::kube_bin() else {
        println!(
            "skipped: set {} to a directory with kube-apiserver and kube-controller-manager {TEST_KUBERNETES} (see DEVELOPERS.md)",
            apiserver::KUBE_BIN
        );
        return;
    };
    let Some(upstream) = upstream_dir() else {
        println!("skipped: no ../shared/upstream (set K8SFORGE_TEST_UPSTREAM)");
        return;
    };
    let mut api = apiserver::ApiServer::start(
        &bin,
        "gpu-dev",
        TEST_KUBERNETES,
        "serviceaccount,job,resourcequota,namespace,csrsigning",
    )
    .await;
    let cluster = api.cluster.clone();

    // Render every component (validated offline), as the phase does.
    let kustomize = Kustomize::locate().unwrap_or_else(|e| panic!("{e}"));
    let release = artifacts::release(TEST_KUBERNETES).unwrap();
    let all = [
        Component::TrainingOperator,
        Component::JobSet,
        Component::Trainer,
        Component::TrainerRuntimes,
        Component::Kueue,
    ];
    let rendered = k8sforge::training::render(
        &api.home,
        &Mirror::Dir(upstream.clone()),
        &kustomize,
        &all,
        &ImageRefs::defaults(release),
    )
    .unwrap_or_else(|e| panic!("{e}"));

    // A component needing a newer Kubernetes is refused, naming both versions, before anything
    // of it is written.
    let kueue: Vec<_> = rendered
        .iter()
        .filter(|r| r.component == Component::Kueue)
        .cloned()
        .collect();
    let objects = install::validate(&kueue).unwrap();
    let e = install::install(&cluster, &[Component::Kueue], &objects, false)
        .await
        .unwrap_err();
    let msg = e.to_string();
    assert!(matches!(e, InstallError::TooOld(_)), "{msg}");
    assert!(
        msg.contains("Kueue v0.19.2 needs Kubernetes v1.29 or newer; this cluster runs v1.28.7"),
        "{msg}"
    );
    let trainer: Vec<_> = rendered
        .iter()
        .filter(|r| matches!(r.component, Component::JobSet | Component::Trainer))
        .cloned()
        .collect();
    let e = install::install(
        &cluster,
        &[Component::JobSet, Component::Trainer],
        &install::validate(&trainer).unwrap(),
        false,
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(
        e.contains(
            "Kubeflow Trainer v2.3.0 needs Kubernetes v1.31 or newer; this cluster runs v1.28.7"
        ),
        "{e}"
    );
    let crds: Api<CustomResourceDefinition> = Api::all(cluster.client.clone());
    assert!(crds
        .get_opt("clusterqueues.kueue.x-k8s.io")
        .await
        .unwrap()
        .is_none());

    // training-operator v1 (minimum met): accepted by server-side apply, CRDs Established.
    let v1: Vec<_> = rendered
        .iter()
        .filter(|r| r.component == Component::TrainingOperator)
        .cloned()
        .collect();
    let objects = install::validate(&v1).unwrap();
    let first = install::install(&cluster, &[Component::TrainingOperator], &objects, false)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(first.applied.count(k8skube::Change::Created), objects.len());
    assert_eq!(first.crds, 6);
    for name in [
        "pytorchjobs.kubeflow.org",
        "tfjobs.kubeflow.org",
        "mpijobs.kubeflow.org",
    ] {
        let crd = crds.get(name).await.unwrap();
        assert!(k8skube::crds::not_established(&crd).is_none(), "{name}");
    }
    let second = install::install(&cluster, &[Component::TrainingOperator], &objects, false)
        .await
        .unwrap();
    assert_eq!(
        second.written(),
        0,
        "second apply wrote {:?}",
        second.applied
    );

    // The phase through the binary: up --only training, twice; the second writes nothing.
    let up = |extra: &[&str]| {
        let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_k8sforge"));
        cmd.args([
            "up",
            "--only",
            "training",
            "--profile",
            "gpu-dev",
            "--output",
            "json",
        ])
        .arg("--mirror")
        .arg(&upstream)
        .env("K8SFORGE_HOME", &api.home);
        for s in api
            .profile_sets
            .iter()
            .map(String::as_str)
            .chain(extra.iter().copied())
        {
            cmd.args(["--set", s]);
        }
        cmd.output().unwrap()
    };
    let out = up(&["training.waitForControllers=false"]);
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    let phase = &report["phases"][0];
    assert_eq!(phase["outcome"], "done", "{phase}");
    assert!(
        phase["detail"]
            .as_str()
            .unwrap()
            .contains("controllers NOT awaited"),
        "{phase}"
    );
    let out = up(&["training.waitForControllers=false"]);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["phases"][0]["files_changed"], 0, "{report}");
    // With the wait on, the phase says which controller is not available (no kubelet here).
    // (Not run: it would wait the full controller timeout.)

    // The phase refuses, naming both versions, when the profile expects a newer cluster than
    // the server it finds (v1.34.2 profile defaults include Kueue and Trainer v2).
    let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_k8sforge"));
    cmd.args(["up", "--only", "training", "--profile", "gpu-dev"])
        .arg("--mirror")
        .arg(&upstream)
        .env("K8SFORGE_HOME", &api.home);
    for s in &api.profile_sets {
        let s = if s.starts_with("kubernetes.version=") {
            "kubernetes.version=v1.34.2".to_string()
        } else {
            s.clone()
        };
        cmd.args(["--set", &s]);
    }
    let out = cmd
        .args(["--set", "training.waitForControllers=false"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("Kueue v0.19.2 needs Kubernetes v1.29 or newer; this cluster runs v1.28.7"),
        "{stderr}"
    );

    // GPU quota without a GPU: a node advertising nvidia.com/gpu as an extended resource.
    let nodes: Api<Node> = Api::all(cluster.client.clone());
    let node: Node = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "gpu-1", "labels": {"k8sforge.io/gpu": "true"}}
    }))
    .unwrap();
    nodes.create(&PostParams::default(), &node).await.unwrap();
    nodes
        .patch_status(
            "gpu-1",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"status": {
                "capacity": {"nvidia.com/gpu": "8", "cpu": "32", "memory": "256Gi", "pods": "110"},
                "allocatable": {"nvidia.com/gpu": "8", "cpu": "32", "memory": "256Gi", "pods": "110"}
            }})),
        )
        .await
        .unwrap();
    let n = nodes.get("gpu-1").await.unwrap();
    assert_eq!(
        n.status.unwrap().allocatable.unwrap()["nvidia.com/gpu"].0,
        "8"
    );

    let teams = [
        Team {
            name: "vision".into(),
            gpus: 2,
            cpu: Some("16".into()),
            memory: Some("64Gi".into()),
            cohort: None,
            borrowing_limit: None,
            dataset_size: None,
            checkpoint_size: None,
        },
        Team {
            name: "nlp".into(),
            gpus: 4,
            cpu: None,
            memory: None,
            cohort: None,
            borrowing_limit: None,
            dataset_size: None,
            checkpoint_size: None,
        },
    ];
    let report = verbs::add_teams(&cluster, &teams)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    assert!(report.count(k8skube::Change::Created) > 0);
    let again = verbs::add_teams(&cluster, &teams).await.unwrap();
    assert_eq!(
        again.count(k8skube::Change::Created) + again.count(k8skube::Change::Changed),
        0
    );

    let jobs: Api<Job> = Api::namespaced(cluster.client.clone(), "vision");
    let pods: Api<Pod> = Api::namespaced(cluster.client.clone(), "vision");
    // The quota controller must have computed the quota's status before admission can count.
    let vision = cluster.clone();
    eventually("the ResourceQuota's status", || {
        let c = vision.clone();
        async move {
            let rq: Api<k8s_openapi::api::core::v1::ResourceQuota> =
                Api::namespaced(c.client.clone(), "vision");
            rq.get("team-quota")
                .await
                .ok()?
                .status?
                .hard
                .filter(|h| !h.is_empty())
        }
    })
    .await;
    jobs.create(&PostParams::default(), &job("within", 2))
        .await
        .unwrap();
    let p = eventually("the within-quota job's pod", || {
        let pods = pods.clone();
        async move {
            let l = pods
                .list(&ListParams::default().labels("job-name=within"))
                .await
                .ok()?;
            l.items.into_iter().next()
        }
    })
    .await;
    let req = &p.spec.unwrap().containers[0].resources.clone().unwrap();
    assert_eq!(req.requests.as_ref().unwrap()["nvidia.com/gpu"].0, "2");
    // LimitRange defaults filled in CPU and memory requests.
    assert_eq!(req.requests.as_ref().unwrap()["cpu"].0, "100m");

    jobs.create(&PostParams::default(), &job("over", 1))
        .await
        .unwrap();
    let events: Api<Event> = Api::namespaced(cluster.client.clone(), "vision");
    let why = eventually("the quota's rejection of the over-quota job's pod", || {
        let events = events.clone();
        async move {
            let l = events.list(&ListParams::default()).await.ok()?;
            l.items
                .into_iter()
                .filter(|e| e.involved_object.name.as_deref() == Some("over"))
                .filter_map(|e| e.message)
                .find(|m| m.contains("exceeded quota"))
        }
    })
    .await;
    assert!(
        why.contains("exceeded quota: team-quota") && why.contains("requests.nvidia.com/gpu"),
        "{why}"
    );
    assert!(pods
        .list(&ListParams::default().labels("job-name=over"))
        .await
        .unwrap()
        .items
        .is_empty());

    // A team user: certificate through the CSR API, kubeconfig in the team's namespace.
    let alice = api.cluster_dir.join("users/alice.kubeconfig");
    verbs::add_user(&cluster, &api.admin, "alice", "vision", 30, &alice)
        .await
        .unwrap_or_else(|e| panic!("{e:#}"));
    use std::os::unix::fs::PermissionsExt;
    assert_eq!(
        std::fs::metadata(&alice).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let as_alice = k8skube::connect(&alice).await.unwrap();
    let her_jobs: Api<Job> = Api::default_namespaced(as_alice.client.clone());
    her_jobs
        .create(&PostParams::default(), &job("alices-job", 0))
        .await
        .unwrap_or_else(|e| panic!("alice cannot create a job in vision: {e}"));
    let theirs: Api<Secret> = Api::namespaced(as_alice.client.clone(), "nlp");
    let e = theirs.list(&ListParams::default()).await.unwrap_err();
    assert!(matches!(&e, kube::Error::Api(r) if r.code == 403), "{e}");
    let e = Api::<Node>::all(as_alice.client.clone())
        .list(&ListParams::default())
        .await
        .unwrap_err();
    assert!(matches!(&e, kube::Error::Api(r) if r.code == 403), "{e}");
    // A user for a team that does not exist is refused by name.
    let e = verbs::add_user(
        &cluster,
        &api.admin,
        "bob",
        "nosuch",
        30,
        &api.cluster_dir.join("bob"),
    )
    .await
    .unwrap_err()
    .to_string();
    assert!(e.contains("team \"nosuch\" does not exist"), "{e}");

    // team list and remove.
    let rows = verbs::list_teams(&cluster).await.unwrap();
    let names: Vec<&str> = rows.iter().map(|r| r.name.as_str()).collect();
    assert_eq!(names, ["nlp", "vision"]);
    assert_eq!(rows[1].gpus_hard, "2");
    verbs::remove_team(&cluster, "nlp").await.unwrap();
    let e = verbs::remove_team(&cluster, "default")
        .await
        .unwrap_err()
        .to_string();
    assert!(e.contains("not a k8sforge team"), "{e}");
    api.check_alive();
}
