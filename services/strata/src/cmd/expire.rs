//! `expire`: removes backups retention no longer keeps, the WAL only they needed, and the packs nothing
//! references any more.
//!
//! # Which backups stay
//! Retention keeps full backups: the newest `retention_full` fulls, and with `retention_full_days` every
//! full started within that many days plus the newest one before them (so the whole period can be
//! restored); a full either rule keeps stays. Each kept full keeps every diff and incr backup whose
//! reference chain leads to it; an older full goes together with its dependants, never before them.
//! `retention_diff` keeps the newest N differential backups; an older diff goes with the incrementals
//! whose chain passes through it. Two things override every rule, and keep a backup together with every
//! backup its chain depends on: a pin (`strata annotate --pin`), and the compliance floor
//! `retention_min_age_days` (no backup younger than that is removed). A backup whose chain cannot be
//! followed is kept: expire never guesses in the direction of deleting.
//!
//! # Which WAL stays
//! Everything from the oldest kept backup's first segment on (history files always stay). With
//! `retention_archive_extra_days = D`, also every WAL file archived in the D days before that backup
//! started, and everything after the first of those, so what stays has no hole. "Archived" is the WAL
//! record's modification time in the repository, not the commit times of the segment's summary: a
//! segment without commits has no summary time, and the archive time errs on the safe side (an archiver
//! that fell behind makes it later, so more is kept, never less).
//!
//! # Which packs go
//! Packs are shared by every stanza of the repository, so a pack is removed only when no kept backup
//! manifest, no checkpoint of an interrupted backup and no WAL record of any stanza points into it, and
//! it is older than `--gc-grace-secs`. Records are deleted before packs, so a crash midway leaves
//! unreferenced packs, never a backup with missing data. Within a stanza, checkpoints are read before
//! records: a resumed backup that commits in between removes the checkpoint only after its record exists.
//!
//! # Running backups
//! A running backup has chunks in packs nothing references yet, and its uploaders may also point chunks
//! at packs that already exist (deduplication), including packs that only expired backups referenced.
//! So `strata backup` writes a marker (`stanza/<S>/backup/<label>.running`, see
//! [`strata_repo::annotations`]) before it sends its first chunk, refreshes it every minute and deletes
//! it after its commit or failure, and the rule is:
//! - while a fresh marker of any stanza exists, expire removes no pack at all (records and WAL still go);
//! - expire writes a marker of its own before it reads anything, and keeps every pack written at or after
//!   that marker (compared in the storage's clock), which covers a backup that starts while expire runs;
//!   the markers are read once more just before packs are deleted, and a backup found started by then
//!   stops the deletion.
//!
//! The race is closed by ordering: a backup's marker is durable before its first pack is written, so a
//! pack expire lists belongs to a backup whose marker was visible when expire looked, or that finished
//! (committed: its record is read after the markers; failed: what it stored is garbage, or kept by its
//! checkpoint), or was written after expire's own marker. A marker written on this host by a process
//! that no longer exists, or from another host and not refreshed for ten stall timeouts
//! (`pipeline.stall_timeout_secs`, at least 10 minutes), belongs to a backup that died without cleaning
//! up and is ignored and removed (see below). What remains possible is a backup that *starts* between the second
//! look at the markers and the last deletion and deduplicates a chunk into a pack being deleted: its
//! commit then finds the pack missing and refuses, so it fails and is taken again; no committed backup
//! ever lacks data. WAL pushes write no marker: their packs are protected by the grace period only.
//!
//! # Damaged records
//! A backup or WAL record that cannot be read (corrupt, failing its checksum) is kept, and named: it is
//! evidence, and may be repaired from another repository. Retention works on the readable records, but
//! while any record of any stanza is unreadable no pack is removed, with one warning saying why: the packs
//! a damaged record references cannot be known.
//!
//! # What crashes leave
//! Expire removes what dead processes left, and names each: the marker of a backup (or expire) written
//! on this host by a process that no longer exists (its pid proves it at once), or from another host and
//! not refreshed for ten stall timeouts (a marker of this host whose process exists stays: a stopped
//! backup may resume); and temporary files of writes killed midway (`.tmp-*` on POSIX, never
//! listed as objects) older than `--gc-grace-secs` and than expire's own marker, so that a write in
//! progress, whose file time keeps moving, is left alone. Temporary files stay while a backup runs.

