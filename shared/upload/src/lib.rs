//! strata-upload, the uploader stage: writes sealed chunks into pack files in the repository, and commits
//! backups and WAL files. The `strata-uploader` service (services/uploader) is a thin binary around [`run`];
//! the `strata` command runs the same code in single-host mode.
//!
//! # Batching and acknowledgement
//! A worker takes chunks from the `Upload` work queue until it holds `pipeline.pack_size` sealed bytes, or
//! chunks standing for a quarter of `pipeline.in_flight_bytes` of plain data, or its input has been idle for
//! [`IDLE_FLUSH`]; the batch becomes one pack, written durably (the storage's `put`
//! returns only once the object is fsynced or accepted whole). Only then does the worker publish a
//! [`JobEvent::Stored`] confirmation to each chunk's job and acknowledge the messages. A crash before that point
//! loses nothing: the bus redelivers the chunks and the job owner, which counts confirmations, never sees
//! them as stored.
//!
//! # Deduplication
//! Chunks are content-addressed. A chunk marked `dedup` that the repository already holds is not written
//! again; its confirmation points at the existing copy. The worker learns what the repository holds from the
//! pack indexes ([`ChunkIndex`]), loaded on the first deduplicable chunk and kept current with the packs it
//! writes itself.
//!
//! # Commits
//! Commit requests are handled after the batch's pack is durable. A backup's record is written only after
//! [`Repo::commit_backup`] checked every referenced pack exists; a WAL record is created with put-if-absent, so
//! an archived WAL file is never replaced. A streamed partial segment goes beside the archive, replacing a
//! shorter one (`strata_repo::wal_stream`). The outcome goes back to the job as an event.
//!
//! A commit ends its batch, but takes along what is queued behind it already: when the WAL shipper keeps
//! many segments in flight, their commits arrive together, and the WAL records of one batch are written
//! concurrently, so that their fsyncs overlap instead of costing one round trip to the disk each. (A job
//! asks for its commit only once all its chunks are confirmed, so a commit never needs the batch's pack.)

pub mod metrics;

use bytes::Bytes;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use strata_bus::{Bus, Delivery, Queue, WorkStream};
use strata_messages::{
    decode, decode_upload, encode, subjects, ArchivedUploadWork, ChunkRef, JobEvent, PackId,
};
use strata_repo::{ChunkIndex, PackBuilder, Repo, RepoError, WalPut};
use tokio::sync::Mutex;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn, Instrument};

pub use metrics::{CommitKind, CommitOutcome, UploaderError, UploaderMetrics};

/// A worker writes what it holds once its input has been quiet this long: the job owner limits its chunks
/// in flight and waits for confirmations, so holding a partial pack longer would only stall it.
/// A commit is written at once, with what is queued already (see [`classify`]).
pub const IDLE_FLUSH: Duration = Duration::from_millis(10);

/// How an uploader process batches.
#[derive(Debug, Clone, Copy)]
pub struct UploaderSettings {
    pub workers: usize,
    /// Close a pack at this many sealed bytes.
    pub pack_size: usize,
    /// Close a pack once its chunks stand for this many plain bytes. A job waits for confirmations once it
    /// has `in_flight_bytes` unconfirmed; closing packs at a fraction of that keeps confirmations flowing
    /// while the job keeps sending, instead of stop-and-go on the idle timer. Measured on pgbench data
    /// (25x compressible, so packs never reach `pack_size`): about 25% faster backups.
    pub flush_plain_bytes: usize,
}

impl UploaderSettings {
    pub fn from_config(p: &strata_config::PipelineConfig) -> Self {
        UploaderSettings {
            workers: p.uploader_workers,
            pack_size: p.pack_size,
            flush_plain_bytes: (p.in_flight_bytes / 4).max(p.chunk_size),
        }
    }
}

struct Shared {
    repo: Repo,
    bus: Arc<dyn Bus>,
    settings: UploaderSettings,
    index: Mutex<Option<ChunkIndex>>,
    metrics: UploaderMetrics,
    /// Per stanza, the stop time of the newest backup this uploader committed. A checkpoint of an attempt
    /// that started before it is superseded: a killed attempt's checkpoint, redelivered after the rerun
    /// committed and removed every checkpoint, must not be written back.
    committed_until: std::sync::Mutex<HashMap<String, i64>>,
}

