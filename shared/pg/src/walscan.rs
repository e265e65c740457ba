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
pub(crate) mod tests {
    use super::*;

    pub(crate) const SEG: usize = 1 << 20;
    const MAGIC: u16 = crate::wal::XLOG_PAGE_MAGIC_PG15;

    /// Builds a segment the way PostgreSQL lays records out: page headers every 8 KiB, records
    /// MAXALIGNed in the stream of usable bytes, a record crossing a page boundary continued after the
    /// next page's header. The fuzz tests (`crate::fuzz_tests`) damage what it builds.
    pub(crate) struct Builder {
        pub(crate) seg: Vec<u8>,
        start: u64,
        /// Offset where the next record goes.
        pub(crate) at: usize,
        pub(crate) prev: u64,
    }

    impl Builder {
        pub(crate) fn new(segno: u64, head: &[u8]) -> Builder {
            let start = segno * SEG as u64;
            let mut b = Builder { seg: vec![0; SEG], start, at: 0, prev: 0 };
            // Long header: magic, info, tli, pageaddr, rem_len, sysid, seg_size, blcksz.
            let mut info = 0x0002u16;
            if !head.is_empty() {
                info |= XLP_FIRST_IS_CONTRECORD;
            }
            b.page_header(0, info, head.len() as u32);
            b.seg[24..32].copy_from_slice(&42u64.to_le_bytes());
            b.seg[32..36].copy_from_slice(&(SEG as u32).to_le_bytes());
            b.seg[36..40].copy_from_slice(&(WAL_PAGE_SIZE as u32).to_le_bytes());
            b.at = LONG_HEADER_SIZE;
            b.write_stream(head);
            b.at = maxalign(b.at);
            b
        }

        fn page_header(&mut self, offset: usize, info: u16, rem: u32) {
            self.seg[offset..offset + 2].copy_from_slice(&MAGIC.to_le_bytes());
            self.seg[offset + 2..offset + 4].copy_from_slice(&info.to_le_bytes());
            self.seg[offset + 4..offset + 8].copy_from_slice(&1u32.to_le_bytes());
            self.seg[offset + 8..offset + 16].copy_from_slice(&(self.start + offset as u64).to_le_bytes());
            self.seg[offset + 16..offset + 20].copy_from_slice(&rem.to_le_bytes());
        }

        /// Writes bytes of the record stream at `at`, adding page headers; returns what did not fit.
        fn write_stream(&mut self, bytes: &[u8]) -> Vec<u8> {
            let mut i = 0;
            while i < bytes.len() {
                if self.at.is_multiple_of(WAL_PAGE_SIZE) {
                    if self.at >= SEG {
                        return bytes[i..].to_vec();
                    }
                    self.page_header(self.at, XLP_FIRST_IS_CONTRECORD, (bytes.len() - i) as u32);
                    self.at += SHORT_HEADER_SIZE;
                }
                let page_end = (self.at / WAL_PAGE_SIZE + 1) * WAL_PAGE_SIZE;
                let n = (bytes.len() - i).min(page_end - self.at);
                self.seg[self.at..self.at + n].copy_from_slice(&bytes[i..i + n]);
                self.at += n;
                i += n;
            }
            Vec::new()
        }

        /// Appends a record; returns its LSN and the bytes that went past the segment's end.
        pub(crate) fn record(&mut self, rmid: u8, info: u8, xid: u32, main: &[u8]) -> (u64, Vec<u8>) {
            if self.at.is_multiple_of(WAL_PAGE_SIZE) && self.at < SEG {
                self.page_header(self.at, 0, 0);
                self.at += SHORT_HEADER_SIZE;
            }
            let lsn = self.start + self.at as u64;
            let mut rec = Vec::new();
            let body_len = if main.len() < 256 { 2 } else { 5 } + main.len();
            rec.extend_from_slice(&((RECORD_HEADER_SIZE + body_len) as u32).to_le_bytes());
            rec.extend_from_slice(&xid.to_le_bytes());
            rec.extend_from_slice(&self.prev.to_le_bytes());
            rec.extend_from_slice(&[info, rmid, 0, 0, 0, 0, 0, 0]);
            if main.len() < 256 {
                rec.extend_from_slice(&[XLR_BLOCK_ID_DATA_SHORT, main.len() as u8]);
            } else {
                rec.push(XLR_BLOCK_ID_DATA_LONG);
                rec.extend_from_slice(&(main.len() as u32).to_le_bytes());
            }
            rec.extend_from_slice(main);
            self.prev = lsn;
            let rest = self.write_stream(&rec);
            self.at = maxalign(self.at);
            (lsn, rest)
        }

        pub(crate) fn commit(&mut self, xid: u32, time: i64) -> (u64, Vec<u8>) {
            self.record(RM_XACT_ID, XLOG_XACT_COMMIT, xid, &unix_micros_to_pg(time).to_le_bytes())
        }

        /// A record of another resource manager, `len` bytes of main data.
        pub(crate) fn filler(&mut self, len: usize) -> (u64, Vec<u8>) {
            self.record(10, 0, 7, &vec![0xAB; len])
        }
    }

