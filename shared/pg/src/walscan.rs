//! What a WAL segment holds that recovery targets stop at: transaction ends (with their xid and time) and
//! named restore points, found by walking the segment's records.
//!
//! Strata needs this to refuse, before writing anything, a point-in-time target the archive cannot reach:
//! recovery to a time, xid or restore point stops at a particular record, so the archive must hold every
//! segment up to the one that record ends in, and only the records say which one that is. Archive-push
//! scans each segment once (a walk over record headers, a few milliseconds for 16 MiB) and stores the
//! result beside it; restore, check and info read only those summaries.
//!
//! # What counts
//! Exactly what PostgreSQL 15's `recoveryStopsBefore`/`recoveryStopsAfter` look at: `XLOG_XACT_COMMIT`,
//! `XLOG_XACT_ABORT` (xid from the record header, time from the record) and their `_PREPARED` forms (xid
//! from the record's two-phase part), and `XLOG_RESTORE_POINT`. Everything else is skipped by length.
//!
//! # Records that span two segments
//! A record that starts near the end of a segment continues at the start of the next. A scan of one
//! segment sees only its own part, so [`SegmentScan`] keeps the first bytes of such a record
//! ([`SegmentScan::tail`]) and of the continuation at its own start ([`SegmentScan::head`]); joined with
//! [`join_split_record`], they give the record back, which then belongs to the later segment (where it
//! ends, the segment recovery needs to read it). Only the first [`SPLIT_KEEP`] bytes of each side are
//! kept: enough for every commit, abort and restore point but a commit carrying thousands of
//! invalidation messages, whose event is then not known.
//!
//! # Where valid WAL ends
//! After an `XLOG_SWITCH` record the rest of the segment is unused, and a recycled segment file carries
//! stale bytes of an older segment there. The walk stops at a switch, at a page whose header does not
//! name this segment, and at a record whose length or back-link (`xl_prev`) is not that of the WAL
//! stream. It does not check CRCs: an archived segment is complete by construction.
//!
//! Layouts are PostgreSQL 15's (`xlogrecord.h`, `xlog_internal.h`, `xact.h`), little-endian.

use crate::wal::{parse_long_header, LONG_HEADER_SIZE};
use crate::{Lsn, TimelineId, WAL_PAGE_SIZE};

/// Microseconds from the Unix epoch to PostgreSQL's (2000-01-01 00:00:00 UTC).
pub const PG_EPOCH_UNIX_MICROS: i64 = 946_684_800_000_000;

/// Bytes kept of each side of a record split across segments.
pub const SPLIT_KEEP: usize = 1024;

/// `SizeOfXLogShortPHD`.
const SHORT_HEADER_SIZE: usize = 24;
/// `SizeOfXLogRecord`.
const RECORD_HEADER_SIZE: usize = 24;
/// `XLP_FIRST_IS_CONTRECORD`.
const XLP_FIRST_IS_CONTRECORD: u16 = 0x0001;

const RM_XLOG_ID: u8 = 0;
const RM_XACT_ID: u8 = 1;
/// `XLR_INFO_MASK`: the low bits of `xl_info` are the record machinery's, the high ones the resource
/// manager's.
const XLR_INFO_MASK: u8 = 0x0F;
const XLOG_SWITCH: u8 = 0x40;
const XLOG_RESTORE_POINT: u8 = 0x70;
const XLOG_XACT_OPMASK: u8 = 0x70;
const XLOG_XACT_COMMIT: u8 = 0x00;
const XLOG_XACT_ABORT: u8 = 0x20;
const XLOG_XACT_COMMIT_PREPARED: u8 = 0x30;
const XLOG_XACT_ABORT_PREPARED: u8 = 0x40;
const XLOG_XACT_HAS_INFO: u8 = 0x80;

const XACT_XINFO_HAS_DBINFO: u32 = 1 << 0;
const XACT_XINFO_HAS_SUBXACTS: u32 = 1 << 1;
const XACT_XINFO_HAS_RELFILENODES: u32 = 1 << 2;
const XACT_XINFO_HAS_INVALS: u32 = 1 << 3;
const XACT_XINFO_HAS_TWOPHASE: u32 = 1 << 4;
const XACT_XINFO_HAS_DROPPED_STATS: u32 = 1 << 8;

