//! Every decoder of this crate (records, manifests, bus messages) against random bytes and mutations of
//! valid encodings: it returns a value or an error, never panics, and what it accepts is bounded by the
//! input and encodes back to itself. Cases per target: `PROPTEST_CASES` (see `strata-fuzzkit`).

use strata_fuzzkit::proptest::prelude::*;
use strata_fuzzkit::{bytes, check, fuzz, mutated, mutated_any};
use strata_messages::*;

fn chunk_ref(n: u8) -> ChunkRef {
    ChunkRef { id: [n; 32], pack: [n.wrapping_add(1); 16], offset: 4096 * n as u64, sealed_len: 100 + n as u32, raw_len: 8192 }
}

fn summary(label: &str, start_time: i64, stop_time: i64) -> BackupSummary {
    BackupSummary {
        label: label.into(),
        backup_type: BackupType::Incr,
        start_time,
        stop_time,
        start_lsn: 0x1000028,
        stop_lsn: 0x2000000,
        timeline: 1,
        wal_start: "000000010000000000000001".into(),
        wal_stop: "000000010000000000000002".into(),
        pg_version_num: 150004,
        system_id: 7_300_000_000_000_000_042,
        wal_segment_size: 16 << 20,
        reference: "20261124-081500F".into(),
        database_bytes: 1 << 30,
        read_bytes: 1 << 20,
        stored_bytes: 1 << 19,
        sent_bytes: 1 << 20,
        file_count: 1000,
        checksum_failures: 0,
    }
}

fn backup_record(label: &str, start_time: i64, stop_time: i64) -> BackupRecord {
    BackupRecord {
        version: FORMAT_VERSION,
        summary: summary(label, start_time, stop_time),
        manifest_len: 300,
        manifest_chunks: vec![chunk_ref(1), chunk_ref(2)],
    }
}

fn wal_summary() -> WalSummary {
    WalSummary {
        last_start: 0x3FFFF00,
        xact_ends: 3,
        first_time: 1_796_000_000_000_000,
        last_time: 1_796_000_001_000_000,
        xids: WalSummary::xid_runs(vec![700, 701, 702, 900]),
        restore_points: vec![RestorePoint { name: "before upgrade".into(), time: 1_796_000_000_500_000, lsn: 0x3000100 }],
        head: vec![1, 2, 3],
        tail: vec![0x40; 40],
        tail_lsn: 0x3FFFFE8,
        switched: false,
    }
}

fn wal_record(summary: Option<WalSummary>) -> WalRecord {
    WalRecord {
        version: WAL_RECORD_VERSION,
        name: "000000010000000000000003".into(),
        size: 16 << 20,
        hash: [9; 32],
        chunks: (0..4).map(chunk_ref).collect(),
        summary,
    }
}

fn checkpoint() -> BackupCheckpoint {
    BackupCheckpoint {
        version: FORMAT_VERSION,
        label: "20261124-081500F_20261125-010000I".into(),
        attempt_start: 1_796_000_000,
        head_len: 1234,
        head_chunks: vec![chunk_ref(3), ChunkRef::UNKNOWN],
    }
}

fn manifest_head() -> ManifestHead {
    ManifestHead {
        version: FORMAT_VERSION,
        summary: summary("20261124-081500F", 1_796_000_000, 1_796_000_100),
        data_checksums: true,
        references: vec!["20261120-010000F".into()],
        backup_label: "START WAL LOCATION: 0/1000028 (file 000000010000000000000001)\n".into(),
        tablespace_map: "16384 /srv/ts1\n".into(),
        tablespaces: vec![manifest::Tablespace { oid: 16384, location: "/srv/ts1".into() }],
        checksum_failures: vec![manifest::ChecksumFailure { path: "base/5/16390".into(), block: 3 }],
        chunks: vec![chunk_ref(4), ChunkRef::UNKNOWN, chunk_ref(5)],
        file_lists: vec![chunk_ref(6)],
    }
}

fn file_list() -> FileList {
    let file = |path: &str, kind| FileEntry {
        path: path.into(),
        kind,
        mode: 0o600,
        uid: 26,
        gid: 26,
        mtime: 1_796_000_000,
        size: 16384,
        link_target: if kind == FileKind::Symlink { "/srv/ts1".into() } else { String::new() },
        pieces: vec![Piece { chunk: 0, offset: 0, len: 8192 }, Piece { chunk: ZERO_CHUNK, offset: 0, len: 8192 }],
        page_hashes: vec![0x1234_5678_9abc_def0, 0],
    };
    FileList {
        version: FORMAT_VERSION,
        files: vec![
            file("base/5/16390", FileKind::File),
            file("base/5", FileKind::Directory),
            file("pg_tblspc/16384", FileKind::Symlink),
        ],
    }
}

