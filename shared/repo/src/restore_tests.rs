//! Results of restore tests: what `strata restore-test` (or the verifier, on its schedule) found when it
//! restored a backup into a scratch directory, started PostgreSQL on it and ran the checks.
//!
//! ```text
//! stanza/<S>/restore-test/<yyyymmddThhmmssZ>-<label>.json   one result (UTC start time, backup label)
//! ```
//!
//! Each result is one JSON object, written once and never changed; names sort by start time, so listing
//! the directory gives the history oldest first and the newest is the last name. In an encrypted
//! repository the JSON is sealed like a record (it names tables, values and log lines of the cluster).
//! A result is kept whatever the backup's fate: expire does not remove it, so the history of tests
//! outlives the backups they tested.

use super::{stanza_dir, Repo, RepoError, Result};
use serde::{Deserialize, Serialize};

/// The format of a stored result; a reader refuses a newer one rather than misreading it.
pub const RESTORE_TEST_FORMAT: u32 = 1;

/// What a restore test did and found.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RestoreTestResult {
    /// [`RESTORE_TEST_FORMAT`].
    pub format: u32,
    pub stanza: String,
    /// The repository the backup was read from.
    pub repo: String,
    /// The backup restored; empty when the test failed before one was chosen.
    pub label: String,
    /// Where recovery was asked to stop, as given: `default` (the archive's end), `immediate`, or
    /// `time`, `lsn`, `xid`, `name` with [`RestoreTestResult::target`].
    pub target_type: String,
    pub target: Option<String>,
    /// When the test started (Unix seconds, this host's clock).
    pub start_time: i64,
    /// Restoring the backup's files into the scratch directory.
    pub restore_ms: Option<u64>,
    pub restore_files: u64,
    pub restore_bytes: u64,
    /// From starting the server until recovery had finished and it accepted connections.
    pub replay_ms: Option<u64>,
    /// The whole test, cleanup included.
    pub total_ms: u64,
    /// The largest total memory of the restored server's processes (postmaster and its descendants),
    /// sampled every 200 ms; see [`RestoreTestResult::memory_measure`].
    pub peak_memory_bytes: Option<u64>,
    /// `pss` (proportional set size from smaps_rollup: shared memory counted once across the processes)
    /// or `rss` (when smaps_rollup could not be read; shared buffers then count once per process).
    pub memory_measure: Option<String>,
    /// The time freshness checks (`max_age_secs`) were measured against (Unix seconds), and where it came
    /// from (for example "last transaction archived").
    pub reference_time: Option<i64>,
    pub reference_source: Option<String>,
    /// The restored server's postmaster, for anyone checking it is gone.
    pub postmaster_pid: Option<u32>,
    /// The scratch directory (removed at the end of the test).
    pub work_dir: String,
    /// `pg_amcheck --all`, when configured.
    pub amcheck: Option<AmcheckOutcome>,
    pub queries: Vec<QueryOutcome>,
    pub passed: bool,
    /// Why the test failed (the first reason found).
    pub failure: Option<String>,
    /// A problem stopping the server or removing the directory (reported, but not a failure of the
    /// backup).
    pub cleanup_error: Option<String>,
}

/// What pg_amcheck said.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct AmcheckOutcome {
    pub passed: bool,
    pub duration_ms: u64,
    /// The end of its output (the corruption report when it failed).
    pub output: String,
}

/// One validation query's value and verdict.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct QueryOutcome {
    pub name: String,
    pub database: String,
    /// The first column of the first row, as text; `None` when the query failed, returned no row or NULL.
    pub value: Option<String>,
    pub passed: bool,
    /// Why it did not pass.
    pub reason: Option<String>,
}

fn restore_test_dir(stanza: &str) -> String {
    format!("{}/restore-test", stanza_dir(stanza))
}

/// Where a result is stored.
pub fn restore_test_path(stanza: &str, result: &RestoreTestResult) -> String {
    let label = if result.label.is_empty() { "none" } else { &result.label };
    format!("{}/{}-{label}.json", restore_test_dir(stanza), strata_stamp::format_time_compact(result.start_time))
}

impl Repo {
    /// Stores a restore test's result (replacing one of the same start second and label, which can only be
    /// the same test's).
    pub async fn put_restore_test(&self, stanza: &str, result: &RestoreTestResult) -> Result<()> {
        let body = serde_json::to_vec_pretty(result).expect("a restore test result serializes");
        let path = restore_test_path(stanza, result);
        self.storage.put(&path, self.record_bytes(body)).await.map_err(|e| self.err(e))
    }

