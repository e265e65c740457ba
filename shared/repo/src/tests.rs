use super::*;
use strata_messages::{BackupSummary, BackupType, FORMAT_VERSION};
use strata_storage::PosixStorage;

fn repo() -> (tempfile::TempDir, Repo) {
    let dir = tempfile::tempdir().unwrap();
    let storage = Arc::new(PosixStorage::open(dir.path()).unwrap());
    (dir, Repo::new("test", storage))
}

fn stanza_info() -> StanzaInfo {
    StanzaInfo {
        stanza: "main".into(),
        system_id: 7,
        pg_version_num: 150004,
        pg_major: 15,
        wal_segment_size: 16 << 20,
        created: 0,
    }
}

#[tokio::test]
async fn stanza_create_is_idempotent_and_refuses_another_cluster() {
    let (_d, r) = repo();
    assert!(matches!(r.stanza("main").await, Err(RepoError::NoStanza { .. })));
    assert!(r.create_stanza(&stanza_info()).await.unwrap());
    assert!(!r.create_stanza(&stanza_info()).await.unwrap());
    let other = StanzaInfo { pg_major: 16, ..stanza_info() };
    let err = r.create_stanza(&other).await.unwrap_err().to_string();
    assert!(err.contains("PostgreSQL 15") && err.contains("PostgreSQL 16"), "{err}");
}

#[tokio::test]
async fn packs_round_trip_and_index_refreshes() {
    let (_d, r) = repo();
    let sealer = Sealer::default();
    let plain = b"hello pack".repeat(1000);
    let id = strata_seal::chunk_id(&plain);
    let mut pack = PackBuilder::new();
    pack.add(id, plain.len() as u32, &sealer.seal(&plain, 1));
    let refs = r.write_pack(pack).await.unwrap();
    assert_eq!(r.read_chunk(&sealer, &refs[0]).await.unwrap(), plain);

    let mut index = ChunkIndex::default();
    index.refresh(&r).await.unwrap();
    assert_eq!(index.get(&id), Some(&refs[0]));

    // A truncated pack is reported, not misread.
    let (pid, size) = r.list_packs().await.unwrap()[0];
    let path = _d.path().join(pack_path(&pid));
    let f = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
    f.set_len(size - 3).unwrap();
    assert!(matches!(r.pack_index(&pid, size - 3).await, Err(RepoError::CorruptPack { .. })));
}

#[tokio::test]
async fn wal_is_never_overwritten() {
    let (_d, r) = repo();
    let rec = WalRecord {
        version: strata_messages::WAL_RECORD_VERSION,
        name: "000000010000000000000001".into(),
        size: 16,
        hash: [1; 32],
        chunks: vec![],
        summary: None,
    };
    assert_eq!(r.put_wal("main", &rec).await.unwrap(), WalPut::Stored);
    assert_eq!(r.put_wal("main", &rec).await.unwrap(), WalPut::AlreadyArchived);
    let other = WalRecord { hash: [2; 32], ..rec.clone() };
    assert!(matches!(r.put_wal("main", &other).await, Err(RepoError::WalConflict { .. })));
    assert_eq!(r.wal("main", &rec.name).await.unwrap().unwrap().hash, [1; 32]);
    assert_eq!(r.wal_names("main").await.unwrap(), vec![rec.name.clone()]);
}

#[tokio::test]
async fn a_streamed_partial_only_grows_and_goes_once_its_segment_is_archived() {
    let (_d, r) = repo();
    let partial = |name: &str, size: u64| WalRecord {
        version: strata_messages::WAL_RECORD_VERSION,
        name: name.into(),
        size,
        hash: [size as u8; 32],
        chunks: vec![],
        summary: None,
    };
    let (one, two) = ("000000010000000000000001", "000000010000000000000002");
    assert_eq!(r.put_wal_streamed("main", &partial(one, 100)).await.unwrap(), StreamedPut::Stored);
    assert_eq!(r.put_wal_streamed("main", &partial(one, 300)).await.unwrap(), StreamedPut::Stored);
    // A restarted streamer's shorter partial does not replace the longer one.
    assert_eq!(r.put_wal_streamed("main", &partial(one, 200)).await.unwrap(), StreamedPut::KeptLonger);
    assert_eq!(r.wal_streamed("main", one).await.unwrap().unwrap().size, 300);
    // Partials live beside the archive, not in it.
    assert!(r.wal_names("main").await.unwrap().is_empty());
    assert_eq!(r.wal_streamed_newest("main").await.unwrap().unwrap().0.name, one);

    // The next segment's partial removes the previous one only once that segment is archived whole.
    assert_eq!(r.put_wal_streamed("main", &partial(two, 10)).await.unwrap(), StreamedPut::Stored);
    assert_eq!(r.wal_streamed_names("main").await.unwrap(), vec![one.to_string(), two.to_string()]);
    r.put_wal("main", &partial(one, 16 << 20)).await.unwrap();
    assert_eq!(r.put_wal_streamed("main", &partial(one, 400)).await.unwrap(), StreamedPut::Archived);
    assert_eq!(r.put_wal_streamed("main", &partial(two, 20)).await.unwrap(), StreamedPut::Stored);
    assert_eq!(r.wal_streamed_names("main").await.unwrap(), vec![two.to_string()]);
    assert_eq!(r.wal_streamed_newest("main").await.unwrap().unwrap().0.size, 20);

    // A damaged partial is an error naming it, not a panic or a wrong segment.
    std::fs::write(_d.path().join("stanza/main/wal-stream").join(two), b"garbage").unwrap();
    assert!(matches!(r.wal_streamed("main", two).await, Err(RepoError::CorruptObject { .. })));
}

