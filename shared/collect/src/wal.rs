//! Archiving one WAL file (the work of `archive-push`): check it belongs to the stanza and is what its name
//! says, send it through the pipeline, and return only once the repository holds it.
//!
//! The checks come before anything is sent, because nothing archived is ever replaced: a segment stored
//! under another segment's name, or a garbage history file, would stay and block the real one forever.
//!
//! The file is hashed whole; its chunks go through the sealers to the uploaders like backup chunks (without
//! deduplication: WAL rarely repeats, and skipping the index keeps a push cheap), or, with
//! [`WalPushSettings::seal_here`], are sealed by the pushing task itself in the same pass over the data that
//! hashes the file and names the chunks (the stored hash and ids are the same), and the commit publishes a
//! WAL record with put-if-absent. Pushing a name again succeeds only if the content is identical; a different
//! content is refused and the archived copy stays as it is, as pgBackRest does.
//!
//! A segment's record also carries its summary ([`summarize`]): the commits, aborts and restore points in
//! it, which restore, check and info use to tell which segment a recovery target needs. The segment is
//! walked here, once, because this is the only time Strata holds it whole; a segment whose records cannot
//! be walked is archived anyway (archiving must not fail over a diagnostic), without a summary.

use crate::job::{CommitOutcome, Job};
use anyhow::Context;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use strata_bus::Bus;
use strata_messages::{ChunkId, ChunkRef, RestorePoint, WalRecord, WalSummary, WAL_RECORD_VERSION};
use strata_pg::backup_history::check_backup_history;
use strata_pg::timeline::TimelineHistory;
use strata_pg::wal::{check_segment, wal_file_kind, NotAWalFileName, SegmentOwner, WalFileKind};
use strata_pg::TimelineId;
use strata_pg::walscan::{scan_segment, WalEvent};
use tracing::warn;

/// The stanza [`read`] checks a file against.
pub struct WalPushTarget {
    pub stanza: String,
    pub system_id: u64,
    pub pg_major: u32,
    pub wal_segment_size: u64,
}

pub struct WalPushSettings {
    pub chunk_size: usize,
    pub compress_level: i32,
    pub in_flight_bytes: usize,
    pub stall: Duration,
    /// The repository's sealer: names chunks (and the file's hash) with its keyed hash when encrypted.
    pub sealer: strata_seal::Sealer,
    /// `Some`: seal the chunks here, on blocking threads (as many at once as the slots allow, oldest file
    /// first), and hand them sealed to the uploaders. For the single-host mode, where the sealer stage is
    /// a thread hop and a copy away in the same process. `None`: send them plain to the sealers, which a
    /// fleet runs on other hosts so that compression does not load the database host.
    pub seal_here: Option<Arc<SealSlots>>,
}

/// The threads that may seal WAL files at once, given to the waiting file that sorts first by name. The
/// archiver asks for segments in name order and waits for each: a fair (first come) queue served them in
/// the order their reads finished, and the segment the archiver waited for could come last of sixteen.
pub struct SealSlots {
    state: std::sync::Mutex<SlotState>,
    freed: tokio::sync::Notify,
}

struct SlotState {
    free: usize,
    /// Names waiting for a slot, with a count (a name pushed twice at once waits twice).
    waiting: std::collections::BTreeMap<String, usize>,
}

/// A slot held; given back when dropped.
pub struct SealSlot<'a>(&'a SealSlots);

impl Drop for SealSlot<'_> {
    fn drop(&mut self) {
        self.0.state.lock().expect("seal slots").free += 1;
        self.0.freed.notify_waiters();
    }
}

/// Removes a waiter's name when it stops waiting (given a slot, or cancelled).
struct Waiting<'a>(&'a SealSlots, &'a str);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let mut s = self.0.state.lock().expect("seal slots");
        if let Some(n) = s.waiting.get_mut(self.1) {
            *n -= 1;
            if *n == 0 {
                s.waiting.remove(self.1);
            }
        }
        drop(s);
        // The next in line may be this one's successor.
        self.0.freed.notify_waiters();
    }
}

