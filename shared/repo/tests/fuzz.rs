//! Everything a repository reader decodes, fed random bytes and damaged copies of valid objects through
//! the real reading path (a POSIX repository in a temporary directory, plain and encrypted): backup,
//! checkpoint and WAL records, manifests (head and file lists), pack footers and indexes, and the JSON
//! objects (stanza.json, annotations, running markers, verify and restore-test results). Each read is
//! `Ok` or an error, never a panic, and what it accepts is bounded by what is stored. The format marker
//! (`strata.repo`) is not here: no reader parses it, only its presence is checked.
//! Cases per target: `PROPTEST_CASES` (see `strata-fuzzkit`).

use bytes::Bytes;
use std::sync::Arc;
use strata_fuzzkit::proptest::prelude::*;
use strata_fuzzkit::{bytes, check, fuzz, mutated, mutated_any};
use strata_messages::*;
use strata_repo::{pack, ChunkIndex, PackBuilder, Repo, StanzaInfo};
use strata_seal::{ChunkCipher, Sealer};
use strata_storage::{PosixStorage, Storage};

mod fixtures;
use fixtures::*;

/// A plain and an encrypted view of one POSIX repository, and a runtime to drive them.
struct Fixture {
    _dir: tempfile::TempDir,
    storage: Arc<dyn Storage>,
    plain: Repo,
    encrypted: Repo,
    rt: tokio::runtime::Runtime,
}

impl Fixture {
    fn new() -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let storage: Arc<dyn Storage> = Arc::new(PosixStorage::open(dir.path()).unwrap());
        let plain = Repo::new("fuzz", storage.clone());
        let encrypted = Repo::new("fuzz", storage.clone()).with_sealer(Sealer::encrypted(ChunkCipher::new(&[7; 32])));
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        Fixture { _dir: dir, storage, plain, encrypted, rt }
    }

    fn repos(&self) -> [&Repo; 2] {
        [&self.plain, &self.encrypted]
    }

    fn put(&self, path: &str, bytes: &[u8]) {
        self.rt.block_on(self.storage.put(path, Bytes::copy_from_slice(bytes))).unwrap();
    }

    fn get(&self, path: &str) -> Vec<u8> {
        self.rt.block_on(self.storage.get(path)).unwrap().to_vec()
    }
}

fn chunk_ref(n: u8) -> ChunkRef {
    ChunkRef { id: [n; 32], pack: [n; 16], offset: 0, sealed_len: 100, raw_len: 8192 }
}

fn record(manifest_len: u64, manifest_chunks: Vec<ChunkRef>) -> BackupRecord {
    BackupRecord { version: FORMAT_VERSION, summary: summary(), manifest_len, manifest_chunks }
}

fn wal_record() -> WalRecord {
    WalRecord {
        version: WAL_RECORD_VERSION,
        name: WAL.into(),
        size: 16 << 20,
        hash: [9; 32],
        chunks: vec![chunk_ref(1), chunk_ref(2)],
        summary: Some(WalSummary { last_start: 0x3FFFF00, xact_ends: 1, xids: WalSummary::xid_runs(vec![7]), ..Default::default() }),
    }
}

fn checkpoint() -> BackupCheckpoint {
    BackupCheckpoint { version: FORMAT_VERSION, label: LABEL.into(), attempt_start: 1_796_000_000, head_len: 10, head_chunks: vec![chunk_ref(3)] }
}

fn checkpoint_path() -> String {
    format!("stanza/{STANZA}/backup/{LABEL}.partial")
}

