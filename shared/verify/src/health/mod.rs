//! A stanza's health in one repository: the facts (newest backups, the archiver's progress, repository
//! space, the last verification and restore test) and what the alert rules make of them.
//!
//! One evaluation serves `info` (its status word and reasons), the verifier's metrics and the verifier's
//! alerts, so the three never disagree about what is wrong. Rules and thresholds are the `[alerts]`
//! section's:
//!
//! | tier | rule |
//! |---|---|
//! | critical | no backup for longer than the stanza's `rpo_secs` × `backup_late_factor` (1.5) |
//! | critical | WAL archiving is failing: `pg_stat_archiver`'s last failure is newer than its last success |
//! | critical | the repository's filesystem is over `repo_full_critical_percent` (90%) full |
//! | critical | the last restore test failed (until one passes) |
//! | critical | the last verification found damage in a backup or the WAL archive |
//! | critical | the WAL streamer's replication slot has no streamer connected, or keeps more WAL than `wal_stream.slot_retained_max` |
//! | critical | the newest backup cannot be recovered: WAL from its start to its stop is missing from the archive |
//! | warning | an older backup cannot be recovered, for the same reason |
//! | critical | a backup's record cannot be read (corrupt or fails its checksum) |
//! | warning | a backup type's average duration over the last 7 days is `backup_duration_increase_percent` (30%) above the 7 days before |
//! | warning | the repository is over `repo_full_warning_percent` (70%) full |
//! | warning | a whole segment has waited longer than `archive_lag_warning_secs` (1 h) to be archived |
//!
//! The cluster is asked only when it can be reached (a short connection timeout): from a host without
//! access, the archiver's facts are simply unknown, and say so.

mod facts;

pub use facts::evaluate;

use strata_command::format_time;
use serde::Serialize;
use std::collections::BTreeMap;
use strata_config::AlertsConfig;
use strata_messages::BackupRecord;
use strata_repo::restore_tests::RestoreTestResult;
use strata_repo::verify_results::VerifyResult;

/// How bad a finding (or a stanza) is; ordered, so the worst is the max.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Level {
    Ok,
    Warning,
    Critical,
}

impl Level {
    pub fn as_str(self) -> &'static str {
        match self {
            Level::Ok => "ok",
            Level::Warning => "warning",
            Level::Critical => "critical",
        }
    }

    /// The value of the `strata_stanza_status` metric.
    pub fn as_number(self) -> f64 {
        match self {
            Level::Ok => 0.0,
            Level::Warning => 1.0,
            Level::Critical => 2.0,
        }
    }
}

/// One rule that fires.
#[derive(Debug, Clone, Serialize)]
pub struct Finding {
    pub level: Level,
    /// Stable name of the rule ("backup-late", "archive-failing"...), for deduplicating alerts.
    pub rule: &'static str,
    pub summary: String,
}

/// The newest backup of a type.
#[derive(Debug, Clone, Serialize)]
pub struct LastBackup {
    pub label: String,
    pub stop_time: i64,
    pub duration_secs: i64,
    pub stored_bytes: u64,
    pub database_bytes: u64,
}

/// What `pg_stat_archiver` and the WAL position say about archiving.
#[derive(Debug, Clone, Serialize)]
pub struct Archiver {
    pub archived_count: i64,
    pub failed_count: i64,
    pub last_archived_wal: Option<String>,
    pub last_archived_time: Option<i64>,
    pub last_failed_wal: Option<String>,
    pub last_failed_time: Option<i64>,
    /// Bytes of WAL written after the end of the last archived segment.
    pub lag_bytes: u64,
    /// How long the oldest whole segment not yet archived has waited (0 when none is whole yet).
    pub lag_seconds: i64,
    /// The cluster's current WAL position (bytes), against which `strata wal-stream`'s position is measured.
    pub current_lsn: u64,
    /// The WAL streamer's replication slot, when it exists.
    pub stream_slot: Option<StreamSlot>,
}

