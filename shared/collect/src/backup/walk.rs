//! Which files a backup copies. Kept apart from reading so the base-backup rules applied to a directory tree
//! (what [`strata_pg::datadir`] skips, unlogged relations without their init fork, tablespace links
//! followed into their targets) can be tested on a temporary directory, without a server.

use anyhow::{anyhow, Context};
use std::collections::HashSet;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use strata_messages::FileKind;
use strata_pg::datadir::{self, Entry, FileClass};

/// The parts of a file's metadata a manifest records (a full `std::fs::Metadata` is five times larger, which
/// adds up over hundreds of thousands of files).
#[derive(Clone, Copy)]
pub(super) struct Meta {
    pub(super) mode: u32,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) mtime: i64,
    pub(super) len: u64,
}

impl Meta {
    fn of(m: &std::fs::Metadata) -> Meta {
        Meta { mode: m.mode() & 0o7777, uid: m.uid(), gid: m.gid(), mtime: m.mtime(), len: m.len() }
    }
}

/// One entry found by the walk. Kept small: a cluster may have hundreds of thousands.
pub(super) struct Found {
    pub(super) rel: Box<str>,
    /// Which walk root ([`Roots`]) the entry is under.
    pub(super) root: u32,
    pub(super) kind: FileKind,
    pub(super) class: FileClass,
    pub(super) meta: Meta,
    pub(super) link_target: Option<Box<str>>,
}

/// Where the walk's entries are on disk: the data directory, then each tablespace, as (path prefix in the
/// manifest, directory).
#[derive(Default)]
pub(super) struct Roots(Vec<(String, PathBuf)>);

impl Roots {
    pub(super) fn abs(&self, f: &Found) -> PathBuf {
        let (prefix, dir) = &self.0[f.root as usize];
        match prefix.is_empty() {
            true => dir.join(&*f.rel),
            false => dir.join(f.rel[prefix.len()..].trim_start_matches('/')),
        }
    }
}