/// The stored bytes of every kind of record, as a plain and as an encrypted repository write them.
fn stored_records(f: &Fixture) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for repo in f.repos() {
        f.rt.block_on(async {
            f.storage.delete(&strata_repo::backup_record_path(STANZA, LABEL)).await.ok();
            f.storage.delete(&strata_repo::wal_record_path(STANZA, WAL)).await.ok();
            repo.create_stanza(&stanza_info()).await.unwrap();
            repo.commit_backup(STANZA, &[], &record(10, vec![chunk_ref(4)])).await.unwrap();
            repo.put_checkpoint(STANZA, &[], &checkpoint()).await.unwrap();
            repo.put_wal(STANZA, &wal_record()).await.unwrap();
        });
        out.push(f.get(&strata_repo::backup_record_path(STANZA, LABEL)));
        out.push(f.get(&checkpoint_path()));
        out.push(f.get(&strata_repo::wal_record_path(STANZA, WAL)));
    }
    let old = WalRecordV2 { version: 2, name: WAL.into(), size: 16 << 20, hash: [9; 32], chunks: vec![chunk_ref(1)] };
    out.push(encode(&old));
    // The unframed forms builds before the format header wrote, still read.
    out.push(encode_unframed(&old));
    out.push(encode_unframed(&record(10, vec![chunk_ref(4)])));
    out
}

fn stanza_info() -> StanzaInfo {
    StanzaInfo { stanza: STANZA.into(), system_id: 42, pg_version_num: 150004, pg_major: 15, wal_segment_size: 16 << 20, created: 0 }
}

/// Stores `bytes` as every record, then reads them all back with both repositories.
fn read_records(f: &Fixture, bytes: &[u8]) -> Result<(), TestCaseError> {
    f.put(&strata_repo::backup_record_path(STANZA, LABEL), bytes);
    f.put(&checkpoint_path(), bytes);
    f.put(&strata_repo::wal_record_path(STANZA, WAL), bytes);
    for repo in f.repos() {
        f.rt.block_on(async {
            match repo.backup(STANZA, LABEL).await {
                Ok(r) => {
                    check!(r.manifest_chunks.len() * 64 <= bytes.len(), "record larger than the stored object");
                    // The manifest's chunks are not stored: an error naming them, not a panic.
                    let _ = repo.manifest(repo.sealer(), &r).await.map_err(|e| e.to_string());
                    let _ = repo.backup_packs(&r).await.map_err(|e| e.to_string());
                }
                Err(e) => check!(!e.to_string().is_empty(), "empty error"),
            }
            let _ = repo.backups(STANZA).await.map_err(|e| e.to_string());
            for c in repo.checkpoints(STANZA).await.map_err(|e| TestCaseError::fail(e.to_string()))? {
                check!(c.head_chunks.len() * 64 <= bytes.len(), "checkpoint larger than the stored object");
            }
            match repo.wal(STANZA, WAL).await {
                Ok(Some(w)) => check!(w.chunks.len() * 64 <= bytes.len(), "WAL record larger than the stored object"),
                Ok(None) => return Err(TestCaseError::fail("a stored WAL record read as missing")),
                Err(e) => drop(e.to_string()),
            }
            let _ = repo.wal_contents(repo.sealer(), STANZA, WAL).await.map_err(|e| e.to_string());
            Ok(())
        })?;
    }
    Ok(())
}

#[test]
fn fuzz_repo_records_random() {
    let f = Fixture::new();
    f.rt.block_on(f.plain.create_stanza(&stanza_info())).unwrap();
    fuzz("repo/records-random", 128, bytes(400), |b| read_records(&f, &b));
}

#[test]
fn fuzz_repo_records_mutated() {
    let f = Fixture::new();
    let valid = stored_records(&f);
    fuzz("repo/records-mutated", 256, mutated_any(valid), |b| read_records(&f, &b));
}

const VERIFY_PATH: &str = "stanza/main/verify/20261124-081500F.json";
const RESTORE_TEST_PATH: &str = "stanza/main/restore-test/20261202T171325Z-20261124-081500F.json";
const ANNOTATION_PATH: &str = "stanza/main/backup/20261124-081500F.annotation";
const RUNNING_PATH: &str = "stanza/main/backup/20261125-010000I.running";
const STANZA_PATH: &str = "stanza/main/stanza.json";
const DROPPED_PATH: &str = "stanza/main/dropped/000000010000000000000003.json";

