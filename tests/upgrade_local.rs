//! `k8sforge upgrade` on a real local cluster: v1.28.7 → v1.28.8 with a workload serving the
//! whole time, `k8sforge` killed with SIGKILL in the middle and re-run to the end.
//!
//! Only one Kubernetes release is built here (K8SFORGE_TEST_KUBE_BIN, see DEVELOPERS.md), so the
//! test makes the second one from it: copies of the binaries with their embedded version string
//! rewritten (`v1.28.7` → `v1.28.8`, same length; Go strings are pointer + length, so the
//! programs run unchanged and report v1.28.8), laid out as a second release in the test mirror,
//! and declared to k8sforge as a site release row (`kubernetes.extraReleases`) with their
//! checksums. What this cannot show: differences between two real patch releases (flags,
//! behaviour); what it shows is the rollout itself — order, drain, versions reported by every
//! component, availability, resume.

mod support;

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use k8sforge_testkit::kube::{self, KUBE_BIN_ENV};
use k8sforge_testkit::{mirror, oci};

use support::kubectl::Kubectl;
use support::local_cluster::{assert_done, LocalCluster};

const FROM: &str = "v1.28.7";
const TO: &str = "v1.28.8";
const BUSYBOX: &str = "k8sforge.test/busybox:1";

struct Cluster {
    lc: LocalCluster,
    /// kubectl of the given binaries as the admin.
    k: Kubectl,
    mirror: PathBuf,
}

impl Cluster {
    fn upgrade_cmd(&self, extra: &[&str]) -> Command {
        let m = self.mirror.display().to_string();
        let mut args = vec![
            "upgrade",
            "--to",
            TO,
            "--mirror",
            m.as_str(),
            "--trust-mirror-checksums",
            "-o",
            "json",
        ];
        args.extend_from_slice(extra);
        self.lc.cmd(&args)
    }

    fn state(&self) -> serde_json::Value {
        std::fs::read(self.lc.state_dir().join("state.json"))
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default()
    }

    fn wait(&self, what: &str, timeout: Duration, mut ok: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        while !ok(self) {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            std::thread::sleep(Duration::from_secs(1));
        }
    }
}

