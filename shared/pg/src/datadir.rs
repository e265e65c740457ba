//! Which entries of a PostgreSQL 15 data directory a base backup copies, and which files carry page checksums.
//!
//! The rules are those of `basebackup.c` (`excludeDirContents`, `excludeFiles`, `noChecksumFiles`, `sendDir`) and
//! of "Backing up with the low level API" in the PostgreSQL 15 documentation, so a Strata backup restores like a
//! `pg_basebackup` one. [`classify`] looks at one path relative to the data directory and answers from the path
//! alone; the one rule that needs a directory's other entries (unlogged relations) has its own helpers,
//! [`init_forks`] and [`is_unlogged_non_init`].
//!
//! Skipped, as `basebackup.c` does:
//! - the contents of `pg_wal` (WAL comes from the archive), `pg_stat_tmp`, `pg_replslot`, `pg_dynshmem`,
//!   `pg_notify`, `pg_serial`, `pg_snapshots` and `pg_subtrans`, which PostgreSQL recreates, empties or does not
//!   need at startup. The directories themselves are kept, empty, so a restore has them with the right mode; so is
//!   `pg_wal/archive_status`. If `pg_wal` is a symlink, restore creates a plain directory.
//! - `postmaster.pid`, `postmaster.opts`, `backup_label`, `tablespace_map` and `backup_manifest` (they describe a
//!   running server or an earlier backup; the backup writes its own `backup_label` and `tablespace_map`),
//!   `postgresql.auto.conf.tmp`, `current_logfiles.tmp` and every `pg_internal.init*` (the relcache init file,
//!   rebuilt at startup), at any depth, as `basebackup.c` compares bare names.
//! - anything whose name starts with `pgsql_tmp` (temporary files and directories), at any depth.
//! - temporary relations (`t<backend>_<relfilenode>...`) in database directories.
//! - the forks other than `_init` of unlogged relations (see [`is_unlogged_non_init`]): recovery rebuilds them from
//!   the init fork.
//! - under `pg_tblspc/<oid>/`, everything but this major version's `PG_15_202209061` directory (another major
//!   version's directory belongs to another cluster, e.g. one left by `pg_upgrade`).
//!
//! Strata also skips, at the top level only, where `basebackup.c` copies them:
//! - `recovery.signal` and `standby.signal`. Restore decides how the restored cluster recovers and writes the signal
//!   file itself. Copying a standby's `standby.signal` would make a point-in-time restore come up as a standby and
//!   never finish recovery, because `standby.signal` wins over `recovery.signal`. pgBackRest skips them for the same
//!   reason.
//! - `current_logfiles` and `backup_label.old`: state of the source server's logging collector and of an earlier
//!   restore. PostgreSQL rewrites or removes `current_logfiles` at startup, and nothing reads `backup_label.old`.
//!
//! Page checksums: `basebackup.c` verifies every file under `global/`, `base/` and tablespaces except
//! `pg_control`, `pg_filenode.map`, `pg_internal.init*` and `PG_VERSION`. Strata is narrower: only files whose name
//! is a relation file name (`<relfilenode>[_fsm|_vm|_init][.N]`) in `global/` or a database directory are
//! [`FileClass::Relation`]. A stray file with another name is copied but not checksummed, rather than reported as
//! corrupt.
//!
//! `global/pg_control` ([`CONTROL_FILE`]) is classified like any other file, but must be copied last, after every
//! other file, as `basebackup.c` does: its checkpoint must not be newer than the data copied before it.

use std::borrow::Cow;
use std::collections::HashSet;
use std::path::{Component, Path};

/// The directory PostgreSQL 15 creates inside each tablespace location (`TABLESPACE_VERSION_DIRECTORY`):
/// `PG_<major>_<catalog version>`.
pub const TABLESPACE_VERSION_DIRECTORY: &str = "PG_15_202209061";

/// Path of the control file relative to the data directory; copied last.
pub const CONTROL_FILE: &str = "global/pg_control";