/// Every JSON object read back by both repositories; an unreadable one is an error or reported as
/// unreadable, and each value is shown as `info` and the verifier show it.
fn read_json_objects(f: &Fixture) -> Result<(), TestCaseError> {
    for repo in f.repos() {
        f.rt.block_on(async {
            let _ = repo.stanza(STANZA).await.map_err(|e| e.to_string());
            let _ = repo.annotation(STANZA, LABEL).await.map_err(|e| e.to_string());
            let _ = repo.annotations(STANZA).await.map_err(|e| e.to_string());
            let _ = repo.running().await.map_err(|e| e.to_string());
            if let Ok(Some(v)) = repo.verify_result(STANZA, LABEL).await {
                for p in &v.problems {
                    let _ = p.to_string();
                }
            }
            for v in repo.verify_results(STANZA).await.map_err(|e| TestCaseError::fail(e.to_string()))? {
                let _ = v.ok();
                for p in &v.problems {
                    let _ = p.to_string();
                }
            }
            let _ = repo.restore_tests(STANZA).await.map_err(|e| e.to_string());
            for d in repo.wal_dropped(STANZA).await.map_err(|e| TestCaseError::fail(e.to_string()))? {
                prop_assert_eq!(d.name.as_str(), WAL);
            }
            if let Ok(Some(t)) = repo.latest_restore_test(STANZA).await {
                let _ = strata_repo::restore_tests::restore_test_path(STANZA, &t);
            }
            Ok::<(), TestCaseError>(())
        })?;
    }
    Ok(())
}

/// The stored bytes of every JSON object, plain and (where the repository seals them) encrypted.
fn stored_json(f: &Fixture, text: &str) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for repo in f.repos() {
        f.rt.block_on(async {
            repo.create_stanza(&stanza_info()).await.unwrap();
            repo.put_verify_result(STANZA, &verify_result(text)).await.unwrap();
            let mut t = restore_test(text);
            t.start_time = 1_796_231_605;
            repo.put_restore_test(STANZA, &t).await.unwrap();
            repo.put_running(STANZA, &running(text)).await.unwrap();
            repo.put_wal_dropped(STANZA, &dropped()).await.unwrap();
        });
        f.put(ANNOTATION_PATH, &serde_json::to_vec_pretty(&annotation(text)).unwrap());
        for path in [VERIFY_PATH, RESTORE_TEST_PATH, ANNOTATION_PATH, RUNNING_PATH, STANZA_PATH, DROPPED_PATH] {
            out.push(f.get(path));
        }
    }
    out
}

#[test]
fn fuzz_repo_json_mutated() {
    let f = Fixture::new();
    let valid = stored_json(&f, "a7f3c2d1e0b9a8f7 é ✓");
    fuzz("repo/json-mutated", 256, mutated_any(valid), |b| {
        for path in [VERIFY_PATH, RESTORE_TEST_PATH, ANNOTATION_PATH, RUNNING_PATH, STANZA_PATH, DROPPED_PATH] {
            f.put(path, &b);
        }
        read_json_objects(&f)
    });
}

#[test]
fn fuzz_repo_json_random() {
    let f = Fixture::new();
    fuzz("repo/json-random", 128, bytes(300), |b| {
        for path in [VERIFY_PATH, RESTORE_TEST_PATH, ANNOTATION_PATH, RUNNING_PATH, STANZA_PATH, DROPPED_PATH] {
            f.put(path, &b);
        }
        read_json_objects(&f)
    });
}

