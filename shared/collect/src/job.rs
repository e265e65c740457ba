//! The sending side of the pipeline: one job (a backup, or one WAL file) pushing chunks and waiting until
//! uploaders confirm them.
//!
//! A [`Job`] publishes each distinct chunk once on the `Seal` queue and tracks it until a
//! [`JobEvent::Stored`] confirmation names it. The bytes it may have unconfirmed are bounded
//! (`pipeline.in_flight_bytes`), which bounds memory in every stage and in the bus. Confirmations are events
//! and may be lost; the job does not rely on them arriving but on their arriving *in time*: when nothing is
//! confirmed for `pipeline.stall_timeout_secs` the job fails, naming what it was waiting for. Nothing is
//! committed by a failed job, so the repository only gains unreferenced packs.

use strata_seal::Sealer;
use bytes::Bytes;
use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use strata_bus::{Bus, EventStream, Queue};
use strata_messages::{
    decode, encode_upload, subjects, ArchivedJobEvent, ChunkId, ChunkRef, CommitBackup, CommitWal, JobEvent, PackId,
    PlainChunk, SealedChunk, UploadWork, FORMAT_VERSION, UPLOAD_WORK_VERSION,
};
use tokio::sync::{Notify, Semaphore};

/// Accounting unit of the in-flight window: one page.
const PERMIT_BYTES: usize = 8192;

#[derive(Debug, thiserror::Error)]
pub enum JobError {
    #[error("no chunk of this job was confirmed stored for {secs} s ({pending} chunks waiting); are the sealer and uploader running and the repository writable?")]
    Stalled { secs: u64, pending: usize },
    #[error("{0}")]
    Rejected(String),
    #[error(transparent)]
    Bus(#[from] strata_bus::BusError),
}

/// How a commit ended.
#[derive(Debug, PartialEq, Eq)]
pub enum CommitOutcome {
    Committed,
    AlreadyArchived,
}

/// A chunk sent and not yet confirmed stored.
struct Pending {
    /// In-flight window permits it holds.
    permits: u32,
    /// The message, kept to be sent again if the bus may have lost it; `None` on a bus that loses nothing
    /// and while it is being published.
    resend: Option<(Queue, Bytes)>,
}

#[derive(Default)]
struct State {
    /// Sent, not yet confirmed.
    pending: HashMap<ChunkId, Pending>,
    stored: HashMap<ChunkId, ChunkRef>,
    written_bytes: u64,
    failure: Option<String>,
    commit: Option<Result<CommitOutcome, String>>,
    last_progress: Option<Instant>,
}

pub struct Job {
    bus: Arc<dyn Bus>,
    id: String,
    stanza: String,
    compress_level: i8,
    /// Names chunks (a keyed hash in an encrypted repository) and seals the ones sent sealed.
    sealer: Sealer,
    stall: Duration,
    window: Arc<Semaphore>,
    state: Arc<Mutex<State>>,
    changed: Arc<Notify>,
    sent_bytes: std::sync::atomic::AtomicU64,
    /// The collector's metrics, which this job's chunks are added to as well.
    counters: Option<Arc<crate::metrics::SentCounters>>,
    listener: tokio::task::JoinHandle<()>,
    /// Sends unconfirmed chunks again when the job stalls (only on a bus that may lose them).
    resender: Option<tokio::task::JoinHandle<()>>,
}

impl Drop for Job {
    fn drop(&mut self) {
        self.listener.abort();
        if let Some(r) = &self.resender {
            r.abort();
        }
    }
}

impl Job {
    /// Starts listening for the job's confirmations; call before sending anything.
    pub async fn start(
        bus: Arc<dyn Bus>,
        id: String,
        stanza: String,
        compress_level: i32,
        sealer: Sealer,
        in_flight_bytes: usize,
        stall: Duration,
    ) -> Result<Job, JobError> {
        let events = bus.subscribe(&subjects::job_events(&id), None).await?;
        let state = Arc::new(Mutex::new(State { last_progress: Some(Instant::now()), ..State::default() }));
        let changed = Arc::new(Notify::new());
        let window_permits = (in_flight_bytes / PERMIT_BYTES).max(1);
        let window = Arc::new(Semaphore::new(window_permits));
        let listener = tokio::spawn(listen(events, state.clone(), changed.clone(), window.clone()));
        let resender = bus
            .transient_may_be_lost()
            .then(|| tokio::spawn(resend_when_stalled(bus.clone(), state.clone(), resend_after(stall))));
        Ok(Job {
            bus,
            id,
            stanza,
            compress_level: compress_level.clamp(0, 22) as i8,
            sealer,
            stall,
            window,
            state,
            changed,
            sent_bytes: 0.into(),
            counters: None,
            listener,
            resender,
        })
    }

