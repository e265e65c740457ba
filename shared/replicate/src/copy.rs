//! Copying one backup or one WAL file from a source repository to a target, objects as they are.
//!
//! # Order (the commit rule on the target)
//! Before anything of a stanza: the key file (`keys/strata.keys`: a target with another key, or a key
//! where the source has none, is refused, since its chunks could not be read with the source's key),
//! the format marker and the stanza's `stanza.json`. Then for a WAL file its packs and then its record;
//! for a backup every pack its manifest references and then its record. A record is written last and
//! with put-if-absent, so on the target too a backup exists only once all its data does, and an archived
//! WAL file is never replaced.
//!
//! # Verification
//! Every object written is confirmed to be, on the target, the bytes read from the source
//! ([`Storage::put_verified`]): on a POSIX target by reading it back and comparing; on S3 without a second
//! transfer, by the ETag, the MD5 the server computed over what it stored, compared with the MD5 of the
//! source's bytes (each request also carries its Content-MD5, which S3 checks on receipt). A read-back
//! across a WAN costs as much time as the copy itself (the scale model's 100 Mbit/s, 60 ms link was 55%
//! busy with it); the ETag says as much as a read-back compared by a hash: that the server holds these
//! bytes. Where an ETag is no MD5 (SSE-KMS) or differs, the object is read back and compared after all.
//! A pack that differs is written again (up to [`PACK_ATTEMPTS`] times), then reported. Nothing is ever
//! deleted, on either side.
//!
//! # Transfers in flight
//! Over a long link each copy waits a round trip for every request, so many copies run at once: up to
//! [`PACKS_IN_FLIGHT`] packs of each item, and items (or, sharing work over NATS, single packs) side by
//! side, all of one target together holding at most [`IN_FLIGHT_BYTES`] of pack data (the replicator's
//! memory). A pack larger than that budget takes all of it.
//!
//! # Resuming
//! By construction: a pack the target has with the source's size, and a record it has with the same
//! bytes, are not copied again. Packs and records are written with one atomic put each, so a copy killed
//! at any point leaves nothing half-written under a final name.

use bytes::Bytes;
use std::collections::{BTreeSet, HashSet};
use strata_keys::KEY_FILE;
use strata_messages::PackId;
use strata_repo::{
    backup_record_path, check_same_cluster, pack_path, stanza_info_path, wal_record_path, Repo,
    FORMAT_MARKER_PATH,
};
use std::sync::Arc;
use strata_storage::{StorageError, Written};
use tokio::sync::{Mutex, Semaphore};

/// Writes of one pack before a mismatch on read-back is reported.
pub const PACK_ATTEMPTS: u32 = 3;

/// Packs of one backup or WAL file copied at once. Over a long link one copy at a time leaves it idle
/// during every round trip (the size check, the put's requests): the scale model's 100 Mbit/s, 60 ms
/// link was 22% busy with one, 55% with four and a read-back each.
pub const PACKS_IN_FLIGHT: usize = 16;

/// Pack bytes one target's copies hold at once, over all items (see the module docs). 64 MiB is five
/// seconds of a 100 Mbit/s link, many round trips; and it keeps every request within the S3 attempt
/// timeout (a minute) on a link down to about 10 Mbit/s.
pub const IN_FLIGHT_BYTES: usize = 64 << 20;

/// [`IN_FLIGHT_BYTES`] counts in KiB permits (a semaphore takes at most `u32` permits at once).
const PERMIT_BYTES: usize = 1024;

#[derive(Debug, thiserror::Error)]
pub enum CopyError {
    #[error("repository '{repo}': {path}: {source}")]
    Storage { repo: String, path: String, source: StorageError },
    #[error(transparent)]
    Repo(#[from] strata_repo::RepoError),
    #[error("{path} is in the listing of repository '{repo}' but could not be read: it vanished (expired?)")]
    SourceMissing { repo: String, path: String },
    #[error("the copy of {path} in repository '{target}' does not match the source after {attempts} attempts")]
    Mismatch { target: String, path: String, attempts: u32 },
    #[error("repository '{target}' already holds {path} with different content; it is kept and nothing is copied over it")]
    Conflict { target: String, path: String },
    #[error("repository '{target}' {reason}; refusing to replicate into it")]
    KeyMismatch { target: String, reason: String },
}

pub type Result<T> = std::result::Result<T, CopyError>;

/// What one copy wrote to the target.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Copied {
    pub objects: u64,
    pub bytes: u64,
}

impl std::ops::AddAssign for Copied {
    fn add_assign(&mut self, o: Copied) {
        self.objects += o.objects;
        self.bytes += o.bytes;
    }
}

