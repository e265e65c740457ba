//! Archiving one WAL file (the work of `archive-push`): check it belongs to the stanza and is what its name
//! says, send it through the pipeline, and return only once the repository holds it.
//!
//! The checks come before anything is sent, because nothing archived is ever replaced: a segment stored
//! under another segment's name, or a garbage history file, would stay and block the real one forever.
//!
//! The file is hashed whole; its chunks go through the sealers to the uploaders like backup chunks (without
//! deduplication: WAL rarely repeats, and skipping the index keeps a push cheap), and the commit publishes a
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
use strata_messages::{ChunkRef, RestorePoint, WalRecord, WalSummary, WAL_RECORD_VERSION};
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
}

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
pub async fn push(bus: Arc<dyn Bus>, target: &WalPushTarget, settings: &WalPushSettings, file: WalFile) -> anyhow::Result<CommitOutcome> {
    push_seeded(bus, target, settings, file, Vec::new()).await
}

/// [`push`] of a file some of whose chunks are stored already (`seed`: a streamed segment's pieces that its
/// partials stored), which are then not sent again.
pub async fn push_seeded(
    bus: Arc<dyn Bus>,
    target: &WalPushTarget,
    settings: &WalPushSettings,
    file: WalFile,
    seed: Vec<ChunkRef>,
) -> anyhow::Result<CommitOutcome> {
    let WalFile { name, kind, data, .. } = file;
    // The summary is worked out while the chunks travel, so that it adds nothing to archive-push's time.
    let mut scan = None;
    if kind == WalFileKind::Segment {
        let (name, data) = (name.clone(), data.clone());
        scan = Some(tokio::task::spawn_blocking(move || summarize(&name, &data)));
    }
    let hash = settings.sealer.chunk_id(&data);
    let size = data.len() as u64;

    let job_id = format!("wal-{}-{:016x}", name.replace('.', "_"), rand::random::<u64>());
    let job = Job::start(bus, job_id, target.stanza.clone(), settings.compress_level, settings.sealer.clone(), settings.in_flight_bytes, settings.stall)
        .await?;
    job.seed(seed);
    let mut ids = Vec::new();
    for piece in data.chunks(settings.chunk_size) {
        ids.push(job.send(piece.to_vec(), false).await?);
    }
    drop(data);
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
