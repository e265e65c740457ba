//! The audit log: who did what to which stanza and repository, when, and how it ended.
//!
//! # Format
//! A text file of JSON lines, one per operation ([`AuditEntry`]), appended by every process that runs an
//! auditable operation (`strata backup`, `restore`, `expire`, ..., and the verifier's verifications and
//! restore tests). Lines are self-contained so that `grep`, `jq` and log shippers can read the file without
//! Strata, and so that a torn last line (a process killed mid-write, a full disk) costs only that line.
//!
//! # Concurrent writers
//! Several processes may append at once (an archive-push per WAL segment, a backup, the verifier). Each
//! append opens the file with `O_APPEND`, takes an exclusive `flock(2)` for the duration of one `write` of
//! the whole line and an `fdatasync`, then unlocks. The lock is what keeps lines whole: `O_APPEND` alone
//! makes each `write` land at the end, but a line longer than `PIPE_BUF`, or a short write, could
//! interleave with another writer's. Under the lock the writer also looks at the file's last byte: when a
//! crashed writer left a line without its newline, the new line starts with one, so the torn fragment
//! stays a line of its own (which [`read`] skips and counts) instead of corrupting the next entry.
//! Readers take a shared lock, so they never see half of a line that is being written.
//!
//! # Failure policy
//! The audit log records operations; it does not gate them. An operation whose line cannot be written (no
//! permission, full disk) keeps its own result and exit status, and the caller prints one `warning:` line:
//! refusing a backup, or reporting a backup that succeeded as failed, because its audit line could not be
//! written would trade a lost backup for a complete log. The warning makes the gap visible where the
//! operation was run.
//!
//! # Config changes
//! [`note_config`] keeps the BLAKE3 hash of each config file it has seen in a sidecar file beside the log
//! (`<log>.config-hash`, JSON, replaced atomically) and appends a `config-change` line when a config's
//! hash differs from the one recorded, or when it is seen for the first time. The check and the update
//! happen under the log's lock, so processes starting together with a new config record it once. The
//! line is appended before the sidecar is replaced: a crash in between repeats the line, never loses it.
//! Each config file has its own hash in the sidecar, so two configs sharing one log do not take turns
//! being "changed".
//!
//! This crate knows the file format only: it neither reads the config nor decides what an operation is.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::fmt;
use std::fs::{File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, FileExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::str::FromStr;
use strata_stamp::{format_time, identity};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Mode of a new log file and its sidecar: the log names users, hosts and paths, not for everyone.
const FILE_MODE: u32 = 0o640;
/// Mode of directories created for the log.
const DIR_MODE: u32 = 0o750;

/// The operations the log records.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Op {
    Backup,
    Restore,
    Expire,
    Verify,
    RestoreTest,
    ConfigChange,
    StanzaCreate,
    Annotate,
    RepoRekey,
}

impl Op {
    pub const ALL: [Op; 9] = [
        Op::Backup,
        Op::Restore,
        Op::Expire,
        Op::Verify,
        Op::RestoreTest,
        Op::ConfigChange,
        Op::StanzaCreate,
        Op::Annotate,
        Op::RepoRekey,
    ];

    /// The name in the log's `op` field (and in `strata audit --op`).
    pub fn as_str(self) -> &'static str {
        match self {
            Op::Backup => "backup",
            Op::Restore => "restore",
            Op::Expire => "expire",
            Op::Verify => "verify",
            Op::RestoreTest => "restore-test",
            Op::ConfigChange => "config-change",
            Op::StanzaCreate => "stanza-create",
            Op::Annotate => "annotate",
            Op::RepoRekey => "repo-rekey",
        }
    }
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Op {
    type Err = String;

    fn from_str(s: &str) -> Result<Op, String> {
        Op::ALL.into_iter().find(|op| op.as_str() == s).ok_or_else(|| {
            let names: Vec<&str> = Op::ALL.iter().map(|op| op.as_str()).collect();
            format!("unknown operation '{s}' (one of: {})", names.join(", "))
        })
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Outcome {
    Ok,
    Failed,
}

impl Outcome {
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::Failed => "failed",
        }
    }
}

impl FromStr for Outcome {
    type Err = String;

