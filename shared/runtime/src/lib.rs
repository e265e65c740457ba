//! How a Strata process starts and stops: logging, the bus it talks to, the repository storage and key it
//! opens, its metrics endpoint ([`metrics`]), shutdown on signals, and the one-line error and exit code every
//! binary ends with.

pub mod metrics;

use std::future::Future;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use strata_bus::{Bus, LocalBus, NatsBus};
use strata_config::{BusConfig, Config};

/// Logs go to stderr, filtered by `STRATA_LOG` (default `info` for services, set by the caller's default).
pub fn init_tracing() {
    init_tracing_with_default("info");
}

pub fn init_tracing_with_default(default: &str) {
    // Every binary starts here; in a test build this is also where its crash points are configured.
    strata_crashpoint::setup();
    keep_chunk_buffers_on_the_heap();
    let filter = tracing_subscriber::EnvFilter::try_from_env("STRATA_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).try_init();
}

/// Chunks are 1 MiB buffers, allocated and freed thousands of times a second. Above glibc's mmap threshold
/// (128 KiB until a freed mapping raises it) each one is a fresh mapping whose pages the kernel faults in
/// and zeroes, and a free unmaps them again, or trims the heap top: perf put page faults and zeroing at 5-9%
/// of the sealer's and the collector's CPU. Served from the heap and not trimmed back, those pages are
/// reused. Memory stays bounded as before: the in-flight window bounds how many buffers are alive at once.
fn keep_chunk_buffers_on_the_heap() {
    // SAFETY: mallopt only sets allocator parameters; called before the process allocates in earnest.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 * 1024 * 1024);
        libc::mallopt(libc::M_TRIM_THRESHOLD, 256 * 1024 * 1024);
    }
}

/// Runs `main` and turns its error into one line on stderr and exit code 1.
pub async fn exit_with(main: impl Future<Output = anyhow::Result<()>>) -> ExitCode {
    match main.await {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {}", error_line(&e));
            ExitCode::FAILURE
        }
    }
}

/// An error and its causes on one line, joined with ": " ("archive-push: cannot reach ...: connection
/// refused"), as anyhow's `{:#}` does, but without repeating a cause whose text the line already holds:
/// error types that print their source in their own message (`repository 'r': {source}`) and also return
/// it as their source would otherwise print it twice ("X: permission denied: X: permission denied").
/// Line breaks inside a message become spaces.
pub fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string().split(['\n', '\r']).map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" ");
        if text.is_empty() || line.contains(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

/// Completes on SIGTERM or SIGINT. The handlers are installed by this call, not when the future is first
/// polled, so a signal that comes in between is not lost (and does not kill the process). Must be called
/// inside the Tokio runtime.
pub fn shutdown_signal() -> impl Future<Output = ()> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("installing a SIGTERM handler");
    let mut int = signal(SignalKind::interrupt()).expect("installing a SIGINT handler");
    async move {
        tokio::select! {
            _ = term.recv() => {}
            _ = int.recv() => {}
        }
        tracing::info!("shutting down");
        shutdown_token().cancel();
    }
}

/// The first pause between two tries to reach NATS at start, doubled after each failure up to
/// [`CONNECT_RETRY_MAX`].
const CONNECT_RETRY_FIRST: Duration = Duration::from_secs(1);
const CONNECT_RETRY_MAX: Duration = Duration::from_secs(30);