const XLR_MAX_BLOCK_ID: u8 = 32;
const XLR_BLOCK_ID_DATA_SHORT: u8 = 255;
const XLR_BLOCK_ID_DATA_LONG: u8 = 254;
const XLR_BLOCK_ID_ORIGIN: u8 = 253;
const XLR_BLOCK_ID_TOPLEVEL_XID: u8 = 252;
const BKPBLOCK_HAS_IMAGE: u8 = 0x10;
const BKPBLOCK_SAME_REL: u8 = 0x80;
const BKPIMAGE_HAS_HOLE: u8 = 0x01;
/// `BKPIMAGE_COMPRESS_PGLZ | _LZ4 | _ZSTD` of PostgreSQL 15.
const BKPIMAGE_COMPRESSED: u8 = 0x04 | 0x08 | 0x10;
/// `MAXFNAMELEN`: a restore point's name field.
const RESTORE_POINT_NAME_LEN: usize = 64;

/// A record recovery targets can stop at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WalEvent {
    /// A transaction committed or aborted: what `recovery_target_time` and `recovery_target_xid` stop at.
    XactEnd {
        /// Where the record starts.
        lsn: Lsn,
        /// The transaction's xid (for a prepared transaction, the prepared one's).
        xid: u32,
        /// `xact_time`, in microseconds since the Unix epoch.
        time: i64,
        commit: bool,
    },
    /// `pg_create_restore_point(name)`: what `recovery_target_name` stops at.
    RestorePoint { lsn: Lsn, name: String, time: i64 },
}

impl WalEvent {
    pub fn lsn(&self) -> Lsn {
        match self {
            WalEvent::XactEnd { lsn, .. } | WalEvent::RestorePoint { lsn, .. } => *lsn,
        }
    }

    pub fn time(&self) -> i64 {
        match self {
            WalEvent::XactEnd { time, .. } | WalEvent::RestorePoint { time, .. } => *time,
        }
    }
}

/// What one segment holds; see the module docs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SegmentScan {
    /// Events of the records lying wholly in the segment, in WAL order.
    pub events: Vec<WalEvent>,
    /// Start of the last record lying wholly in the segment ([`Lsn::INVALID`] when none does).
    pub last_start: Lsn,
    /// The first bytes (up to [`SPLIT_KEEP`]) of the continuation of a record begun in the previous
    /// segment, page headers removed; empty when the segment starts with a record.
    pub head: Vec<u8>,
    /// The first bytes (up to [`SPLIT_KEEP`]) of a record that continues in the next segment, page headers
    /// removed; empty when no record crosses the segment's end or the one that does cannot be an event.
    pub tail: Vec<u8>,
    /// Where the record of [`SegmentScan::tail`] starts.
    pub tail_lsn: Lsn,
    /// The segment ends with `pg_switch_wal()`'s record: the rest of it is unused.
    pub switched: bool,
}

/// Why a segment could not be scanned.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("the segment does not start with a WAL long page header")]
    NoLongHeader,
    #[error("the segment's header gives segment size {0}, but it is {1} bytes")]
    SizeMismatch(u32, usize),
    #[error("the segment's header gives WAL page size {0}; only {WAL_PAGE_SIZE} is supported")]
    PageSize(u32),
    #[error("the segment's header gives segment size {0} at WAL position {1}, which no segment starts at")]
    NotSegmentStart(u32, Lsn),
}

/// The page layout of one segment, to read the record stream across page headers.
struct Pages<'a> {
    data: &'a [u8],
    /// LSN of the segment's first byte.
    start: u64,
    magic: u16,
}

