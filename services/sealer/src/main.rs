//! `strata-sealer --config FILE [--metrics-listen ADDR]`: a pool of sealing workers on the NATS bus.

use anyhow::Context;
use clap::Parser;
use strata_runtime::metrics::{listen_address, MetricsEndpoint};

#[derive(Parser)]
#[command(version, about = "Strata sealer: compresses chunks between the collector and the uploaders")]
struct Args {
    #[arg(long, env = "STRATA_CONFIG")]
    config: std::path::PathBuf,
    /// Serve Prometheus metrics at http://ADDR/metrics (overrides `[metrics] sealer`).
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
        let endpoint = match listen_address(args.metrics_listen.as_deref(), cfg.metrics.sealer.as_deref(), "[metrics] sealer") {
            Some((addr, setting)) => Some(MetricsEndpoint::start(&addr, &setting, registry.clone()).await.context("strata-sealer")?),
            None => None,
        };
        let metrics = strata_seal_worker::SealerMetrics::new(&registry);
        // Waits for NATS; told to stop meanwhile, there is nothing to shut down.
        let shutdown = strata_runtime::shutdown_signal();
        tokio::pin!(shutdown);
        let Some(bus) = strata_runtime::connect_service_bus(&cfg, shutdown.as_mut()).await.context("strata-sealer")? else {
            return Ok(());
        };
        if let Some(e) = &endpoint {
            e.watch_queues(bus.clone());
        }
        let sealer = strata_runtime::service_sealer(&cfg).await.context("strata-sealer")?;
        strata_seal_worker::run(bus, cfg.pipeline.sealer_workers, sealer, metrics, shutdown).await
    })
    .await
}