/// The WAL streamer's replication slot as `pg_replication_slots` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct StreamSlot {
    pub name: String,
    /// Whether a streamer is connected.
    pub active: bool,
    /// WAL from the slot's restart position to the current position: what the primary keeps for it.
    pub retained_bytes: u64,
    /// `wal_stream.slot_retained_max`: more than this is critical.
    pub max_bytes: u64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Space {
    /// Bytes of the repository's objects.
    pub used_bytes: u64,
    /// The filesystem's size and free space (POSIX repositories).
    pub fs_size_bytes: Option<u64>,
    pub fs_free_bytes: Option<u64>,
    pub fs_used_percent: Option<f64>,
}

/// A stanza's health in one repository.
#[derive(Debug, Clone, Serialize)]
pub struct Health {
    pub stanza: String,
    pub repo: String,
    pub time: i64,
    pub status: Level,
    pub findings: Vec<Finding>,
    pub rpo_secs: u64,
    /// By backup type ("full", "diff", "incr").
    pub last_backup: BTreeMap<String, LastBackup>,
    pub archiver: Result<Archiver, String>,
    pub space: Result<Space, String>,
    /// Of the backups that still exist, and of the WAL archive.
    pub verify: Vec<VerifyResult>,
    /// The newest restore test run from this repository.
    pub restore_test: Option<RestoreTestResult>,
    /// Backups whose own WAL (start to stop segment) is not all archived, oldest first.
    pub unrecoverable: Vec<Unrecoverable>,
}

/// A backup recovery cannot make consistent from the archive.
#[derive(Debug, Clone, Serialize)]
pub struct Unrecoverable {
    pub label: String,
    /// The missing segments ("A" or "A ... B").
    pub missing: String,
}

impl Health {
    /// The newest verification among the stored results (backups and WAL).
    pub fn last_verify_time(&self) -> Option<i64> {
        self.verify.iter().map(|v| v.time).max()
    }

    pub fn verify_problems(&self) -> u64 {
        self.verify.iter().map(|v| v.problem_count).sum()
    }

    /// "critical: WAL archiving is failing ...; no backup for ..." or "ok".
    pub fn status_text(&self) -> String {
        if self.findings.is_empty() {
            return "ok".into();
        }
        let reasons: Vec<&str> = self.findings.iter().map(|f| f.summary.as_str()).collect();
        format!("{} ({})", self.status.as_str(), reasons.join("; "))
    }
}

