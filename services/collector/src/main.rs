//! `strata-collector --config FILE`: serves backup requests for the configured stanzas on the NATS bus.

use anyhow::Context;
use clap::Parser;
use std::sync::Arc;

#[derive(Parser)]
#[command(version, about = "Strata collector: reads PostgreSQL data directories for backups")]
struct Args {
    #[arg(long, env = "STRATA_CONFIG")]
    config: std::path::PathBuf,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    strata_runtime::init_tracing();
    strata_runtime::exit_with(async {
        let args = Args::parse();
        let cfg = Arc::new(strata_config::Config::load(&args.config, std::env::vars())?);
        let bus = strata_runtime::connect_service_bus(&cfg).await.context("strata-collector")?;
        let sealer = strata_runtime::service_sealer(&cfg).await.context("strata-collector")?;
        strata_collector::run(cfg, bus, sealer, strata_runtime::shutdown_signal()).await.context("strata-collector")
    })
    .await
}
