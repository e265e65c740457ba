//! What a stanza's WAL archive can recover to: which files a recovery would read, whether they are all
//! there, where recovery targets are, and where the archive has gaps.
//!
//! Restore asks this before it writes anything, so that a target the archive cannot reach is refused with
//! the reason instead of failing an hour into recovery; check and info use it to show gaps and recoverable
//! windows. It mirrors PostgreSQL 15's recovery:
//! - **Which file.** Recovery reads segment number `n` from the newest timeline of its target timeline's
//!   history that began at or before `n` ([`TimelineHistory::segment`]). The target timeline is the
//!   backup's (`current`), a given one, or (`latest`, PostgreSQL's default) the newest timeline found by
//!   probing history files one after another from the backup's (`findNewestTimeLine`).
//! - **Which segment a target needs.** A target stops recovery at a record, which must be read whole: the
//!   segment that record ends in and every one before it, from the backup's first, must be archived. For
//!   an LSN that is the segment holding it, or the next when the LSN lies past the segment's last whole
//!   record. For a time, xid or restore point only the records tell, and archive-push summarized each
//!   segment's (`WalSummary`): the first segment whose summary holds a transaction end after the time
//!   (at or after it with `--target-exclusive`), the xid, or the restore point. A record split across
//!   two segments is joined from both summaries and belongs to the second.
//! - **Gaps.** On each timeline, every segment from where the timeline (or the oldest backup) begins to
//!   the newest archived one must be there.
//!
//! - **Readable.** A segment whose record does not decode, or whose chunks' pack is missing, stops
//!   recovery as a gap does (archive-get fails on it): restore reads the record of every segment it
//!   relies on and looks up the size of each pack they use, never the chunks themselves.
//!
//! Summaries are read lazily and cached, so a search reads one small record per segment it passes.

use anyhow::{anyhow, Context};
use futures::StreamExt;
use std::collections::{BTreeSet, HashMap};
use strata_messages::{hex, PackId, WalSummary};
use strata_pg::timeline::{TimelineHistory, TimelineSpan};
use strata_pg::wal::{classify_wal_file, history_file_name, WalFileKind};
use strata_pg::walscan::{join_split_record, WalEvent};
use strata_pg::{Lsn, TimelineId, WalSegment};
use strata_repo::{pack_path, Repo};

/// `--target-timeline`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TargetTimeline {
    Current,
    Latest,
    Id(TimelineId),
}

/// A run of missing segments on one timeline, and what surrounds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    pub first_missing: WalSegment,
    pub last_missing: WalSegment,
    /// The archived segment before the gap (none when the gap starts where the search started).
    pub before: Option<WalSegment>,
    /// The archived segment after the gap, if any.
    pub after: Option<WalSegment>,
}

/// Where the record a target stops at is.
#[derive(Debug, Clone)]
pub struct Located {
    /// The segment the record ends in: recovery reads every segment up to this one.
    pub segment: WalSegment,
    /// The record's position and time, when known (an xid's is not kept per transaction).
    pub lsn: Option<Lsn>,
    pub time: Option<i64>,
}

/// The outcome of walking a timeline path from a segment, looking for a target.
#[derive(Debug, Clone)]
pub enum Search {
    Found(Located),
    /// A segment on the way is not archived.
    Missing(Gap),
    /// The archive ends (at this segment, if any was passed) before the target.
    End(Option<WalSegment>),
}

/// What a search stops at.
pub enum Want<'a> {
    /// A transaction end later than this time (Unix microseconds), or not earlier when `exclusive`.
    TimeAfter { time: i64, exclusive: bool },
    /// The end of this transaction (its low 32 bits, as recovery compares them).
    Xid(u32),
    RestorePoint(&'a str),
}

