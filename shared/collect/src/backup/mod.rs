//! One backup, as the collector runs it on the database host.
//!
//! 1. Connect to the cluster on one dedicated session, check it is the stanza's cluster (system identifier,
//!    major version), that WAL archiving is on and that `pg_data` is its data directory.
//! 2. `pg_backup_start(label, fast => true)` on that session. A non-exclusive backup lives and dies with its
//!    session: if the collector fails or loses the connection, PostgreSQL ends the backup itself.
//! 3. Walk the data directory and tablespaces, applying PostgreSQL's base-backup rules
//!    ([`strata_pg::datadir`]), and send every file through the pipeline in page-aligned chunks, with a bounded
//!    pool of readers. Relation pages are checked against their checksums while read (see [`read::check_pages`]).
//!    Small pieces share chunks ([`crate::bundle`]); each finished file's entry goes into the manifest's file
//!    lists at once ([`crate::file_lists`]), and a checkpoint is written every few seconds
//!    ([`crate::checkpoint`]).
//! 4. `pg_backup_stop` returns the backup_label and tablespace_map contents; then wait until the WAL the
//!    backup needs is archived ([`wait_archived`]).
//! 5. Wait until every chunk is confirmed stored, send the manifest head through the pipeline the same way,
//!    then ask an uploader to commit the backup record. The backup exists from that moment on, not before.
//!
//! Walking ([`walk`]) and reading ([`read`]) need no server and are tested on temporary directories; this
//! module is the job around them, which needs one.
//!
//! # Cancellation and cleanup
//!
//! A backup stops with [`Cancelled`] at its next step once its token is cancelled (the collector shutting
//! down): before each file and chunk read, and instead of any wait (for the reference's manifest, the WAL
//! archiver, the confirmations). It is never cancelled once the commit is asked for, so a cancelled backup
//! has committed nothing; what it stored, named by its last checkpoint, is what the next attempt resumes
//! from, as after any failure.
//! Whatever way the backup ends, [`Running`] stops its heartbeat and checkpoints, once, and leaving the
//! session takes the server out of backup mode.

mod read;
mod walk;

pub(crate) use read::MESSAGE_ROOM;

use crate::bundle::Bundler;
use crate::checkpoint::{Checkpointer, Sources};
use crate::file_lists::FileListWriter;
use crate::job::{CommitOutcome, Job};
use crate::loaded::LoadedManifest;
use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use read::ReadContext;
use std::collections::HashSet;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use strata_bus::Bus;
use strata_messages::{
    encode, subjects, BackupRecord, BackupRequest, BackupStatus, BackupSummary, ChunkRef, FileKind, ManifestHead,
    FORMAT_VERSION,
};
use strata_pg::datadir;
use strata_pg::{Lsn, WalSegment};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn, Instrument};

/// After this long waiting for the last WAL segment to be archived, and every [`ARCHIVE_REPORT_EVERY`]
/// after, the wait is reported (with the archiver's last failure).
const ARCHIVE_REPORT_AFTER: Duration = Duration::from_secs(5);
const ARCHIVE_REPORT_EVERY: Duration = Duration::from_secs(10);
/// Largest file list (before one more entry): small enough for any bus.
const FILE_LIST_BYTES: usize = 1024 * 1024;

pub struct BackupSettings {
    /// Seal whole chunks in the reader threads and send them straight to the uploaders (single-host mode),
    /// instead of through the sealers.
    pub seal_in_reader: bool,
    pub chunk_size: usize,
    pub compress_level: i32,
    pub read_workers: usize,
    pub in_flight_bytes: usize,
    pub stall: Duration,
    /// How long to wait for the backup's last WAL segment to be archived (`pipeline.archive_timeout_secs`).
    pub archive_timeout: Duration,
    /// Print long waits on stderr too: in single-host mode the collector runs inside the `strata`
    /// command, whose user sees no log.
    pub print_waits: bool,
    /// The repository's sealer: names chunks and, with `seal_in_reader`, seals them.
    pub sealer: strata_seal::Sealer,
    /// Where the backup's job counts the chunks and bytes it publishes (the collector's metrics).
    pub sent: Arc<crate::metrics::SentCounters>,
}

/// Facts about the cluster read at the start.
struct Cluster {
    version_num: u32,
    system_id: u64,
    data_checksums: bool,
    wal_segment_size: u64,
}