impl Pages<'_> {
    fn header_len(offset: usize) -> usize {
        if offset < WAL_PAGE_SIZE {
            LONG_HEADER_SIZE
        } else {
            SHORT_HEADER_SIZE
        }
    }

    /// The page header at page-aligned `offset`: (xlp_info, xlp_rem_len), or `None` when the page is not
    /// this segment's (a recycled file's stale bytes, or never written).
    fn page(&self, offset: usize) -> Option<(u16, u32)> {
        let h = self.data.get(offset..offset + SHORT_HEADER_SIZE)?;
        let magic = u16::from_le_bytes([h[0], h[1]]);
        let info = u16::from_le_bytes([h[2], h[3]]);
        let addr = u64::from_le_bytes(h[8..16].try_into().expect("8 bytes"));
        let rem = u32::from_le_bytes(h[16..20].try_into().expect("4 bytes"));
        (magic == self.magic && addr == self.start + offset as u64).then_some((info, rem))
    }

    /// Moves `offset` over `len` bytes of the record stream, skipping page headers, and copies up to `keep`
    /// of them (counting what `out` already holds) into `out`. Returns where the bytes end, or where the
    /// walk had to stop: at the segment's end, or at a page that does not continue the record.
    fn advance(&self, mut offset: usize, mut len: usize, out: &mut Vec<u8>, keep: usize) -> Result<usize, Stop> {
        while len > 0 {
            if offset.is_multiple_of(WAL_PAGE_SIZE) {
                if offset >= self.data.len() {
                    return Err(Stop::SegmentEnd);
                }
                match self.page(offset) {
                    Some((info, _)) if info & XLP_FIRST_IS_CONTRECORD != 0 => {}
                    _ => return Err(Stop::Invalid),
                }
                offset += Self::header_len(offset);
            }
            let page_end = (offset / WAL_PAGE_SIZE + 1) * WAL_PAGE_SIZE;
            let n = len.min(page_end - offset);
            if out.len() < keep {
                let take = n.min(keep - out.len());
                out.extend_from_slice(&self.data[offset..offset + take]);
            }
            offset += n;
            len -= n;
        }
        Ok(offset)
    }
}

/// The timeline (`xlp_tli`) of each page of a segment that is the segment's own, with the page's position:
/// pages with the magic of its first page and the address of their place in it. A recycled file's stale
/// pages (an older segment's) and pages never written are left out.
pub fn page_timelines(data: &[u8]) -> impl Iterator<Item = (Lsn, TimelineId)> + '_ {
    let pages = parse_long_header(data).map(|long| Pages { data, start: long.page_addr.0, magic: long.magic });
    (0..data.len()).step_by(WAL_PAGE_SIZE).filter_map(move |offset| {
        let pages = pages.as_ref()?;
        pages.page(offset)?;
        let tli = u32::from_le_bytes(data[offset + 4..offset + 8].try_into().expect("4 bytes"));
        Some((Lsn(pages.start + offset as u64), tli))
    })
}

/// Why [`Pages::advance`] stopped early.
#[derive(Debug, PartialEq, Eq)]
enum Stop {
    SegmentEnd,
    Invalid,
}

fn maxalign(offset: usize) -> usize {
    (offset + 7) & !7
}

/// Scans one whole segment; see the module docs.
pub fn scan_segment(data: &[u8]) -> Result<SegmentScan, ScanError> {
    let long = parse_long_header(data).ok_or(ScanError::NoLongHeader)?;
    if long.seg_size as usize != data.len() {
        return Err(ScanError::SizeMismatch(long.seg_size, data.len()));
    }
    if long.block_size as usize != WAL_PAGE_SIZE {
        return Err(ScanError::PageSize(long.block_size));
    }
    // A size PostgreSQL can have (whole pages) and a position at its start (so no record's position
    // overflows): the walk below relies on both.
    if long.segment().is_none() {
        return Err(ScanError::NotSegmentStart(long.seg_size, long.page_addr));
    }
    let pages = Pages { data, start: long.page_addr.0, magic: long.magic };
    let mut scan = SegmentScan::default();

    let (first_info, first_rem) = pages.page(0).ok_or(ScanError::NoLongHeader)?;
    let mut offset = LONG_HEADER_SIZE;
    if first_info & XLP_FIRST_IS_CONTRECORD != 0 && first_rem > 0 {
        // The continuation's own pages carry the flag, so `advance` can walk it like any record.
        let mut head = Vec::new();
        let len = first_rem as usize;
        let n = len.min(WAL_PAGE_SIZE - LONG_HEADER_SIZE);
        head.extend_from_slice(&data[offset..offset + n.min(SPLIT_KEEP)]);
        match pages.advance(offset + n, len - n, &mut head, SPLIT_KEEP) {
            Ok(end) => offset = maxalign(end),
            Err(_) => {
                // One record fills the whole segment.
                scan.head = head;
                return Ok(scan);
            }
        }
        scan.head = head;
    }

    let mut prev: Option<u64> = None;
    let mut record = Vec::new();
    loop {
        if offset.is_multiple_of(WAL_PAGE_SIZE) {
            if offset >= data.len() || pages.page(offset).is_none() {
                break;
            }
            offset += Pages::header_len(offset);
        }
        let lsn = pages.start + offset as u64;
        // The header itself may cross a page (or the segment's end).
        record.clear();
        let header_end = match pages.advance(offset, RECORD_HEADER_SIZE, &mut record, RECORD_HEADER_SIZE) {
            Ok(end) => end,
            Err(stop) => {
                // A header cut by the segment's end may belong to an event: keep it for the join.
                if stop == Stop::SegmentEnd && record.iter().any(|b| *b != 0) {
                    scan.tail = record.clone();
                    scan.tail_lsn = Lsn(lsn);
                }
                break;
            }
        };
        let h = parse_header(&record).expect("24 bytes were read");
        if h.tot_len < RECORD_HEADER_SIZE || prev.is_some_and(|p| p != h.prev) {
            break;
        }
        let keep = if h.may_be_event() { SPLIT_KEEP.max(h.tot_len.min(1 << 20)) } else { 0 };
        let end = match pages.advance(header_end, h.tot_len - RECORD_HEADER_SIZE, &mut record, keep) {
            Ok(end) => end,
            Err(stop) => {
                if stop == Stop::SegmentEnd && h.may_be_event() {
                    record.truncate(SPLIT_KEEP);
                    scan.tail = record.clone();
                    scan.tail_lsn = Lsn(lsn);
                }
                break;
            }
        };
        scan.last_start = Lsn(lsn);
        if h.may_be_event() {
            if let Some(event) = parse_event(&record, Lsn(lsn)) {
                scan.events.push(event);
            }
        }
        if h.rmid == RM_XLOG_ID && h.info & !XLR_INFO_MASK == XLOG_SWITCH {
            scan.switched = true;
            break;
        }
        prev = Some(lsn);
        offset = maxalign(end);
    }
    Ok(scan)
}

