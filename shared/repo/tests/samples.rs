//! A checked-in repository (`testdata/repo`), read back object by object: the repository marker, a
//! stanza, a pack (chunks, index, footer), a committed backup with its manifest, a checkpoint, and WAL
//! records, each in the current form and in the forms older builds wrote, and the JSON objects (annotation,
//! running marker, verify and restore-test results, dropped-WAL record) (a record checked but unframed,
//! a WAL record of layout 2 with neither checksum nor header). See `shared/messages` for the format rule.
//!
//! `testdata/repo-encrypted` is the same written with a data key ([`DATA_KEY`]): records sealed
//! (`STRSEAL1`), chunk ids keyed.
//!
//! The repositories are never rewritten: `STRATA_WRITE_SAMPLES=1 cargo test -p strata-repo --test samples`
//! writes it only when it is missing, and a format change adds objects beside the old ones.

use bytes::Bytes;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use strata_messages::*;
use strata_repo::{wal_record_path, PackBuilder, Repo, StanzaInfo, FORMAT_MARKER_PATH};
use strata_seal::{ChunkCipher, Sealer};
use strata_storage::{PosixStorage, Storage};

mod fixtures;
use fixtures::{annotation, dropped, restore_test, running, verify_result, LABEL, STANZA, WAL as SEGMENT};

/// A backup whose record is in the unframed form of older builds (checked).
const LEGACY_LABEL: &str = "20261124-081500F_20261125-010000I";
/// A WAL record in the unframed form, with a checksum.
const LEGACY_SEGMENT: &str = "000000010000000000000002";
/// A WAL record of layout 2, unframed and unchecked, as the oldest builds wrote it.
const OLDEST_HISTORY: &str = "00000002.history";

/// The data key of `testdata/repo-encrypted` (a sample's, known to all).
const DATA_KEY: [u8; 32] = [0x5A; 32];

fn dir(encrypted: bool) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(if encrypted { "testdata/repo-encrypted" } else { "testdata/repo" })
}

fn sealer(encrypted: bool) -> Sealer {
    if encrypted {
        Sealer::encrypted(ChunkCipher::new(&DATA_KEY))
    } else {
        Sealer::default()
    }
}

fn stanza_info() -> StanzaInfo {
    StanzaInfo { stanza: STANZA.into(), system_id: 7_300_000_000_000_000_042, pg_version_num: 150004, pg_major: 15, wal_segment_size: 16 << 20, created: 1_796_000_000 }
}

fn data() -> Vec<u8> {
    b"15\n".to_vec()
}

fn summary(label: &str, backup_type: BackupType) -> BackupSummary {
    BackupSummary {
        label: label.into(),
        backup_type,
        system_id: stanza_info().system_id,
        database_bytes: 3,
        read_bytes: 3,
        stored_bytes: 100,
        sent_bytes: 3,
        file_count: 1,
        ..fixtures::summary()
    }
}

fn wal_summary() -> WalSummary {
    WalSummary { last_start: 0x3FFFF00, xact_ends: 1, xids: WalSummary::xid_runs(vec![700]), ..Default::default() }
}

/// A record as stored: `STRSUM01`, the body's BLAKE3 hash and the body; or, encrypted, `STRSEAL1` and
/// the sealed body.
fn stored_record(sealer: &Sealer, body: &[u8]) -> Bytes {
    let mut out = Vec::new();
    if sealer.is_encrypted() {
        out.extend_from_slice(b"STRSEAL1");
        out.extend_from_slice(&sealer.seal_object(body));
    } else {
        out.extend_from_slice(b"STRSUM01");
        out.extend_from_slice(blake3::hash(body).as_bytes());
        out.extend_from_slice(body);
    }
    Bytes::from(out)
}

/// The body of a stored record.
fn record_body(sealer: &Sealer, stored: &[u8]) -> Vec<u8> {
    match stored.strip_prefix(b"STRSEAL1") {
        Some(sealed) => sealer.unseal_object(sealed).unwrap(),
        None => stored.strip_prefix(b"STRSUM01").expect("a checked record")[32..].to_vec(),
    }
}

