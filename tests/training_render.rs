//! The training stack offline (runs in CI): the pinned upstream trees fetched through the artifact
//! source from `../shared/upstream` (the upstream bytes, laid out as a mirror), rendered by the
//! real `kubectl kustomize` with k8sforge's overlays, and every object validated — built-in kinds
//! against the Kubernetes types (k8s-openapi), custom resources (Trainer's runtimes, team
//! queues) against the CRD schemas rendered from the same trees. Also: a tampered upstream file
//! is refused, and profile and team mistakes get clear errors.

use std::path::{Path, PathBuf};

use k8sforge::artifacts::source::Mirror;
use k8sforge::artifacts::{self, ImageRefs};
use k8sforge::kube::{self, KindSpec, Object};
use k8sforge::profile;
use k8sforge::training::stack::{self, Component};
use k8sforge::training::teams::{self, Team};
use k8sforge::training::upstream::{self, Tree};
use k8sforge::training::{install, Kustomize};

/// `../shared/upstream` beside the repository (CI lays shared/ there), or `K8SFORGE_TEST_UPSTREAM`.
fn upstream_dir() -> Option<PathBuf> {
    let dir = std::env::var_os("K8SFORGE_TEST_UPSTREAM")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/upstream"));
    dir.join(upstream::HOST).is_dir().then_some(dir)
}

macro_rules! need_upstream {
    () => {
        match upstream_dir() {
            Some(d) => d,
            None => {
                println!("skipped: no ../shared/upstream (set K8SFORGE_TEST_UPSTREAM to the upstream release files)");
                return;
            }
        }
    };
}

fn all_components() -> Vec<Component> {
    vec![
        Component::TrainingOperator,
        Component::JobSet,
        Component::Trainer,
        Component::TrainerRuntimes,
        Component::Kueue,
    ]
}

