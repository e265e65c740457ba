//! One backup, as the collector runs it on the database host.
//!
//! 1. Connect to the cluster on one dedicated session, check it is the stanza's cluster (system identifier,
//!    major version), that WAL archiving is on and that `pg_data` is its data directory.
//! 2. `pg_backup_start(label, fast => true)` on that session. A non-exclusive backup lives and dies with its
//!    session: if the collector fails or loses the connection, PostgreSQL ends the backup itself.
//! 3. Walk the data directory and tablespaces, applying PostgreSQL's base-backup rules
//!    ([`strata_pg::datadir`]), and send every file through the pipeline in page-aligned chunks, with a bounded
//!    pool of readers. Relation pages are checked against their checksums while read (see [`check_pages`]).
//!    Small pieces share chunks ([`crate::bundle`]); each finished file's entry goes into the manifest's file
//!    lists at once ([`crate::file_lists`]), and a checkpoint is written every few seconds
//!    ([`crate::checkpoint`]).
//! 4. `pg_backup_stop` returns the backup_label and tablespace_map contents; then wait until the WAL the
//!    backup needs is archived ([`wait_archived`]).
//! 5. Wait until every chunk is confirmed stored, send the manifest head through the pipeline the same way,
//!    then ask an uploader to commit the backup record. The backup exists from that moment on, not before.

use crate::bundle::Bundler;
use crate::checkpoint::{Checkpointer, Sources};
use crate::chunk_table::ChunkTable;
use crate::file_lists::FileListWriter;
use crate::increment::{self, RefFile, Segment};
use crate::job::{CommitOutcome, Job};
use crate::loaded::LoadedManifest;
use anyhow::{anyhow, bail, Context};
use bytes::Bytes;
use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::{FileExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use strata_bus::Bus;
use strata_messages::manifest::{ChecksumFailure, Tablespace};
use strata_messages::{
    encode, subjects, BackupRecord, BackupRequest, BackupStatus, BackupSummary, ChunkRef, FileEntry, FileKind,
    ManifestHead, Piece, FORMAT_VERSION,
};
use strata_pg::datadir::{self, Entry, FileClass};
use strata_pg::page::{self, PageCheck};
use strata_pg::{Lsn, WalSegment, PAGE_SIZE};
use tracing::{info, warn};

/// After this long waiting for the last WAL segment to be archived, and every [`ARCHIVE_REPORT_EVERY`]
/// after, the wait is reported (with the archiver's last failure).
const ARCHIVE_REPORT_AFTER: Duration = Duration::from_secs(5);
const ARCHIVE_REPORT_EVERY: Duration = Duration::from_secs(10);
/// Pieces smaller than a chunk divided by this share chunks with others.
const BUNDLE_DIVISOR: usize = 4;
/// Chunks of one file read at once.
const READ_AHEAD: usize = 4;
/// Spare room left after a chunk's bytes for the message header ([`strata_messages::encode_plain_chunk`]).
pub(crate) const MESSAGE_ROOM: usize = strata_messages::PLAIN_CHUNK_OVERHEAD + 256;
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

/// The parts of a file's metadata a manifest records (a full `std::fs::Metadata` is five times larger, which
/// adds up over hundreds of thousands of files).
#[derive(Clone, Copy)]
struct Meta {
    mode: u32,
    uid: u32,
    gid: u32,
    mtime: i64,
    len: u64,
}

impl Meta {
    fn of(m: &std::fs::Metadata) -> Meta {
        Meta { mode: m.mode() & 0o7777, uid: m.uid(), gid: m.gid(), mtime: m.mtime(), len: m.len() }
    }
}

/// One entry found by the walk. Kept small: a cluster may have hundreds of thousands.
struct Found {
    rel: Box<str>,
    /// Which walk root ([`Roots`]) the entry is under.
    root: u32,
    kind: FileKind,
    class: FileClass,
    meta: Meta,
    link_target: Option<Box<str>>,
}

/// Where the walk's entries are on disk: the data directory, then each tablespace, as (path prefix in the
/// manifest, directory).
#[derive(Default)]
struct Roots(Vec<(String, PathBuf)>);

impl Roots {
    fn abs(&self, f: &Found) -> PathBuf {
        let (prefix, dir) = &self.0[f.root as usize];
        match prefix.is_empty() {
            true => dir.join(&*f.rel),
            false => dir.join(f.rel[prefix.len()..].trim_start_matches('/')),
        }
    }
}

/// Runs a backup and returns its summary once it is committed.
pub async fn run(
    bus: Arc<dyn Bus>,
    pg_data: &Path,
    pg_conn: &str,
    req: &BackupRequest,
    settings: &BackupSettings,
) -> anyhow::Result<BackupSummary> {
    let session = crate::cluster::connect(pg_conn).await?;
    let result = backup_on(&session.client, bus, pg_data, req, settings).await;
    session.close().await;
    result
}

async fn backup_on(
    client: &tokio_postgres::Client,
    bus: Arc<dyn Bus>,
    pg_data: &Path,
    req: &BackupRequest,
    settings: &BackupSettings,
) -> anyhow::Result<BackupSummary> {
    let cluster = check_cluster(client, pg_data, req).await?;
    let label = req.label.clone();
    // Progress doubles as the heartbeat the requester watches: it runs for the whole backup, including
    // the wait in pg_backup_stop and for the last confirmations, so a live backup never looks lost.
    let done_bytes = Arc::new(AtomicU64::new(0));
    let total = Arc::new(AtomicU64::new(0));
    let heartbeat = {
        let (bus, label, done, total) = (bus.clone(), label.clone(), done_bytes.clone(), total.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(Duration::from_secs(1)).await;
                let s = BackupStatus::Progress { done_bytes: done.load(Ordering::Relaxed), total_bytes: total.load(Ordering::Relaxed) };
                status(&*bus, &label, s).await;
            }
        })
    };
    let mut job =
        Job::start(bus.clone(), label.clone(), req.stanza.clone(), settings.compress_level, settings.sealer.clone(), settings.in_flight_bytes, settings.stall)
            .await?;
    job.count_into(settings.sent.clone());
    let job = Arc::new(job);
    let result = backup_steps(client, &job, pg_data, req, settings, &cluster, &done_bytes, &total).await;
    heartbeat.abort();
    result
}

