//! `archive-push` (PostgreSQL's archive_command) and `archive-get` (its restore_command).
//!
//! # Prefetch
//! Recovery asks for one segment at a time and replays it before asking for the next, so with a plain
//! restore_command fetching (a process start, repository reads, decompression, a hash) and replay take
//! turns. `archive-get --prefetch N` overlaps them, as pgBackRest's asynchronous archive-get does: each
//! call records the segment asked for in a spool directory (`strata-spool` beside the destination, i.e.
//! in `pg_wal`, whose contents no backup copies and which is on the same file system, so a spooled
//! segment is handed over by a rename) and makes sure one background `archive-prefetch` process keeps
//! the N segments after it in the spool. A call finds its segment there (or waits for the prefetcher to
//! finish it) instead of fetching it. Spooled segments are verified against their hash like any other,
//! and segments behind the one asked for, or of another timeline, are removed from the spool. The
//! prefetcher stops at the end of the archive, and when it has nothing left to fetch; the next call
//! starts another. When recovery asks for a segment the archive does not have (its end), the spool is
//! removed; a recovery that stops at a target earlier leaves up to N segments there, in `pg_wal`, which no
//! backup copies and the next delta restore removes.

use crate::local;
use strata_command::Context_;
use anyhow::{bail, Context};
use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use strata_collect::job::CommitOutcome;
use strata_collect::wal::{WalPushSettings, WalPushTarget};
use strata_pg::timeline::TimelineHistory;
use strata_pg::wal::{classify_wal_file, history_file_name, wal_file_kind, WalFileKind};
use strata_pg::WalSegment;

/// The spool's name, in the directory of the restore_command's destination.
pub const SPOOL_DIR: &str = "strata-spool";
/// File in the spool naming the last segment recovery asked for.
const WANTED: &str = ".wanted";
const LOCK: &str = ".lock";
/// How long a call waits for a segment the prefetcher is fetching before fetching it itself.
const SPOOL_WAIT: Duration = Duration::from_secs(60);

/// `archive-push`. `asked`: the shipper was asked already, before the repository was opened
/// ([`ask_shipper_first`]), and gave no answer.
pub async fn push(ctx: &Context_, path: &Path, asked: bool) -> anyhow::Result<()> {
    if let Some(max) = ctx.cfg.archive.push_queue_max {
        if drop_over_queue_max(ctx, path, max).await? {
            return Ok(());
        }
    }
    if ctx.cfg.archive.asynchronous && !asked {
        if shipper_answer(super::shipper::ask(&super::shipper::Asker::of(ctx), path).await?, path)? {
            return Ok(());
        }
    }
    push_sync(ctx, path).await
}

/// Whether the shipper's answer settles the push (an error when it failed); `false` to push here.
fn shipper_answer(answer: Option<super::shipper::Answer>, path: &Path) -> anyhow::Result<bool> {
    match answer {
        Some(super::shipper::Answer::Durable { .. }) => Ok(true),
        Some(super::shipper::Answer::Failed(reason)) => bail!("{reason}"),
        // No shipper answered (it could not start, died, or exited idle at that moment): the segment
        // is pushed here, as without the shipper.
        None => {
            eprintln!("warning: no WAL shipper answered; archiving {:?} without it", path.file_name().unwrap_or_default());
            Ok(false)
        }
    }
}

/// Whether `archive-push` asks the shipper before the repository is opened ([`ask_shipper_first`]): in
/// async mode, unless `archive.push_queue_max` must look at the repository before anything.
pub fn asks_shipper_first(cfg: &strata_config::Config) -> bool {
    cfg.archive.asynchronous && cfg.archive.push_queue_max.is_none()
}

/// `archive-push` in async mode, before the repository is opened: whether the shipper's answer settles
/// the push (an error when it failed); `false` when the caller must open the repository and push itself.
pub async fn ask_shipper_first(asker: &super::shipper::Asker<'_>, path: &Path) -> anyhow::Result<bool> {
    shipper_answer(super::shipper::ask(asker, path).await?, path)
}

