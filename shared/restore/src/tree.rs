//! The tree writer: the one place a restore, full or delta, lays out a data directory's directories,
//! tablespace links and file metadata, and makes them durable.
//!
//! Full and delta restore once each had their own copy of this and the copies drifted apart (a delta
//! restore created any link's target and left its mode as it found it); PostgreSQL does not care which kind
//! of restore wrote a directory, so neither may the result. The rules kept here:
//! - A directory gets the backup's mode and, when running as root, the backup's owner.
//! - A tablespace goes where `--tablespace-map` (or the restore test's scratch root) says, else to its
//!   original location; its directory is created with mode 0700, as PostgreSQL creates one, and the link in
//!   `pg_tblspc` points at it. A full restore refuses a tablespace directory that is not empty, as it does
//!   the data directory; a map entry for a tablespace the backup lacks is refused by both.
//! - Every directory written, tablespace directories included, is fsynced before the restore reports
//!   success, so a crash after "restored" cannot lose a file's directory entry.

use anyhow::{anyhow, bail, Context};
use std::collections::HashMap;
use std::fs::{self, File};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, UNIX_EPOCH};
use strata_messages::{FileEntry, FileKind, Manifest};

/// The mode PostgreSQL gives a tablespace directory it creates, and requires of the data directory.
const PRIVATE_DIR_MODE: u32 = 0o700;

/// Where each tablespace's link (`pg_tblspc/<oid>`, as the manifest names it) points after the restore.
pub(crate) type TablespaceDirs = HashMap<String, PathBuf>;