    pub fn id(&self) -> &str {
        &self.id
    }

    /// Adds every chunk this job publishes (and its plain bytes) to `counters` too.
    pub fn count_into(&mut self, counters: Arc<crate::metrics::SentCounters>) {
        self.counters = Some(counters);
    }

    /// The id of a chunk with these plain bytes in the job's repository.
    pub fn chunk_id(&self, plain: &[u8]) -> ChunkId {
        self.sealer.chunk_id(plain)
    }

    /// The key of the keyed hash that names chunks, when the repository is encrypted.
    pub fn id_key(&self) -> Option<&[u8; 32]> {
        self.sealer.id_key()
    }

    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    pub fn bus(&self) -> &dyn Bus {
        &*self.bus
    }

    /// Treats these chunks as already stored: a chunk with one of these ids is not sent again. Used to
    /// resume after a failed backup whose confirmed chunks are in the repository. Safe even if one has
    /// since disappeared: the commit checks every referenced pack exists and refuses otherwise.
    pub fn seed(&self, stored: impl IntoIterator<Item = ChunkRef>) {
        let mut s = self.state.lock().expect("job state");
        for r in stored {
            s.stored.entry(r.id).or_insert(r);
        }
    }

    /// Every chunk confirmed stored (or seeded) so far.
    pub fn stored(&self) -> Vec<ChunkRef> {
        self.state.lock().expect("job state").stored.values().copied().collect()
    }