fn ready(node: &serde_json::Value) -> bool {
    node["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == "Ready" && c["status"] == "True")
}

fn workload(ip_hint: &str) -> String {
    format!(
        r#"apiVersion: apps/v1
kind: Deployment
metadata: {{name: web, namespace: default}}
spec:
  replicas: 2
  selector: {{matchLabels: {{app: web}}}}
  template:
    metadata: {{labels: {{app: web}}}}
    spec:
      terminationGracePeriodSeconds: 10
      containers:
      - name: httpd
        image: {BUSYBOX}
        imagePullPolicy: Never
        command: ["/bin/sh", "-c", "mkdir -p /www && echo ok > /www/index.html && exec httpd -f -p 8080 -h /www"]
        readinessProbe:
          httpGet: {{path: /, port: 8080}}
          periodSeconds: 1
        lifecycle:
          # Keep serving while the endpoint is withdrawn (the usual zero-downtime drain).
          preStop: {{exec: {{command: ["/bin/sleep", "3"]}}}}
---
apiVersion: policy/v1
kind: PodDisruptionBudget
metadata: {{name: web, namespace: default}}
spec:
  minAvailable: 1
  selector: {{matchLabels: {{app: web}}}}
---
apiVersion: v1
kind: Service
metadata: {{name: web, namespace: default}}
spec:
  clusterIP: {ip_hint}
  selector: {{app: web}}
  ports: [{{port: 80, targetPort: 8080}}]
"#
    )
}

#[test]
fn upgrade_moves_every_node_keeps_the_workload_serving_and_resumes_after_sigkill() {
    let kube = match kube::from_env() {
        Ok(Some(k)) => k,
        Ok(None) => {
            eprintln!(
                "skipped upgrade_local: set {KUBE_BIN_ENV} to a directory with the {FROM} binaries (see DEVELOPERS.md)"
            );
            return;
        }
        Err(e) => panic!("{e}"),
    };
    assert_eq!(kube.version, FROM, "this test starts from {FROM}");
    // SAFETY: geteuid cannot fail.
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "boots nspawn nodes: run as root"
    );

    // The second release, made from the first.
    let cache = mirror::default_cache_dir();
    let kube2 = kube::rewritten(&kube, TO, &cache.join(format!("kube-{TO}"))).unwrap();
    for b in ["kubelet", "kube-apiserver", "kube-proxy"] {
        let out = Command::new(kube2.dir.join(b))
            .arg("--version")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(text.contains(TO), "{b} --version: {text}");
    }
    let base = mirror::build(&cache).expect("test mirror");
    let m1 = kube::cluster_mirror(&base, &kube, &cache).expect("cluster mirror");
    let m = kube::with_release(&m1, &kube2, &cache).expect("two-release mirror");
    let sum = |name: &str| {
        m.manifest
            .artifacts
            .iter()
            .find(|e| e.name == name && e.version == TO)
            .map(|e| e.sha256.clone())
            .unwrap()
    };
    let row = format!(
        "kubernetes.extraReleases=[{{kubernetes: {TO}, basedOn: {FROM}, checksums: {{kubernetes-server: {}, kubelet: {}, kubectl: {}}}}}]",
        sum("kubernetes-server"),
        sum("kubelet"),
        sum("kubectl")
    );
    let lc = LocalCluster::reserved("upg", "local-3")
        .with_mirror(&m.root)
        .with_set(format!("kubernetes.version={FROM}"))
        .with_set("training.enabled=false")
        .with_set(row);
    let k = lc.kubectl(&kube.kubectl());
    let c = Cluster {
        lc,
        k,
        mirror: m.root.clone(),
    };
    let _ = c.lc.cmd(&["teardown"]).output();

    // 1. A cluster on v1.28.7.
    let (out, report) = c.lc.up(&[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "up: {stderr}\n{report:#}");
    assert_done(
        &report,
        &[
            "etcd",
            "runtime",
            "control-plane",
            "workers",
            "network",
            "addons",
        ],
    );
    let nodes = c.k.json(&["get", "nodes"]);
    let names: Vec<String> = nodes["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|n| n["metadata"]["name"].as_str().unwrap().to_string())
        .collect();
    let cp = nodes["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["metadata"]["labels"]["node-role.kubernetes.io/control-plane"].is_string())
        .map(|n| n["metadata"]["name"].as_str().unwrap().to_string())
        .expect("a control plane");
    let workers: Vec<&String> = names.iter().filter(|n| **n != cp).collect();

    // 2. The workload: two replicas behind a Service, a PDB, and a client loop on the control
    //    plane that requests the Service twice a second for the whole upgrade.
    let archive = c.lc.home().join("busybox.tar");
    oci::build_archive(
        &m.busybox,
        &["sh", "sleep", "httpd", "mkdir", "echo"],
        &["/bin/sh"],
        BUSYBOX,
        &archive,
    )
    .unwrap();
    for n in &workers {
        let mut push = c.lc.cmd(&[
            "ssh",
            n,
            "--",
            "cat > /tmp/busybox.tar && ctr -n k8s.io images import /tmp/busybox.tar >/dev/null",
        ]);
        push.stdin(Stdio::from(std::fs::File::open(&archive).unwrap()));
        assert!(push.status().unwrap().success(), "import on {n}");
    }
    c.k.apply(&workload("10.32.0.80"));
    c.wait("2 web replicas available", Duration::from_secs(180), |c| {
        c.k.json(&["get", "deploy", "web"])["status"]["availableReplicas"] == 2
    });
    c.lc.ssh_ok(
        &cp,
        "cat > /root/client.sh <<'EOF'\n\
         while :; do\n\
           if [ \"$(curl -s -m 2 http://10.32.0.80/)\" = ok ]; then r=ok; else r=fail; fi\n\
           echo \"$(date +%s.%N) $r\" >> /root/client.log\n\
           sleep 0.5\n\
         done\n\
         EOF\n\
         rm -f /root/client.log; systemd-run --unit=upgrade-client --collect /bin/sh /root/client.sh",
    );
    c.wait(
        "the client loop's first answers",
        Duration::from_secs(30),
        |c| {
            c.lc.ssh_ok(&cp, "grep -c ' ok' /root/client.log || true")
                .trim()
                .parse::<u32>()
                .unwrap_or(0)
                >= 3
        },
    );

    // 3. Dry run: the plan, nothing changed.
    let out = c.upgrade_cmd(&["--dry-run"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dry: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let kinds: Vec<&str> = dry["plan"]["steps"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["kind"].as_str().unwrap())
        .collect();
    assert_eq!(
        kinds,
        ["control-plane", "nodes", "nodes", "nodes"],
        "{dry:#}"
    );
    assert_eq!(dry["from"], FROM);
    assert_eq!(dry["live"]["kubelets"][&cp], FROM, "{dry:#}");
    assert!(c.state()["upgrade"].is_null(), "a dry run records nothing");
    let v = c.k.ok(&["get", "--raw", "/version"]);
    assert!(v.contains(FROM), "{v}");

    // 4. Upgrade, killed with SIGKILL once two steps are recorded (the control plane and its
    //    kubelet done, the first worker being drained or upgraded).
    let started = Instant::now();
    let mut child = c
        .upgrade_cmd(&[])
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(900);
    loop {
        if c.state()["upgrade"]["stepsDone"].as_u64().unwrap_or(0) >= 2 {
            break;
        }
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            std::io::Read::read_to_string(child.stderr.as_mut().unwrap(), &mut err).unwrap();
            panic!("upgrade ended ({status}) before it could be killed at step 3:\n{err}");
        }
        assert!(
            Instant::now() < deadline,
            "upgrade made no progress in 900 s"
        );
        std::thread::sleep(Duration::from_millis(300));
    }
    // SAFETY: plain kill(2) of our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let status = child.wait().unwrap();
    let killed_after = started.elapsed();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(libc::SIGKILL)
    );
    let rec = c.state()["upgrade"].clone();
    assert_eq!(rec["to"], TO, "the record survives the kill: {rec:#}");

    // While it is half done, `up` refuses (it would move every node at once).
    let (out, _) = c.lc.up(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("upgrade from v1.28.7 to v1.28.8 in progress"),
        "{err}"
    );

    // 5. The re-run resumes and finishes.
    let resumed_at = Instant::now();
    let out = c.upgrade_cmd(&[]).output().unwrap();
    let resumed_for = resumed_at.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap_or_default();
    assert!(
        out.status.success(),
        "resumed upgrade: {stderr}\n{report:#}"
    );
    assert_eq!(report["resumed"], true, "{report:#}");
    assert!(
        report["stepsDoneBefore"].as_u64().unwrap() >= 2,
        "{report:#}"
    );
    assert!(c.state()["upgrade"].is_null());
    assert_eq!(c.state()["kubernetes_version"], TO);
    eprintln!(
        "upgrade {FROM} → {TO} on local-3: killed after {:.1} s (2 of 4 steps recorded), resumed run {:.1} s; steps of the resumed run: {}",
        killed_after.as_secs_f64(),
        resumed_for.as_secs_f64(),
        report["steps"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| format!("{} {:.1} s", s["kind"].as_str().unwrap(), s["elapsedSecs"].as_f64().unwrap()))
            .collect::<Vec<_>>()
            .join(", ")
    );

    // 6. Every component reports the target.
    let nodes = c.k.json(&["get", "nodes"]);
    for n in nodes["items"].as_array().unwrap() {
        let name = n["metadata"]["name"].as_str().unwrap();
        assert_eq!(n["status"]["nodeInfo"]["kubeletVersion"], TO, "{name}");
        assert!(ready(n), "{name} Ready");
        assert!(
            n["spec"]["unschedulable"].is_null(),
            "{name} uncordoned: {n:#}"
        );
        let proxy = c.lc.ssh_ok(name, "/usr/local/bin/kube-proxy --version");
        assert!(proxy.contains(TO), "{name}: {proxy}");
    }
    let v = c.k.ok(&["get", "--raw", "/version"]);
    assert!(v.contains(TO), "{v}");
    for b in ["kube-controller-manager", "kube-scheduler"] {
        let out = c.lc.ssh_ok(&cp, &format!("/usr/local/bin/{b} --version"));
        assert!(out.contains(TO), "{b}: {out}");
    }

    // 7. The workload stayed available: the client loop never saw an outage.
    c.wait(
        "2 web replicas available again",
        Duration::from_secs(120),
        |c| c.k.json(&["get", "deploy", "web"])["status"]["availableReplicas"] == 2,
    );
    let log =
        c.lc.ssh_ok(&cp, "systemctl stop upgrade-client; cat /root/client.log");
    let results: Vec<bool> = log.lines().map(|l| l.ends_with(" ok")).collect();
    let failed = results.iter().filter(|ok| !**ok).count();
    let mut worst_run = 0;
    let mut run = 0;
    for ok in &results {
        run = if *ok { 0 } else { run + 1 };
        worst_run = worst_run.max(run);
    }
    eprintln!(
        "client loop: {} requests, {failed} failed, longest failure run {worst_run}",
        results.len()
    );
    assert!(
        results.len() >= 60,
        "the loop ran the whole upgrade: {}",
        results.len()
    );
    // A request in flight at the moment an endpoint is withdrawn may fail once; an outage
    // (several in a row) may not.
    assert!(
        worst_run <= 2,
        "the Service was unavailable for {worst_run} requests in a row:\n{log}"
    );
    assert!(
        failed <= 4,
        "{failed} of {} requests failed:\n{log}",
        results.len()
    );

    // 8. `up` with the profile still naming v1.28.7 refuses to move the cluster back.
    let (out, _) = c.lc.up(&[]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success() && err.contains("runs Kubernetes v1.28.8"),
        "{err}"
    );
}