/// The event of a record split across two segments: `tail` and `tail_lsn` from the scan of the first
/// segment, `head` from the scan of the next. `None` when the record is not an event, or its kept bytes
/// are not enough to tell.
pub fn join_split_record(tail: &[u8], tail_lsn: Lsn, head: &[u8]) -> Option<WalEvent> {
    if tail.is_empty() || head.is_empty() {
        return None;
    }
    let mut record = Vec::with_capacity(tail.len() + head.len());
    record.extend_from_slice(tail);
    record.extend_from_slice(head);
    parse_header(&record).filter(|h| h.may_be_event())?;
    parse_event(&record, tail_lsn)
}

struct Header {
    tot_len: usize,
    xid: u32,
    prev: u64,
    info: u8,
    rmid: u8,
}

impl Header {
    fn may_be_event(&self) -> bool {
        let op = self.info & !XLR_INFO_MASK;
        match self.rmid {
            RM_XLOG_ID => op == XLOG_RESTORE_POINT,
            RM_XACT_ID => matches!(
                self.info & XLOG_XACT_OPMASK,
                XLOG_XACT_COMMIT | XLOG_XACT_ABORT | XLOG_XACT_COMMIT_PREPARED | XLOG_XACT_ABORT_PREPARED
            ),
            _ => false,
        }
    }
}

fn parse_header(b: &[u8]) -> Option<Header> {
    let b = b.get(..RECORD_HEADER_SIZE)?;
    Some(Header {
        tot_len: u32::from_le_bytes(b[0..4].try_into().ok()?) as usize,
        xid: u32::from_le_bytes(b[4..8].try_into().ok()?),
        prev: u64::from_le_bytes(b[8..16].try_into().ok()?),
        info: b[16],
        rmid: b[17],
    })
}

/// A little-endian reader over a byte slice that fails instead of panicking.
struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take(&mut self, n: usize) -> Option<&[u8]> {
        let s = self.b.get(self.at..self.at.checked_add(n)?)?;
        self.at += n;
        Some(s)
    }
    fn u8(&mut self) -> Option<u8> {
        self.take(1).map(|s| s[0])
    }
    fn u16(&mut self) -> Option<u16> {
        self.take(2).map(|s| u16::from_le_bytes([s[0], s[1]]))
    }
    fn u32(&mut self) -> Option<u32> {
        self.take(4).map(|s| u32::from_le_bytes(s.try_into().expect("4 bytes")))
    }
    fn i64(&mut self) -> Option<i64> {
        self.take(8).map(|s| i64::from_le_bytes(s.try_into().expect("8 bytes")))
    }
    /// Skips a counted array: an int count, then `count` items of `size` bytes.
    fn skip_array(&mut self, size: usize) -> Option<()> {
        let n = self.u32()? as usize;
        self.take(n.checked_mul(size)?).map(|_| ())
    }
}

