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

pub async fn run(ctx: &Context_) -> anyhow::Result<()> {
    let info = ctx.repo.stanza(&ctx.stanza).await?;
    let label = new_label();
    if ctx.repo.backup(&ctx.stanza, &label).await.is_ok() {
        bail!("a backup labelled {label} already exists; retry in a second");
    }
    let (bus, in_process) = strata_runtime::connect_bus(&ctx.cfg).await?;
    let stages = if in_process { Some(local::start(&ctx.cfg, bus.clone(), false).await?) } else { None };
    let req = BackupRequest {
        version: FORMAT_VERSION,
        label: label.clone(),
        stanza: ctx.stanza.clone(),
        backup_type: BackupType::Full,
        expect_system_id: info.system_id,
        expect_pg_major: info.pg_major,
        compress_level: ctx.cfg.pipeline.compress_level.clamp(0, 22) as i8,
    };
    let bar = progress::bytes_bar(&format!("backup {label}"));
    let started = Instant::now();
    let outcome = strata_collector::request_backup(
        bus.clone(),
        &req,
        in_process.then(|| ctx.cfg.clone()),
        ANSWER_TIMEOUT,
        HEARTBEAT_TIMEOUT,
        |done, total| {
            bar.set_length(total);
            bar.set_position(done);
        },
    )
    .await;
    bar.finish_and_clear();
    if let Some(stages) = stages {
        stages.stop().await?;
    }
    let summary = outcome?;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "backup {} committed: {} read, {} sent, {} stored in {:.1} s ({:.0} MB/s){}",
        summary.label,
        format_bytes(summary.database_bytes),
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
    Ok(())
}

/// `20261124-083000F`, as pgBackRest labels a full backup.
fn new_label() -> String {
    let t = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    // "2026-11-24T08:30:00Z"
    let digits: String = t.chars().filter(|c| c.is_ascii_digit()).collect();
    format!("{}-{}F", &digits[..8], &digits[8..14])
}

#[cfg(test)]
mod tests {
    #[test]
    fn label_shape() {
        let l = super::new_label();
        assert_eq!(l.len(), 16);
        assert!(l.ends_with('F') && l.as_bytes()[8] == b'-');
    }
}