/// Prefix of temporary files and directories (`PG_TEMP_FILE_PREFIX`).
pub const TEMP_FILE_PREFIX: &str = "pgsql_tmp";

/// Top-level directories whose contents are skipped but which are kept, empty (`excludeDirContents` and `pg_wal`).
const SKIP_CONTENTS_DIRS: &[&str] = &[
    "pg_wal",
    "pg_stat_tmp",
    "pg_replslot",
    "pg_dynshmem",
    "pg_notify",
    "pg_serial",
    "pg_snapshots",
    "pg_subtrans",
];

/// Names skipped at any depth (`excludeFiles` with `match_prefix = false`).
const SKIP_NAMES: &[&str] = &[
    "postgresql.auto.conf.tmp",
    "current_logfiles.tmp",
    "backup_label",
    "tablespace_map",
    "backup_manifest",
    "postmaster.pid",
    "postmaster.opts",
];

/// Name prefixes skipped at any depth (`excludeFiles` with `match_prefix = true`, and temporary files).
const SKIP_PREFIXES: &[&str] = &["pg_internal.init", TEMP_FILE_PREFIX];

/// Names skipped in the data directory itself, beyond what `basebackup.c` skips; see the module docs.
const SKIP_TOP_LEVEL: &[&str] = &[
    "recovery.signal",
    "standby.signal",
    "current_logfiles",
    "backup_label.old",
];

/// What a backup does with one entry of the data directory.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Entry {
    /// Leave it out; for a directory, leave out everything below it too.
    Skip,
    /// Keep the directory itself, empty: record it but do not descend into it.
    SkipContents,
    /// Copy it (a file) or record it and descend (a directory).
    Include(FileClass),
}

/// How a copied file's contents are treated.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum FileClass {
    /// A relation fork segment made of 8 KiB pages with checksums. `segno` is the `.N` suffix (0 if none); page
    /// `i` of the file is block [`crate::page::block_number`]`(segno, i)`.
    Relation { segno: u32 },
    /// Anything else, including directories: copied as bytes, no page checksums.
    Other,
}

/// A relation fork (`ForkNumber`), as named by a file's suffix.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum Fork {
    /// No suffix: the table or index data.
    Main,
    /// `_fsm`: the free space map.
    Fsm,
    /// `_vm`: the visibility map.
    Vm,
    /// `_init`: the empty image an unlogged relation is reset to after a crash.
    Init,
}

/// A parsed relation file name, `<relfilenode>[_fsm|_vm|_init][.N]`.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub struct RelFileName {
    pub relfilenode: u32,
    pub fork: Fork,
    /// The `.N` segment suffix, 0 if none.
    pub segno: u32,
}

/// The relfilenode digits, fork and segment of a permanent relation's file name
/// (`parse_filename_for_nontemp_relation`), plus the number of leading digit bytes.
fn parse_relation(name: &str) -> Option<(usize, RelFileName)> {
    let digits = name.bytes().take_while(u8::is_ascii_digit).count();
    // OIDCHARS: an Oid has at most 10 decimal digits.
    if digits == 0 || digits > 10 {
        return None;
    }
    let relfilenode: u32 = name[..digits].parse().ok()?;
    let rest = &name[digits..];
    let (fork, rest) = if let Some(r) = rest.strip_prefix("_fsm") {
        (Fork::Fsm, r)
    } else if let Some(r) = rest.strip_prefix("_vm") {
        (Fork::Vm, r)
    } else if let Some(r) = rest.strip_prefix("_init") {
        (Fork::Init, r)
    } else {
        (Fork::Main, rest)
    };
    let segno = match rest.strip_prefix('.') {
        None if rest.is_empty() => 0,
        None => return None,
        Some(seg) => {
            // PostgreSQL writes segment numbers without leading zeros and never ".0".
            if seg.is_empty() || seg.starts_with('0') || !seg.bytes().all(|b| b.is_ascii_digit()) {
                return None;
            }
            seg.parse().ok()?
        }
    };
    Some((
        digits,
        RelFileName {
            relfilenode,
            fork,
            segno,
        },
    ))
}

