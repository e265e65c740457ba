//! Recovery targets: what `restore --type ... --target ...` asks for, which backup serves it, and whether
//! the archive can take recovery there.
//!
//! Every check happens before restore writes a byte, so a target that cannot be reached costs the user a
//! one-line answer instead of a data directory that fails to recover. The backup is the newest one that
//! ends before the target (a backup that ends after it cannot stop there: PostgreSQL refuses a stop point
//! before the consistent point), and the archive must hold every segment recovery reads on the way (see
//! [`crate::wal_archive`]).
//!
//! Time targets are read by [`crate::target_time`]. A backup ends before a time target when its stop time, kept in
//! whole seconds, is at least a second before it: every transaction before the backup's end was before
//! that second was over.

pub use crate::target_time::{format_pg_time, parse_time};
use crate::wal_archive::{describe_range, Gap, Located, Search, TargetTimeline, WalArchive, Want};
use strata_command::RecoveryType;
use anyhow::{anyhow, bail};
use strata_messages::BackupRecord;
use strata_pg::timeline::TimelineHistory;
use strata_pg::Lsn;

/// `recovery_target_action`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TargetAction {
    /// Stay in recovery, read-only, paused at the target (PostgreSQL's own default).
    Pause,
    /// End recovery at the target and accept writes.
    Promote,
    /// Stop the server at the target.
    Shutdown,
}

impl TargetAction {
    fn as_str(self) -> &'static str {
        match self {
            TargetAction::Pause => "pause",
            TargetAction::Promote => "promote",
            TargetAction::Shutdown => "shutdown",
        }
    }
}

/// Where recovery stops.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The end of the archive.
    Default,
    /// The backup's consistent point.
    Immediate,
    /// A replica: streams from the primary after the archive.
    Standby,
    /// Microseconds since the Unix epoch.
    Time(i64),
    Lsn(Lsn),
    /// As given (PostgreSQL takes a 64-bit xid with its epoch and compares the low 32 bits).
    Xid(u64),
    Name(String),
}

/// The parsed recovery options of a restore.
#[derive(Debug, Clone)]
pub struct Recovery {
    pub target: Target,
    pub action: TargetAction,
    pub timeline: Option<TargetTimeline>,
    pub exclusive: bool,
}

/// A restore's recovery options as given on the command line.
pub struct RecoveryArgs<'a> {
    pub kind: RecoveryType,
    pub target: Option<&'a str>,
    pub action: Option<TargetAction>,
    pub timeline: Option<&'a str>,
    pub exclusive: bool,
}

impl Recovery {
    /// Validates the combination and each value, with one error naming the option.
    pub fn parse(a: &RecoveryArgs<'_>) -> anyhow::Result<Recovery> {
        let needs_value = matches!(a.kind, RecoveryType::Time | RecoveryType::Lsn | RecoveryType::Xid | RecoveryType::Name);
        let kind = kind_name(a.kind);
        let value = match (needs_value, a.target) {
            (true, None) => bail!("--type {kind} needs --target VALUE ({})", example(a.kind)),
            (false, Some(_)) => bail!("--target is only for --type time, lsn, xid or name, not {kind}"),
            (_, v) => v.unwrap_or_default(),
        };
        let target = match a.kind {
            RecoveryType::Default => Target::Default,
            RecoveryType::Immediate => Target::Immediate,
            RecoveryType::Standby => Target::Standby,
            RecoveryType::Time => Target::Time(parse_time(value).map_err(|e| anyhow!("--target '{value}': {e}"))?),
            RecoveryType::Lsn => Target::Lsn(value.parse().map_err(|e| anyhow!("--target: {e}"))?),
            RecoveryType::Xid => Target::Xid(
                value
                    .parse::<u64>()
                    .ok()
                    .filter(|x| *x as u32 >= 3)
                    .ok_or_else(|| anyhow!("--target '{value}' is not a transaction id (a number of at least 3, as txid_current() shows)"))?,
            ),
            RecoveryType::Name => {
                if value.is_empty() || value.len() >= 64 {
                    bail!("--target '{value}': a restore point name is 1 to 63 bytes");
                }
                Target::Name(value.to_string())
            }
        };
        if a.action.is_some() && matches!(target, Target::Default | Target::Standby) {
            bail!("--target-action is only for a recovery target (--type immediate, time, lsn, xid or name), not {kind}");
        }
        if a.exclusive && !matches!(target, Target::Time(_) | Target::Lsn(_) | Target::Xid(_)) {
            bail!("--target-exclusive is only for --type time, lsn or xid, not {kind}");
        }
        let timeline = a.timeline.map(parse_timeline).transpose()?;
        Ok(Recovery { target, action: a.action.unwrap_or(TargetAction::Promote), timeline, exclusive: a.exclusive })
    }