/// A place in the line for a file not read yet ([`SealSlots::reserve`]); leaves the line when dropped.
pub struct SealTicket {
    slots: Arc<SealSlots>,
    name: String,
}

impl Drop for SealTicket {
    fn drop(&mut self) {
        drop(Waiting(&self.slots, &self.name));
    }
}

impl SealSlots {
    /// Puts `name` in the line now, before its file is read: the files read first would otherwise take
    /// the slots before an older one that was still being read. Drop the ticket once the file has its
    /// slot (held longer, it keeps every later file waiting), or when its push fails before that.
    pub fn reserve(self: &Arc<Self>, name: &str) -> SealTicket {
        *self.state.lock().expect("seal slots").waiting.entry(name.to_string()).or_default() += 1;
        SealTicket { slots: self.clone(), name: name.to_string() }
    }

    pub fn new(slots: usize) -> Self {
        SealSlots {
            state: std::sync::Mutex::new(SlotState { free: slots.max(1), waiting: Default::default() }),
            freed: tokio::sync::Notify::new(),
        }
    }

    /// Waits until a slot is free and no file waiting sorts before `name`.
    pub async fn acquire(&self, name: &str) -> SealSlot<'_> {
        *self.state.lock().expect("seal slots").waiting.entry(name.to_string()).or_default() += 1;
        let waiting = Waiting(self, name);
        loop {
            let freed = self.freed.notified();
            {
                let mut s = self.state.lock().expect("seal slots");
                let first = s.waiting.keys().next().map(String::as_str) == Some(name);
                if s.free > 0 && first {
                    s.free -= 1;
                    drop(s);
                    drop(waiting);
                    return SealSlot(self);
                }
            }
            freed.await;
        }
    }
}

/// The bytes hashed at a time when a chunk's id and the file's hash are computed together: small enough
/// that the second hasher reads them from the CPU's cache, large enough for BLAKE3's widest SIMD.
const HASH_BLOCK: usize = 64 * 1024;

/// A WAL file read and checked against its name and the stanza, ready to be pushed.
pub struct WalFile {
    pub name: String,
    pub kind: WalFileKind,
    data: Arc<Vec<u8>>,
    /// For a history file, the history it holds.
    pub history: Option<TimelineHistory>,
}

/// Reads the WAL file at `path` and checks it is what its name says: a WAL file name; a segment's (or
/// `.partial` segment's) page headers against its name and the stanza; a history or backup history file's
/// syntax. Errors quote names and paths escaped, so each is one line whatever the name holds.
pub async fn read(path: &Path, target: &WalPushTarget) -> anyhow::Result<WalFile> {
    let not_wal = || NotAWalFileName(path.file_name().unwrap_or(path.as_os_str()).to_string_lossy().into_owned());
    let name = path.file_name().and_then(|n| n.to_str()).ok_or_else(not_wal)?;
    wal_file_kind(name)?;
    let data = tokio::fs::read(path).await.with_context(|| format!("cannot read {path:?}"))?;
    from_bytes(name.to_string(), data, target)
}

/// [`read`] of a file already in memory (a segment `strata wal-stream` received whole).
pub fn from_bytes(name: String, data: Vec<u8>, target: &WalPushTarget) -> anyhow::Result<WalFile> {
    let kind = wal_file_kind(&name)?;
    let refused = || format!("{name} is refused for stanza '{}'", target.stanza);
    let mut history = None;
    match kind {
        WalFileKind::Segment | WalFileKind::Partial => {
            let owner = SegmentOwner { system_id: target.system_id, pg_major: target.pg_major, seg_size: target.wal_segment_size };
            check_segment(&name, &data, &owner).with_context(refused)?;
        }
        WalFileKind::History => {
            let timeline = TimelineId::from_str_radix(&name[..8], 16).expect("a history file name is 8 hex digits");
            history = Some(TimelineHistory::parse_file(timeline, &data).with_context(refused)?);
        }
        WalFileKind::BackupHistory => {
            check_backup_history(&name, &data, target.wal_segment_size).with_context(refused)?;
        }
    }
    Ok(WalFile { name, kind, data: Arc::new(data), history })
}

