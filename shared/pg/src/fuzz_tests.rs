//! Every parser of this crate against random and damaged input: WAL segments and the summaries' split
//! records (`walscan`), long page headers and file names (`wal`), history files (`timeline`), data page
//! checksums (`page`), LSNs, `PG_VERSION` and data directory paths. Each returns a value or an error
//! (`None`), never panics, and what it finds lies in its input.
//!
//! A module of the crate rather than `tests/fuzz.rs` because valid segments come from `walscan`'s test
//! builder. Cases per target: `PROPTEST_CASES` (see `strata-fuzzkit`).

use crate::page::{self, PageCheck};
use crate::timeline::TimelineHistory;
use crate::wal::{self, WalSegment};
use crate::walscan::tests::{Builder, SEG};
use crate::walscan::{join_split_record, scan_segment, unix_micros_to_pg, SegmentScan, SPLIT_KEEP};
use crate::{datadir, version, Lsn, PAGE_SIZE};
use strata_fuzzkit::proptest::prelude::*;
use strata_fuzzkit::{bytes, check, fuzz, mutated, mutated_any};

const RM_XLOG: u8 = 0;
const RM_XACT: u8 = 1;

/// A segment full of the records a scan looks at (commits, aborts, restore points, a prepared commit,
/// records crossing pages), with a commit crossing its end; and the next segment, which starts with that
/// commit's continuation and ends with a WAL switch.
fn valid_segments() -> (Vec<u8>, Vec<u8>) {
    let mut b = Builder::new(3, &[]);
    let mut xid = 1000u32;
    let time = 1_796_000_000_000_000i64;
    while SEG - b.at > 10_000 {
        xid += 1;
        match xid % 7 {
            0 => b.record(RM_XACT, 0x20, xid, &unix_micros_to_pg(time + xid as i64).to_le_bytes()),
            1 => {
                let mut rp = unix_micros_to_pg(time).to_le_bytes().to_vec();
                let mut name = [0u8; 64];
                name[..9].copy_from_slice(b"point \xC3\xA9!");
                rp.extend_from_slice(&name);
                b.record(RM_XLOG, 0x70, 0, &rp)
            }
            2 => {
                // COMMIT PREPARED with db info, invalidations and the two-phase xid.
                let mut cp = unix_micros_to_pg(time).to_le_bytes().to_vec();
                cp.extend_from_slice(&(1u32 | 8 | 16).to_le_bytes());
                cp.extend_from_slice(&[1, 0, 0, 0, 2, 0, 0, 0]);
                cp.extend_from_slice(&1u32.to_le_bytes());
                cp.extend_from_slice(&[9; 16]);
                cp.extend_from_slice(&xid.wrapping_mul(3).to_le_bytes());
                b.record(RM_XACT, 0x30 | 0x80, 0, &cp)
            }
            3 if xid % 50 == 3 => b.filler(9000),
            _ => b.commit(xid, time + xid as i64),
        };
    }
    // Commits up to the end, the last one crossing it.
    let mut rest = Vec::new();
    while rest.is_empty() {
        xid += 1;
        rest = b.commit(xid, time).1;
    }
    let mut next = Builder::new(4, &rest);
    next.prev = 3 * SEG as u64 + (SEG - 8) as u64; // any; the continuation is not checked against it
    for x in 0..50 {
        next.commit(x, time);
    }
    next.record(RM_XLOG, 0x40, 0, &[]);
    (b.seg, next.seg)
}

/// What a scan found lies in the segment and is bounded by it.
fn check_scan(data: &[u8], scan: &SegmentScan) -> Result<(), TestCaseError> {
    let start = wal::parse_long_header(data).map(|h| h.page_addr.0).unwrap_or(0);
    let end = start.saturating_add(data.len() as u64);
    check!(scan.events.len() * 24 <= data.len(), "{} events in {} bytes", scan.events.len(), data.len());
    for e in &scan.events {
        check!((start..end).contains(&e.lsn().0), "event at {} outside the segment", e.lsn());
        let _ = (e.time(), format!("{e:?}"));
    }
    check!(!scan.last_start.is_valid() || (start..end).contains(&scan.last_start.0), "last record outside the segment");
    check!(scan.head.len() <= SPLIT_KEEP && scan.tail.len() <= SPLIT_KEEP, "kept more than {SPLIT_KEEP} bytes of a split record");
    Ok(())
}

