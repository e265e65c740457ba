//! `restore`: rebuilds a data directory from a backup, ready for PostgreSQL to recover from the archive to
//! the requested target.
//!
//! Nothing is written until everything that can be checked has been: the options, the backup (the newest
//! that can reach the target, see [`crate::target`]), that the archive holds the WAL recovery will read,
//! and that the target directory is empty (or, with `--delta`, a stopped data directory). Files are then
//! rebuilt by a pool of workers that read, check (every chunk against its content address) and write
//! chunks; each file gets its mode, owner (when run as root) and mtime, and is fsynced, as are the
//! directories, before the command reports success. Last come backup_label, tablespace_map, the signal
//! file (`recovery.signal`, or `standby.signal` for a replica) and the recovery settings in
//! postgresql.auto.conf: a `restore_command` calling `strata archive-get`, the target, and for a replica
//! the stanza's connection string as `primary_conninfo`, as `pg_basebackup -R` writes it. Recovery
//! settings a previous restore left in postgresql.auto.conf (the backup may be of a restored cluster) are
//! commented out, so that only this restore's apply.

use strata_command::format_bytes;
use crate::target::{self, Recovery, RecoveryArgs, Target};
use crate::wal_archive::WalArchive;
use strata_command::{progress, Context_};
use anyhow::{anyhow, bail, Context};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use strata_messages::{hex, FileEntry, FileKind, Manifest};
use strata_directio::{AlignedBuf, OutFile};
use tokio::task::JoinSet;

/// Units restored at once; each worker holds one sealed chunk, one unsealed chunk and one unit's bytes.
const RESTORE_WORKERS: usize = 4;
/// Bytes per unit of restore work (a unit may run over by one piece).
const UNIT_BYTES: u64 = 8 * 1024 * 1024;

/// A range of one file's pieces, restored by one worker.
struct Unit {
    file: usize,
    first: usize,
    count: usize,
    /// Where the range starts in the file.
    offset: u64,
}

/// Segments `archive-get` fetches ahead of recovery unless `--wal-prefetch` says otherwise.
pub const DEFAULT_WAL_PREFETCH: usize = 8;

pub struct RestoreOptions<'a> {
    pub pg_data: &'a Path,
    pub set: Option<&'a str>,
    pub tablespace_map: &'a [String],
    pub recovery: RecoveryArgs<'a>,
    pub delta: bool,
    pub wal_prefetch: usize,
}

/// What a restore did: the line `restore` prints, and what the restore test records.
pub struct Restored {
    pub record: strata_messages::BackupRecord,
    /// The target timeline's history recovery follows.
    pub history: strata_pg::timeline::TimelineHistory,
    pub files: usize,
    /// Bytes of the backup's files (for a delta restore: bytes written).
    pub bytes: u64,
    pub message: String,
}

pub async fn run(ctx: &Context_, opts: &RestoreOptions<'_>) -> anyhow::Result<()> {
    let restored = restore(ctx, opts, None).await?;
    println!("{}", restored.message);
    Ok(())
}

