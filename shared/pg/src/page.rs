//! Data page header fields and the data page checksum.
//!
//! Every page of a relation file starts with `PageHeaderData`: `pd_lsn` (8 bytes, as two little-endian u32 halves,
//! high first), `pd_checksum` (u16 at offset 8), `pd_flags`, `pd_lower`, `pd_upper` (u16 at 14), `pd_special`,
//! `pd_pagesize_version` and `pd_prune_xid`, 24 bytes in all. When the cluster was initialised with data checksums
//! (`initdb -k`), `pd_checksum` holds [`checksum`] of the page, computed with the page's block number within its
//! relation fork so that a page written to the wrong place does not verify.
//!
//! [`checksum`] is a port of PostgreSQL's `pg_checksum_page` (`src/include/storage/checksum_impl.h`), checked
//! against pages written by PostgreSQL 15 (see the tests and `tests/fixtures/README.md`). It must stay bit-for-bit
//! identical: a difference would report every page of a healthy cluster as corrupt, or worse, none of a corrupt one.
//!
//! What a caller must add, as `basebackup.c` does:
//! - A page whose LSN is at or after the backup's start LSN may be read while PostgreSQL is writing it (a torn
//!   page). Its checksum proves nothing; WAL replay from the start LSN rewrites it, so such pages are not checked.
//! - On a mismatch, read the block once more before reporting it: the first read may have raced a write that has
//!   since finished, and the fresh copy will then either verify or carry a newer LSN.
//! - A block number is counted from the start of the fork, across its 1 GiB segment files; see [`block_number`].
//!
//! Functions that read header fields need at least [`PAGE_HEADER_SIZE`] bytes and those that checksum need exactly
//! [`PAGE_SIZE`] bytes. Shorter input is a caller bug (a file's trailing partial block cannot be checked and must be
//! handled before calling), so they panic rather than guess.

use crate::{Lsn, PAGE_SIZE, RELSEG_BLOCKS};

/// Size of `PageHeaderData` (`SizeOfPageHeaderData`).
pub const PAGE_HEADER_SIZE: usize = 24;

/// Offset of `pd_checksum` in the page header.
const PD_CHECKSUM_OFFSET: usize = 8;
/// Offset of `pd_upper` in the page header.
const PD_UPPER_OFFSET: usize = 14;

fn header(page: &[u8]) -> &[u8] {
    assert!(
        page.len() >= PAGE_HEADER_SIZE,
        "page of {} bytes is shorter than a page header",
        page.len()
    );
    &page[..PAGE_HEADER_SIZE]
}

fn u16_at(h: &[u8], offset: usize) -> u16 {
    u16::from_le_bytes([h[offset], h[offset + 1]])
}

fn u32_at(h: &[u8], offset: usize) -> u32 {
    u32::from_le_bytes([h[offset], h[offset + 1], h[offset + 2], h[offset + 3]])
}

/// The LSN of the last WAL record that changed the page (`PageGetLSN`).
///
/// # Panics
/// If `page` is shorter than [`PAGE_HEADER_SIZE`].
pub fn page_lsn(page: &[u8]) -> Lsn {
    let h = header(page);
    // PageXLogRecPtr is { xlogid, xrecoff }: the high half is stored first.
    Lsn((u64::from(u32_at(h, 0)) << 32) | u64::from(u32_at(h, 4)))
}

/// The checksum recorded in the page (`pd_checksum`).
///
/// # Panics
/// If `page` is shorter than [`PAGE_HEADER_SIZE`].
pub fn stored_checksum(page: &[u8]) -> u16 {
    u16_at(header(page), PD_CHECKSUM_OFFSET)
}

/// Whether the page was never initialised (`PageIsNew`: `pd_upper == 0`). Such pages carry no checksum; a relation
/// extended by a crashed transaction can legitimately contain them.
///
/// # Panics
/// If `page` is shorter than [`PAGE_HEADER_SIZE`].
pub fn is_new(page: &[u8]) -> bool {
    u16_at(header(page), PD_UPPER_OFFSET) == 0
}

/// Whether every byte is zero. Works on any length; written so the compiler vectorises it.
pub fn is_all_zero(bytes: &[u8]) -> bool {
    let mut chunks = bytes.chunks_exact(64);
    let body = chunks
        .by_ref()
        .all(|c| c.iter().fold(0u8, |acc, &b| acc | b) == 0);
    body && chunks.remainder().iter().all(|&b| b == 0)
}

