//! Which backups and WAL retention keeps: the rules of the parent module's docs ("Which backups stay",
//! "Which WAL stays") as pure functions of the records and the settings, apart from the repository work
//! of `expire`, so they are read and tested alone.

use super::*;

/// What a repository's retention settings keep (see the module docs).
pub(super) struct Retention {
    pub(super) fulls: Option<usize>,
    pub(super) full_days: Option<u32>,
    pub(super) diffs: Option<usize>,
    pub(super) min_age_days: Option<u32>,
}

pub(super) const DAY: i64 = 86_400;

/// One backup's fate.
pub(super) struct Planned<'a> {
    pub(super) backup: &'a BackupRecord,
    /// Why it goes (the retention rule), or `None` when it stays.
    pub(super) expire: Option<String>,
    /// What kept it although a retention rule would have removed it (a pin, the compliance floor).
    pub(super) kept_by: Option<String>,
}

/// Decides, for each backup (oldest first), whether it goes and why, at time `now` (module docs).
pub(super) fn plan<'a>(backups: &'a [BackupRecord], retention: &Retention, pinned: &HashSet<&str>, now: i64) -> Vec<Planned<'a>> {
    let by_label: HashMap<&str, &BackupRecord> = backups.iter().map(|b| (b.summary.label.as_str(), b)).collect();
    // A backup's chain: itself, then each reference up to its full; None when it cannot be followed.
    let chain = |b: &'a BackupRecord| -> Option<Vec<&'a BackupRecord>> {
        let mut out = vec![b];
        let mut cur = b;
        for _ in 0..=backups.len() {
            if cur.summary.backup_type == BackupType::Full {
                return Some(out);
            }
            cur = by_label.get(cur.summary.reference.as_str())?;
            out.push(cur);
        }
        None
    };

    // Fulls: why each one retention does not keep goes.
    let fulls: Vec<&BackupRecord> = backups.iter().filter(|b| b.summary.backup_type == BackupType::Full).collect();
    let mut kept_fulls: HashSet<&str> = HashSet::new();
    if let Some(n) = retention.fulls {
        kept_fulls.extend(fulls.iter().rev().take(n).map(|b| b.summary.label.as_str()));
    }
    if let Some(days) = retention.full_days {
        let since = now - i64::from(days) * DAY;
        kept_fulls.extend(fulls.iter().filter(|b| b.summary.start_time >= since).map(|b| b.summary.label.as_str()));
        // The newest full before the period: the period's first hours restore from it.
        if let Some(before) = fulls.iter().rev().find(|b| b.summary.start_time < since) {
            kept_fulls.insert(before.summary.label.as_str());
        }
    }
    if retention.fulls.is_none() && retention.full_days.is_none() {
        kept_fulls.extend(fulls.iter().map(|b| b.summary.label.as_str()));
    }
    let full_rule = match (retention.fulls, retention.full_days) {
        (Some(n), Some(d)) => format!("beyond retention_full = {n} and retention_full_days = {d}"),
        (Some(n), None) => format!("beyond retention_full = {n}"),
        (None, Some(d)) => format!("older than retention_full_days = {d} and not the newest full before them"),
        (None, None) => String::new(),
    };
    // Diffs beyond the newest N.
    let expired_diffs: HashSet<&str> = match retention.diffs {
        Some(n) => backups
            .iter()
            .rev()
            .filter(|b| b.summary.backup_type == BackupType::Diff)
            .skip(n)
            .map(|b| b.summary.label.as_str())
            .collect(),
        None => HashSet::new(),
    };

    // Pins and the compliance floor keep a backup and its whole chain.
    let floor = retention.min_age_days.map(|d| now - i64::from(d) * DAY);
    let mut protected: HashMap<&str, String> = HashMap::new();
    for b in backups {
        let why = if pinned.contains(b.summary.label.as_str()) {
            format!("pinned ({})", b.summary.label)
        } else if floor.is_some_and(|f| b.summary.start_time >= f) {
            format!("younger than retention_min_age_days = {} ({})", retention.min_age_days.unwrap_or(0), b.summary.label)
        } else {
            continue;
        };
        // As far as the chain can be followed.
        let mut cur = Some(b);
        for _ in 0..=backups.len() {
            let Some(c) = cur else { break };
            // The first reason found is the one shown: a backup's own, else its oldest dependant's.
            protected.entry(c.summary.label.as_str()).or_insert_with(|| {
                if c.summary.label == b.summary.label {
                    why.clone()
                } else {
                    format!("needed by {why}")
                }
            });
            if c.summary.backup_type == BackupType::Full {
                break;
            }
            cur = by_label.get(c.summary.reference.as_str()).copied();
        }
    }

    backups
        .iter()
        .map(|b| {
            let label = b.summary.label.as_str();
            let rule = chain(b).and_then(|chain| {
                let full = chain.last().expect("a chain ends at its full");
                if !kept_fulls.contains(full.summary.label.as_str()) {
                    return Some(if full.summary.label == b.summary.label {
                        format!("full backup {full_rule}")
                    } else {
                        format!("depends on full backup {}, {full_rule}", full.summary.label)
                    });
                }
                let diff = chain.iter().find(|c| expired_diffs.contains(c.summary.label.as_str()))?;
                let n = retention.diffs.unwrap_or(0);
                Some(if diff.summary.label == b.summary.label {
                    format!("differential backup beyond retention_diff = {n}")
                } else {
                    format!("depends on differential backup {}, beyond retention_diff = {n}", diff.summary.label)
                })
            });
            match (rule, protected.get(label)) {
                (Some(_), Some(by)) => Planned { backup: b, expire: None, kept_by: Some(by.clone()) },
                (rule, _) => Planned { backup: b, expire: rule, kept_by: None },
            }
        })
        .collect()
}