/// Archives a file [`read`] checked. Returns whether it was already archived with the same content.
/// `slot`: with [`WalPushSettings::seal_here`], the slot the caller took before reading the file (taken
/// here when `None`); it is given back once the file is sealed.
pub async fn push(
    bus: Arc<dyn Bus>,
    target: &WalPushTarget,
    settings: &WalPushSettings,
    file: WalFile,
    slot: Option<SealSlot<'_>>,
) -> anyhow::Result<CommitOutcome> {
    push_seeded(bus, target, settings, file, slot, Vec::new()).await
}

/// [`push`] of a file some of whose chunks are stored already (`seed`: a streamed segment's pieces that its
/// partials stored), which are then not sent again.
#[tracing::instrument(name = "wal_push", skip_all, fields(stanza = %target.stanza, segment = %file.name))]
pub async fn push_seeded(
    bus: Arc<dyn Bus>,
    target: &WalPushTarget,
    settings: &WalPushSettings,
    file: WalFile,
    slot: Option<SealSlot<'_>>,
    seed: Vec<ChunkRef>,
) -> anyhow::Result<CommitOutcome> {
    let WalFile { name, kind, data, .. } = file;
    // The summary is worked out while the chunks travel, so that it adds nothing to archive-push's time.
    let mut scan = None;
    if kind == WalFileKind::Segment {
        let (name, data) = (name.clone(), data.clone());
        scan = Some(tokio::task::spawn_blocking(move || summarize(&name, &data)));
    }
    let size = data.len() as u64;

    let job_id = format!("wal-{}-{:016x}", name.replace('.', "_"), rand::random::<u64>());
    let job = Job::start(bus, job_id, target.stanza.clone(), settings.compress_level, settings.sealer.clone(), settings.in_flight_bytes, settings.stall)
        .await?;
    job.seed(seed);
    let job = Arc::new(job);
    let mut ids = Vec::new();
    let hash = match &settings.seal_here {
        Some(slots) => {
            let thread = match slot {
                Some(slot) => slot,
                None => slots.acquire(&name).await,
            };
            let (sealing, chunk_size) = (job.clone(), settings.chunk_size);
            let (hash, sealed) = tokio::task::spawn_blocking(move || seal_file(&sealing, &data, chunk_size))
                .await
                .expect("the WAL sealing task panicked");
            drop(thread);
            for (id, len, message) in sealed {
                ids.push(job.send_presealed(id, len, message).await?);
            }
            hash
        }
        None => {
            let hash = settings.sealer.chunk_id(&data);
            for piece in data.chunks(settings.chunk_size) {
                ids.push(job.send(piece.to_vec(), false).await?);
            }
            drop(data);
            hash
        }
    };
    job.wait_stored().await?;
    let summary = match scan {
        Some(task) => task.await.expect("the WAL summary task panicked"),
        None => None,
    };
    let chunks = ids
        .iter()
        .map(|id| job.location(id).expect("every chunk was confirmed"))
        .collect();
    let record = WalRecord { version: WAL_RECORD_VERSION, name: name.clone(), size, hash, chunks, summary };
    let outcome = job.commit_wal(record).await?;
    Ok(outcome)
}

