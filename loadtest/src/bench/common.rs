//! What every benchmark of `strata-bench` shares: its work directory, the Strata binaries it measures,
//! the PostgreSQL cluster it keeps between runs, and the measuring itself (wall time and the child's own
//! rusage). pgBackRest as the peer ([`super::pgbackrest`]) and the Strata side, pipeline, bus and
//! services ([`super::strata_setup`]), live in their own modules and are re-exported here, so that a
//! benchmark imports everything it shares from one place.
//!
//! # Why a measurement is a `Result`
//! The bash scripts these benchmarks replace could report a failed command as a time (`timed false`
//! gave 0.001 s and rc 0). Here [`measure`] returns an error when the command exits non-zero, with the
//! tail of its log, and the benchmark stops: a number is only ever the time of a command that worked.
//!
//! # Why the cluster outlives the run
//! Loading pgbench scale 100 takes longer than measuring it, so the cluster lives in `<root>/pgdata`
//! with a marker naming its dataset, and `--reuse` keeps it. Everything else a run starts (the server
//! process, nats-server, the services) is a harness handle, stopped by pid on Drop, also on an error;
//! SIGINT and SIGTERM become an error at the next wait ([`install_signal_handlers`]).

use anyhow::{bail, Context, Result};
use std::fmt::Display;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use strata_integration::command_as_postgres as as_postgres;
use strata_integration::{StrataBins, TestDir};


pub use super::cluster::{init_data_dir, wait_archive_idle, write_included_conf, BenchCluster};
pub use super::figures::{median, ratio, verdict, Kv, Results, Target};
pub use super::pgbackrest::{archive_both_command, Pgbackrest, PgbrOptions};
pub use super::strata_setup::{
    posix_repo, proc_cpu_ticks, proc_hwm_kb, proc_reset_hwm, strata_environment,
    write_strata_config, BusMode, Fleet, Pipeline, FLEET_SERVICES,
};

/// The stanza every benchmark backs up.
pub const STANZA: &str = "bench";

/// The Strata binaries a benchmark copies and runs.
pub const STRATA_BINARIES: [&str; 4] = [
    "strata",
    "strata-collector",
    "strata-sealer",
    "strata-uploader",
];

/// Prints `[HH:MM:SS] strata-bench: msg` (UTC) on stderr.
pub fn log(msg: impl Display) {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
        % 86_400;
    eprintln!(
        "[{:02}:{:02}:{:02}] strata-bench: {msg}",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    );
}

/// A run's id: the UTC time it started, `20261207T211500Z`.
pub fn run_id() -> String {
    let out = Command::new("date")
        .args(["-u", "+%Y%m%dT%H%M%SZ"])
        .output();
    match out {
        Ok(o) if o.status.success() => String::from_utf8_lossy(&o.stdout).trim().to_string(),
        _ => format!(
            "{}",
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or(0)
        ),
    }
}

// ------------------------------------------------------------------------------------------------ signals

/// SIGINT and SIGTERM become an error at a benchmark's next wait: the crate's one flag ([`crate::signals`]).
pub use crate::signals::{check_interrupted, install_signal_handlers};

// ------------------------------------------------------------------------------------------------ workspace

/// A benchmark's work directory: `<root>` (mode 0755, owned by postgres) with `logs/` and `tmp/`, plus a
/// harness test directory for what lives only as long as the run (sockets, server logs, nats-server).
pub struct Workspace {
    root: PathBuf,
    test_dir: TestDir,
}

