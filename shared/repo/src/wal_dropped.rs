//! Records of WAL segments that `archive-push` dropped on purpose (`archive.push_queue_max`).
//!
//! ```text
//! stanza/<S>/dropped/<segment>.json   JSON: the segment, when, the queue's size and the limit
//! ```
//!
//! Dropping a segment (telling PostgreSQL it is archived without storing it, as pgBackRest's
//! `archive-push-queue-max` does) saves a primary whose disk is filling, at the price of a hole in the
//! archive. The hole must not look like an ordinary gap, nor, at the end of the archive, like nothing at
//! all: each dropped segment gets this record before `archive-push` answers, so `info` and `check` can say
//! which backups' recoverable windows end there and why. A record is never needed to restore anything; it
//! is stored with a checksum (see the crate docs), never sealed, and one that cannot be read still counts
//! as a dropped segment (its name is the record's).

use super::{stanza_dir, Repo, RepoError, Result};
use serde::{Deserialize, Serialize};
use strata_storage::StorageError;

/// What `archive-push` recorded about a segment it dropped.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct WalDropped {
    /// The segment's name.
    pub name: String,
    /// When (Unix seconds, the database host's clock).
    pub dropped_at: i64,
    /// Bytes of WAL waiting to be archived at that moment, and the limit they were over.
    pub queue_bytes: u64,
    pub queue_max: u64,
}

fn dropped_dir(stanza: &str) -> String {
    format!("{}/dropped", stanza_dir(stanza))
}

impl Repo {
    /// Records a dropped segment (replacing an earlier record of the same segment).
    pub async fn put_wal_dropped(&self, stanza: &str, record: &WalDropped) -> Result<()> {
        let body = serde_json::to_vec_pretty(record).expect("record serializes");
        let path = format!("{}/{}.json", dropped_dir(stanza), record.name);
        self.storage.put(&path, self.unsealed_bytes(&body)).await.map_err(|e| self.err(e))
    }

    /// Every dropped segment of a stanza, sorted by name. A record that cannot be read is returned with
    /// its name only (the time and sizes zero): the segment is missing either way.
    pub async fn wal_dropped(&self, stanza: &str) -> Result<Vec<WalDropped>> {
        let objects = match self.storage.list(&dropped_dir(stanza)).await {
            Ok(o) => o,
            Err(StorageError::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(self.err(e)),
        };
        let mut out = Vec::new();
        for o in objects {
            let Some(name) = o.path.rsplit('/').next().and_then(|n| n.strip_suffix(".json")) else { continue };
            let stored = match self.storage.get(&o.path).await {
                Ok(b) => b,
                Err(StorageError::NotFound { .. }) => continue,
                Err(e) => return Err(self.err(e)),
            };
            let record = self
                .open_unsealed(&o.path, stored)
                .and_then(|body| {
                    serde_json::from_slice::<WalDropped>(&body)
                        .map_err(|e| RepoError::CorruptObject { path: o.path.clone(), reason: e.to_string() })
                })
                .ok()
                .filter(|r| r.name == name);
            out.push(record.unwrap_or(WalDropped { name: name.to_string(), dropped_at: 0, queue_bytes: 0, queue_max: 0 }));
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}
