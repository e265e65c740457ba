//! One backup, as the collector runs it on the database host.
//!
//! 1. Connect to the cluster on one dedicated session, check it is the stanza's cluster (system identifier,
//!    major version), that WAL archiving is on and that `pg_data` is its data directory.
//! 2. `pg_backup_start(label, fast => true)` on that session. A non-exclusive backup lives and dies with its
//!    session: if the collector fails or loses the connection, PostgreSQL ends the backup itself.
//! 3. Walk the data directory and tablespaces, applying PostgreSQL's base-backup rules
//!    ([`strata_pg::datadir`]), and send every file through the pipeline in page-aligned chunks, with a bounded
//!    pool of readers. Relation pages are checked against their checksums while read (see [`check_pages`]).
//! 4. `pg_backup_stop(wait_for_archive => true)` returns the backup_label and tablespace_map contents and
//!    waits until the WAL the backup needs is archived.
//! 5. Wait until every chunk is confirmed stored, send the manifest through the pipeline the same way, then
//!    ask an uploader to commit the backup record. The backup exists from that moment on, not before.

use crate::job::{CommitOutcome, Job};
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
use crate::increment::{self, PendingPiece, RefFile, Segment};
use std::collections::HashMap;
use strata_messages::manifest::{ChecksumFailure, Tablespace};
use strata_messages::{
    encode, subjects, BackupRecord, BackupRequest, BackupStatus, BackupSummary, ChunkRef, FileEntry, FileKind,
    Manifest, Piece, FORMAT_VERSION,
};
use strata_pg::datadir::{self, Entry, FileClass};
use strata_pg::page::{self, PageCheck};
use strata_pg::{Lsn, WalSegment, PAGE_SIZE};
use tracing::{info, warn};

/// How long `pg_backup_stop` may wait for the backup's last WAL segment to be archived.
const ARCHIVE_WAIT: Duration = Duration::from_secs(300);

pub struct BackupSettings {
    pub chunk_size: usize,
    pub compress_level: i32,
    pub read_workers: usize,
    pub in_flight_bytes: usize,
    pub stall: Duration,
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
    fn len(&self) -> u64 {
        self.len
    }
    fn mtime(&self) -> i64 {
        self.mtime
    }
}

/// One entry found by the walk.
struct Found {
    rel: String,
    abs: PathBuf,
    kind: FileKind,
    class: FileClass,
    meta: Meta,
    link_target: String,
}

/// Runs a backup and returns its summary once it is committed.
///
/// `resume` is what a failed earlier backup of the stanza left: its stored chunks are not sent again and
/// the files it finished are not read again (if unchanged since). When this backup fails too, `resume` is
/// left holding what it got stored, for the next attempt.
pub async fn run(
    bus: Arc<dyn Bus>,
    pg_data: &Path,
    pg_conn: &str,
    req: &BackupRequest,
    settings: &BackupSettings,
    resume: &mut Resume,
) -> anyhow::Result<BackupSummary> {
    let session = crate::cluster::connect(pg_conn).await?;
    let result = backup_on(&session.client, bus, pg_data, req, settings, resume).await;
    session.close().await;
    result
}

