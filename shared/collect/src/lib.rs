//! strata-collect, the collector stage: runs on the database host, reads the data directory and WAL, and feeds
//! the pipeline. The `strata-collector` service (services/collector) is a thin binary around [`run`]; the
//! `strata` command runs the same code in single-host mode and for archive-push and wal-stream.
//!
//! As a service ([`run`]) it serves backup requests for the stanzas in its config: one queue group per
//! stanza, so among several collectors of a stanza one takes each request, and one backup per stanza at a
//! time. It reports progress and the outcome on the backup's status subject. The same code runs inside the
//! `strata` command in single-host mode.
//!
//! [`wal::push`] is `archive-push`'s work, and lives here because it is the other half of reading a cluster.
//! Both send through a [`job::Job`], which bounds the data in flight and waits for stored confirmations.

pub mod backup;
pub mod bundle;
pub mod checkpoint;
pub mod chunk_table;
pub mod cluster;
pub mod file_lists;
pub mod increment;
pub mod job;
pub mod loaded;
pub mod metrics;
pub mod stream;
pub mod wal;

use bytes::Bytes;
use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use strata_bus::Bus;
use strata_config::Config;
use strata_messages::{decode, subjects, BackupRequest, BackupStatus};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;
use tracing::{error, info, warn};

pub use backup::BackupSettings;
pub use metrics::{CollectorError, CollectorMetrics};

impl BackupSettings {
    /// `sent` counts the chunks and bytes the backup publishes ([`CollectorMetrics::sent`]).
    pub fn from_config(cfg: &Config, compress_level: i32, sealer: strata_seal::Sealer, sent: Arc<metrics::SentCounters>) -> Self {
        let p = &cfg.pipeline;
        BackupSettings {
            chunk_size: p.chunk_size,
            compress_level,
            read_workers: p.read_workers,
            in_flight_bytes: p.in_flight_bytes,
            stall: Duration::from_secs(p.stall_timeout_secs),
            archive_timeout: Duration::from_secs(p.archive_timeout_secs),
            print_waits: matches!(cfg.bus, strata_config::BusConfig::Local),
            // In one process the sealer stage runs on the same cores; handing each chunk to it only adds
            // thread switches, which cost more than the compression on these machines.
            seal_in_reader: matches!(cfg.bus, strata_config::BusConfig::Local),
            sealer,
            sent,
        }
    }
}

/// Serves backup requests for every configured stanza until `shutdown` completes.
/// `sealer` is the repository's: it names chunks with the repository's keyed hash when it is encrypted.
pub async fn run(
    cfg: Arc<Config>,
    bus: Arc<dyn Bus>,
    sealer: strata_seal::Sealer,
    metrics: CollectorMetrics,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    if cfg.stanza.is_empty() {
        anyhow::bail!("no [stanza.<name>] is configured; the collector has nothing to back up");
    }
    let running = RunningBackups::default();
    // Backups are tracked so that shutdown can cancel them and wait for them to clean up.
    let backups = TaskTracker::new();
    let cancel = CancellationToken::new();
    let mut listeners = Vec::new();
    for name in cfg.stanza.keys() {
        let mut requests = bus.subscribe(&subjects::backup_requests(name), Some(subjects::COLLECTOR_GROUP)).await?;
        let (cfg, bus, running, name, sealer, metrics) =
            (cfg.clone(), bus.clone(), running.clone(), name.clone(), sealer.clone(), metrics.clone());
        let (backups, cancel) = (backups.clone(), cancel.clone());
        listeners.push(tokio::spawn(async move {
            while let Some(payload) = requests.next().await {
                let req = match decode::<BackupRequest>(&payload) {
                    Ok(r) => strata_messages::to_owned::<BackupRequest>(r),
                    Err(e) => {
                        metrics.error(CollectorError::Request);
                        warn!(error = %e, "ignoring a malformed backup request");
                        continue;
                    }
                };
                if req.stanza != name {
                    continue;
                }
                let Some(marker) = running.mark(&name, &req.label) else {
                    metrics.error(CollectorError::Request);
                    let msg = format!("a backup of stanza '{name}' is already running");
                    backup::status(&*bus, &req.label, BackupStatus::Failed(msg)).await;
                    continue;
                };
                let (cfg, bus, sealer, metrics, cancel) = (cfg.clone(), bus.clone(), sealer.clone(), metrics.clone(), cancel.clone());
                backups.spawn(async move {
                    let _marker = marker;
                    serve_backup(&cfg, bus, sealer, &metrics, &req, &cancel).await;
                });
            }
        }));
    }
    info!(stanzas = cfg.stanza.len(), "collector running");
    shutdown.await;
    for l in listeners {
        l.abort();
    }
    for (stanza, label) in running.list() {
        warn!(%stanza, backup = %label, "cancelling the backup: the collector is shutting down");
    }
    cancel.cancel();
    backups.close();
    if tokio::time::timeout(SHUTDOWN_WAIT, backups.wait()).await.is_err() {
        // Their tasks end with the runtime; each session's end takes the server out of backup mode.
        let left = running.list();
        warn!(backups = ?left, wait_s = SHUTDOWN_WAIT.as_secs(), "backups did not finish cleaning up in time");
    }
    Ok(())
}

