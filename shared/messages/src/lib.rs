//! The wire contract between Strata's stages, and the persisted records built from it.
//!
//! Every message and record is an rkyv archive. The crate is built with rkyv's `unaligned` feature because
//! NATS hands payloads over at arbitrary offsets of its read buffer: with alignment 1, [`decode`] validates a
//! payload in place and a chunk's bytes are borrowed straight from the received buffer, never copied.
//!
//! # Formats
//! Every archive is written behind a fixed 8-byte header ([`format`]): a magic, the kind of format and its
//! version. The rule for every persisted or wire format:
//!
//! - the header selects the decoder; a version newer than this build reads is a typed error ("wal record
//!   has format version 4, this build reads up to 3"), bytes of another kind or no Strata format at all say
//!   so ("not a Strata backup record"), and never read as "malformed";
//! - older versions are read through an explicit migration chain: each older layout keeps its struct
//!   (`WalRecordV2`) and a `From` into the next version, and the type's reader picks the step by version
//!   ([`decode_wal_record`]); writing always writes the current version, framed ([`encode`]);
//! - bytes without the magic are the unframed form builds before the header wrote; they are read as the
//!   first step of the chain (their version is the archive's own `version` field, and for WAL records which
//!   layout validates), so existing repositories and queued messages stay readable;
//! - `testdata/` holds a sample of every current format and of the legacy unframed ones, and
//!   `tests/samples.rs` reads each: a layout change that breaks reading stored data fails there. A new
//!   version adds its samples next to the old ones, which stay.
//!
//! The `version` field inside the archives stays (removing it would change the layout): it holds the same
//! version as the header, and [`decode`] refuses a frame whose two versions disagree.
//!
//! Subject names are built only by the functions in [`subjects`], never with `format!` at call sites.

pub mod format;
pub mod manifest;
pub mod subjects;

use format::{Framed, Header, Kind};
use rkyv::{Archive, Deserialize, Serialize};

pub use manifest::{
    BackupCheckpoint, BackupRecord, BackupSummary, BackupType, FileEntry, FileKind, FileList, Manifest, ManifestHead, Piece,
    RestorePoint, WalRecord, WalRecordV2, WalSummary, XidRun, ZERO_CHUNK,
};

/// The version of every message and record format defined here, but [`WalRecord`] and [`UploadWork`].
pub const FORMAT_VERSION: u16 = 2;

/// The version of [`WalRecord`]: 3 added the segment summary. Records of version 2 are still read
/// ([`decode_wal_record`]), so a repository archived by an older build stays restorable.
pub const WAL_RECORD_VERSION: u16 = 3;

/// The version of [`UploadWork`] messages (every kind carries it): 3 moved a chunk's sealed bytes out of
/// the archive, in front of it ([`encode_upload`]).
pub const UPLOAD_WORK_VERSION: u16 = 3;

/// Content address of a plain chunk: its BLAKE3 hash.
pub type ChunkId = [u8; 32];

/// Identifies one pack file in a repository (random, hex in file names).
pub type PackId = [u8; 16];

/// Where a sealed chunk lives in the repository.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
pub struct ChunkRef {
    pub id: ChunkId,
    pub pack: PackId,
    /// Offset of the sealed chunk inside the pack.
    pub offset: u64,
    pub sealed_len: u32,
    /// Length of the plain chunk.
    pub raw_len: u32,
}

impl ChunkRef {
    /// A chunk table entry whose location is not known (see [`ManifestHead::chunks`]).
    pub const UNKNOWN: ChunkRef = ChunkRef { id: [0; 32], pack: [0; 16], offset: 0, sealed_len: 0, raw_len: 0 };

    pub fn is_unknown(&self) -> bool {
        self.sealed_len == 0 && self.id == [0; 32]
    }
}

