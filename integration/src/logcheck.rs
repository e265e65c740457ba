//! Log checks after a test, and waiting for a log line.
//!
//! neon's test fixtures fail a test whose server logs contain an unexpected ERROR, even when the test's
//! own assertions passed (`allowed_errors`, `assert_no_errors`): an error a test did not ask for is a bug
//! nobody looked at. [`LogCheck`] does the same for one log file: every line containing the word `ERROR`,
//! `PANIC` or `FATAL` (PostgreSQL, tracing), or `[ERR]` or `[FTL]` (nats-server), must match one of the
//! allowlist's regexes.
//!
//! ANSI colour codes are stripped before matching (tracing-subscriber colours levels by default, and
//! `\x1b[31mERROR` has no word boundary before `ERROR`).

use std::path::Path;
use std::thread;
use std::time::{Duration, Instant};

use regex::Regex;

use crate::process::{log_tail, POLL_INTERVAL};

/// Messages a PostgreSQL server logs in normal test life: connection attempts (pg_isready) while it starts
/// or stops, and client sessions (pgbench) ended by a fast shutdown.
pub const POSTGRES_BENIGN: &[&str] = &[
    r"FATAL:  the database system is starting up",
    r"FATAL:  the database system is shutting down",
    r"FATAL:  the database system is not yet accepting connections",
    r"FATAL:  terminating connection due to administrator command",
    r"FATAL:  terminating autovacuum process due to administrator command",
    r"FATAL:  terminating walreceiver process due to administrator command",
];

fn level_regex() -> &'static Regex {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| Regex::new(r"\b(ERROR|PANIC|FATAL)\b|\[(ERR|FTL)\]").expect("valid regex"))
}

fn ansi_regex() -> &'static Regex {
    static RE: std::sync::OnceLock<Regex> = std::sync::OnceLock::new();
    RE.get_or_init(|| Regex::new(r"\x1b\[[0-9;]*[A-Za-z]").expect("valid regex"))
}

fn compile(pattern: &str) -> Regex {
    Regex::new(pattern).unwrap_or_else(|e| panic!("bad log pattern {pattern:?}: {e}"))
}

/// An allowlist of expected error lines. See the module docs.
#[derive(Debug, Clone, Default)]
pub struct LogCheck {
    allowed: Vec<Regex>,
}

impl LogCheck {
    /// No error line allowed.
    pub fn new() -> LogCheck {
        LogCheck::default()
    }

    /// Allows [`POSTGRES_BENIGN`]; for PostgreSQL server logs.
    pub fn postgres() -> LogCheck {
        POSTGRES_BENIGN
            .iter()
            .fold(LogCheck::new(), |check, p| check.allow(p))
    }

    /// Allows lines matching `pattern` (a regex, searched anywhere in the line); panics on a bad regex.
    pub fn allow(mut self, pattern: &str) -> LogCheck {
        self.allowed.push(compile(pattern));
        self
    }

    /// The error lines of `text` that no allowlist entry matches.
    pub fn unexpected_in(&self, text: &str) -> Vec<String> {
        text.lines()
            .map(|line| ansi_regex().replace_all(line, "").into_owned())
            .filter(|line| level_regex().is_match(line))
            .filter(|line| !self.allowed.iter().any(|re| re.is_match(line)))
            .collect()
    }

    /// The unexpected error lines of the file at `path`; panics if it cannot be read.
    pub fn unexpected_lines(&self, path: &Path) -> Vec<String> {
        let bytes = std::fs::read(path)
            .unwrap_or_else(|e| panic!("cannot read log {}: {e}", path.display()));
        self.unexpected_in(&String::from_utf8_lossy(&bytes))
    }

    /// Panics, listing them, if the file at `path` has unexpected error lines.
    pub fn assert_clean(&self, path: &Path) {
        let lines = self.unexpected_lines(path);
        if !lines.is_empty() {
            panic!(
                "{} has {} unexpected error line(s) (allow them with LogCheck::allow if the test expects them):\n{}",
                path.display(),
                lines.len(),
                lines.join("\n")
            );
        }
    }
}

/// The check a process handle ([`crate::Service`], [`crate::PgCluster`], [`crate::NatsServer`]) runs on
/// its log when it is dropped at the end of a test, so every test checks the logs of what it started
/// without asking. A test that provokes errors on purpose says which ([`LogCheckOnDrop::allow`]), or, for a
/// process whose log is all failure by design, why it is not checked ([`LogCheckOnDrop::skip`]).
///
/// An unexpected line fails the test (the handle's Drop panics). `STRATA_TEST_LOGCHECK=warn` prints them
/// instead (`LOGCHECK:` on the test's stderr, shown with `--nocapture`), to survey a whole suite in one run.
#[derive(Debug, Clone)]
pub struct LogCheckOnDrop {
    check: Option<LogCheck>,
}

