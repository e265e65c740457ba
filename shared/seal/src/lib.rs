//! The chunk envelope: how a plain chunk becomes the bytes stored in a pack, and back.
//!
//! A sealed chunk is a fixed 8-byte header followed by the body:
//!
//! ```text
//! byte 0    envelope version (1)
//! byte 1    compression: 0 none, 1 zstd
//! byte 2    cipher: 0 none (the only one until repository encryption lands)
//! byte 3    reserved, 0
//! bytes 4-7 plain length, u32 little-endian
//! ```
//!
//! Sealing compresses, then (once a [`KeyProvider`] supplies keys) encrypts; a chunk that zstd cannot shrink
//! is stored uncompressed. Unsealing checks the plain length and the content address ([`chunk_id`]), so a
//! corrupt or misplaced chunk is detected before anything is written from it.
//!
//! The content address lives here, not in the collector, because encryption will turn it into a keyed hash
//! (identical plaintexts in two repositories with different keys must not get the same id).

const ENVELOPE_VERSION: u8 = 1;
const HEADER_LEN: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None = 0,
    Zstd = 1,
}

/// Where data keys come from. Repository encryption (KMS or passphrase) implements this; until then the
/// only provider is [`NoEncryption`], which seals with cipher 0 and says so in every envelope.
pub trait KeyProvider: Send + Sync {
    /// A short name for messages and `info` ("none", "kms:...").
    fn describe(&self) -> String;
}

/// Chunks are stored compressed but not encrypted.
#[derive(Debug, Default, Clone, Copy)]
pub struct NoEncryption;

impl KeyProvider for NoEncryption {
    fn describe(&self) -> String {
        "none".into()
    }
}

#[derive(Debug, thiserror::Error)]
pub enum SealError {
    #[error("sealed chunk is truncated ({len} bytes)")]
    Truncated { len: usize },
    #[error("sealed chunk has envelope version {0}, this build reads version 1")]
    Version(u8),
    #[error("sealed chunk uses unknown compression {0}")]
    UnknownCompression(u8),
    #[error("sealed chunk is encrypted with cipher {0}, but no key provider for it is configured")]
    UnknownCipher(u8),
    #[error("sealed chunk does not decompress: {0}")]
    Decompress(std::io::Error),
    #[error("chunk content does not match its id {expected} (got {actual})")]
    HashMismatch { expected: String, actual: String },
    #[error("chunk is {actual} bytes, its header says {expected}")]
    LengthMismatch { expected: usize, actual: usize },
}

/// The most bytes sealing `plain_len` bytes can produce.
pub fn sealed_bound(plain_len: usize) -> usize {
    HEADER_LEN + zstd::zstd_safe::compress_bound(plain_len).max(plain_len)
}

/// The content address of a plain chunk.
pub fn chunk_id(plain: &[u8]) -> [u8; 32] {
    *blake3::hash(plain).as_bytes()
}

/// Seals and unseals chunks with one compression level and key provider.
#[derive(Clone)]
pub struct Sealer<K: KeyProvider = NoEncryption> {
    keys: K,
}

impl Default for Sealer<NoEncryption> {
    fn default() -> Self {
        Sealer { keys: NoEncryption }
    }
}

impl<K: KeyProvider> Sealer<K> {
    pub fn new(keys: K) -> Self {
        Sealer { keys }
    }

    pub fn keys(&self) -> &K {
        &self.keys
    }

    /// Seals `plain` with zstd at `level` (0 or below: no compression).
    pub fn seal(&self, plain: &[u8], level: i32) -> Vec<u8> {
        let mut out = Vec::with_capacity(sealed_bound(plain.len()));
        self.seal_into(plain, level, &mut out);
        out
    }

    /// [`Sealer::seal`] appended to `out`, which should have [`sealed_bound`] bytes spare so it does not
    /// grow: a message can then be built around the sealed bytes without copying them. Returns the sealed
    /// length.
    pub fn seal_into(&self, plain: &[u8], level: i32, out: &mut Vec<u8>) -> usize {
        let start = out.len();
        out.reserve(sealed_bound(plain.len()));
        out.extend_from_slice(&[ENVELOPE_VERSION, Compression::Zstd as u8, 0, 0]);
        out.extend_from_slice(&(plain.len() as u32).to_le_bytes());
        let compressed = level > 0 && {
            // Writing straight after the header avoids a second copy of the body.
            let mut cursor = std::io::Cursor::new(std::mem::take(out));
            cursor.set_position((start + HEADER_LEN) as u64);
            let ok = with_compressor(level, |c| c.compress_to_buffer(plain, &mut cursor).is_ok());
            *out = cursor.into_inner();
            ok
        };
        if !compressed || out.len() - start >= HEADER_LEN + plain.len() {
            out.truncate(start + HEADER_LEN);
            out[start + 1] = Compression::None as u8;
            out.extend_from_slice(plain);
        }
        out.len() - start
    }