/// The stanza a pushed WAL file is checked against (archive-push, the shipper, the streamer).
pub(crate) fn wal_push_target(ctx: &Context_, info: &strata_repo::StanzaInfo) -> WalPushTarget {
    WalPushTarget { stanza: ctx.stanza.clone(), system_id: info.system_id, pg_major: info.pg_major, wal_segment_size: info.wal_segment_size }
}

/// How WAL files are cut, compressed and bounded in flight (`[pipeline]`); `seal_here`: see
/// [`WalPushSettings::seal_here`].
pub(crate) fn wal_push_settings(ctx: &Context_, seal_here: Option<std::sync::Arc<strata_collect::wal::SealSlots>>) -> WalPushSettings {
    let p = &ctx.cfg.pipeline;
    WalPushSettings {
        chunk_size: p.chunk_size,
        compress_level: p.wal_compress_level,
        in_flight_bytes: p.in_flight_bytes,
        stall: Duration::from_secs(p.stall_timeout_secs),
        sealer: ctx.repo.sealer().clone(),
        seal_here,
    }
}

/// Pushes one file from this process: the stages start, take the file, and stop.
pub async fn push_sync(ctx: &Context_, path: &Path) -> anyhow::Result<()> {
    let info = ctx.repo.stanza(&ctx.stanza).await?;
    let target = wal_push_target(ctx, &info);
    // One file: its chunks are compressed in parallel by the sealer's workers.
    let settings = wal_push_settings(ctx, None);
    let (bus, in_process) = strata_runtime::connect_bus(&ctx.cfg).await?;
    let stages = if in_process { Some(local::start(&ctx.cfg, &ctx.repo, bus.clone(), false).await?) } else { None };
    let pushed = async {
        // Every check comes before the first chunk is sent: a refused file leaves nothing stored.
        let file = strata_collect::wal::read(path, &target).await?;
        if let Some(history) = &file.history {
            check_parent_known(ctx, &file.name, history).await?;
        }
        let name = file.name.clone();
        anyhow::Ok((name, strata_collect::wal::push(bus, &target, &settings, file, None).await?))
    }
    .await;
    if let Some(stages) = stages {
        stages.stop().await?;
    }
    let (name, outcome) = pushed?;
    crate::multi_repo::push_to_others(ctx, &name).await?;
    if outcome == CommitOutcome::AlreadyArchived {
        // Valid after a crash between the archive and PostgreSQL noting it, as pgBackRest says; worth a line.
        eprintln!("warning: {name} was already archived with the same content; accepted");
    }
    Ok(())
}

/// Bytes of WAL PostgreSQL is waiting to archive: the segments its `archive_status` marks ready.
fn ready_bytes(pg_wal: &Path) -> u64 {
    let Ok(entries) = fs::read_dir(pg_wal.join("archive_status")) else { return 0 };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|n| n.strip_suffix(".ready")).map(str::to_string))
        .filter(|n| classify_wal_file(n) == Some(WalFileKind::Segment))
        .filter_map(|n| fs::metadata(pg_wal.join(n)).ok())
        .map(|m| m.len())
        .sum()
}

