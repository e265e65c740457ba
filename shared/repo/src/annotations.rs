//! Objects beside a backup's record that may change after the commit: annotations (pins and notes), and
//! the markers of operations still running.
//!
//! ```text
//! stanza/<S>/backup/<label>.annotation   JSON: pinned, note, who and when (replaced by each `annotate`)
//! stanza/<S>/backup/<name>.running       JSON: a backup or expire in progress (kind, label, start, host, pid)
//! ```
//!
//! A record is written once (put-if-absent) and never rewritten, so anything that can change later lives
//! in its own object. An annotation is replaced whole; it is deleted with its backup's record. It is
//! stored with a checksum (see the crate docs), never sealed; markers are plain JSON, rewritten every
//! minute, and an unreadable one already counts as running.
//!
//! # Running markers
//! `strata backup` writes `<label>.running` before it sends its first chunk, refreshes it every
//! [`RUNNING_REFRESH`], and deletes it after the commit or the failure. `expire` reads the markers to know
//! which backups may still be sending chunks that nothing references yet. Times are compared in the
//! storage's clock: a marker's age is its object's modification time against the modification time of a
//! marker `expire` itself writes when it starts, so the database host's clock plays no part. The JSON body
//! (start time, host, pid) is for people looking at a stuck marker.

use super::{stanza_dir, Repo, RepoError, Result};
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use strata_storage::StorageError;

/// How often a running backup rewrites its marker, so that `expire` can tell it from a dead one.
pub const RUNNING_REFRESH: Duration = Duration::from_secs(60);

/// What `annotate` recorded about a backup.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq, Default)]
#[serde(deny_unknown_fields)]
pub struct Annotation {
    /// A pinned backup, and every backup it depends on, is never expired.
    pub pinned: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
    /// Who last changed it (`user@host`) and when (Unix seconds).
    pub changed_by: String,
    pub changed_at: i64,
}

/// Which operation a running marker stands for.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum RunningKind {
    Backup,
    Expire,
}

/// The body of a `.running` marker.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct RunningMarker {
    pub kind: RunningKind,
    /// The backup's label, or the expire run's name.
    pub label: String,
    /// When the operation started, by the clock of the host running it (for people; rules use `modified`).
    pub start_time: i64,
    pub host: String,
    pub pid: u32,
}

/// A marker as found in the repository.
#[derive(Debug, Clone)]
pub struct RunningEntry {
    pub stanza: String,
    /// The marker's name in the repository (`<name>.running`), whatever its body says.
    pub name: String,
    pub marker: RunningMarker,
    /// The marker object's last write, in the storage's clock (seconds).
    pub modified: i64,
}

fn annotation_path(stanza: &str, label: &str) -> String {
    format!("{}/backup/{label}.annotation", stanza_dir(stanza))
}

fn running_path(stanza: &str, name: &str) -> String {
    format!("{}/backup/{name}.running", stanza_dir(stanza))
}

impl Repo {
    /// Writes (or replaces) a committed backup's annotation. Refuses a backup that does not exist.
    pub async fn put_annotation(&self, stanza: &str, label: &str, annotation: &Annotation) -> Result<()> {
        self.backup(stanza, label).await?;
        let body = serde_json::to_vec_pretty(annotation).expect("annotation serializes");
        self.storage.put(&annotation_path(stanza, label), self.unsealed_bytes(&body)).await.map_err(|e| self.err(e))
    }

