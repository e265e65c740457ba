//! Archiving one WAL file (the work of `archive-push`): check it belongs to the stanza, send it through the
//! pipeline, and return only once the repository holds it.
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
use anyhow::{bail, Context};
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use strata_bus::Bus;
use strata_messages::{RestorePoint, WalRecord, WalSummary, WAL_RECORD_VERSION};
use strata_pg::wal::{classify_wal_file, magic_to_major_version, parse_long_header, WalFileKind};
use strata_pg::walscan::{scan_segment, WalEvent};
use tracing::warn;

/// What `push` checks a segment against.
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

/// Archives the WAL file at `path`. Returns whether it was already archived with the same content.
pub async fn push(
    bus: Arc<dyn Bus>,
    target: &WalPushTarget,
    settings: &WalPushSettings,
    path: &Path,
) -> anyhow::Result<CommitOutcome> {
    let name = path
        .file_name()
        .and_then(|n| n.to_str())
        .with_context(|| format!("{} has no file name", path.display()))?
        .to_string();
    let kind = classify_wal_file(&name)
        .with_context(|| format!("{name} is not a WAL segment, history or backup history file name"))?;
    let data = Arc::new(tokio::fs::read(path).await.with_context(|| format!("cannot read {}", path.display()))?);
    // The summary is worked out while the chunks travel, so that it adds nothing to archive-push's time.
    let mut scan = None;
    if kind == WalFileKind::Segment {
        check_segment(&name, &data, target)?;
        let (name, data) = (name.clone(), data.clone());
        scan = Some(tokio::task::spawn_blocking(move || summarize(&name, &data)));
    }
    let hash = settings.sealer.chunk_id(&data);
    let size = data.len() as u64;

    let job_id = format!("wal-{}-{:016x}", name.replace('.', "_"), rand::random::<u64>());
    let job = Job::start(bus, job_id, target.stanza.clone(), settings.compress_level, settings.sealer.clone(), settings.in_flight_bytes, settings.stall)
        .await?;
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

/// Refuses a segment from another cluster or PostgreSQL version, like pgBackRest's archive checks: a WAL
/// file pushed into the wrong stanza would make every later restore of it fail.
fn check_segment(name: &str, data: &[u8], target: &WalPushTarget) -> anyhow::Result<()> {
    if data.len() as u64 != target.wal_segment_size {
        bail!(
            "{name} is {} bytes but the stanza's WAL segments are {} bytes",
            data.len(),
            target.wal_segment_size
        );
    }
    let header = parse_long_header(data).with_context(|| format!("{name} does not start with a WAL page header"))?;
    let major = magic_to_major_version(header.magic);
    if major != Some(target.pg_major) {
        bail!(
            "{name} was written by PostgreSQL {} but stanza '{}' is for PostgreSQL {}",
            major.map(|m| m.to_string()).unwrap_or_else(|| format!("(unknown WAL magic {:#x})", header.magic)),
            target.stanza,
            target.pg_major
        );
    }
    if header.system_id != target.system_id {
        bail!(
            "{name} belongs to database system {} but stanza '{}' is for system {}",
            header.system_id,
            target.stanza,
            target.system_id
        );
    }
    Ok(())
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