fn render_all(upstream: &Path, home: &Path) -> (Vec<k8sforge::training::Rendered>, Vec<Object>) {
    let kustomize = Kustomize::locate().unwrap_or_else(|e| panic!("{e}"));
    let release = artifacts::release("v1.34.2").unwrap();
    let rendered = k8sforge::training::render(
        home,
        &Mirror::Dir(upstream.to_path_buf()),
        &kustomize,
        &all_components(),
        &ImageRefs::defaults(release),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let objects = install::validate(&rendered).unwrap_or_else(|e| panic!("{e}"));
    (rendered, objects)
}

fn count(objects: &[Object], source_prefix: &str, kind: &str) -> usize {
    objects
        .iter()
        .filter(|o| o.source.starts_with(source_prefix) && o.spec.resource.kind == kind)
        .count()
}

#[test]
fn every_rendered_object_validates_with_k8sforge_overlays() {
    let upstream = need_upstream!();
    let home = tempfile::tempdir().unwrap();
    let (rendered, objects) = render_all(&upstream, home.path());
    assert_eq!(rendered.len(), 5);

    // What upstream publishes, with nothing lost: 6 v1 job CRDs, Kueue's 11, JobSet's 1,
    // Trainer's 3, and the 8 ClusterTrainingRuntimes (custom resources, validated against the
    // Trainer CRD's schema).
    let to = "training/training-operator.yaml";
    assert_eq!(count(&objects, to, "CustomResourceDefinition"), 6);
    assert_eq!(
        count(&objects, "training/kueue.yaml", "CustomResourceDefinition"),
        11
    );
    assert_eq!(
        count(&objects, "training/jobset.yaml", "CustomResourceDefinition"),
        1
    );
    assert_eq!(
        count(
            &objects,
            "training/trainer.yaml",
            "CustomResourceDefinition"
        ),
        3
    );
    assert_eq!(
        count(
            &objects,
            "training/trainer-runtimes.yaml",
            "ClusterTrainingRuntime"
        ),
        8
    );
    assert_eq!(
        objects.iter().filter(|o| o.source.starts_with(to)).count(),
        14,
        "training-operator's standalone overlay renders 14 objects"
    );
    assert_eq!(count(&objects, "training/kueue.yaml", "APIService"), 2);

    // Custom resources come after every built-in kind (their CRDs must be established first).
    let first_cr = objects
        .iter()
        .position(|o| o.spec.rank == kube::manifest::CUSTOM_RESOURCE_RANK)
        .unwrap();
    assert!(objects[first_cr..]
        .iter()
        .all(|o| o.spec.rank == kube::manifest::CUSTOM_RESOURCE_RANK));

    // k8sforge's overlays: every controller runs off GPU nodes, with its image from the
    // artifact source (never pulled), resources, and the managed-by label.
    let release = artifacts::release("v1.34.2").unwrap();
    let refs = ImageRefs::defaults(release);
    let deployments: Vec<&Object> = objects
        .iter()
        .filter(|o| o.spec.resource.kind == "Deployment")
        .collect();
    assert_eq!(deployments.len(), 4, "one controller per component");
    for d in &deployments {
        let v = serde_json::to_value(&d.object).unwrap();
        let pod = &v["spec"]["template"]["spec"];
        let expr = &pod["affinity"]["nodeAffinity"]
            ["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"][0]
            ["matchExpressions"][0];
        assert_eq!(expr["key"], "k8sforge.io/gpu", "{}", d.reference());
        assert_eq!(expr["operator"], "NotIn");
        let c = &pod["containers"][0];
        assert_eq!(c["imagePullPolicy"], "IfNotPresent", "{}", d.reference());
        assert!(c["resources"]["limits"]["memory"].is_string());
        let image = c["image"].as_str().unwrap();
        assert!(
            [
                &refs.training_operator,
                &refs.trainer_controller_manager,
                &refs.jobset,
                &refs.kueue
            ]
            .iter()
            .any(|r| r.as_str() == image),
            "{}: image {image} is not one of the artifact source's references",
            d.reference()
        );
        assert_eq!(
            v["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "k8sforge",
            "{}",
            d.reference()
        );
    }
    // Namespaces as k8sforge sets them.
    let ns: Vec<String> = objects
        .iter()
        .filter(|o| o.spec.resource.kind == "Namespace")
        .map(|o| o.reference().name)
        .collect();
    for want in [
        "kubeflow",
        "kubeflow-system",
        "jobset-system",
        "kueue-system",
    ] {
        assert!(ns.iter().any(|n| n == want), "{want} not in {ns:?}");
    }
    // Kueue admits the v1 jobs the stack installs.
    let cm = objects
        .iter()
        .find(|o| o.reference().name == "kueue-manager-config")
        .unwrap();
    let cfg = serde_json::to_value(&cm.object).unwrap()["data"]["controller_manager_config.yaml"]
        .as_str()
        .unwrap()
        .to_string();
    for f in [
        "kubeflow.org/pytorchjob",
        "kubeflow.org/tfjob",
        "trainer.kubeflow.org/trainjob",
    ] {
        assert!(cfg.contains(f), "{f} not in Kueue's frameworks:\n{cfg}");
    }
    // JobSet is rendered from its own tree: nothing refers to a remote URL.
    for r in &rendered {
        assert!(!r.yaml.contains("releases/download"), "{}", r.name);
    }

    // Re-rendering from the warm cache reads nothing from the source and gives the same bytes.
    let (again, _) = render_all(&upstream, home.path());
    for (a, b) in rendered.iter().zip(&again) {
        assert_eq!(a.yaml, b.yaml, "{}", a.name);
    }
}

#[test]
fn team_objects_validate_against_the_kueue_crds() {
    let upstream = need_upstream!();
    let home = tempfile::tempdir().unwrap();
    let (_, objects) = render_all(&upstream, home.path());
    let kinds: Vec<KindSpec> = KindSpec::from_crds(&objects)
        .into_iter()
        .filter(|k| k.resource.group == "kueue.x-k8s.io")
        .collect();
    let team = Team {
        name: "vision".into(),
        gpus: 16,
        cpu: Some("128".into()),
        memory: Some("1Ti".into()),
        cohort: Some("research".into()),
        borrowing_limit: Some(8),
        dataset_size: None,
        checkpoint_size: None,
    };
    let yaml = teams::render(&team, true);
    let shared = teams::render_shared(true);
    let objs = kube::validate_all_with(
        [
            ("shared.yaml", shared.as_str()),
            ("team.yaml", yaml.as_str()),
        ],
        &kinds,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let kinds_seen: Vec<String> = objs.iter().map(|o| o.reference().to_string()).collect();
    for want in [
        "ClusterQueue vision",
        "LocalQueue vision/default",
        "ResourceFlavor k8sforge-default",
        "ResourceQuota vision/team-quota",
        "LimitRange vision/team-defaults",
        "ClusterRole k8sforge:platform-viewer",
    ] {
        assert!(
            kinds_seen.iter().any(|k| k == want),
            "{want} not in {kinds_seen:?}"
        );
    }
    // A misspelt ClusterQueue field is caught by the CRD schema, with its path.
    let bad = yaml.replace("\"cohortName\"", "\"cohort\"");
    let e = kube::validate_all_with([("team.yaml", bad.as_str())], &kinds)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("team.yaml#") && e.contains("spec.cohort") && e.contains("unknown field"),
        "{e}"
    );
    // A wrong type too.
    let bad = yaml.replace("\"nominalQuota\":16", "\"nominalQuota\":true");
    let e = kube::validate_all_with([("team.yaml", bad.as_str())], &kinds)
        .unwrap_err()
        .to_string();
    assert!(e.contains("nominalQuota"), "{e}");
}

#[test]
fn a_custom_resource_mistake_names_the_field() {
    let upstream = need_upstream!();
    let home = tempfile::tempdir().unwrap();
    let (rendered, _) = render_all(&upstream, home.path());
    let runtimes = rendered
        .iter()
        .find(|r| r.component == Component::TrainerRuntimes)
        .unwrap();
    let crds = rendered
        .iter()
        .find(|r| r.component == Component::Trainer)
        .unwrap();
    let bad = runtimes.yaml.replacen("mlPolicy:", "mlPolicyy:", 1);
    let e = kube::validate_all_with(
        [
            (crds.name.as_str(), crds.yaml.as_str()),
            ("runtimes.yaml", bad.as_str()),
        ],
        &[],
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("runtimes.yaml#") && e.contains("spec.mlPolicyy"),
        "{e}"
    );
}

#[test]
fn a_tampered_upstream_file_is_refused() {
    let upstream = need_upstream!();
    let mirror = tempfile::tempdir().unwrap();
    // A mirror with the training-operator tree, one file changed by one byte.
    for (path, _) in Tree::TrainingOperator.files() {
        let dest = mirror.path().join(path);
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::copy(upstream.join(path), &dest).unwrap();
    }
    let victim = mirror
        .path()
        .join(Tree::TrainingOperator.root())
        .join("manifests/base/deployment.yaml");
    let mut text = std::fs::read_to_string(&victim).unwrap();
    text.push(' ');
    std::fs::write(&victim, text).unwrap();
    let home = tempfile::tempdir().unwrap();
    let e = upstream::materialize(
        home.path(),
        &Mirror::Dir(mirror.path().to_path_buf()),
        Tree::TrainingOperator,
    )
    .unwrap_err()
    .to_string();
    assert!(e.contains("checksum mismatch for deployment.yaml"), "{e}");
    // A file the mirror lacks is named with where it was expected.
    std::fs::remove_file(&victim).unwrap();
    let e = upstream::materialize(
        home.path(),
        &Mirror::Dir(mirror.path().to_path_buf()),
        Tree::TrainingOperator,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("deployment.yaml not found in the artifact mirror"),
        "{e}"
    );
}

#[test]
fn profile_mistakes_about_the_training_stack_are_clear() {
    let err = |sets: &[&str]| {
        let sets: Vec<String> = sets.iter().map(|s| s.to_string()).collect();
        profile::load("local-3", &sets)
            .err()
            .unwrap_or_else(|| panic!("{sets:?} should be refused"))
            .to_string()
    };
    let e = err(&["kubernetes.version=v1.28.7", "training.operators=[v1,v2]"]);
    assert!(
        e.contains("training.operators[1]")
            && e.contains("Kubeflow Trainer v2.3.0 needs Kubernetes v1.31 or newer")
            && e.contains("v1.28.7"),
        "{e}"
    );
    let e = err(&["kubernetes.version=v1.28.7", "training.kueue=true"]);
    assert!(
        e.contains("training.kueue") && e.contains("Kueue v0.19.2 needs Kubernetes v1.29"),
        "{e}"
    );
    let e = err(&["training.operators=[]"]);
    assert!(e.contains("no training operator selected"), "{e}");
    let e = err(&["training.operators=[v1,v1]"]);
    assert!(e.contains("listed twice"), "{e}");
    let e = err(&["training.operators=[v3]"]);
    assert!(e.contains("training.operators"), "{e}");
    // Defaults per version: 1.28 gets training-operator v1 only, 1.34 the whole stack.
    let p = profile::load("local-3", &["kubernetes.version=v1.28.7".into()])
        .unwrap()
        .profile;
    assert_eq!(
        stack::selected(&p.training, &p.kubernetes.version),
        vec![Component::TrainingOperator]
    );
    let p = profile::load("local-3", &[]).unwrap().profile;
    assert_eq!(stack::selected(&p.training, &p.kubernetes.version).len(), 5);
}

#[test]
fn team_and_user_mistakes_are_clear() {
    let bad = Team {
        name: "Vision Team".into(),
        gpus: 1,
        cpu: None,
        memory: None,
        cohort: None,
        borrowing_limit: None,
        dataset_size: None,
        checkpoint_size: None,
    };
    let e = bad.validate().unwrap_err().to_string();
    assert!(e.contains("invalid team name \"Vision Team\""), "{e}");
    let e = k8sforge::training::users::validate_name("Bob Smith")
        .unwrap_err()
        .to_string();
    assert!(e.contains("invalid user name"), "{e}");
    // Through the binary: refused before any cluster is looked at, non-zero exit.
    let home = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_k8sforge"))
        .args(["team", "add", "Bad_Name", "--gpus", "2"])
        .env("K8SFORGE_HOME", home.path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid team name \"Bad_Name\""),
        "{stderr}"
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_k8sforge"))
        .args(["team", "add", "vision", "--gpus", "2", "--memory", "lots"])
        .env("K8SFORGE_HOME", home.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("--memory \"lots\""),
        "{stderr}"
    );
    // No cluster yet: says what to run.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_k8sforge"))
        .args(["team", "add", "vision", "--gpus", "2"])
        .env("K8SFORGE_HOME", home.path())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && stderr.contains("run `k8sforge up` first"),
        "{stderr}"
    );
}