    /// A backup's annotation, if it has one.
    pub async fn annotation(&self, stanza: &str, label: &str) -> Result<Option<Annotation>> {
        let path = annotation_path(stanza, label);
        match self.storage.get(&path).await {
            Ok(b) => {
                let body = self.open_unsealed(&path, b)?;
                serde_json::from_slice(&body).map(Some).map_err(|e| RepoError::CorruptObject { path, reason: e.to_string() })
            }
            Err(StorageError::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Every annotation of a stanza, by label. A corrupt one is an error: it may hold a pin, and expire
    /// must not guess in the direction of deleting.
    pub async fn annotations(&self, stanza: &str) -> Result<Vec<(String, Annotation)>> {
        let dir = format!("{}/backup", stanza_dir(stanza));
        let mut out = Vec::new();
        for o in self.storage.list(&dir).await.map_err(|e| self.err(e))? {
            let Some(label) = o.path.rsplit('/').next().and_then(|n| n.strip_suffix(".annotation")) else { continue };
            if let Some(a) = self.annotation(stanza, label).await? {
                out.push((label.to_string(), a));
            }
        }
        Ok(out)
    }

    /// Removes a backup's annotation (nothing to do when it has none).
    pub async fn delete_annotation(&self, stanza: &str, label: &str) -> Result<()> {
        match self.storage.delete(&annotation_path(stanza, label)).await {
            Ok(()) | Err(StorageError::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Writes (or refreshes) the marker of a running operation; returns once it is visible to `list`.
    pub async fn put_running(&self, stanza: &str, marker: &RunningMarker) -> Result<()> {
        let body = serde_json::to_vec_pretty(marker).expect("marker serializes");
        self.storage.put(&running_path(stanza, &marker.label), Bytes::from(body)).await.map_err(|e| self.err(e))
    }

    pub async fn delete_running(&self, stanza: &str, name: &str) -> Result<()> {
        match self.storage.delete(&running_path(stanza, name)).await {
            Ok(()) | Err(StorageError::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }

    /// The markers of running operations of every stanza. A marker that cannot be read (being replaced at
    /// that moment, or damaged) still counts, as a backup of unknown start: it is the cautious reading.
    pub async fn running(&self) -> Result<Vec<RunningEntry>> {
        let mut out = Vec::new();
        for o in self.storage.list("stanza").await.map_err(|e| self.err(e))? {
            let Some(rest) = o.path.strip_prefix("stanza/") else { continue };
            let Some((stanza, file)) = rest.split_once("/backup/") else { continue };
            let Some(name) = file.strip_suffix(".running") else { continue };
            let marker = match self.storage.get(&o.path).await {
                Ok(b) => serde_json::from_slice(&b).ok(),
                Err(StorageError::NotFound { .. }) => continue,
                Err(e) => return Err(self.err(e)),
            };
            let marker = marker.unwrap_or_else(|| RunningMarker {
                kind: RunningKind::Backup,
                label: name.to_string(),
                start_time: o.modified,
                host: "?".into(),
                pid: 0,
            });
            out.push(RunningEntry { stanza: stanza.to_string(), name: name.to_string(), marker, modified: o.modified });
        }
        Ok(out)
    }

    /// Temporary files that writes killed midway left in the repository (see
    /// [`strata_storage::Storage::list_temporary`]).
    pub async fn temporary_files(&self) -> Result<Vec<strata_storage::ObjectInfo>> {
        self.storage.list_temporary("").await.map_err(|e| self.err(e))
    }

    /// Removes one of [`Repo::temporary_files`] (nothing to do when it is gone already).
    pub async fn delete_temporary(&self, path: &str) -> Result<()> {
        match self.storage.delete(path).await {
            Ok(()) | Err(StorageError::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Every archived WAL file of a stanza with the time it was archived (its record's modification time,
    /// in the storage's clock), sorted by name.
    pub async fn wal_archived_times(&self, stanza: &str) -> Result<Vec<(String, i64)>> {
        let dir = format!("{}/wal", stanza_dir(stanza));
        let objects = self.storage.list(&dir).await.map_err(|e| self.err(e))?;
        let mut out: Vec<(String, i64)> =
            objects.into_iter().filter_map(|o| Some((o.path.rsplit('/').next()?.to_string(), o.modified))).collect();
        out.sort();
        Ok(out)
    }
}