/// The restore itself, printing nothing. `tablespace_root`: every tablespace the map does not name goes
/// to `<tablespace_root>/<oid>` instead of its original location (the restore test's scratch directory).
pub async fn restore(ctx: &Context_, opts: &RestoreOptions<'_>, tablespace_root: Option<&Path>) -> anyhow::Result<Restored> {
    let pg_data = opts.pg_data;
    let recovery = Recovery::parse(&opts.recovery)?;
    let mut remap = parse_tablespace_map(opts.tablespace_map)?;
    let delta = opts.delta && super::delta::is_data_directory(pg_data)?;
    if !delta {
        check_empty(pg_data)?;
    }
    let stanza = ctx.repo.stanza(&ctx.stanza).await?;
    if delta {
        super::delta::check_cluster(pg_data, &stanza)?;
    }
    let backups = ctx.repo.backups(&ctx.stanza).await?;
    // A backup asked for by name whose record is damaged: say so, rather than that it does not exist.
    if let Some(label) = opts.set.filter(|l| !backups.iter().any(|b| b.summary.label == *l)) {
        if let Err(e @ strata_repo::RepoError::CorruptObject { .. }) = ctx.repo.backup(&ctx.stanza, label).await {
            return Err(e.into());
        }
    }
    let mut archive = WalArchive::load(&ctx.repo, &ctx.stanza, stanza.wal_segment_size).await?;
    let plan = target::plan(&mut archive, backups, opts.set, &recovery, &ctx.stanza).await?;
    let record = plan.record;
    let primary_conninfo = match recovery.target {
        Target::Standby => Some(ctx.cfg.stanza(&ctx.stanza)?.pg_conn.clone()),
        _ => None,
    };
    let sealer = ctx.repo.sealer().clone();
    let manifest = ctx.repo.manifest(&sealer, &record).await?;
    let major = strata_pg::version::major_from_version_num(manifest.head.summary.pg_version_num);
    if major != stanza.pg_major || manifest.head.summary.system_id != stanza.system_id {
        bail!(
            "backup {} is of PostgreSQL {major} system {}, but stanza '{}' is PostgreSQL {} system {}; refusing to mix them",
            record.summary.label,
            manifest.head.summary.system_id,
            ctx.stanza,
            stanza.pg_major,
            stanza.system_id
        );
    }
    if let Some(root) = tablespace_root {
        for t in &manifest.head.tablespaces {
            remap.entry(t.oid).or_insert_with(|| root.join(t.oid.to_string()));
        }
    }
    let tablespace_dirs = plan_tablespaces(&manifest, &remap, delta)?;
    let settings =
        RecoverySettings { recovery: &recovery, primary_conninfo: primary_conninfo.as_deref(), prefetch: opts.wal_prefetch };

    if delta {
        let report = super::delta::run(ctx, pg_data, &manifest, &tablespace_dirs, &sealer).await?;
        let root = fs::canonicalize(pg_data)?;
        write_recovery_files(ctx, &root, &manifest, &tablespace_dirs, &settings)?;
        File::open(&root).and_then(|d| d.sync_all()).with_context(|| format!("cannot sync {}", root.display()))?;
        let message = format!(
            "delta-restored backup {} into {} ({} files, {}): read {} locally, fetched {}, wrote {} and changed {} files, removed {} files; {}",
            record.summary.label,
            root.display(),
            report.files,
            format_bytes(report.total),
            format_bytes(report.read),
            format_bytes(report.fetched),
            format_bytes(report.written),
            report.rewritten,
            report.removed,
            plan.describe
        );
        return Ok(Restored { record, history: plan.history, files: report.files, bytes: report.written, message });
    }

    fs::create_dir_all(pg_data).with_context(|| format!("cannot create {}", pg_data.display()))?;
    fs::set_permissions(pg_data, fs::Permissions::from_mode(0o700))?;
    let root = fs::canonicalize(pg_data)?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let as_root = unsafe { libc::geteuid() } == 0;
    // The data directory itself belongs to whoever owns its files (PostgreSQL refuses any other owner).
    if let Some(owner) = manifest.files.iter().find(|f| f.path == "PG_VERSION") {
        chown(&root, owner, as_root)?;
    }

    // Directories and links first, parents before children (a path sorts after its prefix).
    let mut dirs = vec![root.clone()];
    let mut tree: Vec<&FileEntry> = manifest.files.iter().filter(|e| e.kind != FileKind::File).collect();
    tree.sort_by(|a, b| a.path.cmp(&b.path));
    for e in tree {
        let path = root.join(&e.path);
        match e.kind {
            FileKind::Directory => {
                fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
                fs::set_permissions(&path, fs::Permissions::from_mode(e.mode))?;
                dirs.push(path.clone());
            }
            FileKind::Symlink => {
                let target = tablespace_dirs.get(&e.path).cloned().unwrap_or_else(|| PathBuf::from(&e.link_target));
                if tablespace_dirs.contains_key(&e.path) {
                    fs::create_dir_all(&target).with_context(|| format!("cannot create tablespace directory {}", target.display()))?;
                    fs::set_permissions(&target, fs::Permissions::from_mode(0o700))?;
                    chown(&target, e, as_root)?;
                    dirs.push(target.clone());
                }
                symlink(&target, &path).with_context(|| format!("cannot create link {}", path.display()))?;
            }
            FileKind::File => continue,
        }
        chown(&path, e, as_root)?;
    }

    let files: Vec<FileEntry> = manifest.files.iter().filter(|e| e.kind == FileKind::File).cloned().collect();
    let total: u64 = files.iter().map(|f| f.size).sum();
    let bar = progress::bytes_bar(&format!("restore {}", record.summary.label));
    bar.set_length(total);

    // Work is cut into units of about UNIT_BYTES, not whole files, so one 1 GB relation segment is restored
    // by every worker at once instead of being the critical path of one. A unit creates its file if no
    // other unit did yet (the workers, not this thread, so creating many small files is parallel too; the
    // target was checked empty), assembles its range in an aligned buffer and writes it in place with one
    // direct write (see [`strata_directio`]); whoever finishes a file's last unit sets its metadata and
    // fsyncs it. An empty file is one unit of no pieces.
    let mut units = Vec::new();
    let mut remaining = Vec::with_capacity(files.len());
    for (i, e) in files.iter().enumerate() {
        if e.pieces.is_empty() {
            units.push(Unit { file: i, first: 0, count: 0, offset: 0 });
            remaining.push(AtomicUsize::new(1));
            continue;
        }
        let (mut offset, mut n, mut first, mut bytes) = (0u64, 0, 0, 0u64);
        for (k, piece) in e.pieces.iter().enumerate() {
            bytes += piece.len as u64;
            if bytes >= UNIT_BYTES || k + 1 == e.pieces.len() {
                units.push(Unit { file: i, first, count: k + 1 - first, offset });
                offset += bytes;
                (first, bytes, n) = (k + 1, 0, n + 1);
            }
        }
        remaining.push(AtomicUsize::new(n));
    }
    let files = Arc::new(files);
    let chunks = Arc::new(manifest.head.chunks.clone());
    let units = Arc::new(units);
    let remaining = Arc::new(remaining);
    // Each worker unseals into an aligned chunk buffer, large enough for any chunk, and assembles units in
    // an aligned buffer large enough for any unit.
    let chunk_len = chunks.iter().map(|c| c.raw_len as usize).max().unwrap_or(0);
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = JoinSet::new();
    for _ in 0..RESTORE_WORKERS {
        let (files, units, remaining, next, chunks) = (files.clone(), units.clone(), remaining.clone(), next.clone(), chunks.clone());
        let (repo, root, bar, sealer) = (ctx.repo.clone(), root.clone(), bar.clone(), sealer.clone());
        workers.spawn(async move {
            let mut plain = AlignedBuf::new(chunk_len);
            let mut staged = AlignedBuf::new(UNIT_BYTES as usize + chunk_len);
            // Whose content `plain` holds.
            let mut cached: Option<[u8; 32]> = None;
            loop {
                let Some(unit) = units.get(next.fetch_add(1, Ordering::Relaxed)) else {
                    return Ok::<(), anyhow::Error>(());
                };
                let e = &files[unit.file];
                let path = root.join(&e.path);
                let unit_len: u64 = e.pieces[unit.first..unit.first + unit.count].iter().map(|p| p.len as u64).sum();
                // An incremental's file alternates between pieces of its reference's chunks and of its own
                // (one changed page here, the unchanged rest of the reference's chunk there): fetching
                // per piece would decompress a whole chunk for every 8 KiB page. So each chunk the unit
                // uses is fetched and unsealed once, and all its pieces copied from it.
                for run in group_by_chunk(&e.pieces[unit.first..unit.first + unit.count], unit.offset) {
                    let bytes: u64 = run.writes.iter().map(|w| w.len as u64).sum();
                    if run.chunk == strata_messages::ZERO_CHUNK {
                        for w in &run.writes {
                            let at = (w.at - unit.offset) as usize;
                            staged[at..at + w.len].fill(0);
                        }
                        bar.inc(bytes);
                        continue;
                    }
                    let r = *chunks.get(run.chunk as usize).ok_or_else(|| {
                        anyhow!("restoring {}: a piece points at chunk {} of a {}-chunk table", e.path, run.chunk, chunks.len())
                    })?;
                    if run.writes.iter().any(|w| w.from + w.len > r.raw_len as usize) {
                        bail!("restoring {}: a piece runs past the end of chunk {}", e.path, hex(&r.id));
                    }
                    // A whole chunk (every piece of a full backup's relation file) is unsealed straight
                    // into place.
                    let whole = matches!(run.writes[..], [Write_ { from: 0, len, .. }] if len == r.raw_len as usize);
                    let sealed = match cached == Some(r.id) && !whole {
                        true => None,
                        false => Some(repo.read_sealed(&r).await.with_context(|| format!("restoring {}", e.path))?),
                    };
                    // Decompressing and hashing are blocking work: keep them off the runtime's threads, and
                    // move the worker's buffers in and out so they are allocated once.
                    let (sealer, rel, unit_at) = (sealer.clone(), e.path.clone(), unit.offset);
                    (plain, staged) = tokio::task::spawn_blocking(move || -> anyhow::Result<(AlignedBuf, AlignedBuf)> {
                        let (mut plain, mut staged) = (plain, staged);
                        let unseal = |sealed: &[u8], out: &mut [u8]| {
                            sealer.unseal_into_slice(sealed, &r.id, out).map_err(|source| {
                                anyhow!("restoring {rel}: chunk {} (pack {}): {source}", hex(&r.id), hex(&r.pack))
                            })
                        };
                        if whole {
                            let at = (run.writes[0].at - unit_at) as usize;
                            unseal(&sealed.expect("fetched"), &mut staged[at..])?;
                            return Ok((plain, staged));
                        }
                        if let Some(sealed) = sealed {
                            unseal(&sealed, &mut plain)?;
                        }
                        for w in &run.writes {
                            let at = (w.at - unit_at) as usize;
                            staged[at..at + w.len].copy_from_slice(&plain[w.from..w.from + w.len]);
                        }
                        Ok((plain, staged))
                    })
                    .await
                    .map_err(|join| anyhow!("restoring {}: {join}", e.path))??;
                    if !whole {
                        cached = Some(r.id);
                    }
                    bar.inc(bytes);
                }
                let (e_c, path_c, remaining, file_no, at) = (e.clone(), path.clone(), remaining.clone(), unit.file, unit.offset);
                staged = tokio::task::spawn_blocking(move || -> anyhow::Result<AlignedBuf> {
                    let mut f = OutFile::open_shared(&path_c, e_c.size)
                        .with_context(|| format!("cannot create {}", path_c.display()))?;
                    f.write_at(&staged[..unit_len as usize], at).with_context(|| format!("cannot write {}", path_c.display()))?;
                    if remaining[file_no].fetch_sub(1, Ordering::AcqRel) == 1 {
                        finish_file(f.into_file(), &path_c, &e_c, as_root)?;
                    }
                    Ok(staged)
                })
                .await
                .map_err(|join| anyhow!("writing {}: {join}", e.path))??;
            }
        });
    }
    join_workers(workers).await?;
    bar.finish_and_clear();

    write_recovery_files(ctx, &root, &manifest, &tablespace_dirs, &settings)?;
    for d in &dirs {
        File::open(d).and_then(|d| d.sync_all()).with_context(|| format!("cannot sync {}", d.display()))?;
    }
    let message = format!(
        "restored backup {} into {} ({} files, {}); start PostgreSQL to recover: {}",
        record.summary.label,
        root.display(),
        files.len(),
        format_bytes(total),
        plan.describe
    );
    Ok(Restored { record, history: plan.history, files: files.len(), bytes: total, message })
}

