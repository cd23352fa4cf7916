//! Offline, in CI: every job `k8sforge smoke` submits (PyTorchJob, TFJob, TrainJob, the NCCL
//! MPIJob) validates against the real CRD schemas of training-operator v1.9.4 and Trainer v2.3.0
//! rendered from `../shared/upstream` by the real kustomize, and the storage section renders a
//! StorageClass per backend (local PVs with node affinity, NFS, EFS, FSx for Lustre, Filestore)
//! that validates against the Kubernetes types; profile mistakes in `training.storage` are named.

use std::path::{Path, PathBuf};

use k8sforge::artifacts::source::Mirror;
use k8sforge::artifacts::{self, ImageRefs};
use k8sforge::kube::{self, KindSpec};
use k8sforge::profile;
use k8sforge::profile::storage::{Cloud, StorageBackend};
use k8sforge::training::smoke::{self, SmokeJob, SmokeSpec};
use k8sforge::training::storage;
use k8sforge::training::{install, smoke_run, Component, Kustomize};

fn upstream_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("K8SFORGE_TEST_UPSTREAM")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/upstream"));
    dir.join("raw.githubusercontent.com")
        .is_dir()
        .then_some(dir)
}

fn spec() -> SmokeSpec {
    SmokeSpec {
        namespace: "vision".into(),
        image: "k8sforge.test/k8sforge-smoke:0.1.0".into(),
        workers: 3,
        epochs: 4,
        kueue: true,
        checkpoint_pvc: Some(storage::CHECKPOINT_PVC.into()),
        gpu_nodes: 2,
        gpus_per_node: 8,
        nccl_image: Some("registry.example/nccl-tests:2.13".into()),
    }
}