/// Runs a backup and returns its summary once it is committed.
///
/// `cancel` stops it at its next step (the next file, chunk or wait) with [`Cancelled`]; a cancelled backup
/// commits nothing. Leaving the session ends the server's backup mode, as it does on any failure.
pub async fn run(
    bus: Arc<dyn Bus>,
    pg_data: &Path,
    pg_conn: &str,
    req: &BackupRequest,
    settings: &BackupSettings,
    cancel: &CancellationToken,
) -> anyhow::Result<BackupSummary> {
    let session = crate::cluster::connect(pg_conn).await?;
    let result = backup_on(&session.client, bus, pg_data, req, settings, cancel).await;
    session.close().await;
    result
}

async fn backup_on(
    client: &tokio_postgres::Client,
    bus: Arc<dyn Bus>,
    pg_data: &Path,
    req: &BackupRequest,
    settings: &BackupSettings,
    cancel: &CancellationToken,
) -> anyhow::Result<BackupSummary> {
    let cluster = check_cluster(client, pg_data, req).await?;
    let label = req.label.clone();
    // Progress doubles as the heartbeat the requester watches: it runs for the whole backup, including
    // the wait in pg_backup_stop and for the last confirmations, so a live backup never looks lost.
    let done_bytes = Arc::new(AtomicU64::new(0));
    let total = Arc::new(AtomicU64::new(0));
    let heartbeat_task = {
        let (bus, label, done, total) = (bus.clone(), label.clone(), done_bytes.clone(), total.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let s = BackupStatus::Progress { done_bytes: done.load(Ordering::Relaxed), total_bytes: total.load(Ordering::Relaxed) };
                status(&*bus, &label, s).await;
            }
        }.in_current_span())
    };
    let mut running = Running { heartbeat: heartbeat_task, checkpointer: None };
    let mut job =
        Job::start(bus.clone(), label.clone(), req.stanza.clone(), settings.compress_level, settings.sealer.clone(), settings.in_flight_bytes, settings.stall)
            .await?;
    job.count_into(settings.sent.clone());
    let job = Arc::new(job);
    let steps = Steps { client, job: &job, pg_data, req, settings, cluster: &cluster, cancel };
    let result = steps.run(&mut running, &done_bytes, &total).await;
    running.end().await;
    result
}

/// What a backup leaves running while it works: the heartbeat and the checkpoints. [`Running::end`] stops
/// them on every return, waiting for a checkpoint being written (a chunk half sent would never be
/// confirmed); if the backup's future is dropped instead (its task aborted), dropping this stops them
/// without waiting, and dropping the session ends the server's backup mode.
struct Running {
    heartbeat: tokio::task::JoinHandle<()>,
    checkpointer: Option<Checkpointer>,
}

impl Running {
    /// Stops the checkpoints, once; the commit supersedes them.
    async fn stop_checkpoints(&mut self) {
        if let Some(c) = self.checkpointer.take() {
            c.stop().await;
        }
    }

    async fn end(mut self) {
        self.stop_checkpoints().await;
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.heartbeat.abort();
        // A dropped checkpointer's task ends at its next wait.
        drop(self.checkpointer.take());
    }
}

/// Why a backup ended without a result: the collector is shutting down.
#[derive(Debug, thiserror::Error)]
#[error("the backup was cancelled: the collector is shutting down")]
pub struct Cancelled;

/// Runs `step` unless `cancel` fires first; the step is dropped then.
async fn unless_cancelled<T, E: Into<anyhow::Error>>(
    cancel: &CancellationToken,
    step: impl std::future::Future<Output = Result<T, E>>,
) -> anyhow::Result<T> {
    tokio::select! {
        biased;
        _ = cancel.cancelled() => Err(Cancelled.into()),
        r = step => r.map_err(Into::into),
    }
}

fn check_cancelled(cancel: &CancellationToken) -> Result<(), Cancelled> {
    match cancel.is_cancelled() {
        true => Err(Cancelled),
        false => Ok(()),
    }
}

/// What the steps of one backup work with.
struct Steps<'a> {
    client: &'a tokio_postgres::Client,
    job: &'a Arc<Job>,
    pg_data: &'a Path,
    req: &'a BackupRequest,
    settings: &'a BackupSettings,
    cluster: &'a Cluster,
    cancel: &'a CancellationToken,
}

/// An interrupted attempt's checkpoint, loaded.
struct Resume {
    manifest: LoadedManifest,
    attempt_start: i64,
}