fn scan_and_check(data: &[u8]) -> Result<Option<SegmentScan>, TestCaseError> {
    match scan_segment(data) {
        Ok(scan) => {
            check_scan(data, &scan)?;
            Ok(Some(scan))
        }
        Err(e) => {
            check!(!e.to_string().is_empty(), "empty error");
            Ok(None)
        }
    }
}

#[test]
fn valid_segments_scan_to_their_events() {
    let (first, second) = valid_segments();
    let a = scan_segment(&first).unwrap();
    let b = scan_segment(&second).unwrap();
    assert!(a.events.len() > 10_000 && !a.tail.is_empty() && !a.switched, "{} events, tail {:?}, switched {}", a.events.len(), a.tail, a.switched);
    assert!(b.switched && b.events.len() == 50 && !b.head.is_empty());
    assert!(join_split_record(&a.tail, a.tail_lsn, &b.head).is_some());
}

#[test]
fn fuzz_walscan_mutated() {
    let (first, second) = valid_segments();
    let next_head = scan_segment(&second).unwrap().head;
    fuzz("pg/walscan-mutated", 96, mutated_any(vec![first, second]), |data| {
        if let Some(scan) = scan_and_check(&data)? {
            let _ = join_split_record(&scan.tail, scan.tail_lsn, &next_head);
        }
        Ok(())
    });
}

/// A long header with any segment size, page address, flags and remaining length, over random bytes:
/// the fields a scan trusts before it reads a record.
#[test]
fn fuzz_walscan_random_header() {
    let seg_size = prop_oneof![Just(SEG as u32), 0..20_000u32, any::<u32>().prop_map(|s| s % (3 << 20))];
    let page_addr = prop_oneof![Just(3 * SEG as u64), any::<u64>(), Just(u64::MAX - 8191), Just(u64::MAX - (SEG as u64 - 1))];
    let strategy = (seg_size, page_addr, any::<u16>(), any::<u32>(), bytes(3000), any::<bool>());
    fuzz("pg/walscan-random-header", 256, strategy, |(seg_size, page_addr, info, rem, body, repeat)| {
        let mut data = vec![0u8; seg_size as usize];
        let header = long_header(seg_size, page_addr, info | wal::XLP_LONG_HEADER, rem);
        let n = header.len().min(data.len());
        data[..n].copy_from_slice(&header[..n]);
        if !body.is_empty() {
            // The body right after the header, and (optionally) again on every page.
            let mut at = n;
            while at < data.len() {
                let m = body.len().min(data.len() - at);
                data[at..at + m].copy_from_slice(&body[..m]);
                if !repeat {
                    break;
                }
                at = (at / 8192 + 1) * 8192;
            }
        }
        scan_and_check(&data)?;
        Ok(())
    });
}

fn long_header(seg_size: u32, page_addr: u64, info: u16, rem: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(40);
    h.extend_from_slice(&wal::XLOG_PAGE_MAGIC_PG15.to_le_bytes());
    h.extend_from_slice(&info.to_le_bytes());
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(&page_addr.to_le_bytes());
    h.extend_from_slice(&rem.to_le_bytes());
    h.extend_from_slice(&[0; 4]);
    h.extend_from_slice(&42u64.to_le_bytes());
    h.extend_from_slice(&seg_size.to_le_bytes());
    h.extend_from_slice(&8192u32.to_le_bytes());
    h
}

#[test]
fn fuzz_walscan_random_bytes() {
    fuzz("pg/walscan-random", 512, bytes(200), |data| {
        scan_and_check(&data)?;
        if let Some(h) = wal::parse_long_header(&data) {
            if let Some(seg) = h.segment() {
                let _ = seg.name(h.seg_size as u64);
            }
            let _ = wal::magic_to_major_version(h.magic);
        }
        Ok(())
    });
}