/// Runs `workers` pack writers until `shutdown` completes, counting what they do in `metrics`. Checks first
/// that the repository is writable, so a misconfigured uploader fails at start with one line instead of
/// failing every job.
pub async fn run(
    repo: Repo,
    bus: Arc<dyn Bus>,
    settings: UploaderSettings,
    metrics: UploaderMetrics,
    shutdown: impl Future<Output = ()>,
) -> anyhow::Result<()> {
    // Subscribed before the (possibly slow) write probe, so a fetch asked meanwhile waits for us.
    let fetches = bus.subscribe(subjects::FETCH, Some(subjects::UPLOADER_GROUP)).await?;
    repo.check_writable().await?;
    let workers = settings.workers;
    let shared = Arc::new(Shared {
        repo,
        bus,
        settings,
        index: Mutex::new(None),
        metrics,
        committed_until: std::sync::Mutex::new(HashMap::new()),
    });
    let cancel = CancellationToken::new();
    let mut tasks = Vec::new();
    for _ in 0..workers {
        let input = shared.bus.work(Queue::Upload).await?;
        tasks.push(tokio::spawn(worker(shared.clone(), input, cancel.clone()).instrument(repo_span(&shared))));
    }
    tasks.push(tokio::spawn(serve_fetches(shared.clone(), fetches, cancel.clone()).instrument(repo_span(&shared))));
    info!(workers, repo = shared.repo.name(), "uploader running");
    shutdown.await;
    cancel.cancel();
    for t in tasks {
        let _ = t.await;
    }
    Ok(())
}

/// The span of the uploader's work: every line it logs names the repository it writes to.
fn repo_span(shared: &Shared) -> tracing::Span {
    tracing::info_span!("uploader", repo = %shared.repo.name())
}

async fn worker(shared: Arc<Shared>, mut input: Box<dyn WorkStream>, cancel: CancellationToken) {
    loop {
        let first = tokio::select! {
            _ = cancel.cancelled() => return,
            next = input.next() => next,
        };
        let first = match first {
            Some(Ok(d)) => d,
            Some(Err(e)) => {
                shared.metrics.error(UploaderError::Input);
                warn!(error = %e, "uploader could not take work");
                tokio::time::sleep(Duration::from_secs(1)).await;
                continue;
            }
            None => return,
        };
        let mut bytes = first.payload().len();
        let (mut plain, mut last) = classify(first.payload());
        let mut batch = vec![first];
        while bytes < shared.settings.pack_size && plain < shared.settings.flush_plain_bytes {
            // After a commit, only what is queued already: commits then share the batch (its WAL records
            // are written together, see process_batch) and do not each end a batch of their own, while
            // a commit alone is not kept waiting for more.
            let wait = if last { Duration::ZERO } else { IDLE_FLUSH };
            match input.next_within(wait).await {
                Ok(Some(d)) => {
                    bytes += d.payload().len();
                    let (p, l) = classify(d.payload());
                    (plain, last) = (plain + p, last || l);
                    batch.push(d);
                }
                Ok(None) => break,
                Err(e) => {
                    warn!(error = %e, "uploader input failed; writing what it holds");
                    break;
                }
            }
        }
        process_batch(&shared, batch).await;
    }
}

/// Confirmations and outcomes owed to one job by one batch.
#[derive(Default)]
struct JobReply {
    stored: Vec<ChunkRef>,
    written_bytes: u64,
}