impl Steps<'_> {
    async fn run(&self, running: &mut Running, done_bytes: &Arc<AtomicU64>, total: &AtomicU64) -> anyhow::Result<BackupSummary> {
        let Steps { client, job, pg_data, req, settings, cluster, cancel } = *self;
        let label = req.label.clone();
        let resume = match &req.resume {
            Some(c) => {
                let what = format!("checkpoint of interrupted backup {}", c.label);
                let manifest = unless_cancelled(cancel, LoadedManifest::fetch(job.bus(), job.sealer(), &label, &what, &c.head_chunks)).await?;
                let stored: Vec<ChunkRef> = manifest.head.chunks.iter().filter(|c| !c.is_unknown()).copied().collect();
                info!(
                    %label,
                    interrupted = %c.label,
                    chunks = stored.len(),
                    plain_bytes = stored.iter().map(|r| r.raw_len as u64).sum::<u64>(),
                    "resuming: what the interrupted backup stored is not read or sent again"
                );
                job.seed(stored);
                Some(Resume { manifest, attempt_start: c.attempt_start })
            }
            None => None,
        };
        check_cancelled(cancel)?;
        let start_time = now();
        let row = client
            .query_one("SELECT pg_backup_start($1, true)::text", &[&format!("strata backup {label}")])
            .await
            .context("pg_backup_start failed")?;
        let start_lsn: Lsn = row.get::<_, String>(0).parse().context("pg_backup_start returned a malformed LSN")?;
        // The server is in backup mode; nothing of this backup is stored yet.
        strata_crashpoint::hit("backup.after-start");
        let timeline: i32 =
            client.query_one("SELECT timeline_id FROM pg_control_checkpoint()", &[]).await?.get(0);
        let timeline = timeline as u32;
        info!(%label, start_lsn = %start_lsn, "backup started");

        let walk_root = pg_data.to_path_buf();
        let (mut found, roots) = tokio::task::spawn_blocking(move || walk::walk(&walk_root)).await.expect("walk task")?;
        // pg_basebackup and pgBackRest send the control file last; do the same.
        if let Some(pos) = found.iter().position(|f| &*f.rel == datadir::CONTROL_FILE) {
            let control = found.remove(pos);
            found.push(control);
        }
        let total_bytes: u64 = found.iter().filter(|f| f.kind == FileKind::File).map(|f| f.meta.len).sum();
        total.store(total_bytes, Ordering::Relaxed);
        status(job.bus(), &label, BackupStatus::Started { start_lsn: start_lsn.0, total_bytes }).await;

        let reference = match &req.reference {
            Some(record) => {
                let what = format!("manifest of reference backup {}", record.summary.label);
                Some(unless_cancelled(cancel, LoadedManifest::fetch(job.bus(), job.sealer(), &label, &what, &record.manifest_chunks)).await?)
            }
            None => None,
        };
        let seg = cluster.wal_segment_size;
        let mut summary = BackupSummary {
            label: label.clone(),
            backup_type: req.backup_type,
            start_time,
            stop_time: 0,
            start_lsn: start_lsn.0,
            stop_lsn: 0,
            timeline,
            reference: reference.as_ref().map(|r| r.head.summary.label.clone()).unwrap_or_default(),
            wal_start: WalSegment::containing(timeline, start_lsn, seg).name(seg),
            wal_stop: String::new(),
            pg_version_num: cluster.version_num,
            system_id: cluster.system_id,
            wal_segment_size: seg,
            database_bytes: 0,
            read_bytes: 0,
            stored_bytes: 0,
            sent_bytes: 0,
            file_count: 0,
            checksum_failures: 0,
        };
        let mut head = ManifestHead {
            version: FORMAT_VERSION,
            summary: summary.clone(),
            data_checksums: cluster.data_checksums,
            references: match &reference {
                Some(r) => r.head.references.iter().cloned().chain([r.head.summary.label.clone()]).collect(),
                None => Vec::new(),
            },
            backup_label: String::new(),
            tablespace_map: String::new(),
            tablespaces: Vec::new(),
            checksum_failures: Vec::new(),
            chunks: Vec::new(),
            file_lists: Vec::new(),
        };
        let ctx = Arc::new(ReadContext {
            roots,
            verify: cluster.data_checksums,
            start_lsn,
            chunk_size: settings.chunk_size,
            seal_in_reader: settings.seal_in_reader,
            checksum_all: req.checksum_all,
            reference,
            resume,
            table: Arc::default(),
            bundler: Arc::new(Bundler::new(settings.chunk_size)),
            lists: Arc::new(FileListWriter::new(settings.chunk_size.min(FILE_LIST_BYTES))),
            done: done_bytes.clone(),
            read: AtomicU64::new(0),
            database_bytes: AtomicU64::new(0),
            file_count: AtomicU64::new(0),
            failures: Mutex::new(Vec::new()),
            tablespaces: Mutex::new(Vec::new()),
            cancel: cancel.clone(),
        });
        running.checkpointer = Some(Checkpointer::start(Sources {
            job: job.clone(),
            table: ctx.table.clone(),
            lists: ctx.lists.clone(),
            bundler: ctx.bundler.clone(),
            template: head.clone(),
            attempt_start: start_time,
            chunk_size: settings.chunk_size,
        }));
        read::send_files(job, found, &ctx, settings.read_workers).await?;
        ctx.bundler.flush(job, &ctx.table).await?;
        ctx.lists.flush(job).await?;
        check_cancelled(cancel)?;

        // pg_backup_stop(true) would wait for the last segment itself, but it checks once a second, which
        // costs most of a second on every backup; the same check is made here every few milliseconds.
        let row = client
            .query_one("SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)", &[])
            .await
            .context("pg_backup_stop failed")?;
        let stop_lsn: Lsn = row.get::<_, String>(0).parse().context("pg_backup_stop returned a malformed LSN")?;
        // Every file is read and the server has left backup mode; the commit has not been asked for.
        strata_crashpoint::hit("backup.after-stop");
        let stop_for_wal = Lsn(stop_lsn.0.saturating_sub(1).max(start_lsn.0));
        let last_segment = WalSegment::containing(timeline, stop_for_wal, seg).name(seg);
        unless_cancelled(cancel, wait_archived(client, pg_data, &last_segment, job, settings)).await?;
        let backup_label: String = row.get(1);
        let tablespace_map: Option<String> = row.get(2);
        let stop_time = now();
        info!(%label, stop_lsn = %stop_lsn, "backup stopped; waiting for the last chunks");

        let stored = unless_cancelled(cancel, job.wait_stored()).await;
        // No checkpoint after this point: the commit supersedes them, and the uploader removes them.
        running.stop_checkpoints().await;
        stored?;
        let (chunks, missing) = ctx.table.resolve(|id| job.location(id));
        if let Some(n) = missing.first() {
            bail!("chunk {n} of the backup has no stored location although every chunk was confirmed");
        }
        let file_lists = ctx
            .lists
            .sent()
            .iter()
            .map(|l| job.location(&l.id).ok_or_else(|| anyhow!("a file list of the backup has no stored location")))
            .collect::<anyhow::Result<Vec<ChunkRef>>>()?;
        let checksum_failures = std::mem::take(&mut *ctx.failures.lock().expect("failures"));
        summary.stop_time = stop_time;
        summary.stop_lsn = stop_lsn.0;
        summary.wal_stop = last_segment;
        summary.database_bytes = ctx.database_bytes.load(Ordering::Relaxed);
        summary.read_bytes = ctx.read.load(Ordering::Relaxed);
        summary.file_count = ctx.file_count.load(Ordering::Relaxed);
        summary.checksum_failures = checksum_failures.len() as u64;
        head.summary = summary.clone();
        head.backup_label = backup_label;
        head.tablespace_map = tablespace_map.unwrap_or_default();
        head.tablespaces = std::mem::take(&mut *ctx.tablespaces.lock().expect("tablespaces"));
        head.checksum_failures = checksum_failures;
        head.chunks = chunks;
        head.file_lists = file_lists;
        let bytes = encode(&head);
        // Every pack the backup needs: its file lists', its files' (its own and the reference's), its head's.
        let mut packs: HashSet<strata_messages::PackId> = head.packs().collect();
        drop(head);
        let mut head_ids = Vec::new();
        for piece in bytes.chunks(settings.chunk_size) {
            head_ids.push(job.send(piece.to_vec(), true).await?);
        }
        unless_cancelled(cancel, job.wait_stored()).await?;
        let manifest_chunks: Vec<ChunkRef> = head_ids.iter().map(|id| job.location(id).expect("confirmed above")).collect();
        packs.extend(manifest_chunks.iter().map(|c| c.pack));
        summary.stored_bytes = job.written_bytes();
        summary.sent_bytes = job.sent_bytes();
        let record = BackupRecord { version: FORMAT_VERSION, summary: summary.clone(), manifest_len: bytes.len() as u64, manifest_chunks };
        // The last point at which a shutdown stops the backup: once the commit is asked for, it is awaited.
        check_cancelled(cancel)?;
        match job.commit_backup(packs.into_iter().collect(), record).await? {
            CommitOutcome::Committed => {}
            CommitOutcome::AlreadyArchived => bail!("the uploader answered a backup commit as if it were WAL"),
        }
        info!(%label, "backup committed");
        Ok(summary)
    }
}