    /// The postgresql.auto.conf settings for this recovery, besides restore_command.
    pub fn settings(&self) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        match &self.target {
            Target::Default | Target::Standby => {}
            Target::Immediate => out.push(("recovery_target", "immediate".to_string())),
            Target::Time(t) => out.push(("recovery_target_time", format_pg_time(*t))),
            Target::Lsn(l) => out.push(("recovery_target_lsn", l.to_string())),
            Target::Xid(x) => out.push(("recovery_target_xid", x.to_string())),
            Target::Name(n) => out.push(("recovery_target_name", n.clone())),
        }
        if self.exclusive {
            out.push(("recovery_target_inclusive", "false".to_string()));
        }
        if !matches!(self.target, Target::Default | Target::Standby) {
            out.push(("recovery_target_action", self.action.as_str().to_string()));
        }
        if let Some(t) = self.timeline {
            out.push((
                "recovery_target_timeline",
                match t {
                    TargetTimeline::Current => "current".to_string(),
                    TargetTimeline::Latest => "latest".to_string(),
                    TargetTimeline::Id(n) => n.to_string(),
                },
            ));
        }
        out
    }

    fn describe_target(&self) -> String {
        match (&self.target, self.exclusive) {
            (Target::Time(t), false) => format!("the first transaction end after {} UTC", format_pg_time(*t).trim_end_matches("+00")),
            (Target::Time(t), true) => {
                format!("just before the first transaction end at or after {} UTC", format_pg_time(*t).trim_end_matches("+00"))
            }
            (Target::Lsn(l), false) => format!("LSN {l}"),
            (Target::Lsn(l), true) => format!("just before LSN {l}"),
            (Target::Xid(x), false) => format!("the end of transaction {x}"),
            (Target::Xid(x), true) => format!("just before the end of transaction {x}"),
            (Target::Name(n), _) => format!("restore point '{n}'"),
            (Target::Immediate, _) => "the backup's consistent point".into(),
            (Target::Default | Target::Standby, _) => String::new(),
        }
    }
}

fn kind_name(k: RecoveryType) -> &'static str {
    match k {
        RecoveryType::Default => "default",
        RecoveryType::Immediate => "immediate",
        RecoveryType::Standby => "standby",
        RecoveryType::Time => "time",
        RecoveryType::Lsn => "lsn",
        RecoveryType::Xid => "xid",
        RecoveryType::Name => "name",
    }
}

fn example(k: RecoveryType) -> &'static str {
    match k {
        RecoveryType::Time => "a time such as '2026-11-24 15:16:59+00'",
        RecoveryType::Lsn => "an LSN such as 0/5000028",
        RecoveryType::Xid => "a transaction id",
        _ => "a restore point name",
    }
}

fn parse_timeline(v: &str) -> anyhow::Result<TargetTimeline> {
    match v {
        "current" => Ok(TargetTimeline::Current),
        "latest" => Ok(TargetTimeline::Latest),
        n => n
            .parse::<u32>()
            .ok()
            .filter(|n| *n >= 1)
            .map(TargetTimeline::Id)
            .ok_or_else(|| anyhow!("--target-timeline '{v}': expected current, latest or a timeline number")),
    }
}

/// The backup a restore uses and what recovery will do with it.
pub struct Plan {
    pub record: BackupRecord,
    pub history: TimelineHistory,
    /// For the user: where recovery stops and what the archive holds for it.
    pub describe: String,
}

/// Why a backup cannot serve the target.
enum Refusal {
    /// It ends after the target, or is not on the target timeline's path: an older one may do.
    Skip(String),
    /// The archive cannot take recovery from it to the target.
    Unreachable(String),
}