/// Objects with any text in them (names of files, notes, query values) are read back as written, and
/// shown without a panic.
#[test]
fn fuzz_repo_json_round_trip() {
    let f = Fixture::new();
    fuzz("repo/json-round-trip", 128, any::<String>(), |text| {
        for repo in f.repos() {
            f.rt.block_on(async {
                let fail = |e: strata_repo::RepoError| TestCaseError::fail(e.to_string());
                repo.put_verify_result(STANZA, &verify_result(&text)).await.map_err(fail)?;
                let back = repo.verify_result(STANZA, LABEL).await.map_err(fail)?;
                check!(back == Some(verify_result(&text)), "verify result does not round-trip");
                for p in &back.unwrap().problems {
                    let shown = p.to_string();
                    check!(shown.contains("chunk "), "problem shown as {shown:?}");
                }
                let body = serde_json::to_vec_pretty(&annotation(&text)).unwrap();
                f.storage.put(ANNOTATION_PATH, Bytes::from(body)).await.unwrap();
                check!(repo.annotation(STANZA, LABEL).await.map_err(fail)? == Some(annotation(&text)), "annotation");
                repo.put_running(STANZA, &running(&text)).await.map_err(fail)?;
                let markers = repo.running().await.map_err(fail)?;
                check!(markers.iter().any(|m| m.marker == running(&text)), "running marker does not round-trip");
                Ok(())
            })?;
        }
        Ok(())
    });
}

/// A pack of three chunks, its id and bytes.
fn valid_pack() -> (PackId, Vec<u8>) {
    let sealer = Sealer::default();
    let mut builder = PackBuilder::with_capacity(4096);
    for n in 0..3u8 {
        let plain = vec![n; 1000];
        builder.add(sealer.chunk_id(&plain), plain.len() as u32, &sealer.seal(&plain, 1));
    }
    let (id, bytes, _) = builder.finish();
    (id, bytes.to_vec())
}

/// Reads `bytes` as pack `id` through the repository, and checks every chunk it lists lies in the body.
fn read_pack(f: &Fixture, id: &PackId, bytes: &[u8]) -> Result<(), TestCaseError> {
    f.put(&strata_repo::pack_path(id), bytes);
    f.rt.block_on(async {
        match f.plain.pack_index(id, bytes.len() as u64).await {
            Ok(refs) => {
                check!(refs.len() * pack::INDEX_ENTRY_LEN + pack::FOOTER_LEN <= bytes.len(), "index larger than the pack");
                let body = bytes.len() - pack::FOOTER_LEN - refs.len() * pack::INDEX_ENTRY_LEN;
                for r in &refs {
                    check!(r.offset.checked_add(r.sealed_len as u64).is_some_and(|end| end <= body as u64), "chunk {r:?} past the body of {body} bytes");
                    let _ = f.plain.read_chunk(f.plain.sealer(), r).await.map_err(|e| e.to_string());
                }
            }
            Err(e) => check!(!e.to_string().is_empty(), "empty error"),
        }
        let mut index = ChunkIndex::default();
        let _ = index.refresh(&f.plain).await.map_err(|e| e.to_string());
        Ok(())
    })
}

#[test]
fn fuzz_pack_footer_random() {
    fuzz("repo/pack-footer-random", 512, bytes(60), |b| {
        if let Ok((count, _)) = pack::parse_footer(&b) {
            check!(b.len() == pack::FOOTER_LEN, "footer of {} bytes accepted (count {count})", b.len());
        }
        Ok(())
    });
}

#[test]
fn fuzz_pack_mutated() {
    let f = Fixture::new();
    let (id, valid) = valid_pack();
    fuzz("repo/pack-mutated", 256, mutated(valid), |b| read_pack(&f, &id, &b));
}

