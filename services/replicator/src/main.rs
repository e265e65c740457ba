//! `strata-replicator --config FILE`: copies committed backups and archived WAL to the other repositories.

use anyhow::Context;
use clap::Parser;
use std::sync::Arc;

#[derive(Parser)]
#[command(version, about = "Strata replicator: copies backups and WAL from one repository to others")]
struct Args {
    #[arg(long, env = "STRATA_CONFIG")]
    config: std::path::PathBuf,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    strata_runtime::init_tracing();
    strata_runtime::exit_with(async {
        let args = Args::parse();
        let cfg = strata_config::Config::load(&args.config, std::env::vars())?;
        // With NATS the work is shared between replicator processes; locally this process does it all.
        let bus = match cfg.bus() {
            strata_config::BusConfig::Local => None,
            strata_config::BusConfig::Nats(_) => Some(strata_runtime::connect_service_bus(&cfg).await.context("strata-replicator")?),
        };
        strata_replicator::run(Arc::new(cfg), bus, strata_runtime::shutdown_signal()).await.context("strata-replicator")
    })
    .await
}