use strata_command::format_bytes;
use strata_command::Context_;
use anyhow::{bail, Context};
use std::collections::{HashMap, HashSet};
use strata_messages::{hex, BackupRecord, BackupType, PackId};
use strata_pg::wal::{classify_wal_file, WalFileKind};
use strata_repo::annotations::{RunningEntry, RunningKind, RunningMarker, RUNNING_REFRESH};
use strata_repo::{DamagedRecord, Repo};
use tokio_util::sync::CancellationToken;

/// `--gc-grace-secs` when not given, and for the automatic expire after a backup.
pub const DEFAULT_GC_GRACE_SECS: u64 = 86_400;

pub struct ExpireOptions {
    pub retention_full: Option<u32>,
    pub dry_run: bool,
    pub gc_grace_secs: u64,
}

impl ExpireOptions {
    /// What `expire_auto` runs after a successful backup: the repository's retention, default grace.
    pub fn automatic() -> Self {
        ExpireOptions { retention_full: None, dry_run: false, gc_grace_secs: DEFAULT_GC_GRACE_SECS }
    }
}

/// Expires every configured repository in turn, each by its own retention (or only `ctx.repo` when
/// `only_this` is set, for `--repo`). With `auto_only`, only the repositories with `expire_auto`.
pub async fn run_all(ctx: &Context_, opts: &ExpireOptions, only_this: bool, auto_only: bool) -> anyhow::Result<()> {
    let names: Vec<String> = if only_this {
        vec![ctx.repo.name().to_string()]
    } else {
        ctx.cfg.repo.iter().filter(|r| !auto_only || r.expire_auto).map(|r| r.name.clone()).collect()
    };
    let several = names.len() > 1;
    for name in names {
        let repo = if name == ctx.repo.name() {
            ctx.repo.clone()
        } else {
            let rc = ctx.cfg.repo_named(&name).expect("names come from the config");
            strata_runtime::open_repo(&ctx.cfg, rc).await.with_context(|| format!("repository '{name}'"))?
        };
        if several {
            let rc = ctx.cfg.repo_named(&name).expect("names come from the config");
            let configured = rc.retention_full.is_some() || rc.retention_full_days.is_some() || rc.retention_diff.is_some();
            if !configured && opts.retention_full.is_none() {
                println!("repository '{name}': no retention is configured; nothing expired");
                continue;
            }
            println!("repository '{name}':");
        }
        let one = Context_ { cfg: ctx.cfg.clone(), config_path: ctx.config_path.clone(), stanza: ctx.stanza.clone(), repo };
        let expired = run(&one, opts).await;
        if several {
            expired.with_context(|| format!("repository '{name}'"))?;
        } else {
            expired?;
        }
    }
    Ok(())
}

/// Expires `ctx.repo` by its own `[[repo]]` retention.
pub async fn run(ctx: &Context_, opts: &ExpireOptions) -> anyhow::Result<()> {
    let repo_cfg = ctx.cfg.repo_named(ctx.repo.name()).unwrap_or(ctx.cfg.primary_repo());
    let retention = Retention {
        fulls: opts.retention_full.or(repo_cfg.retention_full).map(|n| n as usize),
        full_days: repo_cfg.retention_full_days,
        diffs: repo_cfg.retention_diff.map(|n| n as usize),
        min_age_days: repo_cfg.retention_min_age_days,
    };
    if retention.fulls.is_none() && retention.full_days.is_none() && retention.diffs.is_none() {
        bail!("no retention is configured: set retention_full, retention_full_days or retention_diff in the [[repo]] entry, or pass --retention-full");
    }
    if retention.fulls == Some(0) || retention.full_days == Some(0) || retention.diffs == Some(0) {
        bail!("retention_full, retention_full_days and retention_diff must be at least 1");
    }
    ctx.repo.stanza(&ctx.stanza).await?;
    let would = if opts.dry_run { "would " } else { "" };

    // Our own marker first: its time in the storage's clock is the horizon for packs (see the module docs).
    // A dry run writes nothing, and takes the local clock instead.
    let own = match opts.dry_run {
        true => None,
        false => Some(ExpireMarker::write(&ctx.repo, &ctx.stanza).await?),
    };
    let outcome = expire(ctx, opts, &retention, own.as_ref(), would).await;
    if let Some(own) = own {
        if let Err(e) = ctx.repo.delete_running(&ctx.stanza, &own.name).await {
            eprintln!("warning: could not remove expire's marker {}.running: {e}", own.name);
        }
    }
    outcome
}