async fn backup_on(
    client: &tokio_postgres::Client,
    bus: Arc<dyn Bus>,
    pg_data: &Path,
    req: &BackupRequest,
    settings: &BackupSettings,
    resume: &mut Resume,
) -> anyhow::Result<BackupSummary> {
    let cluster = check_cluster(client, pg_data, req).await?;
    let attempt_start = now();
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
    let job = Arc::new(
        Job::start(bus.clone(), label.clone(), req.stanza.clone(), settings.compress_level, settings.in_flight_bytes, settings.stall)
            .await?,
    );
    let prior = std::mem::take(resume);
    if !prior.stored.is_empty() {
        let plain_bytes: u64 = prior.stored.iter().map(|r| r.raw_len as u64).sum();
        info!(
            %label,
            chunks = prior.stored.len(),
            plain_bytes,
            files = prior.files.len(),
            "resuming: what the failed previous attempt stored is not read or sent again"
        );
    }
    job.seed(prior.stored);
    let completed = Arc::new(Mutex::new(Vec::new()));
    let prior_files = (prior.files, prior.start_time);
    let result =
        backup_steps(client, &job, pg_data, req, settings, &cluster, &done_bytes, &total, prior_files, &completed).await;
    heartbeat.abort();
    if result.is_err() {
        *resume = Resume::after_failure(&job, attempt_start, &completed.lock().expect("completed files"));
    }
    result
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
    prior_files: (HashMap<String, FileEntry>, i64),
    completed: &Arc<Mutex<Vec<CompletedFile>>>,
) -> anyhow::Result<BackupSummary> {
    let label = req.label.clone();
    let start_time = now();
    let row = client
        .query_one("SELECT pg_backup_start($1, true)::text", &[&format!("strata backup {label}")])
        .await
        .context("pg_backup_start failed")?;
    let start_lsn: Lsn = row.get::<_, String>(0).parse().context("pg_backup_start returned a malformed LSN")?;
    let timeline: i32 =
        client.query_one("SELECT timeline_id FROM pg_control_checkpoint()", &[]).await?.get(0);
    let timeline = timeline as u32;
    info!(%label, start_lsn = %start_lsn, "backup started");

    let walk_root = pg_data.to_path_buf();
    let mut found = tokio::task::spawn_blocking(move || walk(&walk_root)).await.expect("walk task")?;
    // pg_basebackup and pgBackRest send the control file last; do the same.
    if let Some(pos) = found.iter().position(|f| f.rel == datadir::CONTROL_FILE) {
        let control = found.remove(pos);
        found.push(control);
    }
    let total_bytes: u64 = found.iter().filter(|f| f.kind == FileKind::File).map(|f| f.meta.len()).sum();
    total.store(total_bytes, Ordering::Relaxed);
    status(job.bus(), &label, BackupStatus::Started { start_lsn: start_lsn.0, total_bytes }).await;

    let reference = match &req.reference {
        Some(record) => Some(fetch_manifest(job.bus(), &label, record).await?),
        None => None,
    };
    let read_bytes = Arc::new(AtomicU64::new(0));
    let ctx = ReadContext {
        verify: cluster.data_checksums,
        start_lsn,
        chunk_size: settings.chunk_size,
        checksum_all: req.checksum_all,
        reference: reference.map(Reference::new),
        done: done_bytes.clone(),
        read: read_bytes.clone(),
        failures: Mutex::new(Vec::new()),
        resume_files: prior_files.0,
        resume_start: prior_files.1,
        completed: completed.clone(),
    };
    let ctx = Arc::new(ctx);
    let files = send_files(job, found, &ctx, settings.read_workers).await?;
    let reference = ctx.reference.as_ref().map(|r| &r.manifest);

    let row = tokio::time::timeout(
        ARCHIVE_WAIT,
        client.query_one("SELECT lsn::text, labelfile, spcmapfile FROM pg_backup_stop(true)", &[]),
    )
    .await
    .map_err(|_| anyhow!("the WAL this backup needs was not archived within {} s; check archive_command", ARCHIVE_WAIT.as_secs()))?
    .context("pg_backup_stop failed")?;
    let stop_lsn: Lsn = row.get::<_, String>(0).parse().context("pg_backup_stop returned a malformed LSN")?;
    let backup_label: String = row.get(1);
    let tablespace_map: Option<String> = row.get(2);
    let stop_time = now();
    info!(%label, stop_lsn = %stop_lsn, "backup stopped; waiting for the last chunks");

    job.wait_stored().await?;
    let checksum_failures = std::mem::take(&mut *ctx.failures.lock().expect("failures"));
    let mut entries = Vec::with_capacity(files.len());
    for (found, result) in files {
        let pieces = result
            .pieces
            .iter()
            .map(|p| match *p {
                PendingPiece::Existing(piece) => Ok(piece),
                PendingPiece::New { id, offset, len } => job
                    .location(&id)
                    .map(|chunk| Piece { chunk, offset, len })
                    .ok_or_else(|| anyhow!("chunk of {} has no stored location", found.rel)),
            })
            .collect::<anyhow::Result<Vec<Piece>>>()?;
        let size = pieces.iter().map(|p| p.len as u64).sum();
        entries.push(FileEntry {
            path: found.rel,
            kind: found.kind,
            mode: found.meta.mode,
            uid: found.meta.uid,
            gid: found.meta.gid,
            mtime: found.meta.mtime(),
            size,
            link_target: found.link_target,
            pieces,
            page_hashes: result.page_hashes.clone(),
        });
    }
    let seg = cluster.wal_segment_size;
    let stop_for_wal = Lsn(stop_lsn.0.saturating_sub(1).max(start_lsn.0));
    let tablespaces = entries
        .iter()
        .filter(|e| e.kind == FileKind::Symlink)
        .filter_map(|e| {
            let oid = e.path.strip_prefix("pg_tblspc/")?.parse().ok()?;
            Some(Tablespace { oid, location: e.link_target.clone() })
        })
        .collect();
    let database_bytes = entries.iter().map(|e| e.size).sum();
    let file_count = entries.iter().filter(|e| e.kind == FileKind::File).count() as u64;
    let mut summary = BackupSummary {
        label: label.clone(),
        backup_type: req.backup_type,
        start_time,
        stop_time,
        start_lsn: start_lsn.0,
        stop_lsn: stop_lsn.0,
        timeline,
        reference: reference.as_ref().map(|r| r.summary.label.clone()).unwrap_or_default(),
        wal_start: WalSegment::containing(timeline, start_lsn, seg).name(seg),
        wal_stop: WalSegment::containing(timeline, stop_for_wal, seg).name(seg),
        pg_version_num: cluster.version_num,
        system_id: cluster.system_id,
        wal_segment_size: seg,
        database_bytes,
        read_bytes: read_bytes.load(Ordering::Relaxed),
        stored_bytes: 0,
        sent_bytes: 0,
        file_count,
        checksum_failures: checksum_failures.len() as u64,
    };
    let manifest = Manifest {
        version: FORMAT_VERSION,
        summary: summary.clone(),
        data_checksums: cluster.data_checksums,
        references: match &reference {
            Some(r) => r.references.iter().cloned().chain([r.summary.label.clone()]).collect(),
            None => Vec::new(),
        },
        backup_label,
        tablespace_map: tablespace_map.unwrap_or_default(),
        tablespaces,
        files: entries,
        checksum_failures,
    };
    let bytes = encode(&manifest);
    // Every pack the backup's files point into, its own chunks' and the reference's alike.
    let mut packs: std::collections::HashSet<strata_messages::PackId> =
        manifest.files.iter().flat_map(|f| f.pieces.iter().map(|p| p.chunk.pack)).collect();
    drop(manifest);
    let mut manifest_ids = Vec::new();
    for piece in bytes.chunks(settings.chunk_size) {
        manifest_ids.push(job.send(piece.to_vec(), true).await?);
    }
    job.wait_stored().await?;
    let manifest_chunks: Vec<ChunkRef> = manifest_ids.iter().map(|id| job.location(id).expect("confirmed above")).collect();
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

/// Lists what the backup copies, directories before their contents. Follows the tablespace links in
/// `pg_tblspc`, recording the link itself and the tablespace's contents under `pg_tblspc/<oid>/`.
fn walk(root: &Path) -> anyhow::Result<Vec<Found>> {
    let mut out = Vec::new();
    let mut stack: Vec<(PathBuf, String)> = vec![(root.to_path_buf(), String::new())];
    while let Some((dir, rel_dir)) = stack.pop() {
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
            let (full_meta, meta) = (meta.clone(), Meta::of(&meta));
            let class = match datadir::classify(Path::new(&rel), is_dir) {
                Entry::Skip => continue,
                Entry::SkipContents => {
                    out.push(Found { rel, abs, kind: FileKind::Directory, class: FileClass::Other, meta, link_target: String::new() });
                    continue;
                }
                Entry::Include(class) => class,
            };
            if !init_forks.is_empty() && datadir::is_unlogged_non_init(&name, &init_forks) {
                continue;
            }
            if is_tablespace_link {
                let target = std::fs::read_link(&abs).with_context(|| format!("cannot read link {}", abs.display()))?;
                out.push(Found {
                    rel: rel.clone(),
                    abs: abs.clone(),
                    kind: FileKind::Symlink,
                    class,
                    meta,
                    link_target: target.to_string_lossy().into_owned(),
                });
                subdirs.push((target, rel));
            } else if full_meta.is_dir() {
                out.push(Found { rel: rel.clone(), abs: abs.clone(), kind: FileKind::Directory, class, meta, link_target: String::new() });
                subdirs.push((abs, rel));
            } else if full_meta.is_file() {
                out.push(Found { rel, abs, kind: FileKind::File, class, meta, link_target: String::new() });
            } else if full_meta.file_type().is_symlink() {
                // Other links (pg_wal pointing elsewhere is handled by SkipContents): keep the link itself.
                let target = std::fs::read_link(&abs).map(|t| t.to_string_lossy().into_owned()).unwrap_or_default();
                out.push(Found { rel, abs, kind: FileKind::Symlink, class, meta, link_target: target });
            }
        }
        // Depth-first, in name order.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok(out)
}

/// How long the collector waits for each chunk of a reference manifest.
const FETCH_TIMEOUT: Duration = Duration::from_secs(30);

/// Fetches and decodes a backup's manifest through an uploader.
async fn fetch_manifest(bus: &dyn Bus, label: &str, record: &BackupRecord) -> anyhow::Result<Manifest> {
    let reference = &record.summary.label;
    let reply = subjects::fetch_reply(label);
    let mut answers = bus.subscribe(&reply, None).await?;
    let request = strata_messages::FetchRequest {
        version: FORMAT_VERSION,
        reply: reply.clone(),
        chunks: record.manifest_chunks.clone(),
    };
    bus.publish_event(subjects::FETCH, Bytes::from(encode(&request))).await?;
    bus.flush().await?;
    let sealer = strata_seal::Sealer::default();
    let mut parts: Vec<Option<Vec<u8>>> = vec![None; record.manifest_chunks.len()];
    let mut missing = parts.len();
    while missing > 0 {
        let payload = tokio::time::timeout(FETCH_TIMEOUT, answers.next())
            .await
            .map_err(|_| {
                anyhow!("no uploader sent the manifest of reference backup {reference} within {} s; is an uploader running?", FETCH_TIMEOUT.as_secs())
            })?
            .ok_or_else(|| anyhow!("the bus closed while fetching the manifest of backup {reference}"))?;
        match strata_messages::to_owned::<strata_messages::FetchedChunk>(strata_messages::decode::<strata_messages::FetchedChunk>(&payload)?) {
            strata_messages::FetchedChunk::Sealed { index, bytes } => {
                let i = index as usize;
                let chunk = record.manifest_chunks.get(i).ok_or_else(|| anyhow!("an uploader sent chunk {i} of a {}-chunk manifest", parts.len()))?;
                if parts[i].is_none() {
                    let plain = sealer
                        .unseal(&bytes, &chunk.id)
                        .with_context(|| format!("manifest of reference backup {reference}"))?;
                    parts[i] = Some(plain);
                    missing -= 1;
                }
            }
            strata_messages::FetchedChunk::Failed(reason) => {
                bail!("cannot read the manifest of reference backup {reference}: {reason}")
            }
        }
    }
    let bytes: Vec<u8> = parts.into_iter().flatten().flatten().collect();
    strata_messages::decode::<Manifest>(&bytes)
        .map(strata_messages::to_owned::<Manifest>)
        .with_context(|| format!("the manifest of reference backup {reference} is unreadable"))
}

/// The reference backup's manifest, with its files by path.
struct Reference {
    manifest: Manifest,
    by_path: HashMap<String, usize>,
}

impl Reference {
    fn new(manifest: Manifest) -> Self {
        let by_path = manifest
            .files
            .iter()
            .enumerate()
            .filter(|(_, f)| f.kind == FileKind::File)
            .map(|(i, f)| (f.path.clone(), i))
            .collect();
        Reference { manifest, by_path }
    }

    fn file(&self, path: &str) -> Option<&FileEntry> {
        self.by_path.get(path).map(|&i| &self.manifest.files[i])
    }
}

/// What every reader shares.
struct ReadContext {
    verify: bool,
    start_lsn: Lsn,
    chunk_size: usize,
    checksum_all: bool,
    reference: Option<Reference>,
    done: Arc<AtomicU64>,
    read: Arc<AtomicU64>,
    failures: Mutex<Vec<ChecksumFailure>>,
    /// Files a failed previous attempt finished, and when it started.
    resume_files: HashMap<String, FileEntry>,
    resume_start: i64,
    /// Files this attempt finished, for the next attempt should this one fail.
    completed: Arc<Mutex<Vec<CompletedFile>>>,
}

/// A file this attempt read completely.
pub struct CompletedFile {
    path: String,
    size: u64,
    mtime: i64,
    /// Shared with the file list: a resume costs no copy of it.
    result: Arc<FileResult>,
}

/// What a failed backup leaves for the next attempt of the same stanza.
#[derive(Default)]
pub struct Resume {
    /// Chunks it got stored.
    pub stored: Vec<ChunkRef>,
    /// Files it read completely and whose chunks are all stored, as it recorded them.
    pub files: HashMap<String, FileEntry>,
    /// When it started: a file last modified before then, with the same size and mtime, is as it was read.
    pub start_time: i64,
}

impl Resume {
    pub fn is_empty(&self) -> bool {
        self.stored.is_empty() && self.files.is_empty()
    }

    fn after_failure(job: &Job, start_time: i64, completed: &[CompletedFile]) -> Resume {
        let files = completed
            .iter()
            .filter_map(|c| {
                let pieces = c
                    .result
                    .pieces
                    .iter()
                    .map(|p| match *p {
                        PendingPiece::Existing(piece) => Some(piece),
                        PendingPiece::New { id, offset, len } => job.location(&id).map(|chunk| Piece { chunk, offset, len }),
                    })
                    .collect::<Option<Vec<Piece>>>()?;
                let entry = FileEntry {
                    path: c.path.clone(),
                    kind: FileKind::File,
                    mode: 0,
                    uid: 0,
                    gid: 0,
                    mtime: c.mtime,
                    size: c.size,
                    link_target: String::new(),
                    pieces,
                    page_hashes: c.result.page_hashes.clone(),
                };
                Some((c.path.clone(), entry))
            })
            .collect();
        Resume { stored: job.stored(), files, start_time }
    }
}

/// A file's contents as this backup will record them.
#[derive(Default, Clone)]
struct FileResult {
    pieces: Vec<PendingPiece>,
    page_hashes: Vec<u64>,
}

type FileChunks = (Found, Arc<FileResult>);

/// Reads every file with a bounded pool and sends what must be stored; returns each entry with its
/// pending pieces, in the walk's order. Files that vanished during the backup are left out.
async fn send_files(
    job: &Arc<Job>,
    found: Vec<Found>,
    ctx: &Arc<ReadContext>,
    workers: usize,
) -> anyhow::Result<Vec<FileChunks>> {
    let slots: Arc<Vec<Mutex<Option<FileChunks>>>> =
        Arc::new(found.into_iter().map(|f| Mutex::new(Some((f, Arc::default())))).collect());
    let next = Arc::new(AtomicUsize::new(0));
    let vanished = Arc::new(Mutex::new(HashSet::new()));
    let mut readers = Vec::new();
    for _ in 0..workers {
        let (slots, next, job, ctx, vanished) = (slots.clone(), next.clone(), job.clone(), ctx.clone(), vanished.clone());
        readers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(slot) = slots.get(i) else { return Ok::<(), anyhow::Error>(()) };
                let (found, _) = slot.lock().expect("slot").take().expect("each slot is taken once");
                if found.kind != FileKind::File {
                    *slot.lock().expect("slot") = Some((found, Arc::default()));
                    continue;
                }
                match send_file(&job, &found, &ctx).await? {
                    Some(result) => *slot.lock().expect("slot") = Some((found, result)),
                    None => {
                        vanished.lock().expect("vanished").insert(i);
                    }
                }
            }
        }));
    }
    let mut result = Ok(());
    for r in readers {
        if let Err(e) = r.await.expect("reader task panicked") {
            result = Err(e);
        }
    }
    result?;
    let vanished = vanished.lock().expect("vanished").clone();
    let slots = Arc::try_unwrap(slots).map_err(|_| anyhow!("a reader still holds the file list"))?;
    Ok(slots
        .into_iter()
        .enumerate()
        .filter(|(i, _)| !vanished.contains(i))
        .map(|(_, s)| s.into_inner().expect("slot").expect("every slot is refilled"))
        .collect())
}

