//! Timeline history files (`0000000N.history`): which timelines a timeline descends from, and where each
//! branched off.
//!
//! Recovery follows a timeline's history: it reads each WAL segment from the newest timeline of the
//! history that had begun by then (PostgreSQL 15's `XLogFileReadAnyTLI`). Strata mirrors that to know
//! which archived files a recovery will ask for, and so whether the archive can serve it.
//!
//! A history file has one line per ancestor, oldest first: the ancestor's id, the LSN where its child
//! began (`%X/%X`), and a free-text reason, tab-separated. `#` comments and blank lines are ignored, as in
//! `readTimeLineHistory`.

use crate::{Lsn, TimelineId, WalSegment};

/// One timeline of a history and the WAL range it covers there: `[begin, end)`, `end` `None` for the
/// timeline the history is of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TimelineSpan {
    pub timeline: TimelineId,
    pub begin: Lsn,
    pub end: Option<Lsn>,
}

/// A timeline and its ancestors, oldest first.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TimelineHistory {
    pub spans: Vec<TimelineSpan>,
}

/// A history file line that is not `TLI<tab>X/X...`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("line {line} of the history of timeline {timeline} is malformed: {text:?}")]
pub struct HistoryParseError {
    pub timeline: TimelineId,
    pub line: usize,
    pub text: String,
}

/// Why the contents of a history file pushed to the archive are refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HistoryFileError {
    #[error("timeline {0} has no history file (only timelines after 1 have one)")]
    NoHistory(TimelineId),
    #[error("it is not text")]
    NotText,
    #[error(transparent)]
    Malformed(#[from] HistoryParseError),
    #[error("it names no parent timeline (a history file has a line per ancestor: parent<TAB>switch LSN<TAB>reason)")]
    NoParent,
}

impl TimelineHistory {
    /// Checks and parses a history file as PostgreSQL's `readTimeLineHistory` would read it, and also
    /// refuses what `writeTimeLineHistory` never writes: a file of timeline 0 or 1, not UTF-8 text (PostgreSQL
    /// writes ASCII reasons), or without a parent. A file that passes can serve a later recovery.
    pub fn parse_file(timeline: TimelineId, bytes: &[u8]) -> Result<TimelineHistory, HistoryFileError> {
        if timeline <= 1 {
            return Err(HistoryFileError::NoHistory(timeline));
        }
        let text = std::str::from_utf8(bytes).map_err(|_| HistoryFileError::NotText)?;
        let history = TimelineHistory::parse(timeline, text)?;
        if history.parent().is_none() {
            return Err(HistoryFileError::NoParent);
        }
        Ok(history)
    }

    /// The timeline this one branched from (`None` for a history without ancestors, timeline 1's).
    pub fn parent(&self) -> Option<TimelineId> {
        self.spans.len().checked_sub(2).map(|i| self.spans[i].timeline)
    }

    /// The history of timeline 1, which has no file.
    pub fn first() -> TimelineHistory {
        TimelineHistory { spans: vec![TimelineSpan { timeline: 1, begin: Lsn(0), end: None }] }
    }

    /// Parses the contents of `timeline`'s history file.
    pub fn parse(timeline: TimelineId, text: &str) -> Result<TimelineHistory, HistoryParseError> {
        let mut spans = Vec::new();
        let mut begin = Lsn(0);
        for (i, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let err = || HistoryParseError { timeline, line: i + 1, text: raw.to_string() };
            let mut fields = line.split_whitespace();
            let parent: TimelineId = fields.next().and_then(|f| f.parse().ok()).ok_or_else(err)?;
            let switch: Lsn = fields.next().and_then(|f| f.parse().ok()).ok_or_else(err)?;
            if spans.last().is_some_and(|s: &TimelineSpan| s.timeline >= parent) || parent >= timeline || switch < begin {
                return Err(err());
            }
            spans.push(TimelineSpan { timeline: parent, begin, end: Some(switch) });
            begin = switch;
        }
        spans.push(TimelineSpan { timeline, begin, end: None });
        Ok(TimelineHistory { spans })
    }

    /// The timeline the history is of.
    pub fn timeline(&self) -> TimelineId {
        self.spans.last().expect("a history has its own timeline").timeline
    }

    /// The span of `timeline` in this history, if it is part of it.
    pub fn span(&self, timeline: TimelineId) -> Option<&TimelineSpan> {
        self.spans.iter().find(|s| s.timeline == timeline)
    }

