//! WAL segment names, archive file kinds and the long page header at the start of each segment.
//!
//! The WAL is one byte stream cut into segment files of equal size (16 MiB unless `initdb --wal-segsize` chose a
//! power of two from 1 MiB to 1 GiB). A segment is named `TTTTTTTTXXXXXXXXYYYYYYYY`: the timeline, then the segment
//! number split into a "log id" and a "segment within log id", where one log id covers 4 GiB of WAL. That split
//! depends on the segment size, so every name function takes `seg_size`; passing the wrong size gives a name that
//! PostgreSQL would never write. The size comes from `pg_control` (or the long header below) and must be checked
//! once with [`is_valid_seg_size`]; the functions here that cannot fail panic on an invalid size, as a programming
//! error, while [`WalSegment::parse`] returns `None`.
//!
//! Besides segments, `archive_command` is handed `.partial` segments (the last, incomplete segment of an old
//! timeline after promotion), timeline `.history` files and `.backup` history files; [`classify_wal_file`] tells
//! them apart using the same patterns as PostgreSQL's `xlog_internal.h` (upper-case hex only).
//!
//! Byte layout follows `XLogLongPageHeaderData` of PostgreSQL 15, read as little-endian (see the crate docs).

use crate::{Lsn, TimelineId};

/// Smallest WAL segment size `initdb` accepts (`WalSegMinSize`).
pub const MIN_SEG_SIZE: u64 = 1024 * 1024;
/// Largest WAL segment size `initdb` accepts (`WalSegMaxSize`).
pub const MAX_SEG_SIZE: u64 = 1024 * 1024 * 1024;

/// Whether `seg_size` is a WAL segment size PostgreSQL can have (`IsValidWalSegSize`): a power of two from 1 MiB to
/// 1 GiB.
pub fn is_valid_seg_size(seg_size: u64) -> bool {
    seg_size.is_power_of_two() && (MIN_SEG_SIZE..=MAX_SEG_SIZE).contains(&seg_size)
}

/// Segments per 4 GiB "log id" (`XLogSegmentsPerXLogId`).
fn segments_per_xlog_id(seg_size: u64) -> u64 {
    assert!(
        is_valid_seg_size(seg_size),
        "invalid wal segment size {seg_size}"
    );
    0x1_0000_0000 / seg_size
}

/// One WAL segment file: a timeline and a segment number (`XLogSegNo`).
///
/// Ordering is by timeline, then segment number, so sorting a set of segments groups them per timeline.
#[derive(Copy, Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WalSegment {
    pub timeline: TimelineId,
    pub segno: u64,
}

impl WalSegment {
    /// The segment of `timeline` that holds the byte at `lsn` (`XLByteToSeg`).
    ///
    /// A segment's end position belongs to the next segment; to find the segment a record *ending* at `lsn` was
    /// written to, pass `lsn - 1` as PostgreSQL's `XLByteToPrevSeg` does.
    ///
    /// # Panics
    /// If `seg_size` is not a valid segment size.
    pub fn containing(timeline: TimelineId, lsn: Lsn, seg_size: u64) -> WalSegment {
        assert!(
            is_valid_seg_size(seg_size),
            "invalid wal segment size {seg_size}"
        );
        WalSegment {
            timeline,
            segno: lsn.0 / seg_size,
        }
    }

    /// The file name, 24 upper-case hex digits (`XLogFileName`), e.g. `000000010000000000000003`.
    ///
    /// # Panics
    /// If `seg_size` is not a valid segment size.
    pub fn name(&self, seg_size: u64) -> String {
        let per = segments_per_xlog_id(seg_size);
        format!(
            "{:08X}{:08X}{:08X}",
            self.timeline,
            self.segno / per,
            self.segno % per
        )
    }

