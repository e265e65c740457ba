//! `info`: the stanza's committed backups, the extent of its WAL archive, and what they can recover to, as
//! text or JSON.
//!
//! A backup's **recovery window** runs from its end (the earliest point it can be restored to) to the end
//! of the last segment archived without a break after it, on the timeline a default restore follows
//! (`latest`); the window's end time is the last transaction end archived in it. Where the archive breaks
//! off, the window says which segments are missing and whether WAL resumes after them. Archive **gaps**
//! are listed per timeline since the oldest backup, as `check` reports them.
//!
//! A record that cannot be read (corrupt, or failing its checksum) is listed as damaged, with why, and
//! makes the status critical; everything else is shown as usual. Finding damaged WAL records means
//! reading every WAL record: small objects, read 16 at a time.

use strata_restore::target::format_pg_time;
use strata_command::{format_bytes, format_time, now};
use strata_verify::health::{age, Finding, Health, Level};
use strata_repo::verify_results::{VerifyResult, WAL_SUBJECT};
use strata_restore::wal_archive::{describe_range, Gap, TargetTimeline, WalArchive};
use strata_command::{Context_, OutputFormat};
use serde_json::{json, Value};
use strata_messages::BackupRecord;
use strata_pg::wal::{classify_wal_file, WalFileKind};
use strata_pg::Lsn;

/// A backup's recovery window (see the module docs).
struct Window {
    timeline: u32,
    to_segment: String,
    to_lsn: Lsn,
    /// Last transaction end in the window, if any came after the backup.
    to_time: Option<i64>,
    gap_after: Option<Gap>,
}

async fn window(archive: &mut WalArchive<'_>, b: &BackupRecord) -> anyhow::Result<Result<Window, String>> {
    let s = &b.summary;
    let history = match archive.target_history(s.timeline, TargetTimeline::Latest).await {
        Ok(h) => h,
        Err(e) => return Ok(Err(format!("{e:#}"))),
    };
    let (start, stop) = match (archive.parse(&s.wal_start), archive.parse(&s.wal_stop)) {
        (Ok(a), Ok(b)) => (a.segno, b.segno),
        (Err(e), _) | (_, Err(e)) => return Ok(Err(format!("its record is not consistent: {e:#}"))),
    };
    if let Some(g) = archive.first_gap(&history, start, stop) {
        return Ok(Err(format!(
            "WAL needed to make it consistent is missing: {}",
            describe_range(&archive.name(g.first_missing), &archive.name(g.last_missing))
        )));
    }
    let Some(end) = archive.contiguous_end(&history, start) else {
        return Ok(Err(format!("WAL needed to make it consistent is missing: {} is not archived", s.wal_start)));
    };
    if let Some(why) = archive.first_damaged(&history, start, end.segno).await? {
        return Ok(Err(format!("WAL it needs cannot be read: {why}")));
    }
    let to_time = archive.last_time(&history, stop, end.segno).await?;
    Ok(Ok(Window {
        timeline: history.timeline(),
        to_segment: archive.name(end),
        to_lsn: Lsn((end.segno + 1) * archive.seg_size),
        to_time: to_time.filter(|t| *t > s.stop_time.saturating_mul(1_000_000)),
        gap_after: archive.gap_after(&history, start),
    }))
}

fn gap_json(archive: &WalArchive<'_>, g: &Gap) -> Value {
    json!({
        "timeline": g.first_missing.timeline,
        "first_missing": archive.name(g.first_missing),
        "last_missing": archive.name(g.last_missing),
        "before": g.before.map(|s| archive.name(s)),
        "after": g.after.map(|s| archive.name(s)),
        "dropped": archive.dropped_in(g),
    })
}

/// Where `strata wal-stream` stands: the end of the newest partial segment it stored.
struct Streamed {
    segment: String,
    end: Lsn,
    bytes: u64,
    stored_at: i64,
}