async fn process_batch(shared: &Shared, batch: Vec<Box<dyn Delivery>>) {
    // A batch's sealed bytes stay under the smaller of pack_size and flush_plain_bytes (sealing never
    // grows a chunk by more than its header), plus one message. Kept under glibc's 32 MiB mmap ceiling,
    // the buffer is recycled by malloc instead of being mapped, faulted in and unmapped for every pack.
    let capacity = shared.settings.pack_size.min(shared.settings.flush_plain_bytes) + (2 << 20);
    let mut pack = PackBuilder::with_capacity(capacity);
    // For every chunk of the batch: its job, and either the existing copy or "in this pack".
    let mut placed: Vec<(String, [u8; 32], Option<ChunkRef>)> = Vec::new();
    let mut commits = Vec::new();
    for (i, d) in batch.iter().enumerate() {
        let (work, sealed) = match decode_upload(d.payload()) {
            Ok(w) => w,
            Err(e) => {
                shared.metrics.error(UploaderError::Malformed);
                error!(error = %e, "uploader dropped a malformed message");
                continue;
            }
        };
        match work {
            ArchivedUploadWork::Chunk(c) => {
                let existing = if c.dedup { lookup(shared, &c.id).await } else { None };
                if existing.is_none() && !pack.contains(&c.id) {
                    pack.add(c.id, c.raw_len.to_native(), sealed);
                }
                placed.push((c.job.to_string(), c.id, existing));
            }
            ArchivedUploadWork::CommitBackup(_)
            | ArchivedUploadWork::CommitWal(_)
            | ArchivedUploadWork::Checkpoint(_)
            | ArchivedUploadWork::StreamedPartial(_)
                if !d.commit_allowed() =>
            {
                // Only a job's owner may ask for a commit (strata_bus::COMMIT_SUBJECT); this came on the
                // chunks' subject, which sealers publish to too.
                shared.metrics.error(UploaderError::Malformed);
                error!("uploader dropped a commit request that came on the sealed chunks' subject");
            }
            ArchivedUploadWork::CommitBackup(_)
            | ArchivedUploadWork::CommitWal(_)
            | ArchivedUploadWork::Checkpoint(_)
            | ArchivedUploadWork::StreamedPartial(_) => commits.push(i),
        }
    }

    let mut replies: HashMap<String, JobReply> = HashMap::new();
    if !placed.is_empty() {
        let pack_bytes = (!pack.is_empty()).then(|| pack.body_len() as u64);
        let written = if pack.is_empty() {
            Ok(Vec::new())
        } else {
            let len = pack.body_len();
            let r = shared.repo.write_pack(pack).await;
            if let Ok(refs) = &r {
                debug!(chunks = refs.len(), bytes = len, "pack written");
                // The pack is durable; no job has heard of its chunks yet.
                strata_crashpoint::hit("uploader.after-pack");
            }
            r
        };
        match written {
            Ok(refs) => {
                let by_id: HashMap<[u8; 32], ChunkRef> = refs.iter().map(|r| (r.id, *r)).collect();
                if let Some(index) = shared.index.lock().await.as_mut() {
                    refs.iter().for_each(|r| index.insert(*r));
                }
                let mut counted = std::collections::HashSet::new();
                let (chunks, mut deduplicated) = (placed.len() as u64, 0);
                for (job, id, existing) in placed {
                    let reply = replies.entry(job).or_default();
                    match existing {
                        Some(r) => {
                            deduplicated += 1;
                            reply.stored.push(r)
                        }
                        None => {
                            let r = by_id[&id];
                            if counted.insert(id) {
                                reply.written_bytes += r.sealed_len as u64;
                            } else {
                                deduplicated += 1;
                            }
                            reply.stored.push(r);
                        }
                    }
                }
                shared.metrics.batch_stored(chunks, deduplicated, pack_bytes);
            }
            Err(e) => {
                // Tell the jobs at once rather than letting them wait for their stall deadline.
                shared.metrics.error(UploaderError::PackWrite);
                error!(error = %e, "uploader could not write a pack");
                let jobs: std::collections::HashSet<String> = placed.into_iter().map(|p| p.0).collect();
                for job in jobs {
                    publish(shared, &job, &JobEvent::Rejected(format!("uploader: {e}"))).await;
                }
            }
        }
    }
    for (job, reply) in replies {
        let event = JobEvent::Stored { chunks: reply.stored, written_bytes: reply.written_bytes };
        publish(shared, &job, &event).await;
    }
    // WAL records first, all at once: each is its own object, and their writes and fsyncs overlap
    // (the file system commits them together) instead of costing a round each. Backup records and
    // checkpoints follow one at a time, in the order they came (a checkpoint must not land after the
    // record that supersedes it).
    let (wal, others): (Vec<usize>, Vec<usize>) =
        commits.into_iter().partition(|&i| matches!(decode_upload(batch[i].payload()), Ok((ArchivedUploadWork::CommitWal(_), _))));
    let wal_events = futures::future::join_all(wal.iter().map(|&i| commit_wal(shared, batch[i].payload()))).await;
    for (job, event) in wal_events {
        publish(shared, &job, &event).await;
    }
    for i in others {
        let (work, _) = decode_upload(batch[i].payload()).expect("decoded above");
        let (job, event) = match work {
            ArchivedUploadWork::CommitBackup(c) => {
                let record = strata_messages::to_owned::<strata_messages::BackupRecord>(&c.record);
                let packs: Vec<PackId> = c.packs.iter().copied().collect();
                strata_crashpoint::hit("uploader.before-backup-record");
                let event = match shared.repo.commit_backup(c.stanza.as_str(), &packs, &record).await {
                    Ok(()) => {
                        // Committed, but neither the checkpoints removed nor the collector told.
                        strata_crashpoint::hit("uploader.after-backup-record");
                        shared.metrics.commit(CommitKind::Backup, CommitOutcome::Stored);
                        info!(stanza = %c.stanza, label = %record.summary.label, "backup committed");
                        {
                            let mut until = shared.committed_until.lock().unwrap_or_else(|e| e.into_inner());
                            let t = until.entry(c.stanza.to_string()).or_insert(record.summary.stop_time);
                            *t = (*t).max(record.summary.stop_time);
                        }
                        // What interrupted attempts left is superseded: this backup read everything again.
                        drop_checkpoints(shared, c.stanza.as_str()).await;
                        JobEvent::Committed
                    }
                    Err(e) => {
                        shared.metrics.commit(CommitKind::Backup, CommitOutcome::Refused);
                        error!(stanza = %c.stanza, label = %record.summary.label, error = %e, "backup commit refused");
                        JobEvent::Rejected(e.to_string())
                    }
                };
                (c.job.to_string(), event)
            }
            ArchivedUploadWork::CommitWal(_) => unreachable!("WAL records were written above"),
            ArchivedUploadWork::StreamedPartial(c) => {
                let record = strata_messages::to_owned::<strata_messages::WalRecord>(&c.record);
                let event = match shared.repo.put_wal_streamed(c.stanza.as_str(), &record).await {
                    Ok(put) => {
                        debug!(stanza = %c.stanza, wal = %record.name, bytes = record.size, ?put, "partial segment stored");
                        JobEvent::Committed
                    }
                    Err(e) => {
                        warn!(stanza = %c.stanza, wal = %record.name, error = %e, "partial segment not stored");
                        JobEvent::Rejected(e.to_string())
                    }
                };
                (c.job.to_string(), event)
            }
            ArchivedUploadWork::Checkpoint(c) => {
                let checkpoint = strata_messages::to_owned::<strata_messages::BackupCheckpoint>(&c.checkpoint);
                let superseded = shared
                    .committed_until
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .get(c.stanza.as_str())
                    .is_some_and(|until| checkpoint.attempt_start < *until);
                if superseded {
                    debug!(stanza = %c.stanza, label = %checkpoint.label, "checkpoint of an attempt a committed backup superseded: dropped");
                    continue;
                }
                let packs: Vec<PackId> = c.packs.iter().copied().collect();
                match shared.repo.put_checkpoint(c.stanza.as_str(), &packs, &checkpoint).await {
                    Ok(()) => {
                        shared.metrics.commit(CommitKind::Checkpoint, CommitOutcome::Stored);
                        debug!(stanza = %c.stanza, label = %checkpoint.label, "checkpoint written")
                    }
                    Err(e) => {
                        shared.metrics.commit(CommitKind::Checkpoint, CommitOutcome::Refused);
                        warn!(stanza = %c.stanza, label = %checkpoint.label, error = %e, "checkpoint not written")
                    }
                }
                continue;
            }
            ArchivedUploadWork::Chunk(_) => unreachable!("only commits were queued"),
        };
        publish(shared, &job, &event).await;
    }
    if let Err(e) = shared.bus.flush().await {
        warn!(error = %e, "uploader could not flush confirmations");
    }
    // All at once: each ack waits for the bus's confirmation, and one after the other they cost a round
    // trip per chunk while the worker takes no new input.
    for acked in futures::future::join_all(batch.into_iter().map(|d| d.ack())).await {
        if let Err(e) = acked {
            shared.metrics.error(UploaderError::Ack);
            // Redelivery stores the chunk again (harmless) and confirms it again.
            warn!(error = %e, "uploader could not acknowledge a message");
        }
    }
}

