//! The repository format, over any [`Storage`].
//!
//! ```text
//! strata.repo                              format marker (JSON), written by the first stanza-create
//! pack/<2 hex>/<32 hex>.pack               sealed chunks of any stanza, then the pack's index (see [`pack`])
//! stanza/<name>/stanza.json                the cluster the stanza is for (system id, major version)
//! stanza/<name>/backup/<label>.record      a committed backup: summary + where its manifest's chunks are
//! stanza/<name>/wal/<16 hex>/<wal file>    an archived WAL file: its hash + where its chunks are
//! ```
//!
//! # Consistency
//! Objects are written durably before they are referenced: packs first, then records. A backup exists only
//! once its record is written, and the record is written only after every pack it references is present
//! ([`Repo::commit_backup`] checks). A failed or interrupted backup leaves packs that no record references;
//! they are invisible to `info` and `restore` (expire reclaims them). WAL records are created with
//! `put_new`, so an archived WAL file is never replaced; pushing the same name again is accepted only with
//! identical content.
//!
//! Packs are shared by all stanzas, so identical chunks are stored once across the repository.
//!
//! # Integrity of small objects
//! Packs carry their own checks (each chunk's id, the index's hash). Every other object the repository
//! writes through [`Repo`] (backup, checkpoint and WAL records, verify and restore-test results,
//! annotations, `stanza.json`) is stored in one of two checked forms, so that a flipped byte that still decodes is
//! caught rather than believed:
//!
//! ```text
//! STRSEAL1 | sealed envelope (AES-256-GCM)         encrypted repository (records and results)
//! STRSUM01 | BLAKE3 of the body (32 bytes) | body  otherwise (and annotations everywhere)
//! ```
//!
//! The body is the rkyv archive (records, framed by its format header: see `strata_messages::format`)
//! or JSON (results, annotations). An object without either magic
//! is the unchecked form older builds wrote, still read in an unencrypted repository (rkyv archives and
//! JSON never start with these bytes). A mismatch is [`RepoError::CorruptObject`]. `stanza.json` is
//! written in the checked form too ([`decode_stanza_info`] reads both), so a flipped digit of its segment
//! size is a corrupt object, not a different cluster.
//!
//! # Damaged records
//! One unreadable record is a finding about that backup or WAL file, not a failure of the stanza:
//! [`Repo::backups_checked`] and [`Repo::wal_records_checked`] return the readable records and the
//! damaged ones apart, and [`Repo::backups`] the readable ones only.

pub mod annotations;
pub mod pack;
pub mod restore_tests;
pub mod verify_results;
pub mod wal_dropped;
pub mod wal_stream;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use std::collections::{HashMap, HashSet};
use std::sync::Arc;
use strata_messages::{
    decode, encode, hex, BackupCheckpoint, BackupRecord, ChunkId, ChunkRef, FileEntry, FileList, Manifest, ManifestHead, PackId,
    WalRecord,
};
use strata_seal::{SealError, Sealer};
use strata_storage::{Storage, StorageError};

mod chunk_index;
mod records;
pub use chunk_index::ChunkIndex;
pub use records::{decode_stanza_info, DamagedRecord};
use records::{checked_bytes, damage, open_checked, SEALED_RECORD_MAGIC};
#[cfg(test)]
use records::{CHECKED_RECORD_MAGIC, CHECKSUM_LEN};
pub use pack::PackBuilder;
pub use wal_stream::StreamedPut;