/// A plain chunk on its way to the sealer (collector or archive-push -> sealer): the chunk's bytes, then
/// this header archived, then the header's length as 4 little-endian bytes ([`encode_plain_chunk`]).
///
/// The one message that is not a plain rkyv archive, because it carries every byte a backup reads:
/// archiving the bytes inside the message would copy them (a megabyte per chunk), while appending the
/// header to the buffer they were read into copies nothing.
#[derive(Archive, Serialize, Deserialize, Debug)]
pub struct PlainChunk {
    pub version: u16,
    /// The job (backup or WAL push) this chunk belongs to; confirmations go to [`subjects::job_events`].
    pub job: String,
    pub stanza: String,
    pub id: ChunkId,
    /// Whether the uploader may answer with a copy already in the repository instead of storing this one.
    pub dedup: bool,
    /// zstd level requested by the job's owner.
    pub compress_level: i8,
    /// Length of the chunk's bytes, which precede the header.
    pub data_len: u32,
}

/// Bytes a plain chunk message adds to its data at most (beyond the job and stanza names): reserve this
/// much spare capacity in a chunk's buffer and [`encode_plain_chunk`] does not reallocate it.
pub const PLAIN_CHUNK_OVERHEAD: usize = 128 + format::HEADER_LEN;

/// Builds a [`PlainChunk`] message in `data`'s own buffer (see there). `header.data_len` is set here.
pub fn encode_plain_chunk(mut header: PlainChunk, data: Vec<u8>) -> Vec<u8> {
    header.data_len = data.len() as u32;
    frame(data, &encode(&header))
}

/// Splits a [`PlainChunk`] message into its header, validated in place, and the chunk's bytes (borrowed).
pub fn decode_plain_chunk(bytes: &[u8]) -> Result<(&ArchivedPlainChunk, &[u8]), DecodeError> {
    let (header, data) = unframe(bytes, "plain chunk")?;
    let header = decode::<PlainChunk>(header)?;
    if header.data_len.to_native() as usize != data.len() {
        return Err(DecodeError::Malformed { what: "plain chunk", reason: "data length does not match the message".into() });
    }
    Ok((header, data))
}

/// Builds an [`UploadWork`] message: `data` (a chunk's sealed bytes, empty for the other kinds of work),
/// then the work archived, then its length. Like [`PlainChunk`], so that a chunk is sealed straight into
/// the message's buffer and never copied into it.
pub fn encode_upload(work: &UploadWork, data: Vec<u8>) -> Vec<u8> {
    frame(data, &encode(work))
}

/// Splits an [`UploadWork`] message into the work, validated in place, and the bytes before it (a chunk's
/// sealed bytes; empty for the other kinds).
pub fn decode_upload(bytes: &[u8]) -> Result<(&ArchivedUploadWork, &[u8]), DecodeError> {
    let (header, data) = unframe(bytes, "upload work")?;
    let work = decode::<UploadWork>(header)?;
    let expected = match work {
        ArchivedUploadWork::Chunk(c) => c.sealed_len.to_native() as usize,
        _ => 0,
    };
    if expected != data.len() {
        return Err(DecodeError::Malformed { what: "upload work", reason: "data length does not match the message".into() });
    }
    Ok((work, data))
}

/// `data`, then `archived` (framed: see [`format`]), then `archived`'s length as 4 little-endian bytes, in `data`'s buffer.
///
/// A buffer sized for the worst case (a chunk sealed into room for its incompressible size) but filled to
/// less than half is given back: messages wait in the pipeline for a while, and holding a megabyte per
/// 25 KiB of pgbench data raised a pgbench-100 backup's peak RSS from about 100 to 145 MiB. Copying the
/// little that is there costs less.
fn frame(mut data: Vec<u8>, archived: &[u8]) -> Vec<u8> {
    data.reserve_exact(archived.len() + 4);
    data.extend_from_slice(archived);
    data.extend_from_slice(&(archived.len() as u32).to_le_bytes());
    if data.capacity() > 2 * data.len() {
        data.shrink_to_fit();
    }
    data
}

/// A [`frame`]d message's archived part and data.
fn unframe<'a>(bytes: &'a [u8], what: &'static str) -> Result<(&'a [u8], &'a [u8]), DecodeError> {
    let malformed = |reason: &str| DecodeError::Malformed { what, reason: reason.into() };
    let n = bytes.len();
    let tail: [u8; 4] = bytes.get(n.saturating_sub(4)..).and_then(|t| t.try_into().ok()).ok_or_else(|| malformed("too short"))?;
    let header_len = u32::from_le_bytes(tail) as usize;
    let header_start = (n - 4).checked_sub(header_len).ok_or_else(|| malformed("header length past the start"))?;
    Ok((&bytes[header_start..n - 4], &bytes[..header_start]))
}

