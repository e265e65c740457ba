//! One temporary directory per test, holding every server's files and logs.
//!
//! Like garage's test harness, each server writes its config and its logs into the test's own directory,
//! so a failed test leaves its whole story in one place, and parallel tests cannot see each other's files.
//!
//! # Where and who
//! The directory is created under `/tmp` (or `$STRATA_TEST_TMPDIR`), never under the caller's `$TMPDIR` or
//! home: PostgreSQL and the `archive_command` run as `postgres`, which must be able to traverse every
//! parent (`/root` is mode 0700). The directory itself is mode 0755 and owned by `postgres`.
//!
//! # Lifetime
//! [`TestDir`] is a cheap clone around one shared directory. Every server handle keeps a clone, so the
//! directory is removed only after the last server in it has been stopped, whatever order the test's
//! variables are dropped in.
//!
//! # Keeping it
//! When the test panics, the tails of the `*.log` files in the directory are printed to stderr (cargo
//! shows them with the failure). `STRATA_KEEP_TEST_DIRS=1` also keeps the directory of a failed test;
//! `STRATA_KEEP_TEST_DIRS=always` keeps every test's directory. A test that fails by *returning* an `Err`
//! is not seen as failed here (the error is printed only after the directory is dropped), so harness
//! users write tests that panic.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::os_user::chown_to_postgres;
use crate::process::log_tail;

/// Environment variable: `1` keeps the directories of failed tests, `always` keeps all of them.
pub const KEEP_ENV: &str = "STRATA_KEEP_TEST_DIRS";
/// Environment variable: the parent of test directories (default `/tmp`).
pub const TMPDIR_ENV: &str = "STRATA_TEST_TMPDIR";

/// A test's temporary directory (mode 0755, owned by `postgres`). See the module docs.
#[derive(Clone, Debug)]
pub struct TestDir {
    inner: Arc<Inner>,
}

#[derive(Debug)]
struct Inner {
    path: PathBuf,
    dir: Option<tempfile::TempDir>,
}

impl TestDir {
    /// Creates `/tmp/strata-<name>-XXXXXX`. `name` is usually the test's name, so a kept directory is
    /// easy to find.
    pub fn new(name: &str) -> TestDir {
        let parent = std::env::var_os(TMPDIR_ENV)
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from("/tmp"));
        let dir = tempfile::Builder::new()
            .prefix(&format!("strata-{name}-"))
            .tempdir_in(&parent)
            .unwrap_or_else(|e| {
                panic!(
                    "cannot create a test directory in {}: {e}",
                    parent.display()
                )
            });
        let path = dir.path().to_path_buf();
        make_shared_dir(&path);
        TestDir {
            inner: Arc::new(Inner {
                path,
                dir: Some(dir),
            }),
        }
    }

    /// The directory's path.
    pub fn path(&self) -> &Path {
        &self.inner.path
    }

    /// Creates (if needed) the subdirectory `rel`, and any missing parents inside the test directory,
    /// each mode 0755 and owned by `postgres`; returns its path. Use it for repositories, restore targets
    /// and anything else the `postgres` user or a Strata process must write.
    pub fn subdir(&self, rel: impl AsRef<Path>) -> PathBuf {
        let rel = rel.as_ref();
        assert!(
            rel.is_relative(),
            "subdir takes a relative path, got {}",
            rel.display()
        );
        let mut path = self.inner.path.clone();
        for component in rel.components() {
            path.push(component);
            match fs::create_dir(&path) {
                Ok(()) => make_shared_dir(&path),
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
                Err(e) => panic!("cannot create {}: {e}", path.display()),
            }
        }
        path
    }
}

fn make_shared_dir(path: &Path) {
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))
        .unwrap_or_else(|e| panic!("cannot chmod 0755 {}: {e}", path.display()));
    chown_to_postgres(path)
        .unwrap_or_else(|e| panic!("cannot chown {} to postgres: {e}", path.display()));
}

impl Drop for Inner {
    fn drop(&mut self) {
        let failed = std::thread::panicking();
        if failed {
            dump_logs(&self.path);
        }
        let keep = match std::env::var(KEEP_ENV).as_deref() {
            Ok("always") => true,
            Ok("1") => failed,
            _ => false,
        };
        if let Some(dir) = self.dir.take() {
            if keep {
                let path = dir.keep();
                eprintln!("kept test directory {} ({KEEP_ENV} is set)", path.display());
            } else if let Err(e) = dir.close() {
                eprintln!(
                    "could not remove test directory {}: {e}",
                    self.path.display()
                );
            }
        }
    }
}

/// Prints the tail of every `*.log` up to three levels deep (server logs live one or two levels down; data
/// directories are deeper and hold no logs of ours).
fn dump_logs(root: &Path) {
    let mut logs = Vec::new();
    collect_logs(root, 3, &mut logs);
    logs.sort();
    for log in logs {
        eprintln!("{}", log_tail(&log, 40));
    }
}

fn collect_logs(dir: &Path, depth: usize, out: &mut Vec<PathBuf>) {
    let Ok(entries) = fs::read_dir(dir) else {
        return;
    };
    for entry in entries.flatten() {
        let path = entry.path();
        let Ok(kind) = entry.file_type() else {
            continue;
        };
        if kind.is_dir() && depth > 1 {
            collect_logs(&path, depth - 1, out);
        } else if kind.is_file() && path.extension().is_some_and(|e| e == "log") {
            out.push(path);
        }
    }
}