async fn expire(ctx: &Context_, opts: &ExpireOptions, retention: &Retention, own: Option<&ExpireMarker>, would: &str) -> anyhow::Result<()> {
    let stale_secs = stale_after_secs(ctx.cfg.pipeline.stall_timeout_secs);
    let markers = ctx.repo.running().await?;
    let now = match own {
        Some(own) => markers.iter().find(|m| m.stanza == ctx.stanza && m.marker.label == own.name).map(|m| m.modified).with_context(|| {
            format!("expire's marker {}.running is not listed by the repository right after it was written", own.name)
        })?,
        None => strata_command::now(),
    };
    let dead = remove_dead_markers(ctx, &markers, now, stale_secs, own, opts.dry_run, would).await?;
    let running = fresh_backups(&markers, now, stale_secs, Some(&dead));

    // A record that cannot be read stays (it is evidence, and may be repaired from another repository),
    // and so does every pack, since nobody can say which packs it references.
    let (backups, damaged_backups) = ctx.repo.backups_checked(&ctx.stanza).await?;
    let (_, damaged_wal) = ctx.repo.wal_records_checked(&ctx.stanza).await?;
    let annotations: HashMap<String, strata_repo::annotations::Annotation> = ctx.repo.annotations(&ctx.stanza).await?.into_iter().collect();
    let pinned: HashSet<&str> = annotations.iter().filter(|(_, a)| a.pinned).map(|(l, _)| l.as_str()).collect();
    let plan = plan(&backups, retention, &pinned, strata_command::now());

    // WAL: what precedes the oldest kept backup's first segment, less the extra days (module docs).
    let kept: Vec<&BackupRecord> = plan.iter().filter(|p| p.expire.is_none()).map(|p| p.backup).collect();
    let wal = ctx.repo.wal_archived_times(&ctx.stanza).await?;
    let mut expired_wal = expired_wal(&wal, &kept, repo_extra_days(ctx));
    expired_wal.retain(|n| !damaged_wal.iter().any(|d| d.name == *n));

    for p in &plan {
        match (&p.expire, &p.kept_by) {
            (Some(why), _) => println!("{would}expire backup {} ({}): {why}", p.backup.summary.label, p.backup.summary.backup_type.as_str()),
            (None, Some(by)) => println!("keep backup {} ({}): {by}", p.backup.summary.label, p.backup.summary.backup_type.as_str()),
            (None, None) => {}
        }
    }
    for d in damaged_backups.iter().chain(&damaged_wal) {
        println!("keep {}: {}", d.path, d.reason);
    }
    for (first, last, count) in runs(&wal, &expired_wal) {
        println!("{would}expire WAL {first} ... {last} ({count} files)");
    }
    let expired: Vec<&BackupRecord> = plan.iter().filter(|p| p.expire.is_some()).map(|p| p.backup).collect();
    if !opts.dry_run {
        for b in &expired {
            ctx.repo.delete_backup(&ctx.stanza, &b.summary.label).await?;
            ctx.repo.delete_annotation(&ctx.stanza, &b.summary.label).await?;
            ctx.repo.delete_verify_result(&ctx.stanza, &b.summary.label).await?;
        }
        strata_crashpoint::hit("expire.after-records");
        for n in &expired_wal {
            ctx.repo.delete_wal(&ctx.stanza, n).await?;
        }
        strata_crashpoint::hit("expire.after-wal");
    }

    // Packs: referenced by the kept backups, checkpoints and WAL of every stanza. In a dry run, the records
    // about to be deleted still exist, so leave them out by hand.
    let expired_labels: HashSet<&str> = expired.iter().map(|b| b.summary.label.as_str()).collect();
    let sealer = ctx.repo.sealer();
    let mut referenced: HashSet<PackId> = HashSet::new();
    let mut unreadable: Vec<DamagedRecord> = damaged_backups.into_iter().chain(damaged_wal).collect();
    for stanza in ctx.repo.stanzas().await? {
        let mine = stanza == ctx.stanza;
        // What an interrupted backup stored is kept for the attempt that resumes it. Read before the
        // records: the commit of the resuming backup removes the checkpoint only after writing its record.
        for c in ctx.repo.checkpoints(&stanza).await? {
            let head = match ctx.repo.manifest_head(sealer, &c.label, c.head_len, &c.head_chunks).await {
                Ok(h) => h,
                Err(e) => {
                    eprintln!("warning: ignoring the checkpoint of interrupted backup {}: {e}", c.label);
                    continue;
                }
            };
            referenced.extend(c.head_chunks.iter().map(|c| c.pack));
            referenced.extend(head.packs());
        }
        let (records, damaged) = ctx.repo.backups_checked(&stanza).await?;
        unreadable.extend(damaged);
        for b in records {
            if mine && expired_labels.contains(b.summary.label.as_str()) {
                continue;
            }
            referenced.extend(ctx.repo.backup_packs(&b).await?);
        }
        let (records, damaged) = ctx.repo.wal_records_checked(&stanza).await?;
        unreadable.extend(damaged);
        for w in records {
            if mine && expired_wal.contains(&w.name) {
                continue;
            }
            referenced.extend(w.chunks.iter().map(|c| c.pack));
        }
        // A streamed partial is the newest WAL there is: its packs stay while it does.
        for name in ctx.repo.wal_streamed_names(&stanza).await? {
            match ctx.repo.wal_streamed(&stanza, &name).await {
                Ok(Some(w)) => referenced.extend(w.chunks.iter().map(|c| c.pack)),
                Ok(None) => {}
                Err(e) => unreadable.push(strata_repo::DamagedRecord {
                    path: format!("stanza/{stanza}/wal-stream/{name}"),
                    name,
                    reason: e.to_string(),
                }),
            }
        }
    }
    if running.is_empty() {
        remove_temporary(&ctx.repo, now, opts, own.is_some(), would).await?;
    }
    unreadable.sort_by(|a, b| a.path.cmp(&b.path));
    unreadable.dedup_by(|a, b| a.path == b.path);
    if let Some(first) = unreadable.first() {
        eprintln!(
            "warning: no pack is removed while {} records cannot be read (first: {first}): the packs they reference are unknown",
            unreadable.len()
        );
        return Ok(());
    }
    let mut unreferenced = Vec::new();
    let (mut young, mut new) = (0usize, 0usize);
    for (id, info) in ctx.repo.list_packs_detailed().await? {
        if referenced.contains(&id) {
            continue;
        }
        if info.modified >= now && own.is_some() {
            new += 1;
        } else if now - info.modified < opts.gc_grace_secs as i64 {
            young += 1;
        } else {
            unreferenced.push((id, info.size));
        }
    }
    // A backup that started since the first look (and so may deduplicate into these packs) stops the removal.
    let mut running = running;
    if !opts.dry_run && running.is_empty() && !unreferenced.is_empty() {
        running = fresh_backups(&ctx.repo.running().await?, now, stale_secs, None);
    }
    if let Some(r) = running.first() {
        println!(
            "{} unreferenced packs ({}) stay while backup {} of stanza '{}' is running (marker written by {} pid {}); a later expire removes them",
            unreferenced.len(),
            format_bytes(unreferenced.iter().map(|(_, s)| s).sum()),
            r.marker.label,
            r.stanza,
            r.marker.host,
            r.marker.pid
        );
        return Ok(());
    }
    let mut removed_bytes = 0u64;
    for (id, size) in &unreferenced {
        println!("{would}remove pack {} ({})", hex(id), format_bytes(*size));
        if !opts.dry_run {
            ctx.repo.delete_pack(id).await?;
            strata_crashpoint::hit("expire.after-pack");
        }
        removed_bytes += size;
    }
    let mut stays = Vec::new();
    if young > 0 {
        stays.push(format!("{young} unreferenced packs are younger than the grace period and stay"));
    }
    if new > 0 {
        stays.push(format!("{new} packs written since this expire started stay"));
    }
    println!(
        "{would}remove {} unreferenced packs ({}){}",
        unreferenced.len(),
        format_bytes(removed_bytes),
        if stays.is_empty() { String::new() } else { format!("; {}", stays.join("; ")) }
    );
    Ok(())
}

