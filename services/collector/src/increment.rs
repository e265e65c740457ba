//! Page-level increments: which bytes of a file a backup must store, and which it can take from the
//! backup it is relative to.
//!
//! Every backup records, per relation file, a 64-bit hash of each 8 KiB page. A differential or
//! incremental backup hashes the pages it reads and compares them with the reference's: runs of equal
//! pages become pieces pointing at the reference's stored bytes, and only the changed pages are stored,
//! packed together into one new chunk per read buffer. A pgbench run that touches a few rows of each 1 GB
//! segment therefore stores those pages, not the segment. Files whose size and mtime are unchanged since
//! before the reference began are not read at all.
//!
//! Everything here is pure: the caller reads, sends chunks and resolves their locations.

use strata_messages::{ChunkId, FileEntry, Piece};
use strata_pg::PAGE_SIZE;

/// The 64-bit prefix of a page's BLAKE3 hash, as recorded in manifests. Collisions would hide a changed
/// page, so the prefix is wide enough that one is not expected in the life of any cluster (2^-64 per page).
pub fn page_hash(page: &[u8]) -> u64 {
    let h = blake3::hash(page);
    u64::from_le_bytes(h.as_bytes()[..8].try_into().expect("8 bytes"))
}

/// The reference backup's copy of one file.
pub struct RefFile<'a> {
    entry: &'a FileEntry,
    /// File offset at which each piece starts.
    starts: Vec<u64>,
}

impl<'a> RefFile<'a> {
    pub fn new(entry: &'a FileEntry) -> Self {
        let mut starts = Vec::with_capacity(entry.pieces.len());
        let mut at = 0u64;
        for p in &entry.pieces {
            starts.push(at);
            at += p.len as u64;
        }
        RefFile { entry, starts }
    }

    pub fn entry(&self) -> &FileEntry {
        self.entry
    }

    /// Whether page `index` (a whole page) is stored in the reference with this hash.
    fn has_page(&self, index: usize, hash: u64) -> bool {
        self.entry.page_hashes.get(index) == Some(&hash) && ((index + 1) * PAGE_SIZE) as u64 <= self.entry.size
    }

    /// The reference's pieces covering `len` bytes from file offset `start`.
    pub fn slice(&self, start: u64, len: u64) -> Vec<Piece> {
        let mut out = Vec::new();
        let end = start + len;
        // The piece containing `start`.
        let mut i = match self.starts.binary_search(&start) {
            Ok(i) => i,
            Err(i) => i.saturating_sub(1),
        };
        while i < self.entry.pieces.len() && self.starts[i] < end {
            let p = &self.entry.pieces[i];
            let (p_start, p_end) = (self.starts[i], self.starts[i] + p.len as u64);
            let (from, to) = (start.max(p_start), end.min(p_end));
            if from < to {
                out.push(Piece { chunk: p.chunk, offset: p.offset + (from - p_start) as u32, len: (to - from) as u32 });
            }
            i += 1;
        }
        out
    }
}

/// Part of a read buffer, in file order.
#[derive(Debug, PartialEq, Eq)]
pub enum Segment {
    /// Bytes stored in this backup: `len` bytes at `offset` of the buffer's packed chunk.
    New { offset: u32, len: u32 },
    /// Bytes equal to the reference's, at file offset `file_offset`.
    Unchanged { file_offset: u64, len: u64 },
}

/// A read buffer split into what to store and what to take from the reference.
pub struct Split {
    /// The changed bytes, packed; empty when nothing changed.
    pub packed: Vec<u8>,
    pub segments: Vec<Segment>,
    /// Hashes of the buffer's whole pages.
    pub page_hashes: Vec<u64>,
}

/// The hashes of `buf`'s whole pages.
pub fn page_hashes(buf: &[u8]) -> Vec<u64> {
    buf.chunks_exact(PAGE_SIZE).map(page_hash).collect()
}