    /// Plain bytes published so far.
    pub fn sent_bytes(&self) -> u64 {
        self.sent_bytes.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Sealed bytes uploaders wrote for this job (chunks they already had are not counted).
    pub fn written_bytes(&self) -> u64 {
        self.state.lock().expect("job state").written_bytes
    }

    /// Sends a chunk unless this job already sent the same content; returns its id. Waits while the
    /// in-flight window is full.
    pub async fn send(&self, data: Vec<u8>, dedup: bool) -> Result<ChunkId, JobError> {
        let id = self.sealer.chunk_id(&data);
        self.send_plain(data, id, dedup).await
    }

    /// [`Job::send`] of a chunk whose id the caller computed already (it must be [`Job::chunk_id`] of
    /// `data`: the sealer does not check it, restore does).
    pub async fn send_hashed(&self, data: Vec<u8>, id: ChunkId) -> Result<ChunkId, JobError> {
        debug_assert_eq!(id, self.sealer.chunk_id(&data));
        self.send_plain(data, id, true).await
    }

    /// Like [`Job::send`], but seals the chunk here and hands it straight to the uploaders, so it does not
    /// wait behind the data queued for the sealers. For small metadata that must be stored promptly
    /// (checkpoints): sealing it costs this process little.
    pub async fn send_sealed(&self, data: Vec<u8>) -> Result<ChunkId, JobError> {
        let id = self.sealer.chunk_id(&data);
        let message = self.sealed_message(id, &data);
        self.send_message(id, data.len(), Queue::Upload, move || message).await
    }

    /// The upload message of a chunk sealed by the caller ([`Job::send_presealed`]): compresses `plain`
    /// straight into the message's buffer, which is blocking work (call it on a blocking thread).
    pub fn sealed_message(&self, id: ChunkId, plain: &[u8]) -> Vec<u8> {
        self.sealed_message_for(id, plain, true)
    }

    /// [`Job::sealed_message`], saying whether the uploader should look for the chunk in the repository
    /// first (`dedup`; WAL chunks are not looked for: WAL rarely repeats, and the index costs).
    pub fn sealed_message_for(&self, id: ChunkId, plain: &[u8], dedup: bool) -> Vec<u8> {
        // The sealed bytes, then the header fields and rkyv's padding.
        let mut message = Vec::with_capacity(strata_seal::sealed_bound(plain.len()) + 512);
        let sealed_len = self.sealer.seal_into(plain, i32::from(self.compress_level), &mut message);
        let msg = SealedChunk {
            version: UPLOAD_WORK_VERSION,
            job: self.id.clone(),
            stanza: self.stanza.clone(),
            id,
            dedup,
            raw_len: plain.len() as u32,
            sealed_len: sealed_len as u32,
        };
        encode_upload(&UploadWork::Chunk(msg), message)
    }

    /// Sends a chunk of `raw_len` plain bytes that the caller sealed with [`Job::sealed_message`] straight
    /// to the uploaders.
    pub async fn send_presealed(&self, id: ChunkId, raw_len: usize, message: Vec<u8>) -> Result<ChunkId, JobError> {
        self.send_message(id, raw_len, Queue::Upload, move || message).await
    }

    async fn send_plain(&self, data: Vec<u8>, id: ChunkId, dedup: bool) -> Result<ChunkId, JobError> {
        let header = PlainChunk {
            version: FORMAT_VERSION,
            job: self.id.clone(),
            stanza: self.stanza.clone(),
            id,
            dedup,
            compress_level: self.compress_level,
            data_len: 0,
        };
        let len = data.len();
        self.send_message(id, len, Queue::Seal, move || strata_messages::encode_plain_chunk(header, data)).await
    }

    /// Publishes the message `make` builds for chunk `id` of `plain_len` bytes on `queue`, unless this job
    /// already sent the same content. Waits while the in-flight window is full.
    async fn send_message(
        &self,
        id: ChunkId,
        plain_len: usize,
        queue: Queue,
        make: impl FnOnce() -> Vec<u8>,
    ) -> Result<ChunkId, JobError> {
        let permits = plain_len.div_ceil(PERMIT_BYTES).max(1) as u32;
        {
            let mut s = self.state.lock().expect("job state");
            if s.stored.contains_key(&id) || s.pending.contains_key(&id) {
                return Ok(id);
            }
            // Reserve the id now so a concurrent sender of the same content doesn't publish it twice.
            s.pending.insert(id, Pending { permits: 0, resend: None });
        }
        let permit = loop {
            self.check_failed()?;
            match tokio::time::timeout(Duration::from_secs(1), self.window.acquire_many(permits)).await {
                Ok(p) => break p.expect("window semaphore is never closed"),
                Err(_) => self.check_stalled()?,
            }
        };
        permit.forget();
        let message = Bytes::from(make());
        let keep = self.bus.transient_may_be_lost().then(|| (queue, message.clone()));
        self.state.lock().expect("job state").pending.insert(id, Pending { permits, resend: keep });
        // Transient: the bus does not store chunks (see Bus::publish_transient); this job keeps each until
        // it is confirmed, and the resender sends again what the bus may have lost.
        if let Err(e) = self.bus.publish_transient(queue, message).await {
            let mut s = self.state.lock().expect("job state");
            s.pending.remove(&id);
            self.window.add_permits(permits as usize);
            return Err(e.into());
        }
        self.sent_bytes.fetch_add(plain_len as u64, std::sync::atomic::Ordering::Relaxed);
        if let Some(c) = &self.counters {
            c.add(plain_len as u64);
        }
        Ok(id)
    }

    /// Waits until every chunk sent so far is confirmed stored.
    pub async fn wait_stored(&self) -> Result<(), JobError> {
        loop {
            let notified = self.changed.notified();
            {
                let s = self.state.lock().expect("job state");
                if let Some(f) = &s.failure {
                    return Err(JobError::Rejected(f.clone()));
                }
                if s.pending.is_empty() {
                    return Ok(());
                }
            }
            if tokio::time::timeout(Duration::from_secs(1), notified).await.is_err() {
                self.check_stalled()?;
            }
        }
    }

    /// Where a confirmed chunk is stored.
    pub fn location(&self, id: &ChunkId) -> Option<ChunkRef> {
        self.state.lock().expect("job state").stored.get(id).copied()
    }

    /// Every pack holding a chunk of this job.
    pub fn packs(&self) -> Vec<PackId> {
        let s = self.state.lock().expect("job state");
        s.stored.values().map(|r| r.pack).collect::<HashSet<_>>().into_iter().collect()
    }

    pub async fn commit_backup(&self, packs: Vec<PackId>, record: strata_messages::BackupRecord) -> Result<CommitOutcome, JobError> {
        let work = UploadWork::CommitBackup(CommitBackup {
            version: UPLOAD_WORK_VERSION,
            job: self.id.clone(),
            stanza: self.stanza.clone(),
            packs,
            record,
        });
        self.commit(work).await
    }

    /// Asks an uploader to record a checkpoint of this backup; nobody answers.
    pub async fn checkpoint(&self, packs: Vec<PackId>, checkpoint: strata_messages::BackupCheckpoint) -> Result<(), JobError> {
        let work = UploadWork::Checkpoint(strata_messages::CheckpointBackup {
            version: UPLOAD_WORK_VERSION,
            stanza: self.stanza.clone(),
            packs,
            checkpoint,
        });
        self.bus.publish_commit(Bytes::from(encode_upload(&work, Vec::new()))).await?;
        Ok(())
    }

    pub async fn commit_wal(&self, record: strata_messages::WalRecord) -> Result<CommitOutcome, JobError> {
        let work = UploadWork::CommitWal(CommitWal {
            version: UPLOAD_WORK_VERSION,
            job: self.id.clone(),
            stanza: self.stanza.clone(),
            record,
        });
        self.commit(work).await
    }

    /// Stores the streamed part of a segment still being written (see `strata_repo::wal_stream`).
    pub async fn commit_wal_streamed(&self, record: strata_messages::WalRecord) -> Result<CommitOutcome, JobError> {
        let work = UploadWork::StreamedPartial(CommitWal {
            version: UPLOAD_WORK_VERSION,
            job: self.id.clone(),
            stanza: self.stanza.clone(),
            record,
        });
        self.commit(work).await
    }

    async fn commit(&self, work: UploadWork) -> Result<CommitOutcome, JobError> {
        self.state.lock().expect("job state").last_progress = Some(Instant::now());
        self.bus.publish_commit(Bytes::from(encode_upload(&work, Vec::new()))).await?;
        loop {
            let notified = self.changed.notified();
            {
                let mut s = self.state.lock().expect("job state");
                if let Some(outcome) = s.commit.take() {
                    return outcome.map_err(JobError::Rejected);
                }
                if let Some(f) = &s.failure {
                    return Err(JobError::Rejected(f.clone()));
                }
            }
            if tokio::time::timeout(Duration::from_secs(1), notified).await.is_err() {
                self.check_stalled()?;
            }
        }
    }

    fn check_failed(&self) -> Result<(), JobError> {
        match &self.state.lock().expect("job state").failure {
            Some(f) => Err(JobError::Rejected(f.clone())),
            None => Ok(()),
        }
    }

    /// Fails when the job has failed, or has chunks waiting and none was confirmed for the stall timeout:
    /// for callers that wait on something else meanwhile (the collector waiting for WAL to be archived,
    /// which goes through the same stages).
    pub fn check_pending(&self) -> Result<(), JobError> {
        if self.state.lock().expect("job state").pending.is_empty() {
            return self.check_failed();
        }
        self.check_stalled()
    }

    fn check_stalled(&self) -> Result<(), JobError> {
        let s = self.state.lock().expect("job state");
        if let Some(f) = &s.failure {
            return Err(JobError::Rejected(f.clone()));
        }
        let since = s.last_progress.map(|t| t.elapsed()).unwrap_or_default();
        if since >= self.stall {
            return Err(JobError::Stalled { secs: since.as_secs(), pending: s.pending.len() });
        }
        Ok(())
    }
}

/// How long the job waits without any confirmation before it sends its unconfirmed chunks again: a quarter
/// of the stall timeout, at most 5 s. Confirmations flow every few milliseconds while chunks move, so a
/// pause this long means chunks were lost on the way (a sealer or uploader died, a nats-server of the
/// cluster died, a connection was dropped), or the stages are very slow, where a second copy costs work
/// but no correctness.
fn resend_after(stall: Duration) -> Duration {
    (stall / 4).clamp(Duration::from_millis(500), Duration::from_secs(5))
}

/// Sends every unconfirmed chunk again each time no confirmation arrived for `after` (doubling while
/// nothing comes back). Stages tolerate a message twice; the uploader stores a chunk once and the job
/// takes the first confirmation. The job's stall timeout still decides when to give up.
async fn resend_when_stalled(bus: Arc<dyn Bus>, state: Arc<Mutex<State>>, after: Duration) {
    let mut wait = after;
    let mut last_resend: Option<Instant> = None;
    loop {
        tokio::time::sleep(after / 4).await;
        let due = {
            let s = state.lock().expect("job state");
            let quiet = s.last_progress.map(|t| t.elapsed()).unwrap_or_default();
            let since_resend = last_resend.map(|t| t.elapsed()).unwrap_or(Duration::MAX);
            if quiet < after {
                wait = after;
            }
            if s.pending.is_empty() || quiet < wait || since_resend < wait {
                continue;
            }
            s.pending.values().filter_map(|p| p.resend.clone()).collect::<Vec<_>>()
        };
        tracing::warn!(chunks = due.len(), quiet_ms = wait.as_millis() as u64, "no chunk confirmed for a while; sending the unconfirmed ones again");
        for (queue, message) in due {
            if let Err(e) = bus.publish_transient(queue, message).await {
                tracing::warn!(error = %e, "could not send a chunk again");
            }
        }
        last_resend = Some(Instant::now());
        wait = (wait * 2).min(after * 8);
    }
}

async fn listen(mut events: Box<dyn EventStream>, state: Arc<Mutex<State>>, changed: Arc<Notify>, window: Arc<Semaphore>) {
    while let Some(payload) = events.next().await {
        let Ok(event) = decode::<JobEvent>(&payload) else {
            tracing::warn!("ignoring a malformed job event");
            continue;
        };
        let mut s = state.lock().expect("job state");
        s.last_progress = Some(Instant::now());
        match event {
            ArchivedJobEvent::Stored { chunks, written_bytes } => {
                s.written_bytes += written_bytes.to_native();
                for c in chunks.iter() {
                    let r = strata_messages::to_owned::<ChunkRef>(c);
                    // A redelivered chunk may be confirmed twice; only the first releases its permits.
                    if let Some(p) = s.pending.remove(&r.id) {
                        window.add_permits(p.permits as usize);
                    }
                    s.stored.entry(r.id).or_insert(r);
                }
            }
            ArchivedJobEvent::Committed => s.commit = Some(Ok(CommitOutcome::Committed)),
            ArchivedJobEvent::AlreadyArchived => s.commit = Some(Ok(CommitOutcome::AlreadyArchived)),
            ArchivedJobEvent::Rejected(reason) => {
                if s.commit.is_none() && s.failure.is_none() {
                    s.failure = Some(reason.to_string());
                }
            }
        }
        drop(s);
        changed.notify_waiters();
    }
}
