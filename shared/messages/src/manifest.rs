//! A backup's manifest and the two records the repository publishes: [`BackupRecord`] and [`WalRecord`].
//!
//! A backup is visible only through its record, which the uploader writes after every chunk the backup
//! references is durable. The record is small (the summary `info` shows, plus where the manifest's head
//! chunks are); the manifest itself travels and is stored as ordinary chunks, so it is compressed, deduplicated
//! and, once encryption lands, encrypted like the data it describes.
//!
//! The manifest is split so that nobody has to hold all of it at once. Its file entries are written in
//! [`FileList`] chunks while the backup runs, as files finish; the [`ManifestHead`], written last, holds
//! everything else: the summary, the table of chunks the entries point into ([`Piece::chunk`] is an index
//! into it, so an entry is final the moment its file is read, before anyone knows in which pack its bytes
//! will land) and the list of file-list chunks. A collector backing up 300,000 small files therefore keeps
//! one file list in memory, not 300,000 entries, and a backup's packs are known from its head alone.
//! An interrupted backup leaves the same structure behind as a [`BackupCheckpoint`], which the next attempt
//! resumes from.

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
    /// Length of the serialized [`ManifestHead`].
    pub manifest_len: u64,
    /// The chunks holding the serialized [`ManifestHead`], in order.
    pub manifest_chunks: Vec<ChunkRef>,
}

/// One archived WAL file (segment, history or backup-history file), published at `wal/<dir>/<name>`.
///
/// Its version is [`crate::WAL_RECORD_VERSION`]; records of the previous layout ([`WalRecordV2`], without
/// a summary) are read through [`crate::decode_wal_record`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone)]
pub struct WalRecord {
    pub version: u16,
    pub name: String,
    pub size: u64,
    /// BLAKE3 of the whole file: the same name pushed twice is accepted only with the same hash.
    pub hash: ChunkId,
    pub chunks: Vec<ChunkRef>,
    /// For a segment: what recovery targets can stop at in it, found by archive-push. `None` for other
    /// files, for a segment whose records could not be walked, and for records of the previous layout.
    pub summary: Option<WalSummary>,
}

/// [`WalRecord`] as format version 2 wrote it, before segments carried a summary.
#[derive(Archive, Serialize, Deserialize, Debug, Clone)]
pub struct WalRecordV2 {
    pub version: u16,
    pub name: String,
    pub size: u64,
    pub hash: ChunkId,
    pub chunks: Vec<ChunkRef>,
}

impl From<WalRecordV2> for WalRecord {
    fn from(v: WalRecordV2) -> WalRecord {
        WalRecord { version: crate::WAL_RECORD_VERSION, name: v.name, size: v.size, hash: v.hash, chunks: v.chunks, summary: None }
    }
}

/// What an archived WAL segment holds that recovery targets stop at, so that restore, check and info can
/// tell which segment a time, xid or restore point needs without reading WAL (see `strata_pg::walscan`).
///
/// Events count only for records lying wholly in the segment. A record crossing the segment's end is kept
/// as its first bytes (`tail`, here) and the first bytes of its continuation (`head`, in the next
/// segment's summary); joined, they give its event, which belongs to the next segment.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Default, PartialEq, Eq)]
pub struct WalSummary {
    /// Start of the last record lying wholly in the segment (0: none does).
    pub last_start: u64,
    /// Transactions that committed or aborted here.
    pub xact_ends: u64,
    /// Earliest and latest commit or abort time here, in microseconds since the Unix epoch (0 when none).
    pub first_time: i64,
    pub last_time: i64,
    /// The xids that ended here, as sorted runs of consecutive xids.
    pub xids: Vec<XidRun>,
    pub restore_points: Vec<RestorePoint>,
    pub head: Vec<u8>,
    pub tail: Vec<u8>,
    /// Where the record of `tail` starts.
    pub tail_lsn: u64,
    /// The segment ends with a WAL switch (the rest of it is unused).
    pub switched: bool,
}

/// `count` consecutive xids from `first`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct XidRun {
    pub first: u32,
    pub count: u32,
}

