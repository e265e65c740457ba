//! `strata-uploader --config FILE [--metrics-listen ADDR]`: a pool of pack writers for the primary
//! repository, on the NATS bus.

use anyhow::Context;
use clap::Parser;

use strata_runtime::metrics::{listen_address, MetricsEndpoint};

#[derive(Parser)]
#[command(version, about = "Strata uploader: writes sealed chunks into the repository and commits backups")]
struct Args {
    #[arg(long, env = "STRATA_CONFIG")]
    config: std::path::PathBuf,
    /// Serve Prometheus metrics at http://ADDR/metrics (overrides `[metrics] uploader`).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    strata_runtime::init_tracing();
    strata_runtime::exit_with(async {
        let args = Args::parse();
        let cfg = strata_config::Config::load(&args.config, std::env::vars())?;
        let registry = strata_metrics::Registry::new();
        let endpoint = match listen_address(args.metrics_listen.as_deref(), cfg.metrics.uploader.as_deref(), "[metrics] uploader") {
            Some((addr, setting)) => Some(MetricsEndpoint::start(&addr, &setting, registry.clone()).await.context("strata-uploader")?),
            None => None,
        };
        let metrics = strata_upload::UploaderMetrics::new(&registry);
        let primary = cfg.primary_repo();
        let storage = strata_runtime::open_storage(primary).await.context("strata-uploader")?;
        if matches!(primary.kind, strata_config::RepoKind::S3(_)) {
            if let Some(stats) = storage.stats() {
                metrics.watch_s3(&primary.name, stats);
            }
        }
        let sealer = strata_runtime::service_sealer(&cfg).await.context("strata-uploader")?;
        let repo = strata_repo::Repo::new(primary.name.clone(), storage).with_sealer(sealer);
        // Waits for NATS; told to stop meanwhile, there is nothing to shut down.
        let shutdown = strata_runtime::shutdown_signal();
        tokio::pin!(shutdown);
        let Some(bus) = strata_runtime::connect_service_bus(&cfg, shutdown.as_mut()).await.context("strata-uploader")? else {
            return Ok(());
        };
        if let Some(e) = &endpoint {
            e.watch_queues(bus.clone());
        }
        let settings = strata_upload::UploaderSettings::from_config(&cfg.pipeline);
        strata_upload::run(repo, bus, settings, metrics, shutdown)
            .await
            .context("strata-uploader")
    })
    .await
}