/// How long shutdown waits for cancelled backups to clean up (stop their checkpoints, report, leave the
/// session); well inside the 30 s a service manager usually allows before it kills.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(10);

/// The stanzas with a backup running on this collector (one at a time each), with that backup's label.
#[derive(Clone, Default)]
struct RunningBackups(Arc<Mutex<HashMap<String, String>>>);

impl RunningBackups {
    /// Marks `stanza` as backing up `label`; `None` if it already is. The marker is removed when dropped,
    /// however the backup's task ends.
    fn mark(&self, stanza: &str, label: &str) -> Option<RunningMarker> {
        let mut set = self.0.lock().expect("running backups");
        if set.contains_key(stanza) {
            return None;
        }
        set.insert(stanza.to_string(), label.to_string());
        Some(RunningMarker { running: self.clone(), stanza: stanza.to_string() })
    }

    fn list(&self) -> Vec<(String, String)> {
        self.0.lock().expect("running backups").iter().map(|(s, l)| (s.clone(), l.clone())).collect()
    }
}

struct RunningMarker {
    running: RunningBackups,
    stanza: String,
}

impl Drop for RunningMarker {
    fn drop(&mut self) {
        self.running.0.lock().expect("running backups").remove(&self.stanza);
    }
}

/// Runs one backup and reports its outcome on its status subject (and in `metrics`). `cancel` stops it
/// ([`backup::run`]); it is then reported failed. Everything the backup logs, from any of its tasks,
/// carries its span's stanza and label.
#[tracing::instrument(name = "backup", skip_all, fields(stanza = %req.stanza, backup = %req.label))]
pub async fn serve_backup(
    cfg: &Config,
    bus: Arc<dyn Bus>,
    sealer: strata_seal::Sealer,
    metrics: &CollectorMetrics,
    req: &BackupRequest,
    cancel: &CancellationToken,
) {
    let stanza = cfg.stanza.get(&req.stanza).expect("listener only exists for configured stanzas");
    let settings = BackupSettings::from_config(cfg, i32::from(req.compress_level), sealer, metrics.sent());
    info!("backup requested");
    let started = Instant::now();
    metrics.backup_started(&req.stanza);
    let outcome = backup::run(bus.clone(), &stanza.pg_data, &stanza.pg_conn, req, &settings, cancel).await;
    metrics.backup_ended(&req.stanza, req.backup_type, started.elapsed(), outcome.as_ref().ok());
    let status = match outcome {
        Ok(summary) => BackupStatus::Done(summary),
        Err(e) => {
            error!(error = format!("{e:#}"), "backup failed");
            BackupStatus::Failed(format!("{e:#}"))
        }
    };
    backup::status(&*bus, &req.label, status).await;
    let _ = bus.flush().await;
}

/// Sends a backup request and follows it to its end, reporting progress to `on_progress`. Subscribes to the
/// status before asking, so no status is missed. With `in_process`, the backup runs in this process (the
/// single-host mode) instead of being sent to a collector service.
pub async fn request_backup(
    bus: Arc<dyn Bus>,
    req: &BackupRequest,
    in_process: Option<(Arc<Config>, strata_seal::Sealer)>,
    answer_timeout: Duration,
    stall: Duration,
    mut on_progress: impl FnMut(u64, u64),
) -> anyhow::Result<strata_messages::BackupSummary> {
    let mut statuses = bus.subscribe(&subjects::backup_status(&req.label), None).await?;
    bus.flush().await?;
    match in_process {
        Some((cfg, sealer)) => {
            let (bus, req) = (bus.clone(), req.clone());
            // Nobody scrapes a single-host backup; its stages count all the same.
            let cancel = CancellationToken::new();
            tokio::spawn(async move { serve_backup(&cfg, bus, sealer, &CollectorMetrics::unexported(), &req, &cancel).await });
        }
        None => {
            bus.publish_event(&subjects::backup_requests(&req.stanza), Bytes::from(strata_messages::encode(req))).await?;
            bus.flush().await?;
        }
    }
    let mut started = false;
    loop {
        let wait = if started { stall } else { answer_timeout };
        let payload = match tokio::time::timeout(wait, statuses.next()).await {
            Ok(Some(p)) => p,
            Ok(None) => anyhow::bail!("the bus closed while waiting for the backup"),
            Err(_) if !started => anyhow::bail!(
                "no collector answered for stanza '{}' within {} s; is strata-collector running with this stanza?",
                req.stanza,
                answer_timeout.as_secs()
            ),
            Err(_) => anyhow::bail!("the collector sent no progress for {} s; the backup is presumed lost", stall.as_secs()),
        };
        let status = decode::<BackupStatus>(&payload)?;
        match strata_messages::to_owned::<BackupStatus>(status) {
            BackupStatus::Started { total_bytes, .. } => {
                started = true;
                on_progress(0, total_bytes);
            }
            BackupStatus::Progress { done_bytes, total_bytes } => {
                started = true;
                on_progress(done_bytes, total_bytes);
            }
            BackupStatus::Done(summary) => return Ok(summary),
            BackupStatus::Failed(reason) => anyhow::bail!("{reason}"),
        }
    }
}
