//! strata-command: what the `strata` command's work shares with the verifier, which verifies backups and
//! runs restore tests as the command does: the command's [`Context_`] (config, stanza, repository), the
//! options both take ([`OutputFormat`], [`RecoveryType`]), the audit hook every audited operation runs in
//! ([`audit::audit_op`]), progress bars, and the small helpers for times, sizes and command lines.
//! Argument parsing and printing stay in the `strata` command (services/strata).

pub mod audit;
pub mod progress;

use clap::ValueEnum;
use std::path::PathBuf;
use std::sync::Arc;
use strata_config::Config;
use strata_repo::Repo;

/// Where recovery stops.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RecoveryType {
    /// Replay every WAL file in the archive, then promote.
    Default,
    /// Stop at the end of the backup (its consistency point).
    Immediate,
    /// Stop at a time (--target).
    Time,
    /// Stop at an LSN (--target).
    Lsn,
    /// Stop at the end of a transaction (--target).
    Xid,
    /// Stop at a restore point (--target, made with pg_create_restore_point).
    Name,
    /// Start as a replica of the stanza's cluster (standby.signal and primary_conninfo).
    Standby,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    Text,
    Json,
}

/// What every command starts from: the config, the chosen stanza and the primary repository.
pub struct Context_ {
    pub cfg: Arc<Config>,
    pub config_path: PathBuf,
    pub stanza: String,
    pub repo: Repo,
}

impl Context_ {
    /// `--repo NAME` when the command reads another repository than the primary, for the commands it
    /// starts (restore_command, the prefetcher) to read the same one.
    pub fn repo_option(&self) -> Option<String> {
        (self.repo.name() != self.cfg.primary_repo().name).then(|| format!("--repo={}", self.repo.name()))
    }
}

/// A word for a shell command line (PostgreSQL runs restore_command through the shell).
pub fn shell_quote(word: &str) -> String {
    format!("'{}'", word.replace('\'', "'\\''"))
}

pub fn now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}

/// How every command prints a time (UTC), the same as audit lines and alerts.
pub use strata_stamp::format_time;

/// The `strata` command, for the commands a restore writes (restore_command) or starts: this process when
/// it is `strata`, else (the verifier runs restore tests through this library) the `strata` beside it.
pub fn strata_executable() -> std::io::Result<std::path::PathBuf> {
    let exe = std::env::current_exe()?;
    if exe.file_name().is_some_and(|n| n == "strata") {
        return Ok(exe);
    }
    let beside = exe.with_file_name("strata");
    if beside.is_file() {
        return Ok(beside);
    }
    Err(std::io::Error::new(std::io::ErrorKind::NotFound, format!("no strata executable beside {}", exe.display())))
}

/// `user@host` of this process, for results and logs that say who did something.
pub fn who() -> String {
    strata_stamp::who()
}

pub fn format_bytes(b: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u < UNITS.len() - 1 {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}