/// What the uploaders' queue carries, framed by [`encode_upload`].
#[derive(Archive, Serialize, Deserialize, Debug)]
pub enum UploadWork {
    Chunk(SealedChunk),
    CommitBackup(CommitBackup),
    CommitWal(CommitWal),
    Checkpoint(CheckpointBackup),
    /// The stored part of a segment PostgreSQL is still writing, streamed by `strata wal-stream`: kept
    /// beside the archive (never in it) until the whole segment is archived.
    StreamedPartial(CommitWal),
}

/// A sealed chunk (sealer -> uploader). The chunk as stored in a pack (the seal envelope: header,
/// compressed and possibly encrypted body) precedes it in the message ([`encode_upload`]).
#[derive(Archive, Serialize, Deserialize, Debug)]
pub struct SealedChunk {
    pub version: u16,
    pub job: String,
    pub stanza: String,
    pub id: ChunkId,
    pub dedup: bool,
    pub raw_len: u32,
    pub sealed_len: u32,
}

/// Asks an uploader to commit a backup: every chunk it references has been confirmed stored.
#[derive(Archive, Serialize, Deserialize, Debug)]
pub struct CommitBackup {
    pub version: u16,
    pub job: String,
    pub stanza: String,
    /// Every pack the backup's manifest and files reference; the uploader checks each is present before it
    /// writes the record.
    pub packs: Vec<PackId>,
    pub record: BackupRecord,
}

/// Asks an uploader to record how far a running backup got ([`BackupCheckpoint`]), so an interrupted backup
/// can be resumed. Best effort: nobody waits for it, and an uploader that cannot write it only logs why.
#[derive(Archive, Serialize, Deserialize, Debug)]
pub struct CheckpointBackup {
    pub version: u16,
    pub stanza: String,
    /// Every pack the checkpoint's head, file lists and chunks are in; checked like a commit's.
    pub packs: Vec<PackId>,
    pub checkpoint: BackupCheckpoint,
}

/// Asks an uploader to publish an archived WAL file whose chunks are stored.
#[derive(Archive, Serialize, Deserialize, Debug)]
pub struct CommitWal {
    pub version: u16,
    pub job: String,
    pub stanza: String,
    pub record: WalRecord,
}

/// Uploader -> job owner, on [`subjects::job_events`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone)]
pub enum JobEvent {
    /// These chunks are durable in the repository, at these places; `written_bytes` of them were new
    /// (the rest were already stored).
    Stored { chunks: Vec<ChunkRef>, written_bytes: u64 },
    /// The commit was written.
    Committed,
    /// For WAL: the repository already holds this file with the same content; nothing was written.
    AlreadyArchived,
    /// The commit was refused; nothing was written.
    Rejected(String),
}

/// `strata backup` -> collector, on [`subjects::backup_requests`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone)]
pub struct BackupRequest {
    pub version: u16,
    /// Also the backup's job id: status events go to [`subjects::backup_status`] of it.
    pub label: String,
    pub stanza: String,
    pub backup_type: BackupType,
    /// What the stanza was created for; the collector refuses a cluster that doesn't match.
    pub expect_system_id: u64,
    pub expect_pg_major: u32,
    pub compress_level: i8,
    /// The record of the backup this one is relative to (diff and incr); the collector fetches its
    /// manifest through an uploader ([`FetchRequest`]), since it has no repository access of its own.
    pub reference: Option<BackupRecord>,
    /// Re-read and compare every page even of files whose size and mtime did not change.
    pub checksum_all: bool,
    /// Where an interrupted earlier backup of the stanza got to: its stored chunks are not sent again and
    /// the files it read that have not changed since are not read again.
    pub resume: Option<BackupCheckpoint>,
}

/// Asks an uploader (on [`subjects::FETCH`]) to send stored chunks, sealed, to `reply` as
/// [`FetchedChunk`] events, in order.
#[derive(Archive, Serialize, Deserialize, Debug, Clone)]
pub struct FetchRequest {
    pub version: u16,
    pub reply: String,
    pub chunks: Vec<ChunkRef>,
}

