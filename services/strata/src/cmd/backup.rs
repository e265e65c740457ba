//! `backup`: asks a collector for a backup (or runs one in-process in single-host mode) and follows it
//! to its commit.
//!
//! One backup of a stanza at a time: two at once would both read and send everything and the loser fail
//! at its commit. The command first takes a session-level advisory lock on the stanza's cluster
//! ([`BackupLock`]) and keeps that session open until the backup ends. PostgreSQL releases the lock when
//! the session ends, however it ends, so a backup killed with SIGKILL never blocks the next one; and the
//! lock is where every backup of the cluster must pass, from any host, in single-host mode or with NATS.
//! The repository's running markers (`<label>.running`) could not serve as the lock: they are plain puts
//! under per-label names (two backups starting in the same second share one), and a dead one is only
//! recognised minutes later. They do name the holder (host, pid, start, label) in the refusal.

use strata_command::format_bytes;
use crate::local;
use strata_command::{progress, Context_};
use anyhow::bail;
use std::time::{Duration, Instant};
use strata_messages::{BackupRequest, BackupType, FORMAT_VERSION};
use strata_repo::annotations::{RunningKind, RunningMarker};

/// How long a collector has to acknowledge a request before the command gives up.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(15);
/// A running backup reports progress every second; this much silence means its collector is gone.
const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(30);

/// Returns the committed backup's label.
pub async fn run(ctx: &Context_, requested: BackupType, checksum_all: bool) -> anyhow::Result<String> {
    let info = ctx.repo.stanza(&ctx.stanza).await?;
    let lock = BackupLock::take(ctx).await?;
    let result = run_locked(ctx, &info, &lock, requested, checksum_all).await;
    lock.release().await;
    result
}

async fn run_locked(
    ctx: &Context_,
    info: &strata_repo::StanzaInfo,
    lock: &BackupLock,
    requested: BackupType,
    checksum_all: bool,
) -> anyhow::Result<String> {
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
    lock.name(&label).await;
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
    let outcome = strata_collect::request_backup(
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

/// Advisory lock class of backups ("STRA" in ASCII); the key within it is the stanza's ([`BackupLock::key`]).
const LOCK_CLASS: i32 = 0x5354_5241;

/// The session holding the stanza's backup lock (module docs).
struct BackupLock {
    session: strata_collect::cluster::Session,
}

impl BackupLock {
    /// The lock's key within [`LOCK_CLASS`]: 31 bits of the stanza name's BLAKE3.
    fn key(stanza: &str) -> i32 {
        let hash = blake3::hash(stanza.as_bytes());
        i32::from_le_bytes(hash.as_bytes()[..4].try_into().expect("4 bytes")) & 0x7fff_ffff
    }

    /// Takes the lock, or fails at once naming the backup that holds it.
    async fn take(ctx: &Context_) -> anyhow::Result<BackupLock> {
        let stanza = ctx.cfg.stanza(&ctx.stanza)?;
        let session = strata_collect::cluster::connect(&stanza.pg_conn).await?;
        let key = Self::key(&ctx.stanza);
        let taken = session.client.query_one("SELECT pg_try_advisory_lock($1, $2)", &[&LOCK_CLASS, &key]).await;
        match taken.map(|row| row.get::<_, bool>(0)) {
            Ok(true) => Ok(BackupLock { session }),
            Ok(false) => {
                let holder = Self::holder(ctx, &session.client, key).await;
                session.close().await;
                bail!("a backup of stanza '{}' is already running ({holder}); wait for it to end", ctx.stanza)
            }
            Err(e) => {
                session.close().await;
                Err(anyhow::Error::from(e).context("cannot take the backup lock on the cluster"))
            }
        }
    }

    /// Who holds the lock: its running marker in the repository (label, host, pid, start) when it has
    /// written one yet, else its session as PostgreSQL shows it.
    async fn holder(ctx: &Context_, client: &tokio_postgres::Client, key: i32) -> String {
        let me = strata_stamp::host_name();
        let gone = |m: &RunningMarker| m.host == me && !std::path::Path::new(&format!("/proc/{}", m.pid)).exists();
        if let Ok(markers) = ctx.repo.running().await {
            let newest = markers
                .into_iter()
                .filter(|e| e.stanza == ctx.stanza && e.marker.kind == RunningKind::Backup && !gone(&e.marker))
                .max_by_key(|e| e.marker.start_time);
            if let Some(e) = newest {
                let m = e.marker;
                return format!(
                    "backup {} on host {}, pid {}, started {}",
                    m.label,
                    m.host,
                    m.pid,
                    strata_stamp::format_rfc3339(m.start_time)
                );
            }
        }
        let query = "SELECT a.application_name, a.pid, coalesce(host(a.client_addr), 'local socket'), \
                     to_char(a.backend_start AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS\"Z\"') \
                     FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid \
                     WHERE l.locktype = 'advisory' AND l.granted AND l.classid = $1::int4::oid \
                     AND l.objid = $2::int4::oid AND l.objsubid = 2";
        match client.query_opt(query, &[&LOCK_CLASS, &key]).await {
            Ok(Some(row)) => format!(
                "{} connected from {} since {}, server process {}",
                row.get::<_, String>(0),
                row.get::<_, String>(2),
                row.get::<_, String>(3),
                row.get::<_, i32>(1)
            ),
            _ => "holder unknown".into(),
        }
    }

    /// Shows the backup's label in `pg_stat_activity`, where a second backup looks for the holder before
    /// its marker exists.
    async fn name(&self, label: &str) {
        let name = format!("strata backup {label} pid {}", std::process::id());
        let _ = self.session.client.query_one("SELECT set_config('application_name', $1, false)", &[&name]).await;
    }

    /// Ends the session, and with it the lock.
    async fn release(self) {
        self.session.close().await;
    }
}

/// The time part of a label (`20261124-083000`), which orders labels whatever their type.
fn label_time(label: &str) -> &str {
    &label[..label.len().min(15)]
}

/// `20261124-083000F` (or `D`, `I`): when the backup started and its type.
fn new_label(t: BackupType) -> String {
    let now = strata_stamp::format_rfc3339(strata_stamp::now());
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
