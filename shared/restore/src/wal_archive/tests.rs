use super::*;
use std::sync::Arc;
use strata_messages::{RestorePoint, WalRecord, WalSummary, WAL_RECORD_VERSION};
use strata_storage::Storage;

const SEG: u64 = 16 << 20;
const T0: i64 = 1_700_000_000_000_000;

fn seg(n: u64) -> WalSegment {
    WalSegment { timeline: 1, segno: n }
}

/// A commit record of `xid` at `time` (no blocks, short main data), as the scanner reads it.
fn commit_record(xid: u32, time: i64, prev: u64) -> Vec<u8> {
    let mut r = Vec::new();
    r.extend_from_slice(&34u32.to_le_bytes());
    r.extend_from_slice(&xid.to_le_bytes());
    r.extend_from_slice(&prev.to_le_bytes());
    r.extend_from_slice(&[0, 1, 0, 0, 0, 0, 0, 0]);
    r.extend_from_slice(&[255, 8]);
    r.extend_from_slice(&strata_pg::walscan::unix_micros_to_pg(time).to_le_bytes());
    r
}

/// Segments 1..=10 of timeline 1 but 6; segment n's transactions end at T0 + n seconds, xids
/// 100n..100n+9; a restore point in 5; a commit of xid 777 at T0 + 3.5 s split between 3 and 4.
async fn archive() -> (tempfile::TempDir, Repo) {
    let dir = tempfile::tempdir().unwrap();
    let repo = Repo::new("test", Arc::new(strata_storage::PosixStorage::open(dir.path()).unwrap()));
    let split = commit_record(777, T0 + 3_500_000, 3 * SEG + 100);
    for n in (1..=10u64).filter(|n| *n != 6) {
        let mut s = WalSummary {
            last_start: n * SEG + SEG - 4096,
            xact_ends: 10,
            first_time: T0 + n as i64 * 1_000_000,
            last_time: T0 + n as i64 * 1_000_000,
            xids: WalSummary::xid_runs((0..10).map(|i| 100 * n as u32 + i).collect()),
            ..Default::default()
        };
        if n == 3 {
            s.tail = split[..16].to_vec();
            s.tail_lsn = 4 * SEG - 16;
        }
        if n == 4 {
            s.head = split[16..].to_vec();
        }
        if n == 5 {
            s.restore_points.push(RestorePoint { name: "before".into(), time: T0 + 5_000_000, lsn: 5 * SEG + 64 });
        }
        let record = WalRecord {
            version: WAL_RECORD_VERSION,
            name: seg(n).name(SEG),
            size: SEG,
            hash: [0; 32],
            chunks: vec![],
            summary: Some(s),
        };
        repo.put_wal("main", &record).await.unwrap();
    }
    (dir, repo)
}

#[tokio::test]
async fn gaps_and_contiguous_runs() {
    let (_d, repo) = archive().await;
    let mut a = WalArchive::load(&repo, "main", SEG).await.unwrap();
    let h = TimelineHistory::first();
    let gaps = a.gaps(2).await.unwrap();
    assert_eq!(gaps, vec![(1, Gap { first_missing: seg(6), last_missing: seg(6), before: Some(seg(5)), after: Some(seg(7)) })]);
    assert!(a.gaps(7).await.unwrap().is_empty());
    assert_eq!(a.first_gap(&h, 2, 5), None);
    assert_eq!(a.first_gap(&h, 2, 9).map(|g| g.first_missing), Some(seg(6)));
    // Past the archive's end is missing too, with nothing after it.
    assert_eq!(a.first_gap(&h, 9, 11), Some(Gap { first_missing: seg(11), last_missing: seg(11), before: Some(seg(10)), after: None }));
    assert_eq!(a.contiguous_end(&h, 2), Some(seg(5)));
    assert_eq!(a.gap_after(&h, 2).map(|g| (g.before, g.first_missing, g.after)), Some((Some(seg(5)), seg(6), Some(seg(7)))));
    assert_eq!(a.gap_after(&h, 7), None);
    assert_eq!(a.last_time(&h, 2, 5).await.unwrap(), Some(T0 + 5_000_000));
}

#[tokio::test]
async fn a_backups_own_wal_is_checked_up_to_its_stop_even_past_the_archives_end() {
    let (_d, repo) = archive().await;
    let mut a = WalArchive::load(&repo, "main", SEG).await.unwrap();
    assert_eq!(a.backup_gap(&seg(2).name(SEG), &seg(5).name(SEG)).await.unwrap(), None);
    let g = a.backup_gap(&seg(9).name(SEG), &seg(12).name(SEG)).await.unwrap().unwrap();
    assert_eq!((g.before, g.first_missing, g.last_missing), (Some(seg(10)), seg(11), seg(11)));
}

