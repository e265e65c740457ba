//! `expire`: removes backups retention no longer keeps, the WAL only they needed, and the packs nothing
//! references any more.
//!
//! Retention counts full backups: the newest `retention_full` fulls are kept, each with every diff and
//! incr backup whose reference chain leads to it; an older full goes together with its dependants, never
//! before them. WAL older than the oldest kept backup's first segment is removed (history files stay).
//!
//! Packs are shared by every stanza of the repository, so a pack is removed only when no kept backup
//! manifest and no WAL record of any stanza points into it. A backup still running has chunks in packs
//! that nothing references yet; packs younger than `--gc-grace-secs` (default a day) are therefore never
//! removed. Records are deleted before packs, so a crash midway leaves unreferenced packs, never a backup
//! with missing data.

use crate::cmd::format_bytes;
use crate::Context_;
use anyhow::{bail, Context};
use std::collections::{HashMap, HashSet};
use strata_messages::{BackupRecord, BackupType, PackId};
use strata_pg::wal::{classify_wal_file, WalFileKind};
use strata_seal::Sealer;

pub struct ExpireOptions {
    pub retention_full: Option<u32>,
    pub dry_run: bool,
    pub gc_grace_secs: u64,
}

pub async fn run(ctx: &Context_, opts: &ExpireOptions) -> anyhow::Result<()> {
    let keep_fulls = opts
        .retention_full
        .or(ctx.cfg.primary_repo().retention_full)
        .context("no retention is configured: set retention_full in the [[repo]] entry or pass --retention-full")?;
    if keep_fulls == 0 {
        bail!("retention_full must be at least 1");
    }
    ctx.repo.stanza(&ctx.stanza).await?;
    let backups = ctx.repo.backups(&ctx.stanza).await?;
    let (kept, expired) = partition(&backups, keep_fulls as usize);

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
    let sealer = Sealer::default();
    let mut referenced: HashSet<PackId> = HashSet::new();
    for stanza in ctx.repo.stanzas().await? {
        let mine = stanza == ctx.stanza;
        for b in ctx.repo.backups(&stanza).await? {
            if mine && expired_labels.contains(b.summary.label.as_str()) {
                continue;
            }
            referenced.extend(b.manifest_chunks.iter().map(|c| c.pack));
            let head = ctx.repo.manifest_head(&sealer, &b.summary.label, b.manifest_len, &b.manifest_chunks).await?;
            referenced.extend(head.packs());
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

/// Splits backups (oldest first) into kept and expired: the newest `keep` fulls and everything whose
/// reference chain leads to one of them are kept.
fn partition(backups: &[BackupRecord], keep: usize) -> (Vec<&BackupRecord>, Vec<&BackupRecord>) {
    let by_label: HashMap<&str, &BackupRecord> = backups.iter().map(|b| (b.summary.label.as_str(), b)).collect();
    let fulls: Vec<&str> =
        backups.iter().filter(|b| b.summary.backup_type == BackupType::Full).map(|b| b.summary.label.as_str()).collect();
    let kept_fulls: HashSet<&str> = fulls.iter().rev().take(keep).copied().collect();
    let kept_root = |b: &BackupRecord| -> Option<bool> {
        let mut cur = b;
        for _ in 0..=backups.len() {
            if cur.summary.backup_type == BackupType::Full {
                return Some(kept_fulls.contains(cur.summary.label.as_str()));
            }
            cur = by_label.get(cur.summary.reference.as_str())?;
        }
        None
    };
    // A backup whose chain cannot be followed is kept: expire never guesses in the direction of deleting.
    backups.iter().partition(|b| kept_root(b).unwrap_or(true))
}
