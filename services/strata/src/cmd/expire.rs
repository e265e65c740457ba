//! `expire`: removes backups retention no longer keeps, the WAL only they needed, and the packs nothing
//! references any more.
//!
//! Retention keeps full backups: the newest `retention_full` fulls, and with `retention_full_days` every
//! full started within that many days plus the newest one before them (so the whole period can be
//! restored); a full either rule keeps stays. Each kept full keeps every diff and incr backup whose
//! reference chain leads to it; an older full goes together with its dependants, never before them.
//! `retention_min_age_days` is a floor that overrides the rest, for compliance: a backup younger than
//! that is never removed, nor the backups it depends on. WAL older than the oldest kept backup's first
//! segment is removed (history files stay).
//!
//! Packs are shared by every stanza of the repository, so a pack is removed only when no kept backup
//! manifest and no WAL record of any stanza points into it. A backup still running has chunks in packs
//! that nothing references yet; packs younger than `--gc-grace-secs` (default a day) are therefore never
//! removed. Records are deleted before packs, so a crash midway leaves unreferenced packs, never a backup
//! with missing data.

use crate::cmd::format_bytes;
use crate::Context_;
use anyhow::bail;
use std::collections::{HashMap, HashSet};
use strata_messages::{BackupRecord, BackupType, PackId};
use strata_pg::wal::{classify_wal_file, WalFileKind};

pub struct ExpireOptions {
    pub retention_full: Option<u32>,
    pub dry_run: bool,
    pub gc_grace_secs: u64,
}

pub async fn run(ctx: &Context_, opts: &ExpireOptions) -> anyhow::Result<()> {
    let repo_cfg = ctx.cfg.primary_repo();
    let retention = Retention {
        fulls: opts.retention_full.or(repo_cfg.retention_full).map(|n| n as usize),
        full_days: repo_cfg.retention_full_days,
        min_age_days: repo_cfg.retention_min_age_days,
    };
    if retention.fulls.is_none() && retention.full_days.is_none() {
        bail!("no retention is configured: set retention_full or retention_full_days in the [[repo]] entry, or pass --retention-full");
    }
    if retention.fulls == Some(0) || retention.full_days == Some(0) {
        bail!("retention_full and retention_full_days must be at least 1");
    }
    ctx.repo.stanza(&ctx.stanza).await?;
    let backups = ctx.repo.backups(&ctx.stanza).await?;
    let (kept, expired) = partition(&backups, &retention, crate::cmd::now());

    // WAL: whatever precedes the oldest kept backup's first segment is needed by no kept backup.
    let oldest_start = kept.iter().map(|b| &b.summary.wal_start).min().cloned();
    let wal_names = ctx.repo.wal_names(&ctx.stanza).await?;
    let expired_wal: Vec<&String> = match &oldest_start {
        Some(start) => wal_names
            .iter()
            .filter(|n| matches!(classify_wal_file(n), Some(WalFileKind::Segment | WalFileKind::BackupHistory | WalFileKind::Partial)))
            .filter(|n| n.len() >= 24 && n[8..24] < start[8..24])
            .collect(),
        None => Vec::new(),
    };

    for b in &expired {
        println!("{}expire backup {} ({})", if opts.dry_run { "would " } else { "" }, b.summary.label, b.summary.backup_type.as_str());
    }
    if let (Some(first), Some(last)) = (expired_wal.first(), expired_wal.last()) {
        println!("{}expire {} WAL files, {first} ... {last}", if opts.dry_run { "would " } else { "" }, expired_wal.len());
    }
    if !opts.dry_run {
        for b in &expired {
            ctx.repo.delete_backup(&ctx.stanza, &b.summary.label).await?;
        }
        for n in &expired_wal {
            ctx.repo.delete_wal(&ctx.stanza, n).await?;
        }
    }

    // Packs: referenced by the kept backups and WAL of every stanza. In a dry run, the records about to
    // be deleted still exist, so leave them out by hand.
    let expired_labels: HashSet<&str> = expired.iter().map(|b| b.summary.label.as_str()).collect();
    let expired_wal: HashSet<&str> = expired_wal.iter().map(|n| n.as_str()).collect();
    let sealer = ctx.repo.sealer().clone();
    let mut referenced: HashSet<PackId> = HashSet::new();
    for stanza in ctx.repo.stanzas().await? {
        let mine = stanza == ctx.stanza;
        for b in ctx.repo.backups(&stanza).await? {
            if mine && expired_labels.contains(b.summary.label.as_str()) {
                continue;
            }
            referenced.extend(ctx.repo.backup_packs(&b).await?);
        }
        // What an interrupted backup stored is kept for the attempt that resumes it.
        for c in ctx.repo.checkpoints(&stanza).await? {
            let head = match ctx.repo.manifest_head(&sealer, &c.label, c.head_len, &c.head_chunks).await {
                Ok(h) => h,
                Err(e) => {
                    eprintln!("warning: ignoring the checkpoint of interrupted backup {}: {e}", c.label);
                    continue;
                }
            };
            referenced.extend(c.head_chunks.iter().map(|c| c.pack));
            referenced.extend(head.packs());
        }
        for name in ctx.repo.wal_names(&stanza).await? {
            if mine && expired_wal.contains(name.as_str()) {
                continue;
            }
            if let Some(w) = ctx.repo.wal(&stanza, &name).await? {
                referenced.extend(w.chunks.iter().map(|c| c.pack));
            }
        }
    }
    let now = crate::cmd::now();
    let mut removed = (0usize, 0u64);
    let mut young = 0usize;
    for (id, info) in ctx.repo.list_packs_detailed().await? {
        if referenced.contains(&id) {
            continue;
        }
        if now - info.modified < opts.gc_grace_secs as i64 {
            young += 1;
            continue;
        }
        if !opts.dry_run {
            ctx.repo.delete_pack(&id).await?;
        }
        removed = (removed.0 + 1, removed.1 + info.size);
    }
    println!(
        "{}remove {} unreferenced packs ({}){}",
        if opts.dry_run { "would " } else { "" },
        removed.0,
        format_bytes(removed.1),
        if young > 0 { format!("; {young} unreferenced packs are younger than the grace period and stay") } else { String::new() }
    );
    Ok(())
}