impl Want<'_> {
    fn matches(&self, e: &WalEvent) -> bool {
        match (self, e) {
            (Want::TimeAfter { time, exclusive }, WalEvent::XactEnd { time: t, .. }) => {
                if *exclusive {
                    t >= time
                } else {
                    t > time
                }
            }
            (Want::Xid(x), WalEvent::XactEnd { xid, .. }) => xid == x,
            (Want::RestorePoint(n), WalEvent::RestorePoint { name, .. }) => name == n,
            _ => false,
        }
    }

    /// Whether a summary's whole-record events hold a match; with its time and LSN when known.
    fn in_summary(&self, s: &WalSummary) -> Option<(Option<Lsn>, Option<i64>)> {
        match self {
            Want::TimeAfter { time, exclusive } => {
                let hit = s.xact_ends > 0 && if *exclusive { s.last_time >= *time } else { s.last_time > *time };
                hit.then_some((None, None))
            }
            Want::Xid(x) => s.has_xid(*x).then_some((None, None)),
            Want::RestorePoint(n) => s
                .restore_points
                .iter()
                .find(|r| r.name == *n)
                .map(|r| (Some(Lsn(r.lsn)), Some(r.time))),
        }
    }
}

/// The archive of one stanza: which files it holds, and their summaries once read.
pub struct WalArchive<'r> {
    repo: &'r Repo,
    stanza: String,
    pub seg_size: u64,
    segments: BTreeSet<WalSegment>,
    /// Segments `archive-push` dropped over `archive.push_queue_max` and that are not archived: known
    /// holes, even past the newest archived segment.
    dropped: BTreeSet<WalSegment>,
    histories: BTreeSet<TimelineId>,
    summaries: HashMap<WalSegment, Option<WalSummary>>,
    /// Segments whose record was found damaged while reading summaries, and why.
    damaged: HashMap<WalSegment, String>,
    history_cache: HashMap<TimelineId, TimelineHistory>,
    /// Sizes of the packs looked up by [`WalArchive::first_unreadable`] (`None`: missing).
    pack_sizes: HashMap<PackId, Option<u64>>,
}

/// Records (or pack sizes) read at once when checking that WAL can be restored.
const READ_AHEAD: usize = 16;

