//! WAL streaming (`strata wal-stream`): WAL read from a replication slot over the physical replication
//! protocol, as pg_receivewal and Barman do, and stored through the same pipeline as `archive-push`.
//!
//! (Over the 600 lines other files keep to: one loop over one segment held in memory, whose steps, storing
//! partials, archiving whole segments, reporting the durable prefix to the slot, share that state; the
//! protocol itself is in `strata-replication`.)
//!
//! # Why
//! `archive_command` sees a segment only once PostgreSQL has filled it (or `archive_timeout` forced a
//! switch, which wastes a segment each time). A primary lost between switches loses every commit since
//! the last one. Streaming receives WAL as it is written, and stores the segment being written as a
//! partial segment every `wal_stream.flush_ms` (see `strata_repo::wal_stream`), so the archive is about a
//! second behind the primary. A segment received whole is archived like `archive-push` archives it (put-if-
//! absent: running both is harmless, and the archive_command stays the safety net).
//!
//! # The slot
//! The streamer creates a physical slot (`strata_<stanza>` unless configured) and reports to the primary
//! only what is durable in the repository: a complete segment once committed, a partial once stored. The
//! primary then keeps every byte not yet stored, across restarts of either side, and a restarted streamer
//! starts again at the slot's position, from the start of its segment (so that every partial holds its
//! segment from the first byte). The price: a streamer that stops, and leaves its slot behind, makes the
//! primary keep WAL until its disk fills. The streamer watches how much WAL its slot holds and raises a
//! critical error past `wal_stream.slot_retained_max`; `strata check` reports an abandoned slot.
//!
//! # Order of durability
//! Segments are pushed a few at a time, but the position reported as flushed only moves over a prefix of
//! the stream that is wholly stored: a partial's end counts only once every earlier segment is archived.

use crate::job::{CommitOutcome, Job};
use crate::wal::{self, WalPushSettings, WalPushTarget};
use anyhow::{anyhow, Context};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, Instant};
use strata_bus::Bus;
use strata_messages::{ChunkRef, WalRecord, WAL_RECORD_VERSION};
use strata_metrics::{Counter, Gauge, Registry};
use strata_pg::wal::WalSegment;
use strata_pg::{Lsn, TimelineId};
use strata_replication::{ReplicationClient, ReplicationError, StreamEvent, WalStream};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn, Instrument};

/// Complete segments being pushed at once; the stream waits for the oldest beyond this.
const SEGMENTS_IN_FLIGHT: usize = 4;
/// Longest wait between two attempts to reconnect.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// How the streamer runs (from `[wal_stream]` and `[pipeline]`).
pub struct StreamSettings {
    pub slot: String,
    pub flush: Duration,
    pub status_interval: Duration,
    pub slot_retained_max: u64,
    pub application_name: String,
    pub push: WalPushSettings,
}

/// The streamer's metrics, named `strata_wal_stream_*`, labelled by stanza.
#[derive(Clone)]
pub struct StreamMetrics {
    stanza: String,
    received: Gauge,
    stored: Gauge,
    server: Gauge,
    lag_bytes: Gauge,
    lag_seconds: Gauge,
    slot_retained: Gauge,
    slot_active: Gauge,
    segments: Counter,
    partials: Counter,
    reconnects: Counter,
}

impl StreamMetrics {
    pub fn register(registry: &Registry, stanza: &str) -> StreamMetrics {
        StreamMetrics {
            stanza: stanza.to_string(),
            received: registry.gauge("strata_wal_stream_received_lsn", "WAL position received from the primary (bytes)."),
            stored: registry.gauge("strata_wal_stream_stored_lsn", "WAL position durable in the repository and reported to the slot (bytes)."),
            server: registry.gauge("strata_wal_stream_server_lsn", "The primary's end of WAL, as last reported to the streamer (bytes)."),
            lag_bytes: registry.gauge("strata_wal_stream_lag_bytes", "WAL the primary has written that is not yet stored."),
            lag_seconds: registry.gauge("strata_wal_stream_lag_seconds", "Age of the oldest WAL not yet stored, 0 when caught up."),
            slot_retained: registry.gauge("strata_wal_stream_slot_retained_bytes", "WAL the streamer's replication slot keeps on the primary."),
            slot_active: registry.gauge("strata_wal_stream_slot_active", "1 while the slot has a connected streamer."),
            segments: registry.counter("strata_wal_stream_segments_total", "Segments archived whole by the streamer."),
            partials: registry.counter("strata_wal_stream_partials_total", "Partial segments stored by the streamer."),
            reconnects: registry.counter("strata_wal_stream_reconnects_total", "Replication connections lost and tried again."),
        }
    }