/// The bus a standalone service joins, or `None` when `shutdown` (the service's [`shutdown_signal`], which
/// it then goes on to pass to its run loop) completed before it could join. Services only make sense on a shared bus: in single-host mode the `strata`
/// command runs every stage inside itself.
///
/// A NATS server that cannot be reached is waited for, not a reason to exit: services and nats-server
/// start in any order (a host's boot, a NATS restart during a deployment). Each failed try is logged
/// with its reason, and the pause between tries doubles from 1 s up to 30 s. A server that answers but
/// cannot serve (too old, no JetStream, incompatible streams) or refuses this process's user or certificate
/// is an error at once: waiting cannot fix it. A secured server whose streams this process's user may not
/// create, and that no uploader has created yet, is waited for like an unreachable one.
pub async fn connect_service_bus(
    cfg: &Config,
    mut shutdown: std::pin::Pin<&mut impl Future<Output = ()>>,
) -> anyhow::Result<Option<Arc<dyn Bus>>> {
    let url = match &cfg.bus {
        BusConfig::Nats(url) => url,
        BusConfig::Local => anyhow::bail!(
            "bus = \"local\" runs every stage inside the strata command; a standalone service needs bus = \"nats://...\""
        ),
    };
    let mut pause = CONNECT_RETRY_FIRST;
    let mut tries = 0u32;
    loop {
        tries += 1;
        let error = tokio::select! {
            _ = shutdown.as_mut() => return Ok(None),
            connected = NatsBus::connect_with(url, nats_options(cfg)) => match connected {
                Ok(bus) => {
                    if tries > 1 {
                        tracing::info!(url = %url, tries, "reached NATS");
                    }
                    return Ok(Some(retrying(bus)));
                }
                Err(e) if e.is_permanent() => return Err(e.into()),
                Err(e) => e,
            },
        };
        tracing::warn!(url = %url, try_number = tries, retry_in_secs = pause.as_secs(), error = %error, "NATS is not reachable yet; retrying");
        tokio::select! {
            _ = shutdown.as_mut() => return Ok(None),
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(CONNECT_RETRY_MAX);
    }
}

/// The bus for a command: NATS when configured, else a fresh in-process bus (the caller then runs the
/// stages it needs on it).
pub async fn connect_bus(cfg: &Config) -> anyhow::Result<(Arc<dyn Bus>, bool)> {
    match &cfg.bus {
        BusConfig::Nats(url) => Ok((retrying(NatsBus::connect_with(url, nats_options(cfg)).await?), false)),
        BusConfig::Local => Ok((Arc::new(LocalBus::new()), true)),
    }
}

/// How long a work publish on a NATS bus is retried ([`strata_bus::RetryingBus`]): longer than a cluster's
/// leader election (seconds) plus one publish-ack timeout (10 s), so that one server's loss costs a pause,
/// and shorter than the consumers' ack wait (30 s), so that a sealer retrying its output still holds its
/// input.
pub const PUBLISH_RETRY_FOR: Duration = Duration::from_secs(25);

/// A NATS bus whose work publishes are retried through a cluster server's loss.
fn retrying(bus: NatsBus) -> Arc<dyn Bus> {
    Arc::new(strata_bus::RetryingBus::new(Arc::new(bus), PUBLISH_RETRY_FOR).with_cancel(shutdown_token().clone()))
}

/// The bus options a config asks for ([`strata_config::NatsConfig`]). Secret files are named here and read
/// by the bus when it connects; [`Config::load`] has already checked they exist and only their owner may
/// read them.
pub fn nats_options(cfg: &Config) -> strata_bus::nats::NatsOptions {
    use strata_bus::nats::{NatsAuth, NatsTls};
    let n = &cfg.nats;
    let auth = if let Some(path) = &n.creds_file {
        NatsAuth::CredsFile(path.clone())
    } else if let Some(path) = &n.nkey_file {
        NatsAuth::NkeyFile(path.clone())
    } else if let (Some(user), Some(password_file)) = (&n.user, &n.password_file) {
        NatsAuth::UserPassword { user: user.clone(), password_file: password_file.clone() }
    } else {
        NatsAuth::None
    };
    strata_bus::nats::NatsOptions {
        stream_replicas: n.stream_replicas,
        tls: NatsTls { ca_file: n.tls_ca_file.clone(), client_cert: n.tls_cert_file.clone().zip(n.tls_key_file.clone()) },
        auth,
        inbox_prefix: n.inbox_prefix.clone(),
        direct_data: n.direct_data,
        // Checked when the config was loaded.
        direct_bind: n.direct_listen.as_deref().and_then(|l| l.parse().ok()),
        ..Default::default()
    }
}

/// Ended when this process is told to stop ([`shutdown_signal`]): what ends the pauses of the storage
/// stacks' retries ([`open_storage`]), so a shutdown does not wait out a backoff.
pub fn shutdown_token() -> &'static CancellationToken {
    static TOKEN: OnceLock<CancellationToken> = OnceLock::new();
    TOKEN.get_or_init(CancellationToken::new)
}