/// The alert rules (see the module docs) over the facts.
pub fn rules(a: &AlertsConfig, h: &Health, backups: &[BackupRecord], now: i64) -> Vec<Finding> {
    let mut out = Vec::new();
    let mut find = |level, rule, summary: String| out.push(Finding { level, rule, summary });
    let late_after = (h.rpo_secs as f64 * a.backup_late_factor) as i64;
    match h.last_backup.values().map(|b| b.stop_time).max() {
        None => find(Level::Critical, "backup-late", "no backup exists".into()),
        Some(t) if now - t > late_after => find(
            Level::Critical,
            "backup-late",
            format!("no backup since {} UTC ({} ago; RPO {})", format_time(t), age(now - t), age(h.rpo_secs as i64)),
        ),
        _ => {}
    }
    if let Ok(ar) = &h.archiver {
        let failing = match (ar.last_failed_time, ar.last_archived_time) {
            (Some(f), Some(ok)) => f > ok,
            (Some(_), None) => true,
            _ => false,
        };
        if failing {
            find(
                Level::Critical,
                "archive-failing",
                format!(
                    "WAL archiving is failing: {} failed at {} UTC{}",
                    ar.last_failed_wal.as_deref().unwrap_or("a WAL file"),
                    format_time(ar.last_failed_time.unwrap_or(0)),
                    ar.last_archived_time.map(|t| format!(", last success {} UTC", format_time(t))).unwrap_or_default()
                ),
            );
        } else if ar.lag_seconds > a.archive_lag_warning_secs as i64 {
            find(
                Level::Warning,
                "archive-lag",
                format!("WAL archiving is {} behind ({} bytes not archived)", age(ar.lag_seconds), ar.lag_bytes),
            );
        }
        if let Some(slot) = &ar.stream_slot {
            if !slot.active {
                find(
                    Level::Critical,
                    "wal-stream-slot",
                    format!(
                        "replication slot {} has no WAL streamer connected and keeps {} bytes of WAL on the primary",
                        slot.name, slot.retained_bytes
                    ),
                );
            } else if slot.retained_bytes > slot.max_bytes {
                find(
                    Level::Critical,
                    "wal-stream-slot",
                    format!("replication slot {} keeps {} bytes of WAL on the primary, over wal_stream.slot_retained_max", slot.name, slot.retained_bytes),
                );
            }
        }
    }
    if let Ok(Space { fs_used_percent: Some(p), .. }) = &h.space {
        if *p > a.repo_full_critical_percent {
            find(Level::Critical, "repo-full", format!("repository '{}' is {p:.0}% full", h.repo));
        } else if *p > a.repo_full_warning_percent {
            find(Level::Warning, "repo-full", format!("repository '{}' is {p:.0}% full", h.repo));
        }
    }
    let damaged: Vec<&VerifyResult> = h.verify.iter().filter(|v| !v.ok()).collect();
    if !damaged.is_empty() {
        let first = damaged[0].problems.first().map(|p| p.to_string()).unwrap_or_default();
        let what: Vec<&str> = damaged.iter().map(|v| v.subject.as_str()).collect();
        find(
            Level::Critical,
            "verify-damage",
            format!(
                "verify found {} problems in repository '{}' ({}): {first}",
                damaged.iter().map(|v| v.problem_count).sum::<u64>(),
                h.repo,
                what.join(", ")
            ),
        );
    }
    let newest = backups.last().map(|b| b.summary.label.as_str());
    for u in &h.unrecoverable {
        let (level, rule, which) = match Some(u.label.as_str()) == newest {
            true => (Level::Critical, "newest-backup-unrecoverable", "the newest backup"),
            false => (Level::Warning, "backup-unrecoverable", "backup"),
        };
        find(level, rule, format!("{which} {} cannot be recovered: its WAL {} is missing from the archive", u.label, u.missing));
    }
    if let Some(t) = h.restore_test.as_ref().filter(|t| !t.passed) {
        find(
            Level::Critical,
            "restore-test-failed",
            format!(
                "the restore test of {} UTC failed: {}",
                format_time(t.start_time),
                t.failure.as_deref().unwrap_or("no reason recorded")
            ),
        );
    }
    for (kind, this, before) in duration_weeks(backups, now) {
        if before > 0.0 && this > before * (1.0 + a.backup_duration_increase_percent / 100.0) {
            find(
                Level::Warning,
                "backup-slower",
                format!("{kind} backups took {:.0}% longer this week ({this:.0} s on average, {before:.0} s the week before)", 100.0 * (this / before - 1.0)),
            );
        }
    }
    out
}

/// Per backup type: the average duration of the backups that ended in the last 7 days, and in the 7 days
/// before (types with backups in both weeks only).
fn duration_weeks(backups: &[BackupRecord], now: i64) -> Vec<(String, f64, f64)> {
    const WEEK: i64 = 7 * 86_400;
    let mut sums: BTreeMap<&str, [(f64, u32); 2]> = BTreeMap::new();
    for b in backups {
        let s = &b.summary;
        let age = now - s.stop_time;
        let week = if age < WEEK { 0 } else if age < 2 * WEEK { 1 } else { continue };
        let e = sums.entry(s.backup_type.as_str()).or_default();
        e[week].0 += (s.stop_time - s.start_time) as f64;
        e[week].1 += 1;
    }
    sums.into_iter()
        .filter(|(_, w)| w[0].1 > 0 && w[1].1 > 0)
        .map(|(k, w)| (k.to_string(), w[0].0 / w[0].1 as f64, w[1].0 / w[1].1 as f64))
        .collect()
}

