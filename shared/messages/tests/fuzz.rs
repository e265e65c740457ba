//! Every decoder of this crate (records, manifests, bus messages) against random bytes and mutations of
//! valid encodings: it returns a value or an error, never panics, and what it accepts is bounded by the
//! input and encodes back to itself. Cases per target: `PROPTEST_CASES` (see `strata-fuzzkit`).

use strata_fuzzkit::proptest::prelude::*;
use strata_fuzzkit::{bytes, check, fuzz, mutated, mutated_any};
use strata_messages::*;

mod fixtures;
use fixtures::*;

fn plain_chunk(data: Vec<u8>) -> Vec<u8> {
    encode_plain_chunk(plain_chunk_header(), data)
}

fn upload_works() -> Vec<Vec<u8>> {
    let (chunk, commit) = (sealed_chunk(), commit_backup());
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
        encode(&wal_record_v2()),
        encode(&manifest_head()),
        encode(&file_list()),
        encode(&backup_request()),
        encode(&fetch_request()),
        plain_chunk(vec![0x42; 100]),
        plain_chunk(Vec::new()),
    ];
    all.extend(upload_works());
    all.extend(events());
    all.extend(unframed_encodings());
    all
}

/// The unframed form builds before the format header wrote, still read (the first step of every chain).
fn unframed_encodings() -> Vec<Vec<u8>> {
    vec![
        encode_unframed(&backup_record("20261124-081500F", 1_796_000_000, 1_796_000_100)),
        encode_unframed(&checkpoint()),
        encode_unframed(&wal_record(Some(wal_summary()))),
        encode_unframed(&wal_record_v2()),
        encode_unframed(&manifest_head()),
        encode_unframed(&file_list()),
        encode_unframed(&backup_request()),
        encode_unframed(&fetch_request()),
        encode_unframed(&JobEvent::Stored { chunks: vec![chunk_ref(1)], written_bytes: 1 }),
        unframed_message(vec![0x42; 100], &encode_unframed(&PlainChunk { data_len: 100, ..plain_chunk_header() })),
        unframed_message(vec![0xAB; 20], &encode_unframed(&sealed_chunk())),
    ]
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

/// Random archives behind a valid format header of any kind and version: the header gets past the magic
/// check, so the decoders meet random bytes where they expect an archive.
#[test]
fn fuzz_messages_random_behind_a_header() {
    let strategy = (0..format::Kind::ALL.len(), 0u16..5, bytes(400));
    fuzz("messages/random-behind-header", 256, strategy, |(kind, version, archive)| {
        let mut b = format::Header::bytes(format::Kind::ALL[kind], version).to_vec();
        b.extend_from_slice(&archive);
        every_decoder(&b)
    });
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
