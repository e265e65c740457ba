//! What a benchmark records about its run besides the measurements: when (UTC timestamps, as
//! `date -u +%FT%TZ` prints them), on what machine (CPUs, memory, the VM's busy CPU time from
//! /proc/stat) and with what (the directory the Strata binaries were copied from, their build time, the
//! source commit). Every benchmark writes some of these into its rows and its `run-*.info`, and the
//! scripts' ports each had a copy: this is the one.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::SystemTime;

/// The workspace's root (where `git` finds the source the binaries were built from).
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Where [`super::common::install_binaries`] copies the Strata binaries from: `STRATA_BIN`, else
/// `$CARGO_TARGET_DIR/release`, else the workspace's `target/release`.
pub fn strata_source_dir(strata_bin: Option<&Path>) -> PathBuf {
    match (strata_bin, std::env::var_os("CARGO_TARGET_DIR")) {
        (Some(dir), _) => dir.to_path_buf(),
        (None, Some(t)) => PathBuf::from(t).join("release"),
        (None, None) => repo_root().join("target/release"),
    }
}

/// A time, UTC, as `date -u +%FT%TZ` prints it (`2026-12-07T21:15:00Z`), or "?".
pub fn utc_timestamp(t: SystemTime) -> String {
    let secs = t
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as libc::time_t)
        .unwrap_or(0);
    // SAFETY: tm is plain data; gmtime_r fills it from a valid time_t.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live locals.
    if unsafe { libc::gmtime_r(&secs, &mut tm) }.is_null() {
        return "?".into();
    }
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}Z",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec
    )
}

/// Now, UTC (`date -u +%FT%TZ`): the timestamp column of every results row.
pub fn utc_now() -> String {
    utc_timestamp(SystemTime::now())
}

/// A file's modification time, UTC (the binaries' "built" time), or "?".
pub fn modified_utc(path: &Path) -> String {
    fs::metadata(path)
        .and_then(|m| m.modified())
        .map(utc_timestamp)
        .unwrap_or_else(|_| "?".into())
}

/// Clock ticks per second (`getconf CLK_TCK`): the unit of /proc/stat and /proc/<pid>/stat.
pub fn clk_tck() -> f64 {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if hz > 0 {
        hz as f64
    } else {
        100.0
    }
}

/// Clock ticks the whole VM has spent busy (user, nice, system, irq, softirq of /proc/stat's `cpu`
/// line): the difference around a measurement, over [`clk_tck`], is the row's `vm_busy_cpu_s`.
pub fn vm_busy_ticks() -> u64 {
    let stat = fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = stat.lines().find(|l| l.starts_with("cpu ")) else {
        return 0;
    };
    let f: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap_or(0))
        .collect();
    [0, 1, 2, 5, 6]
        .iter()
        .map(|&i| f.get(i).copied().unwrap_or(0))
        .sum()
}

/// The CPUs this process may use, if the system says.
pub fn cpus() -> Option<usize> {
    std::thread::available_parallelism().map(|n| n.get()).ok()
}

/// /proc/meminfo's MemTotal, kB.
pub fn mem_total_kb() -> Option<u64> {
    let meminfo = fs::read_to_string("/proc/meminfo").ok()?;
    let line = meminfo.lines().find(|l| l.starts_with("MemTotal"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// The source's commit (`git rev-parse --short HEAD`, "?" outside a checkout), with " (uncommitted
/// changes)" when tracked files differ from it: the `source` line of `run-*.info`.
pub fn source_commit() -> String {
    let git = |a: &[&str]| {
        Command::new("git")
            .arg("-C")
            .arg(repo_root())
            .args(a)
            .output()
            .ok()
    };
    let mut source = git(&["rev-parse", "--short", "HEAD"])
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into());
    if git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|o| !o.stdout.is_empty())
    {
        source.push_str(" (uncommitted changes)");
    }
    source
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamps_are_utc() {
        assert_eq!(
            utc_timestamp(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(86_400 + 3661)),
            "1970-01-02T01:01:01Z"
        );
    }
}
