//! A repository on a local or mounted file system.
//!
//! Durability: every object is written to a temporary name in its final directory, fsynced, then renamed (or,
//! for `put_new`, hard-linked, which fails if the name exists) and the directory fsynced, as are directories
//! this call created. Only then does the call return: a crash leaves either the old state or the complete new
//! object, plus perhaps a `.tmp-*` file that readers ignore (`list` leaves them out; `list_temporary` finds
//! them for expire, which removes those older than its grace period).

use super::{Features, ObjectInfo, Result, Storage, StorageError};
use async_trait::async_trait;
use bytes::Bytes;
use std::fs::{self, File};
use std::io::{ErrorKind, Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use strata_directio::OutFile;

const TMP_PREFIX: &str = ".tmp-";
/// Objects under this directory (the wrapped data key, `keys/strata.keys`) are created mode 0600: a wrap
/// under a passphrase can be attacked offline by whoever reads it, and only the repository's owner (and
/// root) run Strata.
const PRIVATE_DIR: &str = "keys";

#[derive(Debug, Clone)]
pub struct PosixStorage {
    root: PathBuf,
    /// When running as root, what this storage creates is handed to the repository's owner, so a command
    /// run as root (a restore, a manual backup) never leaves files that the archive_command, running as
    /// `postgres`, can no longer write beside.
    chown_to: Option<(u32, u32)>,
}

impl PosixStorage {
    /// A repository rooted at `root`, which must exist: a missing repository is a configuration error, not
    /// something to create silently on the wrong mount.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self> {
        let root = root.into();
        match fs::metadata(&root) {
            Ok(m) if m.is_dir() => {
                use std::os::unix::fs::MetadataExt;
                // SAFETY: geteuid has no preconditions and cannot fail.
                let as_root = unsafe { libc::geteuid() } == 0;
                let chown_to = (as_root && m.uid() != 0).then(|| (m.uid(), m.gid()));
                Ok(PosixStorage { root, chown_to })
            }
            Ok(_) => Err(StorageError::Corrupt { path: root.display().to_string(), reason: "not a directory".into() }),
            Err(e) if e.kind() == ErrorKind::NotFound => Err(StorageError::Corrupt {
                path: root.display().to_string(),
                reason: "repository directory does not exist".into(),
            }),
            Err(e) => Err(io_err(&root, e)),
        }
    }

    fn full(&self, path: &str) -> PathBuf {
        self.root.join(path)
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Root) -> Result<T> + Send + 'static,
    ) -> Result<T> {
        let root = Root { path: self.root.clone(), chown_to: self.chown_to };
        tokio::task::spawn_blocking(move || f(&root)).await.expect("storage task panicked")
    }
}

/// The repository root as the blocking helpers see it.
struct Root {
    path: PathBuf,
    chown_to: Option<(u32, u32)>,
}

impl Root {
    fn give_away(&self, path: &Path) -> Result<()> {
        if let Some((uid, gid)) = self.chown_to {
            std::os::unix::fs::lchown(path, Some(uid), Some(gid)).map_err(|e| io_err(path, e))?;
        }
        Ok(())
    }
}

fn io_err(path: &Path, e: std::io::Error) -> StorageError {
    let path = path.display().to_string();
    match e.kind() {
        ErrorKind::NotFound => StorageError::NotFound { path },
        ErrorKind::AlreadyExists => StorageError::AlreadyExists { path },
        ErrorKind::PermissionDenied => StorageError::PermissionDenied { path },
        _ => StorageError::Io { path, source: e },
    }
}

fn fsync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_err(dir, e))
}

/// Creates `dir` and missing parents below `root`, fsyncing each parent whose entry list changed.
fn create_dirs(root: &Root, dir: &Path) -> Result<()> {
    if dir.is_dir() {
        return Ok(());
    }
    if let Some(parent) = dir.parent() {
        if parent != root.path && parent.starts_with(&root.path) {
            create_dirs(root, parent)?;
        }
    }
    match fs::create_dir(dir) {
        Ok(()) => {
            root.give_away(dir)?;
            fsync_dir(dir.parent().unwrap_or(&root.path))
        }
        Err(e) if e.kind() == ErrorKind::AlreadyExists => Ok(()),
        Err(e) => Err(io_err(dir, e)),
    }
}