    /// Parses a segment file name (`XLogFromFileName`), or `None` if `name` is not exactly 24 upper-case hex digits,
    /// names timeline 0, has a segment part too large for `seg_size` (a name PostgreSQL would not write with that
    /// size), or `seg_size` is invalid.
    pub fn parse(name: &str, seg_size: u64) -> Option<WalSegment> {
        if !is_valid_seg_size(seg_size) || !is_upper_hex(name, 24) {
            return None;
        }
        let timeline = u32::from_str_radix(&name[0..8], 16).ok()?;
        let log = u64::from_str_radix(&name[8..16], 16).ok()?;
        let seg = u64::from_str_radix(&name[16..24], 16).ok()?;
        let per = segments_per_xlog_id(seg_size);
        if timeline == 0 || seg >= per {
            return None;
        }
        Some(WalSegment {
            timeline,
            segno: log * per + seg,
        })
    }

    /// The following segment on the same timeline.
    pub fn next(&self) -> WalSegment {
        WalSegment {
            timeline: self.timeline,
            segno: self.segno + 1,
        }
    }

    /// Position of the segment's first byte (`XLogSegNoOffsetToRecPtr` with offset 0).
    ///
    /// # Panics
    /// If `seg_size` is not a valid segment size.
    pub fn start_lsn(&self, seg_size: u64) -> Lsn {
        assert!(
            is_valid_seg_size(seg_size),
            "invalid wal segment size {seg_size}"
        );
        Lsn(self.segno * seg_size)
    }
}

/// What a file handed to `archive_command` (or found in the archive) is.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum WalFileKind {
    /// A complete segment: `000000010000000000000003`.
    Segment,
    /// The unfinished last segment of a timeline, archived at promotion: `000000010000000000000003.partial`.
    Partial,
    /// A timeline history file, written at promotion: `00000002.history`.
    History,
    /// A backup history file, written by `pg_backup_stop()`: `000000010000000000000003.00000028.backup`.
    BackupHistory,
}

/// Classifies an archive file name; `None` for anything PostgreSQL would not archive.
///
/// The patterns are those of `IsXLogFileName`, `IsPartialXLogFileName`, `IsTLHistoryFileName` and
/// `IsBackupHistoryFileName`. The last is stricter here than in PostgreSQL (which only checks the first 24
/// characters and the suffix): Strata requires the exact `%08X.backup` form PostgreSQL writes.
pub fn classify_wal_file(name: &str) -> Option<WalFileKind> {
    // Work on bytes: slicing the str at fixed offsets could split a multi-byte character.
    let b = name.as_bytes();
    match b.len() {
        24 if upper_hex(b) => Some(WalFileKind::Segment),
        32 if upper_hex(&b[..24]) && &b[24..] == b".partial" => Some(WalFileKind::Partial),
        16 if upper_hex(&b[..8]) && &b[8..] == b".history" => Some(WalFileKind::History),
        40 if upper_hex(&b[..24])
            && b[24] == b'.'
            && upper_hex(&b[25..33])
            && &b[33..] == b".backup" =>
        {
            Some(WalFileKind::BackupHistory)
        }
        _ => None,
    }
}

/// A name that is none of the four kinds of WAL file. The name is shown escaped (`{:?}`), so that one from a
/// hostile source (with a newline, or a path) stays on one line.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0:?} is not a WAL file name (a segment, .partial, .history or .backup file)")]
pub struct NotAWalFileName(pub String);

/// The kind of a WAL file name that comes from outside (a user, PostgreSQL, a file): the check every such name
/// passes before it becomes part of a path, so that `../../etc/passwd` is refused instead of read.
pub fn wal_file_kind(name: &str) -> Result<WalFileKind, NotAWalFileName> {
    classify_wal_file(name).ok_or_else(|| NotAWalFileName(name.to_string()))
}

/// Name of the history file for `timeline` (`TLHistoryFileName`), e.g. `00000002.history`.
pub fn history_file_name(timeline: TimelineId) -> String {
    format!("{timeline:08X}.history")
}

/// Whether `s` is exactly `len` characters of `0-9A-F`. Checking this first also makes the callers' slicing at
/// fixed offsets safe, since every byte is then ASCII.
fn is_upper_hex(s: &str, len: usize) -> bool {
    s.len() == len && upper_hex(s.as_bytes())
}