/// An interrupted attempt's checkpoint, loaded.
struct Resume {
    manifest: LoadedManifest,
    attempt_start: i64,
}

/// What every reader shares.
struct ReadContext {
    roots: Roots,
    verify: bool,
    start_lsn: Lsn,
    chunk_size: usize,
    seal_in_reader: bool,
    checksum_all: bool,
    reference: Option<LoadedManifest>,
    resume: Option<Resume>,
    table: Arc<ChunkTable>,
    bundler: Arc<Bundler>,
    lists: Arc<FileListWriter>,
    done: Arc<AtomicU64>,
    read: AtomicU64,
    database_bytes: AtomicU64,
    file_count: AtomicU64,
    failures: Mutex<Vec<ChecksumFailure>>,
    tablespaces: Mutex<Vec<Tablespace>>,
}

#[allow(clippy::too_many_arguments)]
async fn backup_steps(
    client: &tokio_postgres::Client,
    job: &Arc<Job>,
    pg_data: &Path,
    req: &BackupRequest,
    settings: &BackupSettings,
    cluster: &Cluster,
    done_bytes: &Arc<AtomicU64>,
    total: &AtomicU64,
) -> anyhow::Result<BackupSummary> {
    let label = req.label.clone();
    let resume = match &req.resume {
        Some(c) => {
            let what = format!("checkpoint of interrupted backup {}", c.label);
            let manifest = LoadedManifest::fetch(job.bus(), job.sealer(), &label, &what, &c.head_chunks).await?;
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
    let (mut found, roots) = tokio::task::spawn_blocking(move || walk(&walk_root)).await.expect("walk task")?;
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
            Some(LoadedManifest::fetch(job.bus(), job.sealer(), &label, &what, &record.manifest_chunks).await?)
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
    });
    let checkpointer = Checkpointer::start(Sources {
        job: job.clone(),
        table: ctx.table.clone(),
        lists: ctx.lists.clone(),
        bundler: ctx.bundler.clone(),
        template: head.clone(),
        attempt_start: start_time,
        chunk_size: settings.chunk_size,
    });
    let sent = send_files(job, found, &ctx, settings.read_workers).await;
    let sent = match sent {
        Ok(()) => ctx.bundler.flush(job, &ctx.table).await.map_err(anyhow::Error::from),
        Err(e) => Err(e),
    };
    let sent = match sent {
        Ok(()) => ctx.lists.flush(job).await.map_err(anyhow::Error::from),
        Err(e) => Err(e),
    };
    if let Err(e) = sent {
        checkpointer.stop().await;
        return Err(e);
    }

    // pg_backup_stop(true) would wait for the last segment itself, but it checks once a second, which
    // costs most of a second on every backup; the same check is made here every few milliseconds.
    let row = match client.query_one("SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(false)", &[]).await {
        Ok(row) => row,
        Err(e) => {
            checkpointer.stop().await;
            return Err(anyhow::Error::from(e).context("pg_backup_stop failed"));
        }
    };
    let stop_lsn: Lsn = row.get::<_, String>(0).parse().context("pg_backup_stop returned a malformed LSN")?;
    // Every file is read and the server has left backup mode; the commit has not been asked for.
    strata_crashpoint::hit("backup.after-stop");
    let stop_for_wal = Lsn(stop_lsn.0.saturating_sub(1).max(start_lsn.0));
    let last_segment = WalSegment::containing(timeline, stop_for_wal, seg).name(seg);
    if let Err(e) = wait_archived(client, pg_data, &last_segment, job, settings).await {
        checkpointer.stop().await;
        return Err(e);
    }
    let backup_label: String = row.get(1);
    let tablespace_map: Option<String> = row.get(2);
    let stop_time = now();
    info!(%label, stop_lsn = %stop_lsn, "backup stopped; waiting for the last chunks");

    let stored = job.wait_stored().await;
    // No checkpoint after this point: the commit supersedes them, and the uploader removes them.
    checkpointer.stop().await;
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
    job.wait_stored().await?;
    let manifest_chunks: Vec<ChunkRef> = head_ids.iter().map(|id| job.location(id).expect("confirmed above")).collect();
    packs.extend(manifest_chunks.iter().map(|c| c.pack));
    summary.stored_bytes = job.written_bytes();
    summary.sent_bytes = job.sent_bytes();
    let record = BackupRecord { version: FORMAT_VERSION, summary: summary.clone(), manifest_len: bytes.len() as u64, manifest_chunks };
    match job.commit_backup(packs.into_iter().collect(), record).await? {
        CommitOutcome::Committed => {}
        CommitOutcome::AlreadyArchived => bail!("the uploader answered a backup commit as if it were WAL"),
    }
    info!(%label, "backup committed");
    Ok(summary)
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

/// Lists what the backup copies, directories before their contents. Follows the tablespace links in
/// `pg_tblspc`, recording the link itself and the tablespace's contents under `pg_tblspc/<oid>/`.
fn walk(root: &Path) -> anyhow::Result<(Vec<Found>, Roots)> {
    let mut out = Vec::new();
    let mut roots = Roots(vec![(String::new(), root.to_path_buf())]);
    // (directory on disk, its path in the manifest, its root)
    let mut stack: Vec<(PathBuf, String, u32)> = vec![(root.to_path_buf(), String::new(), 0)];
    while let Some((dir, rel_dir, root_no)) = stack.pop() {
        let mut names: Vec<(String, PathBuf)> = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            // A directory dropped during the backup (DROP DATABASE): WAL replay recreates the truth.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !rel_dir.is_empty() => continue,
            Err(e) => return Err(anyhow!("cannot read {}: {e}", dir.display())),
        };
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
            names.push((entry.file_name().to_string_lossy().into_owned(), entry.path()));
        }
        names.sort();
        let init_forks = if datadir::is_database_dir(Path::new(&rel_dir)) {
            datadir::init_forks(names.iter().map(|(n, _)| n.as_str()))
        } else {
            HashSet::new()
        };
        let mut subdirs = Vec::new();
        for (name, abs) in names {
            let rel = if rel_dir.is_empty() { name.clone() } else { format!("{rel_dir}/{name}") };
            let meta = match std::fs::symlink_metadata(&abs) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(anyhow!("cannot stat {}: {e}", abs.display())),
            };
            let is_tablespace_link = meta.file_type().is_symlink() && rel_dir == "pg_tblspc";
            let is_dir = meta.is_dir() || is_tablespace_link;
            let (file_type, meta) = (meta.file_type(), Meta::of(&meta));
            let found = |rel: &str, kind, class, link_target: Option<String>| Found {
                rel: rel.into(),
                root: root_no,
                kind,
                class,
                meta,
                link_target: link_target.map(String::into_boxed_str),
            };
            let class = match datadir::classify(Path::new(&rel), is_dir) {
                Entry::Skip => continue,
                Entry::SkipContents => {
                    out.push(found(&rel, FileKind::Directory, FileClass::Other, None));
                    continue;
                }
                Entry::Include(class) => class,
            };
            if !init_forks.is_empty() && datadir::is_unlogged_non_init(&name, &init_forks) {
                continue;
            }
            if is_tablespace_link {
                let target = std::fs::read_link(&abs).with_context(|| format!("cannot read link {}", abs.display()))?;
                out.push(found(&rel, FileKind::Symlink, class, Some(target.to_string_lossy().into_owned())));
                roots.0.push((rel.clone(), target.clone()));
                subdirs.push((target, rel, (roots.0.len() - 1) as u32));
            } else if file_type.is_dir() {
                out.push(found(&rel, FileKind::Directory, class, None));
                subdirs.push((abs, rel, root_no));
            } else if file_type.is_file() {
                out.push(found(&rel, FileKind::File, class, None));
            } else if file_type.is_symlink() {
                // Other links (pg_wal pointing elsewhere is handled by SkipContents): keep the link itself.
                let target = std::fs::read_link(&abs).map(|t| t.to_string_lossy().into_owned()).unwrap_or_default();
                out.push(found(&rel, FileKind::Symlink, class, Some(target)));
            }
        }
        // Depth-first, in name order.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok((out, roots))
}

