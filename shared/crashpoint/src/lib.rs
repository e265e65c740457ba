//! Crash points: named places just before or after each durable step of backup, commit, archive-push,
//! expire, rekey and replication, where a test kills the process to prove that a crash there leaves the
//! repository consistent (`integration/tests/crash_points.rs` walks through every one).
//!
//! # Why kill, and not return an error
//! A crash runs no cleanup: no `Drop`, no error path, no removal of markers or temporary files. That is
//! the case the commit rule must survive, and the one an error return cannot simulate. So the only
//! action is to end the process where it stands: `kill` (SIGKILL to itself, as the OOM killer or a power
//! loss would) or `exit` (exit code [`EXIT_CODE`] without unwinding, for a test that wants to tell the
//! crash from a signal).
//!
//! # Configuring
//! The `FAILPOINTS` environment variable of the process, in the `fail` crate's syntax:
//! `FAILPOINTS='backup.before-commit=return(kill)'`, or `2*off->return(kill)` for the third time the
//! point is reached. [`setup`] reads it when a binary starts.
//!
//! # Cost
//! Without the `failpoints` feature (release builds), [`hit`] is an empty inline function and [`setup`]
//! does nothing: crash points are compiled in only for the test suite.

/// The exit code of the `exit` action.
pub const EXIT_CODE: i32 = 86;

/// Reads `FAILPOINTS` (see the module docs) once, for the life of the process. `strata_runtime`'s
/// logging set-up calls it, so every binary has its crash points configured before it does any work.
pub fn setup() {
    #[cfg(feature = "failpoints")]
    {
        static ONCE: std::sync::Once = std::sync::Once::new();
        // The scenario's teardown on drop would clear the configuration: it must outlive the process.
        ONCE.call_once(|| std::mem::forget(fail::FailScenario::setup()));
    }
}

/// A crash point: ends the process here when `FAILPOINTS` says so for `name`, else does nothing.
#[inline(always)]
pub fn hit(name: &'static str) {
    #[cfg(feature = "failpoints")]
    fail::fail_point!(name, |action: Option<String>| crash(name, action.as_deref()));
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}

#[cfg(feature = "failpoints")]
fn crash(name: &str, action: Option<&str>) -> ! {
    // One line on stderr first, so a test can tell its crash point was reached rather than some other death.
    eprintln!("crash point {name}: {}", action.unwrap_or("kill"));
    match action {
        Some("exit") => {
            // SAFETY: _exit ends the process at once; nothing of ours runs after it.
            unsafe { libc::_exit(EXIT_CODE) }
        }
        _ => {
            // SAFETY: sending a signal to our own pid has no memory effects.
            unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
            // SIGKILL cannot be caught; should delivery lag, stop here anyway.
            unsafe { libc::_exit(EXIT_CODE) }
        }
    }
}