/// The split records kept in WAL summaries come back from the repository: any tail and head, joined.
#[test]
fn fuzz_join_split_record() {
    let (first, second) = valid_segments();
    let (a, b) = (scan_segment(&first).unwrap(), scan_segment(&second).unwrap());
    let strategy = prop_oneof![
        (bytes(200), bytes(200)),
        (mutated(a.tail.clone()), Just(b.head.clone())),
        (Just(a.tail.clone()), mutated(b.head.clone())),
    ];
    fuzz("pg/join-split-record", 512, (strategy, any::<u64>()), |((tail, head), lsn)| {
        if let Some(e) = join_split_record(&tail, Lsn(lsn), &head) {
            check!(e.lsn() == Lsn(lsn), "joined event at another position");
        }
        Ok(())
    });
}

const HISTORY: &str = "1\t0/5000A28\tbefore 2026-01-01 00:00:00+00\n\n# comment\n2\t0/7000000\tno recovery target specified\n";

fn check_history(timeline: u32, text: &str) -> Result<(), TestCaseError> {
    match TimelineHistory::parse(timeline, text) {
        Ok(h) => {
            check!(h.timeline() == timeline, "history of {} parsed as of {}", timeline, h.timeline());
            check!(h.spans.len() <= text.lines().count() + 1, "more spans than lines");
            for w in h.spans.windows(2) {
                check!(w[0].timeline < w[1].timeline && w[0].end == Some(w[1].begin), "spans out of order: {:?}", h.spans);
            }
            for s in &h.spans {
                let _ = (h.span(s.timeline), h.contains(s.timeline, s.begin));
            }
            for segno in [0, 1, 5, 7, u64::MAX] {
                let _ = h.segment(segno, 16 << 20);
            }
        }
        Err(e) => check!(!e.to_string().is_empty(), "empty error"),
    }
    Ok(())
}

#[test]
fn fuzz_timeline_history_mutated() {
    fuzz("pg/history-mutated", 512, mutated(HISTORY.as_bytes().to_vec()), |b| check_history(3, &String::from_utf8_lossy(&b)));
}

#[test]
fn fuzz_timeline_history_random() {
    fuzz("pg/history-random", 512, (bytes(200), any::<u32>(), any::<String>()), |(b, timeline, text)| {
        check_history(timeline, &String::from_utf8_lossy(&b))?;
        check_history(timeline, &text)
    });
}

/// An initialised page with rows and its checksum for block 5.
fn valid_page() -> Vec<u8> {
    let mut p = vec![0u8; PAGE_SIZE];
    p[0..4].copy_from_slice(&0x16u32.to_le_bytes());
    p[4..8].copy_from_slice(&0xB374_D848u32.to_le_bytes());
    p[12..14].copy_from_slice(&64u16.to_le_bytes());
    p[14..16].copy_from_slice(&7000u16.to_le_bytes());
    for (i, b) in p[7000..].iter_mut().enumerate() {
        *b = (i * 31 % 251) as u8;
    }
    let sum = page::checksum(&p, 5);
    p[8..10].copy_from_slice(&sum.to_le_bytes());
    p
}

#[test]
fn fuzz_page_checksum() {
    let strategy = (prop_oneof![mutated(valid_page()), bytes(PAGE_SIZE)], prop_oneof![Just(5u32), any::<u32>()]);
    fuzz("pg/page-checksum", 256, strategy, |(mut p, blkno)| {
        // Pages are whole 8 KiB blocks by the callers' contract (a shorter one is a caller bug).
        p.resize(PAGE_SIZE, 0);
        match page::verify(&p, blkno) {
            PageCheck::Valid => check!(page::checksum(&p, blkno) == page::stored_checksum(&p), "valid without a matching checksum"),
            PageCheck::New => check!(page::is_all_zero(&p), "new but not all zero"),
            PageCheck::Mismatch { stored, .. } => check!(stored == page::stored_checksum(&p), "mismatch names another stored checksum"),
        }
        let _ = (page::page_lsn(&p), page::is_new(&p), page::block_number(blkno, blkno));
        Ok(())
    });
}