fn upper_hex(b: &[u8]) -> bool {
    b.iter().all(|b| matches!(b, b'0'..=b'9' | b'A'..=b'F'))
}

/// `XLOG_PAGE_MAGIC` of PostgreSQL 15: the first two bytes of every WAL page it writes.
pub const XLOG_PAGE_MAGIC_PG15: u16 = 0xD110;

/// `xlp_info` bit saying the page has the long header (`XLP_LONG_HEADER`); set on the first page of each segment.
pub const XLP_LONG_HEADER: u16 = 0x0002;

/// Size of `XLogLongPageHeaderData` (`SizeOfXLogLongPHD`).
pub const LONG_HEADER_SIZE: usize = 40;

/// The header on the first page of a WAL segment (`XLogLongPageHeaderData`).
///
/// It identifies the segment independently of its file name: which cluster wrote it (`system_id`, the same value as
/// in `pg_control`), which major version (`magic`), and where it sits in the stream (`page_addr`, the segment's start
/// LSN). Archive-push compares these with the stanza before accepting a file.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct WalLongHeader {
    /// `xlp_magic`; see [`magic_to_major_version`].
    pub magic: u16,
    /// `xlp_tli`: timeline of the first record on the page.
    pub timeline: TimelineId,
    /// `xlp_pageaddr`: WAL position of this page, i.e. the segment's start LSN.
    pub page_addr: Lsn,
    /// `xlp_sysid`: the cluster's database system identifier.
    pub system_id: u64,
    /// `xlp_seg_size`: the WAL segment size of the cluster.
    pub seg_size: u32,
    /// `xlp_xlog_blcksz`: the WAL page size of the cluster.
    pub block_size: u32,
}

impl WalLongHeader {
    /// The segment this header says it starts, or `None` if its `seg_size` is not a valid size or `page_addr` is
    /// not at a segment boundary (the bytes are not a segment start).
    pub fn segment(&self) -> Option<WalSegment> {
        let seg_size = u64::from(self.seg_size);
        if !is_valid_seg_size(seg_size) || self.page_addr.segment_offset(seg_size) != 0 {
            return None;
        }
        Some(WalSegment::containing(
            self.timeline,
            self.page_addr,
            seg_size,
        ))
    }
}