impl Workspace {
    /// Creates `root`, `root/logs` and `root/tmp` (kept between runs).
    pub fn create(root: &Path) -> Result<Workspace> {
        for dir in [root.to_path_buf(), root.join("logs"), root.join("tmp")] {
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
            fs::set_permissions(&dir, fs::Permissions::from_mode(0o755))
                .with_context(|| format!("cannot chmod {}", dir.display()))?;
            chown_postgres(&dir)?;
        }
        Ok(Workspace {
            root: root.to_path_buf(),
            test_dir: TestDir::new("bench"),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// `<root>/<name>`.
    pub fn path(&self, name: &str) -> PathBuf {
        self.root.join(name)
    }

    /// `<root>/logs`: the measured commands' output.
    pub fn logs(&self) -> PathBuf {
        self.root.join("logs")
    }

    /// `<root>/logs/<name>`.
    pub fn log(&self, name: &str) -> PathBuf {
        self.logs().join(name)
    }

    /// `<root>/logs/<name>`, created empty: a log that holds this run's output only (a failure's error
    /// shows its tail).
    pub fn empty_log(&self, name: &str) -> Result<PathBuf> {
        let path = self.log(name);
        fs::write(&path, "").with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }

    /// `<root>/logs/<name>`, emptied (the scripts' `>log`): [`measure`] appends, and some steps read
    /// their log back, so each run's must hold only its own output.
    pub fn fresh_log(&self, name: &str) -> PathBuf {
        let path = self.log(name);
        let _ = fs::remove_file(&path);
        path
    }

    /// `<root>/tmp`.
    pub fn tmp(&self) -> PathBuf {
        self.root.join("tmp")
    }

    /// The run's harness directory (removed when the last handle in it is gone).
    pub fn test_dir(&self) -> &TestDir {
        &self.test_dir
    }

    /// Creates `<root>/<name>` owned by postgres (mode 0700 or 0755), emptying it if it exists.
    pub fn fresh_dir(&self, name: &str, mode: u32) -> Result<PathBuf> {
        let dir = self.path(name);
        if dir.exists() {
            wipe_dir(&dir)?;
        } else {
            fs::create_dir_all(&dir).with_context(|| format!("cannot create {}", dir.display()))?;
        }
        fs::set_permissions(&dir, fs::Permissions::from_mode(mode))?;
        chown_postgres(&dir)?;
        Ok(dir)
    }
}

/// Gives `path` (not recursive) to the postgres user.
pub fn chown_postgres(path: &Path) -> Result<()> {
    let status = Command::new("chown")
        .arg("postgres:postgres")
        .arg(path)
        .status()
        .context("cannot run chown")?;
    if !status.success() {
        bail!("chown postgres {} failed", path.display());
    }
    Ok(())
}

// ------------------------------------------------------------------------------------------------ binaries

/// Copies the Strata binaries from `strata_bin` (default `$CARGO_TARGET_DIR/release`, else the
/// workspace's `target/release`) into `<root>/bin`: a copy postgres can execute and that a rebuild
/// cannot change under the run.
pub fn install_binaries(strata_bin: Option<&Path>, ws: &Workspace) -> Result<StrataBins> {
    let from = super::run_info::strata_source_dir(strata_bin);
    let bin = ws.path("bin");
    fs::create_dir_all(&bin)?;
    fs::set_permissions(&bin, fs::Permissions::from_mode(0o755))?;
    for name in STRATA_BINARIES {
        let src = from.join(name);
        if !src.is_file() {
            bail!(
                "{} is missing: build with `cargo build --release --bins` or set STRATA_BIN to the directory of the binaries",
                src.display()
            );
        }
        let tmp = bin.join(format!("{name}.new"));
        fs::copy(&src, &tmp).with_context(|| format!("cannot copy {}", src.display()))?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o755))?;
        fs::rename(&tmp, bin.join(name))?;
    }
    Ok(StrataBins::from_dir(&bin))
}

/// Removes its directories when dropped, on an error too: what lives only during a run (restore
/// targets, repositories without KEEP_REPOS). Declare it before the servers, so that it runs after
/// they are stopped.
#[derive(Default)]
pub struct RemoveOnDrop {
    pub dirs: Vec<PathBuf>,
}

impl Drop for RemoveOnDrop {
    fn drop(&mut self) {
        for d in &self.dirs {
            let _ = fs::remove_dir_all(d);
        }
    }
}

/// `strata --version`, or "strata ?".
pub fn strata_version(bins: &StrataBins) -> String {
    Command::new(bins.path("strata"))
        .arg("--version")
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "strata ?".into())
}

// ------------------------------------------------------------------------------------------------ measuring

/// What one measured command took.
#[derive(Debug, Clone, Copy, Default)]
pub struct Measured {
    /// Wall time, seconds.
    pub secs: f64,
    /// The child's peak resident set, KiB (its own, not its children's).
    pub max_rss_kb: u64,
    /// User CPU, seconds.
    pub user_s: f64,
    /// System CPU, seconds.
    pub sys_s: f64,
}

