//! The `certs rotate` verb: flags → options, the locked state directory, output.

use std::path::Path;
use std::process::ExitCode;

use anyhow::Result;

use super::{plan, RotateOptions, RotateReport};
use crate::cli::{OutputFormat, ProfileArgs};
use crate::pki::rotate::Selection;
use crate::state::ClusterDir;

/// Flags of `certs rotate`, as parsed.
pub struct RotateArgs<'a> {
    pub profile: &'a ProfileArgs,
    pub only: &'a [String],
    pub within: Option<&'a str>,
    pub ca: bool,
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

pub fn run(home: &Path, args: &RotateArgs) -> Result<ExitCode> {
    let loaded = crate::commands::load_profile(args.profile)?;
    if args.ca {
        eprintln!("k8sforge: `certs rotate --ca` (CA rotation) is not implemented yet in this version; nothing was changed.");
        return Ok(ExitCode::from(3));
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
    let report = super::run(&loaded, &dir, &opts)?;
    match args.output {
        OutputFormat::Json => println!("{}", serde_json::to_string_pretty(&report)?),
        OutputFormat::Text => print_text(&report),
    }
    Ok(if report.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_text(r: &RotateReport) {
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