impl LogCheckOnDrop {
    pub fn new(check: LogCheck) -> LogCheckOnDrop {
        LogCheckOnDrop { check: Some(check) }
    }

    /// Allows lines matching `pattern` (a regex) in this process's log.
    pub fn allow(&mut self, pattern: &str) {
        if let Some(check) = self.check.take() {
            self.check = Some(check.allow(pattern));
        }
    }

    /// Leaves this process's log unchecked; `why` is for the reader of the test.
    pub fn skip(&mut self, why: &str) {
        let _ = why;
        self.check = None;
    }

    /// Runs the check on `log` unless the thread is already panicking (the test failed anyway) or the log
    /// was never written.
    pub fn run(&self, what: &str, log: &Path) {
        let Some(check) = &self.check else { return };
        if std::thread::panicking() || !log.exists() {
            return;
        }
        let lines = check.unexpected_lines(log);
        if lines.is_empty() {
            return;
        }
        let message = format!(
            "{what}'s log {} has {} unexpected error line(s) (a test that expects them allows them on the handle):\n{}",
            log.display(),
            lines.len(),
            lines.join("\n")
        );
        if std::env::var("STRATA_TEST_LOGCHECK").as_deref() == Ok("warn") {
            eprintln!("LOGCHECK: {message}");
        } else {
            panic!("{message}");
        }
    }
}

/// Panics if the log at `path` has error lines that match none of `allowed` (regexes).
pub fn assert_no_errors(path: &Path, allowed: &[&str]) {
    allowed
        .iter()
        .fold(LogCheck::new(), |check, p| check.allow(p))
        .assert_clean(path);
}

/// Waits until a line of the file at `path` matches `pattern` and returns that line. Panics after
/// `timeout`, or as soon as `alive()` returns false (the writer is gone, so the line will never come),
/// with the file's tail. A file that does not exist yet counts as empty.
pub fn wait_for_line(
    path: &Path,
    pattern: &str,
    timeout: Duration,
    mut alive: impl FnMut() -> bool,
) -> String {
    let re = compile(pattern);
    let deadline = Instant::now() + timeout;
    loop {
        // Read before checking liveness: a process that logged the line and then exited still counts.
        if let Ok(bytes) = std::fs::read(path) {
            let text = String::from_utf8_lossy(&bytes);
            if let Some(line) = text
                .lines()
                .map(|l| ansi_regex().replace_all(l, ""))
                .find(|l| re.is_match(l))
            {
                return line.into_owned();
            }
        }
        if !alive() {
            panic!(
                "the writer of {} exited before logging /{pattern}/\n{}",
                path.display(),
                log_tail(path, 40)
            );
        }
        if Instant::now() >= deadline {
            panic!(
                "no line matching /{pattern}/ in {} after {timeout:?}\n{}",
                path.display(),
                log_tail(path, 40)
            );
        }
        thread::sleep(POLL_INTERVAL * 4);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "\
2025-01-01 00:00:00.000 UTC [10] LOG:  database system is ready to accept connections
2025-01-01 00:00:01.000 UTC [11] FATAL:  the database system is starting up
2025-01-01 00:00:02.000 UTC [12] ERROR:  relation \"nope\" does not exist
2025-01-01T00:00:03Z \x1b[31mERROR\x1b[0m strata_uploader: pack write failed
2025-01-01T00:00:04Z  INFO strata_uploader: an ERRORS_TOTAL metric name is not an error line
[4242] 2025/01/01 00:00:05.000000 [ERR] 127.0.0.1:5555 - cid:7 - Slow Consumer Detected
";

    #[test]
    fn flags_only_unallowed_error_lines() {
        let lines = LogCheck::postgres().unexpected_in(SAMPLE);
        assert_eq!(lines.len(), 3, "{lines:?}");
        assert!(lines[0].contains("relation \"nope\""));
        assert!(
            lines[1].starts_with("2025-01-01T00:00:03Z ERROR strata_uploader"),
            "{lines:?}"
        );
        assert!(lines[2].contains("Slow Consumer"), "{lines:?}");
    }

    #[test]
    fn allowlist_entries_are_regexes() {
        let check = LogCheck::postgres()
            .allow(r#"relation "\w+" does not exist"#)
            .allow("pack write failed$")
            .allow(r"\[ERR\] .* Slow Consumer");
        assert!(check.unexpected_in(SAMPLE).is_empty());
    }
}