async fn check_cluster(client: &tokio_postgres::Client, pg_data: &Path, req: &BackupRequest) -> anyhow::Result<Cluster> {
    let facts = crate::cluster::read_facts(client).await?;
    if facts.major() != req.expect_pg_major {
        bail!(
            "stanza '{}' is for PostgreSQL {} but the cluster runs PostgreSQL {}; a backup would mix versions",
            req.stanza,
            req.expect_pg_major,
            facts.major()
        );
    }
    if facts.system_id != req.expect_system_id {
        bail!(
            "stanza '{}' is for database system {} but the cluster's system identifier is {}",
            req.stanza,
            req.expect_system_id,
            facts.system_id
        );
    }
    if facts.archive_mode == "off" {
        bail!("archive_mode is off: the WAL that makes a backup consistent would not be archived; set archive_mode = on and archive_command = 'strata --stanza {} archive-push %p'", req.stanza);
    }
    if facts.in_recovery {
        bail!("the cluster is in recovery (a standby); back up the primary");
    }
    crate::cluster::check_data_directory(pg_data, &facts)?;
    Ok(Cluster {
        version_num: facts.version_num,
        system_id: facts.system_id,
        data_checksums: facts.data_checksums,
        wal_segment_size: facts.wal_segment_size,
    })
}

