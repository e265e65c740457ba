//! Pack files: many sealed chunks in one object, with the index at the tail.
//!
//! ```text
//! [sealed chunk]...                     bodies, back to back
//! [index entry; count]                  48 bytes each: id (32), offset u64, sealed_len u32, raw_len u32
//! [count u32][BLAKE3 of the index (32)][magic "STRPACK1"]   the 44-byte footer
//! ```
//!
//! One object per pack rather than one per chunk keeps object counts (and S3 request costs) low; putting the
//! index in the same object makes a pack self-describing and written in one atomic put, so there is never
//! an index without its data or data without its index.

use bytes::Bytes;
use strata_directio::AlignedVec;
use strata_messages::{ChunkId, ChunkRef, PackId};

pub const INDEX_ENTRY_LEN: usize = 48;
pub const FOOTER_LEN: usize = 44;
const MAGIC: &[u8; 8] = b"STRPACK1";

/// Accumulates sealed chunks for one pack, in an aligned buffer so that a POSIX repository writes it
/// without the page cache.
pub struct PackBuilder {
    id: PackId,
    body: AlignedVec,
    entries: Vec<(ChunkId, u64, u32, u32)>,
}

impl Default for PackBuilder {
    fn default() -> Self {
        Self::new()
    }
}

impl PackBuilder {
    pub fn new() -> Self {
        Self::with_capacity(1 << 20)
    }

    /// A builder whose buffer holds `bytes` before it has to grow (and copy).
    pub fn with_capacity(bytes: usize) -> Self {
        PackBuilder { id: rand::random(), body: AlignedVec::with_capacity(bytes), entries: Vec::new() }
    }

    pub fn add(&mut self, id: ChunkId, raw_len: u32, sealed: &[u8]) {
        self.entries.push((id, self.body.len() as u64, sealed.len() as u32, raw_len));
        self.body.extend_from_slice(sealed);
    }

    pub fn contains(&self, id: &ChunkId) -> bool {
        self.entries.iter().any(|e| &e.0 == id)
    }

    pub fn body_len(&self) -> usize {
        self.body.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// The pack's id, its bytes and where each chunk sits.
    pub fn finish(mut self) -> (PackId, Bytes, Vec<ChunkRef>) {
        let index_start = self.body.len();
        let mut refs = Vec::with_capacity(self.entries.len());
        for &(id, offset, sealed_len, raw_len) in &self.entries {
            self.body.extend_from_slice(&id);
            self.body.extend_from_slice(&offset.to_le_bytes());
            self.body.extend_from_slice(&sealed_len.to_le_bytes());
            self.body.extend_from_slice(&raw_len.to_le_bytes());
            refs.push(ChunkRef { id, pack: self.id, offset, sealed_len, raw_len });
        }
        let digest = blake3::hash(&self.body.as_slice()[index_start..]);
        self.body.extend_from_slice(&(self.entries.len() as u32).to_le_bytes());
        self.body.extend_from_slice(digest.as_bytes());
        self.body.extend_from_slice(MAGIC);
        (self.id, self.body.into_bytes(), refs)
    }
}

pub fn parse_footer(footer: &[u8]) -> Result<(u32, [u8; 32]), String> {
    if footer.len() != FOOTER_LEN || &footer[36..44] != MAGIC {
        return Err("no pack footer (truncated or not a pack)".into());
    }
    let count = u32::from_le_bytes(footer[0..4].try_into().expect("4 bytes"));
    Ok((count, footer[4..36].try_into().expect("32 bytes")))
}

pub fn parse_index(pack: &PackId, index: &[u8], digest: &[u8; 32], body_len: u64) -> Result<Vec<ChunkRef>, String> {
    if blake3::hash(index).as_bytes() != digest {
        return Err("index checksum mismatch".into());
    }
    let mut refs = Vec::with_capacity(index.len() / INDEX_ENTRY_LEN);
    for e in index.chunks_exact(INDEX_ENTRY_LEN) {
        let r = ChunkRef {
            id: e[0..32].try_into().expect("32 bytes"),
            pack: *pack,
            offset: u64::from_le_bytes(e[32..40].try_into().expect("8 bytes")),
            sealed_len: u32::from_le_bytes(e[40..44].try_into().expect("4 bytes")),
            raw_len: u32::from_le_bytes(e[44..48].try_into().expect("4 bytes")),
        };
        if r.offset.checked_add(r.sealed_len as u64).is_none_or(|end| end > body_len) {
            return Err(format!("chunk at offset {} runs past the pack body", r.offset));
        }
        refs.push(r);
    }
    Ok(refs)
}

/// `pack/ab/ab12....pack` -> the pack id.
pub fn parse_pack_path(path: &str) -> Option<PackId> {
    let name = path.rsplit('/').next()?.strip_suffix(".pack")?;
    if name.len() != 32 {
        return None;
    }
    let mut id = [0u8; 16];
    for (i, byte) in id.iter_mut().enumerate() {
        *byte = u8::from_str_radix(name.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(id)
}