/// What to do when a record already exists on the target with other bytes.
enum Existing {
    /// A different object under the same name: refuse.
    MustMatch,
    /// The key file: refuse the whole target.
    KeyFile,
    /// stanza.json: fine when it describes the same cluster (stanza-create ran on both).
    SameCluster,
    /// The format marker: whatever is there stays.
    Keep,
    /// A WAL record: fine when it records the same file (same hash and size), as `put_wal` accepts.
    SameWal { stanza: String, name: String },
}

/// Copies from one repository to one other.
pub struct Copier {
    pub source: Repo,
    pub target: Repo,
    /// Stanzas whose key file, marker and stanza.json are known to be on the target.
    prepared: Mutex<HashSet<String>>,
    /// Pack bytes in flight, in KiB ([`IN_FLIGHT_BYTES`]).
    in_flight: Arc<Semaphore>,
}

impl Copier {
    pub fn new(source: Repo, target: Repo) -> Copier {
        let permits = IN_FLIGHT_BYTES / PERMIT_BYTES;
        Copier { source, target, prepared: Mutex::new(HashSet::new()), in_flight: Arc::new(Semaphore::new(permits)) }
    }

    fn storage_err(repo: &Repo, path: &str, source: StorageError) -> CopyError {
        CopyError::Storage { repo: repo.name().to_string(), path: path.to_string(), source }
    }

    async fn read_source(&self, path: &str) -> Result<Bytes> {
        match self.source.storage().get(path).await {
            Ok(b) => Ok(b),
            Err(StorageError::NotFound { .. }) => {
                Err(CopyError::SourceMissing { repo: self.source.name().to_string(), path: path.to_string() })
            }
            Err(e) => Err(Self::storage_err(&self.source, path, e)),
        }
    }

    async fn read_target(&self, path: &str) -> Result<Bytes> {
        self.target.storage().get(path).await.map_err(|e| Self::storage_err(&self.target, path, e))
    }

    /// Writes `bytes` to the target and confirms it holds them.
    async fn write_verified(&self, path: &str, bytes: &Bytes, if_absent: bool) -> std::result::Result<Written, StorageError> {
        self.target.storage().put_verified(path, bytes.clone(), if_absent).await
    }

    /// Makes sure the target has what any record of `stanza` presupposes (see the module docs).
    pub async fn prepare(&self, stanza: &str) -> Result<Copied> {
        let mut prepared = self.prepared.lock().await;
        if prepared.contains(stanza) {
            return Ok(Copied::default());
        }
        let mut copied = Copied::default();
        let source_key = self.source.storage().size(KEY_FILE).await.map_err(|e| Self::storage_err(&self.source, KEY_FILE, e))?;
        match source_key {
            Some(_) => copied += self.copy_new(KEY_FILE, Existing::KeyFile).await?,
            None => {
                let target_key =
                    self.target.storage().size(KEY_FILE).await.map_err(|e| Self::storage_err(&self.target, KEY_FILE, e))?;
                if target_key.is_some() {
                    return Err(CopyError::KeyMismatch {
                        target: self.target.name().to_string(),
                        reason: format!("holds a key file ({KEY_FILE}) but the source '{}' has none", self.source.name()),
                    });
                }
            }
        }
        if self.source.storage().size(FORMAT_MARKER_PATH).await.map_err(|e| Self::storage_err(&self.source, FORMAT_MARKER_PATH, e))?.is_some() {
            copied += self.copy_new(FORMAT_MARKER_PATH, Existing::Keep).await?;
        }
        copied += self.copy_new(&stanza_info_path(stanza), Existing::SameCluster).await?;
        prepared.insert(stanza.to_string());
        Ok(copied)
    }

    /// Copies an archived WAL file: its packs, then its record.
    pub async fn copy_wal(&self, stanza: &str, name: &str) -> Result<Copied> {
        let mut copied = self.prepare(stanza).await?;
        let path = wal_record_path(stanza, name);
        let Some(record) = self.source.wal(stanza, name).await? else {
            return Err(CopyError::SourceMissing { repo: self.source.name().to_string(), path });
        };
        let packs: BTreeSet<PackId> = record.chunks.iter().map(|c| c.pack).collect();
        copied += self.copy_packs(&packs).await?;
        strata_crashpoint::hit("replicator.before-wal-record");
        copied += self.copy_new(&path, Existing::SameWal { stanza: stanza.into(), name: name.into() }).await?;
        Ok(copied)
    }

    /// Copies a committed backup: every pack it references, then its record.
    pub async fn copy_backup(&self, stanza: &str, label: &str) -> Result<Copied> {
        let mut copied = self.prepare(stanza).await?;
        let record = self.source.backup(stanza, label).await?;
        let packs: BTreeSet<PackId> = self.source.backup_packs(&record).await?.into_iter().collect();
        copied += self.copy_packs(&packs).await?;
        // Every pack is on the target; the backup does not exist there yet.
        strata_crashpoint::hit("replicator.before-backup-record");
        copied += self.copy_new(&backup_record_path(stanza, label), Existing::MustMatch).await?;
        Ok(copied)
    }