/// Waits until PostgreSQL's archiver has archived `segment`, the last one the backup needs: the test
/// `pg_backup_stop(wait_for_archive => true)` makes (XLogArchiveIsBusy), on the archive status files in
/// `pg_wal/archive_status`, polled every few milliseconds instead of every second.
/// The backup's own chunks travel the same stages as the WAL: if they stall, so does archiving, and the
/// stall is the error reported. A wait longer than a few seconds is reported as it goes, and one longer
/// than `archive_timeout` fails the backup, each time with what `pg_stat_archiver` says went wrong.
async fn wait_archived(
    client: &tokio_postgres::Client,
    pg_data: &Path,
    segment: &str,
    job: &Job,
    settings: &BackupSettings,
) -> anyhow::Result<()> {
    let wal = pg_data.join("pg_wal");
    let status = wal.join("archive_status");
    let started = std::time::Instant::now();
    let mut report_at = ARCHIVE_REPORT_AFTER;
    loop {
        let done = status.join(format!("{segment}.done")).exists();
        // Without a .done, the segment is still to be archived while its .ready or the segment itself is
        // there (a segment already archived and recycled has neither).
        if done || !(status.join(format!("{segment}.ready")).exists() || wal.join(segment).exists()) {
            return Ok(());
        }
        job.check_pending()?;
        let waited = started.elapsed();
        if waited > settings.archive_timeout {
            bail!(
                "WAL segment {segment}, which this backup needs, was not archived within {} s (pipeline.archive_timeout_secs); {}; check archive_command",
                settings.archive_timeout.as_secs(),
                archiver_failure(client).await
            );
        }
        if waited >= report_at {
            let line = format!(
                "waiting for WAL segment {segment} to be archived: {} s of {} s; {}",
                waited.as_secs(),
                settings.archive_timeout.as_secs(),
                archiver_failure(client).await
            );
            warn!("{line}");
            if settings.print_waits {
                eprintln!("{line}");
            }
            report_at += ARCHIVE_REPORT_EVERY;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// What `pg_stat_archiver` says about failures, as a phrase: "pg_stat_archiver: 3 failed attempts, the
/// last for 000000010000000000000005 at 2026-12-07 08:10:11+00".
async fn archiver_failure(client: &tokio_postgres::Client) -> String {
    let query = "SELECT failed_count, last_failed_wal, last_failed_time::text FROM pg_stat_archiver";
    match client.query_one(query, &[]).await {
        Ok(row) => match (row.get::<_, i64>(0), row.get::<_, Option<String>>(1), row.get::<_, Option<String>>(2)) {
            (n, Some(wal), Some(time)) if n > 0 => format!("pg_stat_archiver: {n} failed attempts, the last for {wal} at {time}"),
            _ => "pg_stat_archiver shows no failed attempt (is archive_command slow, or the archiver stopped?)".to_string(),
        },
        Err(e) => format!("pg_stat_archiver cannot be read ({e})"),
    }
}

pub(crate) async fn status(bus: &dyn Bus, label: &str, s: BackupStatus) {
    if let Err(e) = bus.publish_event(&subjects::backup_status(label), Bytes::from(encode(&s))).await {
        warn!(error = %e, "cannot publish backup status");
    }
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}
