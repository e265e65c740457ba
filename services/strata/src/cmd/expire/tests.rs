use super::*;

fn backup(label: &str, kind: BackupType, reference: &str, start_time: i64) -> BackupRecord {
    let summary = strata_messages::BackupSummary {
        label: label.into(),
        backup_type: kind,
        start_time,
        stop_time: start_time + 60,
        start_lsn: 0,
        stop_lsn: 0,
        timeline: 1,
        wal_start: String::new(),
        wal_stop: String::new(),
        pg_version_num: 150000,
        system_id: 1,
        wal_segment_size: 16 << 20,
        reference: reference.into(),
        database_bytes: 0,
        read_bytes: 0,
        stored_bytes: 0,
        sent_bytes: 0,
        file_count: 0,
        checksum_failures: 0,
    };
    BackupRecord { version: 2, summary, manifest_len: 0, manifest_chunks: Vec::new() }
}

fn r(fulls: Option<usize>, full_days: Option<u32>, diffs: Option<usize>, min_age_days: Option<u32>) -> Retention {
    Retention { fulls, full_days, diffs, min_age_days }
}

fn kept_pinned<'a>(backups: &'a [BackupRecord], r: Retention, pinned: &[&str], now: i64) -> Vec<&'a str> {
    let pinned: HashSet<&str> = pinned.iter().copied().collect();
    plan(backups, &r, &pinned, now).iter().filter(|p| p.expire.is_none()).map(|p| p.backup.summary.label.as_str()).collect()
}

fn kept(backups: &[BackupRecord], r: Retention, now: i64) -> Vec<&str> {
    kept_pinned(backups, r, &[], now)
}

/// Fulls on days 0, 10, 20, 30 with an incr after each; "now" is day 35.
fn history() -> Vec<BackupRecord> {
    let mut v = Vec::new();
    for d in [0, 10, 20, 30] {
        v.push(backup(&format!("F{d}"), BackupType::Full, "", d * DAY));
        v.push(backup(&format!("I{d}"), BackupType::Incr, &format!("F{d}"), d * DAY + 3600));
    }
    v
}

#[test]
fn count_keeps_the_newest_fulls_with_their_dependants() {
    let h = history();
    assert_eq!(kept(&h, r(Some(2), None, None, None), 35 * DAY), ["F20", "I20", "F30", "I30"]);
}

#[test]
fn days_keep_the_period_and_the_full_before_it() {
    let h = history();
    // 12 days back from day 35 is day 23: F30 is within, F20 is the newest before.
    assert_eq!(kept(&h, r(None, Some(12), None, None), 35 * DAY), ["F20", "I20", "F30", "I30"]);
    // Either rule keeps: one full by count, 26 days (from day 9) by time.
    assert_eq!(kept(&h, r(Some(1), Some(26), None, None), 35 * DAY), ["F0", "I0", "F10", "I10", "F20", "I20", "F30", "I30"]);
}

#[test]
fn the_compliance_floor_overrides_and_keeps_what_young_backups_need() {
    let mut h = history();
    // A young incr of the oldest full (an odd chain, but retention must follow it).
    h.push(backup("I0b", BackupType::Incr, "I0", 34 * DAY));
    assert_eq!(kept(&h, r(Some(1), None, None, None), 35 * DAY), ["F30", "I30"]);
    assert_eq!(kept(&h, r(Some(1), None, None, Some(7)), 35 * DAY), ["F0", "I0", "F30", "I30", "I0b"]);
    // Every backup younger than the floor: nothing goes, even with one full kept by count.
    assert_eq!(kept(&h, r(Some(1), None, None, Some(100)), 35 * DAY).len(), h.len());
    // An unfollowable chain is kept.
    h.push(backup("Ix", BackupType::Incr, "missing", 0));
    assert!(kept(&h, r(Some(1), None, None, None), 35 * DAY).contains(&"Ix"));
}