async fn write_sample(path: &Path, sealer: Sealer) {
    std::fs::create_dir_all(path).unwrap();
    let storage: Arc<dyn Storage> = Arc::new(PosixStorage::open(path).unwrap());
    let repo = Repo::new("sample", storage.clone()).with_sealer(sealer.clone());
    assert!(repo.create_stanza(&stanza_info()).await.unwrap());

    // Pack 1: the file's bytes and the file list; pack 2: the manifest head.
    let mut pack = PackBuilder::new();
    let data_id = sealer.chunk_id(&data());
    pack.add(data_id, 3, &sealer.seal(&data(), 1));
    let entry = FileEntry {
        path: "PG_VERSION".into(),
        kind: FileKind::File,
        mode: 0o600,
        uid: 26,
        gid: 26,
        mtime: 1_796_000_000,
        size: 3,
        link_target: String::new(),
        pieces: vec![Piece { chunk: 0, offset: 0, len: 3 }],
        page_hashes: vec![],
    };
    let list = encode(&FileList { version: FORMAT_VERSION, files: vec![entry] });
    let list_id = sealer.chunk_id(&list);
    pack.add(list_id, list.len() as u32, &sealer.seal(&list, 1));
    let refs = repo.write_pack(pack).await.unwrap();
    let head = ManifestHead {
        version: FORMAT_VERSION,
        summary: summary(LABEL, BackupType::Full),
        data_checksums: true,
        references: vec![],
        backup_label: "START WAL LOCATION: 0/1000028 (file 000000010000000000000001)\n".into(),
        tablespace_map: String::new(),
        tablespaces: vec![],
        checksum_failures: vec![],
        chunks: vec![refs[0]],
        file_lists: vec![refs[1]],
    };
    let head_bytes = encode(&head);
    let mut pack = PackBuilder::new();
    pack.add(sealer.chunk_id(&head_bytes), head_bytes.len() as u32, &sealer.seal(&head_bytes, 1));
    let head_refs = repo.write_pack(pack).await.unwrap();
    let packs = [refs[0].pack, head_refs[0].pack];
    let record = |label: &str, backup_type| BackupRecord {
        version: FORMAT_VERSION,
        summary: summary(label, backup_type),
        manifest_len: head_bytes.len() as u64,
        manifest_chunks: head_refs.clone(),
    };
    repo.commit_backup(STANZA, &packs, &record(LABEL, BackupType::Full)).await.unwrap();
    let checkpoint = BackupCheckpoint { version: FORMAT_VERSION, label: "20261126-010000F".into(), attempt_start: 1_796_100_000, head_len: head_bytes.len() as u64, head_chunks: head_refs.clone() };
    repo.put_checkpoint(STANZA, &packs, &checkpoint).await.unwrap();
    let wal = |name: &str| WalRecord { version: WAL_RECORD_VERSION, name: name.into(), size: 3, hash: data_id, chunks: vec![refs[0]], summary: Some(wal_summary()) };
    repo.put_wal(STANZA, &wal(SEGMENT)).await.unwrap();

    // The forms older builds wrote.
    let legacy = encode_unframed(&record(LEGACY_LABEL, BackupType::Incr));
    storage.put(&format!("stanza/{STANZA}/backup/{LEGACY_LABEL}.record"), stored_record(&sealer, &legacy)).await.unwrap();
    let legacy = encode_unframed(&wal(LEGACY_SEGMENT));
    storage.put(&wal_record_path(STANZA, LEGACY_SEGMENT), stored_record(&sealer, &legacy)).await.unwrap();
    // Unchecked records predate encryption: an encrypted repository never had them.
    let oldest = encode_unframed(&WalRecordV2 { version: 2, name: OLDEST_HISTORY.into(), size: 3, hash: data_id, chunks: vec![refs[0]] });
    let oldest = if sealer.is_encrypted() { stored_record(&sealer, &oldest) } else { Bytes::from(oldest) };
    storage.put(&wal_record_path(STANZA, OLDEST_HISTORY), oldest).await.unwrap();
}

/// The JSON objects beside the records, as this build writes them.
async fn write_json_objects(path: &Path, sealer: Sealer) {
    let storage: Arc<dyn Storage> = Arc::new(PosixStorage::open(path).unwrap());
    let repo = Repo::new("sample", storage).with_sealer(sealer);
    repo.put_annotation(STANZA, LABEL, &annotation("sample")).await.unwrap();
    repo.put_running(STANZA, &running("db1")).await.unwrap();
    repo.put_verify_result(STANZA, &verify_result("sample")).await.unwrap();
    repo.put_restore_test(STANZA, &restore_test("sample")).await.unwrap();
    repo.put_wal_dropped(STANZA, &dropped()).await.unwrap();
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            copy_dir(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), target).unwrap();
        }
    }
}

#[tokio::test]
async fn the_sample_repository_reads() {
    read_sample(false).await;
}

#[tokio::test]
async fn the_encrypted_sample_repository_reads() {
    read_sample(true).await;
}