/// Splits `buf`, read at file offset `offset` (a multiple of the page size), against `reference`, given
/// the hashes of its whole pages ([`page_hashes`]; computed by the caller on a blocking thread). Without a
/// reference every byte is new. A trailing partial page is always new.
pub fn split(buf: Vec<u8>, offset: u64, page_hashes: Vec<u64>, reference: Option<&RefFile>) -> Split {
    let first_page = (offset / PAGE_SIZE as u64) as usize;
    let Some(reference) = reference else {
        let len = buf.len() as u32;
        return Split { packed: buf, segments: vec![Segment::New { offset: 0, len }], page_hashes };
    };
    let pages = buf.len().div_ceil(PAGE_SIZE);
    let unchanged = |i: usize| i < page_hashes.len() && reference.has_page(first_page + i, page_hashes[i]);
    if (0..pages).all(|i| !unchanged(i)) {
        let len = buf.len() as u32;
        return Split { packed: buf, segments: vec![Segment::New { offset: 0, len }], page_hashes };
    }
    let mut packed = Vec::new();
    let mut segments = Vec::new();
    let mut i = 0;
    while i < pages {
        let same = unchanged(i);
        let mut j = i + 1;
        while j < pages && unchanged(j) == same {
            j += 1;
        }
        let (from, to) = (i * PAGE_SIZE, (j * PAGE_SIZE).min(buf.len()));
        if same {
            segments.push(Segment::Unchanged { file_offset: offset + from as u64, len: (to - from) as u64 });
        } else {
            segments.push(Segment::New { offset: packed.len() as u32, len: (to - from) as u32 });
            packed.extend_from_slice(&buf[from..to]);
        }
        i = j;
    }
    Split { packed, segments, page_hashes }
}

/// A piece whose chunk may still be on its way to the repository.
#[derive(Debug, Clone, Copy)]
pub enum PendingPiece {
    New { id: ChunkId, offset: u32, len: u32 },
    Existing(Piece),
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_messages::{ChunkRef, FileKind};

    fn chunk(n: u8, raw_len: u32) -> ChunkRef {
        ChunkRef { id: [n; 32], pack: [n; 16], offset: 0, sealed_len: 1, raw_len }
    }

    fn entry(pages: &[Vec<u8>], pieces: Vec<Piece>) -> FileEntry {
        FileEntry {
            path: "base/1/1".into(),
            kind: FileKind::File,
            mode: 0o600,
            uid: 0,
            gid: 0,
            mtime: 0,
            size: (pages.len() * PAGE_SIZE) as u64,
            link_target: String::new(),
            pieces,
            page_hashes: pages.iter().map(|p| page_hash(p)).collect(),
        }
    }

    fn page(fill: u8) -> Vec<u8> {
        vec![fill; PAGE_SIZE]
    }

    #[test]
    fn only_changed_pages_are_packed() {
        let old: Vec<Vec<u8>> = (0..4).map(page).collect();
        let e = entry(&old, vec![Piece::whole(chunk(1, 4 * PAGE_SIZE as u32))]);
        let r = RefFile::new(&e);
        let mut now = old.clone();
        now[1] = page(99);
        let buf = now.concat();
        let s = split(buf.clone(), 0, page_hashes(&buf), Some(&r));
        assert_eq!(s.packed, page(99));
        assert_eq!(
            s.segments,
            vec![
                Segment::Unchanged { file_offset: 0, len: PAGE_SIZE as u64 },
                Segment::New { offset: 0, len: PAGE_SIZE as u32 },
                Segment::Unchanged { file_offset: 2 * PAGE_SIZE as u64, len: 2 * PAGE_SIZE as u64 },
            ]
        );
        // A grown file: pages past the reference's end are new.
        let mut grown = old.clone();
        grown.push(page(7));
        let buf = grown.concat();
        let s = split(buf.clone(), 0, page_hashes(&buf), Some(&r));
        assert_eq!(s.packed, page(7));
        // No reference: everything is new, in one piece.
        let buf = old.concat();
        let s = split(buf.clone(), 0, page_hashes(&buf), None);
        assert_eq!(s.segments, vec![Segment::New { offset: 0, len: 4 * PAGE_SIZE as u32 }]);
    }

    #[test]
    fn slices_follow_the_reference_pieces() {
        let old: Vec<Vec<u8>> = (0..4).map(page).collect();
        let pieces = vec![
            Piece::whole(chunk(1, 2 * PAGE_SIZE as u32)),
            Piece { chunk: chunk(2, 8 * PAGE_SIZE as u32), offset: 3 * PAGE_SIZE as u32, len: 2 * PAGE_SIZE as u32 },
        ];
        let e = entry(&old, pieces);
        let r = RefFile::new(&e);
        let p = PAGE_SIZE as u32;
        let got = r.slice(p as u64, 2 * p as u64);
        assert_eq!(
            got,
            vec![
                Piece { chunk: chunk(1, 2 * p), offset: p, len: p },
                Piece { chunk: chunk(2, 8 * p), offset: 3 * p, len: p },
            ]
        );
        assert_eq!(r.slice(3 * p as u64, p as u64), vec![Piece { chunk: chunk(2, 8 * p), offset: 4 * p, len: p }]);
    }
}
