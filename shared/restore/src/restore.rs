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

use crate::delta;
use crate::full;
use crate::target::{self, Plan, Recovery, RecoveryArgs, Target};
use crate::tree::{self, set_owner, TablespaceDirs, TreeWriter};
use crate::wal_archive::WalArchive;
use anyhow::{anyhow, bail, Context};
use std::fs::{self, OpenOptions};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use strata_command::{format_bytes, Context_};
use strata_messages::Manifest;
use strata_repo::StanzaInfo;
use strata_seal::Sealer;

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

/// Everything decided before the first byte is written.
struct RestorePlan {
    recovery: Recovery,
    /// Whether the target is a data directory to rewrite with `--delta`.
    delta: bool,
    plan: Plan,
    sealer: Sealer,
    manifest: Manifest,
    tablespace_dirs: TablespaceDirs,
    primary_conninfo: Option<String>,
}

/// The restore itself, printing nothing. `tablespace_root`: every tablespace the map does not name goes
/// to `<tablespace_root>/<oid>` instead of its original location (the restore test's scratch directory).
pub async fn restore(ctx: &Context_, opts: &RestoreOptions<'_>, tablespace_root: Option<&Path>) -> anyhow::Result<Restored> {
    let p = plan_restore(ctx, opts, tablespace_root).await?;
    let (mut tree, removed) = prepare_target(opts.pg_data, &p)?;
    tree.write_dirs_and_links(&p.manifest.files, &p.tablespace_dirs)?;
    let (label, describe) = (&p.plan.record.summary.label, &p.plan.describe);
    let (files, bytes, message) = if p.delta {
        let report = delta::write_files(ctx, &tree, &p.manifest, &p.sealer).await?;
        let message = format!(
            "delta-restored backup {label} into {} ({} files, {}): read {} locally, fetched {}, wrote {} and changed {} files, removed {removed} files; {describe}",
            tree.root().display(),
            report.files,
            format_bytes(report.total),
            format_bytes(report.read),
            format_bytes(report.fetched),
            format_bytes(report.written),
            report.rewritten,
        );
        (report.files, report.written, message)
    } else {
        let written = full::write_files(ctx, &tree, &p.manifest, &p.sealer, label).await?;
        let message = format!(
            "restored backup {label} into {} ({} files, {}); start PostgreSQL to recover: {describe}",
            tree.root().display(),
            written.files,
            format_bytes(written.bytes)
        );
        (written.files, written.bytes, message)
    };
    write_recovery_settings(ctx, &tree, &p, opts.wal_prefetch)?;
    tree.sync()?;
    Ok(Restored { record: p.plan.record, history: p.plan.history, files, bytes, message })
}

/// backup_label, tablespace_map, the signal file and postgresql.auto.conf, once every file is in place.
fn write_recovery_settings(ctx: &Context_, tree: &TreeWriter, p: &RestorePlan, prefetch: usize) -> anyhow::Result<()> {
    let settings = RecoverySettings { recovery: &p.recovery, primary_conninfo: p.primary_conninfo.as_deref(), prefetch };
    write_recovery_files(ctx, tree.root(), &p.manifest, &p.tablespace_dirs, &settings)
}

/// Checks everything that can be checked before writing: the options, the target directory, the backup
/// that serves the recovery target and the archive behind it, and where the tablespaces go.
async fn plan_restore(ctx: &Context_, opts: &RestoreOptions<'_>, tablespace_root: Option<&Path>) -> anyhow::Result<RestorePlan> {
    let pg_data = opts.pg_data;
    let recovery = Recovery::parse(&opts.recovery)?;
    let mut remap = tree::parse_tablespace_map(opts.tablespace_map)?;
    let delta = opts.delta && delta::is_data_directory(pg_data)?;
    if !delta {
        tree::check_empty(pg_data)?;
    }
    let stanza = ctx.repo.stanza(&ctx.stanza).await?;
    if delta {
        delta::check_cluster(pg_data, &stanza)?;
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
    let primary_conninfo = match recovery.target {
        Target::Standby => Some(ctx.cfg.stanza(&ctx.stanza)?.pg_conn.clone()),
        _ => None,
    };
    let sealer = ctx.repo.sealer().clone();
    let manifest = ctx.repo.manifest(&sealer, &plan.record).await?;
    check_same_cluster(ctx, &plan, &manifest, &stanza)?;
    if let Some(root) = tablespace_root {
        for t in &manifest.head.tablespaces {
            remap.entry(t.oid).or_insert_with(|| root.join(t.oid.to_string()));
        }
    }
    let tablespace_dirs = tree::plan_tablespaces(&manifest, &remap, delta)?;
    Ok(RestorePlan { recovery, delta, plan, sealer, manifest, tablespace_dirs, primary_conninfo })
}

/// Refuses a backup of another cluster or major version than the stanza's.
fn check_same_cluster(ctx: &Context_, plan: &Plan, manifest: &Manifest, stanza: &StanzaInfo) -> anyhow::Result<()> {
    let major = strata_pg::version::major_from_version_num(manifest.head.summary.pg_version_num);
    if major != stanza.pg_major || manifest.head.summary.system_id != stanza.system_id {
        bail!(
            "backup {} is of PostgreSQL {major} system {}, but stanza '{}' is PostgreSQL {} system {}; refusing to mix them",
            plan.record.summary.label,
            manifest.head.summary.system_id,
            ctx.stanza,
            stanza.pg_major,
            stanza.system_id
        );
    }
    Ok(())
}

/// The data directory to write into: created for a full restore; for a delta restore, the existing one,
/// less everything the backup does not have (how many files and directories were removed).
fn prepare_target(pg_data: &Path, p: &RestorePlan) -> anyhow::Result<(TreeWriter, usize)> {
    if p.delta {
        let tree = TreeWriter::open(pg_data)?;
        let removed = delta::remove_extra_entries(tree.root(), &p.manifest, &p.tablespace_dirs)?;
        Ok((tree, removed))
    } else {
        Ok((TreeWriter::create(pg_data, &p.manifest.files)?, 0))
    }
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
    tablespace_dirs: &TablespaceDirs,
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
            set_owner(&path, o, tree::running_as_root())?;
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
