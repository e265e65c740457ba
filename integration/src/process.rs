//! Process plumbing shared by every server handle: running a command to completion with its output
//! captured, signalling a recorded pid, and waiting with a deadline for a process to go away.
//!
//! # Why by pid only
//! Several tests run in parallel threads of one test binary, and other engineers run their own suites on
//! the same machine. So nothing is ever stopped by name (`pkill postgres` would take down everyone's
//! clusters): a handle stops exactly the pid it recorded, either a [`Child`] it spawned or the pid that
//! PostgreSQL wrote into `postmaster.pid`.
//!
//! # Zombies
//! `pg_ctl` daemonises the postmaster, so it is not our child and is reparented to PID 1 when it exits. PID 1
//! in a container does not always reap, so "the process is gone" means "kill(pid, 0) fails, or the process
//! is a zombie" (state `Z` in `/proc/<pid>/stat`).

use std::ffi::OsStr;
use std::fmt;
use std::io;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How often the wait loops below look again. A readiness poll, not a timing assumption: every wait also
/// has a deadline and a failure message.
pub(crate) const POLL_INTERVAL: Duration = Duration::from_millis(25);

/// A command that ran and did not succeed (non-zero exit or killed by a signal).
///
/// Keeps the whole output, because the output *is* the diagnosis (pg_amcheck's corruption report,
/// pg_ctl's "could not start server", the CLI's error line).
#[derive(Debug)]
pub struct CommandError {
    /// The program and its arguments, as a shell would show them.
    pub command: String,
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl fmt::Display for CommandError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "`{}` failed ({})", self.command, self.status)?;
        if !self.stdout.trim().is_empty() {
            write!(f, "\n--- stdout ---\n{}", self.stdout.trim_end())?;
        }
        if !self.stderr.trim().is_empty() {
            write!(f, "\n--- stderr ---\n{}", self.stderr.trim_end())?;
        }
        Ok(())
    }
}

impl std::error::Error for CommandError {}

/// Renders a command for messages: program and arguments, space separated.
pub(crate) fn describe(cmd: &Command) -> String {
    let mut parts = vec![cmd.get_program().to_string_lossy().into_owned()];
    parts.extend(
        cmd.get_args()
            .map(|a: &OsStr| a.to_string_lossy().into_owned()),
    );
    parts.join(" ")
}

/// Runs `cmd` to completion with stdout and stderr captured (stdin is closed).
///
/// A command that cannot be *started* means a dependency is missing or unusable, which is a broken test
/// machine rather than a test result, so that panics with the reason instead of returning an error.
pub(crate) fn run(cmd: &mut Command) -> Result<Output, CommandError> {
    let output = cmd
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("cannot run `{}`: {e}", describe(cmd)));
    check_output(cmd, output)
}

/// Runs `cmd` with `input` on its stdin, capturing stdout and stderr.
pub(crate) fn run_with_stdin(cmd: &mut Command, input: &str) -> Result<Output, CommandError> {
    use std::io::Write;
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot run `{}`: {e}", describe(cmd)));
    {
        // Dropping the handle closes stdin, which is what ends psql's script.
        let mut stdin = child.stdin.take().expect("stdin was configured as piped");
        // A write error means the child exited early; its status and stderr below say why.
        let _ = stdin.write_all(input.as_bytes());
    }
    let output = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for `{}` failed: {e}", describe(cmd)));
    check_output(cmd, output)
}

fn check_output(cmd: &Command, output: Output) -> Result<Output, CommandError> {
    if output.status.success() {
        Ok(output)
    } else {
        Err(CommandError {
            command: describe(cmd),
            status: output.status,
            stdout: String::from_utf8_lossy(&output.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&output.stderr).into_owned(),
        })
    }
}

/// Sends `signal` to `pid`. A process that is already gone is not an error: the caller wanted it gone.
pub(crate) fn send_signal(pid: i32, signal: libc::c_int) -> io::Result<()> {
    assert!(
        pid > 0,
        "refusing to signal pid {pid}: it would address a process group"
    );
    // SAFETY: kill(2) has no memory-safety preconditions; pid > 0 addresses exactly one process.
    if unsafe { libc::kill(pid, signal) } == 0 {
        return Ok(());
    }
    let err = io::Error::last_os_error();
    if err.raw_os_error() == Some(libc::ESRCH) {
        Ok(())
    } else {
        Err(err)
    }
}

/// True while `pid` names a live, non-zombie process.
pub(crate) fn pid_alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks for existence and permission.
    if unsafe { libc::kill(pid, 0) } != 0 {
        // EPERM: it exists but belongs to someone else (only possible when not root).
        return io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    }
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        // The state is the first field after the command name, which is in parentheses and may itself
        // contain spaces or parentheses, hence rfind.
        Ok(stat) => stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].split_whitespace().next())
            .is_some_and(|state| state != "Z" && state != "X"),
        Err(_) => false,
    }
}

/// Waits until `pid` is gone or `timeout` passes; true if it is gone.
pub(crate) fn wait_pid_gone(pid: i32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if !pid_alive(pid) {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Waits for a child of ours to exit (reaping it) or for `timeout` to pass.
pub(crate) fn wait_child(child: &mut Child, timeout: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        match child.try_wait() {
            Ok(Some(status)) => return Some(status),
            Ok(None) => {}
            Err(e) => panic!("waiting for pid {} failed: {e}", child.id()),
        }
        if Instant::now() >= deadline {
            return None;
        }
        thread::sleep(POLL_INTERVAL);
    }
}

/// Stops a child of ours: `signal` first, SIGKILL if it is still there after `grace`. Returns its exit
/// status (which tells a clean shutdown from a kill).
pub(crate) fn stop_child(child: &mut Child, signal: libc::c_int, grace: Duration) -> ExitStatus {
    if let Ok(Some(status)) = child.try_wait() {
        return status;
    }
    let pid = child_pid(child);
    send_signal(pid, signal).unwrap_or_else(|e| panic!("cannot signal pid {pid}: {e}"));
    if let Some(status) = wait_child(child, grace) {
        return status;
    }
    eprintln!("pid {pid} still running {grace:?} after signal {signal}, sending SIGKILL");
    kill_child(child)
}

/// SIGKILLs a child of ours and reaps it.
pub(crate) fn kill_child(child: &mut Child) -> ExitStatus {
    if let Ok(Some(status)) = child.try_wait() {
        return status;
    }
    let pid = child_pid(child);
    send_signal(pid, libc::SIGKILL).unwrap_or_else(|e| panic!("cannot SIGKILL pid {pid}: {e}"));
    // SIGKILL cannot be caught, so a bounded wait only guards against a process stuck in the kernel.
    wait_child(child, Duration::from_secs(30)).unwrap_or_else(|| {
        panic!("pid {pid} survived SIGKILL for 30s (stuck in uninterruptible I/O?)")
    })
}

pub(crate) fn child_pid(child: &Child) -> i32 {
    i32::try_from(child.id()).expect("Linux pids fit in i32")
}

/// The last `lines` lines of a log file, for failure messages; a note instead if it cannot be read.
pub(crate) fn log_tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            let start = all.len().saturating_sub(lines);
            format!(
                "--- last {} lines of {} ---\n{}",
                all.len() - start,
                path.display(),
                all[start..].join("\n")
            )
        }
        Err(e) => format!("--- {} unreadable: {e} ---", path.display()),
    }
}
