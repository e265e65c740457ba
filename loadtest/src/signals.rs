//! SIGINT and SIGTERM as an error at the next wait, for every tool of this crate (`strata-scale-model`'s
//! model and `strata-bench`): the handler only records the signal, and the code that waits for a child
//! or a condition asks [`check_interrupted`] (or [`interrupted`]), so a run unwinds through its Drop
//! guards (processes stopped by pid, then cgroups, namespaces, links and directories removed) instead of
//! dying with them in place. One copy, because both tools need the same flag.

use anyhow::{bail, Result};
use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::SeqCst);
}

/// Turns SIGINT and SIGTERM into an error at the next [`check_interrupted`].
pub fn install_signal_handlers() {
    for sig in [libc::SIGINT, libc::SIGTERM] {
        // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
        unsafe {
            libc::signal(sig, on_signal as *const () as libc::sighandler_t);
        }
    }
}

/// Whether SIGINT or SIGTERM arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::SeqCst)
}

/// An error if SIGINT or SIGTERM arrived.
pub fn check_interrupted() -> Result<()> {
    if interrupted() {
        bail!("interrupted");
    }
    Ok(())
}