fn write_tmp(root: &Root, target: &Path, data: &[u8]) -> Result<PathBuf> {
    let dir = target.parent().unwrap_or(&root.path);
    create_dirs(root, dir)?;
    let name = target.file_name().and_then(|n| n.to_str()).unwrap_or("object");
    let tmp = dir.join(format!("{TMP_PREFIX}{name}-{:016x}", rand::random::<u64>()));
    // Packs arrive in aligned buffers (see strata_directio): their bulk is written without the page cache.
    let written = OutFile::create_new(&tmp, data.len() as u64)
        .and_then(|mut f| {
            f.write_at(data, 0)?;
            let f = f.into_file();
            if target.starts_with(root.path.join(PRIVATE_DIR)) {
                use std::os::unix::fs::PermissionsExt;
                f.set_permissions(fs::Permissions::from_mode(0o600))?;
            }
            f.sync_all()
        })
        .map_err(|e| io_err(&tmp, e));
    if let Err(e) = written.and_then(|_| root.give_away(&tmp)) {
        let _ = fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

#[async_trait]
impl Storage for PosixStorage {
    fn describe(&self) -> String {
        format!("posix:{}", self.root.display())
    }


    async fn capacity(&self) -> Result<Option<crate::Capacity>> {
        let root = self.root.clone();
        let stat = tokio::task::spawn_blocking(move || {
            let c = std::ffi::CString::new(root.as_os_str().as_encoded_bytes()).map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))?;
            let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
            // SAFETY: `c` is a NUL-terminated path and `st` a valid out-pointer for the call's duration.
            if unsafe { libc::statvfs(c.as_ptr(), &mut st) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(st)
        })
        .await
        .expect("statvfs task panicked")
        .map_err(|e| io_err(&self.root, e))?;
        let frsize = stat.f_frsize as u64;
        Ok(Some(crate::Capacity {
            size_bytes: stat.f_blocks as u64 * frsize,
            used_bytes: (stat.f_blocks as u64).saturating_sub(stat.f_bfree as u64) * frsize,
            free_bytes: stat.f_bavail as u64 * frsize,
        }))
    }

    fn features(&self) -> Features {
        Features { directories: true }
    }

    async fn check_writable(&self) -> Result<()> {
        self.blocking(|root| {
            let probe = root.path.join(format!("{TMP_PREFIX}probe-{:016x}", rand::random::<u64>()));
            File::create(&probe).map_err(|e| io_err(&root.path, e))?;
            fs::remove_file(&probe).map_err(|e| io_err(&probe, e))
        })
        .await
    }

    async fn put(&self, path: &str, data: Bytes) -> Result<()> {
        let target = self.full(path);
        self.blocking(move |root| {
            let tmp = write_tmp(root, &target, &data)?;
            // The temporary file is durable and has no name a reader looks for.
            strata_crashpoint::hit("posix.put.before-rename");
            if let Err(e) = fs::rename(&tmp, &target) {
                let _ = fs::remove_file(&tmp);
                return Err(io_err(&target, e));
            }
            fsync_dir(target.parent().unwrap_or(&root.path))
        })
        .await
    }

    async fn put_new(&self, path: &str, data: Bytes) -> Result<()> {
        let target = self.full(path);
        self.blocking(move |root| {
            if target.exists() {
                return Err(StorageError::AlreadyExists { path: target.display().to_string() });
            }
            let tmp = write_tmp(root, &target, &data)?;
            strata_crashpoint::hit("posix.put_new.before-link");
            // link(2) refuses an existing name atomically, which rename(2) would silently replace.
            let linked = fs::hard_link(&tmp, &target);
            let _ = fs::remove_file(&tmp);
            linked.map_err(|e| io_err(&target, e))?;
            fsync_dir(target.parent().unwrap_or(&root.path))
        })
        .await
    }

    async fn get(&self, path: &str) -> Result<Bytes> {
        let target = self.full(path);
        self.blocking(move |_| fs::read(&target).map(Bytes::from).map_err(|e| io_err(&target, e))).await
    }

    async fn get_range(&self, path: &str, offset: u64, len: u64) -> Result<Bytes> {
        let target = self.full(path);
        self.blocking(move |_| {
            let mut f = File::open(&target).map_err(|e| io_err(&target, e))?;
            f.seek(SeekFrom::Start(offset)).map_err(|e| io_err(&target, e))?;
            let mut buf = vec![0u8; len as usize];
            f.read_exact(&mut buf).map_err(|e| match e.kind() {
                ErrorKind::UnexpectedEof => StorageError::Corrupt {
                    path: target.display().to_string(),
                    reason: format!("shorter than {} bytes", offset + len),
                },
                _ => io_err(&target, e),
            })?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn size(&self, path: &str) -> Result<Option<u64>> {
        let target = self.full(path);
        self.blocking(move |_| match fs::metadata(&target) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
            Err(e) => Err(io_err(&target, e)),
        })
        .await
    }

    async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.walk(prefix, false).await
    }

    async fn list_temporary(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.walk(prefix, true).await
    }

    async fn delete(&self, path: &str) -> Result<()> {
        let target = self.full(path);
        self.blocking(move |root| {
            fs::remove_file(&target).map_err(|e| io_err(&target, e))?;
            fsync_dir(target.parent().unwrap_or(&root.path))
        })
        .await
    }
}

impl PosixStorage {
    /// Every file under `prefix`, recursively, sorted: the objects, or (`temporary`) only the temporary
    /// files of writes that never finished.
    async fn walk(&self, prefix: &str, temporary: bool) -> Result<Vec<ObjectInfo>> {
        let start = self.full(prefix);
        self.blocking(move |root| {
            let mut out = Vec::new();
            let mut stack = vec![start];
            while let Some(dir) = stack.pop() {
                let entries = match fs::read_dir(&dir) {
                    Ok(e) => e,
                    Err(e) if e.kind() == ErrorKind::NotFound => continue,
                    Err(e) => return Err(io_err(&dir, e)),
                };
                for entry in entries {
                    let entry = entry.map_err(|e| io_err(&dir, e))?;
                    let is_tmp = entry.file_name().to_string_lossy().starts_with(TMP_PREFIX);
                    let meta = match entry.metadata() {
                        Ok(m) => m,
                        // Removed between readdir and stat (a finished backup's marker, an expired pack):
                        // listed or not, as on S3 an object deleted during a listing may be either.
                        Err(e) if e.kind() == ErrorKind::NotFound => continue,
                        Err(e) => return Err(io_err(&entry.path(), e)),
                    };
                    if meta.is_dir() {
                        stack.push(entry.path());
                    } else if is_tmp != temporary {
                        continue;
                    } else if let Ok(rel) = entry.path().strip_prefix(&root.path) {
                        use std::os::unix::fs::MetadataExt;
                        out.push(ObjectInfo {
                            path: rel.to_string_lossy().into_owned(),
                            size: meta.len(),
                            modified: meta.mtime(),
                        });
                    }
                }
            }
            out.sort_by(|a, b| a.path.cmp(&b.path));
            Ok(out)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn repo() -> (tempfile::TempDir, PosixStorage) {
        let dir = tempfile::tempdir().unwrap();
        let s = PosixStorage::open(dir.path()).unwrap();
        (dir, s)
    }

    #[tokio::test]
    async fn put_get_list_delete() {
        let (_d, s) = repo();
        s.check_writable().await.unwrap();
        s.put("a/b/c", Bytes::from_static(b"hello")).await.unwrap();
        s.put("a/b/c", Bytes::from_static(b"hello2")).await.unwrap();
        assert_eq!(s.get("a/b/c").await.unwrap().as_ref(), b"hello2");
        assert_eq!(s.get_range("a/b/c", 1, 3).await.unwrap().as_ref(), b"ell");
        assert!(matches!(s.get_range("a/b/c", 4, 10).await, Err(StorageError::Corrupt { .. })));
        assert_eq!(s.size("a/b/c").await.unwrap(), Some(6));
        assert_eq!(s.size("nope").await.unwrap(), None);
        let l = s.list("a").await.unwrap();
        assert_eq!((l.len(), l[0].path.as_str(), l[0].size), (1, "a/b/c", 6));
        assert!(l[0].modified > 1_700_000_000);
        assert!(s.list("missing").await.unwrap().is_empty());
        s.delete("a/b/c").await.unwrap();
        assert!(s.get("a/b/c").await.unwrap_err().is_not_found());
    }

    #[tokio::test]
    async fn put_new_never_overwrites() {
        let (_d, s) = repo();
        s.put_new("w/x", Bytes::from_static(b"one")).await.unwrap();
        let err = s.put_new("w/x", Bytes::from_static(b"two")).await.unwrap_err();
        assert!(matches!(err, StorageError::AlreadyExists { .. }));
        assert_eq!(s.get("w/x").await.unwrap().as_ref(), b"one");
        // No temporary files are left behind.
        assert_eq!(s.list("w").await.unwrap().len(), 1);
        assert_eq!(std::fs::read_dir(_d.path().join("w")).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn temporary_files_are_listed_apart() {
        let (d, s) = repo();
        s.put("p/obj", Bytes::from_static(b"1")).await.unwrap();
        // What a write killed between its temporary file and the rename leaves.
        std::fs::write(d.path().join("p/.tmp-obj2-0123456789abcdef"), b"half").unwrap();
        assert_eq!(s.list("").await.unwrap().iter().map(|o| o.path.as_str()).collect::<Vec<_>>(), ["p/obj"]);
        let tmp = s.list_temporary("").await.unwrap();
        assert_eq!(tmp.iter().map(|o| (o.path.as_str(), o.size)).collect::<Vec<_>>(), [("p/.tmp-obj2-0123456789abcdef", 4)]);
        s.delete(&tmp[0].path).await.unwrap();
        assert!(s.list_temporary("").await.unwrap().is_empty());
    }

    #[tokio::test]
    async fn root_hands_what_it_creates_to_the_repository_owner() {
        use std::os::unix::fs::MetadataExt;
        if unsafe { libc::geteuid() } != 0 {
            panic!("this test must run as root (CI does): it checks what root leaves in a repository");
        }
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::chown(dir.path(), Some(65534), Some(65534)).unwrap();
        let s = PosixStorage::open(dir.path()).unwrap();
        s.put("x/y/obj", Bytes::from_static(b"1")).await.unwrap();
        s.put_new("x/z", Bytes::from_static(b"2")).await.unwrap();
        for p in ["x", "x/y", "x/y/obj", "x/z"] {
            assert_eq!(std::fs::metadata(dir.path().join(p)).unwrap().uid(), 65534, "{p}");
        }
    }

    #[test]
    fn missing_root_is_refused() {
        let err = PosixStorage::open("/nonexistent/strata-repo").unwrap_err().to_string();
        assert!(err.contains("does not exist"), "{err}");
    }
}
