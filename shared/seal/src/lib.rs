//! The chunk envelope: how a plain chunk becomes the bytes stored in a pack, and back.
//!
//! A sealed chunk is a fixed 8-byte header followed by the body:
//!
//! ```text
//! byte 0    envelope version (1)
//! byte 1    compression: 0 none, 1 zstd
//! byte 2    cipher: 0 none, 1 AES-256-GCM
//! byte 3    reserved, 0
//! bytes 4-7 plain length, u32 little-endian
//! ```
//!
//! With cipher 1 the body is a 12-byte random nonce, the encrypted (compressed) bytes and the 16-byte GCM
//! tag; the 8 header bytes are the associated data, so no header field can be changed unnoticed.
//!
//! Sealing compresses, then, with a [`ChunkCipher`], encrypts; a chunk that zstd cannot shrink is stored
//! uncompressed. Unsealing checks the tag, the plain length and the content address ([`Sealer::chunk_id`]),
//! so a corrupt or misplaced chunk is detected before anything is written from it.
//!
//! The content address lives here, not in the collector, because encryption turns it into a keyed hash:
//! identical plaintexts in two repositories with different keys must not get the same id, or the ids
//! would tell which chunks two encrypted repositories have in common.

pub mod page_hash;

const ENVELOPE_VERSION: u8 = 1;
const HEADER_LEN: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    None = 0,
    Zstd = 1,
}

const CIPHER_NONE: u8 = 0;
const CIPHER_AES256_GCM: u8 = 1;
const NONCE_LEN: usize = 12;
const TAG_LEN: usize = 16;

/// The keys a repository's data key gives: one for AES-256-GCM, one for the keyed hash that names chunks.
/// Both are derived from the data key (BLAKE3 `derive_key` with distinct contexts), so the one stored
/// secret serves both and neither key reveals the other.
pub struct ChunkCipher {
    aead: aws_lc_rs::aead::LessSafeKey,
    id_key: [u8; 32],
}

impl ChunkCipher {
    pub fn new(data_key: &[u8; 32]) -> ChunkCipher {
        let mut enc = blake3::derive_key("strata 2026 chunk cipher AES-256-GCM", data_key);
        let id_key = blake3::derive_key("strata 2026 chunk id keyed BLAKE3", data_key);
        let unbound = aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, &enc).expect("32-byte key");
        enc.fill(0);
        ChunkCipher { aead: aws_lc_rs::aead::LessSafeKey::new(unbound), id_key }
    }
}

impl Drop for ChunkCipher {
    fn drop(&mut self) {
        self.id_key.fill(0);
    }
}

impl std::fmt::Debug for ChunkCipher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ChunkCipher(AES-256-GCM)")
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
    #[error("sealed chunk uses unknown cipher {0}")]
    UnknownCipher(u8),
    #[error("sealed chunk is encrypted, but no encryption key is configured")]
    NoKey,
    #[error("sealed chunk does not decrypt with the repository's key (wrong key, or the chunk is corrupt)")]
    Decrypt,
    #[error("sealed chunk does not decompress: {0}")]
    Decompress(std::io::Error),
    #[error("chunk content does not match its id {expected} (got {actual})")]
    HashMismatch { expected: String, actual: String },
    #[error("chunk is {actual} bytes, its header says {expected}")]
    LengthMismatch { expected: usize, actual: usize },
}

/// The most bytes sealing `plain_len` bytes can produce.
pub fn sealed_bound(plain_len: usize) -> usize {
    HEADER_LEN + NONCE_LEN + TAG_LEN + zstd::zstd_safe::compress_bound(plain_len).max(plain_len)
}

/// The content address of a plain chunk in an unencrypted repository ([`Sealer::chunk_id`] in general).
pub fn chunk_id(plain: &[u8]) -> [u8; 32] {
    *blake3::hash(plain).as_bytes()
}

/// Seals and unseals chunks: compression always, encryption when the repository has a key.
#[derive(Clone, Default, Debug)]
pub struct Sealer {
    cipher: Option<std::sync::Arc<ChunkCipher>>,
}

impl Sealer {
    /// A sealer that encrypts with `cipher` and names chunks with its keyed hash.
    pub fn encrypted(cipher: ChunkCipher) -> Self {
        Sealer { cipher: Some(std::sync::Arc::new(cipher)) }
    }

    pub fn is_encrypted(&self) -> bool {
        self.cipher.is_some()
    }