/// Writes the WAL record a commit request carries (put-if-absent); the job to tell and what.
async fn commit_wal(shared: &Shared, payload: &[u8]) -> (String, JobEvent) {
    let Ok((ArchivedUploadWork::CommitWal(c), _)) = decode_upload(payload) else { unreachable!("a WAL commit, decoded above") };
    let record = strata_messages::to_owned::<strata_messages::WalRecord>(&c.record);
    strata_crashpoint::hit("uploader.before-wal-record");
    let put = shared.repo.put_wal(c.stanza.as_str(), &record).await;
    if put.is_ok() {
        // Archived, but archive-push not told: PostgreSQL will push the segment again.
        strata_crashpoint::hit("uploader.after-wal-record");
    }
    shared.metrics.commit(
        CommitKind::Wal,
        match &put {
            Ok(WalPut::Stored) => CommitOutcome::Stored,
            Ok(WalPut::AlreadyArchived) => CommitOutcome::AlreadyArchived,
            Err(_) => CommitOutcome::Refused,
        },
    );
    let event = match put {
        Ok(WalPut::Stored) => JobEvent::Committed,
        Ok(WalPut::AlreadyArchived) => JobEvent::AlreadyArchived,
        Err(e @ RepoError::WalConflict { .. }) => {
            error!(stanza = %c.stanza, wal = %record.name, "{e}");
            JobEvent::Rejected(e.to_string())
        }
        Err(e) => JobEvent::Rejected(e.to_string()),
    };
    (c.job.to_string(), event)
}