/// Runs `cmd` with its output appended to `log`; its wall time and rusage, or an error naming `what`
/// with the log's tail when it fails or the run is interrupted (the child is then killed).
pub fn measure(cmd: &mut Command, what: &str, log: &Path) -> Result<Measured> {
    check_interrupted()?;
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("cannot open {}", log.display()))?;
    let err = out.try_clone()?;
    let start = Instant::now();
    let child = cmd
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .spawn()
        .with_context(|| format!("{what}: cannot start {:?}", cmd.get_program()))?;
    let pid = child.id() as libc::pid_t;
    // The child is reaped with wait4 below (for its rusage), never through `child`.
    std::mem::forget(child);
    let mut status: libc::c_int = 0;
    // SAFETY: rusage is plain data; wait4 fills it.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: pid is our own child; status and usage point to live locals.
        let rc = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        if rc == pid {
            break;
        }
        if rc < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            bail!("{what}: wait4: {e}");
        }
        if crate::signals::interrupted() {
            // SAFETY: signalling and reaping our own child.
            unsafe {
                libc::kill(pid, libc::SIGTERM);
                libc::waitpid(pid, &mut status, 0);
            }
            bail!("{what}: interrupted");
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let secs = start.elapsed().as_secs_f64();
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        let how = if libc::WIFEXITED(status) {
            format!("exit code {}", libc::WEXITSTATUS(status))
        } else {
            format!("signal {}", libc::WTERMSIG(status))
        };
        bail!(
            "{what} failed ({how}); log {}:\n{}",
            log.display(),
            tail(log, 20)
        );
    }
    Ok(Measured {
        secs,
        max_rss_kb: usage.ru_maxrss.max(0) as u64,
        user_s: tv(usage.ru_utime),
        sys_s: tv(usage.ru_stime),
    })
}

/// [`measure`], seconds only.
pub fn timed(cmd: &mut Command, what: &str, log: &Path) -> Result<f64> {
    measure(cmd, what, log).map(|m| m.secs)
}

/// Runs `cmd` (output appended to `log`) and fails when it fails; for the steps around the measurements.
pub fn run_logged(cmd: &mut Command, what: &str, log: &Path) -> Result<()> {
    measure(cmd, what, log).map(|_| ())
}

/// Runs `cmd` and returns its stdout; fails with its stderr when it fails.
pub fn output_of(cmd: &mut Command, what: &str) -> Result<String> {
    let out = cmd
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("{what}: cannot start"))?;
    if !out.status.success() {
        bail!(
            "{what} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The last `lines` lines of a file.
pub fn tail(path: &Path, lines: usize) -> String {
    let text = fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// sync(2), then `pause_secs`: what precedes every measurement, so that the page cache's dirty pages
/// of the previous step are not written during this one.
pub fn settle(pause_secs: f64) {
    // SAFETY: sync has no preconditions.
    unsafe { libc::sync() };
    if pause_secs > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(pause_secs));
    }
}

/// Apparent size of everything under `path` (files, directories and links), like `du -sb`; 0 if absent.
pub fn du_bytes(path: &Path) -> u64 {
    let Ok(meta) = fs::symlink_metadata(path) else {
        return 0;
    };
    let mut sum = meta.len();
    if meta.is_dir() {
        if let Ok(entries) = fs::read_dir(path) {
            for e in entries.flatten() {
                sum += du_bytes(&e.path());
            }
        }
    }
    sum
}

/// Empties `dir` and keeps it.
pub fn wipe_dir(dir: &Path) -> Result<()> {
    for e in fs::read_dir(dir).with_context(|| format!("cannot read {}", dir.display()))? {
        let p = e?.path();
        let meta = fs::symlink_metadata(&p)?;
        if meta.is_dir() {
            fs::remove_dir_all(&p)
        } else {
            fs::remove_file(&p)
        }
        .with_context(|| format!("cannot remove {}", p.display()))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failed_command_is_an_error_not_a_time() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        let err = timed(&mut Command::new("false"), "false", &log).unwrap_err();
        assert!(
            err.to_string().contains("false failed (exit code 1)"),
            "{err}"
        );
        assert!(timed(&mut Command::new("true"), "true", &log).unwrap() >= 0.0);
    }

    #[test]
    fn measure_reports_the_childs_own_peak_rss() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        // 64 MiB held by tail, which the child waits for: counted, as /usr/bin/time -v counts it.
        let mut cmd = Command::new("sh");
        cmd.args([
            "-c",
            "head -c 67108864 /dev/zero | tail -c 67108864 >/dev/null",
        ]);
        let big = measure(&mut cmd, "tail", &log).unwrap();
        assert!(big.max_rss_kb >= 60 * 1024, "{big:?}");
        let small = measure(&mut Command::new("true"), "true", &log).unwrap();
        assert!(
            small.max_rss_kb > 0 && small.max_rss_kb < 60 * 1024,
            "{small:?}"
        );
    }

}