/// The job kinds of the upstream CRDs, as `smoke` checks them against the cluster's.
fn upstream_kinds(upstream: &Path) -> Vec<KindSpec> {
    let home = tempfile::tempdir().unwrap();
    let kustomize = Kustomize::locate().unwrap_or_else(|e| panic!("{e}"));
    let rendered = k8sforge::training::render(
        home.path(),
        &Mirror::Dir(upstream.to_path_buf()),
        &kustomize,
        &[Component::TrainingOperator, Component::Trainer],
        &ImageRefs::defaults(artifacts::release("v1.34.2").unwrap()),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    KindSpec::from_crds(&install::validate(&rendered).unwrap())
}

#[test]
fn every_smoke_job_validates_against_the_real_crds() {
    let Some(upstream) = upstream_dir() else {
        println!("skipped: no ../shared/upstream (set K8SFORGE_TEST_UPSTREAM)");
        return;
    };
    let kinds = upstream_kinds(&upstream);
    let s = spec();
    let jobs: Vec<(SmokeJob, serde_json::Value)> = SmokeJob::ALL
        .into_iter()
        .map(|j| (j, smoke::render(&s, j).unwrap()))
        .collect();
    let objects = smoke_run::validate(&jobs, &kinds).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(objects.len(), 4);
    for (j, o) in jobs.iter().map(|(j, _)| j).zip(&objects) {
        assert_eq!(o.spec.resource.kind, j.api().1);
        assert_eq!(
            smoke_run::crd_name(*j),
            format!("{}.{}", o.spec.resource.plural, o.spec.resource.group)
        );
        assert_eq!(o.object.metadata.namespace.as_deref(), Some("vision"));
        assert_eq!(
            o.object.metadata.labels.as_ref().unwrap()["kueue.x-k8s.io/queue-name"],
            "default"
        );
    }
    let v = |j: SmokeJob| jobs.iter().find(|(k, _)| *k == j).unwrap().1.clone();
    // PyTorch: master + 3 workers, the operator's container name and port, PVC on rank 0 only.
    let py = v(SmokeJob::PyTorch);
    let r = &py["spec"]["pytorchReplicaSpecs"];
    assert_eq!(r["Worker"]["replicas"], 3);
    let master = &r["Master"]["template"]["spec"];
    assert_eq!(master["containers"][0]["name"], "pytorch");
    assert_eq!(
        master["containers"][0]["ports"][0]["name"],
        "pytorchjob-port"
    );
    assert_eq!(
        master["volumes"][0]["persistentVolumeClaim"]["claimName"],
        "checkpoints"
    );
    assert!(r["Worker"]["template"]["spec"]["volumes"].is_null());
    // TF: PS + workers that run to completion and are never restarted.
    let tf = v(SmokeJob::Tf);
    for role in ["PS", "Worker"] {
        let rs = &tf["spec"]["tfReplicaSpecs"][role];
        assert_eq!(rs["restartPolicy"], "Never");
        assert_eq!(
            rs["template"]["spec"]["containers"][0]["name"],
            "tensorflow"
        );
    }
    // TrainJob: the torch runtime, one process per node, PVC patched in.
    let tj = v(SmokeJob::TrainJob);
    assert_eq!(tj["spec"]["runtimeRef"]["name"], "torch-distributed");
    assert_eq!(tj["spec"]["trainer"]["numNodes"], 4);
    assert_eq!(
        tj["spec"]["runtimePatches"][0]["manager"],
        "k8sforge.io/smoke"
    );
    // NCCL: one worker per GPU node, GPUs as limits, slots = GPUs per node.
    let nccl = v(SmokeJob::Nccl);
    assert_eq!(nccl["spec"]["slotsPerWorker"], 8);
    assert_eq!(
        nccl["spec"]["mpiReplicaSpecs"]["Worker"]["template"]["spec"]["containers"][0]["resources"]
            ["limits"]["nvidia.com/gpu"],
        8
    );
    // Without an NCCL image or GPU nodes there is no NCCL job.
    assert!(smoke::render(
        &SmokeSpec {
            nccl_image: None,
            ..spec()
        },
        SmokeJob::Nccl
    )
    .is_none());
    assert!(smoke::render(
        &SmokeSpec {
            gpu_nodes: 0,
            ..spec()
        },
        SmokeJob::Nccl
    )
    .is_none());

    // The validator bites: a misspelt field of a job is refused with its path.
    let mut bad = py.clone();
    bad["spec"]["pytorchReplicaSpecs"]["Master"]["restartPolcy"] = "Never".into();
    let e = smoke_run::validate(&[(SmokeJob::PyTorch, bad)], &kinds)
        .unwrap_err()
        .to_string();
    assert!(e.contains("restartPolcy"), "{e}");
}

#[test]
fn storage_classes_per_backend_validate() {
    let load = |sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        profile::load("local-3", &sets)
            .unwrap_or_else(|e| panic!("{sets:?}: {e}"))
            .profile
    };
    // Local provider: local PVs by default, one per volume per worker, pinned to its node.
    let p = load(&[]);
    let workers = vec!["worker-1".to_string(), "worker-2".to_string()];
    let yaml = storage::render(&p.training.storage, Cloud::Local, &workers);
    let objs = kube::validate_all([("storage.yaml", yaml.as_str())]).unwrap();
    let pvs: Vec<_> = objs
        .iter()
        .filter(|o| o.spec.resource.kind == "PersistentVolume")
        .collect();
    assert_eq!(pvs.len(), 8);
    let pv = &pvs[0].object.data["spec"];
    assert_eq!(pv["local"]["path"], "/var/lib/k8sforge/volumes/vol-1");
    assert_eq!(
        pv["nodeAffinity"]["required"]["nodeSelectorTerms"][0]["matchExpressions"][0]["values"][0],
        "worker-1"
    );
    let sc = objs
        .iter()
        .find(|o| o.spec.resource.kind == "StorageClass")
        .unwrap();
    assert_eq!(
        sc.object.data["provisioner"],
        "kubernetes.io/no-provisioner"
    );
    assert_eq!(sc.object.data["volumeBindingMode"], "WaitForFirstConsumer");

    // NFS beside local: datasets on NFS (shared: ReadOnlyMany), checkpoints stay local.
    let p = load(&[
        "training.storage.nfs={server: 198.18.0.10, share: /srv/datasets}",
        "training.storage.checkpoints=local",
    ]);
    let yaml = storage::render(&p.training.storage, Cloud::Local, &workers);
    let objs = kube::validate_all([("storage.yaml", yaml.as_str())]).unwrap();
    let nfs = objs
        .iter()
        .find(|o| o.reference().name == "k8sforge-nfs")
        .unwrap();
    assert_eq!(nfs.object.data["provisioner"], "nfs.csi.k8s.io");
    assert_eq!(nfs.object.data["parameters"]["share"], "/srv/datasets");
    let labels = nfs.object.metadata.labels.as_ref().unwrap();
    assert_eq!(labels[storage::DATASETS_LABEL], "true");
    assert!(!labels.contains_key(storage::CHECKPOINTS_LABEL));
    let pvcs = storage::render_team_pvcs(
        "vision",
        &storage::TeamStorage {
            datasets: p.training.storage.datasets_backend(Cloud::Local),
            checkpoints: p.training.storage.checkpoints_backend(Cloud::Local),
            dataset_size: "5Gi".into(),
            checkpoint_size: "5Gi".into(),
        },
    );
    let objs = kube::validate_all([("pvcs.yaml", pvcs.as_str())]).unwrap();
    assert_eq!(
        objs[0].object.data["spec"]["accessModes"][0],
        "ReadOnlyMany"
    );
    assert_eq!(
        objs[1].object.data["spec"]["accessModes"][0],
        "ReadWriteOnce"
    );
    assert_eq!(
        objs[1].object.data["spec"]["storageClassName"],
        "k8sforge-local"
    );

    // The cloud file systems (rendered for their providers).
    let mut aws = p.training.storage.clone();
    aws.nfs = None;
    aws.checkpoints = None;
    aws.local = None;
    aws.efs = Some(k8sforge::profile::storage::EfsStorage {
        file_system_id: "fs-0abc123".into(),
    });
    aws.fsx_lustre = Some(k8sforge::profile::storage::FsxLustreStorage {
        subnet_id: "subnet-0abc".into(),
        security_group_ids: vec!["sg-01".into(), "sg-02".into()],
        deployment_type: "SCRATCH_2".into(),
    });
    let yaml = storage::render(&aws, Cloud::Aws, &workers);
    let objs = kube::validate_all([("storage.yaml", yaml.as_str())]).unwrap();
    let names: Vec<_> = objs.iter().map(|o| o.reference().name.clone()).collect();
    assert_eq!(names, ["k8sforge-efs", "k8sforge-fsx-lustre"]);
    assert_eq!(
        objs[0].object.data["parameters"]["provisioningMode"],
        "efs-ap"
    );
    assert_eq!(
        objs[1].object.data["parameters"]["securityGroupIds"],
        "sg-01,sg-02"
    );
    assert_eq!(aws.datasets_backend(Cloud::Aws), Some(StorageBackend::Efs));
    let gcp = k8sforge::profile::storage::StorageSpec {
        filestore: Some(k8sforge::profile::storage::FilestoreStorage {
            tier: "BASIC_SSD".into(),
            network: Some("k8sforge-vpc".into()),
        }),
        ..Default::default()
    };
    let yaml = storage::render(&gcp, Cloud::Gcp, &workers);
    let objs = kube::validate_all([("storage.yaml", yaml.as_str())]).unwrap();
    assert_eq!(
        objs[0].object.data["provisioner"],
        "filestore.csi.storage.gke.io"
    );
    assert_eq!(objs[0].object.data["parameters"]["tier"], "premium");
}