/// A named restore point (`pg_create_restore_point`).
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq, Eq)]
pub struct RestorePoint {
    pub name: String,
    /// Microseconds since the Unix epoch.
    pub time: i64,
    pub lsn: u64,
}

impl WalSummary {
    /// Whether transaction `xid` ended in a record lying wholly in the segment.
    pub fn has_xid(&self, xid: u32) -> bool {
        let i = self.xids.partition_point(|r| r.first <= xid);
        i > 0 && xid - self.xids[i - 1].first < self.xids[i - 1].count
    }

    /// Compresses xids into sorted runs.
    pub fn xid_runs(mut xids: Vec<u32>) -> Vec<XidRun> {
        xids.sort_unstable();
        xids.dedup();
        let mut runs: Vec<XidRun> = Vec::new();
        for x in xids {
            match runs.last_mut() {
                Some(r) if r.first.checked_add(r.count) == Some(x) => r.count += 1,
                _ => runs.push(XidRun { first: x, count: 1 }),
            }
        }
        runs
    }
}

#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug))]
pub enum FileKind {
    File,
    Directory,
    Symlink,
}

/// [`Piece::chunk`] of a run of zero bytes: nothing is stored, a restore writes zeros.
pub const ZERO_CHUNK: u32 = u32::MAX;

/// A byte range of a stored chunk: `len` plain bytes starting at `offset` of chunk number `chunk` of the
/// manifest's chunk table ([`ManifestHead::chunks`]), or `len` zero bytes when `chunk` is [`ZERO_CHUNK`].
///
/// A file is the concatenation of its pieces. A big file's pieces are whole chunks; small files share
/// chunks (one piece each); an incremental backup stores only the pages that changed (packed into new
/// chunks) and points at ranges of the reference backup's chunks for the rest, so a restore of any backup
/// is a single pass over its own manifest, with no chain to resolve.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct Piece {
    pub chunk: u32,
    pub offset: u32,
    pub len: u32,
}

impl Piece {
    pub fn is_zero(&self) -> bool {
        self.chunk == ZERO_CHUNK
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

/// One chunk's worth of a manifest's file entries.
#[derive(Archive, Serialize, Deserialize, Debug, Clone)]
pub struct FileList {
    pub version: u16,
    pub files: Vec<FileEntry>,
}

/// Everything about a backup but its file entries, which are in the [`FileList`] chunks it lists.
#[derive(Archive, Serialize, Deserialize, Debug, Clone)]
pub struct ManifestHead {
    pub version: u16,
    pub summary: BackupSummary,
    pub data_checksums: bool,
    /// Labels of the backups this one depends on, from the full backup to its direct reference.
    pub references: Vec<String>,
    /// Contents `pg_backup_stop` returned; written into the restored data directory.
    pub backup_label: String,
    pub tablespace_map: String,
    pub tablespaces: Vec<Tablespace>,
    pub checksum_failures: Vec<ChecksumFailure>,
    /// Every chunk the file entries point into, its own and its references' alike; [`Piece::chunk`]
    /// indexes this table. In a [`BackupCheckpoint`]'s head, a chunk that was not confirmed stored yet is
    /// [`ChunkRef::UNKNOWN`] and no listed file points at it.
    pub chunks: Vec<ChunkRef>,
    /// The chunks holding the file entries, each one [`FileList`].
    pub file_lists: Vec<ChunkRef>,
}

impl ManifestHead {
    /// Every pack the backup needs: its file lists', and those of every chunk its files point into.
    pub fn packs(&self) -> impl Iterator<Item = crate::PackId> + '_ {
        self.chunks.iter().filter(|c| !c.is_unknown()).chain(self.file_lists.iter()).map(|c| c.pack)
    }
}

/// A whole manifest in memory: the head and every file entry (what a restore works from).
#[derive(Debug, Clone)]
pub struct Manifest {
    pub head: ManifestHead,
    pub files: Vec<FileEntry>,
}

impl Manifest {
    /// The chunk a piece points into (`None` for zeros or an index outside the table).
    pub fn chunk(&self, piece: &Piece) -> Option<&ChunkRef> {
        self.head.chunks.get(piece.chunk as usize)
    }
}

/// What an interrupted backup leaves at `backup/<label>.partial`: a manifest head whose file lists hold the
/// files read completely and whose chunk table holds every chunk confirmed stored. The next backup of the
/// stanza takes the files unchanged since `attempt_start` from it instead of reading them again, and does
/// not send the chunks again. Written by an uploader every few seconds while a backup runs, removed when a
/// backup of the stanza commits.
#[derive(Archive, Serialize, Deserialize, Debug, Clone)]
pub struct BackupCheckpoint {
    pub version: u16,
    pub label: String,
    /// When the interrupted attempt started (seconds since the Unix epoch).
    pub attempt_start: i64,
    pub head_len: u64,
    pub head_chunks: Vec<ChunkRef>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{decode, encode, to_owned, FORMAT_VERSION};