/// Waits for every worker of a pool; on the first failure the others are aborted and awaited too, so that
/// none is still running (and none finds its blocking task cancelled by the runtime's shutdown) when the
/// error is returned. A worker that panicked is an error like any other.
pub(super) async fn join_workers(mut workers: JoinSet<anyhow::Result<()>>) -> anyhow::Result<()> {
    let mut failure = None;
    while let Some(joined) = workers.join_next().await {
        let err = match joined {
            Ok(Ok(())) => continue,
            Ok(Err(e)) => e,
            // Only this function aborts, after the first failure, whose error is the one returned.
            Err(e) if e.is_cancelled() => continue,
            Err(e) => anyhow!("a restore worker failed: {e}"),
        };
        if failure.is_none() {
            failure = Some(err);
            workers.abort_all();
        }
    }
    failure.map_or(Ok(()), Err)
}

/// One contiguous write: `len` bytes from offset `from` of a chunk, to offset `at` of the file.
#[derive(Debug, PartialEq)]
struct Write_ {
    from: usize,
    at: u64,
    len: usize,
}

/// Everything a unit writes from one chunk (or, for [`strata_messages::ZERO_CHUNK`], as zeros).
#[derive(Debug, PartialEq)]
struct ChunkRun {
    chunk: u32,
    writes: Vec<Write_>,
}