fn backup_request() -> BackupRequest {
    BackupRequest {
        version: FORMAT_VERSION,
        label: "20261125-010000I".into(),
        stanza: "main".into(),
        backup_type: BackupType::Incr,
        expect_system_id: 42,
        expect_pg_major: 15,
        compress_level: 3,
        reference: Some(backup_record("20261124-081500F", 1, 2)),
        checksum_all: false,
        resume: Some(checkpoint()),
    }
}

fn fetch_request() -> FetchRequest {
    FetchRequest { version: FORMAT_VERSION, reply: subjects::fetch_reply("job-1", 3), chunks: vec![chunk_ref(7), chunk_ref(8)] }
}

fn plain_chunk(data: Vec<u8>) -> Vec<u8> {
    let header = PlainChunk {
        version: FORMAT_VERSION,
        job: "job-1".into(),
        stanza: "main".into(),
        id: [5; 32],
        dedup: true,
        compress_level: 1,
        data_len: 0,
    };
    encode_plain_chunk(header, data)
}

fn upload_works() -> Vec<Vec<u8>> {
    let chunk = UploadWork::Chunk(SealedChunk {
        version: UPLOAD_WORK_VERSION,
        job: "job-1".into(),
        stanza: "main".into(),
        id: [5; 32],
        dedup: false,
        raw_len: 8192,
        sealed_len: 20,
    });
    let commit = UploadWork::CommitBackup(CommitBackup {
        version: UPLOAD_WORK_VERSION,
        job: "job-1".into(),
        stanza: "main".into(),
        packs: vec![[1; 16], [2; 16]],
        record: backup_record("20261124-081500F", 1, 2),
    });
    let wal = UploadWork::CommitWal(CommitWal {
        version: UPLOAD_WORK_VERSION,
        job: "push-1".into(),
        stanza: "main".into(),
        record: wal_record(Some(wal_summary())),
    });
    let partial = UploadWork::StreamedPartial(CommitWal {
        version: UPLOAD_WORK_VERSION,
        job: "stream-1".into(),
        stanza: "main".into(),
        record: wal_record(None),
    });
    let checkpoint = UploadWork::Checkpoint(CheckpointBackup {
        version: UPLOAD_WORK_VERSION,
        stanza: "main".into(),
        packs: vec![[3; 16]],
        checkpoint: checkpoint(),
    });
    vec![
        encode_upload(&chunk, vec![0xAB; 20]),
        encode_upload(&commit, Vec::new()),
        encode_upload(&wal, Vec::new()),
        encode_upload(&checkpoint, Vec::new()),
        encode_upload(&partial, Vec::new()),
    ]
}

fn events() -> Vec<Vec<u8>> {
    vec![
        encode(&JobEvent::Stored { chunks: vec![chunk_ref(1), chunk_ref(2)], written_bytes: 1 << 20 }),
        encode(&JobEvent::Committed),
        encode(&JobEvent::AlreadyArchived),
        encode(&JobEvent::Rejected("label taken".into())),
        encode(&FetchedChunk::Sealed { index: 3, bytes: vec![1; 50] }),
        encode(&FetchedChunk::Failed("pack missing".into())),
        encode(&BackupStatus::Started { start_lsn: 0x1000028, total_bytes: 1 << 30 }),
        encode(&BackupStatus::Progress { done_bytes: 1 << 29, total_bytes: 1 << 30 }),
        encode(&BackupStatus::Done(summary("20261124-081500F", 1_796_000_000, 1_796_000_100))),
        encode(&BackupStatus::Failed("the cluster went away".into())),
    ]
}

/// One valid encoding of every record and message type.
fn valid_encodings() -> Vec<Vec<u8>> {
    let mut all = vec![
        encode(&backup_record("20261124-081500F", 1_796_000_000, 1_796_000_100)),
        encode(&checkpoint()),
        encode(&wal_record(Some(wal_summary()))),
        encode(&wal_record(None)),
        encode(&WalRecordV2 { version: 2, name: "00000002.history".into(), size: 42, hash: [1; 32], chunks: vec![chunk_ref(1)] }),
        encode(&manifest_head()),
        encode(&file_list()),
        encode(&backup_request()),
        encode(&fetch_request()),
        plain_chunk(vec![0x42; 100]),
        plain_chunk(Vec::new()),
    ];
    all.extend(upload_works());
    all.extend(events());
    all
}