    /// Every stored result of a stanza, oldest first.
    pub async fn restore_tests(&self, stanza: &str) -> Result<Vec<RestoreTestResult>> {
        let mut out = Vec::new();
        for path in self.restore_test_paths(stanza).await? {
            if let Some(r) = self.read_restore_test(&path).await? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The newest result of a stanza, if it was ever tested.
    pub async fn latest_restore_test(&self, stanza: &str) -> Result<Option<RestoreTestResult>> {
        for path in self.restore_test_paths(stanza).await?.iter().rev() {
            if let Some(r) = self.read_restore_test(path).await? {
                return Ok(Some(r));
            }
        }
        Ok(None)
    }

    /// The stored results' paths, oldest first (the names start with the UTC start time).
    async fn restore_test_paths(&self, stanza: &str) -> Result<Vec<String>> {
        let objects = self.storage.list(&restore_test_dir(stanza)).await.map_err(|e| self.err(e))?;
        let mut paths: Vec<String> = objects.into_iter().map(|o| o.path).filter(|p| p.ends_with(".json")).collect();
        paths.sort();
        Ok(paths)
    }

    /// One result; `None` when it vanished since it was listed.
    async fn read_restore_test(&self, path: &str) -> Result<Option<RestoreTestResult>> {
        let stored = match self.storage.get(path).await {
            Ok(b) => b,
            Err(strata_storage::StorageError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.err(e)),
        };
        let plain = self.open_record(path, stored)?;
        let result: RestoreTestResult = serde_json::from_slice(&plain)
            .map_err(|e| RepoError::CorruptObject { path: path.into(), reason: e.to_string() })?;
        if result.format > RESTORE_TEST_FORMAT {
            return Err(RepoError::CorruptObject {
                path: path.into(),
                reason: format!("has format {}, newer than this strata reads ({RESTORE_TEST_FORMAT})", result.format),
            });
        }
        Ok(Some(result))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use strata_storage::PosixStorage;

    fn result(start_time: i64, label: &str, passed: bool) -> RestoreTestResult {
        RestoreTestResult {
            format: RESTORE_TEST_FORMAT,
            stanza: "main".into(),
            repo: "local".into(),
            label: label.into(),
            target_type: "default".into(),
            target: None,
            start_time,
            restore_ms: Some(1200),
            restore_files: 10,
            restore_bytes: 1 << 20,
            replay_ms: Some(300),
            total_ms: 2000,
            peak_memory_bytes: Some(150 << 20),
            memory_measure: Some("pss".into()),
            reference_time: Some(start_time - 10),
            reference_source: Some("last transaction archived".into()),
            postmaster_pid: Some(4242),
            work_dir: "/tmp/x".into(),
            amcheck: Some(AmcheckOutcome { passed: true, duration_ms: 50, output: String::new() }),
            queries: vec![QueryOutcome {
                name: "rows".into(),
                database: "postgres".into(),
                value: Some("5".into()),
                passed,
                reason: (!passed).then(|| "returned 5, expected at least 6".into()),
            }],
            passed,
            failure: (!passed).then(|| "query 'rows' returned 5, expected at least 6".into()),
            cleanup_error: None,
        }
    }

    #[test]
    fn names_sort_by_utc_start_time() {
        assert_eq!(strata_stamp::format_time_compact(0), "19700101T000000Z");
        assert_eq!(strata_stamp::format_time_compact(1_796_231_605), "20261202T171325Z");
        assert_eq!(strata_stamp::format_time_compact(951_825_600), "20000229T120000Z");
        assert_eq!(
            restore_test_path("main", &result(1_796_231_605, "", false)),
            "stanza/main/restore-test/20261202T171325Z-none.json"
        );
    }

    #[tokio::test]
    async fn results_round_trip_oldest_first_and_sealed_when_encrypted() {
        for sealer in [strata_seal::Sealer::default(), strata_seal::Sealer::encrypted(strata_seal::ChunkCipher::new(&[7; 32]))] {
            let dir = tempfile::tempdir().unwrap();
            let storage = Arc::new(PosixStorage::open(dir.path()).unwrap());
            let repo = Repo::new("local", storage).with_sealer(sealer.clone());
            assert_eq!(repo.latest_restore_test("main").await.unwrap(), None);
            let (newer, older) = (result(1_796_231_700, "B", false), result(1_796_231_605, "A", true));
            repo.put_restore_test("main", &newer).await.unwrap();
            repo.put_restore_test("main", &older).await.unwrap();
            assert_eq!(repo.restore_tests("main").await.unwrap(), vec![older.clone(), newer.clone()]);
            assert_eq!(repo.latest_restore_test("main").await.unwrap(), Some(newer.clone()));
            assert!(repo.restore_tests("other").await.unwrap().is_empty());
            let stored = std::fs::read(dir.path().join(restore_test_path("main", &newer))).unwrap();
            let plain = String::from_utf8_lossy(&stored).contains("expected at least 6");
            assert_eq!(plain, !sealer.is_encrypted(), "sealed exactly when the repository is encrypted");
        }
    }
}
