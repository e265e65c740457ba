//! What `verify` found, kept in the repository it checked, so that `info`, the verifier's metrics and its
//! alerts read the same evidence whichever host ran the verification.
//!
//! ```text
//! stanza/<S>/verify/<label>.json    the last verification of a backup (replaced by each run)
//! stanza/<S>/verify/wal.json        the last verification of the WAL archive
//! ```
//!
//! Each repository holds the results of verifying its own copy: a backup can be intact in one region and
//! damaged in another. Results are replaced, not appended: the audit log keeps the history. They are sealed
//! like records when the repository is encrypted, since they name files and segments.

use super::{stanza_dir, Repo, RepoError, Result};
use serde::{Deserialize, Serialize};
use strata_storage::StorageError;

/// One thing `verify` found wrong. Fields that do not apply are `None`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Problem {
    /// The damaged backup, or for WAL the backups whose recovery it breaks (comma-separated).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backup: Option<String>,
    /// A file of the backup that uses the damaged chunk (the first one, when several do).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub file: Option<String>,
    /// How many more files use it.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub more_files: u64,
    /// A WAL file (segment or history file).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub segment: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pack: Option<String>,
    /// What is wrong, in words ("pack missing", "chunk does not match its hash: ...").
    pub what: String,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut parts = Vec::new();
        if let Some(b) = &self.backup {
            parts.push(format!("backup {b}"));
        }
        if let Some(file) = &self.file {
            let more = if self.more_files > 0 { format!(" (and {} more files)", self.more_files) } else { String::new() };
            parts.push(format!("file {file}{more}"));
        }
        if let Some(s) = &self.segment {
            parts.push(format!("WAL {s}"));
        }
        if let Some(c) = &self.chunk {
            // The first 16 characters (of a hex id, 16 digits; of stored text, whole characters).
            parts.push(format!("chunk {}", c.char_indices().nth(16).map_or(c.as_str(), |(end, _)| &c[..end])));
        }
        if let Some(p) = &self.pack {
            parts.push(format!("pack {p}"));
        }
        if parts.is_empty() {
            write!(f, "{}", self.what)
        } else {
            write!(f, "{}: {}", parts.join(", "), self.what)
        }
    }
}

/// Problems kept in a stored result; a verify of a wrecked repository reports them all but stores this many.
pub const STORED_PROBLEMS: usize = 100;

/// The last verification of one backup (or of the WAL archive) in one repository.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VerifyResult {
    /// The backup's label, or "wal" for the WAL archive.
    pub subject: String,
    /// When the verification started and how long it took (seconds).
    pub time: i64,
    pub duration_secs: f64,
    /// Chunks read back and checked, their stored (sealed) bytes, and their plain bytes.
    pub chunks: u64,
    pub stored_bytes: u64,
    pub plain_bytes: u64,
    /// Relation pages whose PostgreSQL checksum was checked (0 when the cluster has no data checksums).
    pub pages_checked: u64,
    /// WAL files read back and checked against their recorded hash.
    pub wal_files: u64,
    /// How many problems were found, and the first [`STORED_PROBLEMS`] of them.
    pub problem_count: u64,
    pub problems: Vec<Problem>,
    /// `user@host` of the verifying process.
    pub by: String,
}

impl VerifyResult {
    pub fn ok(&self) -> bool {
        self.problem_count == 0
    }
}

/// The subject of the WAL archive's result.
pub const WAL_SUBJECT: &str = "wal";

fn result_path(stanza: &str, subject: &str) -> String {
    format!("{}/verify/{subject}.json", stanza_dir(stanza))
}

impl Repo {
    /// Stores (replaces) the result of verifying a backup or the WAL archive.
    pub async fn put_verify_result(&self, stanza: &str, result: &VerifyResult) -> Result<()> {
        let mut stored = result.clone();
        stored.problems.truncate(STORED_PROBLEMS);
        let body = serde_json::to_vec_pretty(&stored).expect("verify result serializes");
        self.storage.put(&result_path(stanza, &result.subject), self.record_bytes(body)).await.map_err(|e| self.err(e))
    }