    /// Opens a sealed chunk and checks it is the chunk `expected_id` names.
    pub fn unseal(&self, sealed: &[u8], expected_id: &[u8; 32]) -> Result<Vec<u8>, SealError> {
        let mut out = Vec::new();
        self.unseal_into(sealed, expected_id, &mut out)?;
        Ok(out)
    }

    /// [`Sealer::unseal`] into a caller's buffer (replacing its contents), so a restore reuses one
    /// allocation per worker instead of faulting in fresh pages for every chunk.
    pub fn unseal_into(&self, sealed: &[u8], expected_id: &[u8; 32], out: &mut Vec<u8>) -> Result<(), SealError> {
        let (raw_len, compression, body) = open_envelope(sealed)?;
        out.clear();
        out.reserve(raw_len);
        match compression {
            0 => out.extend_from_slice(body),
            _ => {
                with_decompressor(|d| d.decompress_to_buffer(body, &mut *out))?;
            }
        }
        check_plain(out, raw_len, expected_id)
    }

    /// [`Sealer::unseal`] into the start of `out` (which must be large enough for the chunk); the
    /// chunk's length. For buffers a `Vec` cannot be, such as the aligned ones direct I/O needs.
    pub fn unseal_into_slice(&self, sealed: &[u8], expected_id: &[u8; 32], out: &mut [u8]) -> Result<usize, SealError> {
        let (raw_len, compression, body) = open_envelope(sealed)?;
        if out.len() < raw_len {
            return Err(SealError::LengthMismatch { expected: raw_len, actual: out.len() });
        }
        let len = match compression {
            0 if body.len() == raw_len => {
                out[..raw_len].copy_from_slice(body);
                raw_len
            }
            0 => body.len(),
            _ => with_decompressor(|d| d.decompress_to_buffer(body, &mut out[..raw_len]))?,
        };
        if len != raw_len {
            return Err(SealError::LengthMismatch { expected: raw_len, actual: len });
        }
        check_plain(&out[..raw_len], raw_len, expected_id)?;
        Ok(raw_len)
    }
}

/// Checks a sealed chunk's header; its plain length, compression and body.
fn open_envelope(sealed: &[u8]) -> Result<(usize, u8, &[u8]), SealError> {
    if sealed.len() < HEADER_LEN {
        return Err(SealError::Truncated { len: sealed.len() });
    }
    if sealed[0] != ENVELOPE_VERSION {
        return Err(SealError::Version(sealed[0]));
    }
    if sealed[2] != 0 {
        return Err(SealError::UnknownCipher(sealed[2]));
    }
    match sealed[1] {
        0 | 1 => {}
        other => return Err(SealError::UnknownCompression(other)),
    }
    let raw_len = u32::from_le_bytes(sealed[4..8].try_into().expect("4 bytes")) as usize;
    Ok((raw_len, sealed[1], &sealed[HEADER_LEN..]))
}

