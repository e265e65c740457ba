//! Loopback ports for test servers.
//!
//! # Why not "bind port 0 and pass the number on"
//! The servers are separate programs that bind for themselves, so there is a window between finding a free
//! port and the server binding it. With an ephemeral port (what `:0` hands out) that window is dangerous:
//! the kernel hands the same range to every outgoing connection on the machine. Like pgBackRest's test
//! harness, ports come from a range *below* the ephemeral range (which starts at 32768 on Linux), where
//! only programs that ask for a specific port ever land.
//!
//! # Why three checks
//! - A process-wide counter hands each test thread a different port.
//! - A lock file per port (`/tmp/strata-test-ports/<port>.lock`, `flock`ed for as long as the [`Port`] lives)
//!   keeps *other* test processes on this machine (other engineers' runs) off the same port; the kernel
//!   drops the lock if the process dies, so a crashed run leaks nothing.
//! - A bind to `127.0.0.1:<port>` proves nothing else (a stray server) holds it right now.
//!
//! Each process starts at a pid-derived offset in the range, so concurrent runs rarely even contend.

use std::fs::{File, OpenOptions};
use std::net::TcpListener;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

/// First port handed out.
pub const PORT_RANGE_START: u16 = 15000;
/// One past the last port handed out: the start of Linux's default ephemeral range.
pub const PORT_RANGE_END: u16 = 32768;

/// A loopback TCP port reserved for one server for as long as this value lives (also across a server
/// restart, so `stop()` then `start_again()` gets the same port back).
#[derive(Debug)]
pub struct Port {
    port: u16,
    _lock: File,
}

impl Port {
    /// The port number.
    pub fn get(&self) -> u16 {
        self.port
    }
}

fn lock_dir() -> &'static Path {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = PathBuf::from("/tmp/strata-test-ports");
        if let Err(e) = std::fs::create_dir(&dir) {
            if e.kind() != std::io::ErrorKind::AlreadyExists {
                panic!("cannot create {}: {e}", dir.display());
            }
        } else {
            // Sticky and world-writable like /tmp, so runs under different accounts share the locks.
            std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o1777))
                .unwrap_or_else(|e| panic!("cannot chmod {}: {e}", dir.display()));
        }
        dir
    })
}

fn next_candidate() -> u16 {
    static NEXT: OnceLock<AtomicU32> = OnceLock::new();
    let span = u32::from(PORT_RANGE_END - PORT_RANGE_START);
    let counter = NEXT.get_or_init(|| AtomicU32::new((std::process::id().wrapping_mul(97)) % span));
    let n = counter.fetch_add(1, Ordering::Relaxed) % span;
    PORT_RANGE_START + u16::try_from(n).expect("n < span <= u16::MAX")
}

fn try_lock(port: u16) -> Option<File> {
    let path = lock_dir().join(format!("{port}.lock"));
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o666)
        .open(&path)
        // A lock file made by another account may not be writable; flock works on a read-only handle too.
        .or_else(|_| File::open(&path))
        .ok()?;
    // SAFETY: flock on a valid descriptor we own; LOCK_NB makes it fail instead of blocking.
    let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    (rc == 0).then_some(file)
}

/// Reserves a free loopback port below the ephemeral range (see the module docs).
pub fn reserve_port() -> Port {
    let span = usize::from(PORT_RANGE_END - PORT_RANGE_START);
    for _ in 0..span {
        let port = next_candidate();
        let Some(lock) = try_lock(port) else { continue };
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Port { port, _lock: lock };
        }
    }
    panic!("no free loopback port in {PORT_RANGE_START}..{PORT_RANGE_END}")
}