fn repo_extra_days(ctx: &Context_) -> Option<u32> {
    ctx.cfg.repo_named(ctx.repo.name()).unwrap_or(ctx.cfg.primary_repo()).retention_archive_extra_days
}

/// Seconds after its last refresh at which a running marker is taken for a dead backup's.
fn stale_after_secs(stall_timeout_secs: u64) -> i64 {
    (stall_timeout_secs.saturating_mul(10)).max(600) as i64
}

/// Fresh markers of running backups (any stanza), oldest first. Stale ones are left out, with a warning
/// when `removed` is given and does not hold them (a stale marker whose process still exists).
fn fresh_backups(markers: &[RunningEntry], now: i64, stale_secs: i64, removed: Option<&HashSet<(String, String)>>) -> Vec<RunningEntry> {
    let mut out: Vec<RunningEntry> = Vec::new();
    for m in markers.iter().filter(|m| m.marker.kind == RunningKind::Backup) {
        if removed.is_some_and(|r| r.contains(&(m.stanza.clone(), m.name.clone()))) {
            continue;
        }
        if now - m.modified > stale_secs {
            if removed.is_some_and(|r| !r.contains(&(m.stanza.clone(), m.name.clone()))) {
                eprintln!(
                    "warning: ignoring the marker of backup {} of stanza '{}' ({} pid {}): not refreshed for {} s, so that backup is no longer running",
                    m.marker.label,
                    m.stanza,
                    m.marker.host,
                    m.marker.pid,
                    now - m.modified
                );
            }
            continue;
        }
        out.push(m.clone());
    }
    out.sort_by_key(|m| m.modified);
    out
}