/// Parses a permanent relation's file name such as `16384`, `16384_fsm`, `16384.2` or `16384_vm.1`; `None` for
/// anything else, including temporary relations.
pub fn parse_relation_file_name(name: &str) -> Option<RelFileName> {
    parse_relation(name).map(|(_, rel)| rel)
}

/// Whether `name` is a temporary relation's file, `t<backend id>_<relfilenode>[_fork][.N]` (`looks_like_temp_rel_name`).
/// Temporary relations live only as long as their session and are never backed up.
pub fn is_temp_relation_file_name(name: &str) -> bool {
    let Some(rest) = name.strip_prefix('t') else {
        return false;
    };
    let backend_digits = rest.bytes().take_while(u8::is_ascii_digit).count();
    if backend_digits == 0 {
        return false;
    }
    match rest[backend_digits..].strip_prefix('_') {
        Some(rel) => parse_relation(rel).is_some(),
        None => false,
    }
}

/// The relfilenode part of an init fork's file name: `Some("16384")` for `16384_init` (or `16384_init.1`), `None` for
/// any other name.
pub fn init_fork_base(file_name: &str) -> Option<&str> {
    match parse_relation(file_name) {
        Some((digits, rel)) if rel.fork == Fork::Init => Some(&file_name[..digits]),
        _ => None,
    }
}

/// Collects the relfilenodes that have an init fork among the names of one database directory's entries, for
/// [`is_unlogged_non_init`].
pub fn init_forks<'a>(names: impl IntoIterator<Item = &'a str>) -> HashSet<String> {
    names
        .into_iter()
        .filter_map(init_fork_base)
        .map(str::to_owned)
        .collect()
}

/// Whether `file_name`, in a database directory whose init forks are `init_forks` (see [`init_forks`]), is a
/// non-init fork of an unlogged relation, which a backup skips.
///
/// An unlogged relation is the one kind of relation with an `_init` fork. Its other forks are not WAL-logged, so
/// their copy could never be made consistent; recovery instead copies the init fork over the main fork. The init
/// fork itself is always kept. Only apply this in a database directory ([`is_database_dir`]): `global/` holds no
/// unlogged relations.
pub fn is_unlogged_non_init(file_name: &str, init_forks: &HashSet<String>) -> bool {
    match parse_relation(file_name) {
        Some((digits, rel)) => rel.fork != Fork::Init && init_forks.contains(&file_name[..digits]),
        None => false,
    }
}

/// The normal components of `rel_path` as text, or `None` if the path is absolute or climbs with `..`, so it is not
/// a path inside the data directory. `.` components are dropped. Names that are not UTF-8 are replaced lossily; no
/// PostgreSQL name is non-UTF-8, so they match no rule and are treated as ordinary files.
fn components(rel_path: &Path) -> Option<Vec<Cow<'_, str>>> {
    let mut parts = Vec::new();
    for component in rel_path.components() {
        match component {
            Component::Normal(name) => parts.push(name.to_string_lossy()),
            Component::CurDir => {}
            Component::ParentDir | Component::RootDir | Component::Prefix(_) => return None,
        }
    }
    Some(parts)
}

fn all_digits(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit())
}

/// Whether `rel_path` is a database directory, which holds relation files and to which the temporary and unlogged
/// relation rules apply: `base/<oid>` or `pg_tblspc/<oid>/PG_15_202209061/<oid>`.
pub fn is_database_dir(rel_path: &Path) -> bool {
    let Some(parts) = components(rel_path) else {
        return false;
    };
    let parts: Vec<&str> = parts.iter().map(|p| p.as_ref()).collect();
    is_database_dir_parts(&parts)
}

fn is_database_dir_parts(parts: &[&str]) -> bool {
    match parts {
        ["base", db] => all_digits(db),
        ["pg_tblspc", spc, version, db] => {
            all_digits(spc) && *version == TABLESPACE_VERSION_DIRECTORY && all_digits(db)
        }
        _ => false,
    }
}