/// Picks the backup (`set`, or the newest that can serve the target) and checks the archive reaches the
/// target from it. `backups` is oldest first.
pub async fn plan(
    archive: &mut WalArchive<'_>,
    backups: Vec<BackupRecord>,
    set: Option<&str>,
    recovery: &Recovery,
    stanza: &str,
) -> anyhow::Result<Plan> {
    let candidates: Vec<BackupRecord> = match set {
        Some(label) => {
            let b = backups
                .into_iter()
                .find(|b| b.summary.label == label)
                .ok_or_else(|| anyhow!("backup '{label}' does not exist in stanza '{stanza}'"))?;
            vec![b]
        }
        None => backups.into_iter().rev().collect(),
    };
    if candidates.is_empty() {
        bail!("stanza '{stanza}' has no backup to restore");
    }
    let mut first_unreachable = None;
    let mut last_skip = None;
    for b in candidates {
        match evaluate(archive, &b, recovery).await? {
            Ok((history, describe)) => {
                return Ok(Plan { record: b, history, describe });
            }
            Err(Refusal::Unreachable(why)) => {
                first_unreachable.get_or_insert(why);
            }
            Err(Refusal::Skip(why)) => last_skip = Some(why),
        }
    }
    let why = first_unreachable.or(last_skip).expect("at least one backup was tried");
    match set {
        Some(_) => bail!("{why}"),
        None => bail!("no backup can reach the target: {why}"),
    }
}

fn gap_text(archive: &WalArchive<'_>, gap: &Gap) -> String {
    let missing = describe_range(&archive.name(gap.first_missing), &archive.name(gap.last_missing));
    match (gap.before, gap.after) {
        (Some(b), Some(a)) => format!("WAL is missing between {} and {} ({missing})", archive.name(b), archive.name(a)),
        (None, Some(a)) => format!("WAL is missing before {} ({missing})", archive.name(a)),
        (Some(b), None) => format!("WAL after {} is not archived ({missing} is missing)", archive.name(b)),
        (None, None) => format!("{missing} is not archived"),
    }
}

async fn evaluate(
    archive: &mut WalArchive<'_>,
    b: &BackupRecord,
    recovery: &Recovery,
) -> anyhow::Result<Result<(TimelineHistory, String), Refusal>> {
    let s = &b.summary;
    let label = &s.label;
    let timeline = recovery.timeline.unwrap_or(TargetTimeline::Latest);
    let history = match archive.target_history(s.timeline, timeline).await {
        Ok(h) => h,
        Err(e) => return Ok(Err(Refusal::Unreachable(format!("backup {label}: {e:#}")))),
    };
    let stop = Lsn(s.stop_lsn);
    if !history.contains(s.timeline, stop) {
        let span = history.span(s.timeline);
        return Ok(Err(Refusal::Skip(match span.and_then(|sp| sp.end) {
            Some(end) => format!(
                "backup {label} ended at {stop} on timeline {}, after timeline {} branched off it at {end}; restore it with --target-timeline current, or use a later backup",
                s.timeline,
                history.timeline()
            ),
            None => format!("backup {label} is on timeline {}, which is not in the history of timeline {}", s.timeline, history.timeline()),
        })));
    }
    let start = archive.parse(&s.wal_start)?.segno;
    let stop_seg = archive.parse(&s.wal_stop)?.segno;
    if let Some(gap) = archive.first_gap(&history, start, stop_seg) {
        return Ok(Err(Refusal::Unreachable(format!(
            "backup {label} cannot become consistent: {}",
            gap_text(archive, &gap)
        ))));
    }
    let (describe, through) = match route(archive, &history, b, recovery, start, stop_seg).await? {
        Ok(route) => route,
        Err(refusal) => return Ok(Err(refusal)),
    };
    // archive-get fails on a segment whose record or pack is damaged, and PostgreSQL takes that for the
    // archive's end: the records recovery relies on must read back, not only be listed.
    if let Some((seg, why)) = archive.first_unreadable(&history, start, through).await? {
        let consequence = match seg.segno <= stop_seg {
            true => "the backup cannot become consistent".to_string(),
            false => format!("recovery would stop before it, short of {}", target_text(recovery)),
        };
        return Ok(Err(Refusal::Unreachable(format!(
            "backup {label}: archived WAL {} cannot be restored ({why}), so {consequence}",
            archive.name(seg)
        ))));
    }
    Ok(Ok((history, describe)))
}

