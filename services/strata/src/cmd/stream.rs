//! `wal-stream`: streams the stanza's WAL from a replication slot into the repository until stopped
//! (SIGTERM or SIGINT), for an RPO of about `wal_stream.flush_ms` (see `strata_collect::stream`).
//!
//! It runs on the database host, or any host that reaches the primary with a replication connection. In
//! single-host mode the sealer and uploader run in this process; with a NATS bus the segments go to the
//! fleet's sealers and uploaders like the collector's backups. It checks the cluster is the stanza's and
//! stores into the primary repository; the archive_command stays the safety net (pushing a segment both
//! ways is harmless) and copies to the other required repositories.

use strata_command::Context_;
use anyhow::Context;
use std::sync::Arc;
use std::time::Duration;
use strata_collect::stream::{StreamMetrics, StreamSettings};
use strata_runtime::metrics::{listen_address, MetricsEndpoint};
use tokio_util::sync::CancellationToken;

pub async fn run(ctx: &Context_, metrics_listen: Option<&str>) -> anyhow::Result<()> {
    let stanza_cfg = ctx.cfg.stanza(&ctx.stanza)?;
    let info = ctx.repo.stanza(&ctx.stanza).await?;
    let target = Arc::new(super::archive::wal_push_target(ctx, &info));
    let w = &ctx.cfg.wal_stream;
    let slot = w.slot_name(&ctx.stanza);
    let settings = Arc::new(StreamSettings {
        slot: slot.clone(),
        flush: Duration::from_millis(w.flush_ms),
        status_interval: Duration::from_secs(w.status_interval_secs),
        slot_retained_max: w.slot_retained_max,
        application_name: slot.clone(),
        // Through the sealer stage (or the fleet's sealers): a partial is a piece or two at a time.
        push: super::archive::wal_push_settings(ctx, None),
    });
    let registry = strata_metrics::Registry::new();
    let _endpoint = match listen_address(metrics_listen, w.metrics_listen.as_deref(), "wal_stream.metrics_listen") {
        Some((addr, setting)) => Some(MetricsEndpoint::start(&addr, &setting, registry.clone()).await?),
        None => None,
    };
    let metrics = StreamMetrics::register(&registry, &ctx.stanza);
    let (bus, in_process) = strata_runtime::connect_bus(&ctx.cfg).await?;
    let stages = if in_process { Some(crate::local::start(&ctx.cfg, &ctx.repo, bus.clone(), false).await?) } else { None };
    let cancel = CancellationToken::new();
    let stop = strata_runtime::shutdown_signal();
    let on_signal = cancel.clone();
    tokio::spawn(async move {
        stop.await;
        on_signal.cancel();
    });
    eprintln!("wal-stream: stanza '{}' from slot {slot} into repository '{}'", ctx.stanza, ctx.repo.name());
    let result = strata_collect::stream::run(bus, target, settings, stanza_cfg.pg_conn.clone(), metrics, cancel).await;
    if let Some(stages) = stages {
        stages.stop().await.context("stopping the pipeline")?;
    }
    result
}
