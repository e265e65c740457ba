//! The checked-in sample of every format of this crate (`testdata/`), read back field by field.
//!
//! `testdata/<kind>.v<N>.bin` is version N framed, as this build writes it; `testdata/legacy/` holds the
//! unframed form builds before the format header wrote. Samples are never rewritten: a layout change bumps
//! the version and adds new samples (`STRATA_WRITE_SAMPLES=1 cargo test -p strata-messages --test samples`
//! writes the missing ones), and the old ones must go on reading through the migration chain.

use std::path::PathBuf;
use strata_messages::*;

mod fixtures;
use fixtures::*;

fn plain_data() -> Vec<u8> {
    vec![0x42; 100]
}

fn sealed_data() -> Vec<u8> {
    vec![0xAB; 20]
}

fn job_event() -> JobEvent {
    JobEvent::Stored { chunks: vec![chunk_ref(1), chunk_ref(2)], written_bytes: 1 << 20 }
}

fn fetched_chunk() -> FetchedChunk {
    FetchedChunk::Sealed { index: 3, bytes: vec![1; 50] }
}

fn backup_status() -> BackupStatus {
    BackupStatus::Done(summary("20261124-081500F", 1_796_000_000, 1_796_000_100))
}

fn record() -> BackupRecord {
    backup_record("20261124-081500F", 1_796_000_000, 1_796_000_100)
}

/// Every current format: its sample's file name and the bytes this build writes for the fixture.
fn current() -> Vec<(String, Vec<u8>)> {
    let v = FORMAT_VERSION;
    vec![
        (format!("plain-chunk.v{v}.bin"), encode_plain_chunk(plain_chunk_header(), plain_data())),
        (format!("upload-work.v{UPLOAD_WORK_VERSION}.bin"), encode_upload(&sealed_chunk(), sealed_data())),
        (format!("job-event.v{v}.bin"), encode(&job_event())),
        (format!("backup-request.v{v}.bin"), encode(&backup_request())),
        (format!("fetch-request.v{v}.bin"), encode(&fetch_request())),
        (format!("fetched-chunk.v{v}.bin"), encode(&fetched_chunk())),
        (format!("backup-status.v{v}.bin"), encode(&backup_status())),
        (format!("backup-record.v{v}.bin"), encode(&record())),
        (format!("wal-record.v{WAL_RECORD_VERSION}.bin"), encode(&wal_record(Some(wal_summary())))),
        (format!("backup-checkpoint.v{v}.bin"), encode(&checkpoint())),
        (format!("manifest-head.v{v}.bin"), encode(&manifest_head())),
        (format!("file-list.v{v}.bin"), encode(&file_list())),
    ]
}

/// The unframed form of every format as the last build before the header wrote it.
fn legacy() -> Vec<(String, Vec<u8>)> {
    let plain = PlainChunk { data_len: 100, ..plain_chunk_header() };
    vec![
        ("legacy/plain-chunk.v2.bin".into(), unframed_message(plain_data(), &encode_unframed(&plain))),
        ("legacy/upload-work.v3.bin".into(), unframed_message(sealed_data(), &encode_unframed(&sealed_chunk()))),
        ("legacy/job-event.bin".into(), encode_unframed(&job_event())),
        ("legacy/backup-request.v2.bin".into(), encode_unframed(&backup_request())),
        ("legacy/fetch-request.v2.bin".into(), encode_unframed(&fetch_request())),
        ("legacy/fetched-chunk.bin".into(), encode_unframed(&fetched_chunk())),
        ("legacy/backup-status.bin".into(), encode_unframed(&backup_status())),
        ("legacy/backup-record.v2.bin".into(), encode_unframed(&record())),
        ("legacy/wal-record.v3.bin".into(), encode_unframed(&wal_record(Some(wal_summary())))),
        ("legacy/wal-record.v2.bin".into(), encode_unframed(&wal_record_v2())),
        ("legacy/backup-checkpoint.v2.bin".into(), encode_unframed(&checkpoint())),
        ("legacy/manifest-head.v2.bin".into(), encode_unframed(&manifest_head())),
        ("legacy/file-list.v2.bin".into(), encode_unframed(&file_list())),
    ]
}

fn path(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("testdata").join(name)
}

/// A sample's bytes; with `STRATA_WRITE_SAMPLES=1`, a missing sample is written first (never replaced).
fn sample(name: &str, expected: &[u8]) -> Vec<u8> {
    let p = path(name);
    if !p.exists() && std::env::var_os("STRATA_WRITE_SAMPLES").is_some() {
        std::fs::create_dir_all(p.parent().unwrap()).unwrap();
        std::fs::write(&p, expected).unwrap();
    }
    std::fs::read(&p).unwrap_or_else(|e| panic!("sample {} ({e}); see this file's docs", p.display()))
}

