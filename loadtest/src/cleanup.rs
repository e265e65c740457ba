//! `--cleanup`: removes what a killed run left behind, found by the tool's name prefixes (namespaces
//! and cgroups `strata-sm-<run>...`, root interfaces `strsm<run>...`, directories `/tmp/strata-sm-<run>-*`),
//! where `<run>` is the pid of the run that made them. Runs whose pid is still alive are left alone.
//!
//! Processes still inside a leftover namespace or cgroup (a PostgreSQL, a nats-server of the killed run)
//! are identified by that membership and stopped by pid (SIGTERM, then SIGKILL after 10 s); nothing is
//! ever looked up by process name.

use anyhow::Result;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::cgroup::{members, Hierarchy};
use crate::net::{
    delete_interface, delete_namespace, list_interfaces, list_namespaces, namespace_pids,
    IF_PREFIX, NAME_PREFIX,
};

/// The run (pid) a name of the tool belongs to: `strata-sm-<run>-...` or `strsm<run><tag>`.
pub fn run_of(name: &str) -> Option<u32> {
    let rest = name
        .strip_prefix(NAME_PREFIX)
        .or_else(|| name.strip_prefix(IF_PREFIX))?;
    let digits: String = rest.chars().take_while(|c| c.is_ascii_digit()).collect();
    digits.parse().ok()
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    pid != std::process::id() && unsafe { libc::kill(pid as i32, 0) } == 0
}

fn stop_pids(pids: &[i32], what: &str) {
    if pids.is_empty() {
        return;
    }
    eprintln!("stopping pids {pids:?} left in {what}");
    for &p in pids.iter().filter(|p| **p > 0) {
        // SAFETY: kill(2) on one positive pid.
        unsafe { libc::kill(p, libc::SIGTERM) };
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while Instant::now() < deadline
        && pids
            .iter()
            .any(|&p| Path::new(&format!("/proc/{p}")).exists())
    {
        std::thread::sleep(Duration::from_millis(100));
    }
    for &p in pids.iter().filter(|p| **p > 0) {
        if Path::new(&format!("/proc/{p}")).exists() {
            // SAFETY: as above.
            unsafe { libc::kill(p, libc::SIGKILL) };
        }
    }
}

/// Removes leftovers of dead runs; returns how many things it removed.
pub fn cleanup() -> Result<usize> {
    let mut removed = 0;
    let stale = |name: &str| run_of(name).is_some_and(|run| !alive(run));
    for ns in list_namespaces()?.into_iter().filter(|n| stale(n)) {
        stop_pids(&namespace_pids(&ns), &format!("namespace {ns}"));
        match delete_namespace(&ns) {
            Ok(()) => removed += 1,
            Err(e) => eprintln!("warning: {e:#}"),
        }
    }
    for dev in list_interfaces().into_iter().filter(|d| stale(d)) {
        match delete_interface(&dev) {
            Ok(()) => removed += 1,
            Err(e) => eprintln!("warning: {e:#}"),
        }
    }
    for root in Hierarchy::all_roots() {
        let Ok(entries) = std::fs::read_dir(&root) else {
            continue;
        };
        for run_dir in entries
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| stale(&n.to_string_lossy())))
        {
            let hosts: Vec<PathBuf> = std::fs::read_dir(&run_dir)
                .map(|d| {
                    d.flatten()
                        .map(|e| e.path())
                        .filter(|p| p.is_dir())
                        .collect()
                })
                .unwrap_or_default();
            for h in hosts.iter().chain(std::iter::once(&run_dir)) {
                let pids: Vec<i32> = members(h).into_iter().map(|p| p as i32).collect();
                stop_pids(&pids, &format!("cgroup {}", h.display()));
                match std::fs::remove_dir(h) {
                    Ok(()) => removed += 1,
                    Err(e) => eprintln!("warning: cannot remove cgroup {}: {e}", h.display()),
                }
            }
        }
    }
    if let Ok(entries) = std::fs::read_dir("/tmp") {
        for d in entries.flatten().map(|e| e.path()) {
            let Some(name) = d.file_name().map(|n| n.to_string_lossy().into_owned()) else {
                continue;
            };
            if d.is_dir() && name.starts_with("strata-sm-") && stale(&name) {
                match std::fs::remove_dir_all(&d) {
                    Ok(()) => removed += 1,
                    Err(e) => eprintln!("warning: cannot remove {}: {e}", d.display()),
                }
            }
        }
    }
    Ok(removed)
}

#[cfg(test)]
mod tests {
    use super::run_of;

    #[test]
    fn names_carry_their_run() {
        assert_eq!(run_of("strata-sm-4242-db"), Some(4242));
        assert_eq!(run_of("strsm4242s1"), Some(4242));
        assert_eq!(run_of("strata-sm-4242-AbCd12"), Some(4242));
        assert_eq!(run_of("eth0"), None);
    }
}