/// Lists what the backup copies, directories before their contents. Follows the tablespace links in
/// `pg_tblspc`, recording the link itself and the tablespace's contents under `pg_tblspc/<oid>/`.
pub(super) fn walk(root: &Path) -> anyhow::Result<(Vec<Found>, Roots)> {
    let mut out = Vec::new();
    let mut roots = Roots(vec![(String::new(), root.to_path_buf())]);
    // (directory on disk, its path in the manifest, its root)
    let mut stack: Vec<(PathBuf, String, u32)> = vec![(root.to_path_buf(), String::new(), 0)];
    while let Some((dir, rel_dir, root_no)) = stack.pop() {
        let mut names: Vec<(String, PathBuf)> = Vec::new();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            // A directory dropped during the backup (DROP DATABASE): WAL replay recreates the truth.
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !rel_dir.is_empty() => continue,
            Err(e) => return Err(anyhow!("cannot read {}: {e}", dir.display())),
        };
        for entry in entries {
            let entry = entry.with_context(|| format!("cannot read {}", dir.display()))?;
            names.push((entry.file_name().to_string_lossy().into_owned(), entry.path()));
        }
        names.sort();
        let init_forks = if datadir::is_database_dir(Path::new(&rel_dir)) {
            datadir::init_forks(names.iter().map(|(n, _)| n.as_str()))
        } else {
            HashSet::new()
        };
        let mut subdirs = Vec::new();
        for (name, abs) in names {
            let rel = if rel_dir.is_empty() { name.clone() } else { format!("{rel_dir}/{name}") };
            let meta = match std::fs::symlink_metadata(&abs) {
                Ok(m) => m,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(anyhow!("cannot stat {}: {e}", abs.display())),
            };
            let is_tablespace_link = meta.file_type().is_symlink() && rel_dir == "pg_tblspc";
            let is_dir = meta.is_dir() || is_tablespace_link;
            let (file_type, meta) = (meta.file_type(), Meta::of(&meta));
            let found = |rel: &str, kind, class, link_target: Option<String>| Found {
                rel: rel.into(),
                root: root_no,
                kind,
                class,
                meta,
                link_target: link_target.map(String::into_boxed_str),
            };
            let class = match datadir::classify(Path::new(&rel), is_dir) {
                Entry::Skip => continue,
                Entry::SkipContents => {
                    out.push(found(&rel, FileKind::Directory, FileClass::Other, None));
                    continue;
                }
                Entry::Include(class) => class,
            };
            if !init_forks.is_empty() && datadir::is_unlogged_non_init(&name, &init_forks) {
                continue;
            }
            if is_tablespace_link {
                let target = std::fs::read_link(&abs).with_context(|| format!("cannot read link {}", abs.display()))?;
                out.push(found(&rel, FileKind::Symlink, class, Some(target.to_string_lossy().into_owned())));
                roots.0.push((rel.clone(), target.clone()));
                subdirs.push((target, rel, (roots.0.len() - 1) as u32));
            } else if file_type.is_dir() {
                out.push(found(&rel, FileKind::Directory, class, None));
                subdirs.push((abs, rel, root_no));
            } else if file_type.is_file() {
                out.push(found(&rel, FileKind::File, class, None));
            } else if file_type.is_symlink() {
                // Other links (pg_wal pointing elsewhere is handled by SkipContents): keep the link itself.
                let target = std::fs::read_link(&abs).map(|t| t.to_string_lossy().into_owned()).unwrap_or_default();
                out.push(found(&rel, FileKind::Symlink, class, Some(target)));
            }
        }
        // Depth-first, in name order.
        stack.extend(subdirs.into_iter().rev());
    }
    Ok((out, roots))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;

    fn touch(path: &Path, bytes: &[u8]) {
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    }

    fn listed(found: &[Found]) -> Vec<(&str, FileKind)> {
        found.iter().map(|f| (&*f.rel, f.kind)).collect()
    }

    #[test]
    fn walk_applies_the_base_backup_exclusions_in_name_order() {
        let dir = tempfile::tempdir().unwrap();
        let data = dir.path();
        touch(&data.join("PG_VERSION"), b"15\n");
        touch(&data.join("postmaster.pid"), b"1");
        touch(&data.join("global/pg_control"), &[0; 16]);
        touch(&data.join("base/5/16384"), &[1; 8192]);
        touch(&data.join("base/5/pg_internal.init"), b"x");
        // Unlogged: only the init fork is copied.
        touch(&data.join("base/5/16390"), b"x");
        touch(&data.join("base/5/16390_init"), b"x");
        touch(&data.join("base/5/t3_16400"), b"temp relation");
        touch(&data.join("pg_wal/000000010000000000000001"), b"wal");
        fs::create_dir_all(data.join("pg_wal/archive_status")).unwrap();

        let (found, _) = walk(data).unwrap();
        assert_eq!(
            listed(&found),
            // A directory's entries in name order, then each subdirectory's, depth-first.
            [
                ("PG_VERSION", FileKind::File),
                ("base", FileKind::Directory),
                ("global", FileKind::Directory),
                ("pg_wal", FileKind::Directory),
                ("base/5", FileKind::Directory),
                ("base/5/16384", FileKind::File),
                ("base/5/16390_init", FileKind::File),
                ("global/pg_control", FileKind::File),
            ]
        );
        let relation = found.iter().find(|f| &*f.rel == "base/5/16384").unwrap();
        assert_eq!(relation.class, FileClass::Relation { segno: 0 });
        assert_eq!(relation.meta.len, 8192);
    }

    #[test]
    fn walk_follows_tablespace_links_into_their_own_root() {
        let dir = tempfile::tempdir().unwrap();
        let (data, space) = (dir.path().join("data"), dir.path().join("space"));
        touch(&data.join("PG_VERSION"), b"15\n");
        fs::create_dir_all(data.join("pg_tblspc")).unwrap();
        let version_dir = space.join(datadir::TABLESPACE_VERSION_DIRECTORY);
        touch(&version_dir.join("5/16500"), &[2; 100]);
        // Another major version's directory in the same tablespace is not this cluster's.
        touch(&space.join("PG_14_202107181/5/16501"), b"x");
        std::os::unix::fs::symlink(&space, data.join("pg_tblspc/16400")).unwrap();

        let (found, roots) = walk(&data).unwrap();
        let in_space = format!("pg_tblspc/16400/{}", datadir::TABLESPACE_VERSION_DIRECTORY);
        let file = format!("{in_space}/5/16500");
        assert_eq!(
            listed(&found),
            [
                ("PG_VERSION", FileKind::File),
                ("pg_tblspc", FileKind::Directory),
                ("pg_tblspc/16400", FileKind::Symlink),
                (in_space.as_str(), FileKind::Directory),
                (&*format!("{in_space}/5"), FileKind::Directory),
                (file.as_str(), FileKind::File),
            ]
        );
        let link = &found[2];
        assert_eq!(link.link_target.as_deref(), Some(space.to_str().unwrap()));
        let stored = found.iter().find(|f| *f.rel == *file).unwrap();
        assert_eq!(roots.abs(stored), version_dir.join("5/16500"));
        assert_eq!(roots.abs(&found[0]), data.join("PG_VERSION"));
    }

    #[test]
    fn a_missing_data_directory_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        assert!(walk(&dir.path().join("absent")).is_err());
    }
}