/// Reads every file with a bounded pool of readers, in the walk's order, sending what must be stored and
/// writing each entry into the file lists once its file is read. Files that vanished during the backup
/// are left out.
async fn send_files(job: &Arc<Job>, found: Vec<Found>, ctx: &Arc<ReadContext>, workers: usize) -> anyhow::Result<()> {
    let found = Arc::new(found);
    let next = Arc::new(AtomicUsize::new(0));
    let mut readers = Vec::new();
    for _ in 0..workers.max(1) {
        let (found, next, job, ctx) = (found.clone(), next.clone(), job.clone(), ctx.clone());
        readers.push(tokio::spawn(async move {
            loop {
                let Some(f) = found.get(next.fetch_add(1, Ordering::Relaxed)) else { return Ok::<(), anyhow::Error>(()) };
                let entry = match f.kind {
                    FileKind::File => match send_file(&job, f, &ctx).await? {
                        Some(e) => e,
                        None => continue,
                    },
                    _ => {
                        if f.kind == FileKind::Symlink {
                            if let Some(oid) = f.rel.strip_prefix("pg_tblspc/").and_then(|o| o.parse().ok()) {
                                let location = f.link_target.as_deref().unwrap_or_default().to_string();
                                ctx.tablespaces.lock().expect("tablespaces").push(Tablespace { oid, location });
                            }
                        }
                        entry_for(f, Vec::new(), Vec::new())
                    }
                };
                if entry.kind == FileKind::File {
                    ctx.database_bytes.fetch_add(entry.size, Ordering::Relaxed);
                    ctx.file_count.fetch_add(1, Ordering::Relaxed);
                }
                ctx.lists.add(&job, entry).await?;
            }
        }));
    }
    let mut result = Ok(());
    for r in readers {
        if let Err(e) = r.await.expect("reader task panicked") {
            result = Err(e);
        }
    }
    result
}