#[tokio::test]
async fn commit_requires_the_packs_and_a_fresh_label() {
    let (_d, r) = repo();
    r.create_stanza(&stanza_info()).await.unwrap();
    let record = BackupRecord {
        version: FORMAT_VERSION,
        summary: BackupSummary {
            label: "L1".into(),
            backup_type: BackupType::Full,
            start_time: 0,
            stop_time: 0,
            start_lsn: 0,
            stop_lsn: 0,
            timeline: 1,
            wal_start: String::new(),
            wal_stop: String::new(),
            pg_version_num: 150004,
            system_id: 7,
            wal_segment_size: 16 << 20,
            reference: String::new(),
            database_bytes: 0,
            read_bytes: 0,
            stored_bytes: 0,
            sent_bytes: 0,
            file_count: 0,
            checksum_failures: 0,
        },
        manifest_len: 0,
        manifest_chunks: vec![],
    };
    assert!(r.commit_backup("main", &[[9; 16]], &record).await.is_err());
    assert!(r.backups("main").await.unwrap().is_empty());
    r.commit_backup("main", &[], &record).await.unwrap();
    assert!(r.commit_backup("main", &[], &record).await.is_err());
    assert_eq!(r.backups("main").await.unwrap().len(), 1);
    assert!(matches!(r.backup("main", "nope").await, Err(RepoError::NoBackup { .. })));
}

fn record(label: &str) -> BackupRecord {
    BackupRecord {
        version: FORMAT_VERSION,
        summary: BackupSummary {
            label: label.into(),
            backup_type: BackupType::Full,
            start_time: 1_800_000_000,
            stop_time: 1_800_000_060,
            start_lsn: 0,
            stop_lsn: 0,
            timeline: 1,
            wal_start: String::new(),
            wal_stop: String::new(),
            pg_version_num: 150004,
            system_id: 7,
            wal_segment_size: 16 << 20,
            reference: String::new(),
            database_bytes: 0,
            read_bytes: 0,
            stored_bytes: 0,
            sent_bytes: 0,
            file_count: 0,
            checksum_failures: 0,
        },
        manifest_len: 0,
        manifest_chunks: vec![],
    }
}

#[tokio::test]
async fn a_flipped_byte_that_still_decodes_fails_the_checksum() {
    let (d, r) = repo();
    r.create_stanza(&stanza_info()).await.unwrap();
    r.commit_backup("main", &[], &record("L1")).await.unwrap();
    let path = d.path().join(backup_record_path("main", "L1"));
    let stored = std::fs::read(&path).unwrap();
    assert!(stored.starts_with(CHECKED_RECORD_MAGIC), "plain records carry a checksum");
    // A byte of the stop time: the archive still validates, only the checksum can tell.
    let body = &stored[CHECKED_RECORD_MAGIC.len() + CHECKSUM_LEN..];
    let at = body.windows(8).position(|w| w == 1_800_000_060i64.to_le_bytes()).expect("stop time in the record");
    let mut flipped = body.to_vec();
    flipped[at + 7] ^= 0x7f;
    assert!(decode::<BackupRecord>(&flipped).is_ok(), "the flip must still decode for this test to mean anything");
    let mut damaged = stored.clone();
    damaged[CHECKED_RECORD_MAGIC.len() + CHECKSUM_LEN + at + 7] ^= 0x7f;
    std::fs::write(&path, &damaged).unwrap();
    let err = r.backup("main", "L1").await.unwrap_err().to_string();
    assert!(err.contains("checksum mismatch"), "{err}");
    // The older unchecked form is still read.
    std::fs::write(&path, body).unwrap();
    assert_eq!(r.backup("main", "L1").await.unwrap().summary.stop_time, 1_800_000_060);
}

