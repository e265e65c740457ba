//! A backup's manifest and the two records the repository publishes: [`BackupRecord`] and [`WalRecord`].
//!
//! A backup is visible only through its record, which the uploader writes after every chunk the backup
//! references is durable. The record is small (the summary `info` shows, plus where the manifest's own
//! chunks are); the manifest itself travels and is stored as ordinary chunks, so it is compressed, deduplicated
//! and, once encryption lands, encrypted like the data it describes.

use crate::{ChunkId, ChunkRef};
use rkyv::{Archive, Deserialize, Serialize};

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum BackupType {
    Full,
    Diff,
    Incr,
}

impl BackupType {
    pub fn as_str(self) -> &'static str {
        match self {
            BackupType::Full => "full",
            BackupType::Diff => "diff",
            BackupType::Incr => "incr",
        }
    }
}

impl ArchivedBackupType {
    pub fn to_native(&self) -> BackupType {
        match self {
            ArchivedBackupType::Full => BackupType::Full,
            ArchivedBackupType::Diff => BackupType::Diff,
            ArchivedBackupType::Incr => BackupType::Incr,
        }
    }
}

/// What `info` shows about a backup; also the status a collector reports when the backup is committed.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
pub struct BackupSummary {
    pub label: String,
    pub backup_type: BackupType,
    /// Seconds since the Unix epoch.
    pub start_time: i64,
    pub stop_time: i64,
    pub start_lsn: u64,
    pub stop_lsn: u64,
    pub timeline: u32,
    /// First and last WAL file the backup needs to become consistent.
    pub wal_start: String,
    pub wal_stop: String,
    pub pg_version_num: u32,
    pub system_id: u64,
    pub wal_segment_size: u64,
    /// The backup this one is relative to (empty for a full backup).
    pub reference: String,
    /// Bytes of files in the data directory and tablespaces (the size of a restore).
    pub database_bytes: u64,
    /// Bytes the collector read from disk (less than `database_bytes` when unchanged files were skipped).
    pub read_bytes: u64,
    /// Bytes this backup added to the repository (sealed chunks that were not already there).
    pub stored_bytes: u64,
    /// Bytes the collector sent down the pipeline.
    pub sent_bytes: u64,
    pub file_count: u64,
    pub checksum_failures: u64,
}

/// Published by the uploader at `backup/<label>` once the backup is complete: the commit point.
#[derive(Archive, Serialize, Deserialize, Debug, Clone)]
pub struct BackupRecord {
    pub version: u16,
    pub summary: BackupSummary,
    /// Length of the serialized manifest.
    pub manifest_len: u64,
    /// The manifest's own chunks, in order.
    pub manifest_chunks: Vec<ChunkRef>,
}

/// One archived WAL file (segment, history or backup-history file), published at `wal/<dir>/<name>`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone)]
pub struct WalRecord {
    pub version: u16,
    pub name: String,
    pub size: u64,
    /// BLAKE3 of the whole file: the same name pushed twice is accepted only with the same hash.
    pub hash: ChunkId,
    pub chunks: Vec<ChunkRef>,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum FileKind {
    File,
    Directory,
    Symlink,
}

/// A byte range of a stored chunk: `len` plain bytes starting at `offset` of chunk `chunk`.
///
/// A file is the concatenation of its pieces. A full backup's pieces are whole chunks; an incremental
/// backup stores only the pages that changed (packed into new chunks) and points at ranges of the
/// reference backup's chunks for the rest, so a restore of any backup is a single pass over its own
/// manifest, with no chain to resolve.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub chunk: ChunkRef,
    pub offset: u32,
    pub len: u32,
}

impl Piece {
    pub fn whole(chunk: ChunkRef) -> Piece {
        Piece { chunk, offset: 0, len: chunk.raw_len }
    }
}

/// One entry of the data directory (or of a tablespace, under `pg_tblspc/<oid>/`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone)]
pub struct FileEntry {
    /// Relative to the data directory, '/'-separated.
    pub path: String,
    pub kind: FileKind,
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub mtime: i64,
    /// Bytes read (files only).
    pub size: u64,
    /// Symlink target (tablespace links).
    pub link_target: String,
    /// The file's contents in order; their lengths add up to `size`.
    pub pieces: Vec<Piece>,
    /// For relation files: a 64-bit BLAKE3 prefix of each 8 KiB page, in order. The next incremental
    /// backup compares pages against these to find the ones that changed.
    pub page_hashes: Vec<u64>,
}

/// A page whose checksum did not match, with an LSN older than the backup start (so WAL replay will not
/// rewrite it): real corruption in the source cluster.
#[derive(Archive, Serialize, Deserialize, Debug, Clone)]
pub struct ChecksumFailure {
    pub path: String,
    pub block: u32,
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone)]
pub struct Tablespace {
    pub oid: u32,
    pub location: String,
}

/// Everything needed to rebuild the data directory.
#[derive(Archive, Serialize, Deserialize, Debug, Clone)]
pub struct Manifest {
    pub version: u16,
    pub summary: BackupSummary,
    pub data_checksums: bool,
    /// Labels of the backups this one depends on, from the full backup to its direct reference.
    pub references: Vec<String>,
    /// Contents `pg_backup_stop` returned; written into the restored data directory.
    pub backup_label: String,
    pub tablespace_map: String,
    pub tablespaces: Vec<Tablespace>,
    pub files: Vec<FileEntry>,
    pub checksum_failures: Vec<ChecksumFailure>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode, encode, to_owned, FORMAT_VERSION};

    #[test]
    fn manifest_round_trips() {
        let summary = BackupSummary {
            label: "20261124-081500F".into(),
            backup_type: BackupType::Full,
            start_time: 1,
            stop_time: 2,
            start_lsn: 0x1000028,
            stop_lsn: 0x2000000,
            timeline: 1,
            wal_start: "000000010000000000000001".into(),
            wal_stop: "000000010000000000000002".into(),
            pg_version_num: 150004,
            system_id: 42,
            wal_segment_size: 16 << 20,
            reference: String::new(),
            database_bytes: 10,
            read_bytes: 10,
            stored_bytes: 5,
            sent_bytes: 10,
            file_count: 1,
            checksum_failures: 0,
        };
        let m = Manifest {
            version: FORMAT_VERSION,
            summary: summary.clone(),
            data_checksums: true,
            references: vec![],
            backup_label: "START WAL LOCATION".into(),
            tablespace_map: String::new(),
            tablespaces: vec![],
            files: vec![FileEntry {
                path: "base/1/1259".into(),
                kind: FileKind::File,
                mode: 0o600,
                uid: 1,
                gid: 1,
                mtime: 3,
                size: 8192,
                link_target: String::new(),
                pieces: vec![Piece::whole(ChunkRef { id: [1; 32], pack: [2; 16], offset: 0, sealed_len: 10, raw_len: 8192 })],
                page_hashes: vec![7],
            }],
            checksum_failures: vec![],
        };
        let bytes = encode(&m);
        let back: Manifest = to_owned::<Manifest>(decode::<Manifest>(&bytes).unwrap());
        assert_eq!(back.summary, summary);
        assert_eq!(back.files[0].pieces[0].len, 8192);
    }
}
