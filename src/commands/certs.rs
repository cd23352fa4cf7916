//! `certs check` and `certs rotate`.

use std::io::Write;
use std::path::Path;
use std::process::ExitCode;

use anyhow::{Context, Result};
use serde::Serialize;
use time::OffsetDateTime;

use super::inputs::{inventory_for, load_profile};
use crate::cli::{CaName, OutputFormat, ProfileArgs};
use crate::deployed_certs::{DeployedStatus, NodeCerts};
use crate::pki::check::{CheckReport, Status, EXIT_ATTENTION};
use crate::pki::rotate::Selection;
use crate::rotate::{plan, RotateOptions, RotateReport};
use crate::state::{self, ClusterDir};

/// What `certs check --output json` prints: the state directory's report and, unless
/// `--offline`, what each node holds.
#[derive(Serialize)]
struct CheckOutput {
    #[serde(flatten)]
    report: CheckReport,
    /// The certificates deployed on each node, read over SSH (empty when not asked or the
    /// cluster has no provisioned nodes).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    nodes: Vec<NodeCerts>,
}

/// `certs check`: reads the cluster's PKI (and, unless `--offline`, the certificates deployed
/// on every provisioned node) without creating or locking anything.
pub fn check(
    home: &Path,
    args: &ProfileArgs,
    warn_days: u32,
    offline: bool,
    output: OutputFormat,
    textfile_dir: Option<&Path>,
) -> Result<ExitCode> {
    let loaded = load_profile(args)?;
    let root = ClusterDir::existing(home, &loaded.profile.name)?;
    let st = state::load_state_at(&root.join("state.json"))?;
    let inv = inventory_for(&loaded, &st)?;
    let now = OffsetDateTime::now_utc();
    let report = crate::pki::check::inspect(&loaded.profile, &inv, &root, warn_days, now)?;
    if let Some(dir) = textfile_dir {
        // The same inspection, as metrics for node-exporter (see monitoring::certs_metric).
        let path = dir.join(crate::monitoring::certs_metric::TEXTFILE_NAME);
        crate::fsutil::write_if_changed(
            &path,
            crate::monitoring::certs_metric::textfile(&report).as_bytes(),
            0o644,
        )
        .with_context(|| format!("writing {}", path.display()))?;
    }
    // Only machines a `provision` phase made hold certificates (`plan` alone plans addresses).
    let provisioned = st
        .phases
        .contains_key(crate::phases::PhaseName::Provision.as_str());
    let nodes = if !offline && provisioned && !inv.planned {
        crate::deployed_certs::reader(&loaded.profile, &inv, &root, &st, warn_days)?(now)
    } else {
        Vec::new()
    };
    let mut out = CheckOutput { report, nodes };
    out.report.ok &= out.nodes.iter().all(NodeCerts::ok);

    let text = if output == OutputFormat::Json {
        serde_json::to_string_pretty(&out)? + "\n"
    } else if out.nodes.is_empty() {
        crate::pki::check::table_text(&out.report)
    } else {
        format!(
            "{}\nDeployed on the nodes:\n{}",
            crate::pki::check::table_text(&out.report),
            crate::deployed_certs::table_text(&out.nodes)
        )
    };
    // A closed stdout (`| head`) is not a certificate problem.
    let _ = std::io::stdout().lock().write_all(text.as_bytes());

    let bad = out
        .report
        .certificates
        .iter()
        .filter(|c| c.status != Status::Ok)
        .count();
    let nodes_bad: Vec<String> = out
        .nodes
        .iter()
        .filter(|n| !n.ok())
        .map(|n| {
            if !n.reachable {
                return format!("{} (unreachable)", n.node);
            }
            let bad: Vec<String> = n
                .certificates
                .iter()
                .filter(|c| c.status != DeployedStatus::Ok)
                .map(|c| format!("{} {}", c.path, c.status.as_str()))
                .collect();
            format!("{}: {}", n.node, bad.join(", "))
        })
        .collect();
    if !nodes_bad.is_empty() {
        eprintln!(
            "k8sforge: deployed certificates need attention on {} node(s):\n  {}\n  drift: the node holds other certificates than the state directory (`k8sforge up` installs them; `k8sforge certs rotate` renews and restarts in a safe order)",
            nodes_bad.len(),
            nodes_bad.join("\n  ")
        );
    }
    if bad == 0 && nodes_bad.is_empty() {
        Ok(ExitCode::SUCCESS)
    } else if bad == 0 {
        Ok(ExitCode::from(EXIT_ATTENTION))
    } else {
        eprintln!(
            "k8sforge: {bad} certificate(s) missing, invalid, expired or expiring within {warn_days} days; `k8sforge certs rotate --within {warn_days}d` renews expiring ones (`k8sforge plan` issues missing or invalid ones)"
        );
        Ok(ExitCode::from(EXIT_ATTENTION))
    }
}

/// Flags of `certs rotate`, as parsed.
pub struct RotateArgs<'a> {
    pub profile: &'a ProfileArgs,
    pub only: &'a [String],
    pub within: Option<&'a str>,
    pub ca: bool,
    pub only_ca: &'a [CaName],
    pub sa_keys: bool,
    pub finish: bool,
    pub dry_run: bool,
    pub batch: usize,
    pub output: OutputFormat,
}

