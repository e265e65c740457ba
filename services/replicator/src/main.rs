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
        let shutdown = strata_runtime::shutdown_signal();
        tokio::pin!(shutdown);
        // With NATS the work is shared between replicator processes; locally this process does it all.
        let bus = match cfg.bus {
            strata_config::BusConfig::Local => None,
            // Waits for NATS; told to stop meanwhile, there is nothing to shut down.
            strata_config::BusConfig::Nats(_) => match strata_runtime::connect_service_bus(&cfg, shutdown.as_mut()).await.context("strata-replicator")? {
                Some(bus) => Some(bus),
                None => return Ok(()),
            },
        };
        strata_replicate::run(Arc::new(cfg), bus, shutdown).await.context("strata-replicator")
    })
    .await
}
