//! `strata-verifier --config FILE`: verifies new backups and the WAL archive, runs scheduled restore tests,
//! exports the stanzas' health as metrics and raises alerts.

use clap::Parser;
use std::sync::Arc;

#[derive(Parser)]
#[command(version, about = "Strata verifier: checks backups and WAL as they land, runs restore tests, raises alerts")]
struct Args {
    #[arg(long, env = "STRATA_CONFIG")]
    config: std::path::PathBuf,
    /// Address of the metrics endpoint (overrides verifier.metrics_listen).
    #[arg(long)]
    metrics_listen: Option<String>,
    /// Run one round and exit (for cron, or to check the setup).
    #[arg(long)]
    once: bool,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    strata_runtime::init_tracing();
    strata_runtime::exit_with(async {
        let args = Args::parse();
        let cfg = strata_config::Config::load(&args.config, std::env::vars())?;
        let listen = args.metrics_listen.or_else(|| cfg.verifier.metrics_listen.clone());
        let config_path = std::fs::canonicalize(&args.config).unwrap_or(args.config.clone());
        strata_verifier::run(Arc::new(cfg), config_path, listen, args.once, strata_runtime::shutdown_signal()).await
    })
    .await
}
