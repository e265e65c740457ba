//! Processes found through /proc: the postmaster known by pid *and* start time, its descendants, and
//! stopping them (fast, immediate, SIGKILL) and stragglers still using the scratch directory. Separate
//! because signalling processes safely (never a reused pid) is its own concern, shared by cleanup and the
//! memory sampler.

use super::FAST_STOP_GRACE;
use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::time::{Duration, Instant};

/// How long an immediate shutdown may take before SIGKILL.
const IMMEDIATE_STOP_GRACE: Duration = Duration::from_secs(10);

/// Processes still naming the scratch directory on their command line once it is gone: a WAL prefetcher
/// the server's restore_command started in its own session (no longer the postmaster's descendant). It
/// exits by itself when its spool has vanished; one still there after a grace period is killed.
pub(super) fn end_stragglers(root: &Path) -> Option<String> {
    let needle = format!("{}/", root.display());
    let find = || -> Vec<Proc> {
        let mut out = Vec::new();
        for p in procfs::process::all_processes().into_iter().flatten().flatten() {
            let pid = p.pid();
            // Read as bytes, not with `Process::cmdline`, which skips a process whose arguments are not
            // all UTF-8: such a process may still name the directory.
            let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
            if String::from_utf8_lossy(&cmdline).contains(&needle) {
                out.extend(Proc::of(pid).filter(|p| p.alive()));
            }
        }
        out
    };
    let until = Instant::now() + Duration::from_secs(10);
    let mut left = find();
    while !left.is_empty() && Instant::now() < until {
        std::thread::sleep(Duration::from_millis(100));
        left = find();
    }
    if left.is_empty() {
        return None;
    }
    for p in &left {
        p.signal(libc::SIGKILL);
    }
    let pids: Vec<String> = left.iter().map(|p| p.pid.to_string()).collect();
    Some(format!("killed processes still using the scratch directory after it was removed: {}", pids.join(", ")))
}

/// Fast shutdown, then immediate, then SIGKILL to the postmaster and the descendants last seen.
pub(super) fn stop_server(pm: Proc, descendants: &[Proc]) -> Result<(), String> {
    for (signal, grace) in [(libc::SIGINT, FAST_STOP_GRACE), (libc::SIGQUIT, IMMEDIATE_STOP_GRACE)] {
        if !pm.alive() {
            return Ok(());
        }
        pm.signal(signal);
        if pm.wait_gone(grace) {
            return Ok(());
        }
        tracing::warn!(pid = pm.pid, signal, "the restored server did not stop in time");
    }
    pm.signal(libc::SIGKILL);
    for d in descendants {
        if d.alive() {
            d.signal(libc::SIGKILL);
        }
    }
    if pm.wait_gone(Duration::from_secs(5)) {
        Ok(())
    } else {
        Err(format!("the restored server's postmaster (pid {}) did not exit after SIGKILL", pm.pid))
    }
}

/// A process, known by its pid and its start time (clock ticks after boot), so that a pid reused by
/// another process is not taken for it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Proc {
    pub(super) pid: i32,
    pub(super) start: u64,
}

/// The fields of `/proc/<pid>/stat` this module needs: state, parent, start time.
fn proc_stat(pid: i32) -> Option<(char, i32, u64)> {
    let stat = procfs::process::Process::new(pid).ok()?.stat().ok()?;
    Some((stat.state, stat.ppid, stat.starttime))
}

impl Proc {
    pub(super) fn of(pid: i32) -> Option<Proc> {
        proc_stat(pid).map(|(_, _, start)| Proc { pid, start })
    }

    /// The postmaster named by `<data>/postmaster.pid`, if it runs.
    pub(super) fn from_pid_file(data: &Path) -> Option<Proc> {
        let text = std::fs::read_to_string(data.join("postmaster.pid")).ok()?;
        let pid: i32 = text.lines().next()?.trim().parse().ok()?;
        Proc::of(pid).filter(|p| p.alive())
    }

    /// Still running (a zombie has ended: `pg_ctl` daemonizes the postmaster, so it is not ours to reap).
    pub(super) fn alive(&self) -> bool {
        matches!(proc_stat(self.pid), Some((state, _, start)) if start == self.start && state != 'Z')
    }

    pub(super) fn signal(&self, signal: libc::c_int) {
        if self.alive() {
            // SAFETY: kill has no memory effects; the pid was just checked to be this process.
            unsafe { libc::kill(self.pid, signal) };
        }
    }

    pub(super) fn wait_gone(&self, grace: Duration) -> bool {
        let until = Instant::now() + grace;
        while Instant::now() < until {
            if !self.alive() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        !self.alive()
    }
}

/// The descendants of `root` among the host's processes.
pub(super) fn descendants(root: i32) -> Vec<Proc> {
    let mut children: HashMap<i32, Vec<Proc>> = HashMap::new();
    for p in procfs::process::all_processes().into_iter().flatten().flatten() {
        if let Ok(stat) = p.stat() {
            if stat.state != 'Z' {
                children.entry(stat.ppid).or_default().push(Proc { pid: stat.pid, start: stat.starttime });
            }
        }
    }
    let (mut out, mut stack, mut seen) = (Vec::new(), vec![root], HashSet::new());
    while let Some(p) = stack.pop() {
        for c in children.get(&p).into_iter().flatten() {
            if seen.insert(c.pid) {
                out.push(*c);
                stack.push(c.pid);
            }
        }
    }
    out
}


#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn proc_stat_reads_this_process() {
        let me = std::process::id() as i32;
        let (state, ppid, start) = proc_stat(me).expect("own stat");
        assert!(state == 'R' || state == 'S', "{state}");
        assert!(ppid > 0 && start > 0);
        let p = Proc::of(me).unwrap();
        assert!(p.alive());
        assert!(!Proc { pid: me, start: start + 1 }.alive(), "another start time is another process");
    }
}