/// `archive.push_queue_max` (see the config docs): when the ready WAL is over the limit, a segment is
/// dropped (reported archived, not stored) after its drop is recorded in the repository and a critical
/// alert is raised. Whether it was dropped. History and backup history files are never dropped: they are
/// small and recovery cannot do without them.
async fn drop_over_queue_max(ctx: &Context_, path: &Path, max: u64) -> anyhow::Result<bool> {
    let Some(name) = path.file_name().and_then(|n| n.to_str()) else { return Ok(false) };
    if classify_wal_file(name) != Some(WalFileKind::Segment) {
        return Ok(false);
    }
    let pg_wal = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let queued = ready_bytes(pg_wal);
    if queued <= max {
        return Ok(false);
    }
    if ctx.repo.wal(&ctx.stanza, name).await?.is_some() {
        // Archived already (a shipper pushed it ahead): nothing is lost by saying so.
        return Ok(true);
    }
    let record = strata_repo::wal_dropped::WalDropped { name: name.to_string(), dropped_at: strata_command::now(), queue_bytes: queued, queue_max: max };
    // Recorded first: if the record cannot be written, the segment is not dropped (PostgreSQL retries).
    ctx.repo.put_wal_dropped(&ctx.stanza, &record).await.context("cannot record the dropped segment; not dropping it")?;
    let summary = format!(
        "WAL segment {name} DROPPED, not archived: {} of WAL waiting to be archived is over archive.push_queue_max ({})",
        strata_command::format_bytes(queued),
        strata_command::format_bytes(max)
    );
    eprintln!("error: {summary}");
    let alert = strata_alerts::Alert {
        key: format!("wal-dropped/{}/{name}", ctx.stanza),
        tier: strata_alerts::Tier::Critical,
        stanza: Some(ctx.stanza.clone()),
        summary: summary.clone(),
        details: "No backup taken before this segment can be recovered past it (see `strata info`). Find why archiving fell behind (`strata check`, the archive_command's errors in the PostgreSQL log), then take a new full backup.".into(),
    };
    match strata_alerts::Notifier::new(&ctx.cfg.alerts, None) {
        Ok(mut n) => {
            if let strata_alerts::DeliveryOutcome::Failed(why) = n.event(alert).await.outcome {
                eprintln!("warning: the critical alert about {name} could not be delivered: {why}");
            }
        }
        Err(e) => eprintln!("warning: the critical alert about {name} could not be sent: {e}"),
    }
    Ok(true)
}