async fn read_sample(encrypted: bool) {
    let (dir, sealer) = (dir(encrypted), sealer(encrypted));
    if !dir.exists() && std::env::var_os("STRATA_WRITE_SAMPLES").is_some() {
        write_sample(&dir, sealer.clone()).await;
    }
    let json_objects = dir.join(format!("stanza/{STANZA}/backup/{LABEL}.annotation"));
    if !json_objects.exists() && std::env::var_os("STRATA_WRITE_SAMPLES").is_some() {
        write_json_objects(&dir, sealer.clone()).await;
    }
    assert!(dir.exists() && json_objects.exists(), "{} is missing; see this file's docs", dir.display());
    // Read a copy: nothing may change the checked-in repository.
    let tmp = tempfile::tempdir().unwrap();
    copy_dir(&dir, tmp.path());
    let storage: Arc<dyn Storage> = Arc::new(PosixStorage::open(tmp.path()).unwrap());
    let repo = Repo::new("sample", storage.clone()).with_sealer(sealer.clone());

    let marker: serde_json::Value = serde_json::from_slice(&storage.get(FORMAT_MARKER_PATH).await.unwrap()).unwrap();
    assert_eq!(marker, serde_json::json!({ "format": 1 }));
    assert_eq!(repo.stanza(STANZA).await.unwrap(), stanza_info());

    let (backups, damaged) = repo.backups_checked(STANZA).await.unwrap();
    assert!(damaged.is_empty(), "{damaged:?}");
    assert_eq!(backups.iter().map(|b| b.summary.label.as_str()).collect::<Vec<_>>(), [LABEL, LEGACY_LABEL]);
    for b in &backups {
        let backup_type = if b.summary.label == LABEL { BackupType::Full } else { BackupType::Incr };
        assert_eq!(b.summary, summary(&b.summary.label, backup_type));
        let m = repo.manifest(&sealer, b).await.unwrap();
        assert_eq!(m.head.summary.label, LABEL);
        assert!(m.head.backup_label.starts_with("START WAL LOCATION"));
        assert_eq!((m.files.len(), m.files[0].path.as_str(), m.files[0].size), (1, "PG_VERSION", 3));
        let chunk = m.chunk(&m.files[0].pieces[0]).unwrap();
        assert_eq!(repo.read_chunk(&sealer, chunk).await.unwrap(), data());
        assert_eq!(repo.backup_packs(b).await.unwrap().len(), 2);
    }

    let packs = repo.list_packs().await.unwrap();
    assert_eq!(packs.len(), 2);
    let mut indexed = 0;
    for (id, size) in packs {
        indexed += repo.pack_index(&id, size).await.unwrap().len();
    }
    assert_eq!(indexed, 3);

    let checkpoints = repo.checkpoints(STANZA).await.unwrap();
    assert_eq!(checkpoints.iter().map(|c| (c.label.as_str(), c.attempt_start)).collect::<Vec<_>>(), [("20261126-010000F", 1_796_100_000)]);

    let (wal, damaged) = repo.wal_records_checked(STANZA).await.unwrap();
    assert!(damaged.is_empty(), "{damaged:?}");
    let mut names: Vec<(&str, bool)> = wal.iter().map(|w| (w.name.as_str(), w.summary == Some(wal_summary()))).collect();
    names.sort();
    assert_eq!(names, [(LEGACY_SEGMENT, true), (SEGMENT, true), (OLDEST_HISTORY, false)]);
    for w in &wal {
        assert_eq!((w.version, w.size), (WAL_RECORD_VERSION, 3));
    }
    assert_eq!(repo.wal_contents(&sealer, STANZA, OLDEST_HISTORY).await.unwrap(), Some(data()));

    assert_eq!(repo.annotation(STANZA, LABEL).await.unwrap(), Some(annotation("sample")));
    let running_markers = repo.running().await.unwrap();
    assert_eq!(running_markers.iter().map(|r| &r.marker).collect::<Vec<_>>(), [&running("db1")]);
    assert_eq!(repo.verify_result(STANZA, LABEL).await.unwrap(), Some(verify_result("sample")));
    assert_eq!(repo.restore_tests(STANZA).await.unwrap(), [restore_test("sample")]);
    assert_eq!(repo.wal_dropped(STANZA).await.unwrap(), [dropped()]);

    // What this build writes is framed, and checked or sealed.
    let magic = if encrypted { b"STRSEAL1" } else { b"STRSUM01" };
    let stored = storage.get(&wal_record_path(STANZA, SEGMENT)).await.unwrap();
    assert!(stored.starts_with(magic) && record_body(&sealer, &stored).starts_with(&format::MAGIC));
    let stored = storage.get(&wal_record_path(STANZA, LEGACY_SEGMENT)).await.unwrap();
    assert!(stored.starts_with(magic) && !record_body(&sealer, &stored).starts_with(&format::MAGIC));
}