/// One answer to a [`FetchRequest`]: chunk `index` of the request, or why it could not be read.
#[derive(Archive, Serialize, Deserialize, Debug, Clone)]
pub enum FetchedChunk {
    Sealed { index: u32, bytes: Vec<u8> },
    Failed(String),
}

/// Collector -> `strata backup`, on [`subjects::backup_status`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone)]
pub enum BackupStatus {
    Started { start_lsn: u64, total_bytes: u64 },
    Progress { done_bytes: u64, total_bytes: u64 },
    Done(BackupSummary),
    Failed(String),
}

#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// Neither framed nor the unframed form of an older build.
    #[error("not a Strata {what} (no format header, and not the unframed form of older builds: {reason})")]
    NotStrata { what: &'static str, reason: String },
    /// Framed, but as another kind of format.
    #[error("not a Strata {what}: it is a Strata {found}")]
    OtherKind { what: &'static str, found: &'static str },
    #[error("not a Strata {what}: its format header names kind {kind}, unknown to this build")]
    UnknownKind { what: &'static str, kind: u8 },
    #[error("{what} has format version {found}, this build reads up to {newest}")]
    TooNew { what: &'static str, found: u16, newest: u16 },
    #[error("{what} has format version {found}, this build reads versions {oldest} to {newest}")]
    TooOld { what: &'static str, found: u16, oldest: u16, newest: u16 },
    /// The header is right but the archive behind it does not validate (damaged, truncated).
    #[error("malformed {what}: {reason}")]
    Malformed { what: &'static str, reason: String },
}

type Serializer<'a> = rkyv::api::high::HighSerializer<Vec<u8>, rkyv::ser::allocator::ArenaHandle<'a>, rkyv::rancor::Error>;

/// Serializes a message or record in its current format: the header ([`format`]), then the archive.
pub fn encode<T>(value: &T) -> Vec<u8>
where
    T: Versioned + for<'a> Serialize<Serializer<'a>>,
{
    let out = Header::bytes(T::KIND, T::VERSION).to_vec();
    rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(value, out).expect("serializing into a Vec cannot fail")
}

/// The archive alone, without the header: the unframed form builds before the header wrote. Only tests
/// and the legacy samples (`testdata/`) use it; nothing writes it any more.
#[doc(hidden)]
pub fn encode_unframed<T>(value: &T) -> Vec<u8>
where
    T: for<'a> Serialize<Serializer<'a>>,
{
    rkyv::api::high::to_bytes_in::<_, rkyv::rancor::Error>(value, Vec::new()).expect("serializing into a Vec cannot fail")
}

/// Types written as a framed archive, with the kind and version of their format.
pub trait Versioned: Archive {
    const KIND: Kind;
    const WHAT: &'static str = Self::KIND.name();
    /// The version this build writes (and reads in place with [`decode`]).
    const VERSION: u16 = FORMAT_VERSION;
    /// The oldest version the type's reader still reads (through its migration chain).
    const OLDEST: u16 = Self::VERSION;
    /// The `version` field inside the archive, for types that have one: the only version the unframed
    /// form carries.
    fn archived_version(archived: &Self::Archived) -> Option<u16>;
}

/// The error for a version outside what `T`'s decoder reads.
fn version_error<T: Versioned>(found: u16) -> DecodeError {
    if found > T::VERSION {
        DecodeError::TooNew { what: T::WHAT, found, newest: T::VERSION }
    } else {
        DecodeError::TooOld { what: T::WHAT, found, oldest: T::OLDEST, newest: T::VERSION }
    }
}

/// The frame's version when `bytes` is framed as a `T` (any version), `None` when unframed.
pub fn framed_version<T: Versioned>(bytes: &[u8]) -> Result<Option<u16>, DecodeError> {
    match format::split(bytes).map_err(|reason| DecodeError::Malformed { what: T::WHAT, reason: reason.into() })? {
        Framed::Unframed(_) => Ok(None),
        Framed::Framed { header, .. } if header.kind == T::KIND as u8 => Ok(Some(header.version)),
        Framed::Framed { header, .. } => Err(match Kind::from_byte(header.kind) {
            Some(other) => DecodeError::OtherKind { what: T::WHAT, found: other.name() },
            None => DecodeError::UnknownKind { what: T::WHAT, kind: header.kind },
        }),
    }
}

/// Validates `bytes` in place as the current version of `T`, framed or (older builds) unframed; borrows,
/// never copies. Older versions are read by the type's migration chain ([`decode_wal_record`]).
pub fn decode<T>(bytes: &[u8]) -> Result<&T::Archived, DecodeError>
where
    T: Versioned,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rkyv::rancor::BoxedError>>
        + rkyv::Portable,
{
    // Offsets in errors count from the start of `bytes`, header included.
    fn access<'a, T: Archive>(archive: &'a [u8], whole: &[u8]) -> Result<&'a T::Archived, String>
    where
        T::Archived: for<'b> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'b, rkyv::rancor::BoxedError>>
            + rkyv::Portable,
    {
        rkyv::access::<T::Archived, rkyv::rancor::BoxedError>(archive).map_err(|e| without_addresses(&e.to_string(), whole))
    }
    match framed_version::<T>(bytes)? {
        Some(version) => {
            if version != T::VERSION {
                return Err(version_error::<T>(version));
            }
            let archived =
                access::<T>(&bytes[format::HEADER_LEN..], bytes).map_err(|reason| DecodeError::Malformed { what: T::WHAT, reason })?;
            match T::archived_version(archived) {
                Some(inner) if inner != version => Err(DecodeError::Malformed {
                    what: T::WHAT,
                    reason: format!("its header says format version {version}, its archive {inner}"),
                }),
                _ => Ok(archived),
            }
        }
        // The unframed form of older builds: the first step of every migration chain.
        None => {
            let archived = access::<T>(bytes, bytes).map_err(|reason| DecodeError::NotStrata { what: T::WHAT, reason })?;
            match T::archived_version(archived) {
                Some(found) if found != T::VERSION => Err(version_error::<T>(found)),
                _ => Ok(archived),
            }
        }
    }
}

/// Turns an archived value back into an owned one.
pub fn to_owned<T>(archived: &T::Archived) -> T
where
    T: Archive,
    T::Archived: Deserialize<T, rkyv::api::high::HighDeserializer<rkyv::rancor::Error>>,
{
    rkyv::deserialize::<T, rkyv::rancor::Error>(archived).expect("deserializing a validated archive cannot fail")
}

macro_rules! versioned {
    ($t:ty, $kind:expr) => {
        versioned!($t, $kind, FORMAT_VERSION);
    };
    ($t:ty, $kind:expr, $version:expr) => {
        impl Versioned for $t {
            const KIND: Kind = $kind;
            const VERSION: u16 = $version;
            fn archived_version(a: &Self::Archived) -> Option<u16> {
                Some(a.version.to_native())
            }
        }
    };
}
versioned!(PlainChunk, Kind::PlainChunk);
versioned!(BackupRequest, Kind::BackupRequest);
versioned!(FetchRequest, Kind::FetchRequest);
versioned!(manifest::ManifestHead, Kind::ManifestHead);
versioned!(manifest::FileList, Kind::FileList);
versioned!(manifest::BackupCheckpoint, Kind::BackupCheckpoint);
versioned!(manifest::BackupRecord, Kind::BackupRecord);
versioned!(manifest::WalRecordV2, Kind::WalRecord, 2);

impl Versioned for WalRecord {
    const KIND: Kind = Kind::WalRecord;
    const VERSION: u16 = WAL_RECORD_VERSION;
    const OLDEST: u16 = 2;
    fn archived_version(a: &Self::Archived) -> Option<u16> {
        Some(a.version.to_native())
    }
}

/// Reads a stored WAL record of any version this build knows, migrated to the current one.
///
/// The chain: the version comes from the header, or for the unframed form of older builds from which
/// layout validates (the current one first, so a damaged current record reports its own error; a version-2
/// record does not validate as the longer layout). Version 2 is read as [`WalRecordV2`] and converted
/// (`From`, without a summary); version 3 is the current layout.
pub fn decode_wal_record(bytes: &[u8]) -> Result<WalRecord, DecodeError> {
    let version = match framed_version::<WalRecord>(bytes)? {
        Some(version) => version,
        None => match decode::<WalRecord>(bytes) {
            Ok(_) => WAL_RECORD_VERSION,
            Err(current) => match decode::<WalRecordV2>(bytes) {
                Ok(_) => 2,
                Err(_) => return Err(current),
            },
        },
    };
    match version {
        WAL_RECORD_VERSION => Ok(to_owned::<WalRecord>(decode::<WalRecord>(bytes)?)),
        2 => Ok(to_owned::<WalRecordV2>(decode::<WalRecordV2>(bytes)?).into()),
        found => Err(version_error::<WalRecord>(found)),
    }
}

impl Versioned for UploadWork {
    const KIND: Kind = Kind::UploadWork;
    const VERSION: u16 = UPLOAD_WORK_VERSION;
    fn archived_version(a: &Self::Archived) -> Option<u16> {
        Some(match a {
            ArchivedUploadWork::Chunk(c) => c.version.to_native(),
            ArchivedUploadWork::CommitBackup(c) => c.version.to_native(),
            ArchivedUploadWork::CommitWal(c) => c.version.to_native(),
            ArchivedUploadWork::Checkpoint(c) => c.version.to_native(),
            ArchivedUploadWork::StreamedPartial(c) => c.version.to_native(),
        })
    }
}
impl Versioned for JobEvent {
    const KIND: Kind = Kind::JobEvent;
    fn archived_version(_: &Self::Archived) -> Option<u16> {
        None
    }
}
impl Versioned for FetchedChunk {
    const KIND: Kind = Kind::FetchedChunk;
    fn archived_version(_: &Self::Archived) -> Option<u16> {
        None
    }
}
impl Versioned for BackupStatus {
    const KIND: Kind = Kind::BackupStatus;
    fn archived_version(_: &Self::Archived) -> Option<u16> {
        None
    }
}

/// Lowercase hex of an id, for file names and messages.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(DIGITS[(b >> 4) as usize] as char);
        s.push(DIGITS[(b & 15) as usize] as char);
    }
    s
}


/// rkyv's validation errors name memory addresses ("pointer 0x00005581c0ffee10 ..."): where the process
/// happened to hold the buffer, meaningless to a user and different on every run. Each becomes its offset
/// in `bytes` ("offset 84"), or "an address outside the object".
fn without_addresses(reason: &str, bytes: &[u8]) -> String {
    let base = bytes.as_ptr() as usize;
    let mut out = String::with_capacity(reason.len());
    let mut rest = reason;
    while let Some(i) = rest.find("0x") {
        out.push_str(&rest[..i]);
        let digits = rest[i + 2..].bytes().take_while(u8::is_ascii_hexdigit).count();
        let token = &rest[i..i + 2 + digits];
        match usize::from_str_radix(&token[2..], 16) {
            Ok(addr) if digits >= 8 && (base..=base + bytes.len()).contains(&addr) => out.push_str(&format!("offset {}", addr - base)),
            Ok(_) if digits >= 8 => out.push_str("an address outside the object"),
            _ => out.push_str(token),
        }
        rest = &rest[i + 2 + digits..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod address_tests {
    #[test]
    fn addresses_in_validation_errors_become_offsets() {
        let bytes = [0u8; 64];
        let base = bytes.as_ptr() as usize;
        let reason = format!("subtree pointer overran range: ptr {:#018x} size 8 range {:#018x}..{:#018x}", base + 60, base, 0x10usize);
        assert_eq!(
            super::without_addresses(&reason, &bytes),
            "subtree pointer overran range: ptr offset 60 size 8 range offset 0..an address outside the object"
        );
        assert_eq!(super::without_addresses("version 0x2 is odd", &bytes), "version 0x2 is odd");
        // A real one: garbage is not a backup record, and the error names no address.
        let e = super::decode::<super::BackupRecord>(&[0xffu8; 64]).err().expect("garbage must not decode").to_string();
        assert!(!e.contains("0x0000"), "{e}");
    }
}

#[cfg(test)]
mod tests;