/// The pieces of a file range starting at `offset`, grouped by chunk in order of first use, with pieces
/// that follow each other in both the chunk and the file merged into one write.
fn group_by_chunk(pieces: &[strata_messages::Piece], mut offset: u64) -> Vec<ChunkRun> {
    let mut runs: Vec<ChunkRun> = Vec::new();
    let mut index: HashMap<u32, usize> = HashMap::new();
    for p in pieces {
        let i = *index.entry(p.chunk).or_insert_with(|| {
            runs.push(ChunkRun { chunk: p.chunk, writes: Vec::new() });
            runs.len() - 1
        });
        let writes = &mut runs[i].writes;
        match writes.last_mut() {
            Some(w) if w.at + w.len as u64 == offset && (p.is_zero() || w.from + w.len == p.offset as usize) => {
                w.len += p.len as usize
            }
            _ => writes.push(Write_ { from: p.offset as usize, at: offset, len: p.len as usize }),
        }
        offset += p.len as u64;
    }
    runs
}

pub(super) fn check_empty(dir: &Path) -> anyhow::Result<()> {
    match fs::read_dir(dir) {
        Ok(mut entries) => {
            if entries.next().is_some() {
                bail!("{} is not empty; restore writes only into an empty or missing directory", dir.display());
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(anyhow!("cannot read {}: {e}", dir.display())),
    }
}

fn parse_tablespace_map(args: &[String]) -> anyhow::Result<HashMap<u32, PathBuf>> {
    args.iter()
        .map(|a| {
            let (oid, dir) = a.split_once('=').ok_or_else(|| anyhow!("--tablespace-map {a}: expected OID=DIR"))?;
            let oid = oid.parse().map_err(|_| anyhow!("--tablespace-map {a}: {oid} is not a tablespace OID"))?;
            Ok((oid, PathBuf::from(dir)))
        })
        .collect()
}

/// Where each tablespace goes: its mapped directory, or its original location, which must be empty (unless
/// a delta restore rewrites it).
fn plan_tablespaces(
    manifest: &Manifest,
    remap: &HashMap<u32, PathBuf>,
    delta: bool,
) -> anyhow::Result<HashMap<String, PathBuf>> {
    let mut out = HashMap::new();
    for t in &manifest.head.tablespaces {
        let dir = remap.get(&t.oid).cloned().unwrap_or_else(|| PathBuf::from(&t.location));
        if !delta {
            check_empty(&dir)
                .map_err(|e| anyhow!("tablespace {}: {e} (map it elsewhere with --tablespace-map {}=DIR)", t.oid, t.oid))?;
        }
        out.insert(format!("pg_tblspc/{}", t.oid), dir);
    }
    for oid in remap.keys() {
        if !manifest.head.tablespaces.iter().any(|t| t.oid == *oid) {
            bail!("--tablespace-map: the backup has no tablespace {oid}");
        }
    }
    Ok(out)
}

pub(super) fn chown(path: &Path, e: &FileEntry, as_root: bool) -> anyhow::Result<()> {
    if as_root {
        std::os::unix::fs::lchown(path, Some(e.uid), Some(e.gid))
            .with_context(|| format!("cannot set the owner of {}", path.display()))?;
    }
    Ok(())
}

pub(super) fn finish_file(f: File, path: &Path, e: &FileEntry, as_root: bool) -> anyhow::Result<()> {
    f.set_permissions(fs::Permissions::from_mode(e.mode)).with_context(|| format!("cannot chmod {}", path.display()))?;
    f.set_modified(UNIX_EPOCH + Duration::from_secs(e.mtime.max(0) as u64))
        .with_context(|| format!("cannot set the mtime of {}", path.display()))?;
    f.sync_all().with_context(|| format!("cannot sync {}", path.display()))?;
    chown(path, e, as_root)
}

/// What postgresql.auto.conf gets besides the restore_command.
struct RecoverySettings<'a> {
    recovery: &'a Recovery,
    /// For a replica: how it reaches the primary.
    primary_conninfo: Option<&'a str>,
    /// `archive-get --prefetch`.
    prefetch: usize,
}

/// Settings a restore manages; earlier values of them in postgresql.auto.conf are commented out.
fn is_managed_setting(name: &str, standby: bool) -> bool {
    let name = name.to_ascii_lowercase();
    name == "restore_command" || name.starts_with("recovery_target") || (standby && name == "primary_conninfo")
}

/// postgresql.auto.conf with earlier recovery settings commented out and this restore's appended.
fn recovery_conf(existing: &str, label: &str, restore_command: &str, settings: &RecoverySettings<'_>) -> String {
    let standby = settings.primary_conninfo.is_some();
    let mut conf = String::new();
    for line in existing.lines() {
        let name = line.split('=').next().unwrap_or("").trim();
        if !line.trim_start().starts_with('#') && line.contains('=') && is_managed_setting(name, standby) {
            conf.push_str(&format!("# superseded by strata restore of backup {label}: {line}\n"));
        } else {
            conf.push_str(line);
            conf.push('\n');
        }
    }
    let quote = |v: &str| format!("'{}'", v.replace('\\', "\\\\").replace('\'', "''"));
    conf.push_str(&format!("# added by strata restore of backup {label}\nrestore_command = {}\n", quote(restore_command)));
    for (name, value) in settings.recovery.settings() {
        conf.push_str(&format!("{name} = {}\n", quote(&value)));
    }
    if let Some(c) = settings.primary_conninfo {
        conf.push_str(&format!("primary_conninfo = {}\n", quote(c)));
    }
    conf
}

/// backup_label, tablespace_map, the signal file and the recovery settings.
fn write_recovery_files(
    ctx: &Context_,
    root: &Path,
    manifest: &Manifest,
    tablespace_dirs: &HashMap<String, PathBuf>,
    settings: &RecoverySettings<'_>,
) -> anyhow::Result<()> {
    let owner = manifest.files.iter().find(|f| f.path == "PG_VERSION");
    let write = |name: &str, contents: &str| -> anyhow::Result<()> {
        let path = root.join(name);
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).open(&path)
            .with_context(|| format!("cannot write {}", path.display()))?;
        f.write_all(contents.as_bytes())?;
        f.set_permissions(fs::Permissions::from_mode(0o600))?;
        f.sync_all()?;
        if let Some(o) = owner {
            chown(&path, o, unsafe { libc::geteuid() } == 0)?;
        }
        Ok(())
    };
    write("backup_label", &manifest.head.backup_label)?;
    if !manifest.head.tablespace_map.is_empty() {
        // PostgreSQL recreates the links from this file; point them where the tablespaces were restored.
        let mut map = String::new();
        for line in manifest.head.tablespace_map.lines() {
            let (oid, _) = line.split_once(' ').unwrap_or((line, ""));
            match tablespace_dirs.get(&format!("pg_tblspc/{oid}")) {
                Some(dir) => map.push_str(&format!("{oid} {}\n", dir.display())),
                None => map.push_str(&format!("{line}\n")),
            }
        }
        write("tablespace_map", &map)?;
        // PostgreSQL replaces the links in pg_tblspc from this file when recovery starts; the links made
        // above already point to the same places.
    }
    // Exactly one signal file: a delta restore may find the other one left by an earlier restore.
    let (signal, other) = match settings.primary_conninfo {
        Some(_) => ("standby.signal", "recovery.signal"),
        None => ("recovery.signal", "standby.signal"),
    };
    match fs::remove_file(root.join(other)) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(anyhow!("cannot remove {}: {e}", root.join(other).display())),
    }
    write(signal, "")?;
    let exe = strata_command::strata_executable().context("cannot find the strata executable for restore_command")?;
    let prefetch = if settings.prefetch > 0 { format!(" --prefetch {}", settings.prefetch) } else { String::new() };
    let command = format!(
        "{} --config {} --stanza {}{} archive-get{prefetch} %f \"%p\"",
        exe.display(),
        ctx.config_path.display(),
        ctx.stanza,
        ctx.repo_option().map(|a| format!(" {}", strata_command::shell_quote(&a))).unwrap_or_default()
    );
    let auto = root.join("postgresql.auto.conf");
    let existing = fs::read_to_string(&auto).unwrap_or_default();
    write("postgresql.auto.conf", &recovery_conf(&existing, &manifest.head.summary.label, &command, settings))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::target::TargetAction;
    use strata_command::RecoveryType;

    #[tokio::test]
    async fn a_failed_worker_stops_the_others_and_a_panicked_one_is_an_error() {
        // A worker that never ends unless aborted: join_workers returns only because it aborts it.
        let mut workers = JoinSet::new();
        workers.spawn(std::future::pending::<anyhow::Result<()>>());
        workers.spawn(async { Err(anyhow!("chunk damaged")) });
        assert_eq!(join_workers(workers).await.unwrap_err().to_string(), "chunk damaged");
        let mut workers = JoinSet::new();
        workers.spawn(async { panic!("a bug in a worker") });
        workers.spawn(async { Ok(()) });
        let e = join_workers(workers).await.unwrap_err().to_string();
        assert!(e.contains("panicked"), "{e}");
    }

    #[test]
    fn pieces_are_grouped_by_chunk_and_merged() {
        use strata_messages::{Piece, ZERO_CHUNK};
        let p = |chunk, offset, len| Piece { chunk, offset, len };
        // A reference chunk 0 with pages 1 and 3 replaced from chunk 1, then a zero page.
        let pieces = [p(0, 0, 8), p(1, 0, 8), p(0, 16, 8), p(1, 8, 8), p(ZERO_CHUNK, 0, 8), p(ZERO_CHUNK, 0, 8)];
        let w = |from, at, len| Write_ { from, at, len };
        assert_eq!(
            group_by_chunk(&pieces, 100),
            vec![
                ChunkRun { chunk: 0, writes: vec![w(0, 100, 8), w(16, 116, 8)] },
                ChunkRun { chunk: 1, writes: vec![w(0, 108, 8), w(8, 124, 8)] },
                ChunkRun { chunk: ZERO_CHUNK, writes: vec![w(0, 132, 16)] },
            ]
        );
    }

    #[test]
    fn earlier_recovery_settings_are_superseded() {
        let recovery = Recovery::parse(&RecoveryArgs {
            kind: RecoveryType::Name,
            target: Some("it's"),
            action: Some(TargetAction::Pause),
            timeline: None,
            exclusive: false,
        })
        .unwrap();
        let settings = RecoverySettings { recovery: &recovery, primary_conninfo: None, prefetch: 0 };
        let existing = "# Do not edit this file manually!\nwork_mem = '8MB'\nrestore_command = 'old'\n  Recovery_Target_Time = '2020-01-01'\n# recovery_target_xid = '5'\nprimary_conninfo = 'host=x'\n";
        let conf = recovery_conf(existing, "L", "strata archive-get %f \"%p\"", &settings);
        assert_eq!(
            conf,
            "# Do not edit this file manually!\nwork_mem = '8MB'\n\
             # superseded by strata restore of backup L: restore_command = 'old'\n\
             # superseded by strata restore of backup L:   Recovery_Target_Time = '2020-01-01'\n\
             # recovery_target_xid = '5'\nprimary_conninfo = 'host=x'\n\
             # added by strata restore of backup L\nrestore_command = 'strata archive-get %f \"%p\"'\n\
             recovery_target_name = 'it''s'\nrecovery_target_action = 'pause'\n"
        );
    }
}