/// The block number that is mixed into a page's checksum: its index within the fork, counted across segment files
/// (`blkno + segmentno * RELSEG_SIZE` in `basebackup.c`). `segno` is the `.N` suffix of the file name (0 for none)
/// and `index` the page's position within that file. Arithmetic wraps like PostgreSQL's `BlockNumber`.
pub fn block_number(segno: u32, index: u32) -> u32 {
    segno.wrapping_mul(RELSEG_BLOCKS).wrapping_add(index)
}

/// Number of partial checksums computed in parallel; part of the algorithm, changing it changes every result.
const N_SUMS: usize = 32;
/// Multiplier of the FNV-1a hash the algorithm is based on.
const FNV_PRIME: u32 = 16_777_619;
/// Initial value of each partial checksum (`checksumBaseOffsets`).
const BASE_OFFSETS: [u32; N_SUMS] = [
    0x5B1F36E9, 0xB8525960, 0x02AB50AA, 0x1DE66D2A, 0x79FF467A, 0x9BB9F8A3, 0x217E7CD2, 0x83E13D2C,
    0xF8D4474F, 0xE39EB970, 0x42C6AE16, 0x993216FA, 0x7B093B5D, 0x98DAFF3C, 0xF718902A, 0x0B1C9CDB,
    0xE58F764B, 0x187636BC, 0x5D7B3BB1, 0xE73DE7DE, 0x92BEC979, 0xCCA6C0B2, 0x304A0979, 0x85AA43D4,
    0x783125BB, 0x6CA8EAA2, 0xE407EAC6, 0x4B5CFC3E, 0x9FBF8C76, 0x15CA20BE, 0xF2CA9FD3, 0x959BD756,
];

/// One round of the mixing function (`CHECKSUM_COMP`): FNV-1a on 32-bit values, plus a shift so that high input bits
/// reach low output bits.
#[inline(always)]
fn mix(sum: u32, value: u32) -> u32 {
    let tmp = sum ^ value;
    tmp.wrapping_mul(FNV_PRIME) ^ (tmp >> 17)
}

/// `pg_checksum_block`: the page as a 64 x 32 matrix of u32, each column hashed separately, then folded with xor.
/// `pd_checksum` is read as zero, which PostgreSQL achieves by clearing it while it hashes.
///
/// The 32 columns are meant for SIMD (PostgreSQL builds this function with SSE4.1/AVX2 where it can), but
/// Rust's baseline x86-64 target has no 32-bit vector multiply: the same code compiled for AVX2, chosen at
/// run time, is several times faster, and a backup verifies every page it reads.
fn checksum_block(page: &[u8]) -> u32 {
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx2") {
            // SAFETY: the CPU supports AVX2, checked just above.
            return unsafe { checksum_block_avx2(page) };
        }
    }
    checksum_block_portable(page)
}

#[cfg(target_arch = "x86_64")]
#[target_feature(enable = "avx2")]
unsafe fn checksum_block_avx2(page: &[u8]) -> u32 {
    checksum_block_portable(page)
}

#[inline(always)]
fn checksum_block_portable(page: &[u8]) -> u32 {
    let mut sums = BASE_OFFSETS;
    for (row_index, row) in page.chunks_exact(N_SUMS * 4).enumerate() {
        let mut words = [0u32; N_SUMS];
        for (word, b) in words.iter_mut().zip(row.chunks_exact(4)) {
            *word = u32::from_le_bytes([b[0], b[1], b[2], b[3]]);
        }
        if row_index == 0 {
            // pd_checksum is bytes 8..10: the low half of the third little-endian word.
            words[PD_CHECKSUM_OFFSET / 4] &= 0xFFFF_0000;
        }
        for (sum, &word) in sums.iter_mut().zip(words.iter()) {
            *sum = mix(*sum, word);
        }
    }
    // Two rounds of zeroes mix the last value's bits through.
    for _ in 0..2 {
        for sum in sums.iter_mut() {
            *sum = mix(*sum, 0);
        }
    }
    sums.iter().fold(0, |acc, &s| acc ^ s)
}