/// Sends one file; `None` when it disappeared before it could be opened (a dropped relation: WAL replay
/// removes it anyway).
async fn send_file(job: &Job, found: &Found, ctx: &ReadContext) -> anyhow::Result<Option<Arc<FileResult>>> {
    // A failed previous attempt read this file and it has not changed since: take what it stored.
    if let Some(e) = ctx.resume_files.get(&found.rel) {
        if e.size == found.meta.len() && e.mtime == found.meta.mtime() && e.mtime < ctx.resume_start {
            ctx.done.fetch_add(e.size, Ordering::Relaxed);
            let pieces = e.pieces.iter().map(|p| PendingPiece::Existing(*p)).collect();
            let result = Arc::new(FileResult { pieces, page_hashes: e.page_hashes.clone() });
            ctx.complete(found, &result);
            return Ok(Some(result));
        }
    }
    let reference = ctx.reference.as_ref().and_then(|r| r.file(&found.rel).map(|e| (r, e)));
    if let Some((r, e)) = reference {
        // Modified before the reference began and unchanged since: the reference read it as it is now.
        let untouched =
            e.size == found.meta.len() && e.mtime == found.meta.mtime() && e.mtime < r.manifest.summary.start_time;
        if untouched && !ctx.checksum_all {
            ctx.done.fetch_add(e.size, Ordering::Relaxed);
            let pieces = e.pieces.iter().map(|p| PendingPiece::Existing(*p)).collect();
            let result = Arc::new(FileResult { pieces, page_hashes: e.page_hashes.clone() });
            ctx.complete(found, &result);
            return Ok(Some(result));
        }
    }
    let mut file = match File::open(&found.abs) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => bail!("cannot open {}: {e}", found.abs.display()),
    };
    let relation = matches!(found.class, FileClass::Relation { .. });
    let segno = match found.class {
        FileClass::Relation { segno } if ctx.verify => Some(segno),
        _ => None,
    };
    // Only relation files are compared page by page; other files are stored whole when they changed.
    let ref_file = if relation { reference.map(|(_, e)| RefFile::new(e)) } else { None };
    let mut result = FileResult::default();
    let mut offset = 0u64;
    let (chunk_size, start_lsn) = (ctx.chunk_size, ctx.start_lsn);
    loop {
        let (f, buf, bad, hashes) = tokio::task::spawn_blocking({
            let path = found.abs.clone();
            let rel = found.rel.clone();
            move || -> anyhow::Result<(File, Vec<u8>, Vec<ChecksumFailure>, Vec<u64>)> {
                let mut buf = vec![0u8; chunk_size];
                let n = read_full(&mut file, &mut buf).with_context(|| format!("cannot read {}", path.display()))?;
                buf.truncate(n);
                let bad = match segno {
                    Some(segno) => check_pages(&file, &rel, segno, offset, &mut buf, start_lsn),
                    None => Vec::new(),
                };
                let hashes = if relation { increment::page_hashes(&buf) } else { Vec::new() };
                Ok((file, buf, bad, hashes))
            }
        })
        .await
        .expect("read task panicked")?;
        file = f;
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
        let split = increment::split(buf, offset, hashes, ref_file.as_ref());
        result.page_hashes.extend_from_slice(&split.page_hashes);
        let id = match split.packed.is_empty() {
            true => None,
            false => Some(job.send(split.packed, true).await?),
        };
        for seg in split.segments {
            match seg {
                Segment::New { offset, len } => {
                    result.pieces.push(PendingPiece::New { id: id.expect("new bytes were sent"), offset, len })
                }
                Segment::Unchanged { file_offset, len } => {
                    let r = ref_file.as_ref().expect("unchanged bytes come from a reference");
                    result.pieces.extend(r.slice(file_offset, len).into_iter().map(PendingPiece::Existing));
                }
            }
        }
        offset += n as u64;
        if n < chunk_size {
            break;
        }
    }
    let result = Arc::new(result);
    ctx.complete(found, &result);
    Ok(Some(result))
}

impl ReadContext {
    /// Notes a file as read completely, for a resume should this backup fail.
    fn complete(&self, found: &Found, result: &Arc<FileResult>) {
        let size = result
            .pieces
            .iter()
            .map(|p| match p {
                PendingPiece::Existing(piece) => piece.len as u64,
                PendingPiece::New { len, .. } => *len as u64,
            })
            .sum();
        let done = CompletedFile { path: found.rel.clone(), size, mtime: found.meta.mtime(), result: Arc::clone(result) };
        self.completed.lock().expect("completed files").push(done);
    }
}

fn read_full(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    use std::io::Read;
    let mut n = 0;
    while n < buf.len() {
        match file.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(n)
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