/// What recovery from backup `b` to the target will do, and the last segment it reads; a refusal when the
/// archive cannot take it there. `start`, `stop_seg`: the backup's first and last segments, which the
/// archive was checked to hold.
async fn route(
    archive: &mut WalArchive<'_>,
    history: &TimelineHistory,
    b: &BackupRecord,
    recovery: &Recovery,
    start: u64,
    stop_seg: u64,
) -> anyhow::Result<Result<(String, u64), Refusal>> {
    let s = &b.summary;
    let label = &s.label;
    let stop = Lsn(s.stop_lsn);
    let action = match recovery.action {
        TargetAction::Pause => "pauses there (read-only)",
        TargetAction::Promote => "promotes",
        TargetAction::Shutdown => "shuts down",
    };
    let tl_note = if history.timeline() != s.timeline { format!(" on timeline {}", history.timeline()) } else { String::new() };
    Ok(Ok(match &recovery.target {
        Target::Default => {
            if let Some(gap) = archive.gap_after(&history, start) {
                let stop_at = gap.before.map(|b| archive.name(b)).unwrap_or_else(|| s.wal_stop.clone());
                return Ok(Err(Refusal::Unreachable(format!(
                    "backup {label}: {}, so recovery would stop at {stop_at} and leave out the WAL archived after it; choose a target before the gap (--type time, lsn, xid or name) or --type immediate",
                    gap_text(archive, &gap)
                ))));
            }
            // At least the backup's own segments: they were checked above.
            let end = archive.contiguous_end(&history, start).map_or(stop_seg, |e| e.segno);
            let end_name = archive.name(history.segment(end, archive.seg_size));
            (format!("recovery replays the archive{tl_note} to its end (now {end_name}), then promotes"), end)
        }
        // A replica that cannot fetch a segment streams it from the primary instead: it needs only what
        // makes the backup consistent.
        Target::Standby => ("the copy starts as a replica: it replays the archive, then streams from the primary".to_string(), stop_seg),
        Target::Immediate => (format!("recovery stops at the backup's consistent point ({stop}) and {action}"), stop_seg),
        Target::Lsn(l) => {
            if *l < stop {
                return Ok(Err(Refusal::Skip(format!("backup {label} ends at {stop}, after the target LSN {l}"))));
            }
            let seg = history.segment(archive.segno(*l), archive.seg_size);
            // The record at the target must be read whole: past the segment's last whole record it ends
            // in the next segment.
            let needed = match archive.summary(seg).await? {
                Some(sum) if l.0 > sum.last_start => history.segment(seg.segno + 1, archive.seg_size),
                _ => seg,
            };
            if let Some(gap) = archive.first_gap(&history, start, needed.segno) {
                return Ok(Err(Refusal::Unreachable(format!(
                    "backup {label} cannot reach LSN {l} (in {}): {}",
                    archive.name(seg),
                    gap_text(archive, &gap)
                ))));
            }
            (format!("recovery{tl_note} stops at LSN {l} (WAL archived through {}) and {action}", archive.name(needed)), needed.segno)
        }
        Target::Time(t) => {
            if (s.stop_time + 1) * 1_000_000 > *t {
                return Ok(Err(Refusal::Skip(format!(
                    "the target {} UTC is before the end of backup {label} ({} UTC)",
                    format_pg_time(*t).trim_end_matches("+00"),
                    strata_stamp::format_time(s.stop_time)
                ))));
            }
            let want = Want::TimeAfter { time: *t, exclusive: recovery.exclusive };
            match located(archive, &history, start, &want, label, &recovery.describe_target()).await? {
                Ok(loc) => (describe_found(archive, recovery, &loc, &tl_note, action), loc.segment.segno),
                Err(r) => return Ok(Err(r)),
            }
        }
        Target::Xid(x) => {
            let want = Want::Xid(*x as u32);
            match located(archive, &history, start, &want, label, &recovery.describe_target()).await? {
                Ok(loc) if ends_before(&loc, stop_seg, stop) => {
                    return Ok(Err(Refusal::Skip(format!("transaction {x} ended before backup {label} did"))))
                }
                Ok(loc) => (describe_found(archive, recovery, &loc, &tl_note, action), loc.segment.segno),
                Err(r) => return Ok(Err(r)),
            }
        }
        Target::Name(n) => {
            let want = Want::RestorePoint(n);
            match located(archive, &history, start, &want, label, &recovery.describe_target()).await? {
                Ok(loc) if ends_before(&loc, stop_seg, stop) => {
                    return Ok(Err(Refusal::Skip(format!("restore point '{n}' was made before backup {label} ended"))))
                }
                Ok(loc) => (describe_found(archive, recovery, &loc, &tl_note, action), loc.segment.segno),
                Err(r) => return Ok(Err(r)),
            }
        }
    }))
}

/// Where recovery was asked to go, for a refusal.
fn target_text(recovery: &Recovery) -> String {
    match recovery.target {
        Target::Default | Target::Standby => "the archive's end".to_string(),
        _ => recovery.describe_target(),
    }
}