    fn set(&self, gauge: &Gauge, value: f64) {
        gauge.set(&[("stanza", &self.stanza)], value);
    }
}

/// How a session with the primary ended.
enum SessionEnd {
    /// Shut down on request.
    Cancelled,
    /// Worth trying again (a lost connection, a server restart).
    Retry(anyhow::Error),
    /// Trying again cannot help (another cluster, a wrong password).
    Fatal(anyhow::Error),
}

fn replication(e: ReplicationError) -> SessionEnd {
    if e.is_permanent() {
        SessionEnd::Fatal(anyhow!(e))
    } else {
        SessionEnd::Retry(anyhow!(e))
    }
}

impl From<anyhow::Error> for SessionEnd {
    fn from(e: anyhow::Error) -> Self {
        SessionEnd::Retry(e)
    }
}

/// Streams until `cancel` fires, reconnecting after errors worth retrying; fails on the others.
#[tracing::instrument(name = "wal_stream", skip_all, fields(stanza = %target.stanza, slot = %settings.slot))]
pub async fn run(
    bus: Arc<dyn Bus>,
    target: Arc<WalPushTarget>,
    settings: Arc<StreamSettings>,
    pg_conn: String,
    metrics: StreamMetrics,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    let watcher = tokio::spawn(watch_slot(pg_conn.clone(), settings.clone(), metrics.clone(), cancel.clone()));
    let mut backoff = Duration::from_secs(1);
    let result = loop {
        let started = Instant::now();
        match session(&bus, &target, &settings, &pg_conn, &metrics, &cancel).await {
            SessionEnd::Cancelled => break Ok(()),
            SessionEnd::Fatal(e) => break Err(e),
            SessionEnd::Retry(e) => {
                metrics.reconnects.inc(&[("stanza", &metrics.stanza)]);
                if started.elapsed() > MAX_BACKOFF {
                    backoff = Duration::from_secs(1);
                }
                warn!(stanza = %target.stanza, error = format!("{e:#}"), retry_in_s = backoff.as_secs(), "WAL streaming interrupted");
                tokio::select! {
                    _ = cancel.cancelled() => break Ok(()),
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    };
    watcher.abort();
    result
}

/// `16MB`, `1GB` (how SHOW prints wal_segment_size) in bytes.
fn parse_size(text: &str) -> Option<u64> {
    let digits = text.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let n: u64 = digits.trim().parse().ok()?;
    let unit = match &text[digits.len()..] {
        "" | "B" => 1,
        "kB" => 1 << 10,
        "MB" => 1 << 20,
        "GB" => 1 << 30,
        _ => return None,
    };
    n.checked_mul(unit)
}

async fn session(
    bus: &Arc<dyn Bus>,
    target: &Arc<WalPushTarget>,
    settings: &Arc<StreamSettings>,
    pg_conn: &str,
    metrics: &StreamMetrics,
    cancel: &CancellationToken,
) -> SessionEnd {
    let connect = ReplicationClient::connect(pg_conn, &settings.application_name);
    let mut client = tokio::select! {
        _ = cancel.cancelled() => return SessionEnd::Cancelled,
        c = connect => match c { Ok(c) => c, Err(e) => return replication(e) },
    };
    let ident = match client.identify_system().await {
        Ok(i) => i,
        Err(e) => return replication(e),
    };
    if ident.system_id != target.system_id {
        return SessionEnd::Fatal(anyhow!(
            "the server at pg_conn is another cluster (system id {}); stanza '{}' belongs to system id {}",
            ident.system_id,
            target.stanza,
            target.system_id
        ));
    }
    let seg_size = match client.show("wal_segment_size").await {
        Ok(text) => parse_size(&text),
        Err(e) => return replication(e),
    };
    if seg_size != Some(target.wal_segment_size) {
        return SessionEnd::Fatal(anyhow!("the server's wal_segment_size is {seg_size:?} bytes; stanza '{}' has {}", target.stanza, target.wal_segment_size));
    }
    // Looked up before it is created, so that a streamer starting again on its own slot does not make the
    // server log "already exists" as an ERROR each time.
    match client.read_slot(&settings.slot).await {
        Ok(Some(_)) => {}
        Ok(None) => match client.create_physical_slot(&settings.slot).await {
            Ok(true) => info!(stanza = %target.stanza, slot = %settings.slot, "replication slot created"),
            Ok(false) => {}
            Err(e) => return replication(e),
        },
        Err(e) => return replication(e),
    }
    let slot = match client.read_slot(&settings.slot).await {
        Ok(Some(s)) => s,
        Ok(None) => return SessionEnd::Retry(anyhow!("replication slot {} vanished", settings.slot)),
        Err(e) => return replication(e),
    };
    let (mut start, mut timeline) = match (slot.restart_lsn, slot.restart_tli) {
        (Some(lsn), Some(tli)) => (lsn, tli),
        _ => (ident.xlogpos, ident.timeline),
    };
    loop {
        if timeline > 1 {
            if let Err(e) = push_history(&mut client, bus, target, settings, timeline).await {
                return e;
            }
        }
        let seg_start = Lsn(start.0 - start.0 % target.wal_segment_size);
        info!(stanza = %target.stanza, slot = %settings.slot, timeline, start = %seg_start, "streaming WAL");
        let stream = match client.start_physical(Some(&settings.slot), seg_start, timeline).await {
            Ok(s) => s,
            Err(e) => return replication(e),
        };
        let mut streamer = Streamer::new(bus.clone(), target.clone(), settings.clone(), metrics.clone(), timeline, seg_start, start);
        let (stream, next) = match streamer.follow(stream, cancel).await {
            Ok(x) => x,
            Err(e) => return e,
        };
        match next {
            // The server ended this timeline: follow the next one from where it begins.
            Some((next_timeline, next_start)) => {
                client = match stream.finish().await {
                    Ok(c) => c,
                    Err(e) => return replication(e),
                };
                info!(stanza = %target.stanza, from = timeline, to = next_timeline, at = %next_start, "timeline switch");
                (start, timeline) = (next_start, next_timeline);
            }
            None => {
                if let Ok(c) = stream.finish().await {
                    c.close().await;
                }
                return SessionEnd::Cancelled;
            }
        }
    }
}

/// Archives timeline `tli`'s history file (fetched from the server) unless the archive has it.
async fn push_history(
    client: &mut ReplicationClient,
    bus: &Arc<dyn Bus>,
    target: &WalPushTarget,
    settings: &StreamSettings,
    tli: TimelineId,
) -> Result<(), SessionEnd> {
    let (name, content) = client.timeline_history(tli).await.map_err(replication)?;
    let file = wal::from_bytes(name, content, target).map_err(SessionEnd::Fatal)?;
    wal::push(bus.clone(), target, &settings.push, file, None).await.map_err(SessionEnd::Retry)?;
    Ok(())
}

/// A partial push in flight: the segment, its end, and what it stored.
struct PartialPush {
    segno: u64,
    end: Lsn,
    started: Instant,
    task: JoinHandle<anyhow::Result<Vec<ChunkRef>>>,
}

/// One START_REPLICATION: the segment being received, what is being pushed, and what is durable.
struct Streamer {
    bus: Arc<dyn Bus>,
    target: Arc<WalPushTarget>,
    settings: Arc<StreamSettings>,
    metrics: StreamMetrics,
    timeline: TimelineId,
    /// The next byte expected.
    pos: Lsn,
    /// The segment being received, from its first byte.
    segment: Vec<u8>,
    /// Its identity hash so far (the repository's keyed hash when encrypted).
    hasher: blake3::Hasher,
    /// Whole pieces of the current segment stored by its partials: not sent again.
    stored_pieces: Vec<ChunkRef>,
    /// The end of the newest partial stored of the current segment.
    partial_stored: Lsn,
    partial: Option<PartialPush>,
    /// Since when received bytes wait for a partial, and how long the last partial took to store.
    unstored_since: Option<Instant>,
    last_store_took: Duration,
    /// Complete segments being pushed, oldest first, with their end.
    segments: VecDeque<(Lsn, JoinHandle<anyhow::Result<CommitOutcome>>)>,
    /// Reported to the primary as flushed: every byte before it is durable.
    durable: Lsn,
    /// A stored partial's end waiting for the segments before it.
    partial_done: Option<Lsn>,
    /// The server's end of WAL, and when the streamer first heard of each position not yet durable.
    server_end: Lsn,
    heard: VecDeque<(Lsn, Instant)>,
}

impl Streamer {
    fn new(
        bus: Arc<dyn Bus>,
        target: Arc<WalPushTarget>,
        settings: Arc<StreamSettings>,
        metrics: StreamMetrics,
        timeline: TimelineId,
        seg_start: Lsn,
        slot_start: Lsn,
    ) -> Streamer {
        let hasher = settings.push.sealer.id_hasher();
        Streamer {
            segment: Vec::with_capacity(target.wal_segment_size as usize),
            bus,
            target,
            settings,
            metrics,
            timeline,
            pos: seg_start,
            hasher,
            stored_pieces: Vec::new(),
            partial_stored: seg_start,
            partial: None,
            unstored_since: None,
            last_store_took: Duration::ZERO,
            segments: VecDeque::new(),
            // Everything before the slot's position was stored by an earlier session (or predates the slot).
            durable: slot_start.max(seg_start),
            partial_done: None,
            server_end: slot_start.max(seg_start),
            heard: VecDeque::new(),
        }
    }

    fn seg_size(&self) -> u64 {
        self.target.wal_segment_size
    }

    fn segment_start(&self) -> Lsn {
        Lsn(self.pos.0 - self.segment.len() as u64)
    }

    /// Receives until cancelled (`None`) or the end of the timeline (the next timeline and its start).
    async fn follow(
        &mut self,
        mut stream: WalStream,
        cancel: &CancellationToken,
    ) -> Result<(WalStream, Option<(TimelineId, Lsn)>), SessionEnd> {
        // Checked often, so that a byte waits at most `flush` (less what a store takes) to be stored.
        let mut flush = tokio::time::interval((self.settings.flush / 4).min(Duration::from_millis(50)));
        flush.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut status = tokio::time::interval(self.settings.status_interval);
        status.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            self.reap().await?;
            tokio::select! {
                _ = cancel.cancelled() => {
                    self.drain().await?;
                    stream.send_status(self.pos, self.durable, Lsn::INVALID, false).await.map_err(replication)?;
                    return Ok((stream, None));
                }
                _ = flush.tick() => {
                    let due = self.settings.flush.saturating_sub(self.last_store_took);
                    if self.unstored_since.is_some_and(|t| t.elapsed() >= due) {
                        self.flush_partial();
                    }
                }
                _ = status.tick() => {
                    stream.send_status(self.pos, self.durable, Lsn::INVALID, false).await.map_err(replication)?;
                }
                event = stream.next() => match event {
                    Err(e) => {
                        // The primary may be gone for good: what it sent is stored before anything else.
                        self.flush_partial();
                        if let Err(SessionEnd::Retry(d) | SessionEnd::Fatal(d)) = self.drain().await {
                            warn!(stanza = %self.target.stanza, error = format!("{d:#}"), "cannot store what was received before the connection ended");
                        }
                        return Err(replication(e));
                    }
                    Ok(event) => match event {
                    StreamEvent::Data { start, server_end, data } => {
                        self.heard_of(server_end);
                        self.receive(start, &data).await?;
                    }
                    StreamEvent::Keepalive { server_end, reply_requested } => {
                        self.heard_of(server_end);
                        if reply_requested {
                            stream.send_status(self.pos, self.durable, Lsn::INVALID, false).await.map_err(replication)?;
                        }
                    }
                    StreamEvent::EndOfTimeline { next_timeline, next_start } => {
                        // What was received of the last segment is all this timeline will have.
                        self.flush_partial();
                        self.drain().await?;
                        return match (next_timeline, next_start) {
                            (Some(t), Some(s)) => Ok((stream, Some((t, s)))),
                            _ => Err(SessionEnd::Retry(anyhow!("the server ended timeline {} without naming the next", self.timeline))),
                        };
                    }
                    },
                }
            }
            self.report();
        }
    }

    fn heard_of(&mut self, server_end: Lsn) {
        if server_end > self.server_end {
            self.server_end = server_end;
            if self.heard.back().is_none_or(|(_, at)| at.elapsed() >= Duration::from_millis(100)) {
                self.heard.push_back((server_end, Instant::now()));
            } else if let Some(last) = self.heard.back_mut() {
                last.0 = server_end;
            }
        }
    }

    /// Appends WAL at `start` (which must be where the stream stands), archiving each segment it completes.
    async fn receive(&mut self, start: Lsn, mut data: &[u8]) -> Result<(), SessionEnd> {
        if start != self.pos {
            return Err(SessionEnd::Retry(anyhow!("the server sent WAL at {start}, expected {}", self.pos)));
        }
        while !data.is_empty() {
            let room = (self.seg_size() - self.segment.len() as u64) as usize;
            let (now, rest) = data.split_at(room.min(data.len()));
            self.segment.extend_from_slice(now);
            self.hasher.update(now);
            self.pos = Lsn(self.pos.0 + now.len() as u64);
            self.unstored_since.get_or_insert_with(Instant::now);
            data = rest;
            if self.segment.len() as u64 == self.seg_size() {
                self.complete_segment().await?;
            }
        }
        Ok(())
    }

    /// Archives the whole segment just received, keeping at most [`SEGMENTS_IN_FLIGHT`] pushes.
    async fn complete_segment(&mut self) -> Result<(), SessionEnd> {
        while self.segments.len() >= SEGMENTS_IN_FLIGHT {
            self.wait_oldest_segment().await?;
        }
        let seg_size = self.seg_size();
        let start = self.segment_start();
        let name = WalSegment::containing(self.timeline, start, seg_size).name(seg_size);
        let data = std::mem::replace(&mut self.segment, Vec::with_capacity(seg_size as usize));
        self.hasher = self.settings.push.sealer.id_hasher();
        let seed = std::mem::take(&mut self.stored_pieces);
        self.partial_stored = self.pos;
        // The segment's push stores the rest of it.
        self.unstored_since = None;
        let file = wal::from_bytes(name, data, &self.target).map_err(SessionEnd::Fatal)?;
        let (bus, target, settings) = (self.bus.clone(), self.target.clone(), self.settings.clone());
        let task =
            tokio::spawn(async move { wal::push_seeded(bus, &target, &settings.push, file, None, seed).await }.in_current_span());
        self.segments.push_back((self.pos, task));
        Ok(())
    }

    async fn wait_oldest_segment(&mut self) -> Result<(), SessionEnd> {
        let Some((end, task)) = self.segments.pop_front() else { return Ok(()) };
        task.await.map_err(|e| anyhow!("a segment push failed: {e}"))??;
        self.metrics.segments.inc(&[("stanza", &self.metrics.stanza)]);
        self.durable = self.durable.max(end);
        if self.segments.is_empty() {
            if let Some(p) = self.partial_done.take() {
                self.durable = self.durable.max(p);
            }
        }
        Ok(())
    }

    /// Takes the results of pushes that have finished, without waiting.
    async fn reap(&mut self) -> Result<(), SessionEnd> {
        while self.segments.front().is_some_and(|(_, t)| t.is_finished()) {
            self.wait_oldest_segment().await?;
        }
        if self.partial.as_ref().is_some_and(|p| p.task.is_finished()) {
            self.finish_partial().await?;
        }
        Ok(())
    }

    /// Waits for the partial push in flight, if any, and takes its result.
    async fn finish_partial(&mut self) -> Result<(), SessionEnd> {
        let Some(p) = self.partial.take() else { return Ok(()) };
        let pieces = p.task.await.map_err(|e| anyhow!("a partial push failed: {e}"))??;
        self.last_store_took = p.started.elapsed().min(self.settings.flush);
        self.metrics.partials.inc(&[("stanza", &self.metrics.stanza)]);
        let current = self.segment_start().0 / self.seg_size();
        if p.segno == current && pieces.len() > self.stored_pieces.len() {
            self.stored_pieces = pieces;
        }
        if self.segments.is_empty() {
            self.durable = self.durable.max(p.end);
        } else {
            self.partial_done = Some(self.partial_done.map_or(p.end, |d| d.max(p.end)));
        }
        Ok(())
    }

    /// Stores everything received and waits until it is durable.
    async fn drain(&mut self) -> Result<(), SessionEnd> {
        loop {
            while !self.segments.is_empty() {
                self.wait_oldest_segment().await?;
            }
            self.finish_partial().await?;
            if self.pos <= self.partial_stored || self.segment.is_empty() {
                break;
            }
            self.flush_partial();
        }
        self.report();
        Ok(())
    }

    /// Starts storing what was received of the current segment since its last partial, unless a partial
    /// is still being stored.
    fn flush_partial(&mut self) {
        if self.partial.is_some() || self.segment.is_empty() || self.pos <= self.partial_stored {
            return;
        }
        let seg_size = self.seg_size();
        let seg_start = self.segment_start();
        let name = WalSegment::containing(self.timeline, seg_start, seg_size).name(seg_size);
        let chunk = self.settings.push.chunk_size;
        let first_new = self.stored_pieces.len();
        let tail = self.segment[first_new * chunk..].to_vec();
        let hash = *self.hasher.clone().finalize().as_bytes();
        let record_head = (name, self.segment.len() as u64, hash);
        let known = self.stored_pieces.clone();
        let (bus, target, settings) = (self.bus.clone(), self.target.clone(), self.settings.clone());
        let end = self.pos;
        self.partial_stored = end;
        self.unstored_since = None;
        let started = Instant::now();
        let span = tracing::info_span!("wal_partial", segment = %record_head.0);
        let task = tokio::spawn(async move { push_partial(bus, &target, &settings.push, record_head, known, tail).await }.instrument(span));
        self.partial = Some(PartialPush { segno: seg_start.0 / seg_size, end, started, task });
    }

    fn report(&mut self) {
        while self.heard.front().is_some_and(|(lsn, _)| *lsn <= self.durable) {
            self.heard.pop_front();
        }
        let m = &self.metrics;
        m.set(&m.received, self.pos.0 as f64);
        m.set(&m.stored, self.durable.0 as f64);
        m.set(&m.server, self.server_end.0 as f64);
        m.set(&m.lag_bytes, self.server_end.0.saturating_sub(self.durable.0) as f64);
        m.set(&m.lag_seconds, self.heard.front().map_or(0.0, |(_, at)| at.elapsed().as_secs_f64()));
    }
}

/// Stores the first `size` bytes of segment `name` as its partial: the pieces `known` stored already, then
/// `tail` (the rest) sent now. Returns every whole piece stored, for the next partial of the segment.
async fn push_partial(
    bus: Arc<dyn Bus>,
    target: &WalPushTarget,
    settings: &WalPushSettings,
    (name, size, hash): (String, u64, [u8; 32]),
    known: Vec<ChunkRef>,
    tail: Vec<u8>,
) -> anyhow::Result<Vec<ChunkRef>> {
    let job_id = format!("wal-stream-{name}-{:016x}", rand::random::<u64>());
    let job = Job::start(bus, job_id, target.stanza.clone(), settings.compress_level, settings.sealer.clone(), settings.in_flight_bytes, settings.stall)
        .await?;
    job.seed(known.iter().copied());
    let mut ids: Vec<[u8; 32]> = known.iter().map(|r| r.id).collect();
    for piece in tail.chunks(settings.chunk_size) {
        ids.push(job.send(piece.to_vec(), false).await?);
    }
    job.wait_stored().await?;
    let chunks: Vec<ChunkRef> = ids.iter().map(|id| job.location(id).expect("every chunk was confirmed")).collect();
    let whole = (size as usize) / settings.chunk_size;
    let record = WalRecord { version: WAL_RECORD_VERSION, name, size, hash, chunks: chunks.clone(), summary: None };
    job.commit_wal_streamed(record).await.context("storing a partial segment")?;
    Ok(chunks.into_iter().take(whole).collect())
}

/// Watches the slot from a plain SQL session: how much WAL it keeps on the primary, and whether a streamer
/// is connected. Past `slot_retained_max` it logs a critical error every check.
async fn watch_slot(pg_conn: String, settings: Arc<StreamSettings>, metrics: StreamMetrics, cancel: CancellationToken) {
    let mut every = tokio::time::interval(settings.status_interval);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = every.tick() => {}
        }
        match slot_state(&pg_conn, &settings.slot).await {
            Ok(Some(state)) => {
                metrics.set(&metrics.slot_retained, state.retained_bytes as f64);
                metrics.set(&metrics.slot_active, if state.active { 1.0 } else { 0.0 });
                if state.retained_bytes > settings.slot_retained_max {
                    error!(
                        slot = %settings.slot,
                        retained_bytes = state.retained_bytes,
                        max = settings.slot_retained_max,
                        "critical: the replication slot keeps more WAL on the primary than wal_stream.slot_retained_max; the primary's disk fills while it does"
                    );
                }
            }
            Ok(None) => {}
            Err(e) => warn!(slot = %settings.slot, error = format!("{e:#}"), "cannot read the replication slot's state"),
        }
    }
}

