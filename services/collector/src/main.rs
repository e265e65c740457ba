//! `strata-collector --config FILE [--metrics-listen ADDR]`: serves backup requests for the configured
//! stanzas on the NATS bus.

use anyhow::Context;
use clap::Parser;
use std::sync::Arc;
use strata_runtime::metrics::{listen_address, MetricsEndpoint};

#[derive(Parser)]
#[command(version, about = "Strata collector: reads PostgreSQL data directories for backups")]
struct Args {
    #[arg(long, env = "STRATA_CONFIG")]
    config: std::path::PathBuf,
    /// Serve Prometheus metrics at http://ADDR/metrics (overrides `[metrics] collector`).
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<String>,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    strata_runtime::init_tracing();
    strata_runtime::exit_with(async {
        let args = Args::parse();
        let cfg = Arc::new(strata_config::Config::load(&args.config, std::env::vars())?);
        let registry = strata_metrics::Registry::new();
        let endpoint = match listen_address(args.metrics_listen.as_deref(), cfg.metrics.collector.as_deref(), "[metrics] collector") {
            Some((addr, setting)) => Some(MetricsEndpoint::start(&addr, &setting, registry.clone()).await.context("strata-collector")?),
            None => None,
        };
        let metrics = strata_collect::CollectorMetrics::new(&registry, cfg.stanza.keys().map(String::as_str));
        // Waits for NATS; told to stop meanwhile, there is nothing to shut down.
        let shutdown = strata_runtime::shutdown_signal();
        tokio::pin!(shutdown);
        let Some(bus) = strata_runtime::connect_service_bus(&cfg, shutdown.as_mut()).await.context("strata-collector")? else {
            return Ok(());
        };
        if let Some(e) = &endpoint {
            e.watch_queues(bus.clone());
        }
        let sealer = strata_runtime::service_sealer(&cfg).await.context("strata-collector")?;
        strata_collect::run(cfg, bus, sealer, metrics, shutdown).await.context("strata-collector")
    })
    .await
}
