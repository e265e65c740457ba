//! What can make a restore test fail, as types. Separate because these texts are a contract: a failure's
//! `Display` is the `failure` stored with the result, which `info`, the verifier's `restore-test-failed`
//! alert, the audit log and the integration tests quote, so a variant's text must not drift when the code
//! that raises it moves. Every text here is the one the test printed before the failures were typed.

use std::fmt;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;
use strata_command::format_time;

/// Why a restore test failed (the first reason, when several checks failed).
#[derive(Debug, thiserror::Error)]
pub enum RestoreTestFailure {
    /// The stanza's record could not be read.
    #[error("cannot restore: {0}")]
    Stanza(strata_repo::RepoError),
    /// The backup could not be restored.
    #[error("cannot restore: {0:#}")]
    Restore(anyhow::Error),
    /// The server's OS user or the scratch directory could not be set up.
    #[error("cannot restore: {0:#}")]
    Scratch(anyhow::Error),
    /// The WAL summaries that give a restore to the archive's end its reference time could not be read.
    #[error("cannot read the WAL archive for the reference time: {0:#}")]
    ReferenceTime(anyhow::Error),
    /// The server's files in the scratch directory (pg_hba.conf, the log) could not be written.
    #[error("cannot start the restored server: {0:#}")]
    ServerFiles(anyhow::Error),
    /// `pg_ctl start` failed; `log` is the end of the server log.
    #[error("cannot start the restored server: {cause}; server log: {log}")]
    ServerDidNotStart { cause: StartError, log: String },
    /// The server stopped before recovery ended; `log` is the end of the server log.
    #[error("the restored server stopped during recovery; server log: {log}")]
    StoppedDuringRecovery { log: String },
    /// pg_amcheck failed; its last line of output.
    #[error("amcheck found corruption or could not check: {last_line}")]
    AmcheckFound { last_line: String },
    /// pg_amcheck failed and said nothing.
    #[error("amcheck failed")]
    AmcheckFailed,
    /// A validation query failed or returned what it should not.
    #[error("query '{name}' {failure}")]
    Query { name: String, failure: QueryFailure },
    /// The deadline (`restore_test.timeout_secs`) passed while the test was at `phase`.
    #[error("timed out after {} s (while {phase})", limit.as_secs())]
    TimedOut { limit: Duration, phase: &'static str },
    /// The test was cancelled (a shutting-down verifier, ^C).
    #[error("interrupted")]
    Cancelled,
}

/// Why `pg_ctl start` did not start the restored server.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("cannot run {}: {cause}", program.display())]
    CannotRun { program: PathBuf, cause: std::io::Error },
    /// pg_ctl exited with `status`; `said` is the first line it wrote to stderr.
    #[error("pg_ctl start failed ({status}): {said}")]
    Refused { status: ExitStatus, said: String },
}

/// Why a validation query failed; its text follows "query '<name>' ".
#[derive(Debug, thiserror::Error)]
pub enum QueryFailure {
    #[error("cannot connect to database {database}: {cause}")]
    CannotConnect { database: String, cause: std::sync::Arc<PgError> },
    #[error("failed: {0}")]
    Failed(PgError),
    #[error("returned no rows")]
    NoRows,
    #[error("returned a row without columns")]
    NoColumns,
    #[error("returned NULL")]
    Null,
    #[error("returned '{value}', which is not a number")]
    NotANumber { value: String },
    #[error("returned {value}, expected ≥ {min}")]
    BelowMin { value: String, min: f64 },
    #[error("returned {value}, expected ≤ {max}")]
    AboveMax { value: String, max: f64 },
    #[error("returned '{value}', expected '{expected}'")]
    NotEqual { value: String, expected: String },
    #[error("returned '{value}', which is not a timestamp")]
    NotATimestamp { value: String },
    /// The value is older than `max_age_secs` before the reference time (Unix seconds).
    #[error(
        "returned {value}, {age_secs} s before the reference time {} UTC, expected at most {max_age_secs} s",
        format_time(*reference)
    )]
    Stale { value: String, age_secs: i64, reference: i64, max_age_secs: u64 },
}

/// An error from the restored server, shown as PostgreSQL reports it ("ERROR: relation … does not
/// exist"), without the driver's "db error: " prefix.
#[derive(Debug)]
pub struct PgError(pub tokio_postgres::Error);

impl fmt::Display for PgError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0.as_db_error() {
            Some(db) => write!(f, "{}: {}", db.severity(), db.message()),
            None => write!(f, "{}", self.0),
        }
    }
}

impl std::error::Error for PgError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::process::ExitStatusExt as _;

    /// The texts the verifier's alert, `info` and the integration tests match on.
    #[test]
    fn failures_read_as_they_always_have() {
        let timed_out = RestoreTestFailure::TimedOut { limit: Duration::from_secs(1), phase: "restoring" };
        assert_eq!(timed_out.to_string(), "timed out after 1 s (while restoring)");
        assert_eq!(RestoreTestFailure::Cancelled.to_string(), "interrupted");
        let query = RestoreTestFailure::Query {
            name: "no such table".into(),
            failure: QueryFailure::Stale { value: "2026-12-02 15:59:59+00".into(), age_secs: 3601, reference: 1_796_230_800, max_age_secs: 3600 },
        };
        assert_eq!(
            query.to_string(),
            "query 'no such table' returned 2026-12-02 15:59:59+00, 3601 s before the reference time 2026-12-02 17:00:00 UTC, expected at most 3600 s"
        );
        let start = RestoreTestFailure::ServerDidNotStart {
            cause: StartError::Refused { status: ExitStatus::from_raw(1 << 8), said: "pg_ctl: could not start server".into() },
            log: "FATAL: could not access file \"strata_no_such_library\"".into(),
        };
        assert_eq!(
            start.to_string(),
            "cannot start the restored server: pg_ctl start failed (exit status: 1): pg_ctl: could not start server; \
             server log: FATAL: could not access file \"strata_no_such_library\""
        );
        let cannot_run = StartError::CannotRun { program: "/no/pg_ctl".into(), cause: std::io::ErrorKind::NotFound.into() };
        assert_eq!(cannot_run.to_string(), "cannot run /no/pg_ctl: entity not found");
        let restore = RestoreTestFailure::Restore(anyhow::anyhow!("no backup").context("stanza 'main'"));
        assert_eq!(restore.to_string(), "cannot restore: stanza 'main': no backup");
        assert_eq!(
            RestoreTestFailure::StoppedDuringRecovery { log: "(empty)".into() }.to_string(),
            "the restored server stopped during recovery; server log: (empty)"
        );
        assert_eq!(
            RestoreTestFailure::AmcheckFound { last_line: "btree index \"i\": corrupt".into() }.to_string(),
            "amcheck found corruption or could not check: btree index \"i\": corrupt"
        );
        assert_eq!(RestoreTestFailure::AmcheckFailed.to_string(), "amcheck failed");
        assert_eq!(QueryFailure::NoRows.to_string(), "returned no rows");
        assert_eq!(QueryFailure::NoColumns.to_string(), "returned a row without columns");
        assert_eq!(QueryFailure::BelowMin { value: "1".into(), min: 2.5 }.to_string(), "returned 1, expected ≥ 2.5");
    }
}
