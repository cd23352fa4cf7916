//! Every PromQL expression of k8sforge's Grafana dashboards parsed by Prometheus's own parser:
//! each becomes a recording rule and `promtool check rules` (Debian's `prometheus` package)
//! must accept the file. Grafana's `$variable`s are replaced by what "All" selects (`.*`).
//! That every metric they name is produced by a deployed exporter is the unit test in
//! `src/monitoring/dashboards.rs`. Skipped with one line when promtool is absent.

use std::process::Command;

use k8sforge::monitoring::dashboards;

const PROMTOOL: &str = "/usr/bin/promtool";

#[test]
fn promtool_parses_every_dashboard_query() {
    if !std::path::Path::new(PROMTOOL).exists() {
        println!("skipped: needs {PROMTOOL} (Debian package prometheus)");
        return;
    }
    let mut rules = Vec::new();
    for d in dashboards::all() {
        for (i, e) in d.expressions().into_iter().enumerate() {
            let expr = e.replace("$node", ".*");
            rules.push(serde_json::json!({
                "record": format!("k8sforge:dashboard:{}:{i}", d.uid.replace('-', "_")),
                "expr": expr,
            }));
        }
    }
    assert!(rules.len() >= 15, "{} queries", rules.len());
    let file = serde_json::json!({"groups": [{"name": "dashboards", "rules": rules}]});
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("dashboards.yaml");
    std::fs::write(&path, file.to_string()).unwrap();
    let out = Command::new(PROMTOOL)
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "promtool check rules:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    // A broken expression is refused (the check bites).
    std::fs::write(
        &path,
        r#"{"groups":[{"name":"x","rules":[{"record":"x:y","expr":"sum by (node (up)"}]}]}"#,
    )
    .unwrap();
    let bad = Command::new(PROMTOOL)
        .args(["check", "rules"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!bad.status.success());
}