/// The event of a whole record (or of a prefix long enough to hold what is needed), starting at `lsn`.
fn parse_event(record: &[u8], lsn: Lsn) -> Option<WalEvent> {
    let h = parse_header(record)?;
    // The block headers say how long the main data is; it is the record's last part.
    let mut r = Reader { b: record, at: RECORD_HEADER_SIZE };
    let mut main_len = 0usize;
    while r.at < h.tot_len {
        match r.u8()? {
            XLR_BLOCK_ID_DATA_SHORT => {
                main_len = r.u8()? as usize;
                break;
            }
            XLR_BLOCK_ID_DATA_LONG => {
                main_len = r.u32()? as usize;
                break;
            }
            XLR_BLOCK_ID_ORIGIN => {
                r.u16()?;
            }
            XLR_BLOCK_ID_TOPLEVEL_XID => {
                r.u32()?;
            }
            id if id <= XLR_MAX_BLOCK_ID => {
                let fork_flags = r.u8()?;
                r.u16()?; // data_length
                if fork_flags & BKPBLOCK_HAS_IMAGE != 0 {
                    r.u16()?; // image length
                    r.u16()?; // hole offset
                    let bimg_info = r.u8()?;
                    if bimg_info & BKPIMAGE_HAS_HOLE != 0 && bimg_info & BKPIMAGE_COMPRESSED != 0 {
                        r.u16()?; // hole length
                    }
                }
                if fork_flags & BKPBLOCK_SAME_REL == 0 {
                    r.take(12)?; // RelFileNode
                }
                r.u32()?; // block number
            }
            _ => return None,
        }
    }
    let main_start = h.tot_len.checked_sub(main_len)?;
    let mut m = Reader { b: record, at: main_start };
    let op = h.info & !XLR_INFO_MASK;
    if h.rmid == RM_XLOG_ID && op == XLOG_RESTORE_POINT {
        let time = m.i64()?;
        let raw = m.take(RESTORE_POINT_NAME_LEN)?;
        let name = raw.split(|b| *b == 0).next().unwrap_or(&[]);
        return Some(WalEvent::RestorePoint {
            lsn,
            name: String::from_utf8_lossy(name).into_owned(),
            time: time.checked_add(PG_EPOCH_UNIX_MICROS)?,
        });
    }
    let kind = h.info & XLOG_XACT_OPMASK;
    let commit = matches!(kind, XLOG_XACT_COMMIT | XLOG_XACT_COMMIT_PREPARED);
    let time = m.i64()?.checked_add(PG_EPOCH_UNIX_MICROS)?;
    let mut xid = h.xid;
    if matches!(kind, XLOG_XACT_COMMIT_PREPARED | XLOG_XACT_ABORT_PREPARED) {
        // The prepared transaction's xid is in the record's two-phase part (ParseCommitRecord and
        // ParseAbortRecord of PostgreSQL 15 read the optional parts in this order).
        let xinfo = if h.info & XLOG_XACT_HAS_INFO != 0 { m.u32()? } else { 0 };
        if xinfo & XACT_XINFO_HAS_DBINFO != 0 {
            m.take(8)?;
        }
        if xinfo & XACT_XINFO_HAS_SUBXACTS != 0 {
            m.skip_array(4)?;
        }
        if xinfo & XACT_XINFO_HAS_RELFILENODES != 0 {
            m.skip_array(12)?;
        }
        if xinfo & XACT_XINFO_HAS_DROPPED_STATS != 0 {
            m.skip_array(12)?;
        }
        if commit && xinfo & XACT_XINFO_HAS_INVALS != 0 {
            m.skip_array(16)?;
        }
        if xinfo & XACT_XINFO_HAS_TWOPHASE == 0 {
            return None;
        }
        xid = m.u32()?;
    }
    Some(WalEvent::XactEnd { lsn, xid, time, commit })
}

/// PostgreSQL timestamp (microseconds since 2000-01-01) of a Unix time in microseconds.
pub fn unix_micros_to_pg(unix: i64) -> i64 {
    unix - PG_EPOCH_UNIX_MICROS
}

#[cfg(test)]
pub(crate) mod tests;