/// The archived part of a sample: the whole sample, but for the two messages that carry a chunk's bytes in
/// front of their archive (and its length after it).
fn archive_part<'a>(name: &str, bytes: &'a [u8]) -> &'a [u8] {
    if !name.contains("plain-chunk") && !name.contains("upload-work") {
        return bytes;
    }
    let n = bytes.len();
    let len = u32::from_le_bytes(bytes[n - 4..].try_into().unwrap()) as usize;
    &bytes[n - 4 - len..n - 4]
}

fn fail<T>(name: &str, e: DecodeError) -> T {
    panic!("sample {name}: {e}")
}

fn same<T: std::fmt::Debug>(what: &str, found: &T, expected: &T) {
    assert_eq!(format!("{found:?}"), format!("{expected:?}"), "{what}");
}

/// Reads `bytes` as the format named `name` (its file name's stem) and checks every field against the
/// fixture it was written from. Returns the value written again by this build (read old, write new).
fn read_and_check(name: &str, bytes: &[u8]) -> Vec<u8> {
    let kind = name.trim_start_matches("legacy/").split('.').next().unwrap();
    match kind {
        "plain-chunk" => {
            let (h, data) = decode_plain_chunk(bytes).unwrap_or_else(|e| fail(name, e));
            assert_eq!(
                (h.version.to_native(), h.job.as_str(), h.stanza.as_str(), h.id, h.dedup, h.compress_level, h.data_len.to_native()),
                (FORMAT_VERSION, "job-1", "main", [5; 32], true, 1, 100)
            );
            assert_eq!(data, plain_data());
            encode_plain_chunk(to_owned::<PlainChunk>(h), data.to_vec())
        }
        "upload-work" => {
            let (work, data) = decode_upload(bytes).unwrap_or_else(|e| fail(name, e));
            let ArchivedUploadWork::Chunk(c) = work else { panic!("sample {name}: not a chunk") };
            assert_eq!((c.version.to_native(), c.job.as_str(), c.raw_len.to_native(), c.sealed_len.to_native()), (3, "job-1", 8192, 20));
            assert_eq!(data, sealed_data());
            let work = to_owned::<UploadWork>(work);
            same(name, &work, &sealed_chunk());
            encode_upload(&work, data.to_vec())
        }
        "job-event" => {
            let e = to_owned::<JobEvent>(decode::<JobEvent>(bytes).unwrap_or_else(|e| fail(name, e)));
            assert!(matches!(&e, JobEvent::Stored { chunks, written_bytes: 1048576 } if chunks[1] == chunk_ref(2)));
            same(name, &e, &job_event());
            encode(&e)
        }
        "backup-request" => {
            let r = to_owned::<BackupRequest>(decode::<BackupRequest>(bytes).unwrap_or_else(|e| fail(name, e)));
            assert_eq!((r.label.as_str(), r.stanza.as_str(), r.expect_system_id, r.compress_level), ("20261125-010000I", "main", 42, 3));
            assert_eq!(r.resume.as_ref().map(|c| c.head_len), Some(1234));
            same(name, &r, &backup_request());
            encode(&r)
        }
        "fetch-request" => {
            let r = to_owned::<FetchRequest>(decode::<FetchRequest>(bytes).unwrap_or_else(|e| fail(name, e)));
            assert_eq!(r.chunks, vec![chunk_ref(7), chunk_ref(8)]);
            same(name, &r, &fetch_request());
            encode(&r)
        }
        "fetched-chunk" => {
            let f = to_owned::<FetchedChunk>(decode::<FetchedChunk>(bytes).unwrap_or_else(|e| fail(name, e)));
            assert!(matches!(&f, FetchedChunk::Sealed { index: 3, bytes } if bytes == &[1; 50]));
            encode(&f)
        }
        "backup-status" => {
            let s = to_owned::<BackupStatus>(decode::<BackupStatus>(bytes).unwrap_or_else(|e| fail(name, e)));
            assert!(matches!(&s, BackupStatus::Done(sum) if sum == &summary("20261124-081500F", 1_796_000_000, 1_796_000_100)));
            encode(&s)
        }
        "backup-record" => {
            let r = to_owned::<BackupRecord>(decode::<BackupRecord>(bytes).unwrap_or_else(|e| fail(name, e)));
            assert_eq!(r.summary, record().summary);
            assert_eq!((r.version, r.manifest_len, r.manifest_chunks.clone()), (2, 300, vec![chunk_ref(1), chunk_ref(2)]));
            encode(&r)
        }
        "wal-record" => {
            let w = decode_wal_record(bytes).unwrap_or_else(|e| fail(name, e));
            assert_eq!(w.version, WAL_RECORD_VERSION, "read old, get the current version");
            if name.ends_with(".v2.bin") {
                let old = wal_record_v2();
                assert_eq!((&w.name, w.size, w.hash, &w.chunks, &w.summary), (&old.name, old.size, old.hash, &old.chunks, &None));
            } else {
                same(name, &w, &wal_record(Some(wal_summary())));
                assert_eq!(w.summary.as_ref().map(|s| s.has_xid(701)), Some(true));
            }
            encode(&w)
        }
        "backup-checkpoint" => {
            let c = to_owned::<BackupCheckpoint>(decode::<BackupCheckpoint>(bytes).unwrap_or_else(|e| fail(name, e)));
            assert_eq!((c.label.as_str(), c.attempt_start, c.head_len), ("20261124-081500F_20261125-010000I", 1_796_000_000, 1234));
            assert!(c.head_chunks[1].is_unknown());
            same(name, &c, &checkpoint());
            encode(&c)
        }
        "manifest-head" => {
            let h = to_owned::<ManifestHead>(decode::<ManifestHead>(bytes).unwrap_or_else(|e| fail(name, e)));
            assert_eq!(h.summary, manifest_head().summary);
            assert_eq!(h.packs().count(), 3);
            assert_eq!(h.tablespaces[0].location, "/srv/ts1");
            same(name, &h, &manifest_head());
            encode(&h)
        }
        "file-list" => {
            let l = to_owned::<FileList>(decode::<FileList>(bytes).unwrap_or_else(|e| fail(name, e)));
            assert_eq!(l.files.iter().map(|f| (f.path.as_str(), f.kind)).collect::<Vec<_>>(), [
                ("base/5/16390", FileKind::File),
                ("base/5", FileKind::Directory),
                ("pg_tblspc/16384", FileKind::Symlink)
            ]);
            assert!(l.files[0].pieces[1].is_zero());
            same(name, &l, &file_list());
            encode(&l)
        }
        other => panic!("no reader for sample kind {other}"),
    }
}

