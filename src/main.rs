use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    let cli = k8sforge::cli::Cli::parse();
    let filter = match cli.verbose {
        0 => "warn,k8sforge=info",
        1 => "info,k8sforge=debug",
        _ => "debug,k8sforge=trace",
    };
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("K8SFORGE_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(filter)),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_target(false)
        .without_time()
        .init();
    match k8sforge::commands::run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(1)
        }
    }
}