#[test]
fn storage_profile_mistakes_are_clear() {
    let err = |sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        profile::load("local-3", &sets)
            .err()
            .unwrap_or_else(|| panic!("{sets:?} should be refused"))
            .to_string()
    };
    let e = err(&["training.storage.efs={fileSystemId: fs-0abc}"]);
    assert!(
        e.contains("training.storage.efs") && e.contains("efs exists only on provider aws"),
        "{e}"
    );
    let e = err(&["training.storage.datasets=nfs"]);
    assert!(
        e.contains("training.storage.datasets") && e.contains("backend nfs is not configured"),
        "{e}"
    );
    let e = err(&["training.storage.local={capacity: lots}"]);
    assert!(
        e.contains("training.storage.local.capacity") && e.contains("lots"),
        "{e}"
    );
    let e = err(&["training.storage.local={volumesPerNode: 0}"]);
    assert!(e.contains("volumesPerNode"), "{e}");
    let e = err(&["training.storage.nfs={server: nfs-1, share: datasets}"]);
    assert!(e.contains("training.storage.nfs.share"), "{e}");
    let e = err(&["training.storage.datasets=ceph"]);
    assert!(e.contains("training.storage.datasets"), "{e}");
    let e = err(&["training.storage.lokal={}"]);
    assert!(e.contains("lokal"), "{e}");
}