    fn from_str(s: &str) -> Result<Outcome, String> {
        match s {
            "ok" => Ok(Outcome::Ok),
            "failed" => Ok(Outcome::Failed),
            _ => Err(format!("unknown outcome '{s}' (ok or failed)")),
        }
    }
}

/// One line of the log.
///
/// `op` is kept as text rather than [`Op`] so that a log written by a newer Strata, with operations this
/// one does not know, still reads.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    /// When the operation started (Unix seconds).
    pub time: i64,
    /// `time` as `2026-12-02 17:30:00` (UTC), for people reading the file directly.
    pub time_text: String,
    /// The OS user the operation ran as (effective uid).
    pub user: String,
    pub host: String,
    pub pid: u32,
    pub op: String,
    pub stanza: Option<String>,
    /// The repository the operation worked on; none when it was about all of them.
    pub repo: Option<String>,
    /// The operation's details (arguments, backup label, ...), an object.
    pub what: serde_json::Value,
    pub outcome: Outcome,
    /// Why the operation failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    pub duration_secs: f64,
}

impl AuditEntry {
    /// An entry for an operation of this process that started at `started` and took `duration`; `error`
    /// is `None` when it succeeded.
    pub fn new(
        op: Op,
        stanza: Option<&str>,
        repo: Option<&str>,
        what: serde_json::Value,
        started: SystemTime,
        duration: Duration,
        error: Option<String>,
    ) -> AuditEntry {
        let time = started.duration_since(UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
        let (user, host) = identity();
        AuditEntry {
            time,
            time_text: format_time(time),
            user: user.clone(),
            host: host.clone(),
            pid: std::process::id(),
            op: op.as_str().to_string(),
            stanza: stanza.map(str::to_string),
            repo: repo.map(str::to_string),
            what,
            outcome: if error.is_some() { Outcome::Failed } else { Outcome::Ok },
            error,
            // Milliseconds are plenty, and keep the line short.
            duration_secs: (duration.as_secs_f64() * 1000.0).round() / 1000.0,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("audit log {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("audit log {path}: cannot encode an entry: {source}")]
    Encode { path: PathBuf, source: serde_json::Error },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> AuditError + '_ {
    move |source| AuditError::Io { path: path.to_path_buf(), source }
}

/// Appends `entry` to the log at `path` as one line, creating the file (and its directory) if needed;
/// returns once the line is durable.
pub fn append(path: &Path, entry: &AuditEntry) -> Result<(), AuditError> {
    let file = open_for_append(path)?;
    let _lock = FileLock::exclusive(&file).map_err(io_err(path))?;
    append_locked(path, &file, entry)
}

/// Records `config_bytes` as the current content of the config file `config_path`: appends a
/// `config-change` entry to the log at `log` when it differs from what was last recorded for that file, or
/// when the file was never seen. Returns the entry it appended, if any.
pub fn note_config(log: &Path, config_path: &Path, config_bytes: &[u8]) -> Result<Option<AuditEntry>, AuditError> {
    let file = open_for_append(log)?;
    let _lock = FileLock::exclusive(&file).map_err(io_err(log))?;
    let sidecar = config_hash_path(log);
    let mut known = read_sidecar(&sidecar)?;
    let key = config_path.display().to_string();
    let new_hash = blake3::hash(config_bytes).to_hex().to_string();
    let old_hash = known.configs.get(&key).cloned();
    if old_hash.as_deref() == Some(new_hash.as_str()) {
        return Ok(None);
    }
    let what = serde_json::json!({
        "config": key,
        "old_hash": old_hash,
        "new_hash": new_hash,
        "first_seen": old_hash.is_none(),
    });
    let entry = AuditEntry::new(Op::ConfigChange, None, None, what, SystemTime::now(), Duration::ZERO, None);
    append_locked(log, &file, &entry)?;
    known.configs.insert(key, new_hash);
    let owner = file.metadata().map_err(io_err(log))?;
    write_sidecar(&sidecar, &known, (owner.uid(), owner.gid()))?;
    Ok(Some(entry))
}

/// The sidecar file [`note_config`] keeps the config hashes in.
pub fn config_hash_path(log: &Path) -> PathBuf {
    let mut name = log.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(".config-hash");
    log.with_file_name(name)
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct ConfigHashes {
    /// BLAKE3 (hex) of each config file's content, by the file's path.
    configs: BTreeMap<String, String>,
}

fn read_sidecar(path: &Path) -> Result<ConfigHashes, AuditError> {
    match std::fs::read(path) {
        // Replaced atomically, so unreadable JSON means someone edited it: start over, which records every
        // config as first seen rather than hiding a change.
        Ok(bytes) => Ok(serde_json::from_slice(&bytes).unwrap_or_default()),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigHashes::default()),
        Err(e) => Err(io_err(path)(e)),
    }
}

/// Replaces the sidecar with a file owned like the log (`owner`): it is a new file each time, and one
/// written by root for `strata audit` must stay readable and replaceable by the user the other commands
/// run as.
fn write_sidecar(path: &Path, hashes: &ConfigHashes, owner: (u32, u32)) -> Result<(), AuditError> {
    let bytes =
        serde_json::to_vec_pretty(hashes).map_err(|source| AuditError::Encode { path: path.to_path_buf(), source })?;
    let mut tmp_name = path.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    tmp_name.push(format!(".tmp-{}", std::process::id()));
    let tmp = path.with_file_name(tmp_name);
    let write = || -> std::io::Result<()> {
        let mut f = OpenOptions::new().write(true).create(true).truncate(true).mode(FILE_MODE).open(&tmp)?;
        // SAFETY: geteuid cannot fail.
        if unsafe { libc::geteuid() } == 0 {
            std::os::unix::fs::fchown(&f, Some(owner.0), Some(owner.1))?;
        }
        f.write_all(&bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        sync_dir(path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io_err(path)(e)
    })
}

fn open_for_append(path: &Path) -> Result<File, AuditError> {
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    if let Some(dir) = parent {
        if !dir.is_dir() {
            std::fs::DirBuilder::new().recursive(true).mode(DIR_MODE).create(dir).map_err(io_err(path))?;
        }
    }
    let existed = path.exists();
    // Read too: the append looks at the file's last byte (see the module doc).
    let file =
        OpenOptions::new().read(true).append(true).create(true).mode(FILE_MODE).open(path).map_err(io_err(path))?;
    if !existed {
        sync_dir(path).map_err(io_err(path))?;
    }
    Ok(file)
}

fn append_locked(path: &Path, mut file: &File, entry: &AuditEntry) -> Result<(), AuditError> {
    let mut line = serde_json::to_vec(entry).map_err(|source| AuditError::Encode { path: path.to_path_buf(), source })?;
    line.push(b'\n');
    let len = file.metadata().map_err(io_err(path))?.len();
    if len > 0 {
        let mut last = [0u8];
        file.read_exact_at(&mut last, len - 1).map_err(io_err(path))?;
        if last[0] != b'\n' {
            line.insert(0, b'\n');
        }
    }
    file.write_all(&line).map_err(io_err(path))?;
    file.sync_data().map_err(io_err(path))
}

/// Makes a new or renamed directory entry durable.
fn sync_dir(path: &Path) -> std::io::Result<()> {
    let dir = path.parent().filter(|p| !p.as_os_str().is_empty()).unwrap_or(Path::new("."));
    File::open(dir)?.sync_all()
}

/// An advisory `flock(2)` on an open file, released on drop (and by the kernel when the process dies).
struct FileLock<'a>(&'a File);

impl<'a> FileLock<'a> {
    fn exclusive(file: &'a File) -> std::io::Result<FileLock<'a>> {
        Self::take(file, libc::LOCK_EX)
    }

    fn shared(file: &'a File) -> std::io::Result<FileLock<'a>> {
        Self::take(file, libc::LOCK_SH)
    }

    fn take(file: &'a File, how: libc::c_int) -> std::io::Result<FileLock<'a>> {
        loop {
            // SAFETY: flock on a file descriptor this File owns for the lifetime of the guard.
            if unsafe { libc::flock(file.as_raw_fd(), how) } == 0 {
                return Ok(FileLock(file));
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

impl Drop for FileLock<'_> {
    fn drop(&mut self) {
        // SAFETY: as in take; closing the file would release the lock as well.
        unsafe { libc::flock(self.0.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// Which entries [`read`] returns; every set field must match.
#[derive(Debug, Clone, Default)]
pub struct Filter {
    /// Operations that started at or after this Unix time.
    pub since: Option<i64>,
    pub op: Option<Op>,
    /// Operations on this stanza, and those about no stanza in particular (config changes, rekeys), which
    /// concern it too.
    pub stanza: Option<String>,
    pub outcome: Option<Outcome>,
}

impl Filter {
    pub fn matches(&self, e: &AuditEntry) -> bool {
        self.since.is_none_or(|t| e.time >= t)
            && self.op.is_none_or(|op| e.op == op.as_str())
            && self.stanza.as_ref().is_none_or(|s| e.stanza.as_ref().is_none_or(|es| es == s))
            && self.outcome.is_none_or(|o| e.outcome == o)
    }
}

/// What [`read`] found.
#[derive(Debug, Clone, Default)]
pub struct AuditRead {
    /// The matching entries, in the order they were appended.
    pub entries: Vec<AuditEntry>,
    /// Lines that are not entries (torn by a crash mid-write, or edited by hand), skipped.
    pub unreadable_lines: usize,
}

/// Reads the log at `path`. A log that does not exist yet holds no entries.
pub fn read(path: &Path, filter: &Filter) -> Result<AuditRead, AuditError> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(AuditRead::default()),
        Err(e) => return Err(io_err(path)(e)),
    };
    let mut bytes = Vec::new();
    {
        let _lock = FileLock::shared(&file).map_err(io_err(path))?;
        (&file).read_to_end(&mut bytes).map_err(io_err(path))?;
    }
    let mut out = AuditRead::default();
    for line in bytes.split(|b| *b == b'\n') {
        if line.iter().all(u8::is_ascii_whitespace) {
            continue;
        }
        match serde_json::from_slice::<AuditEntry>(line) {
            Ok(e) if filter.matches(&e) => out.entries.push(e),
            Ok(_) => {}
            Err(_) => out.unreadable_lines += 1,
        }
    }
    Ok(out)
}

/// The Unix time meant by a `--since` argument: a date (`2026-12-01`), a date and time in UTC
/// (`2026-12-01 10:00`, `2026-12-01 10:00:30`), or a duration before `now` (`24h`, `7d`, `90min`).
pub fn parse_since(text: &str, now: i64) -> Result<i64, String> {
    // Echoed in the error, which is one line whatever was typed.
    let text = text.escape_debug().to_string();
    let t = text.trim();
    if t.starts_with(|c: char| c.is_ascii_digit()) && t.len() >= 10 && t.as_bytes().get(4) == Some(&b'-') {
        let (date, time) = match t.split_once([' ', 'T']) {
            Some((d, tm)) => (d, tm.trim_end_matches('Z')),
            None => (t, "00:00:00"),
        };
        let time = if time.len() == 5 { format!("{time}:00") } else { time.to_string() };
        let at = format!("{date}T{time}")
            .parse::<jiff::civil::DateTime>()
            .and_then(|dt| dt.to_zoned(jiff::tz::TimeZone::UTC))
            .map_err(|e| format!("--since '{text}': {e} (expected 2026-12-01, '2026-12-01 10:00' or 24h)"))?;
        return Ok(at.timestamp().as_second().max(0));
    }
    // jiff's friendly durations: 24h, 7d, 90min, "1h 30m"; a day is 24 hours here.
    let secs = t
        .parse::<jiff::Span>()
        .and_then(|span| span.total((jiff::Unit::Second, jiff::SpanRelativeTo::days_are_24_hours())))
        .map_err(|e| format!("--since '{text}': {e} (expected 2026-12-01, '2026-12-01 10:00' or 24h)"))?;
    if secs < 0.0 {
        return Err(format!("--since '{text}': a duration before now cannot be negative"));
    }
    now.checked_sub(secs as i64)
        .filter(|_| secs < i64::MAX as f64)
        .ok_or_else(|| format!("--since '{text}': too long ago"))
}

#[cfg(test)]
mod tests;