#[tokio::test]
async fn damaged_records_are_listed_apart_from_the_readable_ones() {
    let (d, r) = repo();
    r.create_stanza(&stanza_info()).await.unwrap();
    for l in ["L1", "L2", "L3"] {
        r.commit_backup("main", &[], &record(l)).await.unwrap();
    }
    std::fs::write(d.path().join(backup_record_path("main", "L2")), b"x\n").unwrap();
    // A record under another backup's name is not that backup.
    std::fs::copy(d.path().join(backup_record_path("main", "L1")), d.path().join(backup_record_path("main", "L4"))).unwrap();
    let (ok, damaged) = r.backups_checked("main").await.unwrap();
    assert_eq!(ok.iter().map(|b| b.summary.label.as_str()).collect::<Vec<_>>(), ["L1", "L3"]);
    assert_eq!(damaged.iter().map(|d| d.name.as_str()).collect::<Vec<_>>(), ["L2", "L4"]);
    assert_eq!(r.backups("main").await.unwrap().len(), 2);

    let wal = |n: u8| WalRecord {
        version: strata_messages::WAL_RECORD_VERSION,
        name: format!("0000000100000000000000{n:02X}"),
        size: 16,
        hash: [n; 32],
        chunks: vec![],
        summary: None,
    };
    for n in 1..=3 {
        r.put_wal("main", &wal(n)).await.unwrap();
    }
    std::fs::write(d.path().join(wal_record_path("main", &wal(2).name)), b"x\n").unwrap();
    let (ok, damaged) = r.wal_records_checked("main").await.unwrap();
    assert_eq!(ok.iter().map(|w| w.hash[0]).collect::<Vec<_>>(), [1, 3]);
    assert_eq!(damaged.len(), 1);
    assert_eq!(damaged[0].name, wal(2).name);
}

#[tokio::test]
async fn small_json_objects_carry_a_checksum_and_older_ones_are_read() {
    use crate::annotations::Annotation;
    use crate::verify_results::VerifyResult;
    let (d, r) = repo();
    r.create_stanza(&stanza_info()).await.unwrap();
    r.commit_backup("main", &[], &record("L1")).await.unwrap();
    let a = Annotation { pinned: true, note: Some("keep".into()), changed_by: "me@here".into(), changed_at: 1 };
    r.put_annotation("main", "L1", &a).await.unwrap();
    let v = VerifyResult {
        subject: "L1".into(),
        time: 1,
        duration_secs: 0.5,
        chunks: 3,
        stored_bytes: 10,
        plain_bytes: 20,
        pages_checked: 0,
        wal_files: 0,
        problem_count: 0,
        problems: vec![],
        by: "me@here".into(),
    };
    r.put_verify_result("main", &v).await.unwrap();
    let apath = d.path().join("stanza/main/backup/L1.annotation");
    let vpath = d.path().join("stanza/main/verify/L1.json");
    for p in [&apath, &vpath] {
        let mut bytes = std::fs::read(p).unwrap();
        assert!(bytes.starts_with(CHECKED_RECORD_MAGIC), "{}", p.display());
        // "keep" -> "kee" + 'p' ^ 1, "chunks": 3 -> 2: valid JSON, wrong content.
        let body = bytes.split_off(CHECKED_RECORD_MAGIC.len() + CHECKSUM_LEN);
        let changed = String::from_utf8(body.clone()).unwrap().replace("\"keep\"", "\"keeq\"").replace("\"chunks\": 3", "\"chunks\": 2");
        assert_ne!(changed.as_bytes(), &body[..]);
        std::fs::write(p, [bytes.clone(), changed.into_bytes()].concat()).unwrap();
        // Older builds wrote the body alone.
        std::fs::write(p.with_extension("old"), &body).unwrap();
    }
    assert!(r.annotation("main", "L1").await.unwrap_err().to_string().contains("checksum mismatch"));
    assert!(r.verify_result("main", "L1").await.unwrap_err().to_string().contains("checksum mismatch"));
    std::fs::rename(apath.with_extension("old"), &apath).unwrap();
    std::fs::rename(vpath.with_extension("old"), &vpath).unwrap();
    assert_eq!(r.annotation("main", "L1").await.unwrap(), Some(a));
    assert_eq!(r.verify_result("main", "L1").await.unwrap(), Some(v));
}

#[tokio::test]
async fn stanza_json_carries_a_checksum_and_the_plain_form_is_read() {
    let (d, r) = repo();
    let info = stanza_info();
    r.create_stanza(&info).await.unwrap();
    let path = d.path().join("stanza/main/stanza.json");
    let mut bytes = std::fs::read(&path).unwrap();
    assert!(bytes.starts_with(CHECKED_RECORD_MAGIC));
    let body = bytes.split_off(CHECKED_RECORD_MAGIC.len() + CHECKSUM_LEN);
    // A segment size of 16 MiB read as 17 MiB would rename every segment: valid JSON, wrong content.
    let text = String::from_utf8(body.clone()).unwrap();
    let changed = text.replace("16777216", "17825792");
    assert_ne!(changed, text);
    std::fs::write(&path, [bytes, changed.into_bytes()].concat()).unwrap();
    assert!(r.stanza("main").await.unwrap_err().to_string().contains("checksum mismatch"));
    // Older builds wrote the JSON alone.
    std::fs::write(&path, &body).unwrap();
    assert_eq!(r.stanza("main").await.unwrap(), info);
}