    #[test]
    fn xid_runs_and_lookup() {
        let runs = WalSummary::xid_runs(vec![7, 5, 6, 10, 6, u32::MAX, 11]);
        assert_eq!(
            runs,
            vec![XidRun { first: 5, count: 3 }, XidRun { first: 10, count: 2 }, XidRun { first: u32::MAX, count: 1 }]
        );
        let s = WalSummary { xids: runs, ..Default::default() };
        for x in [5, 6, 7, 10, 11, u32::MAX] {
            assert!(s.has_xid(x), "{x}");
        }
        for x in [0, 4, 8, 9, 12, u32::MAX - 1] {
            assert!(!s.has_xid(x), "{x}");
        }
    }

    #[test]
    fn wal_records_of_the_previous_layout_are_read() {
        let old = WalRecordV2 { version: 2, name: "000000010000000000000003".into(), size: 16, hash: [1; 32], chunks: vec![] };
        let back = crate::decode_wal_record(&encode(&old)).unwrap();
        assert_eq!(back.name, old.name);
        assert!(back.summary.is_none());
        let new = WalRecord {
            version: crate::WAL_RECORD_VERSION,
            summary: Some(WalSummary { last_start: 9, tail: vec![1, 2], ..Default::default() }),
            ..back
        };
        let again = crate::decode_wal_record(&encode(&new)).unwrap();
        assert_eq!(again.summary, new.summary);
        assert!(crate::decode_wal_record(b"garbage").is_err());
    }

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
        let head = ManifestHead {
            version: FORMAT_VERSION,
            summary: summary.clone(),
            data_checksums: true,
            references: vec![],
            backup_label: "START WAL LOCATION".into(),
            tablespace_map: String::new(),
            tablespaces: vec![],
            checksum_failures: vec![],
            chunks: vec![ChunkRef { id: [1; 32], pack: [2; 16], offset: 0, sealed_len: 10, raw_len: 8192 }],
            file_lists: vec![ChunkRef { id: [3; 32], pack: [4; 16], offset: 0, sealed_len: 10, raw_len: 100 }],
        };
        let back: ManifestHead = to_owned::<ManifestHead>(decode::<ManifestHead>(&encode(&head)).unwrap());
        assert_eq!(back.summary, summary);
        assert_eq!(back.packs().collect::<Vec<_>>(), vec![[2; 16], [4; 16]]);
        let list = FileList {
            version: FORMAT_VERSION,
            files: vec![FileEntry {
                path: "base/1/1259".into(),
                kind: FileKind::File,
                mode: 0o600,
                uid: 1,
                gid: 1,
                mtime: 3,
                size: 8192,
                link_target: String::new(),
                pieces: vec![Piece { chunk: 0, offset: 0, len: 8192 }, Piece { chunk: ZERO_CHUNK, offset: 0, len: 8192 }],
                page_hashes: vec![7, 8],
            }],
        };
        let back: FileList = to_owned::<FileList>(decode::<FileList>(&encode(&list)).unwrap());
        assert_eq!(back.files[0].pieces[0].len, 8192);
        assert!(back.files[0].pieces[1].is_zero());
        let m = Manifest { head, files: back.files };
        assert_eq!(m.chunk(&m.files[0].pieces[0]).unwrap().raw_len, 8192);
        assert!(m.chunk(&m.files[0].pieces[1]).is_none());
    }
}
