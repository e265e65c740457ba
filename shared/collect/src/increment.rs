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
//! Whole pages of zeros (relation extensions not yet written) are neither stored nor compared: they become
//! zero pieces, which a restore writes back as zeros.
//!
//! Everything here is pure: the caller reads, sends chunks and maps the reference's chunk numbers into its
//! own chunk table.

use strata_messages::{FileEntry, Piece};
use strata_pg::PAGE_SIZE;
/// The one-pass chunk id and page hashes of a read buffer (in `strata-seal`, beside the chunk id it must equal).
pub use strata_seal::page_hash::hash_buffer;

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
                let offset = if p.is_zero() { 0 } else { p.offset + (from - p_start) as u32 };
                out.push(Piece { chunk: p.chunk, offset, len: (to - from) as u32 });
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
    /// Whole pages of zeros.
    Zero { len: u32 },
}

/// A read buffer split into what to store and what to take from the reference.
pub struct Split {
    /// The changed bytes, packed; empty when nothing changed.
    pub packed: Vec<u8>,
    pub segments: Vec<Segment>,
    /// Hashes of the buffer's whole pages.
    pub page_hashes: Vec<u64>,
}

/// Splits `buf`, read at file offset `offset` (a multiple of the page size), into runs of new, unchanged
/// (equal to `reference`'s) and zero pages, given the hashes of its whole pages ([`hash_buffer`]; computed by
/// the caller on a blocking thread, and empty for files that are not relations, which are never split).
/// A trailing partial page is always new.
pub fn split(buf: Vec<u8>, offset: u64, page_hashes: Vec<u64>, reference: Option<&RefFile>) -> Split {
    #[derive(Clone, Copy, PartialEq, Eq)]
    enum Kind {
        New,
        Unchanged,
        Zero,
    }
    let first_page = (offset / PAGE_SIZE as u64) as usize;
    let pages = buf.len().div_ceil(PAGE_SIZE);
    let kind = |i: usize| {
        if i >= page_hashes.len() {
            Kind::New
        } else if is_zero(&buf[i * PAGE_SIZE..(i + 1) * PAGE_SIZE]) {
            Kind::Zero
        } else if reference.is_some_and(|r| r.has_page(first_page + i, page_hashes[i])) {
            Kind::Unchanged
        } else {
            Kind::New
        }
    };
    let kinds: Vec<Kind> = (0..pages).map(kind).collect();
    if kinds.iter().all(|k| *k == Kind::New) {
        let len = buf.len() as u32;
        return Split { packed: buf, segments: vec![Segment::New { offset: 0, len }], page_hashes };
    }
    let mut packed = Vec::new();
    let mut segments = Vec::new();
    let mut i = 0;
    while i < pages {
        let k = kinds[i];
        let mut j = i + 1;
        while j < pages && kinds[j] == k {
            j += 1;
        }
        let (from, to) = (i * PAGE_SIZE, (j * PAGE_SIZE).min(buf.len()));
        segments.push(match k {
            Kind::Unchanged => Segment::Unchanged { file_offset: offset + from as u64, len: (to - from) as u64 },
            Kind::Zero => Segment::Zero { len: (to - from) as u32 },
            Kind::New => {
                let at = packed.len() as u32;
                packed.extend_from_slice(&buf[from..to]);
                Segment::New { offset: at, len: (to - from) as u32 }
            }
        });
        i = j;
    }
    Split { packed, segments, page_hashes }
}

/// Whether `buf` holds a whole page of zeros, which [`split`] would leave out of a relation file's stored
/// bytes.
pub fn has_zero_page(buf: &[u8]) -> bool {
    buf.chunks_exact(PAGE_SIZE).any(is_zero)
}

/// Whether a page is all zeros. Stops at the first non-zero word, which for a page in use is in its header.
fn is_zero(page: &[u8]) -> bool {
    page.chunks_exact(8).all(|w| u64::from_ne_bytes(w.try_into().expect("8 bytes")) == 0)
}

#[cfg(test)]
mod tests {
    use super::*;
    use strata_messages::{FileKind, ZERO_CHUNK};

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
            page_hashes: hash_buffer(&pages.concat(), true, None).1,
        }
    }

    fn page(fill: u8) -> Vec<u8> {
        vec![fill; PAGE_SIZE]
    }

    #[test]
    fn only_changed_pages_are_packed() {
        let old: Vec<Vec<u8>> = (1..5).map(page).collect();
        let e = entry(&old, vec![Piece { chunk: 1, offset: 0, len: 4 * PAGE_SIZE as u32 }]);
        let r = RefFile::new(&e);
        let mut now = old.clone();
        now[1] = page(99);
        let buf = now.concat();
        let s = split(buf.clone(), 0, hash_buffer(&buf, true, None).1, Some(&r));
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
        let s = split(buf.clone(), 0, hash_buffer(&buf, true, None).1, Some(&r));
        assert_eq!(s.packed, page(7));
        // No reference: everything is new, in one piece.
        let buf = old.concat();
        let s = split(buf.clone(), 0, hash_buffer(&buf, true, None).1, None);
        assert_eq!(s.segments, vec![Segment::New { offset: 0, len: 4 * PAGE_SIZE as u32 }]);
        // Zero pages are neither stored nor compared, with or without a reference.
        let mut zeroed = old.clone();
        zeroed[2] = page(0);
        zeroed[3] = page(0);
        let buf = zeroed.concat();
        let s = split(buf.clone(), 0, hash_buffer(&buf, true, None).1, None);
        assert_eq!(s.packed, [page(1), page(2)].concat());
        assert_eq!(
            s.segments,
            vec![Segment::New { offset: 0, len: 2 * PAGE_SIZE as u32 }, Segment::Zero { len: 2 * PAGE_SIZE as u32 }]
        );
        let s = split(buf.clone(), 0, hash_buffer(&buf, true, None).1, Some(&r));
        assert!(s.packed.is_empty());
        assert_eq!(
            s.segments,
            vec![
                Segment::Unchanged { file_offset: 0, len: 2 * PAGE_SIZE as u64 },
                Segment::Zero { len: 2 * PAGE_SIZE as u32 },
            ]
        );
        // Files that are not relations come without page hashes and are never split.
        let s = split(buf.clone(), 0, Vec::new(), None);
        assert_eq!(s.packed, buf);
    }

    #[test]
    fn slices_follow_the_reference_pieces() {
        let old: Vec<Vec<u8>> = (0..4).map(page).collect();
        let pieces = vec![
            Piece { chunk: 1, offset: 0, len: PAGE_SIZE as u32 },
            Piece { chunk: ZERO_CHUNK, offset: 0, len: PAGE_SIZE as u32 },
            Piece { chunk: 2, offset: 3 * PAGE_SIZE as u32, len: 2 * PAGE_SIZE as u32 },
        ];
        let e = entry(&old, pieces);
        let r = RefFile::new(&e);
        let p = PAGE_SIZE as u32;
        let got = r.slice(p as u64, 2 * p as u64);
        assert_eq!(
            got,
            vec![Piece { chunk: ZERO_CHUNK, offset: 0, len: p }, Piece { chunk: 2, offset: 3 * p, len: p }]
        );
        assert_eq!(r.slice(3 * p as u64, p as u64), vec![Piece { chunk: 2, offset: 4 * p, len: p }]);
    }
}