/// The file's hash and its chunks sealed (id, plain length, upload message), in one pass over the data:
/// each block is hashed for the chunk's id and for the file's hash while it is in the cache, and each
/// chunk is compressed right after it was hashed. Blocking work.
fn seal_file(job: &Job, data: &[u8], chunk_size: usize) -> ([u8; 32], Vec<(ChunkId, usize, Vec<u8>)>) {
    let mut file = job.sealer().id_hasher();
    let mut sealed = Vec::with_capacity(data.len().div_ceil(chunk_size));
    for piece in data.chunks(chunk_size) {
        let mut chunk = job.sealer().id_hasher();
        for block in piece.chunks(HASH_BLOCK) {
            chunk.update(block);
            file.update(block);
        }
        let id = *chunk.finalize().as_bytes();
        sealed.push((id, piece.len(), job.sealed_message_for(id, piece, false)));
    }
    (*file.finalize().as_bytes(), sealed)
}

/// The segment's summary (see the module docs), or `None` when its records cannot be walked.
pub fn summarize(name: &str, data: &[u8]) -> Option<WalSummary> {
    let scan = match scan_segment(data) {
        Ok(scan) => scan,
        Err(e) => {
            warn!(segment = %name, error = %e, "cannot walk the segment's records; archived without a summary");
            return None;
        }
    };
    let mut s = WalSummary {
        last_start: scan.last_start.0,
        head: scan.head,
        tail: scan.tail,
        tail_lsn: scan.tail_lsn.0,
        switched: scan.switched,
        ..WalSummary::default()
    };
    let mut xids = Vec::new();
    for e in scan.events {
        match e {
            WalEvent::XactEnd { xid, time, .. } => {
                xids.push(xid);
                s.xact_ends += 1;
                s.first_time = if s.first_time == 0 { time } else { s.first_time.min(time) };
                s.last_time = s.last_time.max(time);
            }
            WalEvent::RestorePoint { lsn, name, time } => s.restore_points.push(RestorePoint { name, time, lsn: lsn.0 }),
        }
    }
    s.xids = WalSummary::xid_runs(xids);
    Some(s)
}

#[cfg(test)]
mod tests {
    use super::SealSlots;
    use std::sync::{Arc, Mutex};

    /// Files waiting for a slot get it by name, whatever order they came in.
    #[tokio::test]
    async fn seal_slots_serve_the_first_name_first() {
        let slots = Arc::new(SealSlots::new(1));
        let held = slots.acquire("000000010000000000000009").await;
        let order = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for name in ["000000010000000000000005", "000000010000000000000003", "000000010000000000000004"] {
            let (slots, order) = (slots.clone(), order.clone());
            tasks.push(tokio::spawn(async move {
                let _slot = slots.acquire(name).await;
                order.lock().unwrap().push(name);
                tokio::task::yield_now().await;
            }));
        }
        // All three wait before the slot frees.
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        drop(held);
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*order.lock().unwrap(), ["000000010000000000000003", "000000010000000000000004", "000000010000000000000005"]);
    }

    /// A file reserved first is served first, even if another asks for a slot before it does.
    #[tokio::test]
    async fn a_reserved_name_keeps_its_place() {
        let slots = Arc::new(SealSlots::new(1));
        let ticket = slots.reserve("a");
        let late = {
            let slots = slots.clone();
            tokio::spawn(async move {
                let _slot = slots.acquire("b").await;
            })
        };
        for _ in 0..50 {
            tokio::task::yield_now().await;
        }
        assert!(!late.is_finished(), "b waits for a");
        {
            let _slot = slots.acquire("a").await;
        }
        drop(ticket);
        tokio::time::timeout(std::time::Duration::from_secs(5), late).await.expect("b gets the slot").unwrap();
    }

    /// A waiter that gives up does not block the ones after it.
    #[tokio::test]
    async fn a_cancelled_waiter_leaves_the_line() {
        let slots = Arc::new(SealSlots::new(1));
        let held = slots.acquire("b").await;
        let first = {
            let slots = slots.clone();
            tokio::spawn(async move {
                let _slot = slots.acquire("a").await;
            })
        };
        tokio::task::yield_now().await;
        first.abort();
        let _ = first.await;
        drop(held);
        tokio::time::timeout(std::time::Duration::from_secs(5), slots.acquire("c")).await.expect("c gets the slot");
    }
}
