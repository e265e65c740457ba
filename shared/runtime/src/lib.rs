//! How a Strata process starts and stops: logging, the bus it talks to, the repository storage and key it
//! opens, its metrics endpoint ([`metrics`]), shutdown on signals, and the one-line error and exit code every
//! binary ends with.

pub mod metrics;

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
    // Every binary starts here; in a test build this is also where its crash points are configured.
    strata_crashpoint::setup();
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

/// Opens a repository's storage backend, without its key.
pub async fn open_storage(cfg: &strata_config::RepoConfig) -> anyhow::Result<Arc<dyn strata_storage::Storage>> {
    use anyhow::Context;
    let storage: Arc<dyn strata_storage::Storage> = match cfg.kind {
        strata_config::RepoType::Posix => Arc::new(
            strata_storage::PosixStorage::open(&cfg.path).with_context(|| format!("repository '{}'", cfg.name))?,
        ),
        strata_config::RepoType::S3 => open_s3(cfg).await?,
    };
    Ok(storage)
}

/// Opens an S3 repository's backend (the concrete type, for callers that export its retry count).
pub async fn open_s3(cfg: &strata_config::RepoConfig) -> anyhow::Result<Arc<strata_storage::S3Storage>> {
    use anyhow::Context;
    let custom = cfg.endpoint.is_some();
    let settings = strata_storage::S3Settings {
        bucket: cfg.bucket.clone(),
        prefix: cfg.prefix.clone(),
        region: cfg.region.clone().unwrap_or_else(|| "us-east-1".into()),
        endpoint: cfg.endpoint.clone(),
        path_style: cfg.path_style.unwrap_or(custom),
        credentials: cfg.access_key_id.clone().zip(cfg.secret_access_key.clone()),
        storage_class: cfg.storage_class.clone(),
        checksums: cfg.checksums.unwrap_or(!custom),
        retry: Default::default(),
    };
    Ok(Arc::new(strata_storage::S3Storage::open(settings).await.with_context(|| format!("repository '{}'", cfg.name))?))
}

/// The sealer a long-running service (collector, sealer, uploader) works with: the primary repository's
/// key when it is encrypted. Waits while encryption is configured and stanza-create has not stored the key
/// yet, so a service started first never writes plain chunks into a repository about to be encrypted.
pub async fn service_sealer(cfg: &Config) -> anyhow::Result<strata_seal::Sealer> {
    use anyhow::Context;
    let repo = cfg.primary_repo();
    let storage = open_storage(repo).await?;
    strata_keys::wait_for_sealer(cfg, storage.as_ref()).await.with_context(|| format!("repository '{}'", repo.name))
}
