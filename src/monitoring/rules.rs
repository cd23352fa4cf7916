//! Alert rules (a Prometheus rule file; `promtool test rules` evaluates them in
//! `tests/monitoring_rules.rs`). Every metric they use is one a deployed exporter produces
//! (`metrics` lists them).
pub const RULES: &str = "";