/// Whether files get the backup's owners: only root can give them away.
pub(crate) fn running_as_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Refuses a directory that exists and holds anything.
pub(crate) fn check_empty(dir: &Path) -> anyhow::Result<()> {
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

/// `--tablespace-map OID=DIR` options, by OID.
pub(crate) fn parse_tablespace_map(args: &[String]) -> anyhow::Result<HashMap<u32, PathBuf>> {
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
pub(crate) fn plan_tablespaces(
    manifest: &Manifest,
    remap: &HashMap<u32, PathBuf>,
    delta: bool,
) -> anyhow::Result<TablespaceDirs> {
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

/// Gives `path` the owner of `e` when running as root (a link itself, not what it points at).
pub(crate) fn set_owner(path: &Path, e: &FileEntry, as_root: bool) -> anyhow::Result<()> {
    if as_root {
        std::os::unix::fs::lchown(path, Some(e.uid), Some(e.gid))
            .with_context(|| format!("cannot set the owner of {}", path.display()))?;
    }
    Ok(())
}

/// Gives a written file the backup's mode, mtime and owner; `sync`: fsync it too (a file whose bytes were
/// written; an unchanged one has nothing to make durable).
pub(crate) fn set_file_metadata(f: &File, path: &Path, e: &FileEntry, as_root: bool, sync: bool) -> anyhow::Result<()> {
    f.set_permissions(fs::Permissions::from_mode(e.mode)).with_context(|| format!("cannot chmod {}", path.display()))?;
    f.set_modified(UNIX_EPOCH + Duration::from_secs(e.mtime.max(0) as u64))
        .with_context(|| format!("cannot set the mtime of {}", path.display()))?;
    if sync {
        f.sync_all().with_context(|| format!("cannot sync {}", path.display()))?;
    }
    set_owner(path, e, as_root)
}

/// A data directory being written: its root, and every directory to fsync once the restore is done.
pub(crate) struct TreeWriter {
    root: PathBuf,
    as_root: bool,
    dirs: Vec<PathBuf>,
}

impl TreeWriter {
    /// For a full restore: creates the (checked empty) data directory with mode 0700, owned by whoever owns
    /// the backup's files (PostgreSQL refuses any other owner).
    pub(crate) fn create(pg_data: &Path, files: &[FileEntry]) -> anyhow::Result<TreeWriter> {
        fs::create_dir_all(pg_data).with_context(|| format!("cannot create {}", pg_data.display()))?;
        fs::set_permissions(pg_data, fs::Permissions::from_mode(PRIVATE_DIR_MODE))?;
        let tree = TreeWriter::open(pg_data)?;
        if let Some(owner) = files.iter().find(|f| f.path == "PG_VERSION") {
            set_owner(&tree.root, owner, tree.as_root)?;
        }
        Ok(tree)
    }

    /// For a delta restore: an existing data directory, left with its own mode and owner.
    pub(crate) fn open(pg_data: &Path) -> anyhow::Result<TreeWriter> {
        let root = fs::canonicalize(pg_data).with_context(|| format!("cannot resolve {}", pg_data.display()))?;
        Ok(TreeWriter { dirs: vec![root.clone()], root, as_root: running_as_root() })
    }

    pub(crate) fn root(&self) -> &Path {
        &self.root
    }

    pub(crate) fn as_root(&self) -> bool {
        self.as_root
    }

    /// Creates the backup's directories and links, parents before children (a path sorts after its
    /// prefix); a link that already points where it should is left alone.
    pub(crate) fn write_dirs_and_links(&mut self, files: &[FileEntry], tablespace_dirs: &TablespaceDirs) -> anyhow::Result<()> {
        let mut tree: Vec<&FileEntry> = files.iter().filter(|e| e.kind != FileKind::File).collect();
        tree.sort_by(|a, b| a.path.cmp(&b.path));
        for e in tree {
            let path = self.root.join(&e.path);
            match e.kind {
                FileKind::Directory => {
                    fs::create_dir_all(&path).with_context(|| format!("cannot create {}", path.display()))?;
                    fs::set_permissions(&path, fs::Permissions::from_mode(e.mode))?;
                    self.dirs.push(path.clone());
                }
                FileKind::Symlink => self.write_link(&path, e, tablespace_dirs)?,
                FileKind::File => continue,
            }
            set_owner(&path, e, self.as_root)?;
        }
        Ok(())
    }

    /// A link from the manifest; a tablespace's directory is created first (0700, the link's owner).
    fn write_link(&mut self, path: &Path, e: &FileEntry, tablespace_dirs: &TablespaceDirs) -> anyhow::Result<()> {
        let target = match tablespace_dirs.get(&e.path) {
            Some(dir) => {
                fs::create_dir_all(dir).with_context(|| format!("cannot create tablespace directory {}", dir.display()))?;
                fs::set_permissions(dir, fs::Permissions::from_mode(PRIVATE_DIR_MODE))?;
                set_owner(dir, e, self.as_root)?;
                self.dirs.push(dir.clone());
                dir.clone()
            }
            None => PathBuf::from(&e.link_target),
        };
        if fs::read_link(path).ok().as_ref() != Some(&target) {
            symlink(&target, path).with_context(|| format!("cannot create link {}", path.display()))?;
        }
        Ok(())
    }

    /// Fsyncs every directory written, so that the entries of the files and links in them are durable.
    pub(crate) fn sync(&self) -> anyhow::Result<()> {
        for d in &self.dirs {
            File::open(d).and_then(|d| d.sync_all()).with_context(|| format!("cannot sync {}", d.display()))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(path: &str, kind: FileKind, mode: u32, link_target: &str) -> FileEntry {
        FileEntry {
            path: path.into(),
            kind,
            mode,
            uid: 0,
            gid: 0,
            mtime: 0,
            size: 0,
            link_target: link_target.into(),
            pieces: Vec::new(),
            page_hashes: Vec::new(),
        }
    }

    fn mode(p: &Path) -> u32 {
        fs::symlink_metadata(p).unwrap().permissions().mode() & 0o7777
    }

    /// A full restore (into nothing) and a delta restore (over a directory whose tablespace directory
    /// exists with another mode and whose link is missing) leave the same modes and links.
    #[test]
    fn full_and_delta_restore_write_the_same_tree() {
        let scratch = tempfile::tempdir().unwrap();
        let files = [
            entry("base", FileKind::Directory, 0o700, ""),
            entry("base/1", FileKind::Directory, 0o750, ""),
            entry("pg_tblspc", FileKind::Directory, 0o700, ""),
            entry("pg_tblspc/16385", FileKind::Symlink, 0o777, "/nowhere/original"),
        ];
        let mut results = Vec::new();
        for kind in ["full", "delta"] {
            let pg_data = scratch.path().join(kind).join("data");
            let space = scratch.path().join(kind).join("space");
            let dirs: TablespaceDirs = [("pg_tblspc/16385".to_string(), space.clone())].into();
            let mut tree = if kind == "full" {
                fs::create_dir_all(pg_data.parent().unwrap()).unwrap();
                TreeWriter::create(&pg_data, &files).unwrap()
            } else {
                fs::create_dir_all(pg_data.join("base/1")).unwrap();
                fs::create_dir_all(&space).unwrap();
                fs::set_permissions(&space, fs::Permissions::from_mode(0o755)).unwrap();
                TreeWriter::open(&pg_data).unwrap()
            };
            tree.write_dirs_and_links(&files, &dirs).unwrap();
            tree.sync().unwrap();
            let root = tree.root().to_path_buf();
            results.push((
                mode(&root.join("base")),
                mode(&root.join("base/1")),
                mode(&space),
                fs::read_link(root.join("pg_tblspc/16385")).unwrap().strip_prefix(scratch.path().join(kind)).unwrap().to_path_buf(),
            ));
        }
        assert_eq!(results[0], (0o700, 0o750, 0o700, PathBuf::from("space")));
        assert_eq!(results[0], results[1]);
    }

    #[test]
    fn a_link_that_points_right_is_kept_and_an_unmapped_one_is_written_as_backed_up() {
        let scratch = tempfile::tempdir().unwrap();
        let files = [entry("pg_wal", FileKind::Symlink, 0o777, "/elsewhere/wal")];
        let mut tree = TreeWriter::open(scratch.path()).unwrap();
        tree.write_dirs_and_links(&files, &TablespaceDirs::new()).unwrap();
        // Written again over itself (a delta restore over a finished one): nothing to do, no error.
        tree.write_dirs_and_links(&files, &TablespaceDirs::new()).unwrap();
        assert_eq!(fs::read_link(scratch.path().join("pg_wal")).unwrap(), PathBuf::from("/elsewhere/wal"));
        // Its target is not created: only tablespace directories are.
        assert!(!Path::new("/elsewhere/wal").exists());
    }
}
