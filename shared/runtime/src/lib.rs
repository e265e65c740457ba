//! How a Strata process starts and stops: logging, the bus it talks to, shutdown on signals, and the
//! one-line error and exit code every binary ends with.

use std::future::Future;
use std::process::ExitCode;
use std::sync::Arc;
use strata_bus::{Bus, LocalBus, NatsBus};
use strata_config::{BusConfig, Config};

/// Logs go to stderr, filtered by `STRATA_LOG` (default `info` for services, set by the caller's default).
pub fn init_tracing() {
    init_tracing_with_default("info");
}

pub fn init_tracing_with_default(default: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Runs `main` and turns its error into one line on stderr and exit code 1.
pub async fn exit_with(main: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    match main.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // `{:#}` joins the context chain on one line: "archive-push: cannot reach ...: connection refused".
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Completes on SIGTERM or SIGINT.
pub async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
    tracing::info!("shutting down");
}

/// The bus a standalone service joins. Services only make sense on a shared bus: in single-host mode the
/// `strata` command runs every stage inside itself.
pub async fn connect_service_bus(cfg: &Config) -> anyhow::Result<Arc<dyn Bus>> {
    match cfg.bus() {
        BusConfig::Nats(url) => Ok(Arc::new(NatsBus::connect(&url).await?)),
        BusConfig::Local => anyhow::bail!(
            "bus = \"local\" runs every stage inside the strata command; a standalone service needs bus = \"nats://...\""
        ),
    }
}

/// The bus for a command: NATS when configured, else a fresh in-process bus (the caller then runs the
/// stages it needs on it).
pub async fn connect_bus(cfg: &Config) -> anyhow::Result<(Arc<dyn Bus>, bool)> {
    match cfg.bus() {
        BusConfig::Nats(url) => Ok((Arc::new(NatsBus::connect(&url).await?), false)),
        BusConfig::Local => Ok((Arc::new(LocalBus::new()), true)),
    }
}