/// "3 h 20 min", "45 s".
pub fn age(secs: i64) -> String {
    let s = secs.max(0);
    match s {
        0..=119 => format!("{s} s"),
        120..=7199 => format!("{} min", s / 60),
        7200..=172_799 => format!("{} h {} min", s / 3600, s % 3600 / 60),
        _ => format!("{} days", s / 86_400),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use strata_messages::BackupType;

    const NOW: i64 = 1_800_000_000;

    fn backup(kind: BackupType, stop_time: i64, duration: i64) -> BackupRecord {
        let summary = strata_messages::BackupSummary {
            label: format!("b{stop_time}"),
            backup_type: kind,
            start_time: stop_time - duration,
            stop_time,
            start_lsn: 0,
            stop_lsn: 0,
            timeline: 1,
            wal_start: String::new(),
            wal_stop: String::new(),
            pg_version_num: 150000,
            system_id: 1,
            wal_segment_size: 16 << 20,
            reference: String::new(),
            database_bytes: 0,
            read_bytes: 0,
            stored_bytes: 0,
            sent_bytes: 0,
            file_count: 0,
            checksum_failures: 0,
        };
        BackupRecord { version: 2, summary, manifest_len: 0, manifest_chunks: Vec::new() }
    }

    fn health(backups: &[BackupRecord]) -> Health {
        let mut last_backup = BTreeMap::new();
        for b in backups {
            let s = &b.summary;
            last_backup.insert(
                s.backup_type.as_str().to_string(),
                LastBackup { label: s.label.clone(), stop_time: s.stop_time, duration_secs: s.stop_time - s.start_time, stored_bytes: 0, database_bytes: 0 },
            );
        }
        Health {
            stanza: "main".into(),
            repo: "local".into(),
            time: NOW,
            status: Level::Ok,
            findings: Vec::new(),
            rpo_secs: 86_400,
            last_backup,
            archiver: Err("not asked".into()),
            space: Err("not asked".into()),
            verify: Vec::new(),
            restore_test: None,
            unrecoverable: Vec::new(),
        }
    }

    fn rules_of(h: &Health, backups: &[BackupRecord]) -> Vec<(&'static str, Level)> {
        rules(&AlertsConfig::default(), h, backups, NOW).into_iter().map(|f| (f.rule, f.level)).collect()
    }

    fn archiver(last_archived: Option<i64>, last_failed: Option<i64>, lag_seconds: i64) -> Archiver {
        Archiver {
            archived_count: 10,
            failed_count: i64::from(last_failed.is_some()),
            last_archived_wal: Some("000000010000000000000009".into()),
            last_archived_time: last_archived,
            last_failed_wal: last_failed.map(|_| "00000001000000000000000A".into()),
            last_failed_time: last_failed,
            lag_bytes: 0,
            lag_seconds,
            current_lsn: 0,
            stream_slot: None,
        }
    }

    #[test]
    fn a_streaming_slot_without_a_streamer_or_holding_too_much_is_critical() {
        let b = [backup(BackupType::Full, NOW - 60, 60)];
        let mut h = health(&b);
        let slot = |active, retained_bytes| StreamSlot { name: "strata_main".into(), active, retained_bytes, max_bytes: 1 << 30 };
        let mut ar = archiver(Some(NOW - 5), None, 0);
        ar.stream_slot = Some(slot(true, 1 << 20));
        h.archiver = Ok(ar.clone());
        assert!(rules_of(&h, &b).is_empty(), "a streamer keeping up");
        ar.stream_slot = Some(slot(false, 1 << 20));
        h.archiver = Ok(ar.clone());
        assert_eq!(rules_of(&h, &b), vec![("wal-stream-slot", Level::Critical)]);
        ar.stream_slot = Some(slot(true, 2 << 30));
        h.archiver = Ok(ar);
        assert_eq!(rules_of(&h, &b), vec![("wal-stream-slot", Level::Critical)]);
    }

    #[test]
    fn a_backup_is_late_after_the_rpo_and_a_half() {
        let fresh = [backup(BackupType::Full, NOW - 86_400, 60)];
        assert!(rules_of(&health(&fresh), &fresh).is_empty());
        let late = [backup(BackupType::Full, NOW - 130_000, 60)];
        assert_eq!(rules_of(&health(&late), &late), vec![("backup-late", Level::Critical)]);
        assert_eq!(rules_of(&health(&[]), &[]), vec![("backup-late", Level::Critical)]);
    }

    #[test]
    fn archiving_fails_when_the_last_failure_is_newer_than_the_last_success() {
        let b = [backup(BackupType::Full, NOW - 60, 60)];
        let mut h = health(&b);
        h.archiver = Ok(archiver(Some(NOW - 100), Some(NOW - 10), 0));
        assert_eq!(rules_of(&h, &b), vec![("archive-failing", Level::Critical)]);
        h.archiver = Ok(archiver(Some(NOW - 5), Some(NOW - 10), 0));
        assert!(rules_of(&h, &b).is_empty(), "fixed: the success came after the failure");
        h.archiver = Ok(archiver(Some(NOW - 7200), None, 7200));
        assert_eq!(rules_of(&h, &b), vec![("archive-lag", Level::Warning)]);
    }

    #[test]
    fn repository_space_warns_at_70_and_is_critical_at_90_percent() {
        let b = [backup(BackupType::Full, NOW - 60, 60)];
        let mut h = health(&b);
        let space = |p: f64| Ok(Space { used_bytes: 1, fs_size_bytes: Some(100), fs_free_bytes: Some(1), fs_used_percent: Some(p) });
        h.space = space(50.0);
        assert!(rules_of(&h, &b).is_empty());
        h.space = space(75.0);
        assert_eq!(rules_of(&h, &b), vec![("repo-full", Level::Warning)]);
        h.space = space(95.0);
        assert_eq!(rules_of(&h, &b), vec![("repo-full", Level::Critical)]);
    }

    #[test]
    fn backups_slower_week_over_week_warn() {
        let day = 86_400;
        let steady = [backup(BackupType::Full, NOW - 10 * day, 100), backup(BackupType::Full, NOW - day, 120)];
        assert!(rules_of(&health(&steady), &steady).is_empty(), "20% slower is within 30%");
        let slower = [backup(BackupType::Full, NOW - 10 * day, 100), backup(BackupType::Full, NOW - day, 140)];
        assert_eq!(rules_of(&health(&slower), &slower), vec![("backup-slower", Level::Warning)]);
    }

    #[test]
    fn a_backup_without_its_wal_is_critical_when_newest_and_a_warning_when_older() {
        let b = [backup(BackupType::Full, NOW - 7200, 60), backup(BackupType::Incr, NOW - 60, 60)];
        let mut h = health(&b);
        let gone = |label: &str| Unrecoverable { label: label.to_string(), missing: "000000010000000000000009".into() };
        h.unrecoverable = vec![gone(&b[1].summary.label)];
        assert_eq!(rules_of(&h, &b), vec![("newest-backup-unrecoverable", Level::Critical)]);
        h.unrecoverable = vec![gone(&b[0].summary.label)];
        assert_eq!(rules_of(&h, &b), vec![("backup-unrecoverable", Level::Warning)]);
    }

    #[test]
    fn ages_read_naturally() {
        assert_eq!(age(45), "45 s");
        assert_eq!(age(600), "10 min");
        assert_eq!(age(3 * 3600 + 1200), "3 h 20 min");
        assert_eq!(age(5 * 86_400), "5 days");
    }
}