#[tokio::test]
async fn a_segment_whose_record_or_pack_is_damaged_is_unreadable() {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(strata_storage::PosixStorage::open(dir.path()).unwrap());
    let repo = Repo::new("test", storage.clone());
    let chunk = |pack: u8, raw_len| strata_messages::ChunkRef { id: [pack; 32], pack: [pack; 16], offset: 0, sealed_len: 10, raw_len };
    let record = |n: u64, chunks: Vec<strata_messages::ChunkRef>, size| WalRecord {
        version: WAL_RECORD_VERSION,
        name: seg(n).name(SEG),
        size,
        hash: [0; 32],
        chunks,
        summary: None,
    };
    // Segment 1 in a pack that exists, 2 in one truncated before its chunk, 3 in a missing one; 4's
    // chunks do not add up to its size; 5's record is empty.
    storage.put(&pack_path(&[1; 16]), vec![0u8; 10].into()).await.unwrap();
    storage.put(&pack_path(&[2; 16]), vec![0u8; 9].into()).await.unwrap();
    repo.put_wal("main", &record(1, vec![chunk(1, 100)], 100)).await.unwrap();
    repo.put_wal("main", &record(2, vec![chunk(2, 100)], 100)).await.unwrap();
    repo.put_wal("main", &record(3, vec![chunk(1, 100), chunk(3, 100)], 200)).await.unwrap();
    repo.put_wal("main", &record(4, vec![chunk(1, 100)], 200)).await.unwrap();
    repo.put_wal("main", &record(5, vec![chunk(1, 100)], 100)).await.unwrap();
    storage.put(&strata_repo::wal_record_path("main", &seg(5).name(SEG)), Vec::new().into()).await.unwrap();
    let mut a = WalArchive::load(&repo, "main", SEG).await.unwrap();
    let h = TimelineHistory::first();
    assert_eq!(a.first_unreadable(&h, 1, 1).await.unwrap(), None);
    for (n, why) in [(2, "truncated"), (3, "missing"), (4, "100 bytes of chunks for a 200-byte file"), (5, "cannot be read")] {
        let (s, text) = a.first_unreadable(&h, n, 5).await.unwrap().unwrap_or_else(|| panic!("segment {n} is readable"));
        assert_eq!(s, seg(n));
        assert!(text.contains(why), "{n}: {text}");
    }
    assert_eq!(a.first_unreadable(&h, 1, 5).await.unwrap().map(|u| u.0), Some(seg(2)));
}

#[tokio::test]
async fn targets_are_found_where_their_record_ends() {
    let (_d, repo) = archive().await;
    let mut a = WalArchive::load(&repo, "main", SEG).await.unwrap();
    let h = TimelineHistory::first();
    let found = |s: Search| match s {
        Search::Found(l) => (l.segment, l.lsn, l.time),
        other => panic!("{other:?}"),
    };
    let want = Want::TimeAfter { time: T0 + 2_500_000, exclusive: false };
    assert_eq!(found(a.search(&h, 2, &want).await.unwrap()).0, seg(3));
    // The split commit at 3.5 s is the first after 3.2 s; it ends in segment 4.
    let want = Want::TimeAfter { time: T0 + 3_200_000, exclusive: false };
    assert_eq!(found(a.search(&h, 2, &want).await.unwrap()), (seg(4), Some(Lsn(4 * SEG - 16)), Some(T0 + 3_500_000)));
    let want = Want::TimeAfter { time: T0 + 4_000_000, exclusive: false };
    assert_eq!(found(a.search(&h, 2, &want).await.unwrap()).0, seg(5));
    let want = Want::TimeAfter { time: T0 + 4_000_000, exclusive: true };
    assert_eq!(found(a.search(&h, 2, &want).await.unwrap()).0, seg(4));
    assert_eq!(found(a.search(&h, 2, &Want::Xid(777)).await.unwrap()).0, seg(4));
    assert_eq!(found(a.search(&h, 2, &Want::Xid(305)).await.unwrap()).0, seg(3));
    let rp = found(a.search(&h, 2, &Want::RestorePoint("before")).await.unwrap());
    assert_eq!(rp, (seg(5), Some(Lsn(5 * SEG + 64)), Some(T0 + 5_000_000)));
    // Behind the missing segment 6: the gap is the answer, not the later segments.
    let want = Want::TimeAfter { time: T0 + 8_500_000, exclusive: false };
    match a.search(&h, 2, &want).await.unwrap() {
        Search::Missing(g) => assert_eq!((g.before, g.first_missing, g.after), (Some(seg(5)), seg(6), Some(seg(7)))),
        other => panic!("{other:?}"),
    }
    // Past the archive's end.
    let want = Want::TimeAfter { time: T0 + 60_000_000, exclusive: false };
    assert!(matches!(a.search(&h, 7, &want).await.unwrap(), Search::End(Some(s)) if s == seg(10)));
    // The split record precedes a search that starts in segment 4 (a backup starting there).
    assert!(!matches!(a.search(&h, 4, &Want::Xid(777)).await.unwrap(), Search::Found(_)));
}
