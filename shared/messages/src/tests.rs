use super::*;

fn header(version: u16) -> PlainChunk {
    PlainChunk {
        version,
        job: "j".into(),
        stanza: "main".into(),
        id: [7; 32],
        dedup: true,
        compress_level: 1,
        data_len: 0,
    }
}

#[test]
fn plain_chunk_is_built_in_the_data_buffer_and_read_at_any_offset() {
    let mut data = Vec::with_capacity(10_000 + PLAIN_CHUNK_OVERHEAD + 16);
    data.resize(10_000, 42);
    let at = data.as_ptr();
    let bytes = encode_plain_chunk(header(FORMAT_VERSION), data);
    assert_eq!(bytes.as_ptr(), at, "the data must not move");
    for offset in 0..4 {
        let mut shifted = vec![0u8; offset];
        shifted.extend_from_slice(&bytes);
        let (h, d) = decode_plain_chunk(&shifted[offset..]).unwrap();
        assert_eq!((h.data_len.to_native(), d.len()), (10_000, 10_000));
        assert!(d.iter().all(|&b| b == 42));
        assert_eq!(h.stanza.as_str(), "main");
    }
}

#[test]
fn wrong_version_and_garbage_are_refused() {
    // A newer version in the header, and in the unframed form's own field.
    let mut archived = encode(&header(FORMAT_VERSION + 1));
    archived[6..8].copy_from_slice(&(FORMAT_VERSION + 1).to_le_bytes());
    let e = decode::<PlainChunk>(&archived).err().unwrap();
    assert_eq!(e, DecodeError::TooNew { what: "plain chunk", found: 3, newest: 2 });
    assert_eq!(e.to_string(), "plain chunk has format version 3, this build reads up to 2");
    let unframed = encode_unframed(&header(FORMAT_VERSION + 1));
    assert!(matches!(decode::<PlainChunk>(&unframed), Err(DecodeError::TooNew { found: 3, .. })));
    let unframed = encode_unframed(&header(1));
    assert_eq!(decode::<PlainChunk>(&unframed).err().unwrap().to_string(), "plain chunk has format version 1, this build reads versions 2 to 2");
    // Header and archive disagreeing is damage.
    assert!(matches!(decode::<PlainChunk>(&encode(&header(1))), Err(DecodeError::Malformed { .. })));
    // Another kind, an unknown kind, nothing of Strata's.
    let request = FetchRequest { version: FORMAT_VERSION, reply: "r".into(), chunks: vec![] };
    let e = decode::<PlainChunk>(&encode(&request)).err().unwrap();
    assert_eq!(e.to_string(), "not a Strata plain chunk: it is a Strata fetch request");
    let mut unknown = encode(&request);
    unknown[4] = 200;
    assert!(matches!(decode::<FetchRequest>(&unknown), Err(DecodeError::UnknownKind { kind: 200, .. })));
    let e = decode::<BackupRecord>(b"{\"format\": 1}").err().unwrap().to_string();
    assert!(e.starts_with("not a Strata backup record (no format header"), "{e}");
    let bytes = encode_plain_chunk(header(FORMAT_VERSION + 1), vec![1, 2, 3]);
    assert!(matches!(decode_plain_chunk(&bytes), Err(DecodeError::Malformed { .. })));
    let bytes = encode_plain_chunk(header(FORMAT_VERSION), vec![1, 2, 3]);
    assert!(decode_plain_chunk(&bytes).is_ok());
    for cut in [0, 2, 5, bytes.len() / 2, bytes.len() - 1] {
        assert!(decode_plain_chunk(&bytes[..cut]).is_err(), "cut at {cut}");
        assert!(decode_plain_chunk(&bytes[cut..]).is_err() || cut == 0, "cut at {cut}");
    }
}

/// rkyv finds an archive's root at its end and every pointer is relative, so code that holds a
/// validated buffer and reads it again unchecked (the collector's loaded manifest) finds the same
/// root in a framed buffer as in the archive alone.
#[test]
fn unchecked_access_finds_the_root_behind_the_header() {
    let list = manifest::FileList { version: FORMAT_VERSION, files: Vec::new() };
    let framed = encode(&list);
    decode::<manifest::FileList>(&framed).unwrap();
    // SAFETY: validated just above.
    let a = unsafe { rkyv::access_unchecked::<manifest::ArchivedFileList>(&framed) };
    assert_eq!(a.version.to_native(), FORMAT_VERSION);
    let b = unsafe { rkyv::access_unchecked::<manifest::ArchivedFileList>(&framed[format::HEADER_LEN..]) };
    assert!(std::ptr::eq(a, b));
}

#[test]
fn upload_work_carries_sealed_bytes_before_it() {
    let chunk = |sealed_len| {
        UploadWork::Chunk(SealedChunk {
            version: UPLOAD_WORK_VERSION,
            job: "j".into(),
            stanza: "main".into(),
            id: [7; 32],
            dedup: true,
            raw_len: 100,
            sealed_len,
        })
    };
    let bytes = encode_upload(&chunk(5), vec![9; 5]);
    let (work, sealed) = decode_upload(&bytes).unwrap();
    assert!(matches!(work, ArchivedUploadWork::Chunk(c) if c.raw_len.to_native() == 100));
    assert_eq!(sealed, &[9; 5]);
    // The length in the header must match the bytes in front of it.
    assert!(decode_upload(&encode_upload(&chunk(4), vec![9; 5])).is_err());
    let commit = UploadWork::Checkpoint(CheckpointBackup {
        version: UPLOAD_WORK_VERSION,
        stanza: "main".into(),
        packs: Vec::new(),
        checkpoint: manifest::BackupCheckpoint {
            version: FORMAT_VERSION,
            label: "L".into(),
            attempt_start: 0,
            head_len: 0,
            head_chunks: Vec::new(),
        },
    });
    let bytes = encode_upload(&commit, Vec::new());
    let (work, data) = decode_upload(&bytes).unwrap();
    assert!(matches!(work, ArchivedUploadWork::Checkpoint(_)) && data.is_empty());
    assert!(decode_upload(&encode_upload(&commit, vec![1])).is_err());
}
