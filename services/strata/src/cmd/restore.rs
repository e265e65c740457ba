//! `restore`: rebuilds a data directory from a backup, ready for PostgreSQL to recover from the archive.
//!
//! The target must be empty (or absent): restore never mixes its files with someone else's. Files are
//! rebuilt by a pool of workers that read, check (every chunk against its content address) and write
//! chunks; each file gets its mode, owner (when run as root) and mtime, and is fsynced, as are the
//! directories, before the command reports success. Then it writes backup_label, tablespace_map,
//! `recovery.signal` and a `restore_command` calling `strata archive-get`, so starting PostgreSQL replays
//! the archived WAL.

use crate::cmd::format_bytes;
use crate::{progress, Context_};
use anyhow::{anyhow, bail, Context};
use std::collections::HashMap;
use std::fs::{self, File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};
use strata_messages::{FileEntry, FileKind, Manifest};
use strata_seal::Sealer;

/// Files restored at once; each worker has one chunk in memory at a time.
const RESTORE_WORKERS: usize = 4;

pub async fn run(ctx: &Context_, pg_data: &Path, set: Option<&str>, tablespace_map: &[String]) -> anyhow::Result<()> {
    check_empty(pg_data)?;
    let stanza = ctx.repo.stanza(&ctx.stanza).await?;
    let record = match set {
        Some(label) => ctx.repo.backup(&ctx.stanza, label).await?,
        None => ctx
            .repo
            .backups(&ctx.stanza)
            .await?
            .pop()
            .ok_or_else(|| anyhow!("stanza '{}' has no backup to restore", ctx.stanza))?,
    };
    let sealer = Sealer::default();
    let manifest = ctx.repo.manifest(&sealer, &record).await?;
    let major = strata_pg::version::major_from_version_num(manifest.summary.pg_version_num);
    if major != stanza.pg_major || manifest.summary.system_id != stanza.system_id {
        bail!(
            "backup {} is of PostgreSQL {major} system {}, but stanza '{}' is PostgreSQL {} system {}; refusing to mix them",
            record.summary.label,
            manifest.summary.system_id,
            ctx.stanza,
            stanza.pg_major,
            stanza.system_id
        );
    }
    let remap = parse_tablespace_map(tablespace_map)?;
    let tablespace_dirs = plan_tablespaces(&manifest, &remap)?;

    fs::create_dir_all(pg_data).with_context(|| format!("cannot create {}", pg_data.display()))?;
    fs::set_permissions(pg_data, fs::Permissions::from_mode(0o700))?;
    let root = fs::canonicalize(pg_data)?;
    // SAFETY: geteuid has no preconditions and cannot fail.
    let as_root = unsafe { libc::geteuid() } == 0;
    // The data directory itself belongs to whoever owns its files (PostgreSQL refuses any other owner).
    if let Some(owner) = manifest.files.iter().find(|f| f.path == "PG_VERSION") {
        chown(&root, owner, as_root)?;
    }

    // Directories and links first, in manifest order (parents before children).
    let mut dirs = vec![root.clone()];
    for e in &manifest.files {
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

    let files: Vec<&FileEntry> = manifest.files.iter().filter(|e| e.kind == FileKind::File).collect();
    let total: u64 = files.iter().map(|f| f.size).sum();
    let bar = progress::bytes_bar(&format!("restore {}", record.summary.label));
    bar.set_length(total);
    let files: Arc<Vec<FileEntry>> = Arc::new(files.into_iter().cloned().collect());
    let next = Arc::new(AtomicUsize::new(0));
    let mut workers = Vec::new();
    for _ in 0..RESTORE_WORKERS {
        let (files, next, repo, root, bar, sealer) =
            (files.clone(), next.clone(), ctx.repo.clone(), root.clone(), bar.clone(), sealer.clone());
        workers.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                let Some(e) = files.get(i) else { return Ok::<(), anyhow::Error>(()) };
                let path = root.join(&e.path);
                let mut f = OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&path)
                    .with_context(|| format!("cannot create {}", path.display()))?;
                for r in &e.chunks {
                    let plain = repo.read_chunk(&sealer, r).await.with_context(|| format!("restoring {}", e.path))?;
                    f.write_all(&plain).with_context(|| format!("cannot write {}", path.display()))?;
                    bar.inc(plain.len() as u64);
                }
                finish_file(f, &path, e, as_root)?;
            }
        }));
    }
    for w in workers {
        w.await.expect("restore worker panicked")?;
    }
    bar.finish_and_clear();

    write_recovery_files(ctx, &root, &manifest, &tablespace_dirs)?;
    for d in &dirs {
        File::open(d).and_then(|d| d.sync_all()).with_context(|| format!("cannot sync {}", d.display()))?;
    }
    println!(
        "restored backup {} into {} ({} files, {}); start PostgreSQL to recover from the archive",
        record.summary.label,
        root.display(),
        files.len(),
        format_bytes(total)
    );
    Ok(())
}