/// The checksum PostgreSQL stores in `pd_checksum` for this page at block `blkno` (`pg_checksum_page`).
///
/// `blkno` is the block's number within its fork, see [`block_number`]. The result is never 0. PostgreSQL only
/// defines the checksum of initialised pages; for a new page the value is computed the same way but means nothing.
///
/// # Panics
/// If `page` is not exactly [`PAGE_SIZE`] bytes.
pub fn checksum(page: &[u8], blkno: u32) -> u16 {
    assert_eq!(
        page.len(),
        PAGE_SIZE,
        "a checksummed page must be {PAGE_SIZE} bytes"
    );
    reduce(checksum_block(page), blkno)
}

/// Mixes in the block number so a page copied to the wrong place does not verify, then reduces modulo 2^16 - 1 and
/// adds one, so the checksum fits `pd_checksum` and is never zero.
fn reduce(block_sum: u32, blkno: u32) -> u16 {
    (((block_sum ^ blkno) % 65535) + 1) as u16
}

/// Outcome of checking one page.
#[derive(Copy, Clone, Debug, PartialEq, Eq, Hash)]
pub enum PageCheck {
    /// The stored checksum matches.
    Valid,
    /// An all-zero page, never initialised; PostgreSQL accepts it without a checksum.
    New,
    /// The checksum does not match, or the page claims to be new (`pd_upper == 0`) but is not all zero, which
    /// PostgreSQL also rejects (`PageIsVerifiedExtended`); `stored` and `computed` may then be equal.
    Mismatch { stored: u16, computed: u16 },
}