const FORMAT_MARKER: &str = "strata.repo";
const REPO_FORMAT: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error("stanza '{stanza}' does not exist in repository {repo} (run stanza-create)")]
    NoStanza { stanza: String, repo: String },
    #[error("stanza '{stanza}' {reason}")]
    StanzaMismatch { stanza: String, reason: String },
    #[error("backup '{label}' does not exist in stanza '{stanza}'")]
    NoBackup { stanza: String, label: String },
    #[error("WAL file {name} is already archived with different content; the archived copy is kept")]
    WalConflict { name: String },
    #[error("pack {pack} is corrupt: {reason}")]
    CorruptPack { pack: String, reason: String },
    #[error("{path} is corrupt: {reason}")]
    CorruptObject { path: String, reason: String },
    #[error("chunk {chunk} (pack {pack}): {source}")]
    Chunk { chunk: String, pack: String, source: SealError },
    #[error("repository {repo}: {source}")]
    Storage { repo: String, source: StorageError },
}

pub type Result<T> = std::result::Result<T, RepoError>;

/// The cluster a stanza backs up; every backup and WAL file is checked against it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct StanzaInfo {
    pub stanza: String,
    pub system_id: u64,
    pub pg_version_num: u32,
    pub pg_major: u32,
    pub wal_segment_size: u64,
    pub created: i64,
}

/// Result of pushing a WAL record.
#[derive(Debug, PartialEq, Eq)]
pub enum WalPut {
    Stored,
    /// The same file (same hash) was already archived; nothing was written.
    AlreadyArchived,
}

#[derive(Clone)]
pub struct Repo {
    name: String,
    storage: Arc<dyn Storage>,
    /// Opens chunks and records: with the repository's data key when it is encrypted.
    sealer: Sealer,
}

pub fn pack_path(id: &PackId) -> String {
    let h = hex(id);
    format!("pack/{}/{}.pack", &h[..2], h)
}

fn stanza_dir(stanza: &str) -> String {
    format!("stanza/{stanza}")
}

fn wal_path(stanza: &str, name: &str) -> String {
    let dir = if name.len() >= 24 { &name[..16] } else { "history" };
    format!("{}/wal/{dir}/{name}", stanza_dir(stanza))
}

/// Where an archived WAL file's record is (for code that copies objects as they are, the replicator).
pub fn wal_record_path(stanza: &str, name: &str) -> String {
    wal_path(stanza, name)
}

/// Where a committed backup's record is.
pub fn backup_record_path(stanza: &str, label: &str) -> String {
    format!("{}/backup/{label}.record", stanza_dir(stanza))
}

/// Where a stanza's cluster description is.
pub fn stanza_info_path(stanza: &str) -> String {
    format!("{}/stanza.json", stanza_dir(stanza))
}

/// The repository's format marker, written by the first stanza-create.
pub const FORMAT_MARKER_PATH: &str = FORMAT_MARKER;

impl Repo {
    pub fn new(name: impl Into<String>, storage: Arc<dyn Storage>) -> Self {
        Repo { name: name.into(), storage, sealer: Sealer::default() }
    }

    /// The same repository, reading and writing with `sealer` (the repository's key, when encrypted).
    pub fn with_sealer(mut self, sealer: Sealer) -> Self {
        self.sealer = sealer;
        self
    }

    /// The sealer for this repository's chunks: encrypted with its data key, or plain.
    pub fn sealer(&self) -> &Sealer {
        &self.sealer
    }

    /// A record's bytes as stored: sealed when the repository is encrypted, else with a checksum.
    fn record_bytes(&self, plain: Vec<u8>) -> Bytes {
        if !self.sealer.is_encrypted() {
            return checked_bytes(&plain);
        }
        let mut out = SEALED_RECORD_MAGIC.to_vec();
        out.extend_from_slice(&self.sealer.seal_object(&plain));
        Bytes::from(out)
    }

    /// A stored record's plain bytes: unsealed, or checked against its checksum, or (written by an older
    /// build into an unencrypted repository) as they are.
    fn open_record(&self, path: &str, stored: Bytes) -> Result<Bytes> {
        if let Some(sealed) = stored.strip_prefix(SEALED_RECORD_MAGIC) {
            return self
                .sealer
                .unseal_object(sealed)
                .map(Bytes::from)
                .map_err(|e| RepoError::CorruptObject { path: path.into(), reason: e.to_string() });
        }
        if self.sealer.is_encrypted() {
            return Err(RepoError::CorruptObject { path: path.into(), reason: "is not encrypted, but the repository is".into() });
        }
        open_checked(path, &stored).unwrap_or(Ok(stored))
    }

