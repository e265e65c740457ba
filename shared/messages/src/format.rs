//! The frame in front of every rkyv archive Strata stores or sends.
//!
//! ```text
//! byte 0..4   magic 0xAB 'S' 'T' 'R'
//! byte 4      kind: which format follows ([`Kind`])
//! byte 5      0 (reserved)
//! byte 6..8   format version of that kind, u16 little-endian
//! byte 8..    the rkyv archive
//! ```
//!
//! The header is 8 bytes, so an archive keeps the alignment it would have at the header's place (the crate
//! is built with rkyv's `unaligned` feature anyway: NATS hands payloads over at any offset).
//!
//! The version selects the decoder: the current layout is validated in place ([`crate::decode`]), an older
//! one is read with the struct that describes it and converted forward, one `From` step per version (the
//! migration chain, see [`crate::decode_wal_record`]). Writing always writes the current version, framed.
//!
//! Bytes without the magic are the unframed form builds before the frame wrote: the archive alone, with its
//! version in its own `version` field (the WAL record's layouts told apart by which one validates). They
//! are read as the first step of the chain, so existing repositories and queued messages stay readable. A
//! legacy archive cannot be mistaken for a framed one: it would have to start with the 8 bytes above (its
//! strings are UTF-8, which never starts with 0xAB, and the chance for anything else is 2^-64).

/// The first four bytes of every framed archive.
pub const MAGIC: [u8; 4] = [0xAB, b'S', b'T', b'R'];

/// Length of the frame's header; the archive starts at this offset.
pub const HEADER_LEN: usize = 8;

/// Declares [`Kind`]: each variant's byte and the name errors call it by.
macro_rules! kinds {
    ($($(#[$doc:meta])* $kind:ident = $byte:literal, $name:literal;)*) => {
        /// Which format a frame holds. The byte values are part of the format: never reuse or renumber one.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u8)]
        pub enum Kind {
            $($(#[$doc])* $kind = $byte,)*
        }

        impl Kind {
            pub const ALL: &'static [Kind] = &[$(Kind::$kind),*];

            /// What errors call it.
            pub const fn name(self) -> &'static str {
                match self {
                    $(Kind::$kind => $name,)*
                }
            }
        }
    };
}

kinds! {
    // Wire messages between stages (NATS, or direct connections).
    PlainChunk = 1, "plain chunk";
    UploadWork = 2, "upload work";
    JobEvent = 3, "job event";
    BackupRequest = 4, "backup request";
    FetchRequest = 5, "fetch request";
    FetchedChunk = 6, "fetched chunk";
    BackupStatus = 7, "backup status";
    // Stored in the repository.
    BackupRecord = 16, "backup record";
    WalRecord = 17, "wal record";
    BackupCheckpoint = 18, "backup checkpoint";
    ManifestHead = 19, "manifest head";
    FileList = 20, "manifest file list";
}

impl Kind {
    pub fn from_byte(b: u8) -> Option<Kind> {
        Kind::ALL.iter().copied().find(|k| *k as u8 == b)
    }
}

/// A frame's header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// The kind byte as found (it may name a kind this build does not know).
    pub kind: u8,
    pub version: u16,
}

impl Header {
    pub fn bytes(kind: Kind, version: u16) -> [u8; HEADER_LEN] {
        let v = version.to_le_bytes();
        [MAGIC[0], MAGIC[1], MAGIC[2], MAGIC[3], kind as u8, 0, v[0], v[1]]
    }
}

/// What a buffer holds: a framed archive, or (no magic) the unframed form of older builds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Framed<'a> {
    Framed { header: Header, archive: &'a [u8] },
    Unframed(&'a [u8]),
}

/// Splits `bytes` at the frame's header. Starting with the magic but too short for a header, or with a
/// reserved byte set, is an error (the reason).
pub fn split(bytes: &[u8]) -> Result<Framed<'_>, &'static str> {
    if !bytes.starts_with(&MAGIC) {
        return Ok(Framed::Unframed(bytes));
    }
    if bytes.len() < HEADER_LEN {
        return Err("too short for its format header");
    }
    if bytes[5] != 0 {
        return Err("reserved byte of the format header is set");
    }
    let header = Header { kind: bytes[4], version: u16::from_le_bytes([bytes[6], bytes[7]]) };
    Ok(Framed::Framed { header, archive: &bytes[HEADER_LEN..] })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kinds_are_distinct_and_round_trip() {
        for &k in Kind::ALL {
            assert_eq!(Kind::from_byte(k as u8), Some(k));
        }
        let mut bytes: Vec<u8> = Kind::ALL.iter().map(|k| *k as u8).collect();
        bytes.dedup();
        assert_eq!(bytes.len(), Kind::ALL.len());
        assert_eq!(Kind::from_byte(0), None);
    }

    #[test]
    fn header_splits() {
        let mut b = Header::bytes(Kind::WalRecord, 0x0103).to_vec();
        assert_eq!(&b[..], &[0xAB, b'S', b'T', b'R', 17, 0, 3, 1]);
        b.extend_from_slice(b"xyz");
        assert_eq!(
            split(&b),
            Ok(Framed::Framed { header: Header { kind: 17, version: 0x0103 }, archive: b"xyz" })
        );
        assert_eq!(split(b"plain"), Ok(Framed::Unframed(b"plain")));
        assert!(split(&b[..7]).is_err());
        b[5] = 1;
        assert!(split(&b).is_err());
    }
}
