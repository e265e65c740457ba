use super::*;

const MB: u64 = 1024 * 1024;

/// First 40 bytes of segment 000000010000000000000001 of a PostgreSQL 15.x cluster made by `initdb -k`; system
/// id 7711650395882422118, 16 MiB segments (see tests/fixtures/README.md).
const WAL_HEAD: &[u8] =
    include_bytes!("../../tests/fixtures/wal_000000010000000000000001_head.bin");

#[test]
fn names_with_16_mib_segments() {
    let seg = 16 * MB;
    let s = WalSegment::containing(1, Lsn(0x300_0028), seg);
    assert_eq!(
        s,
        WalSegment {
            timeline: 1,
            segno: 3
        }
    );
    assert_eq!(s.name(seg), "000000010000000000000003");
    assert_eq!(s.start_lsn(seg), Lsn(0x300_0000));
    // 256 segments per log id: segment 0xFF is the last of log 0, 0x100 the first of log 1.
    assert_eq!(
        WalSegment {
            timeline: 1,
            segno: 0xFF
        }
        .name(seg),
        "0000000100000000000000FF"
    );
    assert_eq!(
        WalSegment {
            timeline: 1,
            segno: 0xFF
        }
        .next()
        .name(seg),
        "000000010000000100000000"
    );
    let lsn: Lsn = "16/B374D848".parse().unwrap();
    let s = WalSegment::containing(0x2A, lsn, seg);
    assert_eq!(s.name(seg), "0000002A00000016000000B3");
    assert_eq!(WalSegment::parse("0000002A00000016000000B3", seg), Some(s));
}

#[test]
fn names_with_64_mib_segments() {
    let seg = 64 * MB;
    // 64 segments per log id, so the segment part only goes up to 0x3F.
    let lsn: Lsn = "1/C4000000".parse().unwrap();
    let s = WalSegment::containing(3, lsn, seg);
    assert_eq!(s.segno, 64 + 0x31);
    assert_eq!(s.name(seg), "000000030000000100000031");
    assert_eq!(WalSegment::parse("000000030000000100000031", seg), Some(s));
    assert_eq!(
        WalSegment {
            timeline: 1,
            segno: 63
        }
        .next()
        .name(seg),
        "000000010000000100000000"
    );
    assert_eq!(s.start_lsn(seg), lsn);
    // Valid with 16 MiB segments, impossible with 64 MiB ones.
    assert_eq!(WalSegment::parse("000000010000000000000040", seg), None);
    assert!(WalSegment::parse("000000010000000000000040", 16 * MB).is_some());
}

#[test]
fn parse_round_trips_for_every_segment_size() {
    let mut size = MIN_SEG_SIZE;
    while size <= MAX_SEG_SIZE {
        for segno in [
            0,
            1,
            7,
            0x1_0000 / (size / MB).max(1),
            123_456 / (size / MB).max(1),
        ] {
            let s = WalSegment { timeline: 7, segno };
            assert_eq!(
                WalSegment::parse(&s.name(size), size),
                Some(s),
                "size {size} segno {segno}"
            );
            assert_eq!(WalSegment::containing(7, s.start_lsn(size), size), s);
        }
        size *= 2;
    }
}

#[test]
fn parse_rejects_what_postgresql_would_not_write() {
    let seg = 16 * MB;
    for bad in [
        "",
        "00000001000000000000003",
        "0000000100000000000000030",
        "00000001000000000000000a",
        "00000001000000000000000G",
        "000000000000000000000003",
        "000000010000000000000100",
        "000000010000000000000003.partial",
        "+00000010000000000000003",
        "0000000100000000000000é",
    ] {
        assert_eq!(WalSegment::parse(bad, seg), None, "{bad:?}");
    }
    assert_eq!(WalSegment::parse("000000010000000000000003", 0), None);
    assert_eq!(WalSegment::parse("000000010000000000000003", 3 * MB), None);
}

