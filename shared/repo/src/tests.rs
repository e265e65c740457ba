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
