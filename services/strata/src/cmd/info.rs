//! `info`: the stanza's committed backups and the extent of its WAL archive, as text or JSON.

use crate::cmd::{format_bytes, format_time};
use crate::{Context_, OutputFormat};
use serde_json::json;
use strata_pg::wal::{classify_wal_file, WalFileKind};
use strata_pg::Lsn;

pub async fn run(ctx: &Context_, output: OutputFormat) -> anyhow::Result<()> {
    let stanza = ctx.repo.stanza(&ctx.stanza).await?;
    let backups = ctx.repo.backups(&ctx.stanza).await?;
    let segments: Vec<String> = ctx
        .repo
        .wal_names(&ctx.stanza)
        .await?
        .into_iter()
        .filter(|n| classify_wal_file(n) == Some(WalFileKind::Segment))
        .collect();
    let (first, last) = (segments.first().cloned(), segments.last().cloned());
    match output {
        OutputFormat::Json => {
            let list: Vec<_> = backups
                .iter()
                .map(|b| {
                    let s = &b.summary;
                    json!({
                        "label": s.label,
                        "type": s.backup_type.as_str(),
                        "start_time": s.start_time,
                        "stop_time": s.stop_time,
                        "start_lsn": Lsn(s.start_lsn).to_string(),
                        "stop_lsn": Lsn(s.stop_lsn).to_string(),
                        "timeline": s.timeline,
                        "wal_start": s.wal_start,
                        "wal_stop": s.wal_stop,
                        "reference": if s.reference.is_empty() { serde_json::Value::Null } else { json!(s.reference) },
                        "database_bytes": s.database_bytes,
                        "read_bytes": s.read_bytes,
                        "sent_bytes": s.sent_bytes,
                        "stored_bytes": s.stored_bytes,
                        "file_count": s.file_count,
                        "checksum_failures": s.checksum_failures,
                        "pg_version_num": s.pg_version_num,
                    })
                })
                .collect();
            let doc = json!([{
                "stanza": ctx.stanza,
                "repo": ctx.repo.name(),
                "system_id": stanza.system_id,
                "pg_version_num": stanza.pg_version_num,
                "backups": list,
                "archive": { "first": first, "last": last, "segments": segments.len() },
            }]);
            println!("{}", serde_json::to_string_pretty(&doc)?);
        }
        OutputFormat::Text => {
            println!(
                "stanza: {} (PostgreSQL {}, system {}), repository '{}'",
                ctx.stanza,
                stanza.pg_major,
                stanza.system_id,
                ctx.repo.name()
            );
            match (&first, &last) {
                (Some(f), Some(l)) => println!("    wal archive: {f} ... {l} ({} segments)", segments.len()),
                _ => println!("    wal archive: empty"),
            }
            if backups.is_empty() {
                println!("    no backups");
            }
            for b in &backups {
                let s = &b.summary;
                println!("\n    {} backup: {}", s.backup_type.as_str(), s.label);
                if !s.reference.is_empty() {
                    println!("        reference: {}", s.reference);
                }
                println!("        timestamp start/stop: {} / {} UTC", format_time(s.start_time), format_time(s.stop_time));
                println!("        lsn start/stop: {} / {}", Lsn(s.start_lsn), Lsn(s.stop_lsn));
                println!("        wal start/stop: {} / {}", s.wal_start, s.wal_stop);
                println!(
                    "        database size: {}, read: {}, sent: {}, stored: {}",
                    format_bytes(s.database_bytes),
                    format_bytes(s.read_bytes),
                    format_bytes(s.sent_bytes),
                    format_bytes(s.stored_bytes)
                );
                if s.checksum_failures > 0 {
                    println!("        page checksum failures: {}", s.checksum_failures);
                }
            }
        }
    }
    Ok(())
}