/// Removes the markers of operations that died (module docs): written on this host by a process that no
/// longer exists (a killed backup's, at once: its pid proves it), or, from another host, not refreshed
/// for `stale_secs`. A marker of this host whose process exists stays however old (a paused backup may
/// resume; a pid reused by another process errs on the safe side). Names each; returns them (stanza, name).
async fn remove_dead_markers(
    ctx: &Context_,
    markers: &[RunningEntry],
    now: i64,
    stale_secs: i64,
    own: Option<&ExpireMarker>,
    dry_run: bool,
    would: &str,
) -> anyhow::Result<HashSet<(String, String)>> {
    let host = strata_stamp::host_name();
    let mut out = HashSet::new();
    for m in markers {
        let age = now - m.modified;
        let mine = own.is_some_and(|o| m.stanza == ctx.stanza && m.name == o.name);
        let dead = match m.marker.host == host {
            true => !process_exists(m.marker.pid),
            false => age > stale_secs,
        };
        if mine || !dead {
            continue;
        }
        let kind = match m.marker.kind {
            RunningKind::Backup => "backup",
            RunningKind::Expire => "expire",
        };
        let why = match m.marker.host == host {
            true => "that process is gone".to_string(),
            false => format!("not refreshed for {}", strata_verify::health::age(age)),
        };
        println!(
            "{would}remove the marker of {kind} {} of stanza '{}' ({} pid {}): {why}, so it is no longer running",
            m.name, m.stanza, m.marker.host, m.marker.pid
        );
        if !dry_run {
            ctx.repo.delete_running(&m.stanza, &m.name).await?;
        }
        out.insert((m.stanza.clone(), m.name.clone()));
    }
    Ok(out)
}

