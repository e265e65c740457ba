//! Gathering the facts the rules judge: the repository's backups, verification and restore test results,
//! the archive's listing, the repository's space, and the cluster's archiver and streaming slot. Separate
//! from the rules because this is the only part that does I/O (the repository, and the cluster with a
//! short timeout), while the rules are pure and unit-tested on made-up facts.

use super::{rules, Archiver, Finding, Health, LastBackup, Level, Space, StreamSlot, Unrecoverable};
use std::collections::BTreeMap;
use std::time::Duration;
use strata_config::Config;
use strata_repo::verify_results::{VerifyResult, WAL_SUBJECT};
use strata_repo::Repo;
use strata_restore::wal_archive::{describe_range, WalArchive};

/// Reads everything the rules need and evaluates them. `pg_conn`: the stanza's cluster, asked with a
/// short timeout (`None`: do not ask).
pub async fn evaluate(cfg: &Config, repo: &Repo, stanza: &str, pg_conn: Option<&str>, now: i64) -> anyhow::Result<Health> {
    let (backups, damaged) = repo.backups_checked(stanza).await?;
    let seg_size = repo.stanza(stanza).await?.wal_segment_size;
    let rpo_secs = cfg.stanza(stanza)?.rpo_secs;
    let mut last_backup = BTreeMap::new();
    for b in &backups {
        let s = &b.summary;
        last_backup.insert(
            s.backup_type.as_str().to_string(),
            LastBackup {
                label: s.label.clone(),
                stop_time: s.stop_time,
                duration_secs: s.stop_time - s.start_time,
                stored_bytes: s.stored_bytes,
                database_bytes: s.database_bytes,
            },
        );
    }
    let archiver = match pg_conn {
        Some(conn) => archiver(conn, seg_size, now, &cfg.wal_stream.slot_name(stanza), cfg.wal_stream.slot_retained_max).await.map_err(|e| format!("{e:#}")),
        None => Err("not asked".into()),
    };
    let space = space(repo).await.map_err(|e| format!("{e:#}"));
    let labels: std::collections::HashSet<&str> = backups.iter().map(|b| b.summary.label.as_str()).collect();
    let verify: Vec<VerifyResult> = repo
        .verify_results(stanza)
        .await?
        .into_iter()
        .filter(|v| v.subject == WAL_SUBJECT || labels.contains(v.subject.as_str()))
        .collect();
    let restore_test = repo.latest_restore_test(stanza).await?;
    // One listing of the archive: whether each backup's own WAL is all there.
    let mut archive = WalArchive::load(repo, stanza, seg_size).await?;
    let mut unrecoverable = Vec::new();
    for b in &backups {
        if let Ok(Some(g)) = archive.backup_gap(&b.summary.wal_start, &b.summary.wal_stop).await {
            let missing = describe_range(&archive.name(g.first_missing), &archive.name(g.last_missing));
            unrecoverable.push(Unrecoverable { label: b.summary.label.clone(), missing });
        }
    }
    let mut h = Health {
        stanza: stanza.to_string(),
        repo: repo.name().to_string(),
        time: now,
        status: Level::Ok,
        findings: Vec::new(),
        rpo_secs,
        last_backup,
        archiver,
        space,
        verify,
        restore_test,
        unrecoverable,
    };
    h.findings = rules(&cfg.alerts, &h, &backups, now);
    if let Some(first) = damaged.first() {
        let labels: Vec<&str> = damaged.iter().map(|d| d.name.as_str()).collect();
        let summary = format!("{} backup records cannot be read ({}): {first}", damaged.len(), labels.join(", "));
        h.findings.push(Finding { level: Level::Critical, rule: "record-damaged", summary });
    }
    h.status = h.findings.iter().map(|f| f.level).max().unwrap_or(Level::Ok);
    Ok(h)
}

async fn archiver(pg_conn: &str, seg_size: u64, now: i64, slot: &str, slot_retained_max: u64) -> anyhow::Result<Archiver> {
    let (client, connection) =
        tokio::time::timeout(Duration::from_secs(5), tokio_postgres::connect(pg_conn, tokio_postgres::NoTls))
            .await
            .map_err(|_| anyhow::anyhow!("the cluster did not answer within 5 s"))?
            .map_err(|e| anyhow::anyhow!("cannot connect to the cluster: {e}"))?;
    let conn = tokio::spawn(connection);
    let row = client
        .query_one(
            "SELECT archived_count, failed_count, last_archived_wal, extract(epoch from last_archived_time)::bigint,
                    last_failed_wal, extract(epoch from last_failed_time)::bigint,
                    CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END::text,
                    s.active,
                    pg_wal_lsn_diff(CASE WHEN pg_is_in_recovery() THEN pg_last_wal_receive_lsn() ELSE pg_current_wal_lsn() END, s.restart_lsn)::bigint
             FROM pg_stat_archiver LEFT JOIN pg_replication_slots s ON s.slot_name = $1",
            &[&slot],
        )
        .await?;
    let stream_slot = row.get::<_, Option<bool>>(7).map(|active| StreamSlot {
        name: slot.to_string(),
        active,
        retained_bytes: row.get::<_, Option<i64>>(8).unwrap_or(0).max(0) as u64,
        max_bytes: slot_retained_max,
    });
    // Dropping the client sends Terminate; the connection task then ends on its own. Aborting it instead
    // cuts the socket under the server, which logs "connection to client lost".
    drop(client);
    let _ = tokio::time::timeout(Duration::from_secs(5), conn).await;
    let last_archived_wal: Option<String> = row.get(2);
    let last_archived_time: Option<i64> = row.get(3);
    let current: Option<String> = row.get(6);
    let current = current.and_then(|c| c.parse::<strata_pg::Lsn>().ok()).map(|l| l.0).unwrap_or(0);
    // The end of the last archived segment: a backup-history file (`<segment>.<offset>.backup`) is archived
    // after its segment; a timeline history file says nothing about it.
    let archived_end = last_archived_wal
        .as_deref()
        .filter(|n| n.len() >= 24 && !n.ends_with(".history"))
        .and_then(|n| Some((u64::from_str_radix(&n[8..16], 16).ok()? * (0x1_0000_0000 / seg_size) + u64::from_str_radix(&n[16..24], 16).ok()? + 1) * seg_size));
    let lag_bytes = archived_end.map(|e| current.saturating_sub(e)).unwrap_or(0);
    let lag_seconds = match last_archived_time {
        // A whole segment is waiting: it has waited at least since the last one was archived.
        Some(t) if lag_bytes >= seg_size => now - t,
        _ => 0,
    };
    Ok(Archiver {
        archived_count: row.get(0),
        failed_count: row.get(1),
        last_archived_wal,
        last_archived_time,
        last_failed_wal: row.get(4),
        last_failed_time: row.get(5),
        lag_bytes,
        lag_seconds,
        current_lsn: current,
        stream_slot,
    })
}

async fn space(repo: &Repo) -> anyhow::Result<Space> {
    let used_bytes = repo.storage().list("").await?.iter().map(|o| o.size).sum();
    let cap = repo.storage().capacity().await?;
    Ok(Space {
        used_bytes,
        fs_size_bytes: cap.map(|c| c.size_bytes),
        fs_free_bytes: cap.map(|c| c.free_bytes),
        fs_used_percent: cap.map(|c| c.used_percent()),
    })
}