/// Decides what a backup does with one entry of the data directory, from its path alone.
///
/// `rel_path` is relative to the data directory (`base/5/16384.1`, `pg_wal`, `postmaster.pid`); `is_dir` says
/// whether the entry is a directory (or a symlink to one, such as a tablespace). The caller must also apply
/// [`is_unlogged_non_init`] in database directories and copy [`CONTROL_FILE`] last; see the module docs for the
/// rules. An absolute path, or one containing `..`, is not inside the data directory and gives [`Entry::Skip`].
pub fn classify(rel_path: &Path, is_dir: bool) -> Entry {
    let Some(parts) = components(rel_path) else {
        return Entry::Skip;
    };
    let parts: Vec<&str> = parts.iter().map(|p| p.as_ref()).collect();
    let Some((&name, parents)) = parts.split_last() else {
        // The data directory itself.
        return Entry::Include(FileClass::Other);
    };

    if SKIP_NAMES.contains(&name) || SKIP_PREFIXES.iter().any(|p| name.starts_with(p)) {
        return Entry::Skip;
    }
    if parents.is_empty() && SKIP_TOP_LEVEL.contains(&name) {
        return Entry::Skip;
    }

    if let Some(&top) = parts.first() {
        if SKIP_CONTENTS_DIRS.contains(&top) {
            return match parts.as_slice() {
                [_] => Entry::SkipContents,
                ["pg_wal", "archive_status"] if is_dir => Entry::SkipContents,
                _ => Entry::Skip,
            };
        }
    }

    let in_db_dir = is_database_dir_parts(parents);
    if let ["pg_tblspc", _, version, ..] = parts.as_slice() {
        if *version != TABLESPACE_VERSION_DIRECTORY {
            return Entry::Skip;
        }
    }

    if is_dir {
        return Entry::Include(FileClass::Other);
    }
    if in_db_dir {
        if is_temp_relation_file_name(name) {
            return Entry::Skip;
        }
        if let Some(rel) = parse_relation_file_name(name) {
            return Entry::Include(FileClass::Relation { segno: rel.segno });
        }
    }
    if parents == ["global"] {
        if let Some(rel) = parse_relation_file_name(name) {
            return Entry::Include(FileClass::Relation { segno: rel.segno });
        }
    }
    Entry::Include(FileClass::Other)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(p: &str) -> Entry {
        classify(Path::new(p), false)
    }

    fn dir(p: &str) -> Entry {
        classify(Path::new(p), true)
    }

    const OTHER: Entry = Entry::Include(FileClass::Other);

    fn rel(segno: u32) -> Entry {
        Entry::Include(FileClass::Relation { segno })
    }

    #[test]
    fn relation_files_carry_checksums() {
        assert_eq!(file("base/5/16384"), rel(0));
        assert_eq!(file("base/5/16384.1"), rel(1));
        assert_eq!(file("base/5/16384_fsm"), rel(0));
        assert_eq!(file("base/5/16384_vm"), rel(0));
        assert_eq!(file("base/5/16384_init"), rel(0));
        assert_eq!(file("base/5/16384_vm.3"), rel(3));
        assert_eq!(file("./base/1/1259"), rel(0));
        assert_eq!(file("global/1262"), rel(0));
        assert_eq!(file("global/1262_vm"), rel(0));
        let ts = format!("pg_tblspc/16400/{TABLESPACE_VERSION_DIRECTORY}/16401/16402.12");
        assert_eq!(file(&ts), rel(12));
    }

    #[test]
    fn other_files_are_copied_without_checksums() {
        for p in [
            "global/pg_control",
            "global/pg_filenode.map",
            "base/5/pg_filenode.map",
            "base/5/PG_VERSION",
            "PG_VERSION",
            "postgresql.conf",
            "postgresql.auto.conf",
            "pg_hba.conf",
            "pg_ident.conf",
            "pg_xact/0000",
            "pg_multixact/offsets/0000",
            "pg_logical/replorigin_checkpoint",
            "pg_stat/pgstat.stat",
            "log/postgresql-2024.log",
            "base/5/16384_main",
            "base/5/16384.0",
            "base/5/16384.01",
            "base/5/16384_fsm_vm",
            "base/5/16384.",
            "base/5/99999999999",
            "base/5/16384.tmp",
            "base/notadb/16384",
            "16384",
            "pg_xact/16384",
            "global/config_exec_params",
        ] {
            assert_eq!(file(p), OTHER, "{p}");
        }
    }

    #[test]
    fn directories() {
        assert_eq!(dir(""), OTHER);
        assert_eq!(dir("."), OTHER);
        for p in [
            "base",
            "base/1",
            "global",
            "pg_xact",
            "pg_tblspc",
            "pg_tblspc/16400",
            "pg_stat",
            "pg_logical",
        ] {
            assert_eq!(dir(p), OTHER, "{p}");
        }
        // A directory named like a relation is still a directory.
        assert_eq!(dir("base/5/16384"), OTHER);
        let ts = format!("pg_tblspc/16400/{TABLESPACE_VERSION_DIRECTORY}");
        assert_eq!(dir(&ts), OTHER);
        assert_eq!(dir(&format!("{ts}/16401")), OTHER);
    }

    #[test]
    fn directories_kept_empty() {
        for p in [
            "pg_wal",
            "pg_stat_tmp",
            "pg_replslot",
            "pg_dynshmem",
            "pg_notify",
            "pg_serial",
            "pg_snapshots",
            "pg_subtrans",
        ] {
            assert_eq!(dir(p), Entry::SkipContents, "{p}");
        }
        // pg_wal as a symlink to another disk is still restored as an empty directory.
        assert_eq!(file("pg_wal"), Entry::SkipContents);
        assert_eq!(dir("pg_wal/archive_status"), Entry::SkipContents);
        for p in [
            "pg_wal/000000010000000000000001",
            "pg_wal/00000002.history",
            "pg_wal/archive_status/000000010000000000000001.done",
            "pg_replslot/slot1/state",
            "pg_stat_tmp/global.stat",
            "pg_subtrans/0000",
            "pg_notify/0000",
        ] {
            assert_eq!(file(p), Entry::Skip, "{p}");
        }
        assert_eq!(dir("pg_replslot/slot1"), Entry::Skip);
        assert_eq!(dir("pg_wal/summaries"), Entry::Skip);
        // Only at the top: a relation directory that happens to share a name is not special.
        assert_eq!(dir("base/pg_wal"), OTHER);
    }

    #[test]
    fn skipped_files() {
        for p in [
            "postmaster.pid",
            "postmaster.opts",
            "backup_label",
            "tablespace_map",
            "backup_manifest",
            "postgresql.auto.conf.tmp",
            "current_logfiles.tmp",
            "current_logfiles",
            "backup_label.old",
            "recovery.signal",
            "standby.signal",
            "global/pg_internal.init",
            "base/5/pg_internal.init",
            "base/5/pg_internal.init.12345",
            "base/pgsql_tmp",
            "base/pgsql_tmp/pgsql_tmp1234.0",
            "pgsql_tmp",
            "base/5/t3_16384",
            "base/5/t3_16384_fsm",
            "base/5/t12_16384.1",
        ] {
            assert_eq!(file(p), Entry::Skip, "{p}");
        }
        assert_eq!(dir("base/pgsql_tmp"), Entry::Skip);
        let ts = format!("pg_tblspc/16400/{TABLESPACE_VERSION_DIRECTORY}");
        assert_eq!(dir(&format!("{ts}/pgsql_tmp")), Entry::Skip);
        assert_eq!(file(&format!("{ts}/16401/t3_16402")), Entry::Skip);
        // The Strata-only names are skipped at the top level only.
        assert_eq!(file("log/current_logfiles"), OTHER);
        // "t3_16384" outside a database directory is an ordinary file.
        assert_eq!(file("pg_xact/t3_16384"), OTHER);
    }

    #[test]
    fn other_major_versions_in_a_tablespace_are_skipped() {
        assert_eq!(dir("pg_tblspc/16400/PG_14_202107181"), Entry::Skip);
        assert_eq!(
            file("pg_tblspc/16400/PG_14_202107181/16401/16402"),
            Entry::Skip
        );
        assert_eq!(file("pg_tblspc/16400/stray"), Entry::Skip);
    }

    #[test]
    fn paths_outside_the_data_directory() {
        assert_eq!(file("/var/lib/postgresql/15/main/base/1/1259"), Entry::Skip);
        assert_eq!(file("../base/1/1259"), Entry::Skip);
        assert_eq!(file("base/../postmaster.pid"), Entry::Skip);
    }

    #[test]
    fn relation_file_names() {
        let r = |relfilenode, fork, segno| {
            Some(RelFileName {
                relfilenode,
                fork,
                segno,
            })
        };
        assert_eq!(parse_relation_file_name("16384"), r(16384, Fork::Main, 0));
        assert_eq!(parse_relation_file_name("16384.7"), r(16384, Fork::Main, 7));
        assert_eq!(parse_relation_file_name("1_fsm"), r(1, Fork::Fsm, 0));
        assert_eq!(
            parse_relation_file_name("4294967295_vm.2"),
            r(u32::MAX, Fork::Vm, 2)
        );
        assert_eq!(
            parse_relation_file_name("16384_init"),
            r(16384, Fork::Init, 0)
        );
        for bad in [
            "",
            "_fsm",
            "a16384",
            "16384_",
            "16384_main",
            "16384.x",
            "16384.1.2",
            "4294967296",
            "t3_16384",
        ] {
            assert_eq!(parse_relation_file_name(bad), None, "{bad:?}");
        }
        assert!(is_temp_relation_file_name("t3_16384"));
        assert!(is_temp_relation_file_name("t3_16384_vm.1"));
        for not in [
            "t_16384",
            "t3_",
            "t3",
            "3_16384",
            "tx_16384",
            "t3_16384_bad",
        ] {
            assert!(!is_temp_relation_file_name(not), "{not:?}");
        }
    }

    #[test]
    fn unlogged_relations_keep_only_the_init_fork() {
        let names = [
            "16384",
            "16384_fsm",
            "16384_vm",
            "16384.1",
            "16384_init",
            "16390",
            "16390_vm",
            "PG_VERSION",
        ];
        let inits = init_forks(names.iter().copied());
        assert_eq!(inits, HashSet::from(["16384".to_owned()]));
        let skipped: Vec<&str> = names
            .into_iter()
            .filter(|n| is_unlogged_non_init(n, &inits))
            .collect();
        assert_eq!(skipped, ["16384", "16384_fsm", "16384_vm", "16384.1"]);
        assert_eq!(init_fork_base("16384_init"), Some("16384"));
        assert_eq!(init_fork_base("16384_init.1"), Some("16384"));
        assert_eq!(init_fork_base("16384"), None);
        assert_eq!(init_fork_base("t3_16384_init"), None);
        // A name sharing only a prefix with an unlogged relation is unaffected.
        assert!(!is_unlogged_non_init("163840", &inits));
    }

    #[test]
    fn database_dirs() {
        assert!(is_database_dir(Path::new("base/5")));
        assert!(is_database_dir(Path::new("./base/5")));
        assert!(is_database_dir(
            &Path::new("pg_tblspc/16400")
                .join(TABLESPACE_VERSION_DIRECTORY)
                .join("16401")
        ));
        assert!(!is_database_dir(Path::new("base")));
        assert!(!is_database_dir(Path::new("global")));
        assert!(!is_database_dir(Path::new("base/pgsql_tmp")));
        assert!(!is_database_dir(Path::new(
            "pg_tblspc/16400/PG_14_202107181/16401"
        )));
    }
}
