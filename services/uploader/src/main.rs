//! `strata-uploader --config FILE`: a pool of pack writers for the primary repository, on the NATS bus.

use anyhow::Context;
use clap::Parser;

#[derive(Parser)]
#[command(version, about = "Strata uploader: writes sealed chunks into the repository and commits backups")]
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
        let storage = strata_runtime::open_storage(cfg.primary_repo()).await.context("strata-uploader")?;
        let sealer = strata_runtime::service_sealer(&cfg).await.context("strata-uploader")?;
        let repo = strata_repo::Repo::new(cfg.primary_repo().name.clone(), storage).with_sealer(sealer);
        let bus = strata_runtime::connect_service_bus(&cfg).await.context("strata-uploader")?;
        let settings = strata_uploader::UploaderSettings::from_config(&cfg.pipeline);
        strata_uploader::run(repo, bus, settings, strata_runtime::shutdown_signal())
            .await
            .context("strata-uploader")
    })
    .await
}