/// WAL files (segments, partial segments, backup history files) no kept backup needs, given the archive
/// (name, archive time) and the extra days of WAL to keep before the oldest kept backup.
pub(super) fn expired_wal(wal: &[(String, i64)], kept: &[&BackupRecord], extra_days: Option<u32>) -> HashSet<String> {
    let Some(oldest) = kept.iter().min_by(|a, b| a.summary.wal_start.get(8..24).cmp(&b.summary.wal_start.get(8..24))) else {
        return HashSet::new();
    };
    let Some(start) = oldest.summary.wal_start.get(8..24) else { return HashSet::new() };
    let removable = |n: &str| matches!(classify_wal_file(n), Some(WalFileKind::Segment | WalFileKind::BackupHistory | WalFileKind::Partial));
    let candidates: Vec<&(String, i64)> = wal.iter().filter(|(n, _)| removable(n) && n.len() >= 24 && &n[8..24] < start).collect();
    // Extra days: keep from the first file archived within them on.
    let boundary = match extra_days {
        Some(d) => {
            let since = oldest.summary.start_time - i64::from(d) * DAY;
            candidates.iter().filter(|(_, t)| *t >= since).map(|(n, _)| n[8..24].to_string()).min().unwrap_or_else(|| start.to_string())
        }
        None => start.to_string(),
    };
    candidates.into_iter().filter(|(n, _)| n[8..24] < *boundary).map(|(n, _)| n.clone()).collect()
}

/// Runs of consecutive expired names in the archive's order: (first, last, count).
pub(super) fn runs<'a>(wal: &'a [(String, i64)], expired: &HashSet<String>) -> Vec<(&'a str, &'a str, usize)> {
    let mut out: Vec<(&str, &str, usize)> = Vec::new();
    let mut open = false;
    for (n, _) in wal {
        if !expired.contains(n) {
            open = false;
            continue;
        }
        match (open, out.last_mut()) {
            (true, Some(run)) => {
                run.1 = n.as_str();
                run.2 += 1;
            }
            _ => out.push((n.as_str(), n.as_str(), 1)),
        }
        open = true;
    }
    out
}