#[test]
fn a_pin_keeps_the_backup_and_its_chain_only() {
    let h = history();
    // I10 pinned: F10 stays for it; F0, I0 and F20, I20 go as before.
    assert_eq!(kept_pinned(&h, r(Some(1), None, None, None), &["I10"], 35 * DAY), ["F10", "I10", "F30", "I30"]);
    let pinned: HashSet<&str> = ["I10"].into_iter().collect();
    let p = plan(&h, &r(Some(1), None, None, None), &pinned, 35 * DAY);
    assert_eq!(p[2].kept_by.as_deref(), Some("needed by pinned (I10)"));
    assert_eq!(p[3].kept_by.as_deref(), Some("pinned (I10)"));
    assert_eq!(p[0].expire.as_deref(), Some("full backup beyond retention_full = 1"));
    assert_eq!(p[1].expire.as_deref(), Some("depends on full backup F0, beyond retention_full = 1"));
}

#[test]
fn retention_diff_keeps_the_newest_diffs_and_their_incrementals() {
    // F0, D1, I1 (on D1), D2, I2a (on D2), I2b (on I2a), D3, I3 (on D3), all of one full.
    let h = vec![
        backup("F0", BackupType::Full, "", 0),
        backup("D1", BackupType::Diff, "F0", DAY),
        backup("I1", BackupType::Incr, "D1", DAY + 1),
        backup("D2", BackupType::Diff, "F0", 2 * DAY),
        backup("I2a", BackupType::Incr, "D2", 2 * DAY + 1),
        backup("I2b", BackupType::Incr, "I2a", 2 * DAY + 2),
        backup("D3", BackupType::Diff, "F0", 3 * DAY),
        backup("I3", BackupType::Incr, "D3", 3 * DAY + 1),
    ];
    assert_eq!(kept(&h, r(Some(1), None, Some(2), None), 4 * DAY), ["F0", "D2", "I2a", "I2b", "D3", "I3"]);
    assert_eq!(kept(&h, r(None, None, Some(1), None), 4 * DAY), ["F0", "D3", "I3"]);
    let p = plan(&h, &r(None, None, Some(1), None), &HashSet::new(), 4 * DAY);
    assert_eq!(p[5].expire.as_deref(), Some("depends on differential backup D2, beyond retention_diff = 1"));
    // A pinned incr keeps its diff; the floor keeps the young ones.
    assert_eq!(kept_pinned(&h, r(None, None, Some(1), None), &["I1"], 4 * DAY), ["F0", "D1", "I1", "D3", "I3"]);
    assert_eq!(kept(&h, r(None, None, Some(1), Some(2)), 4 * DAY), ["F0", "D2", "I2a", "I2b", "D3", "I3"]);
}

fn seg(n: u32) -> String {
    format!("00000001000000000000{n:04X}")
}

#[test]
fn wal_before_the_oldest_kept_backup_goes_less_the_extra_days() {
    let mut b = backup("F", BackupType::Full, "", 10 * DAY);
    b.summary.wal_start = seg(10);
    // Segment n archived on day n; a history file and a backup history file among them.
    let mut wal: Vec<(String, i64)> = (1..=12).map(|n| (seg(n), i64::from(n) * DAY)).collect();
    wal.push(("00000002.history".into(), 0));
    wal.push((format!("{}.00000028.backup", seg(3)), 3 * DAY));
    wal.sort();
    let kept = [&b];
    let mut gone: Vec<String> = expired_wal(&wal, &kept, None).into_iter().collect();
    gone.sort();
    let mut want: Vec<String> = (1..=9).map(seg).collect();
    want.push(format!("{}.00000028.backup", seg(3)));
    want.sort();
    assert_eq!(gone, want);
    // Three extra days before day 10: segments archived from day 7 on stay.
    let mut gone: Vec<String> = expired_wal(&wal, &kept, Some(3)).into_iter().collect();
    gone.sort();
    let mut want: Vec<String> = (1..=6).map(seg).collect();
    want.push(format!("{}.00000028.backup", seg(3)));
    want.sort();
    assert_eq!(gone, want);
    let expired = expired_wal(&wal, &kept, Some(3));
    let runs = runs(&wal, &expired);
    assert_eq!(runs.len(), 1, "{runs:?}");
    assert_eq!((runs[0].0, runs[0].2), (seg(1).as_str(), 7));
    // Nothing kept, nothing known: no WAL goes.
    assert!(expired_wal(&wal, &[], None).is_empty());
}