    /// An object that is never sealed (annotations), with its checksum.
    fn unsealed_bytes(&self, plain: &[u8]) -> Bytes {
        checked_bytes(plain)
    }

    /// A stored unsealed object's body, checked; an older build's unchecked one as it is.
    fn open_unsealed(&self, path: &str, stored: Bytes) -> Result<Bytes> {
        open_checked(path, &stored).unwrap_or(Ok(stored))
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    pub fn storage(&self) -> &Arc<dyn Storage> {
        &self.storage
    }

    fn err(&self, source: StorageError) -> RepoError {
        RepoError::Storage { repo: format!("'{}' ({})", self.name, self.storage.describe()), source }
    }

    /// Checks that the repository is reachable and writable.
    pub async fn check_writable(&self) -> Result<()> {
        self.storage.check_writable().await.map_err(|e| self.err(e))
    }

    // ---------------------------------------------------------------- stanzas

    /// Creates the stanza, or confirms an existing one describes the same cluster.
    pub async fn create_stanza(&self, info: &StanzaInfo) -> Result<bool> {
        if self.storage.size(FORMAT_MARKER).await.map_err(|e| self.err(e))?.is_none() {
            let marker = serde_json::json!({ "format": REPO_FORMAT }).to_string();
            self.storage.put(FORMAT_MARKER, Bytes::from(marker)).await.map_err(|e| self.err(e))?;
        }
        match self.stanza(&info.stanza).await {
            Ok(existing) => {
                check_same_cluster(&existing, info.system_id, info.pg_major)?;
                Ok(false)
            }
            Err(RepoError::NoStanza { .. }) => {
                let body = serde_json::to_vec_pretty(info).expect("stanza info serializes");
                let path = format!("{}/stanza.json", stanza_dir(&info.stanza));
                match self.storage.put_new(&path, checked_bytes(&body)).await {
                    Ok(()) => Ok(true),
                    // Another stanza-create won the race; it must agree with us.
                    Err(StorageError::AlreadyExists { .. }) => {
                        check_same_cluster(&self.stanza(&info.stanza).await?, info.system_id, info.pg_major)?;
                        Ok(false)
                    }
                    Err(e) => Err(self.err(e)),
                }
            }
            Err(e) => Err(e),
        }
    }

    pub async fn stanza(&self, stanza: &str) -> Result<StanzaInfo> {
        let path = format!("{}/stanza.json", stanza_dir(stanza));
        match self.storage.get(&path).await {
            Ok(b) => decode_stanza_info(&path, &b),
            Err(StorageError::NotFound { .. }) => {
                Err(RepoError::NoStanza { stanza: stanza.into(), repo: self.name.clone() })
            }
            Err(e) => Err(self.err(e)),
        }
    }

    // ---------------------------------------------------------------- packs

    /// Writes a finished pack durably and returns where each of its chunks now is.
    pub async fn write_pack(&self, pack: PackBuilder) -> Result<Vec<ChunkRef>> {
        let (id, bytes, refs) = pack.finish();
        self.storage.put(&pack_path(&id), bytes).await.map_err(|e| self.err(e))?;
        Ok(refs)
    }

    /// Every pack in the repository.
    pub async fn list_packs(&self) -> Result<Vec<(PackId, u64)>> {
        Ok(self.list_packs_detailed().await?.into_iter().map(|(id, o)| (id, o.size)).collect())
    }

    /// Every pack with its size and modification time.
    pub async fn list_packs_detailed(&self) -> Result<Vec<(PackId, strata_storage::ObjectInfo)>> {
        let objects = self.storage.list("pack").await.map_err(|e| self.err(e))?;
        Ok(objects.into_iter().filter_map(|o| pack::parse_pack_path(&o.path).map(|id| (id, o))).collect())
    }

    /// Deletes a pack. Only expire calls this, after proving nothing kept references it.
    pub async fn delete_pack(&self, id: &PackId) -> Result<()> {
        self.storage.delete(&pack_path(id)).await.map_err(|e| self.err(e))
    }

    /// Every stanza in the repository (packs are shared, so expire must consider them all).
    pub async fn stanzas(&self) -> Result<Vec<String>> {
        let objects = self.storage.list("stanza").await.map_err(|e| self.err(e))?;
        let mut names: Vec<String> = objects
            .iter()
            .filter_map(|o| o.path.strip_prefix("stanza/")?.strip_suffix("/stanza.json").map(str::to_string))
            .collect();
        names.sort();
        Ok(names)
    }

    /// Reads a pack's index from its tail.
    pub async fn pack_index(&self, id: &PackId, size: u64) -> Result<Vec<ChunkRef>> {
        let path = pack_path(id);
        let corrupt = |reason: String| RepoError::CorruptPack { pack: hex(id), reason };
        if size < pack::FOOTER_LEN as u64 {
            return Err(corrupt(format!("{size} bytes is too short for a pack")));
        }
        let footer = self.storage.get_range(&path, size - pack::FOOTER_LEN as u64, pack::FOOTER_LEN as u64).await;
        let footer = footer.map_err(|e| self.err(e))?;
        let (count, digest) = pack::parse_footer(&footer).map_err(corrupt)?;
        let index_len = count as u64 * pack::INDEX_ENTRY_LEN as u64;
        if index_len + pack::FOOTER_LEN as u64 > size {
            return Err(corrupt(format!("index of {count} entries does not fit in {size} bytes")));
        }
        let start = size - pack::FOOTER_LEN as u64 - index_len;
        let index = self.storage.get_range(&path, start, index_len).await.map_err(|e| self.err(e))?;
        pack::parse_index(id, &index, &digest, start).map_err(corrupt)
    }

    /// The sealed bytes of one chunk.
    pub async fn read_sealed(&self, r: &ChunkRef) -> Result<Bytes> {
        self.storage.get_range(&pack_path(&r.pack), r.offset, r.sealed_len as u64).await.map_err(|e| self.err(e))
    }

    /// The plain bytes of one chunk, checked against its content address.
    pub async fn read_chunk(&self, sealer: &Sealer, r: &ChunkRef) -> Result<Vec<u8>> {
        let sealed = self.read_sealed(r).await?;
        sealer
            .unseal(&sealed, &r.id)
            .map_err(|source| RepoError::Chunk { chunk: hex(&r.id), pack: hex(&r.pack), source })
    }

    // ---------------------------------------------------------------- backups

    /// Publishes a backup: the commit point. Refuses when a referenced pack is missing or the label is taken.
    pub async fn commit_backup(&self, stanza: &str, packs: &[PackId], record: &BackupRecord) -> Result<()> {
        let label = &record.summary.label;
        for id in packs.iter().collect::<HashSet<_>>() {
            if self.storage.size(&pack_path(id)).await.map_err(|e| self.err(e))?.is_none() {
                return Err(RepoError::CorruptPack {
                    pack: hex(id),
                    reason: format!("referenced by backup {label} but missing; the backup is not committed"),
                });
            }
        }
        self.stanza(stanza).await?;
        let path = format!("{}/backup/{label}.record", stanza_dir(stanza));
        self.storage.put_new(&path, self.record_bytes(encode(record))).await.map_err(|e| self.err(e))
    }

    /// Committed backups of a stanza whose records can be read, oldest first. Damaged records are left
    /// out: code that deletes anything must use [`Repo::backups_checked`] and account for them.
    pub async fn backups(&self, stanza: &str) -> Result<Vec<BackupRecord>> {
        Ok(self.backups_checked(stanza).await?.0)
    }

    /// Committed backups of a stanza, oldest first, and the records that cannot be read (by label). Only
    /// a repository that cannot be listed or read is an error.
    pub async fn backups_checked(&self, stanza: &str) -> Result<(Vec<BackupRecord>, Vec<DamagedRecord>)> {
        let dir = format!("{}/backup", stanza_dir(stanza));
        let (mut out, mut damaged) = (Vec::new(), Vec::new());
        for o in self.storage.list(&dir).await.map_err(|e| self.err(e))? {
            let Some(label) = o.path.rsplit('/').next().and_then(|n| n.strip_suffix(".record")) else { continue };
            match self.read_record(&o.path).await {
                Ok(r) if r.summary.label == label => out.push(r),
                Ok(r) => damaged.push(DamagedRecord {
                    name: label.to_string(),
                    path: o.path.clone(),
                    reason: format!("it holds the record of backup {}", r.summary.label),
                }),
                // Deleted since the listing (expire): it is simply gone.
                Err(RepoError::Storage { source: StorageError::NotFound { .. }, .. }) => {}
                Err(e) => match damage(&e) {
                    Some(reason) => damaged.push(DamagedRecord { name: label.to_string(), path: o.path.clone(), reason }),
                    None => return Err(e),
                },
            }
        }
        out.sort_by(|a, b| a.summary.stop_lsn.cmp(&b.summary.stop_lsn).then(a.summary.label.cmp(&b.summary.label)));
        Ok((out, damaged))
    }

    /// Removes a backup's record: from then on it does not exist. Its chunks stay until no kept backup or
    /// WAL file references their packs.
    pub async fn delete_backup(&self, stanza: &str, label: &str) -> Result<()> {
        let path = format!("{}/backup/{label}.record", stanza_dir(stanza));
        self.storage.delete(&path).await.map_err(|e| self.err(e))
    }

    pub async fn delete_wal(&self, stanza: &str, name: &str) -> Result<()> {
        self.storage.delete(&wal_path(stanza, name)).await.map_err(|e| self.err(e))
    }

    pub async fn backup(&self, stanza: &str, label: &str) -> Result<BackupRecord> {
        let path = format!("{}/backup/{label}.record", stanza_dir(stanza));
        match self.read_record(&path).await {
            Err(RepoError::Storage { source: StorageError::NotFound { .. }, .. }) => {
                Err(RepoError::NoBackup { stanza: stanza.into(), label: label.into() })
            }
            other => other,
        }
    }

    async fn read_record(&self, path: &str) -> Result<BackupRecord> {
        let bytes = self.storage.get(path).await.map_err(|e| self.err(e))?;
        let bytes = self.open_record(path, bytes)?;
        decode::<BackupRecord>(&bytes)
            .map(strata_messages::to_owned::<BackupRecord>)
            .map_err(|e| RepoError::CorruptObject { path: path.into(), reason: e.to_string() })
    }

    /// Every archived WAL file's record of a stanza, by name (sorted), and those that cannot be read.
    /// Reads every record (a few at a time): for expire, which needs their packs, and info.
    pub async fn wal_records_checked(&self, stanza: &str) -> Result<(Vec<WalRecord>, Vec<DamagedRecord>)> {
        use futures::StreamExt;
        let names = self.wal_names(stanza).await?;
        let reads = futures::stream::iter(names.into_iter().map(|name| async move {
            let r = self.wal(stanza, &name).await;
            (name, r)
        }))
        .buffered(16);
        futures::pin_mut!(reads);
        let (mut out, mut damaged) = (Vec::new(), Vec::new());
        while let Some((name, r)) = reads.next().await {
            match r {
                Ok(Some(w)) => out.push(w),
                Ok(None) => {}
                Err(e) => match damage(&e) {
                    Some(reason) => damaged.push(DamagedRecord { path: wal_path(stanza, &name), name, reason }),
                    None => return Err(e),
                },
            }
        }
        Ok((out, damaged))
    }

    /// Fetches and decodes a manifest's head (everything but the file entries).
    pub async fn manifest_head(&self, sealer: &Sealer, label: &str, len: u64, chunks: &[ChunkRef]) -> Result<ManifestHead> {
        let mut bytes = reserved(len);
        for r in chunks {
            bytes.extend_from_slice(&self.read_chunk(sealer, r).await?);
        }
        decode::<ManifestHead>(&bytes)
            .map(strata_messages::to_owned::<ManifestHead>)
            .map_err(|e| RepoError::CorruptObject { path: format!("manifest of backup {label}"), reason: e.to_string() })
    }

    /// Every pack a committed backup needs: those of its manifest head's chunks, and those the head names
    /// (file lists and the chunks its files point into). Expire keeps these; the replicator copies them.
    pub async fn backup_packs(&self, record: &BackupRecord) -> Result<HashSet<PackId>> {
        let head = self.manifest_head(&self.sealer, &record.summary.label, record.manifest_len, &record.manifest_chunks).await?;
        let mut packs: HashSet<PackId> = record.manifest_chunks.iter().map(|c| c.pack).collect();
        packs.extend(head.packs());
        Ok(packs)
    }

    /// Fetches and decodes a backup's whole manifest, file entries included.
    pub async fn manifest(&self, sealer: &Sealer, record: &BackupRecord) -> Result<Manifest> {
        let label = &record.summary.label;
        let head = self.manifest_head(sealer, label, record.manifest_len, &record.manifest_chunks).await?;
        let mut files = Vec::new();
        for r in &head.file_lists {
            let bytes = self.read_chunk(sealer, r).await?;
            let list = decode::<FileList>(&bytes).map_err(|e| RepoError::CorruptObject {
                path: format!("file list {} of backup {label}", hex(&r.id)),
                reason: e.to_string(),
            })?;
            files.extend(list.files.iter().map(strata_messages::to_owned::<FileEntry>));
        }
        Ok(Manifest { head, files })
    }

    // ---------------------------------------------------------------- checkpoints of running backups

    /// Records how far a running backup got (replacing its previous checkpoint). Refuses when a pack it
    /// needs is missing, like a commit.
    pub async fn put_checkpoint(&self, stanza: &str, packs: &[PackId], checkpoint: &BackupCheckpoint) -> Result<()> {
        let label = &checkpoint.label;
        for id in packs.iter().collect::<HashSet<_>>() {
            if self.storage.size(&pack_path(id)).await.map_err(|e| self.err(e))?.is_none() {
                return Err(RepoError::CorruptPack {
                    pack: hex(id),
                    reason: format!("referenced by the checkpoint of backup {label} but missing"),
                });
            }
        }
        let path = format!("{}/backup/{label}.partial", stanza_dir(stanza));
        self.storage.put(&path, self.record_bytes(encode(checkpoint))).await.map_err(|e| self.err(e))
    }

    /// Checkpoints of interrupted backups of a stanza, oldest first. An unreadable one is skipped: it only
    /// ever saves work.
    pub async fn checkpoints(&self, stanza: &str) -> Result<Vec<BackupCheckpoint>> {
        let dir = format!("{}/backup", stanza_dir(stanza));
        let mut out = Vec::new();
        for o in self.storage.list(&dir).await.map_err(|e| self.err(e))? {
            if !o.path.ends_with(".partial") {
                continue;
            }
            let Ok(bytes) = self.storage.get(&o.path).await else { continue };
            let Ok(bytes) = self.open_record(&o.path, bytes) else { continue };
            if let Ok(c) = decode::<BackupCheckpoint>(&bytes) {
                out.push(strata_messages::to_owned::<BackupCheckpoint>(c));
            }
        }
        out.sort_by(|a, b| a.attempt_start.cmp(&b.attempt_start).then(a.label.cmp(&b.label)));
        Ok(out)
    }

    pub async fn delete_checkpoint(&self, stanza: &str, label: &str) -> Result<()> {
        let path = format!("{}/backup/{label}.partial", stanza_dir(stanza));
        self.storage.delete(&path).await.map_err(|e| self.err(e))
    }

    // ---------------------------------------------------------------- WAL

    /// Publishes an archived WAL file. Never replaces an existing one: the same content is accepted
    /// ([`WalPut::AlreadyArchived`]), different content is [`RepoError::WalConflict`].
    pub async fn put_wal(&self, stanza: &str, record: &WalRecord) -> Result<WalPut> {
        let path = wal_path(stanza, &record.name);
        match self.storage.put_new(&path, self.record_bytes(encode(record))).await {
            Ok(()) => Ok(WalPut::Stored),
            Err(StorageError::AlreadyExists { .. }) => match self.wal(stanza, &record.name).await? {
                Some(existing) if existing.hash == record.hash && existing.size == record.size => {
                    Ok(WalPut::AlreadyArchived)
                }
                _ => Err(RepoError::WalConflict { name: record.name.clone() }),
            },
            Err(e) => Err(self.err(e)),
        }
    }

    pub async fn wal(&self, stanza: &str, name: &str) -> Result<Option<WalRecord>> {
        let path = wal_path(stanza, name);
        match self.storage.get(&path).await {
            Ok(bytes) => strata_messages::decode_wal_record(&self.open_record(&path, bytes)?)
                .map(Some)
                .map_err(|e| RepoError::CorruptObject { path, reason: e.to_string() }),
            Err(StorageError::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.err(e)),
        }
    }

    /// The contents of an archived WAL file, checked against its recorded hash; `None` when it is not
    /// archived. For small files (timeline history); segments are streamed by archive-get.
    pub async fn wal_contents(&self, sealer: &Sealer, stanza: &str, name: &str) -> Result<Option<Vec<u8>>> {
        let Some(record) = self.wal(stanza, name).await? else { return Ok(None) };
        let mut bytes = reserved(record.size);
        for r in &record.chunks {
            bytes.extend_from_slice(&self.read_chunk(sealer, r).await?);
        }
        if sealer.chunk_id(&bytes) != record.hash {
            return Err(RepoError::CorruptObject {
                path: wal_path(stanza, name),
                reason: "the archived file does not match its recorded hash".into(),
            });
        }
        Ok(Some(bytes))
    }

    /// Names of every archived WAL file of a stanza, sorted.
    pub async fn wal_names(&self, stanza: &str) -> Result<Vec<String>> {
        let dir = format!("{}/wal", stanza_dir(stanza));
        let objects = self.storage.list(&dir).await.map_err(|e| self.err(e))?;
        let mut names: Vec<String> =
            objects.into_iter().filter_map(|o| o.path.rsplit('/').next().map(str::to_string)).collect();
        names.sort();
        Ok(names)
    }
}

/// A buffer with room for `len` bytes when that much can be had: the length comes from a stored record,
/// and a damaged one must be an error when its chunks are read, not an aborted allocation.
fn reserved(len: u64) -> Vec<u8> {
    let mut bytes = Vec::new();
    let _ = bytes.try_reserve_exact(usize::try_from(len).unwrap_or(usize::MAX));
    bytes
}

/// Refuses a cluster other than the one the stanza was created for.
pub fn check_same_cluster(info: &StanzaInfo, system_id: u64, pg_major: u32) -> Result<()> {
    if info.pg_major != pg_major {
        return Err(RepoError::StanzaMismatch {
            stanza: info.stanza.clone(),
            reason: format!(
                "is for PostgreSQL {} but the cluster runs PostgreSQL {pg_major}; create a new stanza for it",
                info.pg_major
            ),
        });
    }
    if info.system_id != system_id {
        return Err(RepoError::StanzaMismatch {
            stanza: info.stanza.clone(),
            reason: format!(
                "is for database system {} but the cluster's system identifier is {system_id}",
                info.system_id
            ),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests;