    /// The key of the keyed BLAKE3 hash that names chunks, when the repository is encrypted. Code that
    /// hashes in pieces (the collector's page hashes) uses it with `blake3::hazmat::Mode::KeyedHash`.
    pub fn id_key(&self) -> Option<&[u8; 32]> {
        self.cipher.as_ref().map(|c| &c.id_key)
    }

    /// The content address of a plain chunk: BLAKE3, keyed when the repository is encrypted.
    pub fn chunk_id(&self, plain: &[u8]) -> [u8; 32] {
        match self.id_key() {
            Some(key) => *blake3::keyed_hash(key, plain).as_bytes(),
            None => chunk_id(plain),
        }
    }

    /// A hasher that computes [`Sealer::chunk_id`] incrementally.
    pub fn id_hasher(&self) -> blake3::Hasher {
        match self.id_key() {
            Some(key) => blake3::Hasher::new_keyed(key),
            None => blake3::Hasher::new(),
        }
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
        let cipher = if self.cipher.is_some() { CIPHER_AES256_GCM } else { CIPHER_NONE };
        out.extend_from_slice(&[ENVELOPE_VERSION, Compression::Zstd as u8, cipher, 0]);
        out.extend_from_slice(&(plain.len() as u32).to_le_bytes());
        let mut nonce = [0u8; NONCE_LEN];
        if self.cipher.is_some() {
            aws_lc_rs::rand::fill(&mut nonce).expect("the system's random source works");
            out.extend_from_slice(&nonce);
        }
        let body_start = out.len();
        let compressed = level > 0 && {
            // Writing straight after the header avoids a second copy of the body.
            let mut cursor = std::io::Cursor::new(std::mem::take(out));
            cursor.set_position(body_start as u64);
            let ok = with_compressor(level, |c| c.compress_to_buffer(plain, &mut cursor).is_ok());
            *out = cursor.into_inner();
            ok
        };
        if !compressed || out.len() - body_start >= plain.len() {
            out.truncate(body_start);
            out[start + 1] = Compression::None as u8;
            out.extend_from_slice(plain);
        }
        if let Some(cipher) = &self.cipher {
            // A random 96-bit nonce per chunk: a repeat is not expected before 2^32 chunks under one data
            // key (4 PiB of 1 MiB chunks), far beyond any one repository.
            let header: [u8; HEADER_LEN] = out[start..start + HEADER_LEN].try_into().expect("8 bytes");
            let tag = cipher
                .aead
                .seal_in_place_separate_tag(
                    aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce),
                    aws_lc_rs::aead::Aad::from(header),
                    &mut out[body_start..],
                )
                .expect("AES-GCM seals any chunk under 64 GiB");
            out.extend_from_slice(tag.as_ref());
        }
        out.len() - start
    }

    /// Seals an object that is not a chunk (a backup or WAL record): compressed, and encrypted when the
    /// repository is. [`Sealer::unseal_object`] opens it; integrity comes from the GCM tag when encrypted.
    pub fn seal_object(&self, plain: &[u8]) -> Vec<u8> {
        self.seal(plain, 3)
    }

    /// Opens what [`Sealer::seal_object`] made.
    pub fn unseal_object(&self, sealed: &[u8]) -> Result<Vec<u8>, SealError> {
        let mut out = Vec::new();
        let mut scratch = Vec::new();
        let (raw_len, compression, body) = self.open_envelope(sealed, &mut scratch)?;
        match compression {
            0 => out.extend_from_slice(body),
            _ => {
                out.reserve(raw_len);
                with_decompressor(|d| d.decompress_to_buffer(body, &mut out))?;
            }
        }
        if out.len() != raw_len {
            return Err(SealError::LengthMismatch { expected: raw_len, actual: out.len() });
        }
        Ok(out)
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
        let mut scratch = Vec::new();
        let (raw_len, compression, body) = self.open_envelope(sealed, &mut scratch)?;
        out.clear();
        out.reserve(raw_len);
        match compression {
            0 => out.extend_from_slice(body),
            _ => {
                with_decompressor(|d| d.decompress_to_buffer(body, &mut *out))?;
            }
        }
        self.check_plain(out, raw_len, expected_id)
    }

    /// [`Sealer::unseal`] into the start of `out` (which must be large enough for the chunk); the
    /// chunk's length. For buffers a `Vec` cannot be, such as the aligned ones direct I/O needs.
    pub fn unseal_into_slice(&self, sealed: &[u8], expected_id: &[u8; 32], out: &mut [u8]) -> Result<usize, SealError> {
        let mut scratch = Vec::new();
        let (raw_len, compression, body) = self.open_envelope(sealed, &mut scratch)?;
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
        self.check_plain(&out[..raw_len], raw_len, expected_id)?;
        Ok(raw_len)
    }

    /// Checks a sealed chunk's header and decrypts its body (into `scratch`, when encrypted); its plain
    /// length, compression and (still compressed) body.
    fn open_envelope<'a>(&self, sealed: &'a [u8], scratch: &'a mut Vec<u8>) -> Result<(usize, u8, &'a [u8]), SealError> {
        if sealed.len() < HEADER_LEN {
            return Err(SealError::Truncated { len: sealed.len() });
        }
        if sealed[0] != ENVELOPE_VERSION {
            return Err(SealError::Version(sealed[0]));
        }
        match sealed[1] {
            0 | 1 => {}
            other => return Err(SealError::UnknownCompression(other)),
        }
        let raw_len = u32::from_le_bytes(sealed[4..8].try_into().expect("4 bytes")) as usize;
        match sealed[2] {
            CIPHER_NONE => Ok((raw_len, sealed[1], &sealed[HEADER_LEN..])),
            CIPHER_AES256_GCM => {
                let cipher = self.cipher.as_ref().ok_or(SealError::NoKey)?;
                if sealed.len() < HEADER_LEN + NONCE_LEN + TAG_LEN {
                    return Err(SealError::Truncated { len: sealed.len() });
                }
                let header: [u8; HEADER_LEN] = sealed[..HEADER_LEN].try_into().expect("8 bytes");
                let nonce: [u8; NONCE_LEN] = sealed[HEADER_LEN..HEADER_LEN + NONCE_LEN].try_into().expect("12 bytes");
                scratch.clear();
                scratch.extend_from_slice(&sealed[HEADER_LEN + NONCE_LEN..]);
                let plain = cipher
                    .aead
                    .open_in_place(
                        aws_lc_rs::aead::Nonce::assume_unique_for_key(nonce),
                        aws_lc_rs::aead::Aad::from(header),
                        scratch,
                    )
                    .map_err(|_| SealError::Decrypt)?;
                let len = plain.len();
                scratch.truncate(len);
                Ok((raw_len, sealed[1], &scratch[..]))
            }
            other => Err(SealError::UnknownCipher(other)),
        }
    }

    /// Checks an unsealed chunk's length and content address.
    fn check_plain(&self, plain: &[u8], raw_len: usize, expected_id: &[u8; 32]) -> Result<(), SealError> {
        if plain.len() != raw_len {
            return Err(SealError::LengthMismatch { expected: raw_len, actual: plain.len() });
        }
        let actual = self.chunk_id(plain);
        if &actual != expected_id {
            return Err(SealError::HashMismatch { expected: hex(expected_id), actual: hex(&actual) });
        }
        Ok(())
    }
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
    fn encrypted_round_trip_and_wrong_key() {
        let s = Sealer::encrypted(ChunkCipher::new(&[7u8; 32]));
        let text = b"secret row value 4711 ".repeat(5_000);
        let id = s.chunk_id(&text);
        assert_ne!(id, chunk_id(&text), "encrypted repositories name chunks with a keyed hash");
        for level in [0, 1] {
            let sealed = s.seal(&text, level);
            assert_eq!(sealed[2], CIPHER_AES256_GCM);
            assert!(!sealed.windows(16).any(|w| w == &text[..16]), "plaintext visible in the sealed bytes");
            assert_eq!(s.unseal(&sealed, &id).unwrap(), text);
            let mut out = vec![0u8; text.len()];
            assert_eq!(s.unseal_into_slice(&sealed, &id, &mut out).unwrap(), text.len());
            assert_eq!(out, text);
            // Another key, no key, a flipped bit anywhere (header included): refused.
            let other = Sealer::encrypted(ChunkCipher::new(&[8u8; 32]));
            assert!(matches!(other.unseal(&sealed, &id), Err(SealError::Decrypt)));
            assert!(matches!(Sealer::default().unseal(&sealed, &id), Err(SealError::NoKey)));
            for at in [1usize, 5, 10, 30, sealed.len() - 1] {
                let mut bad = sealed.clone();
                bad[at] ^= 1;
                assert!(s.unseal(&bad, &id).is_err(), "flip at {at}");
            }
        }
        // Two seals of the same chunk differ (fresh nonces).
        assert_ne!(s.seal(&text, 1), s.seal(&text, 1));
        let object = s.seal_object(b"a record");
        assert_eq!(s.unseal_object(&object).unwrap(), b"a record");
        assert_eq!(Sealer::default().unseal_object(&Sealer::default().seal_object(b"x")).unwrap(), b"x");
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