/// Runs `f` with this thread's decompressor.
fn with_decompressor(
    f: impl FnOnce(&mut zstd::bulk::Decompressor<'static>) -> std::io::Result<usize>,
) -> Result<usize, SealError> {
    DECOMPRESSOR.with(|d| {
        let mut d = d.borrow_mut();
        if d.is_none() {
            *d = Some(zstd::bulk::Decompressor::new().map_err(SealError::Decompress)?);
        }
        f(d.as_mut().expect("created above")).map_err(SealError::Decompress)
    })
}

/// Checks an unsealed chunk's length and content address.
fn check_plain(plain: &[u8], raw_len: usize, expected_id: &[u8; 32]) -> Result<(), SealError> {
    if plain.len() != raw_len {
        return Err(SealError::LengthMismatch { expected: raw_len, actual: plain.len() });
    }
    let actual = chunk_id(plain);
    if &actual != expected_id {
        return Err(SealError::HashMismatch { expected: hex(expected_id), actual: hex(&actual) });
    }
    Ok(())
}

// zstd contexts are kept per thread and reused: creating one per chunk allocated and cleared its tables
// (megabytes at level 1) every time, which showed up as page faults and memset in profiles.
thread_local! {
    static COMPRESSOR: std::cell::RefCell<Option<(i32, zstd::bulk::Compressor<'static>)>> =
        const { std::cell::RefCell::new(None) };
    static DECOMPRESSOR: std::cell::RefCell<Option<zstd::bulk::Decompressor<'static>>> =
        const { std::cell::RefCell::new(None) };
}

/// The fast levels (up to this one) compress with a hash table of 2^[`FAST_HASH_LOG`] entries instead of
/// zstd's default for their input size. Measured on 1 MiB chunks (`shared/seal/examples/zstd_params.rs`): the OLTP
/// mix's heap compresses 17% faster (401 -> 463 MB/s on one core) for 0.8% more output, pgbench's at the
/// same speed for 0.9% more; a table that fits the core's cache beats the few matches it loses.
const FAST_LEVEL_MAX: i32 = 1;
const FAST_HASH_LOG: u32 = 12;

/// Runs `f` with this thread's compressor at `level`; `false` if none can be made.
fn with_compressor(level: i32, f: impl FnOnce(&mut zstd::bulk::Compressor<'static>) -> bool) -> bool {
    COMPRESSOR.with(|c| {
        let mut c = c.borrow_mut();
        if c.as_ref().map(|(l, _)| *l) != Some(level) {
            let made = zstd::bulk::Compressor::new(level).and_then(|mut new| {
                if level <= FAST_LEVEL_MAX {
                    new.set_parameter(zstd::zstd_safe::CParameter::HashLog(FAST_HASH_LOG))?;
                }
                Ok(new)
            });
            match made {
                Ok(new) => *c = Some((level, new)),
                Err(_) => return false,
            }
        }
        f(&mut c.as_mut().expect("created above").1)
    })
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_compressible_and_incompressible() {
        let s = Sealer::default();
        let text = b"strata ".repeat(10_000);
        let sealed = s.seal(&text, 1);
        assert!(sealed.len() < text.len() / 10);
        assert_eq!(s.unseal(&sealed, &chunk_id(&text)).unwrap(), text);

        let mut noise = vec![0u8; 50_000];
        blake3::Hasher::new().update(b"seed").finalize_xof().fill(&mut noise);
        let sealed = s.seal(&noise, 3);
        assert_eq!(sealed[1], Compression::None as u8);
        assert_eq!(s.unseal(&sealed, &chunk_id(&noise)).unwrap(), noise);
    }

    #[test]
    fn seal_into_appends() {
        let s = Sealer::default();
        let text = b"strata ".repeat(10_000);
        let mut out = b"prefix".to_vec();
        let n = s.seal_into(&text, 1, &mut out);
        assert_eq!(&out[..6], b"prefix");
        assert_eq!(out.len(), 6 + n);
        assert_eq!(s.unseal(&out[6..], &chunk_id(&text)).unwrap(), text);
        let mut noise = vec![0u8; 5_000];
        blake3::Hasher::new().update(b"seed").finalize_xof().fill(&mut noise);
        let n = s.seal_into(&noise, 1, &mut out);
        assert_eq!(s.unseal(&out[out.len() - n..], &chunk_id(&noise)).unwrap(), noise);
    }

    #[test]
    fn unseal_into_a_slice() {
        let s = Sealer::default();
        let text = b"strata ".repeat(10_000);
        let mut noise = vec![0u8; 50_000];
        blake3::Hasher::new().update(b"seed").finalize_xof().fill(&mut noise);
        let mut out = vec![0xaau8; 80_000];
        for plain in [&text, &noise] {
            let sealed = s.seal(plain, 1);
            let n = s.unseal_into_slice(&sealed, &chunk_id(plain), &mut out).unwrap();
            assert_eq!(&out[..n], &plain[..]);
            assert!(matches!(
                s.unseal_into_slice(&sealed, &chunk_id(plain), &mut out[..n - 1]),
                Err(SealError::LengthMismatch { .. })
            ));
            assert!(matches!(s.unseal_into_slice(&sealed, &[0; 32], &mut out), Err(SealError::HashMismatch { .. })));
        }
    }

    #[test]
    fn corruption_is_detected() {
        let s = Sealer::default();
        let text = b"page".repeat(4096);
        let id = chunk_id(&text);
        let mut sealed = s.seal(&text, 1);
        let last = sealed.len() - 1;
        sealed[last] ^= 0xff;
        assert!(s.unseal(&sealed, &id).is_err());
        let sealed = s.seal(&text, 0);
        let mut flipped = sealed.clone();
        flipped[100] ^= 1;
        assert!(matches!(s.unseal(&flipped, &id), Err(SealError::HashMismatch { .. })));
        assert!(matches!(s.unseal(&sealed[..4], &id), Err(SealError::Truncated { .. })));
        assert!(matches!(s.unseal(&sealed, &[0; 32]), Err(SealError::HashMismatch { .. })));
    }
}