fn entry_for(f: &Found, pieces: Vec<Piece>, page_hashes: Vec<u64>) -> FileEntry {
    FileEntry {
        path: f.rel.to_string(),
        kind: f.kind,
        mode: f.meta.mode,
        uid: f.meta.uid,
        gid: f.meta.gid,
        mtime: f.meta.mtime,
        size: pieces.iter().map(|p| p.len as u64).sum(),
        link_target: f.link_target.as_deref().unwrap_or_default().to_string(),
        pieces,
        page_hashes,
    }
}

impl ReadContext {
    /// `entry`'s pieces, renumbered from `from`'s chunk table into this backup's; `None` if one of them
    /// points at a chunk `from` does not know the location of.
    fn adopt(&self, from: &LoadedManifest, pieces: &[Piece]) -> Option<Vec<Piece>> {
        pieces
            .iter()
            .map(|p| match p.is_zero() {
                true => Some(*p),
                false => from.chunk(p.chunk).map(|c| Piece { chunk: self.table.known(c), ..*p }),
            })
            .collect()
    }

    /// A stored copy of the file that is still what is on disk: `e` was read from a file with the same
    /// size and mtime, modified before `since` (when that backup began).
    fn reuse(&self, f: &Found, from: &LoadedManifest, e: &FileEntry, since: i64) -> Option<FileEntry> {
        if e.size != f.meta.len || e.mtime != f.meta.mtime || e.mtime >= since {
            return None;
        }
        let pieces = self.adopt(from, &e.pieces)?;
        self.done.fetch_add(e.size, Ordering::Relaxed);
        Some(entry_for(f, pieces, e.page_hashes.clone()))
    }
}

