//! `certs rotate --ca` (all three CAs) on a working `local-ha` cluster (three apiservers behind
//! the node-local API endpoints, stacked etcd) with a client loop of API requests the whole
//! time — each request with the admin kubeconfig the state directory holds at that moment — and
//! zero failed requests. A pod started before keeps running (same UID, no container restart),
//! and a service-account token issued before the rotation (TokenRequest) still authenticates
//! after it. Then `certs rotate --sa-keys`: the old token keeps working and a new one works;
//! `--sa-keys --finish`: the old token is refused (401), the new one still works. Afterwards
//! `certs check` is clean and every deployed certificate is signed by the new CAs.
//!
//! Needs the Kubernetes binaries in K8SFORGE_TEST_KUBE_BIN (see DEVELOPERS.md); skips with one
//! line without them. Own cluster name and reserved subnet.

mod support;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use k8sforge_testkit::kube::{self, KUBE_BIN_ENV};
use k8sforge_testkit::mirror;
use support::kubectl::{server_of, ApiLoop, Kubectl};
use support::local_cluster::LocalCluster;

fn text(o: &Output) -> String {
    format!(
        "status {:?}\nstdout: {}\nstderr: {}",
        o.status.code(),
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn json(o: &Output) -> serde_json::Value {
    serde_json::from_slice(&o.stdout).unwrap_or_else(|e| panic!("{e}: {}", text(o)))
}

fn certs(c: &LocalCluster, verb: &str, args: &[&str]) -> Output {
    let mut cmd = Command::new(support::local_cluster::BIN);
    cmd.env("K8SFORGE_HOME", c.home())
        .args(["certs", verb, "--profile", c.profile])
        .args(["--set", &format!("name={}", c.name)])
        .args(["--set", &format!("network.nodeCIDR={}", c.cidr)]);
    for s in &c.sets {
        cmd.args(["--set", s]);
    }
    cmd.args(args).output().unwrap()
}

/// kubectl as `kubeconfig`, with a short request timeout (the API loop counts a slow answer
/// as a failure rather than waiting on it).
fn kubectl_10s(bin: &Path, kubeconfig: &Path) -> Kubectl {
    let mut k = Kubectl::new(bin, kubeconfig);
    k.timeout = "10s";
    k
}

/// HTTP status of `GET path` with a bearer token, trusting `ca` (curl against the endpoint).
fn token_status(server: &str, ca: &Path, token: &str, path: &str) -> String {
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .arg("--cacert")
        .arg(ca)
        .args(["-H", &format!("Authorization: Bearer {token}")])
        .arg(format!("{server}{path}"))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// The scrape Secret's files as the cluster holds them now, written under `dir/tag/`.
fn scrape_files(k: &Kubectl, dir: &Path, tag: &str) -> std::path::PathBuf {
    use base64::Engine;
    let v = k.json(&["get", "secret", "-n", "monitoring", "k8sforge-scrape-tls"]);
    let d = dir.join(tag);
    std::fs::create_dir_all(&d).unwrap();
    for (key, b64) in v["data"].as_object().unwrap() {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(b64.as_str().unwrap())
            .unwrap();
        std::fs::write(d.join(key), bytes).unwrap();
    }
    d
}

/// HTTP status of a scrape of `url` with the Secret files in `files` (etcd's identity or the
/// control plane's), "000" when TLS fails either way.
fn scrape_status(url: &str, files: &Path, etcd: bool) -> String {
    let (ca, crt, key) = if etcd {
        ("etcd-ca.crt", "etcd-prometheus.crt", "etcd-prometheus.key")
    } else {
        ("ca.crt", "prometheus.crt", "prometheus.key")
    };
    let out = Command::new("curl")
        .args([
            "-s",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            "--max-time",
            "10",
        ])
        .arg("--cacert")
        .arg(files.join(ca))
        .arg("--cert")
        .arg(files.join(crt))
        .arg("--key")
        .arg(files.join(key))
        .arg(url)
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// `(uid, restart count)` of every pod.
fn pods(kc: &Path, kubeconfig: &Path) -> Vec<(String, String, u64)> {
    let out = kubectl_10s(kc, kubeconfig).output(&["get", "pods", "-A", "-o", "json"], None);
    assert!(out.status.success(), "{}", text(&out));
    let v = json(&out);
    let mut p: Vec<(String, String, u64)> = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            let restarts = p["status"]["containerStatuses"]
                .as_array()
                .map(|cs| cs.iter().filter_map(|c| c["restartCount"].as_u64()).sum())
                .unwrap_or(0);
            (
                p["metadata"]["name"].as_str().unwrap().to_string(),
                p["metadata"]["uid"].as_str().unwrap().to_string(),
                restarts,
            )
        })
        .collect();
    p.sort();
    p
}

#[test]
fn local_ha_rotates_every_ca_serving_throughout_and_old_tokens_keep_working() {
    let kube = match kube::from_env() {
        Ok(Some(k)) => k,
        Ok(None) => {
            eprintln!(
                "skipped local_ha_rotates_every_ca: set {KUBE_BIN_ENV} to the Kubernetes binaries (see DEVELOPERS.md)"
            );
            return;
        }
        Err(e) => panic!("{e}"),
    };
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "boots nspawn nodes: run as root"
    );
    let cache = mirror::default_cache_dir();
    let base = mirror::build(&cache).expect("test mirror");
    let m = kube::cluster_mirror(&base, &kube, &cache).expect("cluster mirror");
    let c = LocalCluster::reserved("carotk", "local-ha")
        .with_mirror(&m.root)
        .with_set(format!("kubernetes.version={}", kube.version))
        .with_set("training.enabled=false");
    let _ = c.cmd(&["teardown"]).output();
    let (out, _) = c.up(&[]);
    assert_eq!(out.status.code(), Some(0), "up: {}", text(&out));
    let kc = kube.kubectl();
    let admin = c.state_dir().join("kubeconfigs/admin.kubeconfig");
    let server = server_of(&admin);
    let k = kubectl_10s(&kc, &admin);
    let old_kube_ca = std::fs::read(c.state_dir().join("pki/ca.crt")).unwrap();

    // A pod that must survive, on a worker, with the pause image the nodes already hold.
    let images = c.ssh_ok("worker-1", "ctr -n k8s.io images ls -q");
    let pause = images
        .lines()
        .find(|l| l.contains("pause") && !l.contains("sha256:"))
        .unwrap_or_else(|| panic!("no pause image on worker-1: {images}"))
        .to_string();
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: survivor}}\nspec:\n  nodeName: worker-1\n  terminationGracePeriodSeconds: 1\n  containers:\n  - name: main\n    image: {pause}\n    imagePullPolicy: Never\n"
    );
    let podfile = c.home().join("pod.yaml");
    std::fs::write(&podfile, pod).unwrap();
    let out = k.output(&["apply", "-f", podfile.to_str().unwrap()], None);
    assert!(out.status.success(), "{}", text(&out));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let out = k.output(
            &["get", "pod", "survivor", "-o", "jsonpath={.status.phase}"],
            None,
        );
        if String::from_utf8_lossy(&out.stdout) == "Running" {
            break;
        }
        assert!(Instant::now() < deadline, "pod not Running: {}", text(&out));
        std::thread::sleep(Duration::from_secs(1));
    }
    // A service account allowed to read pods, and a token for it (TokenRequest, 2 h).
    for args in [
        &["create", "serviceaccount", "carot"][..],
        &[
            "create",
            "clusterrolebinding",
            "carot-view",
            "--clusterrole=view",
            "--serviceaccount=default:carot",
        ][..],
    ] {
        let out = k.output(args, None);
        assert!(out.status.success(), "{args:?}: {}", text(&out));
    }
    let token = || -> String {
        let out = k.output(&["create", "token", "carot", "--duration=2h"], None);
        assert!(out.status.success(), "{}", text(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let old_token = token();
    let tools = tempfile::tempdir().unwrap();
    let ca_file = tools.path().join("ca.crt");
    std::fs::write(&ca_file, &old_kube_ca).unwrap();
    let pods_path = "/api/v1/namespaces/default/pods";
    assert_eq!(
        token_status(&server, &ca_file, &old_token, pods_path),
        "200"
    );
    let pods_before = pods(&kc, &admin);

    // The monitoring stack's scrape certificates Secret, as the addons phase applies it (same
    // function). The stack's own workloads cannot run here (no images of them), so `up` ran
    // without monitoring and the rotation runs with it enabled: that makes it own the Secret.
    let out = k.output(&["create", "namespace", "monitoring"], None);
    assert!(out.status.success(), "{}", text(&out));
    let secret = k8sforge::monitoring::tls_secret(&c.state_dir().join("pki")).unwrap();
    k.apply(&secret.yaml);
    let scrape_before = scrape_files(&k, tools.path(), "before");
    let etcd_metrics = format!(
        "https://{}.11:2379/metrics",
        c.cidr.trim_end_matches(".0/24")
    );
    assert_eq!(scrape_status(&etcd_metrics, &scrape_before, true), "200");

    // The CA rotation under the API loop.
    let lp = ApiLoop::start(kubectl_10s(&kc, &admin), "/api/v1/namespaces/default");
    std::thread::sleep(Duration::from_secs(3));
    let t = Instant::now();
    let out = certs(
        &c,
        "rotate",
        &["--ca", "--set", "monitoring.enabled=true", "-o", "json"],
    );
    let took = t.elapsed();
    std::thread::sleep(Duration::from_secs(3));
    let (ok, failed) = lp.finish();
    assert!(out.status.success(), "certs rotate --ca: {}", text(&out));
    let report = json(&out);
    let stages: usize = report["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["stages"].as_array().map_or(0, |a| a.len()))
        .sum();
    let reissued = report["steps"][2]["certificates"].as_array().unwrap().len();
    eprintln!(
        "local-ha: certs rotate --ca (3 CAs, {reissued} certificates re-issued, {stages} stages): {:.1} s, {ok} API requests ok, {} failed: {:?}",
        took.as_secs_f64(),
        failed.len(),
        failed.iter().take(5).collect::<Vec<_>>()
    );
    assert_eq!(report["ok"], true, "{report:#}");
    assert!(ok > 50, "the API loop ran only {ok} requests");
    assert!(
        failed.is_empty(),
        "{} failed API requests: {failed:?}",
        failed.len()
    );

    // The rotation brought the scrape Secret along at every CA step: it now holds what the
    // state directory holds, its etcd client certificate and CA scrape etcd's /metrics (as
    // Prometheus does), and the Secret as it was before the rotation no longer could.
    for (i, step) in ["trust-both", "reissue", "drop-old"].iter().enumerate() {
        let st = &report["steps"][i + 1];
        assert_eq!(st["step"], *step, "{report:#}");
        assert_eq!(st["scrapeSecret"], "updated", "{step}: {st:#}");
    }
    let want = k8sforge::monitoring::tls_secret(&c.state_dir().join("pki")).unwrap();
    let want: serde_json::Value = serde_json::from_str(&want.yaml).unwrap();
    let got = k.json(&["get", "secret", "-n", "monitoring", "k8sforge-scrape-tls"]);
    assert_eq!(
        got["data"], want["data"],
        "the Secret is not the state directory's material"
    );
    let scrape_after = scrape_files(&k, tools.path(), "after");
    assert_eq!(scrape_status(&etcd_metrics, &scrape_after, true), "200");
    assert_eq!(
        scrape_status(&etcd_metrics, &scrape_before, true),
        "000",
        "etcd still accepts the pre-rotation scrape certificate"
    );
    // The apiserver's /metrics: the TLS handshake with the new client certificate succeeds
    // (403: the scrape RBAC is the stack's, not installed here), the old one is refused.
    let api_metrics = format!("{server}/metrics");
    assert_eq!(scrape_status(&api_metrics, &scrape_after, false), "403");
    assert_eq!(scrape_status(&api_metrics, &scrape_before, false), "000");

    // Pods kept running: same pods, same UIDs, no container restarted.
    assert_eq!(
        pods(&kc, &admin),
        pods_before,
        "a pod was replaced or restarted"
    );
    // The token issued before still authenticates (through the new CA's serving certs).
    let new_kube_ca = std::fs::read(c.state_dir().join("pki/ca.crt")).unwrap();
    assert_ne!(new_kube_ca, old_kube_ca);
    std::fs::write(&ca_file, &new_kube_ca).unwrap();
    assert_eq!(
        token_status(&server, &ca_file, &old_token, pods_path),
        "200"
    );
    // The old CA is trusted nowhere: a TLS client with only the old CA fails.
    let old_ca_file = tools.path().join("old-ca.crt");
    std::fs::write(&old_ca_file, &old_kube_ca).unwrap();
    assert_eq!(
        token_status(&server, &old_ca_file, &old_token, pods_path),
        "000"
    );

    // certs check clean; every deployed leaf signed by the CA the state directory now holds.
    let out = certs(&c, "check", &["-o", "json"]);
    assert!(out.status.success(), "certs check: {}", text(&out));
    let check = json(&out);
    for n in check["nodes"].as_array().unwrap() {
        for cert in n["certificates"].as_array().unwrap() {
            assert_eq!(cert["status"], "ok", "{cert:#} on {}", n["node"]);
            assert_eq!(
                cert["count"], 1,
                "{cert:#}: a bundle is left on {}",
                n["node"]
            );
        }
    }

    // Service-account keys: rotate (old token still accepted), then finish (refused).
    let out = certs(&c, "rotate", &["--sa-keys", "-o", "json"]);
    assert!(out.status.success(), "--sa-keys: {}", text(&out));
    let new_token = token();
    assert_eq!(
        token_status(&server, &ca_file, &old_token, pods_path),
        "200"
    );
    assert_eq!(
        token_status(&server, &ca_file, &new_token, pods_path),
        "200"
    );
    let again = certs(&c, "rotate", &["--sa-keys"]);
    assert!(
        !again.status.success() && text(&again).contains("--sa-keys --finish"),
        "{}",
        text(&again)
    );
    let out = certs(&c, "rotate", &["--sa-keys", "--finish", "-o", "json"]);
    assert!(out.status.success(), "--sa-keys --finish: {}", text(&out));
    assert_eq!(
        token_status(&server, &ca_file, &old_token, pods_path),
        "401"
    );
    assert_eq!(
        token_status(&server, &ca_file, &new_token, pods_path),
        "200"
    );
    assert_eq!(
        pods(&kc, &admin),
        pods_before,
        "a pod was replaced or restarted"
    );
}