#[test]
fn valid_segment_sizes() {
    assert!(is_valid_seg_size(MB));
    assert!(is_valid_seg_size(16 * MB));
    assert!(is_valid_seg_size(1024 * MB));
    assert!(!is_valid_seg_size(0));
    assert!(!is_valid_seg_size(MB / 2));
    assert!(!is_valid_seg_size(2048 * MB));
    assert!(!is_valid_seg_size(24 * MB));
}

#[test]
#[should_panic(expected = "invalid wal segment size")]
fn name_panics_on_an_invalid_size() {
    WalSegment {
        timeline: 1,
        segno: 1,
    }
    .name(0);
}

#[test]
fn classifies_archive_files() {
    use WalFileKind::*;
    let cases = [
        ("000000010000000000000003", Some(Segment)),
        ("000000010000000A000000FF", Some(Segment)),
        ("000000010000000000000003.partial", Some(Partial)),
        ("00000002.history", Some(History)),
        (
            "000000010000000000000003.00000028.backup",
            Some(BackupHistory),
        ),
        ("00000001000000000000000a", None),
        ("00000001000000000000003", None),
        ("000000010000000000000003.partial.tmp", None),
        ("000000010000000000000003.gz", None),
        ("00000002.HISTORY", None),
        ("0000002.history", None),
        ("0000000g.history", None),
        ("000000010000000000000003.28.backup", None),
        ("000000010000000000000003.0000002X.backup", None),
        ("000000010000000000000003.00000028.backups", None),
        ("archive_status", None),
        ("", None),
        ("é00000010000000000000003", None),
        // 32 bytes with a two-byte character across offset 24: must not panic.
        ("00000001000000000000000é.partia", None),
    ];
    for (name, want) in cases {
        assert_eq!(classify_wal_file(name), want, "{name:?}");
    }
    assert_eq!(history_file_name(2), "00000002.history");
    assert_eq!(classify_wal_file(&history_file_name(0x1F)), Some(History));
}

#[test]
fn parses_the_long_header_of_a_real_segment() {
    let h = parse_long_header(WAL_HEAD).expect("fixture has a long header");
    assert_eq!(h.magic, XLOG_PAGE_MAGIC_PG15);
    assert_eq!(magic_to_major_version(h.magic), Some(15));
    assert_eq!(h.timeline, 1);
    assert_eq!(h.page_addr, Lsn(0x100_0000));
    assert_eq!(h.system_id, 7711650395882422118);
    assert_eq!(u64::from(h.seg_size), crate::DEFAULT_WAL_SEGMENT_SIZE);
    assert_eq!(h.block_size as usize, crate::WAL_PAGE_SIZE);
    let seg = h.segment().expect("segment start");
    assert_eq!(seg.name(u64::from(h.seg_size)), "000000010000000000000001");
}

#[test]
fn long_header_needs_40_bytes_and_the_flag() {
    assert_eq!(parse_long_header(&WAL_HEAD[..39]), None);
    assert_eq!(parse_long_header(&[]), None);
    let mut short = WAL_HEAD.to_vec();
    short[2] &= !(XLP_LONG_HEADER as u8);
    assert_eq!(parse_long_header(&short), None);
    let mut moved = parse_long_header(WAL_HEAD).unwrap();
    moved.page_addr = Lsn(0x100_2000);
    assert_eq!(
        moved.segment(),
        None,
        "a page inside a segment is not a segment start"
    );
    moved.page_addr = Lsn(0x100_0000);
    moved.seg_size = 3;
    assert_eq!(moved.segment(), None);
}

/// Segment 3 of timeline `tli` of a cluster with 1 MiB segments: the fixture's long header moved there, a
/// second page of the same timeline, and stale pages (zeros) after it.
fn segment_3(tli: u32) -> (Vec<u8>, SegmentOwner) {
    let mut seg = vec![0u8; MB as usize];
    seg[..LONG_HEADER_SIZE].copy_from_slice(WAL_HEAD);
    seg[4..8].copy_from_slice(&tli.to_le_bytes());
    seg[8..16].copy_from_slice(&(3 * MB).to_le_bytes());
    seg[32..36].copy_from_slice(&(MB as u32).to_le_bytes());
    let page = crate::WAL_PAGE_SIZE;
    seg[page..page + 2].copy_from_slice(&XLOG_PAGE_MAGIC_PG15.to_le_bytes());
    seg[page + 4..page + 8].copy_from_slice(&tli.to_le_bytes());
    seg[page + 8..page + 16].copy_from_slice(&(3 * MB + page as u64).to_le_bytes());
    (seg, SegmentOwner { system_id: 7711650395882422118, pg_major: 15, seg_size: MB })
}