    #[test]
    fn finds_commits_aborts_restore_points_and_the_switch() {
        let mut b = Builder::new(3, &[]);
        let (c1, _) = b.commit(100, 1_700_000_000_000_000);
        b.filler(9000); // crosses a page
        let (a1, _) = b.record(RM_XACT_ID, XLOG_XACT_ABORT, 101, &unix_micros_to_pg(1_700_000_001_000_000).to_le_bytes());
        let mut rp = unix_micros_to_pg(1_700_000_002_000_000).to_le_bytes().to_vec();
        let mut name = [0u8; 64];
        name[..6].copy_from_slice(b"before");
        rp.extend_from_slice(&name);
        let (r1, _) = b.record(RM_XLOG_ID, XLOG_RESTORE_POINT, 0, &rp);
        // COMMIT PREPARED of xid 555, run by a session without an xid of its own.
        let mut cp = unix_micros_to_pg(1_700_000_003_000_000).to_le_bytes().to_vec();
        cp.extend_from_slice(&(XACT_XINFO_HAS_DBINFO | XACT_XINFO_HAS_INVALS | XACT_XINFO_HAS_TWOPHASE).to_le_bytes());
        cp.extend_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0]);
        cp.extend_from_slice(&2u32.to_le_bytes());
        cp.extend_from_slice(&[9; 32]);
        cp.extend_from_slice(&555u32.to_le_bytes());
        let (p1, _) = b.record(RM_XACT_ID, XLOG_XACT_COMMIT_PREPARED | XLOG_XACT_HAS_INFO, 0, &cp);
        let (s1, _) = b.record(RM_XLOG_ID, XLOG_SWITCH, 0, &[]);
        // Stale bytes after the switch must be ignored.
        b.commit(999, 1_800_000_000_000_000);

        let scan = scan_segment(&b.seg).unwrap();
        assert!(scan.switched);
        assert_eq!(scan.last_start, Lsn(s1));
        assert_eq!(
            scan.events,
            vec![
                WalEvent::XactEnd { lsn: Lsn(c1), xid: 100, time: 1_700_000_000_000_000, commit: true },
                WalEvent::XactEnd { lsn: Lsn(a1), xid: 101, time: 1_700_000_001_000_000, commit: false },
                WalEvent::RestorePoint { lsn: Lsn(r1), name: "before".into(), time: 1_700_000_002_000_000 },
                WalEvent::XactEnd { lsn: Lsn(p1), xid: 555, time: 1_700_000_003_000_000, commit: true },
            ]
        );
        assert!(scan.head.is_empty() && scan.tail.is_empty());
    }

    #[test]
    fn a_commit_split_across_segments_is_joined() {
        // Fill the first segment so that a commit straddles its end, at every alignment of the split
        // (inside the header, inside the time, inside the main data).
        for cut in [8usize, 16, 24, 32] {
            let mut b = Builder::new(5, &[]);
            while SEG - b.at > 3000 {
                b.filler(1000);
            }
            // One filler in the last page ends exactly `cut` bytes before the segment's end; its total length
            // is 24 + 2 (or 5 for long main data) + m.
            let room = SEG - cut - b.at;
            b.filler(if room - 26 < 256 { room - 26 } else { room - 29 });
            assert_eq!(b.at, SEG - cut, "cut {cut}");
            let (lsn, rest) = b.commit(4242, 1_700_000_000_123_456);
            assert!(!rest.is_empty());
            let first = scan_segment(&b.seg).unwrap();
            assert_eq!(first.tail_lsn, Lsn(lsn), "cut {cut}");
            assert!(!first.tail.is_empty());
            assert!(first.events.is_empty());

            let mut next = Builder::new(6, &rest);
            next.prev = lsn;
            let (c2, _) = next.commit(4243, 1_700_000_001_000_000);
            let second = scan_segment(&next.seg).unwrap();
            assert_eq!(second.head, rest);
            assert_eq!(second.events, vec![WalEvent::XactEnd { lsn: Lsn(c2), xid: 4243, time: 1_700_000_001_000_000, commit: true }]);
            assert_eq!(
                join_split_record(&first.tail, first.tail_lsn, &second.head),
                Some(WalEvent::XactEnd { lsn: Lsn(lsn), xid: 4242, time: 1_700_000_000_123_456, commit: true }),
                "cut {cut}"
            );
        }
    }

    #[test]
    fn stops_at_pages_of_another_segment() {
        let mut b = Builder::new(2, &[]);
        b.commit(1, 1);
        // A page of an older segment (recycled file): pageaddr does not match.
        let stale = 3 * WAL_PAGE_SIZE;
        b.seg[stale..stale + 2].copy_from_slice(&MAGIC.to_le_bytes());
        b.seg[stale + 8..stale + 16].copy_from_slice(&7u64.to_le_bytes());
        let scan = scan_segment(&b.seg).unwrap();
        assert_eq!(scan.events.len(), 1);
        assert!(!scan.switched);
    }

    #[test]
    fn refuses_what_is_not_a_segment() {
        assert_eq!(scan_segment(&[0; 100]), Err(ScanError::NoLongHeader));
        let b = Builder::new(1, &[]);
        assert!(matches!(scan_segment(&b.seg[..SEG / 2]), Err(ScanError::SizeMismatch(..))));
    }
}