/// WAL file names, LSNs, `PG_VERSION` contents and data directory paths: any text.
#[test]
fn fuzz_names() {
    let valid = vec![
        b"000000010000000A000000FF".to_vec(),
        b"000000010000000A000000FF.partial".to_vec(),
        b"0000000A.history".to_vec(),
        b"000000010000000A000000FF.00000028.backup".to_vec(),
        b"16/B374D848".to_vec(),
        b"15\n".to_vec(),
        b"base/16384/2619_fsm.12".to_vec(),
        b"pg_tblspc/16385/PG_15_202209061/16384/t3_16400_init".to_vec(),
    ];
    let text = prop_oneof![mutated_any(valid).prop_map(|b| String::from_utf8_lossy(&b).into_owned()), any::<String>()];
    let seg_size = prop_oneof![Just(16u64 << 20), Just(1 << 20), Just(1 << 30), any::<u64>()];
    fuzz("pg/names", 512, (text, seg_size), |(s, seg_size)| {
        let _ = wal::classify_wal_file(&s);
        if let Some(seg) = WalSegment::parse(&s, seg_size) {
            check!(seg.name(seg_size) == s, "{s:?} parsed as {seg:?}, named {}", seg.name(seg_size));
            let _ = (seg.next(), seg.start_lsn(seg_size));
        }
        if let Ok(lsn) = s.parse::<Lsn>() {
            check!(lsn.to_string().parse::<Lsn>() == Ok(lsn), "LSN {lsn} does not round-trip");
        }
        let _ = version::major_from_pg_version_file(&s);
        let name = s.rsplit('/').next().unwrap_or_default();
        let _ = (datadir::parse_relation_file_name(name), datadir::is_temp_relation_file_name(name), datadir::init_fork_base(name));
        let path = std::path::Path::new(&s);
        let _ = (datadir::classify(path, false), datadir::classify(path, true), datadir::is_database_dir(path));
        Ok(())
    });
}

/// Found by `fuzz_walscan_random_header`: a header claiming a segment of 40 bytes made the scan read a
/// record header past the end (index out of range), and a page address near the end of the WAL made it
/// overflow computing a record's position. Both are refused as not a segment start.
#[test]
fn scan_refuses_a_header_no_segment_has() {
    for (seg_size, page_addr) in [(40u32, 3 * SEG as u64), (SEG as u32, u64::MAX - 100), (3 << 19, 0), (SEG as u32, 4096)] {
        let mut data = vec![0u8; seg_size as usize];
        data[..40].copy_from_slice(&long_header(seg_size, page_addr, wal::XLP_LONG_HEADER, 0));
        // A commit right after the header, so that a scan that accepted the header would read a record.
        if let Some(len) = data.get_mut(40..44) {
            len.copy_from_slice(&34u32.to_le_bytes());
        }
        assert!(scan_segment(&data).is_err(), "segment size {seg_size} at {page_addr:#x} accepted");
    }
}

/// The head of pg_control (delta restore reads it from the directory it is about to rewrite).
#[test]
fn fuzz_control_file() {
    let mut valid = vec![0u8; crate::control::CONTROL_FILE_SIZE];
    valid[..8].copy_from_slice(&7_300_000_000_000_000_000u64.to_le_bytes());
    valid[8..12].copy_from_slice(&crate::control::PG15_CONTROL_VERSION.to_le_bytes());
    valid[12..16].copy_from_slice(&202_209_061u32.to_le_bytes());
    let strategy = (prop_oneof![mutated(valid), bytes(2 * crate::control::CONTROL_FILE_SIZE)], prop_oneof![Just(15u32), any::<u32>()]);
    fuzz("pg/control", 256, strategy, |(b, major)| {
        if let Ok(head) = crate::control::parse_head(&b, major) {
            check!(b.len() == crate::control::CONTROL_FILE_SIZE, "a pg_control of {} bytes was read", b.len());
            check!(head.system_id.to_le_bytes() == b[..8], "the system id is not the first 8 bytes");
        }
        Ok(())
    });
}
