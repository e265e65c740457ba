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
