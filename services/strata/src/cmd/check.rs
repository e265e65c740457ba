//! `check`: proves the whole path works before a backup needs it, as `pgbackrest check` does: the cluster
//! is the stanza's, the repository is writable, and a WAL switch forced now reaches the archive. Then it
//! proves the archive can serve the backups: no segment is missing since the oldest backup's first one
//! (on any timeline, from where that timeline begins), and every timeline has its history file. A gap
//! means no backup before it can be recovered past it, so it fails the check like a broken archive path.

use crate::cmd::{cluster_facts, connect};
use strata_restore::wal_archive::{describe_range, WalArchive};
use strata_command::Context_;
use anyhow::bail;
use std::time::{Duration, Instant};

pub async fn run(ctx: &Context_) -> anyhow::Result<()> {
    let stanza_cfg = ctx.cfg.stanza(&ctx.stanza)?;
    let info = ctx.repo.stanza(&ctx.stanza).await?;
    ctx.repo.check_writable().await?;
    let session = connect(&stanza_cfg.pg_conn).await?;
    let result = check_on(ctx, &info, &session.client).await;
    session.close().await;
    result
}

async fn check_on(ctx: &Context_, info: &strata_repo::StanzaInfo, client: &tokio_postgres::Client) -> anyhow::Result<()> {
    let facts = cluster_facts(client).await?;
    strata_repo::check_same_cluster(info, facts.system_id, strata_pg::version::major_from_version_num(facts.version_num))?;
    if facts.archive_mode == "off" {
        bail!("archive_mode is off; set archive_mode = on and archive_command = 'strata --stanza {} archive-push %p'", ctx.stanza);
    }
    if !facts.archive_command.contains("archive-push") {
        bail!("archive_command is '{}'; it should call strata archive-push", facts.archive_command);
    }
    // A switch with nothing written since the last one returns the previous segment, which must then be
    // archived already: either way the named segment must appear.
    let row = client.query_one("SELECT pg_walfile_name(pg_switch_wal() - 1)", &[]).await?;
    let segment: String = row.get(0);
    // The same bound a backup gives its stop segment (pgBackRest's archive-timeout).
    let wait = Duration::from_secs(ctx.cfg.pipeline.archive_timeout_secs);
    let started = Instant::now();
    loop {
        if ctx.repo.wal(&ctx.stanza, &segment).await?.is_some() {
            break;
        }
        if started.elapsed() > wait {
            bail!(
                "WAL segment {segment} was not archived within {} s (pipeline.archive_timeout_secs); check archive_command and the server log",
                wait.as_secs()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    check_archive(ctx, info.wal_segment_size).await?;
    let stanza_cfg = ctx.cfg.stanza(&ctx.stanza)?;
    check_stream_slot(ctx, &stanza_cfg.pg_conn).await?;
    println!(
        "check: stanza '{}' ok: cluster matches, repository '{}' writable, WAL segment {segment} archived in {:.1} s",
        ctx.stanza,
        ctx.repo.name(),
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

/// Fails on the first gap in the archive since the oldest backup (see the module docs).
async fn check_archive(ctx: &Context_, seg_size: u64) -> anyhow::Result<()> {
    let mut archive = WalArchive::load(&ctx.repo, &ctx.stanza, seg_size).await?;
    let backups = ctx.repo.backups(&ctx.stanza).await?;
    let oldest = backups.iter().filter_map(|b| archive.parse(&b.summary.wal_start).ok()).map(|s| s.segno).min();
    let since = match oldest.or_else(|| archive.segments().map(|s| s.segno).min()) {
        Some(n) => n,
        None => return Ok(()),
    };
    let missing = archive.missing_histories();
    if let Some(tl) = missing.first() {
        bail!(
            "the WAL archive has segments of timeline {tl} but not its history file ({}); recovery cannot follow that timeline",
            strata_pg::wal::history_file_name(*tl)
        );
    }
    let gaps = archive.gaps(since).await?;
    if let Some((tl, g)) = gaps.first() {
        let range = describe_range(&archive.name(g.first_missing), &archive.name(g.last_missing));
        let around = match (g.before, g.after) {
            (Some(b), Some(a)) => format!(" (between {} and {})", archive.name(b), archive.name(a)),
            (None, Some(a)) => format!(" (before {})", archive.name(a)),
            _ => String::new(),
        };
        let more = if gaps.len() > 1 { format!("; {} gaps in all, see info", gaps.len()) } else { String::new() };
        bail!(
            "the WAL archive of stanza '{}' has a gap on timeline {tl}: {range} missing{around}{}{more}; no backup before it can be recovered past it",
            ctx.stanza,
            archive.dropped_text(g)
        );
    }
    Ok(())
}

/// The WAL streamer's replication slot, if there is one: a slot nobody streams from, or one that keeps
/// more WAL than `wal_stream.slot_retained_max`, fills the primary's disk (see `strata_collect::stream`).
async fn check_stream_slot(ctx: &Context_, pg_conn: &str) -> anyhow::Result<()> {
    let slot = ctx.cfg.wal_stream.slot_name(&ctx.stanza);
    let Some(state) = strata_collect::stream::slot_state(pg_conn, &slot).await? else { return Ok(()) };
    let retained = strata_command::format_bytes(state.retained_bytes);
    if !state.active {
        bail!(
            "replication slot {slot} has no WAL streamer connected and keeps {retained} of WAL on the primary (wal_status {}); start `strata --stanza {} wal-stream`, or drop the slot with SELECT pg_drop_replication_slot('{slot}')",
            state.wal_status.as_deref().unwrap_or("unknown"),
            ctx.stanza
        );
    }
    let max = ctx.cfg.wal_stream.slot_retained_max;
    if state.retained_bytes > max {
        bail!(
            "replication slot {slot} keeps {retained} of WAL on the primary, over wal_stream.slot_retained_max ({}); the WAL streamer is not keeping up",
            strata_command::format_bytes(max)
        );
    }
    println!("check: WAL streamer connected to slot {slot}, which keeps {retained} of WAL on the primary");
    Ok(())
}
