//! The scratch directory and the OS user the restored server runs as. Separate because this is the part
//! that touches the host's file system and accounts (modes, ownership, socket path length), and its
//! rules (mode 0700, owned by the server's user, nothing outside the directory) hold whatever the server
//! or the checks do.

use anyhow::{anyhow, bail, Context};
use std::ffi::CStr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;
use strata_command::format_time;

/// The longest unix socket path (sun_path holds 108 bytes with the NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The scratch directory and what is in it.
pub(super) struct Scratch {
    pub(super) root: PathBuf,
    pub(super) data: PathBuf,
    pub(super) log: PathBuf,
    pub(super) sock: PathBuf,
    /// The socket directory when it is not inside `root` (a long `root`).
    pub(super) outside_sock: Option<PathBuf>,
    pub(super) port: u16,
}

/// The OS user the test server runs as.
#[derive(Clone, Debug)]
pub(super) struct OsUser {
    pub(super) name: String,
    pub(super) uid: u32,
    pub(super) gid: u32,
    pub(super) home: PathBuf,
    /// The test runs as root and the server as this user.
    pub(super) switch: bool,
}


/// The user the server runs as: `os_user` when running as root (PostgreSQL refuses root), else whoever
/// runs the test.
pub(super) fn server_user(os_user: &str) -> anyhow::Result<OsUser> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { libc::geteuid() };
    if euid == 0 {
        let u = lookup_user(Some(os_user), euid).ok_or_else(|| anyhow!("restore_test.os_user '{os_user}' is not a user of this host"))?;
        if u.uid == 0 {
            bail!("restore_test.os_user '{os_user}' is root, which PostgreSQL refuses to run as");
        }
        return Ok(OsUser { switch: true, ..u });
    }
    lookup_user(None, euid).ok_or_else(|| anyhow!("cannot find the name of user {euid}"))
}

/// A user by name, or (`None`) by uid.
fn lookup_user(name: Option<&str>, uid: u32) -> Option<OsUser> {
    let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
    let mut buf = vec![0 as libc::c_char; 16 * 1024];
    let mut found: *mut libc::passwd = std::ptr::null_mut();
    let rc = match name {
        Some(n) => {
            let cname = std::ffi::CString::new(n).ok()?;
            // SAFETY: every pointer is valid for the call; getpwnam_r writes only into pwd and buf.
            unsafe { libc::getpwnam_r(cname.as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found) }
        }
        // SAFETY: as above.
        None => unsafe { libc::getpwuid_r(uid, &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found) },
    };
    if rc != 0 || found.is_null() {
        return None;
    }
    // SAFETY: on success pw_name and pw_dir are NUL-terminated strings inside buf, which is alive.
    let (name, home) = unsafe { (CStr::from_ptr(pwd.pw_name), CStr::from_ptr(pwd.pw_dir)) };
    Some(OsUser {
        name: name.to_string_lossy().into_owned(),
        uid: pwd.pw_uid,
        gid: pwd.pw_gid,
        home: PathBuf::from(home.to_string_lossy().into_owned()),
        switch: false,
    })
}

/// Creates the scratch directory (mode 0700, owned by the server's user) and picks the socket directory.
pub(super) fn make_scratch(work_dir: Option<&Path>, stanza: &str, user: &OsUser) -> anyhow::Result<Scratch> {
    let parent = work_dir.map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
    std::fs::create_dir_all(&parent).with_context(|| format!("cannot create {}", parent.display()))?;
    let stamp = format_time(strata_command::now()).replace([' ', ':', '-'], "");
    let root = (0..100)
        .map(|n| parent.join(format!("strata-restore-test-{stanza}-{stamp}-{}-{n}", std::process::id())))
        .find(|p| std::fs::create_dir(p).is_ok())
        .ok_or_else(|| anyhow!("cannot create a scratch directory in {}", parent.display()))?;
    let give = |p: &Path| -> anyhow::Result<()> {
        std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o700))?;
        if user.switch {
            std::os::unix::fs::chown(p, Some(user.uid), Some(user.gid)).with_context(|| format!("cannot chown {}", p.display()))?;
        }
        Ok(())
    };
    give(&root)?;
    // A free loopback port, only to name the socket: the server listens on no TCP address.
    let port = std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).unwrap_or(5432);
    let inside = root.join("sock");
    // The socket's path: the directory, '/', the file name.
    let socket_path_len = inside.as_os_str().len() + 1 + ".s.PGSQL.65535".len();
    let (sock, outside_sock) = if socket_path_len <= MAX_SOCKET_PATH {
        (inside, None)
    } else {
        let short = (0..100)
            .map(|n| std::env::temp_dir().join(format!("strata-rt-{}-{n}", std::process::id())))
            .find(|p| std::fs::create_dir(p).is_ok())
            .ok_or_else(|| anyhow!("cannot create a socket directory in {}", std::env::temp_dir().display()))?;
        (short.clone(), Some(short))
    };
    if outside_sock.is_none() {
        std::fs::create_dir(&sock).with_context(|| format!("cannot create {}", sock.display()))?;
    }
    give(&sock)?;
    Ok(Scratch { data: root.join("data"), log: root.join("postgresql.log"), root, sock, outside_sock, port })
}

/// pg_hba.conf and pg_ident.conf of the scratch directory, an empty postgresql.conf if the backup has
/// none (config kept outside the data directory), and the whole tree given to the server's user.
pub(super) fn prepare_server_files(s: &Scratch, user: &OsUser) -> anyhow::Result<()> {
    std::fs::write(s.root.join("pg_hba.conf"), "# strata restore-test: the socket directory is private (0700)\nlocal all all trust\n")?;
    std::fs::write(s.root.join("pg_ident.conf"), "")?;
    let conf = s.data.join("postgresql.conf");
    if !conf.exists() {
        std::fs::write(&conf, "# strata restore-test: the backup has no postgresql.conf (kept outside the data directory)\n")?;
    }
    std::fs::File::create(&s.log)?;
    if user.switch {
        chown_tree(&s.root, user.uid, user.gid)?;
    }
    Ok(())
}

/// Gives a tree to a user without following symlinks.
fn chown_tree(root: &Path, uid: u32, gid: u32) -> anyhow::Result<()> {
    std::os::unix::fs::lchown(root, Some(uid), Some(gid)).with_context(|| format!("cannot chown {}", root.display()))?;
    if std::fs::symlink_metadata(root)?.is_dir() {
        for e in std::fs::read_dir(root)? {
            chown_tree(&e?.path(), uid, gid)?;
        }
    }
    Ok(())
}


/// Removes a directory tree, retrying a while: restore workers of an interrupted restore may still be
/// creating files in it until they notice it is gone.
pub(super) fn remove_dir(dir: &Path) -> std::io::Result<()> {
    let mut attempt = 0;
    loop {
        match std::fs::remove_dir_all(dir) {
            Ok(()) => return Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) if attempt >= 50 => return Err(e),
            Err(_) => {
                attempt += 1;
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

