//! `archive-push` (PostgreSQL's archive_command) and `archive-get` (its restore_command).

use crate::{local, Context_};
use anyhow::{bail, Context};
use std::io::Write;
use std::path::Path;
use std::time::Duration;
use strata_collector::job::CommitOutcome;
use strata_collector::wal::{WalPushSettings, WalPushTarget};
use strata_seal::Sealer;

pub async fn push(ctx: &Context_, path: &Path) -> anyhow::Result<()> {
    let info = ctx.repo.stanza(&ctx.stanza).await?;
    let target = WalPushTarget {
        stanza: ctx.stanza.clone(),
        system_id: info.system_id,
        pg_major: info.pg_major,
        wal_segment_size: info.wal_segment_size,
    };
    let p = &ctx.cfg.pipeline;
    let settings = WalPushSettings {
        chunk_size: p.chunk_size,
        compress_level: p.wal_compress_level,
        in_flight_bytes: p.in_flight_bytes,
        stall: Duration::from_secs(p.stall_timeout_secs),
    };
    let (bus, in_process) = strata_runtime::connect_bus(&ctx.cfg).await?;
    let stages = if in_process { Some(local::start(&ctx.cfg, bus.clone(), false).await?) } else { None };
    let outcome = strata_collector::wal::push(bus, &target, &settings, path).await;
    if let Some(stages) = stages {
        stages.stop().await?;
    }
    if outcome? == CommitOutcome::AlreadyArchived {
        // Valid after a crash between the archive and PostgreSQL noting it, as pgBackRest says; worth a line.
        eprintln!(
            "warning: {} was already archived with the same content; accepted",
            path.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()
        );
    }
    Ok(())
}

/// A WAL file PostgreSQL asked for is not archived. For a restore_command this is an ordinary answer
/// (recovery probes for history files and for the segment after the last one), so it is reported without
/// the "error:" of real failures.
#[derive(Debug, thiserror::Error)]
#[error("archive-get: {name} is not in the archive of stanza '{stanza}'")]
pub struct NotArchived {
    pub name: String,
    pub stanza: String,
}

pub async fn get(ctx: &Context_, name: &str, dest: &Path) -> anyhow::Result<()> {
    let Some(record) = ctx.repo.wal(&ctx.stanza, name).await? else {
        return Err(NotArchived { name: name.into(), stanza: ctx.stanza.clone() }.into());
    };
    let sealer = Sealer::default();
    let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = dir.join(format!(".{}.strata-tmp", dest.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));
    let mut file = std::fs::File::create(&tmp).with_context(|| format!("cannot create {}", tmp.display()))?;
    let mut hasher = blake3::Hasher::new();
    let written: anyhow::Result<()> = async {
        for r in &record.chunks {
            let plain = ctx.repo.read_chunk(&sealer, r).await?;
            hasher.update(&plain);
            file.write_all(&plain).with_context(|| format!("cannot write {}", tmp.display()))?;
        }
        if hasher.finalize().as_bytes() != &record.hash {
            bail!("{name}: the archived file does not match its recorded hash");
        }
        Ok(())
    }
    .await;
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    std::fs::rename(&tmp, dest).with_context(|| format!("cannot write {}", dest.display()))?;
    Ok(())
}