    /// The last result for a subject (a backup's label, or [`WAL_SUBJECT`]).
    pub async fn verify_result(&self, stanza: &str, subject: &str) -> Result<Option<VerifyResult>> {
        let path = result_path(stanza, subject);
        match self.storage.get(&path).await {
            Ok(b) => {
                let plain = self.open_record(&path, b)?;
                serde_json::from_slice(&plain).map(Some).map_err(|e| RepoError::CorruptObject { path, reason: e.to_string() })
            }
            Err(StorageError::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Every stored result of a stanza, by subject. An unreadable one is reported as a problem of its own
    /// rather than failing the listing: it is evidence too.
    pub async fn verify_results(&self, stanza: &str) -> Result<Vec<VerifyResult>> {
        let dir = format!("{}/verify", stanza_dir(stanza));
        let mut out = Vec::new();
        for o in self.storage.list(&dir).await.map_err(|e| self.err(e))? {
            let Some(subject) = o.path.rsplit('/').next().and_then(|n| n.strip_suffix(".json")) else { continue };
            match self.verify_result(stanza, subject).await {
                Ok(Some(r)) => out.push(r),
                Ok(None) => {}
                Err(e) => out.push(VerifyResult {
                    subject: subject.to_string(),
                    time: o.modified,
                    duration_secs: 0.0,
                    chunks: 0,
                    stored_bytes: 0,
                    plain_bytes: 0,
                    pages_checked: 0,
                    wal_files: 0,
                    problem_count: 1,
                    problems: vec![Problem {
                        backup: None,
                        file: None,
                        more_files: 0,
                        segment: None,
                        chunk: None,
                        pack: None,
                        what: format!("the stored verify result cannot be read: {e}"),
                    }],
                    by: String::new(),
                }),
            }
        }
        Ok(out)
    }

    /// Removes a backup's result (expire, with the backup).
    pub async fn delete_verify_result(&self, stanza: &str, subject: &str) -> Result<()> {
        match self.storage.delete(&result_path(stanza, subject)).await {
            Ok(()) | Err(StorageError::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }
}

fn claim_path(stanza: &str, name: &str) -> String {
    format!("{}/verify/{name}.claim", stanza_dir(stanza))
}

impl Repo {
    /// Claims a piece of verification work (a backup to verify, a scheduled restore test) for `holder`, so
    /// that verifiers on several hosts share the work without a coordinator: the claim is an object created
    /// with put-if-absent. A claim older than `stale_after_secs` (its holder died) is taken over. Returns
    /// whether this caller holds the claim.
    pub async fn claim(&self, stanza: &str, name: &str, holder: &str, stale_after_secs: i64) -> Result<bool> {
        let path = claim_path(stanza, name);
        for _ in 0..2 {
            match self.storage.put_new(&path, bytes::Bytes::from(holder.to_string())).await {
                Ok(()) => return Ok(true),
                Err(StorageError::AlreadyExists { .. }) => {}
                Err(e) => return Err(self.err(e)),
            }
            let dir = format!("{}/verify", stanza_dir(stanza));
            let listed = self.storage.list(&dir).await.map_err(|e| self.err(e))?;
            let Some(existing) = listed.iter().find(|o| o.path == path) else { continue };
            // This host's clock against the storage's modification time: stale_after_secs is hours, not seconds.
            let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0);
            if now - existing.modified < stale_after_secs {
                return Ok(false);
            }
            tracing::warn!(claim = %path, "taking over a stale claim");
            self.release(stanza, name).await?;
        }
        Ok(false)
    }

    /// Gives a claim up (nothing to do when it is gone).
    pub async fn release(&self, stanza: &str, name: &str) -> Result<()> {
        match self.storage.delete(&claim_path(stanza, name)).await {
            Ok(()) | Err(StorageError::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }
}