async fn drop_checkpoints(shared: &Shared, stanza: &str) {
    match shared.repo.checkpoints(stanza).await {
        Ok(list) => {
            for c in list {
                if let Err(e) = shared.repo.delete_checkpoint(stanza, &c.label).await {
                    warn!(stanza, label = %c.label, error = %e, "cannot remove a superseded checkpoint");
                }
            }
        }
        Err(e) => warn!(stanza, error = %e, "cannot list checkpoints"),
    }
}

/// Answers fetch requests: collectors have no repository access, so the reference manifest of a diff or
/// incr backup reaches them through an uploader, chunk by chunk, still sealed.
async fn serve_fetches(shared: Arc<Shared>, mut requests: Box<dyn strata_bus::EventStream>, cancel: CancellationToken) {
    loop {
        let payload = tokio::select! {
            _ = cancel.cancelled() => return,
            p = requests.next() => match p { Some(p) => p, None => return },
        };
        let req = match decode::<strata_messages::FetchRequest>(&payload) {
            Ok(r) => strata_messages::to_owned::<strata_messages::FetchRequest>(r),
            Err(e) => {
                warn!(error = %e, "ignoring a malformed fetch request");
                continue;
            }
        };
        for (index, chunk) in req.chunks.iter().enumerate() {
            let answer = match shared.repo.read_sealed(chunk).await {
                Ok(bytes) => strata_messages::FetchedChunk::Sealed { index: index as u32, bytes: bytes.to_vec() },
                Err(e) => strata_messages::FetchedChunk::Failed(e.to_string()),
            };
            let failed = matches!(answer, strata_messages::FetchedChunk::Failed(_));
            if failed {
                shared.metrics.error(UploaderError::Fetch);
            }
            if let Err(e) = shared.bus.publish_event(&req.reply, Bytes::from(encode(&answer))).await {
                shared.metrics.error(UploaderError::Fetch);
                warn!(error = %e, "uploader could not answer a fetch request");
                break;
            }
            if failed {
                break;
            }
        }
        let _ = shared.bus.flush().await;
    }
}

/// The plain bytes an upload message stands for (0 for commits and malformed messages), and whether it is
/// a commit: the last message of its job, after which waiting for more only delays the job's end.
fn classify(payload: &[u8]) -> (usize, bool) {
    match decode_upload(payload) {
        Ok((ArchivedUploadWork::Chunk(c), _)) => (c.raw_len.to_native() as usize, false),
        Ok((ArchivedUploadWork::CommitBackup(_) | ArchivedUploadWork::CommitWal(_) | ArchivedUploadWork::StreamedPartial(_), _)) => {
            (0, true)
        }
        _ => (0, false),
    }
}

async fn lookup(shared: &Shared, id: &[u8; 32]) -> Option<ChunkRef> {
    let mut guard = shared.index.lock().await;
    if guard.is_none() {
        let mut index = ChunkIndex::default();
        if let Err(e) = index.refresh(&shared.repo).await {
            // Without the index, deduplication is off for now; storing a chunk twice is only wasteful.
            warn!(error = %e, "uploader could not read the pack indexes; storing chunks without deduplication");
            return None;
        }
        info!(chunks = index.len(), "uploader loaded the repository's chunk index");
        *guard = Some(index);
    }
    guard.as_ref().and_then(|i| i.get(id).copied())
}

async fn publish(shared: &Shared, job: &str, event: &JobEvent) {
    if let Err(e) = shared.bus.publish_event(&subjects::job_events(job), Bytes::from(encode(event))).await {
        shared.metrics.error(UploaderError::Event);
        warn!(job, error = %e, "uploader could not send a job event");
    }
}