/// A replication slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone)]
pub struct SlotState {
    pub active: bool,
    /// WAL from the slot's restart position to the primary's current position.
    pub retained_bytes: u64,
    pub wal_status: Option<String>,
}

/// The slot's state, `None` when there is no such slot.
pub async fn slot_state(pg_conn: &str, slot: &str) -> anyhow::Result<Option<SlotState>> {
    let session = crate::cluster::connect(pg_conn).await?;
    let row = session
        .client
        .query_opt(
            "SELECT active, COALESCE(pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END, restart_lsn), 0)::bigint, wal_status
               FROM pg_replication_slots WHERE slot_name = $1",
            &[&slot],
        )
        .await;
    session.close().await;
    Ok(row.context("cannot read pg_replication_slots")?.map(|r| SlotState {
        active: r.get(0),
        retained_bytes: r.get::<_, i64>(1).max(0) as u64,
        wal_status: r.get(2),
    }))
}

#[cfg(test)]
mod tests {
    use super::parse_size;

    #[test]
    fn segment_sizes_as_show_prints_them() {
        assert_eq!(parse_size("16MB"), Some(16 << 20));
        assert_eq!(parse_size("1GB"), Some(1 << 30));
        assert_eq!(parse_size("512kB"), Some(512 << 10));
        assert_eq!(parse_size("16777216"), Some(16 << 20));
        for bad in ["", "MB", "16 XB", "-1MB", "99999999999999999999GB"] {
            assert_eq!(parse_size(bad), None, "{bad}");
        }
    }
}