/// An archived value's size is bounded by its input: every element of its vectors and every byte of its
/// strings lies in the input (rkyv validates relative pointers against the buffer).
fn check_manifest_bounded(head: &ManifestHead, input: usize) -> Result<(), TestCaseError> {
    let elements = head.chunks.len() * std::mem::size_of::<ArchivedChunkRef>()
        + head.file_lists.len() * std::mem::size_of::<ArchivedChunkRef>()
        + head.references.iter().map(String::len).sum::<usize>()
        + head.backup_label.len()
        + head.tablespace_map.len();
    check!(elements <= input, "a manifest head of {input} bytes decoded to {elements} bytes of elements");
    Ok(())
}

/// Decodes `b` as a `T`, and when that succeeds checks the value encodes and decodes back to itself.
fn decodes_and_round_trips<T>(b: &[u8]) -> Result<Option<T>, TestCaseError>
where
    T: Versioned + std::fmt::Debug,
    T::Archived: for<'a> rkyv::bytecheck::CheckBytes<rkyv::api::high::HighValidator<'a, rkyv::rancor::BoxedError>>
        + rkyv::Portable
        + rkyv::Deserialize<T, rkyv::api::high::HighDeserializer<rkyv::rancor::Error>>,
    T: for<'a> rkyv::Serialize<rkyv::api::high::HighSerializer<Vec<u8>, rkyv::ser::allocator::ArenaHandle<'a>, rkyv::rancor::Error>>,
{
    match decode::<T>(b) {
        Ok(archived) => {
            let value: T = to_owned::<T>(archived);
            let again = encode(&value);
            let back: T = to_owned::<T>(decode::<T>(&again).map_err(|e| TestCaseError::fail(format!("re-encoded {}: {e}", T::WHAT)))?);
            check!(format!("{back:?}") == format!("{value:?}"), "{} does not round-trip", T::WHAT);
            Ok(Some(value))
        }
        Err(e) => {
            check!(!e.to_string().is_empty(), "empty error");
            Ok(None)
        }
    }
}

/// Every decoder on `b`; each accepted value is used as its readers use it.
fn every_decoder(b: &[u8]) -> Result<(), TestCaseError> {
    if let Some(r) = decodes_and_round_trips::<BackupRecord>(b)? {
        check!(r.manifest_chunks.len() * 64 <= b.len(), "backup record larger than its input");
        let _ = (r.summary.backup_type.as_str(), r.manifest_chunks.iter().filter(|c| c.is_unknown()).count());
    }
    decodes_and_round_trips::<BackupCheckpoint>(b)?;
    decodes_and_round_trips::<WalRecordV2>(b)?;
    if let Some(w) = decodes_and_round_trips::<WalRecord>(b)? {
        if let Some(s) = &w.summary {
            check!(s.xids.len() * 8 + s.head.len() + s.tail.len() <= b.len(), "WAL summary larger than its input");
            for xid in [0, 1, 700, 702, 900, u32::MAX] {
                let _ = s.has_xid(xid);
            }
        }
    }
    match decode_wal_record(b) {
        Ok(w) => check!(w.chunks.len() * 64 <= b.len(), "WAL record larger than its input"),
        Err(e) => drop(e.to_string()),
    }
    if let Some(head) = decodes_and_round_trips::<ManifestHead>(b)? {
        check_manifest_bounded(&head, b.len())?;
        let _ = head.packs().count();
    }
    if let Some(list) = decodes_and_round_trips::<FileList>(b)? {
        let pieces: usize = list.files.iter().map(|f| f.pieces.len() * 12 + f.page_hashes.len() * 8 + f.path.len()).sum();
        check!(pieces <= b.len(), "file list of {} bytes decoded to {pieces} bytes of pieces", b.len());
        let m = Manifest { head: manifest_head(), files: list.files };
        for f in &m.files {
            for p in &f.pieces {
                let _ = (p.is_zero(), m.chunk(p));
            }
        }
    }
    decodes_and_round_trips::<BackupRequest>(b)?;
    decodes_and_round_trips::<FetchRequest>(b)?;
    decodes_and_round_trips::<JobEvent>(b)?;
    decodes_and_round_trips::<FetchedChunk>(b)?;
    decodes_and_round_trips::<BackupStatus>(b)?;
    match decode_plain_chunk(b) {
        Ok((header, data)) => {
            check!(header.data_len.to_native() as usize == data.len(), "plain chunk data length");
            check!(data.len() + header.job.len() + header.stanza.len() <= b.len(), "plain chunk larger than its input");
        }
        Err(e) => drop(e.to_string()),
    }
    match decode_upload(b) {
        Ok((work, data)) => {
            check!(data.len() <= b.len(), "upload work larger than its input");
            let owned: UploadWork = to_owned::<UploadWork>(work);
            let _ = format!("{owned:?}");
        }
        Err(e) => drop(e.to_string()),
    }
    Ok(())
}