/// `k8sforge smoke --pack-image`: the static smoke program (built here with rustc) becomes the
/// mirror's `k8sforge-smoke` OCI archive, which the artifact source then resolves as the smoke
/// image (what `smoke` submits and the runtime phase imports on the nodes).
#[test]
fn the_smoke_image_is_packed_into_a_mirror() {
    let dir = tempfile::tempdir().unwrap();
    let bin = dir.path().join("build/k8sforge-smoke");
    std::fs::create_dir_all(bin.parent().unwrap()).unwrap();
    k8sforge_testkit::training::build_smoke(&bin).unwrap();
    let mirror = dir.path().join("mirror");
    std::fs::create_dir_all(&mirror).unwrap();
    let pack = |b: &Path| {
        std::process::Command::new(env!("CARGO_BIN_EXE_k8sforge"))
            .arg("smoke")
            .arg("--pack-image")
            .arg(b)
            .arg("--mirror")
            .arg(&mirror)
            .output()
            .unwrap()
    };
    let out = pack(&bin);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let list: serde_json::Value =
        serde_json::from_slice(&std::fs::read(mirror.join("k8sforge-artifacts.json")).unwrap())
            .unwrap();
    let img = &list["images"][0];
    assert_eq!(img["name"], "k8sforge-smoke");
    let reference = k8sforge::artifacts::smoke_image::default_reference();
    assert_eq!(img["reference"], reference.as_str());
    // The archive is an OCI layout naming the image, with the program at /bin/k8sforge-smoke.
    let archive = std::fs::read(mirror.join("images/k8sforge-smoke.tar")).unwrap();
    let mut a = tar::Archive::new(archive.as_slice());
    let mut names = Vec::new();
    let mut index = String::new();
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let p = e.path().unwrap().display().to_string();
        if p == "index.json" {
            std::io::Read::read_to_string(&mut e, &mut index).unwrap();
        }
        names.push(p);
    }
    assert!(names.contains(&"oci-layout".to_string()), "{names:?}");
    assert!(index.contains(&reference), "{index}");
    // The artifact source resolves it as the smoke image.
    let release = artifacts::release("v1.34.2").unwrap();
    let source = artifacts::ArtifactSource {
        mirror: Mirror::Dir(mirror.clone()),
        trust_mirror_checksums: false,
    };
    let refs = ImageRefs::for_source(release, &Default::default(), &source).unwrap();
    assert_eq!(refs.smoke, reference);
    // A binary of another name is refused (it must become /bin/k8sforge-smoke).
    let other = dir.path().join("build/smoke");
    std::fs::copy(&bin, &other).unwrap();
    let out = pack(&other);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("must be named k8sforge-smoke"));
}