/// `30d`, `12h`, `90m` (a bare number is days).
pub fn parse_window(s: &str) -> Result<time::Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.char_indices().find(|(_, c)| !c.is_ascii_digit()) {
        Some((i, _)) => (&s[..i], &s[i..]),
        None => (s, "d"),
    };
    let n: i64 = num
        .parse()
        .map_err(|_| format!("--within {s:?}: expected a number with d, h or m, e.g. 30d"))?;
    match unit {
        "d" => Ok(time::Duration::days(n)),
        "h" => Ok(time::Duration::hours(n)),
        "m" => Ok(time::Duration::minutes(n)),
        _ => Err(format!(
            "--within {s:?}: unknown unit {unit:?}; use d (days), h (hours) or m (minutes), e.g. 30d"
        )),
    }
}

/// `certs rotate`: flags → options, the locked state directory, output.
pub fn rotate(home: &Path, args: &RotateArgs) -> Result<ExitCode> {
    let loaded = load_profile(args.profile)?;
    if args.ca || args.sa_keys {
        return rotate_ca(home, &loaded, args);
    }
    let selection = match (args.only.is_empty(), args.within) {
        (false, Some(_)) => anyhow::bail!("--only and --within cannot be combined"),
        (false, None) => Selection::Only(args.only.to_vec()),
        (true, Some(w)) => Selection::Within(parse_window(w).map_err(anyhow::Error::msg)?),
        (true, None) => Selection::All,
    };
    // Refuse a missing cluster before creating anything.
    ClusterDir::existing(home, &loaded.profile.name)?;
    let dir = ClusterDir::open(home, &loaded.profile.name)?;
    if let Some(why) = crate::upgrade::refusal(&dir.load_state()?, &loaded, "certs rotate")? {
        anyhow::bail!(why);
    }
    let opts = RotateOptions {
        selection,
        batch: args.batch,
        dry_run: args.dry_run,
        timeouts: Default::default(),
        progress: args.output == OutputFormat::Text
            && std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    if !args.dry_run {
        eprintln!(
            "Rotating certificates of cluster {:?} ...",
            loaded.profile.name
        );
    }
    let report = crate::rotate::run(&loaded, &dir, &opts)?;
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Text => print_rotate(&report),
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

/// `certs rotate --ca` / `--sa-keys [--finish]`.
fn rotate_ca(
    home: &Path,
    loaded: &crate::profile::LoadedProfile,
    args: &RotateArgs,
) -> Result<ExitCode> {
    use crate::pki::table::CaId;
    use crate::rotate::ca::{self, Flow};
    let flow = match (args.ca, args.finish) {
        (true, _) => Flow::Ca,
        (false, false) => Flow::SaKeys,
        (false, true) => Flow::SaFinish,
    };
    let mut cas: Vec<CaId> = args
        .only_ca
        .iter()
        .map(|c| match c {
            CaName::Kubernetes => CaId::Kubernetes,
            CaName::Etcd => CaId::Etcd,
            CaName::FrontProxy => CaId::FrontProxy,
        })
        .collect();
    if cas.is_empty() {
        cas = CaId::ALL.to_vec();
    }
    cas.sort();
    cas.dedup();
    ClusterDir::existing(home, &loaded.profile.name)?;
    let dir = ClusterDir::open(home, &loaded.profile.name)?;
    let opts = RotateOptions {
        selection: Selection::All,
        batch: args.batch,
        dry_run: args.dry_run,
        timeouts: Default::default(),
        progress: args.output == OutputFormat::Text
            && std::io::IsTerminal::is_terminal(&std::io::stderr()),
    };
    let report = ca::run(loaded, &dir, flow, &cas, &opts)?;
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Text => {
            if report.dry_run {
                println!(
                    "certs rotate{} {} (dry run){}:",
                    flow.resume_flags(),
                    report.cluster,
                    if flow == Flow::Ca {
                        format!(" of {}", report.cas.join(", "))
                    } else {
                        String::new()
                    }
                );
                print!("{}", ca::describe(&report));
                println!("dry run: nothing was changed");
            } else if let Some(m) = &report.message {
                if report.ok {
                    eprintln!("{m} in {:.1} s", report.elapsed_secs);
                } else {
                    eprintln!("k8sforge: {m}");
                }
            }
        }
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_rotate(r: &RotateReport) {
    if r.dry_run {
        let names: Vec<&str> = r.certificates.iter().map(|c| c.name.as_str()).collect();
        println!(
            "certs rotate {} (dry run): {} certificate(s) to renew: {}",
            r.cluster,
            names.len(),
            names.join(", ")
        );
        println!(
            "{} stage(s), {} file push(es), {} unit restart(s), in this order:",
            r.plan.stages.len(),
            r.plan.files(),
            r.plan.restarts()
        );
        print!("{}", plan::describe(&r.plan));
        if r.resumed {
            println!(
                "(a rotation is in progress: {} stage(s) done; the above is the whole plan)",
                r.stages_done_before
            );
        }
        println!("dry run: nothing was changed");
        return;
    }
    if let Some(m) = &r.message {
        if r.ok {
            eprintln!("{m} in {:.1} s", r.elapsed_secs);
        } else {
            eprintln!("k8sforge: {m}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_parse_with_units_and_refuse_garbage() {
        assert_eq!(parse_window("30d"), Ok(time::Duration::days(30)));
        assert_eq!(parse_window("12h"), Ok(time::Duration::hours(12)));
        assert_eq!(parse_window("7"), Ok(time::Duration::days(7)));
        assert!(parse_window("3w").unwrap_err().contains("unknown unit"));
        assert!(parse_window("d").unwrap_err().contains("e.g. 30d"));
    }
}