/// One read of a file, with what was learnt reading it.
struct ReadBuffer {
    offset: u64,
    /// How much was asked for: fewer bytes came back only at the end of the file.
    buf_len: usize,
    buf: Vec<u8>,
    bad: Vec<ChecksumFailure>,
    /// The buffer's chunk id and page hashes ([`increment::hash_buffer`]).
    hashes: (strata_messages::ChunkId, Vec<u64>),
    /// The whole buffer sealed, ready for the uploaders ([`Job::sealed_message`]), when it was sealed here.
    sealed: Option<Vec<u8>>,
}

/// Reads and sends one file and returns its entry; `None` when it disappeared before it could be opened
/// (a dropped relation: WAL replay removes it anyway).
async fn send_file(job: &Arc<Job>, found: &Found, ctx: &ReadContext) -> anyhow::Result<Option<FileEntry>> {
    // An interrupted attempt read this file and it has not changed since: take what it stored.
    if let Some(r) = &ctx.resume {
        if let Some(e) = r.manifest.file(&found.rel).and_then(|e| ctx.reuse(found, &r.manifest, &e, r.attempt_start)) {
            return Ok(Some(e));
        }
    }
    let ref_entry = ctx.reference.as_ref().and_then(|r| r.file(&found.rel).map(|e| (r, e)));
    if let Some((r, e)) = &ref_entry {
        // Modified before the reference began and unchanged since: the reference read it as it is now.
        if !ctx.checksum_all {
            if let Some(e) = ctx.reuse(found, r, e, r.head.summary.start_time) {
                return Ok(Some(e));
            }
        }
    }
    let abs = ctx.roots.abs(found);
    let file = match File::open(&abs) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => bail!("cannot open {}: {e}", abs.display()),
    };
    let relation = matches!(found.class, FileClass::Relation { .. });
    let segno = match found.class {
        FileClass::Relation { segno } if ctx.verify => Some(segno),
        _ => None,
    };
    // Only relation files are compared page by page; other files are stored whole when they changed.
    let ref_file = match (&ref_entry, relation) {
        (Some((r, e)), true) => Some((*r, RefFile::new(e))),
        _ => None,
    };
    let mut pieces = Vec::new();
    let mut page_hashes = Vec::new();
    let (chunk_size, start_lsn, len) = (ctx.chunk_size, ctx.start_lsn, found.meta.len);
    // Chunks of one file are read, checked and hashed READ_AHEAD at a time, so a 1 GB segment is not read
    // by one thread while the others have nothing left to do; they are sent in order.
    let file = Arc::new(file);
    // A chunk that will be sent whole (no reference to compare with, no zero pages to leave out) is sealed
    // right after it is read, on the same thread, when this process also stores it.
    let seal_whole = ctx.seal_in_reader && ref_file.is_none();
    let read_at = |offset: u64| {
        // Small files get a buffer their size (plus a page, to see the end), not a whole chunk's.
        let buf_len = if offset < len { ((len - offset) as usize + PAGE_SIZE).min(chunk_size) } else { chunk_size };
        let (file, path, rel, job) = (file.clone(), abs.clone(), found.rel.clone(), job.clone());
        tokio::task::spawn_blocking(move || -> anyhow::Result<ReadBuffer> {
            let mut buf = pread_up_to(&file, offset, buf_len).with_context(|| format!("cannot read {}", path.display()))?;
            let bad = match segno {
                Some(segno) => check_pages(&file, &rel, segno, offset, &mut buf, start_lsn),
                None => Vec::new(),
            };
            let hashes = increment::hash_buffer(&buf, relation, job.id_key());
            let sealed = (seal_whole && buf.len() >= chunk_size / BUNDLE_DIVISOR && !(relation && increment::has_zero_page(&buf)))
                .then(|| job.sealed_message(hashes.0, &buf));
            Ok(ReadBuffer { offset, buf_len, buf, bad, hashes, sealed })
        })
    };
    let mut reads = futures::stream::FuturesOrdered::new();
    let mut next_offset = 0u64;
    loop {
        // Keep READ_AHEAD reads going up to the size the file had in the walk; past it (the file grew), one.
        while reads.len() < READ_AHEAD && (next_offset <= len || reads.is_empty()) {
            reads.push_back(read_at(next_offset));
            next_offset += chunk_size as u64;
        }
        let Some(read) = futures::StreamExt::next(&mut reads).await else { break };
        let ReadBuffer { offset, buf_len, buf, bad, hashes: (whole_id, hashes), sealed } = read.expect("read task panicked")?;
        if !bad.is_empty() {
            for b in &bad {
                warn!(file = %b.path, block = b.block, "page checksum mismatch");
            }
            ctx.failures.lock().expect("failures").extend(bad);
        }
        if buf.is_empty() {
            break;
        }
        let n = buf.len();
        ctx.read.fetch_add(n as u64, Ordering::Relaxed);
        ctx.done.fetch_add(n as u64, Ordering::Relaxed);
        let split = increment::split(buf, offset, hashes, ref_file.as_ref().map(|(_, f)| f));
        page_hashes.extend_from_slice(&split.page_hashes);
        let whole = split.packed.len() == n;
        let packed = match split.packed.len() {
            0 => None,
            len if len < chunk_size / BUNDLE_DIVISOR => Some(ctx.bundler.add(job, &ctx.table, &split.packed).await?),
            _ if whole => match sealed {
                Some(message) => Some((ctx.table.sent(job.send_presealed(whole_id, n, message).await?), 0)),
                None => Some((ctx.table.sent(job.send_hashed(split.packed, whole_id).await?), 0)),
            },
            _ => Some((ctx.table.sent(job.send(split.packed, true).await?), 0)),
        };
        for seg in split.segments {
            match seg {
                Segment::New { offset, len } => {
                    let (chunk, base) = packed.expect("new bytes were sent");
                    pieces.push(Piece { chunk, offset: base + offset, len })
                }
                Segment::Zero { len } => pieces.push(Piece { chunk: strata_messages::ZERO_CHUNK, offset: 0, len }),
                Segment::Unchanged { file_offset, len } => {
                    let (r, rf) = ref_file.as_ref().expect("unchanged bytes come from a reference");
                    let adopted = ctx
                        .adopt(r, &rf.slice(file_offset, len))
                        .ok_or_else(|| anyhow!("the reference's manifest has no location for a chunk of {}", found.rel))?;
                    pieces.extend(adopted);
                }
            }
        }
        if n < buf_len {
            // The end of the file; reads already started past it are dropped.
            break;
        }
    }
    Ok(Some(entry_for(found, pieces, page_hashes)))
}