/// Opens one of the config's repositories, with the sealer its key gives (see `strata_keys::sealer_for`).
pub async fn open_repo(config: &strata_config::Config, cfg: &strata_config::RepoConfig) -> anyhow::Result<strata_repo::Repo> {
    use anyhow::Context;
    let storage = open_storage(cfg).await?;
    let sealer = strata_keys::sealer_for(config, storage.as_ref()).await.with_context(|| format!("repository '{}'", cfg.name))?;
    Ok(strata_repo::Repo::new(cfg.name.clone(), storage).with_sealer(sealer))
}

/// Opens a repository's storage, without its key: the backend, with retries where the backend does not
/// retry itself ([`strata_storage::RetryingStorage`] over POSIX; S3 retries request by request inside),
/// under a meter ([`strata_storage::MeteredStorage`]: `stats()` on the result gives the counts for
/// metrics). Every repository of every service is opened here, so they all behave alike.
pub async fn open_storage(cfg: &strata_config::RepoConfig) -> anyhow::Result<Arc<dyn strata_storage::Storage>> {
    use anyhow::Context;
    let backend: Arc<dyn strata_storage::Storage> = match &cfg.kind {
        strata_config::RepoKind::Posix { path } => Arc::new(strata_storage::RetryingStorage::new(
            Arc::new(strata_storage::PosixStorage::open(path).with_context(|| format!("repository '{}'", cfg.name))?),
            strata_storage::retrying::POSIX_RETRY,
            shutdown_token().clone(),
        )),
        strata_config::RepoKind::S3(s3) => open_s3(&cfg.name, s3).await?,
    };
    Ok(Arc::new(strata_storage::MeteredStorage::new(backend)))
}

/// Opens an S3 repository's backend alone (retrying inside, unmetered); [`open_storage`] stacks it.
async fn open_s3(name: &str, cfg: &strata_config::S3Repo) -> anyhow::Result<Arc<strata_storage::S3Storage>> {
    use anyhow::Context;
    let settings = strata_storage::S3Settings {
        bucket: cfg.bucket.clone(),
        prefix: cfg.prefix.clone(),
        region: cfg.region.clone(),
        endpoint: cfg.endpoint.clone(),
        path_style: cfg.path_style,
        credentials: cfg.credentials.as_ref().map(strata_config::StaticCredentials::to_pair),
        storage_class: cfg.storage_class.clone(),
        checksums: cfg.checksums,
        retry: strata_storage::s3::DEFAULT_RETRY,
        attempt_timeout: strata_storage::s3::DEFAULT_ATTEMPT_TIMEOUT,
        cancel: shutdown_token().clone(),
    };
    Ok(Arc::new(strata_storage::S3Storage::open(settings).await.with_context(|| format!("repository '{name}'"))?))
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

#[cfg(test)]
mod tests {
    #[derive(Debug, thiserror::Error)]
    #[error("repository {repo}: {source}")]
    struct Wrapping {
        repo: String,
        source: std::io::Error,
    }

    #[test]
    fn an_error_line_names_each_cause_once() {
        let io = std::io::Error::new(std::io::ErrorKind::PermissionDenied, "/repo/x: permission denied");
        let e = anyhow::Error::from(Wrapping { repo: "local".into(), source: io }).context("cannot list backups");
        assert_eq!(format!("{e:#}"), "cannot list backups: repository local: /repo/x: permission denied: /repo/x: permission denied");
        assert_eq!(super::error_line(&e), "cannot list backups: repository local: /repo/x: permission denied");
        let e = anyhow::anyhow!("first line\nsecond line").context("outer");
        assert_eq!(super::error_line(&e), "outer: first line second line");
    }
}