/// What a repository's retention settings keep (see the module docs).
struct Retention {
    fulls: Option<usize>,
    full_days: Option<u32>,
    min_age_days: Option<u32>,
}

const DAY: i64 = 86_400;

/// Splits backups (oldest first) into kept and expired at time `now` (see the module docs).
fn partition<'a>(backups: &'a [BackupRecord], retention: &Retention, now: i64) -> (Vec<&'a BackupRecord>, Vec<&'a BackupRecord>) {
    let by_label: HashMap<&str, &BackupRecord> = backups.iter().map(|b| (b.summary.label.as_str(), b)).collect();
    let fulls: Vec<&BackupRecord> = backups.iter().filter(|b| b.summary.backup_type == BackupType::Full).collect();
    let mut kept_fulls: HashSet<&str> = HashSet::new();
    if let Some(n) = retention.fulls {
        kept_fulls.extend(fulls.iter().rev().take(n).map(|b| b.summary.label.as_str()));
    }
    if let Some(days) = retention.full_days {
        let since = now - i64::from(days) * DAY;
        let within: Vec<&str> = fulls.iter().filter(|b| b.summary.start_time >= since).map(|b| b.summary.label.as_str()).collect();
        kept_fulls.extend(&within);
        // The newest full before the period: the period's first hours restore from it.
        if let Some(before) = fulls.iter().rev().find(|b| b.summary.start_time < since) {
            kept_fulls.insert(before.summary.label.as_str());
        }
    }
    // The full a backup's reference chain ends at; None when the chain cannot be followed.
    let root = |b: &'a BackupRecord| -> Option<&'a str> {
        let mut cur = b;
        for _ in 0..=backups.len() {
            if cur.summary.backup_type == BackupType::Full {
                return Some(cur.summary.label.as_str());
            }
            cur = by_label.get(cur.summary.reference.as_str())?;
        }
        None
    };
    if let Some(days) = retention.min_age_days {
        let floor = now - i64::from(days) * DAY;
        for b in backups.iter().filter(|b| b.summary.start_time >= floor) {
            if let Some(r) = root(b) {
                kept_fulls.insert(r);
            }
        }
    }
    // A backup whose chain cannot be followed is kept: expire never guesses in the direction of deleting.
    backups.iter().partition(|b| root(b).is_none_or(|r| kept_fulls.contains(r)))
}

#[cfg(test)]
mod tests {
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

    fn kept(backups: &[BackupRecord], r: Retention, now: i64) -> Vec<&str> {
        partition(backups, &r, now).0.iter().map(|b| b.summary.label.as_str()).collect()
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
        assert_eq!(kept(&h, Retention { fulls: Some(2), full_days: None, min_age_days: None }, 35 * DAY), ["F20", "I20", "F30", "I30"]);
    }

    #[test]
    fn days_keep_the_period_and_the_full_before_it() {
        let h = history();
        // 12 days back from day 35 is day 23: F30 is within, F20 is the newest before.
        assert_eq!(kept(&h, Retention { fulls: None, full_days: Some(12), min_age_days: None }, 35 * DAY), ["F20", "I20", "F30", "I30"]);
        // Either rule keeps: one full by count, 26 days (from day 9) by time.
        assert_eq!(
            kept(&h, Retention { fulls: Some(1), full_days: Some(26), min_age_days: None }, 35 * DAY),
            ["F0", "I0", "F10", "I10", "F20", "I20", "F30", "I30"]
        );
    }

    #[test]
    fn the_compliance_floor_overrides_and_keeps_what_young_backups_need() {
        let mut h = history();
        // A young incr of the oldest full (an odd chain, but retention must follow it).
        h.push(backup("I0b", BackupType::Incr, "I0", 34 * DAY));
        assert_eq!(
            kept(&h, Retention { fulls: Some(1), full_days: None, min_age_days: Some(7) }, 35 * DAY),
            ["F0", "I0", "F30", "I30", "I0b"]
        );
        // An unfollowable chain is kept.
        h.push(backup("Ix", BackupType::Incr, "missing", 0));
        assert!(kept(&h, Retention { fulls: Some(1), full_days: None, min_age_days: None }, 35 * DAY).contains(&"Ix"));
    }
}