/// A damaged index whose checksum was recomputed (a buggy or hostile writer): entries pointing anywhere,
/// any count, must still be refused or lie in the pack.
#[test]
fn fuzz_pack_index_with_valid_checksum() {
    let f = Fixture::new();
    let (id, valid) = valid_pack();
    let index_len = 3 * pack::INDEX_ENTRY_LEN;
    let index_start = valid.len() - pack::FOOTER_LEN - index_len;
    let index = valid[index_start..valid.len() - pack::FOOTER_LEN].to_vec();
    // Besides random damage, one entry's offset (at 32) or length (at 40) set to a value near a boundary.
    let boundary = prop_oneof![Just(u64::MAX), Just(u64::MAX - 50), Just(1 << 32), any::<u64>()];
    let field = prop::option::of((0..3usize, prop_oneof![Just(32usize), Just(40)], boundary));
    let strategy = (mutated(index), prop_oneof![Just(None), any::<u32>().prop_map(Some)], field);
    fuzz("repo/pack-index-checksummed", 256, strategy, |(mut index, count, field)| {
        if let Some((entry, at, value)) = field {
            let start = entry * pack::INDEX_ENTRY_LEN + at;
            let width = if at == 32 { 8 } else { 4 };
            if let Some(bytes) = index.get_mut(start..start + width) {
                bytes.copy_from_slice(&value.to_le_bytes()[..width]);
            }
        }
        let mut b = valid[..index_start].to_vec();
        b.extend_from_slice(&index);
        let count = count.unwrap_or((index.len() / pack::INDEX_ENTRY_LEN) as u32);
        b.extend_from_slice(&count.to_le_bytes());
        b.extend_from_slice(blake3::hash(&index).as_bytes());
        b.extend_from_slice(b"STRPACK1");
        if let Ok(refs) = pack::parse_index(&id, &index, blake3::hash(&index).as_bytes(), index_start as u64) {
            for r in &refs {
                check!(r.offset.checked_add(r.sealed_len as u64).is_some_and(|end| end <= index_start as u64), "chunk {r:?} accepted past the body");
            }
        }
        read_pack(&f, &id, &b)
    });
}

/// A manifest (head and one file list) stored as chunks of a pack, damaged before sealing so the chunks'
/// ids still match: what `restore` and `verify` read.
#[test]
fn fuzz_repo_manifest_mutated() {
    let f = Fixture::new();
    let sealer = Sealer::default();
    let list = FileList {
        version: FORMAT_VERSION,
        files: vec![FileEntry {
            path: "base/5/16390".into(),
            kind: FileKind::File,
            mode: 0o600,
            uid: 26,
            gid: 26,
            mtime: 1_796_000_000,
            size: 16384,
            link_target: String::new(),
            pieces: vec![Piece { chunk: 0, offset: 0, len: 8192 }, Piece { chunk: ZERO_CHUNK, offset: 0, len: 8192 }],
            page_hashes: vec![1, 2],
        }],
    };
    let list_bytes = encode(&list);
    let list_ref_in = |pack: PackId, offset: u64, sealed_len: u32| ChunkRef {
        id: sealer.chunk_id(&list_bytes),
        pack,
        offset,
        sealed_len,
        raw_len: list_bytes.len() as u32,
    };
    // Each case's pack holds the list first, then the head, which names the list at the pack's start.
    let sealed_list = sealer.seal(&list_bytes, 1);
    let head_for = |pack: PackId| ManifestHead {
        version: FORMAT_VERSION,
        summary: summary(),
        data_checksums: true,
        references: vec![],
        backup_label: "START WAL LOCATION: 0/1000028\n".into(),
        tablespace_map: String::new(),
        tablespaces: vec![],
        checksum_failures: vec![],
        chunks: vec![chunk_ref(4)],
        file_lists: vec![list_ref_in(pack, 0, sealed_list.len() as u32)],
    };
    // Pack ids are random; the mutated head names a fixed one, and each case stores its pack under it.
    let pack_id: PackId = [0xAB; 16];
    let head_bytes = encode(&head_for(pack_id));
    let strategy = (mutated(head_bytes.clone()), mutated(list_bytes.clone()), 0..3u8);
    fuzz("repo/manifest-mutated", 256, strategy, |(head, list, which)| {
        // 0: the head damaged, 1: the file list damaged, 2: both.
        let head = if which == 1 { head_bytes.clone() } else { head };
        let list = if which == 0 { list_bytes.clone() } else { list };
        let sealed_list = sealer.seal(&list, 1);
        let sealed_head = sealer.seal(&head, 1);
        let mut b = sealed_list.clone();
        b.extend_from_slice(&sealed_head);
        f.put(&strata_repo::pack_path(&pack_id), &b);
        let head_ref = ChunkRef {
            id: sealer.chunk_id(&head),
            pack: pack_id,
            offset: sealed_list.len() as u64,
            sealed_len: sealed_head.len() as u32,
            raw_len: head.len() as u32,
        };
        let rec = record(head.len() as u64, vec![head_ref]);
        f.rt.block_on(async {
            match f.plain.manifest(&sealer, &rec).await {
                Ok(m) => {
                    check!(m.head.chunks.len() * 64 <= head.len(), "manifest head larger than its chunk");
                    let bytes: usize = m.files.iter().map(|e| e.pieces.len() * 12 + e.page_hashes.len() * 8).sum();
                    check!(bytes <= list.len() * m.head.file_lists.len().max(1), "file entries larger than their chunks");
                    for e in &m.files {
                        for p in &e.pieces {
                            let _ = m.chunk(p);
                        }
                    }
                }
                Err(e) => check!(!e.to_string().is_empty(), "empty error"),
            }
            let _ = f.plain.backup_packs(&rec).await.map_err(|e| e.to_string());
            Ok(())
        })
    });
}