/// Reads up to `len` bytes at `offset` (fewer only at the end of the file) into a new buffer, without
/// zeroing it first, and with room after them for the message header the chunk becomes, so sending it
/// does not copy it.
fn pread_up_to(file: &File, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    use std::os::fd::AsRawFd;
    let mut buf: Vec<u8> = Vec::with_capacity(len + MESSAGE_ROOM);
    while buf.len() < len {
        let have = buf.len();
        let spare = &mut buf.spare_capacity_mut()[..len - have];
        let at = (offset + have as u64) as libc::off_t;
        // SAFETY: pread writes at most `spare.len()` bytes into memory the vector owns and returns how
        // many it wrote; only those are added to the vector's length below.
        let n = unsafe { libc::pread(file.as_raw_fd(), spare.as_mut_ptr().cast(), spare.len(), at) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(e);
        }
        if n == 0 {
            break;
        }
        // SAFETY: the `n` bytes after the current length were just written by pread.
        unsafe { buf.set_len(buf.len() + n as usize) };
    }
    Ok(buf)
}

/// Checks the checksums of the whole pages in `buf` (read from `offset` of a relation segment file).
///
/// As `basebackup.c` does: a page whose LSN is at or past the backup start is skipped, since it changed
/// during the backup and WAL replay rewrites it from a full-page image; a mismatching page is read again once,
/// because the first read may have raced with a write (a torn read), and only a page that still fails is
/// reported. A reread that succeeds replaces the torn copy in `buf`.
fn check_pages(file: &File, rel: &str, segno: u32, offset: u64, buf: &mut [u8], start_lsn: Lsn) -> Vec<ChecksumFailure> {
    let mut bad = Vec::new();
    for (i, page) in buf.chunks_exact_mut(PAGE_SIZE).enumerate() {
        let index = (offset / PAGE_SIZE as u64) as u32 + i as u32;
        let blkno = page::block_number(segno, index);
        if !matches!(page::verify(page, blkno), PageCheck::Mismatch { .. }) || page::page_lsn(page) >= start_lsn {
            continue;
        }
        let mut again = vec![0u8; PAGE_SIZE];
        let reread = file.read_exact_at(&mut again, offset + (i * PAGE_SIZE) as u64).is_ok();
        if reread && (page::page_lsn(&again) >= start_lsn || !matches!(page::verify(&again, blkno), PageCheck::Mismatch { .. })) {
            page.copy_from_slice(&again);
            continue;
        }
        bad.push(ChecksumFailure { path: rel.to_string(), block: blkno });
    }
    bad
}

pub(crate) async fn status(bus: &dyn Bus, label: &str, s: BackupStatus) {
    if let Err(e) = bus.publish_event(&subjects::backup_status(label), Bytes::from(encode(&s))).await {
        warn!(error = %e, "cannot publish backup status");
    }
}

fn now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}