/// Reads the long page header at offset 0 of a segment; `None` if fewer than [`LONG_HEADER_SIZE`] bytes are given or
/// the `XLP_LONG_HEADER` bit is not set. The magic is returned as found, not checked.
pub fn parse_long_header(segment_start: &[u8]) -> Option<WalLongHeader> {
    let h = segment_start.get(..LONG_HEADER_SIZE)?;
    let u16_at = |o: usize| u16::from_le_bytes([h[o], h[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    let u64_at = |o: usize| u64::from(u32_at(o)) | (u64::from(u32_at(o + 4)) << 32);

    // Layout: xlp_magic u16 @0, xlp_info u16 @2, xlp_tli u32 @4, xlp_pageaddr u64 @8, xlp_rem_len u32 @16, padding
    // to 24 (MAXALIGN), xlp_sysid u64 @24, xlp_seg_size u32 @32, xlp_xlog_blcksz u32 @36.
    if u16_at(2) & XLP_LONG_HEADER == 0 {
        return None;
    }
    Some(WalLongHeader {
        magic: u16_at(0),
        timeline: u32_at(4),
        page_addr: Lsn(u64_at(8)),
        system_id: u64_at(24),
        seg_size: u32_at(32),
        block_size: u32_at(36),
    })
}

/// What a segment archived into a stanza must agree with: the stanza's cluster.
#[derive(Copy, Clone, Debug, PartialEq, Eq)]
pub struct SegmentOwner {
    pub system_id: u64,
    pub pg_major: u32,
    pub seg_size: u64,
}

/// How a segment (or `.partial` segment) differs from what its name and its stanza say it is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SegmentMismatch {
    #[error("its name is not that of a segment of the stanza's segment size ({0} bytes)")]
    Name(u64),
    #[error("it is {found} bytes but the stanza's WAL segments are {want} bytes")]
    Size { found: u64, want: u64 },
    #[error("it does not start with a WAL long page header")]
    NoLongHeader,
    #[error("it was written by PostgreSQL {found} but the stanza is for PostgreSQL {want}")]
    Version { found: String, want: u32 },
    #[error("it belongs to database system {found} (xlp_sysid) but the stanza is for system {want}")]
    SystemId { found: u64, want: u64 },
    #[error("its header gives segment size {found} (xlp_seg_size) but the stanza's is {want}")]
    SegSize { found: u32, want: u64 },
    #[error("its header gives WAL page size {0} (xlp_xlog_blcksz); only {WAL_PAGE_SIZE} is supported", WAL_PAGE_SIZE = crate::WAL_PAGE_SIZE)]
    PageSize(u32),
    #[error("it starts at WAL position {found} (xlp_pageaddr), but the segment its name gives starts at {want}")]
    PageAddr { found: Lsn, want: Lsn },
    #[error("its page at {lsn} is of timeline {found} (xlp_tli), not of its name's timeline {want} or an earlier one")]
    Timeline { lsn: Lsn, found: TimelineId, want: TimelineId },
}

/// Checks that `data` is the segment `name` (a segment or `.partial` name) says it is, of the cluster `owner`
/// describes: its size, and the first page's long header (magic, system id, segment and page size, and the
/// segment's start position), and that no page of it is of a timeline after the name's. A page may be of an
/// earlier timeline: at a switch, the new timeline's first segment starts with the parent's pages.
///
/// A file archived under the wrong name would be refused by nothing later: the segment that really has that
/// name would then be refused as "different content", and archiving would stop there.
pub fn check_segment(name: &str, data: &[u8], owner: &SegmentOwner) -> Result<WalSegment, SegmentMismatch> {
    let base = name.strip_suffix(".partial").unwrap_or(name);
    let segment = WalSegment::parse(base, owner.seg_size).ok_or(SegmentMismatch::Name(owner.seg_size))?;
    if data.len() as u64 != owner.seg_size {
        return Err(SegmentMismatch::Size { found: data.len() as u64, want: owner.seg_size });
    }
    let header = parse_long_header(data).ok_or(SegmentMismatch::NoLongHeader)?;
    let major = magic_to_major_version(header.magic);
    if major != Some(owner.pg_major) {
        let found = major.map(|m| m.to_string()).unwrap_or_else(|| format!("(unknown WAL magic {:#x})", header.magic));
        return Err(SegmentMismatch::Version { found, want: owner.pg_major });
    }
    if header.system_id != owner.system_id {
        return Err(SegmentMismatch::SystemId { found: header.system_id, want: owner.system_id });
    }
    if u64::from(header.seg_size) != owner.seg_size {
        return Err(SegmentMismatch::SegSize { found: header.seg_size, want: owner.seg_size });
    }
    if header.block_size as usize != crate::WAL_PAGE_SIZE {
        return Err(SegmentMismatch::PageSize(header.block_size));
    }
    let start = segment.start_lsn(owner.seg_size);
    if header.page_addr != start {
        return Err(SegmentMismatch::PageAddr { found: header.page_addr, want: start });
    }
    let newer = crate::walscan::page_timelines(data).find(|(_, tli)| *tli == 0 || *tli > segment.timeline);
    if let Some((lsn, tli)) = newer {
        return Err(SegmentMismatch::Timeline { lsn, found: tli, want: segment.timeline });
    }
    Ok(segment)
}

/// The major version whose WAL carries `magic`, for the releases Strata can recognise (12 to 17).
///
/// The magic changes whenever the WAL format does, which is at most once per major release and never within one,
/// so it identifies the major version that wrote a segment. Values are from each release's `xlog_internal.h`.
pub fn magic_to_major_version(magic: u16) -> Option<u32> {
    match magic {
        0xD101 => Some(12),
        0xD106 => Some(13),
        0xD10D => Some(14),
        XLOG_PAGE_MAGIC_PG15 => Some(15),
        0xD113 => Some(16),
        0xD116 => Some(17),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