/// Whether a process of this host has this pid (unknown pids, 0, count as gone).
fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else { return false };
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    pid > 0 && (unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

/// Removes temporary files that writes killed midway left (a push or a replicator killed between its
/// temporary file and the rename): those older than the grace period and, when this run wrote a marker,
/// than the marker (a write in progress keeps its file's time fresh).
async fn remove_temporary(repo: &Repo, now: i64, opts: &ExpireOptions, after_own: bool, would: &str) -> anyhow::Result<()> {
    for t in repo.temporary_files().await? {
        let age = now - t.modified;
        if (after_own && t.modified >= now) || age < opts.gc_grace_secs as i64 {
            continue;
        }
        println!("{would}remove temporary file {} ({}, written {} ago)", t.path, format_bytes(t.size), strata_verify::health::age(age));
        if !opts.dry_run {
            repo.delete_temporary(&t.path).await?;
        }
    }
    Ok(())
}

/// The marker of this expire run.
struct ExpireMarker {
    name: String,
}

impl ExpireMarker {
    async fn write(repo: &Repo, stanza: &str) -> anyhow::Result<Self> {
        let name = format!("expire-{}-{}", strata_command::now(), std::process::id());
        let marker = RunningMarker { kind: RunningKind::Expire, label: name.clone(), start_time: strata_command::now(), host: strata_stamp::host_name().to_string(), pid: std::process::id() };
        repo.put_running(stanza, &marker).await.context("cannot write expire's marker")?;
        Ok(ExpireMarker { name })
    }
}

/// A backup in progress, as `expire` sees it: a marker in the repository, refreshed until [`RunningBackup::end`].
pub struct RunningBackup {
    repo: Repo,
    stanza: String,
    label: String,
    stop: CancellationToken,
    refresher: tokio::task::JoinHandle<()>,
}

impl RunningBackup {
    /// Writes the marker; returns once it is durable, so that it precedes every pack of the backup.
    pub async fn begin(ctx: &Context_, label: &str) -> anyhow::Result<Self> {
        let marker =
            RunningMarker { kind: RunningKind::Backup, label: label.to_string(), start_time: strata_command::now(), host: strata_stamp::host_name().to_string(), pid: std::process::id() };
        ctx.repo.put_running(&ctx.stanza, &marker).await.context("cannot record in the repository that a backup is running")?;
        let stop = CancellationToken::new();
        let (repo, stanza, token) = (ctx.repo.clone(), ctx.stanza.clone(), stop.clone());
        let refresher = tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = token.cancelled() => return,
                    _ = tokio::time::sleep(RUNNING_REFRESH) => {}
                }
                // Not cancelled midway (see `end`): a put completing after the delete would revive the marker.
                if let Err(e) = repo.put_running(&stanza, &marker).await {
                    eprintln!("warning: could not refresh the running marker of backup {}: {e}", marker.label);
                }
            }
        });
        Ok(RunningBackup { repo: ctx.repo.clone(), stanza: ctx.stanza.clone(), label: label.to_string(), stop, refresher })
    }

    /// Stops refreshing and deletes the marker (after a commit or a failure alike).
    pub async fn end(self) {
        self.stop.cancel();
        let _ = self.refresher.await;
        if let Err(e) = self.repo.delete_running(&self.stanza, &self.label).await {
            eprintln!("warning: could not remove the running marker of backup {}: {e} (expire ignores it once it is stale)", self.label);
        }
    }
}


mod retention;
use retention::{expired_wal, plan, runs, Retention};
#[cfg(test)]
use retention::DAY;

#[cfg(test)]
mod tests;