/// Checks the page's stored checksum as PostgreSQL does on read, for a cluster with data checksums.
///
/// Only the checksum is checked, not the header's other fields. See the module docs for the LSN rule a backup must
/// apply before trusting a mismatch.
///
/// # Panics
/// If `page` is not exactly [`PAGE_SIZE`] bytes.
pub fn verify(page: &[u8], blkno: u32) -> PageCheck {
    assert_eq!(
        page.len(),
        PAGE_SIZE,
        "a checksummed page must be {PAGE_SIZE} bytes"
    );
    let stored = stored_checksum(page);
    if is_new(page) {
        if is_all_zero(page) {
            return PageCheck::New;
        }
        return PageCheck::Mismatch {
            stored,
            computed: checksum(page, blkno),
        };
    }
    let computed = checksum(page, blkno);
    if computed == stored {
        PageCheck::Valid
    } else {
        PageCheck::Mismatch { stored, computed }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Block 0 of `base/1/1259` (pg_class of template1), as written by PostgreSQL 15 `initdb -k`.
    const PG_CLASS_BLOCK_0: &[u8] = include_bytes!("../tests/fixtures/page_base_1_1259_blk0.bin");
    /// Block 9 of `base/1/2608` (pg_depend of template1), from the same cluster.
    const PG_DEPEND_BLOCK_9: &[u8] = include_bytes!("../tests/fixtures/page_base_1_2608_blk9.bin");

    fn fixtures() -> [(&'static [u8], u32); 2] {
        [(PG_CLASS_BLOCK_0, 0), (PG_DEPEND_BLOCK_9, 9)]
    }

    #[test]
    fn real_pages_verify() {
        for (page, blkno) in fixtures() {
            assert_eq!(page.len(), PAGE_SIZE);
            assert!(!is_new(page));
            assert_ne!(stored_checksum(page), 0);
            assert_eq!(
                checksum(page, blkno),
                stored_checksum(page),
                "block {blkno}"
            );
            assert_eq!(verify(page, blkno), PageCheck::Valid, "block {blkno}");
        }
    }

    #[test]
    fn any_flipped_byte_is_detected() {
        for (page, blkno) in fixtures() {
            let stored = stored_checksum(page);
            // A byte in the header, one in the line pointers, one in tuple data, the last byte.
            for offset in [0, 20, 40, 4000, PAGE_SIZE - 1] {
                let mut bad = page.to_vec();
                bad[offset] ^= 0x01;
                if offset < PAGE_HEADER_SIZE && is_new(&bad) {
                    continue;
                }
                match verify(&bad, blkno) {
                    PageCheck::Mismatch {
                        stored: s,
                        computed,
                    } => {
                        assert_eq!(s, stored);
                        assert_ne!(computed, stored, "offset {offset}");
                    }
                    other => panic!("flipping byte {offset} of block {blkno} gave {other:?}"),
                }
            }
        }
    }

    #[test]
    fn the_stored_checksum_does_not_feed_the_checksum() {
        let mut page = PG_CLASS_BLOCK_0.to_vec();
        let want = checksum(&page, 0);
        page[8] ^= 0xFF;
        page[9] ^= 0x5A;
        assert_eq!(checksum(&page, 0), want);
        assert!(
            matches!(verify(&page, 0), PageCheck::Mismatch { computed, .. } if computed == want)
        );
    }

    #[test]
    fn the_block_number_is_mixed_in() {
        assert!(matches!(
            verify(PG_CLASS_BLOCK_0, 1),
            PageCheck::Mismatch { .. }
        ));
        assert!(matches!(
            verify(PG_DEPEND_BLOCK_9, 9 + RELSEG_BLOCKS),
            PageCheck::Mismatch { .. }
        ));
        assert_eq!(block_number(0, 9), 9);
        assert_eq!(block_number(2, 5), 2 * RELSEG_BLOCKS + 5);
    }

    #[test]
    fn header_fields() {
        let mut page = vec![0u8; PAGE_SIZE];
        page[0..4].copy_from_slice(&0x16u32.to_le_bytes());
        page[4..8].copy_from_slice(&0xB374_D848u32.to_le_bytes());
        page[8..10].copy_from_slice(&0xBEEFu16.to_le_bytes());
        assert_eq!(page_lsn(&page), Lsn(0x16_B374_D848));
        assert_eq!(stored_checksum(&page), 0xBEEF);
        assert!(is_new(&page));
        page[14] = 0x10;
        assert!(!is_new(&page));
        // Real page: pd_lsn is set and below the first WAL segment of a later checkpoint.
        assert!(page_lsn(PG_CLASS_BLOCK_0).is_valid());
    }

    #[test]
    fn new_pages() {
        let zero = vec![0u8; PAGE_SIZE];
        assert!(is_all_zero(&zero));
        assert_eq!(verify(&zero, 0), PageCheck::New);
        assert_eq!(verify(&zero, 12345), PageCheck::New);

        // pd_upper == 0 but not all zero: PostgreSQL refuses it, and so do we.
        let mut dirty = zero.clone();
        dirty[PAGE_SIZE - 1] = 1;
        assert!(is_new(&dirty));
        assert!(matches!(verify(&dirty, 0), PageCheck::Mismatch { .. }));
    }

    #[test]
    fn all_zero_checks_every_byte() {
        assert!(is_all_zero(&[]));
        for len in [1, 63, 64, 65, 200, PAGE_SIZE] {
            let mut v = vec![0u8; len];
            assert!(is_all_zero(&v));
            for i in [0, len / 2, len - 1] {
                v[i] = 0x80;
                assert!(!is_all_zero(&v), "len {len} index {i}");
                v[i] = 0;
            }
        }
    }

    #[test]
    fn checksum_is_never_zero() {
        // 65536 consecutive block numbers make (sum ^ blkno) cover every residue mod 65535, including the one that
        // would give zero without the +1.
        let sum = checksum_block(PG_CLASS_BLOCK_0);
        let values: Vec<u16> = (0..65_536u32).map(|blkno| reduce(sum, blkno)).collect();
        assert!(!values.contains(&0));
        assert!(values.contains(&1) && values.contains(&u16::MAX));
        assert_eq!(reduce(sum, 0), checksum(PG_CLASS_BLOCK_0, 0));
    }

    #[test]
    #[should_panic(expected = "must be 8192 bytes")]
    fn short_pages_are_a_caller_bug() {
        checksum(&[0u8; 100], 0);
    }

    #[test]
    fn the_vectorised_checksum_agrees_with_the_portable_one() {
        let mut page = vec![0u8; PAGE_SIZE];
        let mut x = 0x9e37_79b9_u32;
        for seed in 0..50u32 {
            // xorshift: any bytes will do, as long as they vary.
            for b in page.iter_mut() {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                *b = x as u8;
            }
            assert_eq!(checksum_block(&page), checksum_block_portable(&page), "seed {seed}");
        }
    }
}