/// Every current sample reads back field by field, and is what this build writes: a layout that changed
/// without a new version fails here.
#[test]
fn current_samples_read_and_are_what_this_build_writes() {
    for (name, expected) in current() {
        let bytes = sample(&name, &expected);
        assert!(archive_part(&name, &bytes).starts_with(&format::MAGIC), "{name} is framed");
        assert_eq!(read_and_check(&name, &bytes), bytes, "{name} written again");
        assert!(bytes == expected, "{name}: this build writes other bytes for the same value; a layout change needs a new version");
    }
}

/// The unframed samples of older builds read as the same values, and are written again in the current
/// framed form (read old, write new).
#[test]
fn legacy_samples_migrate_to_the_current_format() {
    let current = current();
    for (name, expected) in legacy() {
        let bytes = sample(&name, &expected);
        assert!(!archive_part(&name, &bytes).starts_with(&format::MAGIC), "{name} is unframed");
        let written = read_and_check(&name, &bytes);
        let kind = name.trim_start_matches("legacy/").split('.').next().unwrap();
        if name != "legacy/wal-record.v2.bin" {
            let (_, now) = current.iter().find(|(n, _)| n.split('.').next() == Some(kind)).unwrap();
            assert!(&written == now, "{name} written again is not the current sample");
        }
        assert!(archive_part(&name, &written).starts_with(&format::MAGIC));
    }
}

/// Every file in testdata/ is a sample some test reads.
#[test]
fn no_stray_samples() {
    let known: Vec<String> = current().into_iter().chain(legacy()).map(|(n, _)| n).collect();
    for dir in ["", "legacy"] {
        for entry in std::fs::read_dir(path(dir)).unwrap() {
            let entry = entry.unwrap();
            if entry.file_type().unwrap().is_file() {
                let name = if dir.is_empty() { entry.file_name().into_string().unwrap() } else { format!("{dir}/{}", entry.file_name().into_string().unwrap()) };
                assert!(known.contains(&name), "testdata/{name} is read by no test");
            }
        }
    }
}

/// Migration chain steps that no sample holds: a framed version-2 WAL record (no build wrote one, but the
/// chain reads it), and versions outside the chain.
#[test]
fn wal_record_chain_by_header() {
    let framed_v2 = encode(&wal_record_v2());
    assert_eq!(framed_v2[..8], format::Header::bytes(format::Kind::WalRecord, 2));
    let w = decode_wal_record(&framed_v2).unwrap();
    assert_eq!((w.version, w.name.as_str(), w.summary.is_none()), (WAL_RECORD_VERSION, "00000002.history", true));
    let mut newer = encode(&wal_record(None));
    newer[6..8].copy_from_slice(&4u16.to_le_bytes());
    assert_eq!(decode_wal_record(&newer).unwrap_err().to_string(), "wal record has format version 4, this build reads up to 3");
    newer[6..8].copy_from_slice(&1u16.to_le_bytes());
    assert_eq!(decode_wal_record(&newer).unwrap_err().to_string(), "wal record has format version 1, this build reads versions 2 to 3");
    let e = decode_wal_record(&encode(&record())).unwrap_err().to_string();
    assert_eq!(e, "not a Strata wal record: it is a Strata backup record");
}
