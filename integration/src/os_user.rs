//! Running things as the `postgres` OS user, and handing files to it.
//!
//! Tests run as root, but `initdb` and `postgres` refuse to run as root, and PostgreSQL runs the
//! `archive_command` (and so `strata archive-push`) as its own user. Everything PostgreSQL touches, and
//! everything the Strata processes share with the archive command (config file, repository), therefore
//! belongs to `postgres`.
//!
//! Commands switch user with [`CommandExt::uid`]/[`CommandExt::gid`] in the child just before `exec`
//! (std also drops root's supplementary groups there), instead of wrapping them in `runuser`: the spawned
//! process is then the program itself, so its pid is the one to signal and its exit status is the
//! program's.
//!
//! When the tests do not run as root (a developer's own account), everything simply runs as that user and
//! nothing is chowned: `initdb` accepts any non-root user.

use std::ffi::{CStr, OsStr};
use std::io;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

/// The OS account PostgreSQL and the Strata processes run as.
#[derive(Debug, Clone)]
pub(crate) struct PgOsUser {
    pub uid: u32,
    pub gid: u32,
    pub home: PathBuf,
}

/// The `postgres` account when running as root; `None` when not root (then the current user serves).
pub(crate) fn postgres_user() -> Option<&'static PgOsUser> {
    static USER: OnceLock<Option<PgOsUser>> = OnceLock::new();
    USER.get_or_init(|| {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            return None;
        }
        Some(lookup("postgres").unwrap_or_else(|| {
            panic!(
                "running as root but there is no `postgres` OS user to run PostgreSQL as \
                 (it comes with the postgresql-15 package: run scripts/install-deps.sh)"
            )
        }))
    })
    .as_ref()
}

fn lookup(name: &str) -> Option<PgOsUser> {
    let cname = std::ffi::CString::new(name).expect("user name has no NUL");
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut result: *mut libc::passwd = std::ptr::null_mut();
    // SAFETY: every pointer is valid for the call; getpwnam_r writes only into pwd and buf, and result
    // points into them (or is NULL) afterwards.
    let rc = unsafe {
        libc::getpwnam_r(
            cname.as_ptr(),
            &mut pwd,
            buf.as_mut_ptr(),
            buf.len(),
            &mut result,
        )
    };
    if rc != 0 || result.is_null() {
        return None;
    }
    // SAFETY: on success pw_dir is a NUL-terminated string inside buf, which is still alive.
    let home = unsafe { CStr::from_ptr(pwd.pw_dir) }
        .to_string_lossy()
        .into_owned();
    Some(PgOsUser {
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
        home: PathBuf::from(home),
    })
}

/// A command that runs `program` as the `postgres` user (as the current user when not root), with a
/// matching HOME/USER/LOGNAME and `/` as working directory, since the caller's directory (often
/// `/root/...`) is not readable by `postgres` and initdb/pg_ctl complain about that.
pub fn command_as_postgres(program: impl AsRef<OsStr>) -> Command {
    let mut cmd = Command::new(program);
    cmd.current_dir("/");
    if let Some(user) = postgres_user() {
        cmd.uid(user.uid).gid(user.gid);
        cmd.env("HOME", &user.home)
            .env("USER", "postgres")
            .env("LOGNAME", "postgres");
    }
    cmd
}

/// Gives `path` (not recursive) to the `postgres` user; a no-op when not root.
pub(crate) fn chown_to_postgres(path: &Path) -> io::Result<()> {
    match postgres_user() {
        Some(user) => std::os::unix::fs::lchown(path, Some(user.uid), Some(user.gid)),
        None => Ok(()),
    }
}

/// Gives a whole tree to the `postgres` user without following symlinks (a restored data directory may
/// hold tablespace links that point elsewhere); a no-op when not root.
pub(crate) fn chown_tree_to_postgres(root: &Path) -> io::Result<()> {
    if postgres_user().is_none() {
        return Ok(());
    }
    chown_to_postgres(root)?;
    let meta = std::fs::symlink_metadata(root)?;
    if meta.is_dir() {
        for entry in std::fs::read_dir(root)? {
            chown_tree_to_postgres(&entry?.path())?;
        }
    }
    Ok(())
}