/// Refuses a history file whose timeline branches from one the stanza does not know: timeline 1, one with
/// an archived history file, or one with an archived segment. A history file is never replaced once
/// archived, so one naming a parent that never existed would stay and mislead every later recovery.
pub(crate) async fn check_parent_known(ctx: &Context_, name: &str, history: &TimelineHistory) -> anyhow::Result<()> {
    let parent = history.parent().expect("a checked history file has a parent");
    if parent == 1 {
        return Ok(());
    }
    let prefix = format!("{parent:08X}");
    let known = ctx.repo.wal_names(&ctx.stanza).await?.iter().any(|n| {
        n.starts_with(&prefix)
            && matches!(classify_wal_file(n), Some(WalFileKind::History | WalFileKind::Segment | WalFileKind::Partial))
    });
    if !known {
        bail!(
            "{name} is refused for stanza '{}': it branches from timeline {parent}, which the archive does not know (no {} and no segment of it is archived)",
            ctx.stanza,
            history_file_name(parent)
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

/// Fetches `name` to `dest`; with `prefetch` > 0 and a segment, through the spool (see the module docs).
pub async fn get(ctx: &Context_, name: &str, dest: &Path, prefetch: usize) -> anyhow::Result<()> {
    // Before the name is part of any path (the repository's, the spool's).
    wal_file_kind(name)?;
    let dir = dest.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    if prefetch > 0 && classify_wal_file(name) == Some(WalFileKind::Segment) {
        let seg_size = ctx.repo.stanza(&ctx.stanza).await?.wal_segment_size;
        if let Some(wanted) = WalSegment::parse(name, seg_size) {
            let spool = dir.join(SPOOL_DIR);
            if spool_hand_over(ctx, &spool, wanted, seg_size, name, dest, prefetch).await? {
                return Ok(());
            }
        }
    }
    if !fetch(ctx, name, dir, dest).await? {
        if classify_wal_file(name) == Some(WalFileKind::Segment) && fetch_streamed(ctx, name, dir, dest).await? {
            return Ok(());
        }
        // Recovery has reached the end of the archive: what is spooled beyond it is not needed.
        if prefetch > 0 {
            let spool = dir.join(SPOOL_DIR);
            if spool.is_dir() && try_lock(&spool)?.is_some() {
                let _ = fs::remove_dir_all(&spool);
            }
        }
        return Err(NotArchived { name: name.into(), stanza: ctx.stanza.clone() }.into());
    }
    Ok(())
}

/// Records the wanted segment, keeps a prefetcher running and hands the segment over from the spool if it
/// is (or is about to be) there. Whether it was.
async fn spool_hand_over(
    ctx: &Context_,
    spool: &Path,
    wanted: WalSegment,
    seg_size: u64,
    name: &str,
    dest: &Path,
    prefetch: usize,
) -> anyhow::Result<bool> {
    fs::create_dir_all(spool).with_context(|| format!("cannot create {spool:?}"))?;
    clean_spool(spool, wanted, seg_size);
    write_atomic(&spool.join(WANTED), name.as_bytes())?;
    start_prefetcher(ctx, spool, prefetch)?;
    let spooled = spool.join(name);
    let in_progress = spool.join(format!(".{name}.tmp"));
    let started = Instant::now();
    loop {
        match fs::rename(&spooled, dest) {
            Ok(()) => return Ok(true),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => bail!("cannot move {spooled:?} to {dest:?}: {e}"),
        }
        // Wait only for a prefetcher that is alive: a `.tmp` left by one that died is nobody's work.
        if !in_progress.exists() || started.elapsed() > SPOOL_WAIT || try_lock(spool)?.is_some() {
            return Ok(false);
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

/// Removes spooled segments recovery has gone past or will not ask for (another timeline).
fn clean_spool(spool: &Path, wanted: WalSegment, seg_size: u64) {
    let Ok(entries) = fs::read_dir(spool) else { return };
    for e in entries.flatten() {
        let file = e.file_name();
        let Some(s) = file.to_str().and_then(|n| WalSegment::parse(n, seg_size)) else { continue };
        if s.timeline != wanted.timeline || s.segno < wanted.segno {
            let _ = fs::remove_file(e.path());
        }
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    fs::write(&tmp, bytes).with_context(|| format!("cannot write {tmp:?}"))?;
    fs::rename(&tmp, path).with_context(|| format!("cannot write {path:?}"))
}

/// Holds a lock file's flock while alive (released when the file closes, however the process ends). The
/// prefetch spool's lock and the WAL shipper's.
pub(crate) struct SpoolLock(#[allow(dead_code)] fs::File);

fn try_lock(spool: &Path) -> anyhow::Result<Option<SpoolLock>> {
    try_lock_file(&spool.join(LOCK))
}

/// Takes the flock of the file at `path` (created if missing) unless another process holds it.
pub(crate) fn try_lock_file(path: &Path) -> anyhow::Result<Option<SpoolLock>> {
    let f = fs::OpenOptions::new().create(true).truncate(false).write(true).open(path).with_context(|| format!("cannot open {path:?}"))?;
    // SAFETY: flock on a file descriptor we own; no memory is involved.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    Ok((r == 0).then_some(SpoolLock(f)))
}

/// Starts a background `archive-prefetch` unless one holds the spool's lock.
fn start_prefetcher(ctx: &Context_, spool: &Path, count: usize) -> anyhow::Result<()> {
    if try_lock(spool)?.is_none() {
        return Ok(());
    }
    let exe = std::env::current_exe().context("cannot find the strata executable")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("--config")
        .arg(&ctx.config_path)
        .arg("--stanza")
        .arg(&ctx.stanza)
        .args(ctx.repo_option())
        .arg("archive-prefetch")
        .arg(spool)
        .arg(count.to_string())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null());
    // Its own session: the prefetcher outlives this restore_command and must not get the signals meant
    // for the server's process group.
    // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
    unsafe {
        cmd.pre_exec(|| {
            libc::setsid();
            Ok(())
        });
    }
    cmd.spawn().context("cannot start the WAL prefetcher")?;
    Ok(())
}

/// The background prefetcher: keeps the `count` segments after the wanted one in the spool.
pub async fn prefetch(ctx: &Context_, spool: &Path, count: usize) -> anyhow::Result<()> {
    let Some(_lock) = try_lock(spool)? else { return Ok(()) };
    // Temporary files of a prefetcher that died: only the lock holder writes here.
    for e in fs::read_dir(spool).into_iter().flatten().flatten() {
        if e.file_name().to_string_lossy().ends_with(".tmp") {
            let _ = fs::remove_file(e.path());
        }
    }
    let seg_size = ctx.repo.stanza(&ctx.stanza).await?.wal_segment_size;
    loop {
        let wanted = fs::read_to_string(spool.join(WANTED)).unwrap_or_default();
        let Some(wanted) = WalSegment::parse(wanted.trim(), seg_size) else { return Ok(()) };
        let mut next = None;
        let mut s = wanted;
        for _ in 0..count {
            s = s.next();
            if !spool.join(s.name(seg_size)).exists() {
                next = Some(s);
                break;
            }
        }
        let Some(s) = next else { return Ok(()) };
        let name = s.name(seg_size);
        if !fetch(ctx, &name, spool, &spool.join(&name)).await? {
            // The end of the archive (for now).
            return Ok(());
        }
    }
}

/// Writes archived `name` to `dest` (through a temporary file in `dir`, `.<dest name>.tmp`); `false` when
/// it is not archived.
async fn fetch(ctx: &Context_, name: &str, dir: &Path, dest: &Path) -> anyhow::Result<bool> {
    let Some(record) = ctx.repo.wal(&ctx.stanza, name).await? else {
        return Ok(false);
    };
    write_record(ctx, &record, None, dir, dest).await.map_err(|e| e.context(format!("{name}: the archived file")))?;
    Ok(true)
}

/// Writes the streamed partial of segment `name` (`strata wal-stream`, see `strata_repo::wal_stream`) to
/// `dest`, padded with zeros to the segment's size, which recovery reads as the end of WAL; `false` when
/// there is none. Only for a segment the archive does not hold, and never prefetched: a partial grows.
async fn fetch_streamed(ctx: &Context_, name: &str, dir: &Path, dest: &Path) -> anyhow::Result<bool> {
    let Some(record) = ctx.repo.wal_streamed(&ctx.stanza, name).await? else {
        return Ok(false);
    };
    let seg_size = ctx.repo.stanza(&ctx.stanza).await?.wal_segment_size;
    if record.size > seg_size {
        bail!("{name}: the streamed partial segment holds {} bytes, more than a segment", record.size);
    }
    write_record(ctx, &record, Some(seg_size), dir, dest)
        .await
        .map_err(|e| e.context(format!("{name}: the streamed partial segment")))?;
    eprintln!(
        "archive-get: {name} is not archived whole; served its streamed part ({} of {} bytes), the end of the archive",
        record.size, seg_size
    );
    Ok(true)
}

/// Writes the file a WAL record describes to `dest` through a temporary file in `dir`, checked against
/// the record's size and hash, and zero-padded to `pad_to` when given; nothing is left behind on failure.
async fn write_record(ctx: &Context_, record: &strata_messages::WalRecord, pad_to: Option<u64>, dir: &Path, dest: &Path) -> anyhow::Result<()> {
    let sealer = ctx.repo.sealer();
    let tmp: PathBuf = dir.join(format!(".{}.tmp", dest.file_name().map(|n| n.to_string_lossy()).unwrap_or_default()));
    let mut file = fs::File::create(&tmp).with_context(|| format!("cannot create {tmp:?}"))?;
    let mut hasher = sealer.id_hasher();
    let written: anyhow::Result<()> = async {
        let mut len = 0u64;
        for r in &record.chunks {
            let plain = ctx.repo.read_chunk(sealer, r).await?;
            hasher.update(&plain);
            len += plain.len() as u64;
            file.write_all(&plain).with_context(|| format!("cannot write {tmp:?}"))?;
        }
        if len != record.size || hasher.finalize().as_bytes() != &record.hash {
            bail!("does not match its recorded hash");
        }
        if let Some(size) = pad_to {
            file.set_len(size).with_context(|| format!("cannot write {tmp:?}"))?;
        }
        Ok(())
    }
    .await;
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    fs::rename(&tmp, dest).with_context(|| format!("cannot write {dest:?}"))
}