    /// Whether the WAL position `lsn` of `timeline` is part of this history: recovery from a backup
    /// that ended there can follow it (`tliOfPointInHistory`).
    pub fn contains(&self, timeline: TimelineId, lsn: Lsn) -> bool {
        self.span(timeline).is_some_and(|s| lsn >= s.begin && s.end.is_none_or(|e| lsn <= e))
    }

    /// The file recovery reads for segment number `segno`: that of the newest timeline that began at or
    /// before the segment (`XLogFileReadAnyTLI`, which compares segment numbers, so the segment where a
    /// timeline begins is read from the new timeline).
    pub fn segment(&self, segno: u64, seg_size: u64) -> WalSegment {
        let timeline = self
            .spans
            .iter()
            .rev()
            .find(|s| s.begin.0 / seg_size <= segno)
            .map(|s| s.timeline)
            .unwrap_or(self.spans[0].timeline);
        WalSegment { timeline, segno }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEG: u64 = 16 << 20;

    #[test]
    fn parses_what_postgresql_writes() {
        let text = "1\t0/5000A28\tbefore 2026-01-01 00:00:00+00\n\n# comment\n2\t0/7000000\tno recovery target specified\n";
        let h = TimelineHistory::parse(3, text).unwrap();
        assert_eq!(
            h.spans,
            vec![
                TimelineSpan { timeline: 1, begin: Lsn(0), end: Some(Lsn(0x5000A28)) },
                TimelineSpan { timeline: 2, begin: Lsn(0x5000A28), end: Some(Lsn(0x7000000)) },
                TimelineSpan { timeline: 3, begin: Lsn(0x7000000), end: None },
            ]
        );
        assert_eq!(h.timeline(), 3);
        assert_eq!(h.segment(4, SEG), WalSegment { timeline: 1, segno: 4 });
        // The segment where timeline 2 began is read from timeline 2.
        assert_eq!(h.segment(5, SEG), WalSegment { timeline: 2, segno: 5 });
        assert_eq!(h.segment(7, SEG), WalSegment { timeline: 3, segno: 7 });
        assert_eq!(h.segment(70, SEG), WalSegment { timeline: 3, segno: 70 });
        assert!(h.contains(1, Lsn(0x5000A28)));
        assert!(!h.contains(1, Lsn(0x5000A29)));
        assert!(h.contains(3, Lsn(0x9000000)));
        assert!(!h.contains(4, Lsn(0x9000000)));
    }

    #[test]
    fn refuses_malformed_lines() {
        for bad in ["x\t0/1\n", "1\tnope\n", "2\t0/5\n1\t0/6\n", "1\t0/9\n2\t0/5\n", "3\t0/5\n"] {
            assert!(TimelineHistory::parse(3, bad).is_err(), "{bad:?}");
        }
        assert_eq!(TimelineHistory::parse(1, "").unwrap(), TimelineHistory::first());
    }

    #[test]
    fn history_files_are_checked_before_archiving() {
        let h = TimelineHistory::parse_file(3, b"1\t0/5000A28\tbefore\n2\t0/7000000\tno recovery target specified\n").unwrap();
        assert_eq!(h.parent(), Some(2));
        assert_eq!(TimelineHistory::parse_file(2, b"# a comment\n\n1\t0/3000158\tno recovery target specified\n").unwrap().parent(), Some(1));
        assert_eq!(TimelineHistory::first().parent(), None);
        assert!(matches!(TimelineHistory::parse_file(2, b"garbage"), Err(HistoryFileError::Malformed(_))));
        assert_eq!(TimelineHistory::parse_file(2, b""), Err(HistoryFileError::NoParent));
        assert_eq!(TimelineHistory::parse_file(2, b"# only a comment\n"), Err(HistoryFileError::NoParent));
        assert_eq!(TimelineHistory::parse_file(2, b"1\t0/5\t\xff\n"), Err(HistoryFileError::NotText));
        assert_eq!(TimelineHistory::parse_file(1, b""), Err(HistoryFileError::NoHistory(1)));
        assert_eq!(TimelineHistory::parse_file(0, b"1\t0/5\n"), Err(HistoryFileError::NoHistory(0)));
        // Parents must be below the file's own timeline, in increasing order.
        assert!(TimelineHistory::parse_file(2, b"2\t0/5\n").is_err());
        assert!(TimelineHistory::parse_file(4, b"2\t0/5\n1\t0/6\n").is_err());
    }
}