#[test]
fn fuzz_messages_random_bytes() {
    fuzz("messages/random", 512, bytes(600), |b| every_decoder(&b));
}

#[test]
fn fuzz_messages_mutated() {
    fuzz("messages/mutated", 512, mutated_any(valid_encodings()), |b| every_decoder(&b));
}

/// Mutations of a record read at any alignment: NATS hands payloads over at arbitrary offsets.
#[test]
fn fuzz_messages_mutated_unaligned() {
    let strategy = (mutated_any(valid_encodings()), 1..8usize);
    fuzz("messages/mutated-unaligned", 128, strategy, |(b, shift)| {
        let mut shifted = vec![0u8; shift];
        shifted.extend_from_slice(&b);
        every_decoder(&shifted[shift..])
    });
}

/// Valid records with arbitrary field values (extreme times and sizes, any text) decode to themselves.
#[test]
fn fuzz_records_round_trip() {
    let strategy = (any::<String>(), any::<i64>(), any::<i64>(), any::<u64>(), prop::collection::vec(any::<u32>(), 0..40));
    fuzz("messages/round-trip", 256, strategy, |(label, start, stop, size, xids)| {
        let mut record = backup_record(&label, start, stop);
        record.summary.database_bytes = size;
        let bytes = encode(&record);
        let back = to_owned::<BackupRecord>(decode::<BackupRecord>(&bytes).map_err(|e| TestCaseError::fail(e.to_string()))?);
        check!(format!("{back:?}") == format!("{record:?}"), "backup record does not round-trip");

        let mut summary = wal_summary();
        summary.xids = WalSummary::xid_runs(xids.clone());
        summary.first_time = start;
        summary.restore_points[0].name = label.clone();
        let wal = wal_record(Some(summary.clone()));
        let back = decode_wal_record(&encode(&wal)).map_err(|e| TestCaseError::fail(e.to_string()))?;
        check!(back.summary.as_ref() == Some(&summary), "WAL record does not round-trip");
        for x in xids {
            check!(summary.has_xid(x), "xid {x} lost in its runs");
        }
        Ok(())
    });
}

/// A WAL record of the previous layout, damaged, is read as one or refused, never as something else.
#[test]
fn fuzz_wal_record_v2_mutated() {
    let old = WalRecordV2 { version: 2, name: "000000010000000000000009".into(), size: 16 << 20, hash: [3; 32], chunks: (0..3).map(chunk_ref).collect() };
    fuzz("messages/wal-record-v2", 256, mutated(encode(&old)), |b| {
        if let Ok(w) = decode_wal_record(&b) {
            check!(w.version == WAL_RECORD_VERSION, "migrated record keeps version {}", w.version);
            check!(w.chunks.len() * 64 <= b.len(), "WAL record larger than its input");
        }
        Ok(())
    });
}

#[test]
fn valid_encodings_decode() {
    for (i, b) in valid_encodings().iter().enumerate() {
        let ok = decode::<BackupRecord>(b).is_ok()
            || decode::<BackupCheckpoint>(b).is_ok()
            || decode_wal_record(b).is_ok()
            || decode::<ManifestHead>(b).is_ok()
            || decode::<FileList>(b).is_ok()
            || decode::<BackupRequest>(b).is_ok()
            || decode::<FetchRequest>(b).is_ok()
            || decode::<JobEvent>(b).is_ok()
            || decode::<FetchedChunk>(b).is_ok()
            || decode::<BackupStatus>(b).is_ok()
            || decode_plain_chunk(b).is_ok()
            || decode_upload(b).is_ok();
        assert!(ok, "valid encoding {i} decodes as nothing");
    }
}