#[test]
fn a_segment_is_checked_against_its_name_and_stanza() {
    let (seg, owner) = segment_3(1);
    assert_eq!(check_segment("000000010000000000000003", &seg, &owner), Ok(WalSegment { timeline: 1, segno: 3 }));
    assert!(check_segment("000000010000000000000003.partial", &seg, &owner).is_ok());
    // The first segment of a later timeline begins with its parent's pages.
    assert!(check_segment("000000020000000000000003", &seg, &owner).is_ok());
    // Another segment's name, plain or partial.
    let addr = SegmentMismatch::PageAddr { found: Lsn(3 * MB), want: Lsn(4 * MB) };
    assert_eq!(check_segment("000000010000000000000004", &seg, &owner), Err(addr.clone()));
    assert_eq!(check_segment("000000010000000000000004.partial", &seg, &owner), Err(addr));
    // A later timeline's segment under an earlier timeline's name, found on any page.
    let (later, _) = segment_3(2);
    assert!(matches!(check_segment("000000010000000000000003", &later, &owner), Err(SegmentMismatch::Timeline { found: 2, want: 1, .. })));
    let mut second_page_later = seg.clone();
    second_page_later[crate::WAL_PAGE_SIZE + 4] = 2;
    assert_eq!(
        check_segment("000000010000000000000003", &second_page_later, &owner),
        Err(SegmentMismatch::Timeline { lsn: Lsn(3 * MB + crate::WAL_PAGE_SIZE as u64), found: 2, want: 1 })
    );
    // The stanza's cluster.
    let other = SegmentOwner { system_id: 1, ..owner };
    assert!(matches!(check_segment("000000010000000000000003", &seg, &other), Err(SegmentMismatch::SystemId { .. })));
    let pg16 = SegmentOwner { pg_major: 16, ..owner };
    assert!(matches!(check_segment("000000010000000000000003", &seg, &pg16), Err(SegmentMismatch::Version { .. })));
    let mut size = seg.clone();
    size[32..36].copy_from_slice(&(2 * MB as u32).to_le_bytes());
    assert!(matches!(check_segment("000000010000000000000003", &size, &owner), Err(SegmentMismatch::SegSize { .. })));
    assert!(matches!(check_segment("000000010000000000000003", &seg[..4096], &owner), Err(SegmentMismatch::Size { .. })));
    assert_eq!(check_segment("000000010000000000000003", &vec![0; MB as usize], &owner), Err(SegmentMismatch::NoLongHeader));
    // 4096 segments of 1 MiB per log id: 0x1000 is past them.
    assert_eq!(check_segment("000000010000000000001000", &seg, &owner), Err(SegmentMismatch::Name(MB)));
}

#[test]
fn names_from_outside_are_wal_file_names_or_refused() {
    assert_eq!(wal_file_kind("00000002.history"), Ok(WalFileKind::History));
    for bad in ["../../../../../../../../etc/passwd", "000000010000000000000003\n", "00000001000000000000/003", ""] {
        let e = wal_file_kind(bad).unwrap_err();
        let text = e.to_string();
        assert!(!text.contains('\n') && text.contains("is not a WAL file name"), "{text}");
    }
}

#[test]
fn magic_values() {
    assert_eq!(magic_to_major_version(0xD106), Some(13));
    assert_eq!(magic_to_major_version(0xD10D), Some(14));
    assert_eq!(magic_to_major_version(0xD110), Some(15));
    assert_eq!(magic_to_major_version(0xD113), Some(16));
    assert_eq!(magic_to_major_version(0xD116), Some(17));
    assert_eq!(magic_to_major_version(0xD111), None);
    assert_eq!(magic_to_major_version(0), None);
}