impl<'r> WalArchive<'r> {
    /// Lists the archive (one listing; nothing else is read yet).
    pub async fn load(repo: &'r Repo, stanza: &str, seg_size: u64) -> anyhow::Result<WalArchive<'r>> {
        let mut segments = BTreeSet::new();
        let mut histories = BTreeSet::new();
        for name in repo.wal_names(stanza).await? {
            match classify_wal_file(&name) {
                Some(WalFileKind::Segment) => {
                    if let Some(s) = WalSegment::parse(&name, seg_size) {
                        segments.insert(s);
                    }
                }
                Some(WalFileKind::History) => {
                    if let Ok(t) = TimelineId::from_str_radix(&name[..8], 16) {
                        histories.insert(t);
                    }
                }
                _ => {}
            }
        }
        let dropped = repo
            .wal_dropped(stanza)
            .await?
            .iter()
            .filter_map(|d| WalSegment::parse(&d.name, seg_size))
            .filter(|s| !segments.contains(s))
            .collect();
        Ok(WalArchive {
            repo,
            stanza: stanza.to_string(),
            seg_size,
            segments,
            dropped,
            histories,
            summaries: HashMap::new(),
            damaged: HashMap::new(),
            history_cache: HashMap::new(),
            pack_sizes: HashMap::new(),
        })
    }

    pub fn name(&self, s: WalSegment) -> String {
        s.name(self.seg_size)
    }

    pub fn has(&self, s: WalSegment) -> bool {
        self.segments.contains(&s)
    }

    pub fn segments(&self) -> impl Iterator<Item = &WalSegment> {
        self.segments.iter()
    }

    pub fn segno(&self, lsn: Lsn) -> u64 {
        lsn.0 / self.seg_size
    }

    /// Parses a segment name of this archive's segment size.
    pub fn parse(&self, name: &str) -> anyhow::Result<WalSegment> {
        WalSegment::parse(name, self.seg_size).ok_or_else(|| anyhow!("{name} is not a WAL segment name"))
    }

    /// The history of `timeline`, from its archived history file (timeline 1 has none).
    pub async fn history(&mut self, timeline: TimelineId) -> anyhow::Result<TimelineHistory> {
        if timeline == 1 {
            return Ok(TimelineHistory::first());
        }
        if let Some(h) = self.history_cache.get(&timeline) {
            return Ok(h.clone());
        }
        let name = history_file_name(timeline);
        let bytes = self
            .repo
            .wal_contents(self.repo.sealer(), &self.stanza, &name)
            .await?
            .ok_or_else(|| anyhow!("the history file of timeline {timeline} ({name}) is not in the archive"))?;
        let h = TimelineHistory::parse(timeline, &String::from_utf8_lossy(&bytes)).with_context(|| format!("archived {name}"))?;
        self.history_cache.insert(timeline, h.clone());
        Ok(h)
    }

    /// The history recovery from a backup on `backup_tl` follows for `target`.
    pub async fn target_history(&mut self, backup_tl: TimelineId, target: TargetTimeline) -> anyhow::Result<TimelineHistory> {
        let tl = match target {
            TargetTimeline::Current => backup_tl,
            TargetTimeline::Id(t) => t,
            TargetTimeline::Latest => {
                // findNewestTimeLine probes one timeline after another and stops at the first missing.
                let mut t = backup_tl;
                while self.histories.contains(&(t + 1)) {
                    t += 1;
                }
                t
            }
        };
        self.history(tl).await
    }

    /// The summary of an archived segment (`None` when it has none, is not archived, or its record is
    /// damaged: see [`WalArchive::first_damaged`]).
    pub async fn summary(&mut self, s: WalSegment) -> anyhow::Result<Option<WalSummary>> {
        if let Some(v) = self.summaries.get(&s) {
            return Ok(v.clone());
        }
        let v = match self.segments.contains(&s) {
            true => match self.repo.wal(&self.stanza, &self.name(s)).await {
                Ok(r) => r.and_then(|r| r.summary),
                Err(e @ strata_repo::RepoError::CorruptObject { .. }) => {
                    self.damaged.insert(s, e.to_string());
                    None
                }
                Err(e) => return Err(e.into()),
            },
            false => None,
        };
        self.summaries.insert(s, v.clone());
        Ok(v)
    }

    /// The first segment of `hist`'s path in `from..=to` whose record cannot be read, and why: recovery
    /// through it would stop there, so a restore that needs it is refused.
    pub async fn first_damaged(&mut self, hist: &TimelineHistory, from: u64, to: u64) -> anyhow::Result<Option<String>> {
        for n in from..=to {
            let s = hist.segment(n, self.seg_size);
            self.summary(s).await?;
            if let Some(why) = self.damaged.get(&s) {
                return Ok(Some(why.clone()));
            }
        }
        Ok(None)
    }

    /// The first segment of `hist`'s path in `from..=to` that is not archived, as a gap.
    pub fn first_gap(&self, hist: &TimelineHistory, from: u64, to: u64) -> Option<Gap> {
        let mut before = None;
        for n in from..=to {
            let s = hist.segment(n, self.seg_size);
            if self.has(s) {
                before = Some(s);
                continue;
            }
            let mut last_missing = s;
            let mut after = None;
            for m in n + 1.. {
                let t = hist.segment(m, self.seg_size);
                if self.has(t) {
                    after = Some(t);
                    break;
                }
                if !self.has_later_on_path(hist, m) {
                    break;
                }
                last_missing = t;
            }
            return Some(Gap { first_missing: s, last_missing, before, after });
        }
        None
    }

    /// Whether the archive holds a file of `hist`'s path numbered `segno` or later, or one was dropped
    /// there (a hole, not the end of the archive).
    fn has_later_on_path(&self, hist: &TimelineHistory, segno: u64) -> bool {
        self.segments.iter().chain(&self.dropped).any(|s| s.segno >= segno && hist.segment(s.segno, self.seg_size) == *s)
    }

    /// How many segments of a gap `archive-push` dropped (`archive.push_queue_max`).
    pub fn dropped_in(&self, g: &Gap) -> usize {
        self.dropped
            .iter()
            .filter(|s| s.timeline == g.first_missing.timeline && s.segno >= g.first_missing.segno && s.segno <= g.last_missing.segno)
            .count()
    }

    /// ` (N of them dropped by archive-push: ...)` for a gap with dropped segments, else nothing.
    pub fn dropped_text(&self, g: &Gap) -> String {
        match self.dropped_in(g) {
            0 => String::new(),
            n => format!(" ({n} of them DROPPED by archive-push: the WAL waiting to be archived was over archive.push_queue_max)"),
        }
    }

    /// The last segment of `hist`'s path archived without a break from `from` (`None` if `from` is not).
    pub fn contiguous_end(&self, hist: &TimelineHistory, from: u64) -> Option<WalSegment> {
        let mut last = None;
        for n in from.. {
            let s = hist.segment(n, self.seg_size);
            if !self.has(s) {
                break;
            }
            last = Some(s);
        }
        last
    }

    /// After the contiguous run from `from`, the gap and the archived segments beyond it on the path, if any
    /// (the WAL recovery would not reach).
    pub fn gap_after(&self, hist: &TimelineHistory, from: u64) -> Option<Gap> {
        let last = self.contiguous_end(hist, from);
        let end = last.map(|s| s.segno + 1).unwrap_or(from);
        if !self.has_later_on_path(hist, end) {
            return None;
        }
        // Searched from the gap itself, `first_gap` cannot know what precedes it: the run's end does.
        self.first_gap(hist, end, end).map(|g| Gap { before: last, ..g })
    }

    /// The first run of missing segments in a backup's own WAL, from its first segment to its last on the
    /// timeline it was taken on: without them recovery cannot make the backup consistent, whatever
    /// timeline it then follows. Reads nothing but a history file when the backup crossed timelines.
    pub async fn backup_gap(&mut self, wal_start: &str, wal_stop: &str) -> anyhow::Result<Option<Gap>> {
        let (start, stop) = (self.parse(wal_start)?, self.parse(wal_stop)?);
        let own = match start.timeline == stop.timeline {
            true => TimelineHistory { spans: vec![TimelineSpan { timeline: stop.timeline, begin: Lsn(0), end: None }] },
            false => self.history(stop.timeline).await?,
        };
        Ok(self.first_gap(&own, start.segno, stop.segno))
    }

    /// The first segment of `hist`'s path in `from..=to` that `archive-get` could not hand over, and why:
    /// its record must be there and decode, its chunks must add up to its size, and every pack they are
    /// in must exist and be long enough to hold them. Records and pack sizes are read (a few at once),
    /// never the chunks' bytes, so the check stays cheap for a long archive.
    pub async fn first_unreadable(&mut self, hist: &TimelineHistory, from: u64, to: u64) -> anyhow::Result<Option<(WalSegment, String)>> {
        let segments: Vec<WalSegment> = (from..=to).map(|n| hist.segment(n, self.seg_size)).collect();
        let (repo, stanza) = (self.repo, self.stanza.as_str());
        let names: Vec<String> = segments.iter().map(|s| self.name(*s)).collect();
        let records: Vec<_> = futures::stream::iter(names.iter().map(|n| repo.wal(stanza, n))).buffered(READ_AHEAD).collect().await;
        let mut checked = Vec::with_capacity(segments.len());
        for (s, r) in segments.iter().zip(records) {
            checked.push(match r {
                Ok(Some(record)) => {
                    self.summaries.insert(*s, record.summary.clone());
                    let plain: u64 = record.chunks.iter().map(|c| c.raw_len as u64).sum();
                    match plain == record.size {
                        true => Ok(record.chunks),
                        false => Err(format!("its record lists {plain} bytes of chunks for a {}-byte file", record.size)),
                    }
                }
                Ok(None) => Err("it is not archived".to_string()),
                Err(e) => Err(format!("its record cannot be read: {e}")),
            });
        }
        let packs: BTreeSet<PackId> =
            checked.iter().flat_map(|c| c.iter().flatten()).map(|c| c.pack).filter(|p| !self.pack_sizes.contains_key(p)).collect();
        let sizes: Vec<_> = futures::stream::iter(packs.iter().map(|p| async move { (*p, repo.storage().size(&pack_path(p)).await) }))
            .buffer_unordered(READ_AHEAD)
            .collect()
            .await;
        for (p, size) in sizes {
            self.pack_sizes.insert(p, size.with_context(|| format!("cannot look up pack {}", hex(&p)))?);
        }
        for (s, c) in segments.into_iter().zip(checked) {
            let chunks = match c {
                Ok(chunks) => chunks,
                Err(why) => return Ok(Some((s, why))),
            };
            for c in chunks {
                match self.pack_sizes[&c.pack] {
                    None => return Ok(Some((s, format!("pack {} holding its chunk {} is missing", hex(&c.pack), hex(&c.id))))),
                    Some(size) if size < c.offset + c.sealed_len as u64 => {
                        return Ok(Some((s, format!("pack {} is truncated to {size} bytes before its chunk {}", hex(&c.pack), hex(&c.id)))))
                    }
                    Some(_) => {}
                }
            }
        }
        Ok(None)
    }

    /// Walks `hist`'s path from segment number `from`, the backup's first segment, for what `want`
    /// describes. The record crossing into `from` is not looked at: it precedes the backup's start.
    pub async fn search(&mut self, hist: &TimelineHistory, from: u64, want: &Want<'_>) -> anyhow::Result<Search> {
        let mut prev: Option<(WalSegment, Option<WalSummary>)> = None;
        for n in from.. {
            let s = hist.segment(n, self.seg_size);
            if !self.has(s) {
                let passed = prev.map(|p| p.0);
                if !self.has_later_on_path(hist, n) {
                    return Ok(Search::End(passed));
                }
                let gap = self.first_gap(hist, n, n).expect("segment n is missing");
                return Ok(Search::Missing(Gap { before: passed, ..gap }));
            }
            let summary = self.summary(s).await?;
            if let (Some((_, Some(p))), Some(cur)) = (&prev, &summary) {
                if let Some(e) = join_split_record(&p.tail, Lsn(p.tail_lsn), &cur.head) {
                    if want.matches(&e) {
                        return Ok(Search::Found(Located { segment: s, lsn: Some(e.lsn()), time: Some(e.time()) }));
                    }
                }
            }
            if let Some(cur) = &summary {
                if let Some((lsn, time)) = want.in_summary(cur) {
                    return Ok(Search::Found(Located { segment: s, lsn, time }));
                }
            }
            prev = Some((s, summary));
        }
        unreachable!("segment numbers do not run out")
    }

    /// The latest transaction end time in segments `from..=to` of `hist`'s path, searching backwards from
    /// `to` (the end of a recoverable window).
    pub async fn last_time(&mut self, hist: &TimelineHistory, from: u64, to: u64) -> anyhow::Result<Option<i64>> {
        for n in (from..=to).rev() {
            let s = hist.segment(n, self.seg_size);
            if let Some(sum) = self.summary(s).await? {
                if sum.last_time > 0 {
                    return Ok(Some(sum.last_time));
                }
            }
        }
        Ok(None)
    }

    /// Every run of missing segments since segment number `since` (the oldest backup's first segment), per
    /// timeline: from where the timeline begins (or `since`) to its newest archived segment.
    pub async fn gaps(&mut self, since: u64) -> anyhow::Result<Vec<(TimelineId, Gap)>> {
        let timelines: BTreeSet<TimelineId> = self.segments.iter().chain(&self.dropped).map(|s| s.timeline).collect();
        let mut out = Vec::new();
        for tl in timelines {
            let begin = match self.history(tl).await {
                Ok(h) => self.segno(h.spans.last().expect("own span").begin),
                // Without its history file the timeline's start is unknown: check from its first segment.
                Err(_) => self.segments.iter().find(|s| s.timeline == tl).map(|s| s.segno).unwrap_or(since),
            };
            let last = self.segments.iter().chain(&self.dropped).filter(|s| s.timeline == tl).map(|s| s.segno).max().unwrap_or(0);
            let mut n = begin.max(since);
            let mut prev = None;
            while n <= last {
                let s = WalSegment { timeline: tl, segno: n };
                if self.has(s) {
                    prev = Some(s);
                    n += 1;
                    continue;
                }
                let mut m = n;
                // Up to the next archived segment, or to the last dropped one past the archive's end.
                while m < last && !self.has(WalSegment { timeline: tl, segno: m + 1 }) {
                    m += 1;
                }
                let after = Some(WalSegment { timeline: tl, segno: m + 1 }).filter(|a| self.has(*a));
                out.push((tl, Gap { first_missing: s, last_missing: WalSegment { timeline: tl, segno: m }, before: prev, after }));
                n = m + 1;
            }
        }
        Ok(out)
    }

    /// Timelines above 1 whose segments are archived but whose history file is not.
    pub fn missing_histories(&self) -> Vec<TimelineId> {
        let tls: BTreeSet<TimelineId> = self.segments.iter().map(|s| s.timeline).filter(|t| *t > 1).collect();
        tls.into_iter().filter(|t| !self.histories.contains(t)).collect()
    }
}

/// `A` or `A ... B` for a range of segments.
pub fn describe_range(a: &str, b: &str) -> String {
    if a == b {
        a.to_string()
    } else {
        format!("{a} ... {b}")
    }
}

#[cfg(test)]
mod tests;
