//! The Strata binaries under test: finding them, running the CLI, and running services as processes.
//!
//! # Finding them
//! Cargo sets `CARGO_BIN_EXE_*` only for binaries of the test's own package, and the binaries live in
//! other packages, so the directory comes from `$STRATA_BIN_DIR`, which `scripts/test.sh` (and so
//! `.ci/run`) sets after `cargo build --bins`. Without it, `$CARGO_TARGET_DIR/debug` or the workspace's
//! `target/debug` is used, but only if `strata` is there: a missing binary panics instead of skipping the
//! test. Nothing here rebuilds the binaries; run `cargo build --bins` (or `scripts/test.sh`) first.
//!
//! # As which user
//! PostgreSQL runs `strata archive-push` as `postgres`, so `postgres` must be able to execute the binaries
//! ([`StrataBins::locate`] checks, since `/root/...` is not traversable), and every Strata process the tests
//! start runs as `postgres` too. A repository file created by a root-run CLI would otherwise be unwritable
//! for the next archive-push, which is a failure of the harness, not of Strata.
//!
//! # Stopping services
//! [`Service::stop`] sends SIGTERM (a service's graceful shutdown) to the recorded pid and SIGKILL after
//! [`SERVICE_STOP_GRACE`]; [`Service::kill`] is SIGKILL at once, for crash tests. The exit status tells the
//! test which of the two happened.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::Duration;

use crate::logcheck::{wait_for_line, LogCheck, LogCheckOnDrop};
use crate::os_user::{command_as_postgres, postgres_user};
use crate::process::{child_pid, kill_child, run, stop_child};

/// Environment variable naming the directory of the built Strata binaries.
pub const BIN_DIR_ENV: &str = "STRATA_BIN_DIR";
/// The CLI binary.
pub const STRATA_CLI: &str = "strata";
/// How long a service gets between SIGTERM and SIGKILL.
pub const SERVICE_STOP_GRACE: Duration = Duration::from_secs(30);

/// Quotes a string for `sh` (PostgreSQL runs archive_command and restore_command through a shell).
fn sh_quote(value: &str) -> String {
    format!("'{}'", value.replace('\'', r"'\''"))
}

/// The directory holding `strata`, `strata-collector`, `strata-sealer` and `strata-uploader`.
#[derive(Debug, Clone)]
pub struct StrataBins {
    dir: PathBuf,
}

impl StrataBins {
    /// Finds the binaries (see the module docs) and checks that `postgres` can execute `strata`; panics
    /// with what to do when either fails.
    pub fn locate() -> StrataBins {
        if let Some(dir) = std::env::var_os(BIN_DIR_ENV) {
            return StrataBins::from_dir(dir);
        }
        let workspace = Path::new(env!("CARGO_MANIFEST_DIR"))
            .parent()
            .expect("the integration crate sits inside the workspace")
            .to_path_buf();
        let mut candidates = Vec::new();
        if let Some(target) = std::env::var_os("CARGO_TARGET_DIR") {
            candidates.push(workspace.join(target).join("debug"));
        }
        candidates.push(workspace.join("target").join("debug"));
        match candidates.iter().find(|dir| dir.join(STRATA_CLI).is_file()) {
            Some(dir) => StrataBins::from_dir(dir),
            None => panic!(
                "the Strata binaries were not found: {BIN_DIR_ENV} is unset and there is no `{STRATA_CLI}` in {}. \
                 Run scripts/test.sh, or `cargo build --bins` and set {BIN_DIR_ENV} to its output directory",
                candidates.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(" or ")
            ),
        }
    }

