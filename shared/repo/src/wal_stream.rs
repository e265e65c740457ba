//! Partial segments stored by `strata wal-stream`.
//!
//! ```text
//! stanza/<S>/wal-stream/<segment>   sealed WalRecord: the first `size` bytes of a segment still being written
//! ```
//!
//! Streaming stores the segment PostgreSQL is writing every `wal_stream.flush_ms`, so that a primary lost
//! now loses about a second of commits rather than everything since the last segment switch. These
//! records live beside the archive, never in it: the archive's rule that nothing archived is replaced
//! holds for `wal/`, while a partial is replaced by a longer one of the same segment each flush, and is
//! superseded (then removed) once the whole segment is archived. `archive-get` serves a partial only for a
//! segment the archive does not hold, padded with zeros to the segment size, which recovery reads as the
//! end of WAL.

use super::{stanza_dir, wal_path, Repo, RepoError, Result};
use strata_messages::{decode_wal_record, encode, WalRecord};
use strata_storage::StorageError;

fn stream_dir(stanza: &str) -> String {
    format!("{}/wal-stream", stanza_dir(stanza))
}

fn stream_path(stanza: &str, name: &str) -> String {
    format!("{}/{name}", stream_dir(stanza))
}

/// What [`Repo::put_wal_streamed`] did.
#[derive(Debug, PartialEq, Eq)]
pub enum StreamedPut {
    Stored,
    /// An equal or longer partial of the segment is stored already (a restarted streamer catching up).
    KeptLonger,
    /// The whole segment is archived: no partial is needed.
    Archived,
}

impl Repo {
    /// Stores a partial segment unless the segment is archived or a partial at least as long is stored,
    /// then removes partials of earlier segments that are archived whole.
    pub async fn put_wal_streamed(&self, stanza: &str, record: &WalRecord) -> Result<StreamedPut> {
        if self.storage.size(&wal_path(stanza, &record.name)).await.map_err(|e| self.err(e))?.is_some() {
            return Ok(StreamedPut::Archived);
        }
        if let Ok(Some(existing)) = self.wal_streamed(stanza, &record.name).await {
            if existing.size >= record.size {
                return Ok(StreamedPut::KeptLonger);
            }
        }
        self.storage.put(&stream_path(stanza, &record.name), self.record_bytes(encode(record))).await.map_err(|e| self.err(e))?;
        for name in self.wal_streamed_names(stanza).await? {
            if name < record.name && self.storage.size(&wal_path(stanza, &name)).await.map_err(|e| self.err(e))?.is_some() {
                self.delete_wal_streamed(stanza, &name).await?;
            }
        }
        Ok(StreamedPut::Stored)
    }

    /// The stored partial of segment `name`, if any.
    pub async fn wal_streamed(&self, stanza: &str, name: &str) -> Result<Option<WalRecord>> {
        let path = stream_path(stanza, name);
        match self.storage.get(&path).await {
            Ok(bytes) => {
                let record = decode_wal_record(&self.open_record(&path, bytes)?)
                    .map_err(|e| RepoError::CorruptObject { path: path.clone(), reason: e.to_string() })?;
                if record.name != name {
                    return Err(RepoError::CorruptObject { path, reason: format!("it holds segment {}", record.name) });
                }
                Ok(Some(record))
            }
            Err(StorageError::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(e)),
        }
    }

    /// Names of the stored partials, sorted (the last is the newest).
    pub async fn wal_streamed_names(&self, stanza: &str) -> Result<Vec<String>> {
        let objects = match self.storage.list(&stream_dir(stanza)).await {
            Ok(o) => o,
            Err(StorageError::NotFound { .. }) => return Ok(Vec::new()),
            Err(e) => return Err(self.err(e)),
        };
        let mut names: Vec<String> = objects
            .into_iter()
            .filter_map(|o| o.path.rsplit('/').next().map(str::to_string))
            .filter(|n| strata_pg::wal::wal_file_kind(n) == Ok(strata_pg::wal::WalFileKind::Segment))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Every stored partial that can be read, oldest first (expire keeps their packs; info shows the newest).
    pub async fn wal_streamed_all(&self, stanza: &str) -> Result<Vec<WalRecord>> {
        let mut out = Vec::new();
        for name in self.wal_streamed_names(stanza).await? {
            if let Some(r) = self.wal_streamed(stanza, &name).await? {
                out.push(r);
            }
        }
        Ok(out)
    }

    /// The newest stored partial and when it was stored (Unix seconds), for `info`.
    pub async fn wal_streamed_newest(&self, stanza: &str) -> Result<Option<(WalRecord, i64)>> {
        let objects = match self.storage.list(&stream_dir(stanza)).await {
            Ok(o) => o,
            Err(StorageError::NotFound { .. }) => return Ok(None),
            Err(e) => return Err(self.err(e)),
        };
        let newest = objects
            .into_iter()
            .filter_map(|o| Some((o.path.rsplit('/').next()?.to_string(), o.modified)))
            .filter(|(n, _)| strata_pg::wal::wal_file_kind(n) == Ok(strata_pg::wal::WalFileKind::Segment))
            .max();
        let Some((name, modified)) = newest else { return Ok(None) };
        Ok(self.wal_streamed(stanza, &name).await?.map(|r| (r, modified)))
    }

    pub async fn delete_wal_streamed(&self, stanza: &str, name: &str) -> Result<()> {
        match self.storage.delete(&stream_path(stanza, name)).await {
            Ok(()) | Err(StorageError::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.err(e)),
        }
    }
}
