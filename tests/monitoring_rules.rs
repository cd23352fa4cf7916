//! The alert rules evaluated by Prometheus's own rule engine: `promtool test rules` (Debian's
//! `prometheus` package) runs k8sforge's rule file against input series for each alert and checks
//! that it fires for the bad series only (a GPU node NotReady but not a CPU node, an Xid error,
//! an allocated GPU idle but not a busy or unallocated one, a slow link but not a fast one, a
//! certificate near expiry but not a fresh one, an invalid certificate, a target down).
//! Skipped with one line when promtool is absent.

use std::path::Path;
use std::process::Command;

use k8sforge::monitoring::rules;

const PROMTOOL: &str = "/usr/bin/promtool";

const TESTS: &str = r#"
rule_files: [rules.yaml]
evaluation_interval: 1m
tests:
  - interval: 1m
    input_series:
      - series: 'kube_node_status_condition{condition="Ready",status="true",node="gpu-1"}'
        values: '0x10'
      - series: 'kube_node_status_condition{condition="Ready",status="true",node="cpu-1"}'
        values: '0x10'
      - series: 'kube_node_status_condition{condition="Ready",status="true",node="gpu-2"}'
        values: '1x10'
      - series: 'kube_node_labels{node="gpu-1",label_k8sforge_io_gpu="true"}'
        values: '1x10'
      - series: 'kube_node_labels{node="gpu-2",label_k8sforge_io_gpu="true"}'
        values: '1x10'
      - series: 'kube_node_labels{node="cpu-1"}'
        values: '1x10'
    alert_rule_test:
      - eval_time: 3m
        alertname: GpuNodeNotReady
        exp_alerts: []
      - eval_time: 6m
        alertname: GpuNodeNotReady
        exp_alerts:
          - exp_labels: {severity: critical, condition: Ready, status: "true", node: gpu-1}
            exp_annotations: {summary: "GPU node gpu-1 is not Ready"}
  - interval: 1m
    input_series:
      - series: 'DCGM_FI_DEV_XID_ERRORS{gpu="0",UUID="GPU-a",Hostname="gpu-1"}'
        values: '0 0 0 79 0 0'
      - series: 'DCGM_FI_DEV_XID_ERRORS{gpu="1",UUID="GPU-b",Hostname="gpu-1"}'
        values: '0x6'
    alert_rule_test:
      - eval_time: 2m
        alertname: GpuXidError
        exp_alerts: []
      - eval_time: 5m
        alertname: GpuXidError
        exp_alerts:
          - exp_labels: {severity: critical, gpu: "0", UUID: GPU-a, Hostname: gpu-1}
            exp_annotations: {summary: "GPU 0 on gpu-1 reported Xid 79"}
  - interval: 1m
    input_series:
      - series: 'DCGM_FI_DEV_GPU_UTIL{gpu="0",Hostname="gpu-1",namespace="team-a",pod="train-0"}'
        values: '1x70'
      - series: 'DCGM_FI_DEV_GPU_UTIL{gpu="1",Hostname="gpu-1",namespace="team-a",pod="train-0"}'
        values: '95x70'
      - series: 'DCGM_FI_DEV_GPU_UTIL{gpu="2",Hostname="gpu-1"}'
        values: '0x70'
    alert_rule_test:
      - eval_time: 20m
        alertname: GpuIdleWhileAllocated
        exp_alerts: []
      - eval_time: 65m
        alertname: GpuIdleWhileAllocated
        exp_alerts:
          - exp_labels: {severity: warning, gpu: "0", Hostname: gpu-1, namespace: team-a, pod: train-0}
            exp_annotations: {summary: "GPU 0 on gpu-1 is allocated to team-a/train-0 and idle"}
  - interval: 1m
    input_series:
      - series: 'k8sforge_netprobe_throughput_bits_per_second{source="n1",target="n2"}'
        values: '1e9x20'
      - series: 'k8sforge_netprobe_expected_bits_per_second{source="n1",target="n2"}'
        values: '10e9x20'
      - series: 'k8sforge_netprobe_throughput_bits_per_second{source="n1",target="n3"}'
        values: '9e9x20'
      - series: 'k8sforge_netprobe_expected_bits_per_second{source="n1",target="n3"}'
        values: '10e9x20'
    alert_rule_test:
      - eval_time: 5m
        alertname: NodeLinkSlow
        exp_alerts: []
      - eval_time: 15m
        alertname: NodeLinkSlow
        exp_alerts:
          - exp_labels: {severity: warning, source: n1, target: n2}
            exp_annotations: {summary: "link n1 -> n2 is under half its expected speed"}
  - interval: 1m
    input_series:
      - series: 'k8sforge_certificate_expiry_timestamp_seconds{cluster="c",certificate="apiserver"}'
        values: '864000x5'
      - series: 'k8sforge_certificate_expiry_timestamp_seconds{cluster="c",certificate="ca"}'
        values: '315360000x5'
      - series: 'k8sforge_certificate_valid{cluster="c",certificate="front-proxy-client",status="missing"}'
        values: '0x5'
      - series: 'k8sforge_certificate_valid{cluster="c",certificate="ca",status="ok"}'
        values: '1x5'
    alert_rule_test:
      - eval_time: 1m
        alertname: CertificateExpiringSoon
        exp_alerts:
          - exp_labels: {severity: warning, cluster: c, certificate: apiserver}
            exp_annotations: {summary: "certificate apiserver expires within 30 days: run k8sforge certs rotate"}
      - eval_time: 1m
        alertname: CertificateInvalid
        exp_alerts:
          - exp_labels: {severity: critical, cluster: c, certificate: front-proxy-client, status: missing}
            exp_annotations: {summary: "certificate front-proxy-client is missing"}
  - interval: 1m
    input_series:
      - series: 'up{job="etcd",node="cp-1"}'
        values: '0x15'
      - series: 'up{job="apiserver",node="cp-1"}'
        values: '1x15'
    alert_rule_test:
      - eval_time: 5m
        alertname: ScrapeTargetDown
        exp_alerts: []
      - eval_time: 11m
        alertname: ScrapeTargetDown
        exp_alerts:
          - exp_labels: {severity: warning, job: etcd, node: cp-1}
            exp_annotations: {summary: "etcd on cp-1 cannot be scraped"}
"#;

#[test]
fn promtool_fires_every_alert_on_its_bad_series_only() {
    if !Path::new(PROMTOOL).is_file() {
        println!("skipped: needs {PROMTOOL} (Debian package prometheus)");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("rules.yaml"), rules::rule_file()).unwrap();
    std::fs::write(dir.path().join("tests.yaml"), TESTS).unwrap();
    let check = Command::new(PROMTOOL)
        .args(["check", "rules", "rules.yaml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        check.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&check.stdout),
        String::from_utf8_lossy(&check.stderr)
    );
    let out = Command::new(PROMTOOL)
        .args(["test", "rules", "tests.yaml"])
        .current_dir(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool test rules:\n{}{}\nrules:\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
        rules::rule_file()
    );
    // Every alert of the rule file has a test above.
    for g in rules::groups() {
        for r in g.rules {
            assert!(
                TESTS.contains(&format!("alertname: {}", r.alert)),
                "{} has no promtool test",
                r.alert
            );
        }
    }
}