    /// Copies `packs`, [`PACKS_IN_FLIGHT`] at a time; the first failure ends the copy (the record is then
    /// not copied, and the next round tries again).
    async fn copy_packs(&self, packs: &BTreeSet<PackId>) -> Result<Copied> {
        use futures::StreamExt;
        // A hand-written window rather than `buffer_unordered` over a closure, whose future the compiler
        // cannot prove `Send` for every lifetime (the task that runs this is spawned).
        let mut waiting = packs.iter();
        let mut running = futures::stream::FuturesUnordered::new();
        let mut copied = Copied::default();
        loop {
            while running.len() < PACKS_IN_FLIGHT {
                let Some(id) = waiting.next() else { break };
                running.push(self.copy_pack(id));
            }
            match running.next().await {
                Some(one) => copied += one?,
                None => return Ok(copied),
            }
        }
    }

    /// Copies a pack unless the target has one of the same size; verified (see the module docs).
    pub async fn copy_pack(&self, id: &PackId) -> Result<Copied> {
        let path = pack_path(id);
        let source_size = self.source.storage().size(&path).await.map_err(|e| Self::storage_err(&self.source, &path, e))?;
        let Some(source_size) = source_size else {
            return Err(CopyError::SourceMissing { repo: self.source.name().to_string(), path });
        };
        let target_size = self.target.storage().size(&path).await.map_err(|e| Self::storage_err(&self.target, &path, e))?;
        if target_size == Some(source_size) {
            return Ok(Copied::default());
        }
        let total = IN_FLIGHT_BYTES / PERMIT_BYTES;
        let permits = (source_size as usize).div_ceil(PERMIT_BYTES).clamp(1, total) as u32;
        let _held = self.in_flight.acquire_many(permits).await.expect("the semaphore is never closed");
        let bytes = self.read_source(&path).await?;
        for attempt in 1..=PACK_ATTEMPTS {
            let written = self.write_verified(&path, &bytes, false).await.map_err(|e| Self::storage_err(&self.target, &path, e))?;
            if written == Written::Verified {
                return Ok(Copied { objects: 1, bytes: bytes.len() as u64 });
            }
            tracing::warn!(target_repo = self.target.name(), path, attempt, "copied pack does not match the source; writing it again");
        }
        Err(CopyError::Mismatch { target: self.target.name().to_string(), path, attempts: PACK_ATTEMPTS })
    }

    /// Copies an object that is never replaced (records, key file, stanza description) with put-if-absent.
    async fn copy_new(&self, path: &str, existing: Existing) -> Result<Copied> {
        let bytes = self.read_source(path).await?;
        match self.write_verified(path, &bytes, true).await {
            Ok(Written::Verified) => Ok(Copied { objects: 1, bytes: bytes.len() as u64 }),
            Ok(Written::Differs) => {
                // Put-if-absent cannot be retried over it; this needs a human.
                Err(CopyError::Mismatch { target: self.target.name().to_string(), path: path.into(), attempts: 1 })
            }
            Err(StorageError::AlreadyExists { .. }) => {
                let there = self.read_target(path).await?;
                if there == bytes {
                    return Ok(Copied::default());
                }
                self.accept_existing(path, &bytes, &there, existing).await?;
                Ok(Copied::default())
            }
            Err(e) => Err(Self::storage_err(&self.target, path, e)),
        }
    }

    async fn accept_existing(&self, path: &str, source: &[u8], there: &[u8], existing: Existing) -> Result<()> {
        let conflict = || CopyError::Conflict { target: self.target.name().to_string(), path: path.to_string() };
        match existing {
            Existing::Keep => Ok(()),
            Existing::MustMatch => Err(conflict()),
            Existing::KeyFile => Err(CopyError::KeyMismatch {
                target: self.target.name().to_string(),
                reason: format!("holds another data key than '{}' ({KEY_FILE} differs)", self.source.name()),
            }),
            Existing::SameCluster => {
                let parse = |b: &[u8]| strata_repo::decode_stanza_info(path, &bytes::Bytes::copy_from_slice(b)).ok();
                match (parse(source), parse(there)) {
                    (Some(s), Some(t)) => {
                        check_same_cluster(&t, s.system_id, s.pg_major)?;
                        Ok(())
                    }
                    _ => Err(conflict()),
                }
            }
            Existing::SameWal { stanza, name } => {
                let theirs = self.target.wal(&stanza, &name).await?;
                let ours = self.source.wal(&stanza, &name).await?;
                match (ours, theirs) {
                    (Some(o), Some(t)) if o.hash == t.hash && o.size == t.size => Ok(()),
                    _ => Err(conflict()),
                }
            }
        }
    }
}