async fn streamed_position(ctx: &Context_, seg_size: u64) -> anyhow::Result<Option<Streamed>> {
    let Some((record, stored_at)) = ctx.repo.wal_streamed_newest(&ctx.stanza).await? else { return Ok(None) };
    let Some(segment) = strata_pg::wal::WalSegment::parse(&record.name, seg_size) else { return Ok(None) };
    let end = Lsn(segment.start_lsn(seg_size).0 + record.size);
    Ok(Some(Streamed { segment: record.name, end, bytes: record.size, stored_at }))
}

fn time_text(micros: i64) -> String {
    format_pg_time(micros).trim_end_matches("+00").to_string()
}

pub async fn run(ctx: &Context_, output: OutputFormat) -> anyhow::Result<()> {
    let stanza = ctx.repo.stanza(&ctx.stanza).await?;
    let (backups, damaged_backups) = ctx.repo.backups_checked(&ctx.stanza).await?;
    let (_, damaged_wal) = ctx.repo.wal_records_checked(&ctx.stanza).await?;
    let names = ctx.repo.wal_names(&ctx.stanza).await?;
    let segments: Vec<&String> = names.iter().filter(|n| classify_wal_file(n) == Some(WalFileKind::Segment)).collect();
    let (first, last) = (segments.first().cloned(), segments.last().cloned());
    let mut archive = WalArchive::load(&ctx.repo, &ctx.stanza, stanza.wal_segment_size).await?;
    let oldest = backups.iter().filter_map(|b| archive.parse(&b.summary.wal_start).ok()).map(|s| s.segno).min();
    let gaps = match oldest.or_else(|| archive.segments().map(|s| s.segno).min()) {
        Some(since) => archive.gaps(since).await?,
        None => Vec::new(),
    };
    let mut windows = Vec::new();
    for b in &backups {
        windows.push(window(&mut archive, b).await?);
    }
    let missing_histories = archive.missing_histories();
    let streamed = streamed_position(ctx, stanza.wal_segment_size).await?;
    let replication = replication(ctx).await;
    let repositories: Vec<Value> = ctx
        .cfg
        .repo
        .iter()
        .map(|r| json!({ "name": r.name, "type": format!("{:?}", r.kind).to_lowercase(), "tier": r.tier, "archive_required": r.archive_required }))
        .collect();
    let annotations: std::collections::HashMap<String, strata_repo::annotations::Annotation> =
        ctx.repo.annotations(&ctx.stanza).await?.into_iter().collect();
    let mut health = health_of_repositories(ctx).await;
    if let Some(Ok(h)) = health.iter_mut().find_map(|(name, h)| (name == ctx.repo.name()).then_some(h)) {
        add_damaged_wal(h, &damaged_wal);
    }
    // Where the streamer stands against the cluster, when info reached it.
    let archiver = health
        .iter()
        .find_map(|(name, h)| (name == ctx.repo.name()).then_some(h))
        .and_then(|h| h.as_ref().ok())
        .and_then(|h| h.archiver.as_ref().ok())
        .cloned();
    let stream_lag = streamed.as_ref().zip(archiver.as_ref()).map(|(s, a)| {
        let bytes = a.current_lsn.saturating_sub(s.end.0);
        // The newest partial is rewritten within flush_ms while WAL comes: its age is how far behind it is.
        let secs = if bytes > 0 { (now() - s.stored_at).max(0) } else { 0 };
        (bytes, secs)
    });
    let stream_slot = archiver.as_ref().and_then(|a| a.stream_slot.clone());
    let verified: std::collections::HashMap<String, VerifyResult> = health
        .iter()
        .find_map(|(name, h)| (name == ctx.repo.name()).then_some(h))
        .and_then(|h| h.as_ref().ok())
        .map(|h| h.verify.iter().map(|v| (v.subject.clone(), v.clone())).collect())
        .unwrap_or_default();
    match output {
        OutputFormat::Json => {
            let list: Vec<_> = backups
                .iter()
                .zip(&windows)
                .map(|(b, w)| {
                    let s = &b.summary;
                    let window = match w {
                        Ok(w) => json!({
                            "timeline": w.timeline,
                            "from_time": s.stop_time,
                            "from_lsn": Lsn(s.stop_lsn).to_string(),
                            "to_segment": w.to_segment,
                            "to_lsn": w.to_lsn.to_string(),
                            "to_time": w.to_time.map(|t| t / 1_000_000),
                            "to_time_text": w.to_time.map(time_text),
                            "gap_after": w.gap_after.as_ref().map(|g| gap_json(&archive, g)),
                        }),
                        Err(why) => json!({ "unrecoverable": why }),
                    };
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
                        "reference": if s.reference.is_empty() { Value::Null } else { json!(s.reference) },
                        "database_bytes": s.database_bytes,
                        "read_bytes": s.read_bytes,
                        "sent_bytes": s.sent_bytes,
                        "stored_bytes": s.stored_bytes,
                        "file_count": s.file_count,
                        "checksum_failures": s.checksum_failures,
                        "pg_version_num": s.pg_version_num,
                        "recovery_window": window,
                        "verify": verified.get(&s.label).map(verify_json),
                        "pinned": annotations.get(&s.label).is_some_and(|a| a.pinned),
                        "note": annotations.get(&s.label).and_then(|a| a.note.clone()),
                    })
                })
                .collect();
            let doc = json!([{
                "stanza": ctx.stanza,
                "repo": ctx.repo.name(),
                "system_id": stanza.system_id,
                "pg_version_num": stanza.pg_version_num,
                "backups": list,
                "damaged_backups": damaged_backups.iter().map(|d| json!({ "label": d.name, "path": d.path, "reason": d.reason })).collect::<Vec<_>>(),
                "archive": {
                    "first": first,
                    "last": last,
                    "segments": segments.len(),
                    "gaps": gaps.iter().map(|(_, g)| gap_json(&archive, g)).collect::<Vec<_>>(),
                    "missing_history_files": missing_histories,
                    "damaged": damaged_wal.iter().map(|d| json!({ "name": d.name, "path": d.path, "reason": d.reason })).collect::<Vec<_>>(),
                },
                "wal_stream": streamed.as_ref().map(|s| json!({
                    "segment": s.segment,
                    "stored_lsn": s.end.to_string(),
                    "segment_bytes": s.bytes,
                    "stored_at": s.stored_at,
                    "lag_bytes": stream_lag.map(|l| l.0),
                    "lag_seconds": stream_lag.map(|l| l.1),
                })),
                "wal_stream_slot": stream_slot,
                "repositories": repositories,
                "replication": replication.iter().map(Replication::to_json).collect::<Vec<_>>(),
                "wal_verify": verified.get(WAL_SUBJECT).map(verify_json),
                "status": health.iter().find_map(|(n, h)| (n == ctx.repo.name()).then(|| health_json(h))),
                "repository_status": health.iter().map(|(n, h)| json!({ "repo": n, "status": health_json(h) })).collect::<Vec<_>>(),
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
            for (name, h) in &health {
                let marker = if health.len() > 1 { format!(" (repository '{name}')") } else { String::new() };
                match h {
                    Ok(h) => {
                        println!("    status{marker}: {}", h.status_text());
                        if name == ctx.repo.name() {
                            print_facts(h);
                        }
                    }
                    Err(e) => println!("    status{marker}: unknown ({e})"),
                }
            }
            match (&first, &last) {
                (Some(f), Some(l)) => println!("    wal archive: {f} ... {l} ({} segments)", segments.len()),
                _ => println!("    wal archive: empty"),
            }
            if let Some(s) = &streamed {
                println!(
                    "    wal stream: stored up to {} (segment {}, {} of it), {} UTC",
                    s.end,
                    s.segment,
                    format_bytes(s.bytes),
                    format_time(s.stored_at)
                );
                if let Some((bytes, secs)) = stream_lag {
                    println!("    wal stream lag: {} behind the cluster ({})", format_bytes(bytes), age(secs));
                }
            }
            if let Some(slot) = &stream_slot {
                println!(
                    "    wal stream slot: {} {}, keeps {} of WAL on the primary",
                    slot.name,
                    if slot.active { "in use" } else { "NOT IN USE (no streamer connected)" },
                    format_bytes(slot.retained_bytes)
                );
            }
            for (_, g) in &gaps {
                println!(
                    "    wal archive gap: {} missing{}",
                    describe_range(&archive.name(g.first_missing), &archive.name(g.last_missing)),
                    archive.dropped_text(g)
                );
            }
            for tl in &missing_histories {
                println!("    wal archive: history file of timeline {tl} missing");
            }
            for d in &damaged_wal {
                println!("    wal archive: DAMAGED record of {}: {}", d.name, d.reason);
            }
            // With one repository and no tier there is nothing to say beyond the header line.
            let several = ctx.cfg.repo.len() > 1 || ctx.cfg.repo.iter().any(|r| r.tier.is_some());
            for r in ctx.cfg.repo.iter().filter(|_| several) {
                println!("    repository '{}': {}{}", r.name, r.tier.as_deref().unwrap_or("no tier"), if r.name == ctx.repo.name() { " (read by this command)" } else { "" });
            }
            for r in &replication {
                println!("    {}", r.to_text());
            }
            if backups.is_empty() && damaged_backups.is_empty() {
                println!("    no backups");
            }
            for d in &damaged_backups {
                println!("\n    DAMAGED backup: {}\n        its record cannot be read ({}): {}", d.name, d.path, d.reason);
            }
            for (b, w) in backups.iter().zip(&windows) {
                let s = &b.summary;
                println!("\n    {} backup: {}", s.backup_type.as_str(), s.label);
                if !s.reference.is_empty() {
                    println!("        reference: {}", s.reference);
                }
                if let Some(a) = annotations.get(&s.label) {
                    if a.pinned {
                        println!("        pinned: expire keeps it and the backups it depends on");
                    }
                    if let Some(note) = &a.note {
                        println!("        note: {note}");
                    }
                }
                println!("        timestamp start/stop: {} / {} UTC", format_time(s.start_time), format_time(s.stop_time));
                println!("        lsn start/stop: {} / {}", Lsn(s.start_lsn), Lsn(s.stop_lsn));
                println!("        wal start/stop: {} / {}", s.wal_start, s.wal_stop);
                match w {
                    Ok(w) => {
                        let to = match w.to_time {
                            Some(t) => format!("{} UTC", time_text(t)),
                            None => "its end (no transaction archived after it)".to_string(),
                        };
                        println!(
                            "        recoverable: {} UTC ({}) to {to}, WAL through {} on timeline {}",
                            format_time(s.stop_time),
                            Lsn(s.stop_lsn),
                            w.to_segment,
                            w.timeline
                        );
                        if let Some(g) = &w.gap_after {
                            println!(
                                "        then WAL missing: {}{}{}",
                                describe_range(&archive.name(g.first_missing), &archive.name(g.last_missing)),
                                g.after.map(|a| format!(" (archived again from {})", archive.name(a))).unwrap_or_default(),
                                archive.dropped_text(g)
                            );
                        }
                    }
                    Err(why) => println!("        not recoverable: {why}"),
                }
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
                match verified.get(&s.label) {
                    Some(v) => println!("        {}", verify_text(v, now())),
                    None => println!("        verified: never"),
                }
            }
        }
    }
    Ok(())
}

/// How far one replication target is behind its source (the replicator's own lag function).
struct Replication {
    source: String,
    target: String,
    tier: Option<String>,
    lag: Result<strata_replicate::Lag, String>,
    now: i64,
}

impl Replication {
    fn to_json(&self) -> Value {
        match &self.lag {
            Ok(l) => json!({
                "source": self.source,
                "target": self.target,
                "tier": self.tier,
                "lag_objects": l.objects,
                "lag_bytes": l.bytes,
                "lag_seconds": l.seconds(self.now),
                "oldest_uncopied": l.oldest.as_ref().map(|(p, _)| p),
            }),
            Err(e) => json!({ "source": self.source, "target": self.target, "tier": self.tier, "error": e }),
        }
    }

    fn to_text(&self) -> String {
        let head = format!("replication '{}' -> '{}'", self.source, self.target);
        match &self.lag {
            Ok(l) if l.objects == 0 => format!("{head}: up to date"),
            Ok(l) => format!(
                "{head}: {} objects ({}) behind, {} s; oldest uncopied: {}",
                l.objects,
                format_bytes(l.bytes),
                l.seconds(self.now),
                l.oldest.as_ref().map(|(p, _)| p.as_str()).unwrap_or("-")
            ),
            Err(e) => format!("{head}: unknown ({e})"),
        }
    }
}

/// The lag of every replication target, computed now. A repository that cannot be read is reported in
/// its row rather than failing `info`.
async fn replication(ctx: &Context_) -> Vec<Replication> {
    let Ok((source, targets)) = strata_replicate::source_and_targets(&ctx.cfg) else { return Vec::new() };
    let now = strata_command::now();
    let source_repo = match ctx.cfg.repo_named(&source) {
        Some(_) if source == ctx.repo.name() => Ok(ctx.repo.clone()),
        Some(rc) => strata_runtime::open_repo(&ctx.cfg, rc).await.map_err(|e| format!("{e:#}")),
        None => Err(format!("no repository '{source}'")),
    };
    let mut out = Vec::new();
    for target in targets {
        let tier = ctx.cfg.repo_named(&target).and_then(|r| r.tier.clone());
        let lag = match &source_repo {
            Err(e) => Err(e.clone()),
            Ok(src) => match ctx.cfg.repo_named(&target) {
                None => Err(format!("no repository '{target}'")),
                Some(rc) => match strata_runtime::open_repo(&ctx.cfg, rc).await {
                    Err(e) => Err(format!("{e:#}")),
                    Ok(t) => strata_replicate::lag(src, &t).await.map_err(|e| e.to_string()),
                },
            },
        };
        out.push(Replication { source: source.clone(), target, tier, lag, now });
    }
    out
}

/// The health of the stanza in every repository (the one `info` reads first), each evaluated now.
async fn health_of_repositories(ctx: &Context_) -> Vec<(String, Result<Health, String>)> {
    let pg_conn = ctx.cfg.stanza(&ctx.stanza).ok().map(|s| s.pg_conn.clone());
    let mut out = Vec::new();
    for rc in &ctx.cfg.repo {
        let repo = if rc.name == ctx.repo.name() {
            Ok(ctx.repo.clone())
        } else {
            strata_runtime::open_repo(&ctx.cfg, rc).await.map_err(|e| format!("{e:#}"))
        };
        let h = match repo {
            Ok(r) => strata_verify::health::evaluate(&ctx.cfg, &r, &ctx.stanza, pg_conn.as_deref(), now()).await.map_err(|e| format!("{e:#}")),
            Err(e) => Err(e),
        };
        out.push((rc.name.clone(), h));
    }
    out.sort_by_key(|(n, _)| n != ctx.repo.name());
    out
}

/// Damaged WAL records make the stanza's status critical: recovery through one of them stops there.
fn add_damaged_wal(h: &mut Health, damaged: &[strata_repo::DamagedRecord]) {
    let Some(first) = damaged.first() else { return };
    let summary = format!("{} WAL records cannot be read: {first}", damaged.len());
    h.findings.push(Finding { level: Level::Critical, rule: "wal-record-damaged", summary });
    h.status = Level::Critical;
}

fn verify_json(v: &VerifyResult) -> Value {
    json!({
        "time": v.time,
        "ok": v.ok(),
        "problem_count": v.problem_count,
        "problems": v.problems.iter().take(10).map(|p| p.to_string()).collect::<Vec<_>>(),
        "chunks": v.chunks,
        "wal_files": v.wal_files,
        "duration_secs": v.duration_secs,
    })
}

fn verify_text(v: &VerifyResult, now: i64) -> String {
    let when = format!("{} UTC, {} ago", format_time(v.time), age(now - v.time));
    if v.ok() {
        format!("verified: ok ({when})")
    } else {
        let first = v.problems.first().map(|p| format!("; first: {p}")).unwrap_or_default();
        format!("verified: DAMAGED, {} problems ({when}){first}", v.problem_count)
    }
}

fn health_json(h: &Result<Health, String>) -> Value {
    match h {
        Ok(h) => json!({
            "status": h.status.as_str(),
            "reasons": h.findings.iter().map(|f| json!({ "level": f.level.as_str(), "rule": f.rule, "summary": f.summary })).collect::<Vec<_>>(),
            "rpo_secs": h.rpo_secs,
            "last_backup": h.last_backup,
            "archiver": match &h.archiver { Ok(a) => json!(a), Err(e) => json!({ "unknown": e }) },
            "space": match &h.space { Ok(s) => json!(s), Err(e) => json!({ "unknown": e }) },
            "last_verify_time": h.last_verify_time(),
            "verify_problems": h.verify_problems(),
            "last_restore_test": h.restore_test.as_ref().map(|t| json!({
                "time": t.start_time,
                "label": t.label,
                "passed": t.passed,
                "failure": t.failure,
                "restore_ms": t.restore_ms,
                "replay_ms": t.replay_ms,
                "total_ms": t.total_ms,
                "peak_memory_bytes": t.peak_memory_bytes,
            })),
        }),
        Err(e) => json!({ "status": "unknown", "error": e }),
    }
}

fn print_facts(h: &Health) {
    let now = h.time;
    match &h.archiver {
        Ok(a) => println!(
            "    archiver: {} archived, {} failed; last archived {}{}; lag {} bytes, {}",
            a.archived_count,
            a.failed_count,
            a.last_archived_wal.as_deref().unwrap_or("none"),
            a.last_archived_time.map(|t| format!(" at {} UTC", format_time(t))).unwrap_or_default(),
            a.lag_bytes,
            age(a.lag_seconds)
        ),
        Err(e) => println!("    archiver: unknown ({e})"),
    }
    if let Ok(s) = &h.space {
        let fs = match (s.fs_used_percent, s.fs_free_bytes) {
            (Some(p), Some(free)) => format!("; filesystem {p:.0}% full, {} free", format_bytes(free)),
            _ => String::new(),
        };
        println!("    repository space: {} used{fs}", format_bytes(s.used_bytes));
    }
    match &h.restore_test {
        Some(t) => {
            let when = format!("{} UTC, {} ago", format_time(t.start_time), age(now - t.start_time));
            let secs = |ms: Option<u64>| ms.map(|m| format!("{:.1} s", m as f64 / 1000.0)).unwrap_or_else(|| "-".into());
            match &t.failure {
                None => println!(
                    "    last restore test: passed ({when}; backup {}, restore {}, replay {}, total {})",
                    t.label,
                    secs(t.restore_ms),
                    secs(t.replay_ms),
                    secs(Some(t.total_ms))
                ),
                Some(why) => println!("    last restore test: FAILED ({when}; backup {}): {why}", t.label),
            }
        }
        None => println!("    last restore test: never"),
    }
    match h.verify.iter().find(|v| v.subject == WAL_SUBJECT) {
        Some(v) => println!("    wal archive {}", verify_text(v, now)),
        None => println!("    wal archive verified: never"),
    }
}