fn check_empty(dir: &Path) -> anyhow::Result<()> {
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

/// Where each tablespace goes: its mapped directory, or its original location, which must be empty.
fn plan_tablespaces(manifest: &Manifest, remap: &HashMap<u32, PathBuf>) -> anyhow::Result<HashMap<String, PathBuf>> {
    let mut out = HashMap::new();
    for t in &manifest.tablespaces {
        let dir = remap.get(&t.oid).cloned().unwrap_or_else(|| PathBuf::from(&t.location));
        check_empty(&dir).map_err(|e| anyhow!("tablespace {}: {e} (map it elsewhere with --tablespace-map {}=DIR)", t.oid, t.oid))?;
        out.insert(format!("pg_tblspc/{}", t.oid), dir);
    }
    for oid in remap.keys() {
        if !manifest.tablespaces.iter().any(|t| t.oid == *oid) {
            bail!("--tablespace-map: the backup has no tablespace {oid}");
        }
    }
    Ok(out)
}

fn chown(path: &Path, e: &FileEntry, as_root: bool) -> anyhow::Result<()> {
    if as_root {
        std::os::unix::fs::lchown(path, Some(e.uid), Some(e.gid))
            .with_context(|| format!("cannot set the owner of {}", path.display()))?;
    }
    Ok(())
}

fn finish_file(f: File, path: &Path, e: &FileEntry, as_root: bool) -> anyhow::Result<()> {
    f.set_permissions(fs::Permissions::from_mode(e.mode)).with_context(|| format!("cannot chmod {}", path.display()))?;
    f.set_modified(UNIX_EPOCH + Duration::from_secs(e.mtime.max(0) as u64))
        .with_context(|| format!("cannot set the mtime of {}", path.display()))?;
    f.sync_all().with_context(|| format!("cannot sync {}", path.display()))?;
    chown(path, e, as_root)
}

/// backup_label, tablespace_map, recovery.signal and the restore_command.
fn write_recovery_files(
    ctx: &Context_,
    root: &Path,
    manifest: &Manifest,
    tablespace_dirs: &HashMap<String, PathBuf>,
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
    write("backup_label", &manifest.backup_label)?;
    if !manifest.tablespace_map.is_empty() {
        // PostgreSQL recreates the links from this file; point them where the tablespaces were restored.
        let mut map = String::new();
        for line in manifest.tablespace_map.lines() {
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
    write("recovery.signal", "")?;
    let exe = std::env::current_exe().context("cannot find the strata executable for restore_command")?;
    let command = format!(
        "{} --config {} --stanza {} archive-get %f \"%p\"",
        exe.display(),
        ctx.config_path.display(),
        ctx.stanza
    );
    let auto = root.join("postgresql.auto.conf");
    let mut conf = fs::read_to_string(&auto).unwrap_or_default();
    conf.push_str(&format!(
        "\n# added by strata restore of backup {}\nrestore_command = '{}'\n",
        manifest.summary.label,
        command.replace('\'', "''")
    ));
    write("postgresql.auto.conf", &conf)
}