/// Whether a found record lies before the backup's end (where it is not known, in the backup's last
/// segment counts as before: recovery could not stop there).
fn ends_before(loc: &Located, stop_seg: u64, stop: Lsn) -> bool {
    loc.segment.segno < stop_seg || (loc.segment.segno == stop_seg && loc.lsn.is_none_or(|l| l < stop))
}

fn describe_found(archive: &WalArchive<'_>, recovery: &Recovery, loc: &Located, tl_note: &str, action: &str) -> String {
    let at = match (loc.lsn, loc.time) {
        (Some(l), Some(t)) => format!(" at {l}, {} UTC,", format_pg_time(t).trim_end_matches("+00")),
        _ => String::new(),
    };
    format!(
        "recovery{tl_note} stops at {}{at} (in {}) and {action}",
        recovery.describe_target(),
        archive.name(loc.segment)
    )
}

/// Searches for the target from a backup's first segment; a refusal when the archive does not hold it.
async fn located(
    archive: &mut WalArchive<'_>,
    history: &TimelineHistory,
    start: u64,
    want: &Want<'_>,
    label: &str,
    what: &str,
) -> anyhow::Result<Result<Located, Refusal>> {
    Ok(match archive.search(history, start, want).await? {
        Search::Found(loc) => Ok(loc),
        Search::Missing(gap) => Err(Refusal::Unreachable(format!(
            "backup {label} cannot reach {what}: {}",
            gap_text(archive, &gap)
        ))),
        Search::End(last) => {
            let end = last.map(|l| format!(" (it ends at {})", archive.name(l))).unwrap_or_default();
            let msg = match want {
                Want::TimeAfter { .. } => format!(
                    "no transaction ended after the target in the WAL archived since backup {label}{end}, so recovery would end before reaching it; once one has, force a WAL switch (strata check) and retry"
                ),
                Want::Xid(_) => format!("{what} is not in the WAL archived since backup {label}{end}"),
                Want::RestorePoint(_) => format!("{what} is not in the WAL archived since backup {label}{end}"),
            };
            // Not found after this backup's start: an older backup's WAL may hold it.
            Err(match want {
                Want::TimeAfter { .. } => Refusal::Unreachable(msg),
                _ => Refusal::Skip(msg),
            })
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(kind: RecoveryType, target: Option<&str>) -> RecoveryArgs<'_> {
        RecoveryArgs { kind, target, action: None, timeline: None, exclusive: false }
    }

    #[test]
    fn values_are_checked_per_type() {
        assert!(Recovery::parse(&args(RecoveryType::Time, None)).is_err());
        assert!(Recovery::parse(&args(RecoveryType::Default, Some("x"))).is_err());
        assert!(Recovery::parse(&args(RecoveryType::Lsn, Some("5000028"))).is_err());
        assert_eq!(Recovery::parse(&args(RecoveryType::Lsn, Some("0/5000028"))).unwrap().target, Target::Lsn(Lsn(0x5000028)));
        assert!(Recovery::parse(&args(RecoveryType::Xid, Some("-4"))).is_err());
        assert!(Recovery::parse(&args(RecoveryType::Xid, Some("2"))).is_err());
        assert_eq!(Recovery::parse(&args(RecoveryType::Xid, Some("4294967300"))).unwrap().target, Target::Xid(4294967300));
        assert!(Recovery::parse(&args(RecoveryType::Name, Some(&"n".repeat(64)))).is_err());
        let mut a = args(RecoveryType::Default, None);
        a.action = Some(TargetAction::Pause);
        assert!(Recovery::parse(&a).is_err());
        let mut a = args(RecoveryType::Name, Some("rp"));
        a.exclusive = true;
        assert!(Recovery::parse(&a).is_err());
        let mut a = args(RecoveryType::Xid, Some("1234"));
        a.timeline = Some("0");
        assert!(Recovery::parse(&a).is_err());
        a.timeline = Some("latest");
        a.exclusive = true;
        a.action = Some(TargetAction::Pause);
        let r = Recovery::parse(&a).unwrap();
        assert_eq!(
            r.settings(),
            vec![
                ("recovery_target_xid", "1234".to_string()),
                ("recovery_target_inclusive", "false".to_string()),
                ("recovery_target_action", "pause".to_string()),
                ("recovery_target_timeline", "latest".to_string()),
            ]
        );
    }
}
