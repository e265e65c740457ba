//! `strata-sealer --config FILE`: a pool of sealing workers on the NATS bus.

use anyhow::Context;
use clap::Parser;

#[derive(Parser)]
#[command(version, about = "Strata sealer: compresses chunks between the collector and the uploaders")]
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
        let bus = strata_runtime::connect_service_bus(&cfg).await.context("strata-sealer")?;
        let sealer = strata_runtime::service_sealer(&cfg).await.context("strata-sealer")?;
        strata_sealer::run(bus, cfg.pipeline.sealer_workers, sealer, strata_runtime::shutdown_signal()).await
    })
    .await
}