    /// Uses the binaries in `dir`; panics if `strata` is not there or `postgres` cannot execute it.
    pub fn from_dir(dir: impl AsRef<Path>) -> StrataBins {
        let bins = StrataBins {
            dir: dir.as_ref().to_path_buf(),
        };
        let cli = bins.path(STRATA_CLI);
        if postgres_user().is_some() {
            let mut test = command_as_postgres("test");
            test.arg("-x").arg(&cli);
            if run(&mut test).is_err() {
                panic!(
                    "the postgres user cannot execute {} (PostgreSQL runs archive-push as postgres): every parent \
                     directory must be traversable by others; scripts/test.sh copies the binaries to /tmp when \
                     they are not",
                    cli.display()
                );
            }
        }
        bins
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Path of binary `bin_name`; panics if it is not there.
    pub fn path(&self, bin_name: &str) -> PathBuf {
        let path = self.dir.join(bin_name);
        if !path.is_file() {
            panic!(
                "Strata binary {} is missing (build it with `cargo build --bins`; {BIN_DIR_ENV}={})",
                path.display(),
                self.dir.display()
            );
        }
        path
    }

    /// `strata --config <config> --stanza <stanza>`, to be completed with a command and its arguments. Runs
    /// as `postgres` (see the module docs), with `RUST_BACKTRACE=1` and `NO_COLOR=1`.
    pub fn strata_cmd(&self, config: &Path, stanza: &str) -> Command {
        let mut cmd = command_as_postgres(self.path(STRATA_CLI));
        cmd.env("RUST_BACKTRACE", "1").env("NO_COLOR", "1");
        cmd.arg("--config").arg(config).arg("--stanza").arg(stanza);
        cmd
    }

    /// An `archive_command` that pushes through this build's CLI: `strata ... archive-push %p`.
    pub fn archive_push_command(&self, config: &Path, stanza: &str) -> String {
        format!(
            "{} --config {} --stanza {} archive-push %p",
            sh_quote(&self.path(STRATA_CLI).display().to_string()),
            sh_quote(&config.display().to_string()),
            sh_quote(stanza)
        )
    }

    /// A `restore_command` that fetches through this build's CLI: `strata ... archive-get %f "%p"`.
    pub fn archive_get_command(&self, config: &Path, stanza: &str) -> String {
        format!(
            "{} --config {} --stanza {} archive-get %f \"%p\"",
            sh_quote(&self.path(STRATA_CLI).display().to_string()),
            sh_quote(&config.display().to_string()),
            sh_quote(stanza)
        )
    }

    /// Starts service `bin_name` with `--config <config>`; see [`Service::spawn`].
    pub fn spawn_service(&self, bin_name: &str, config: &Path, log_dir: &Path) -> Service {
        Service::spawn(self, bin_name, config, log_dir)
    }
}

/// A Strata service process (`strata-collector`, `strata-sealer`, `strata-uploader`, ...) owned by a
/// test; stopped with SIGTERM (then SIGKILL) on Drop.
#[derive(Debug)]
pub struct Service {
    name: String,
    child: Child,
    log_file: PathBuf,
    log_check: LogCheckOnDrop,
}

impl Service {
    /// Runs `<bin_name> --config <config>` as `postgres`, stdout and stderr appended to
    /// `<log_dir>/<bin_name>.log` (appended, so a service restarted after a crash keeps one log).
    /// Returns at once: wait for readiness with [`Service::wait_for_log`] or through the service's effect.
    pub fn spawn(bins: &StrataBins, bin_name: &str, config: &Path, log_dir: &Path) -> Service {
        Service::spawn_with_env(bins, bin_name, config, log_dir, &[])
    }

    /// [`Service::spawn`] with extra environment variables (`FAILPOINTS` for a crash test).
    pub fn spawn_with_env(bins: &StrataBins, bin_name: &str, config: &Path, log_dir: &Path, env: &[(&str, &str)]) -> Service {
        let log_file = log_dir.join(format!("{bin_name}.log"));
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_file)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", log_file.display()));
        let log_err = log
            .try_clone()
            .unwrap_or_else(|e| panic!("cannot dup {}: {e}", log_file.display()));
        let mut cmd = command_as_postgres(bins.path(bin_name));
        cmd.env("RUST_BACKTRACE", "1")
            .env("NO_COLOR", "1")
            .arg("--config")
            .arg(config)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err);
        cmd.envs(env.iter().copied());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {bin_name}: {e}"));
        Service {
            name: bin_name.to_string(),
            child,
            log_file,
            log_check: LogCheckOnDrop::new(LogCheck::new()),
        }
    }

    /// Allows log lines matching `pattern` (a regex) in the check this handle runs when dropped.
    pub fn allow_log(&mut self, pattern: &str) -> &mut Service {
        self.log_check.allow(pattern);
        self
    }

    /// Leaves this service's log unchecked when dropped; `why` is for the reader of the test.
    pub fn skip_log_check(&mut self, why: &str) -> &mut Service {
        self.log_check.skip(why);
        self
    }

    /// The binary's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The service's log file.
    pub fn log_file(&self) -> &Path {
        &self.log_file
    }

    /// True while the process runs.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// The exit status if the process has exited (it is reaped then), without waiting.
    pub fn try_exit_status(&mut self) -> Option<ExitStatus> {
        self.child.try_wait().ok().flatten()
    }

    /// Waits for the service to exit on its own (a crash test's); panics after `timeout`.
    pub fn wait_exit(&mut self, timeout: Duration) -> ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Some(status) = self.try_exit_status() {
                return status;
            }
            assert!(std::time::Instant::now() < deadline, "{} did not exit within {timeout:?}; see {}", self.name, self.log_file.display());
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Waits until a line of the service's log matches `pattern` (a regex); panics after `timeout` or if
    /// the service exits first, with the log's tail.
    pub fn wait_for_log(&mut self, pattern: &str, timeout: Duration) -> String {
        let child = &mut self.child;
        wait_for_line(&self.log_file, pattern, timeout, || {
            matches!(child.try_wait(), Ok(None))
        })
    }

    /// SIGTERM, then SIGKILL after [`SERVICE_STOP_GRACE`]; returns the exit status (a clean shutdown
    /// exits 0). Calling it on an exited service returns its status.
    pub fn stop(&mut self) -> ExitStatus {
        stop_child(&mut self.child, libc::SIGTERM, SERVICE_STOP_GRACE)
    }

    /// SIGKILL at once (a crash), and reap; returns the exit status.
    pub fn kill(&mut self) -> ExitStatus {
        kill_child(&mut self.child)
    }
}

impl Drop for Service {
    fn drop(&mut self) {
        if self.is_running() {
            let pid = child_pid(&self.child);
            let status = self.stop();
            if !std::thread::panicking() && !status.success() {
                eprintln!(
                    "service {} (pid {pid}) exited with {status} when stopped on drop",
                    self.name
                );
            }
        }
        self.log_check.run(&self.name, &self.log_file);
    }
}