/// Found by `fuzz_pack_index_with_valid_checksum`: an index entry whose offset is near the end of the address space overflowed the check that it lies in
/// the pack's body.
#[test]
fn pack_index_entry_past_the_address_space_is_refused() {
    let f = Fixture::new();
    let (id, valid) = valid_pack();
    let index_start = valid.len() - pack::FOOTER_LEN - 3 * pack::INDEX_ENTRY_LEN;
    let mut b = valid.clone();
    b[index_start + 32..index_start + 40].copy_from_slice(&u64::MAX.to_le_bytes());
    let index = b[index_start..valid.len() - pack::FOOTER_LEN].to_vec();
    let footer_digest = valid.len() - pack::FOOTER_LEN + 4;
    b[footer_digest..footer_digest + 32].copy_from_slice(blake3::hash(&index).as_bytes());
    assert!(pack::parse_index(&id, &index, blake3::hash(&index).as_bytes(), index_start as u64).is_err());
    f.put(&strata_repo::pack_path(&id), &b);
    assert!(f.rt.block_on(f.plain.pack_index(&id, b.len() as u64)).is_err());
}

/// Found by `fuzz_repo_json_round_trip`: a problem whose chunk text has a multi-byte character across its
/// 16th byte made showing the stored verify result panic (a byte index inside a character).
#[test]
fn a_problem_with_any_chunk_text_is_shown() {
    let p = problem("0123456789abcdeé-and-more");
    assert!(p.to_string().contains("chunk 0123456789abcdeé,"), "{p}");
}

/// Found by `fuzz_repo_records_mutated`: a WAL record or backup record claiming an impossible size made
/// reading its contents or manifest reserve that much memory up front, which aborted the process.
#[test]
fn a_record_claiming_an_impossible_size_is_an_error() {
    let f = Fixture::new();
    f.rt.block_on(async {
        f.plain.create_stanza(&stanza_info()).await.unwrap();
        let mut wal = wal_record();
        wal.size = 3_617_008_641_900_544_000;
        f.plain.put_wal(STANZA, &wal).await.unwrap();
        assert!(f.plain.wal_contents(f.plain.sealer(), STANZA, WAL).await.is_err());
        let rec = record(u64::MAX / 3, vec![chunk_ref(1)]);
        assert!(f.plain.manifest(f.plain.sealer(), &rec).await.is_err());
    });
}
