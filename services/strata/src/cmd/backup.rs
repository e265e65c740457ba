//! `backup`: asks a collector for a backup (or runs one in-process in single-host mode) and follows it
//! to its commit.

use crate::cmd::format_bytes;
use crate::{local, progress, Context_};
use anyhow::bail;
use std::time::{Duration, Instant};
use strata_messages::{BackupRequest, BackupType, FORMAT_VERSION};

/// How long a collector has to acknowledge a request before the command gives up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// A running backup reports progress every second; this much silence means its collector is gone.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(30);

/// Returns the committed backup's label.
pub async fn run(ctx: &Context_, requested: BackupType, checksum_all: bool) -> anyhow::Result<String> {
    let info = ctx.repo.stanza(&ctx.stanza).await?;
    // A differential is relative to the last full backup, an incremental to the last backup of any type.
    let backups = ctx.repo.backups(&ctx.stanza).await?;
    let reference = match requested {
        BackupType::Full => None,
        BackupType::Diff => backups.iter().rev().find(|b| b.summary.backup_type == BackupType::Full),
        BackupType::Incr => backups.last(),
    };
    let backup_type = match reference {
        Some(_) => requested,
        None => {
            if requested != BackupType::Full {
                eprintln!("no full backup of stanza '{}' yet: taking a full backup instead of {}", ctx.stanza, requested.as_str());
            }
            BackupType::Full
        }
    };
    // An interrupted backup's checkpoint: what it stored is not read or sent again. Only one whose head
    // is still readable is worth passing on.
    let mut resume = None;
    for c in ctx.repo.checkpoints(&ctx.stanza).await?.into_iter().rev() {
        if ctx.repo.manifest_head(ctx.repo.sealer(), &c.label, c.head_len, &c.head_chunks).await.is_ok() {
            eprintln!("resuming from interrupted backup {}: what it stored is not read or sent again", c.label);
            resume = Some(c);
            break;
        }
    }
    // Labels have one-second resolution and must sort after every existing backup (the chain and the
    // restore's choice of backup go by label order): like pgBackRest, wait for the next second when the
    // previous backup started in this one.
    let newest = backups.iter().map(|b| b.summary.label.clone()).max();
    let mut label = new_label(backup_type);
    for _ in 0..30 {
        match &newest {
            Some(n) if label_time(&label) <= label_time(n) => {
                tokio::time::sleep(Duration::from_millis(100)).await;
                label = new_label(backup_type);
            }
            _ => break,
        }
    }
    if ctx.repo.backup(&ctx.stanza, &label).await.is_ok() || newest.as_deref().is_some_and(|n| label_time(&label) <= label_time(n)) {
        bail!("a backup labelled {label} or later already exists (is the clock behind?)");
    }
    let (bus, in_process) = strata_runtime::connect_bus(&ctx.cfg).await?;
    let stages = if in_process { Some(local::start(&ctx.cfg, &ctx.repo, bus.clone(), false).await?) } else { None };
    let req = BackupRequest {
        version: FORMAT_VERSION,
        label: label.clone(),
        stanza: ctx.stanza.clone(),
        backup_type,
        expect_system_id: info.system_id,
        expect_pg_major: info.pg_major,
        compress_level: ctx.cfg.pipeline.compress_level.clamp(0, 22) as i8,
        reference: reference.cloned(),
        checksum_all,
        resume,
    };
    let bar = progress::bytes_bar(&format!("backup {label}"));
    let started = Instant::now();
    // Before any chunk is sent, so that expire keeps what this backup stores (see cmd/expire.rs).
    let running = match crate::cmd::expire::RunningBackup::begin(ctx, &label).await {
        Ok(r) => r,
        Err(e) => {
            if let Some(stages) = stages {
                let _ = stages.stop().await;
            }
            return Err(e);
        }
    };
    let outcome = strata_collector::request_backup(
        bus.clone(),
        &req,
        in_process.then(|| (ctx.cfg.clone(), ctx.repo.sealer().clone())),
        ANSWER_TIMEOUT,
        HEARTBEAT_TIMEOUT,
        |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        },
    )
    .await;
    running.end().await;
    bar.finish_and_clear();
    if let Some(stages) = stages {
        stages.stop().await?;
    }
    let summary = outcome?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{} backup {} committed{}: {} database, {} read, {} sent, {} stored in {:.1} s ({:.0} MB/s){}",
        summary.backup_type.as_str(),
        summary.label,
        if summary.reference.is_empty() { String::new() } else { format!(" (relative to {})", summary.reference) },
        format_bytes(summary.database_bytes),
        format_bytes(summary.read_bytes),
        format_bytes(summary.sent_bytes),
        format_bytes(summary.stored_bytes),
        secs,
        summary.database_bytes as f64 / 1e6 / secs.max(0.001),
        if summary.checksum_failures > 0 {
            format!("; WARNING: {} page checksum failures (see info)", summary.checksum_failures)
        } else {
            String::new()
        }
    );
    if ctx.cfg.repo.iter().any(|r| r.expire_auto) {
        if let Err(e) = crate::cmd::expire::run_all(ctx, &crate::cmd::expire::ExpireOptions::automatic(), false, true).await {
            eprintln!("warning: backup {} is committed, but the automatic expire failed: {e:#}", summary.label);
        }
    }
    Ok(summary.label)
}

/// The time part of a label (`20261124-083000`), which orders labels whatever their type.
fn label_time(label: &str) -> &str {
    &label[..label.len().min(15)]
}

/// `20261124-083000F` (or `D`, `I`): when the backup started and its type.
fn new_label(t: BackupType) -> String {
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    // "2026-11-24T08:30:00Z"
    let digits: String = now.chars().filter(|c| c.is_ascii_digit()).collect();
    let suffix = match t {
        BackupType::Full => 'F',
        BackupType::Diff => 'D',
        BackupType::Incr => 'I',
    };
    format!("{}-{}{suffix}", &digits[..8], &digits[8..14])
}

#[cfg(test)]
mod tests {
    #[test]
    fn label_shape() {
        let l = super::new_label(strata_messages::BackupType::Full);
        assert_eq!(l.len(), 16);
        assert!(l.ends_with('F') && l.as_bytes()[8] == b'-');
    }
}
