//! One pass over a read buffer for both its chunk id and its page hashes: the collector hashes every
//! relation page of every backup (page-level increments compare them) and every buffer's chunk id, and
//! BLAKE3's tree gives both from the same work. Here, beside [`crate::chunk_id`] and
//! [`crate::Sealer::chunk_id`], which it must equal, so that the collector and a delta restore (which
//! hashes the target's pages the same way) share one definition without the restore depending on the
//! collector.

use blake3::hazmat::{left_subtree_len, merge_subtrees_non_root, merge_subtrees_root, ChainingValue, HasherExt, Mode};
use strata_pg::PAGE_SIZE;

/// Hashes a read buffer in one pass: its chunk id (the BLAKE3 hash of the whole buffer, keyed with `key` in
/// an encrypted repository, as [`crate::Sealer::chunk_id`] computes it) and, with `pages`, a 64-bit
/// hash of each whole page.
///
/// BLAKE3 is a tree hash, and every 8 KiB page at an 8 KiB-aligned offset of a longer input is a complete
/// subtree of it: the page hash is the prefix of that subtree's chaining value, so the pages are hashed
/// once for both purposes instead of twice. A chaining value depends on the page's offset in the buffer,
/// which is the same from one backup to the next (read buffers start at multiples of `chunk_size`); were
/// `chunk_size` changed, pages would only look changed and be stored again. Collisions would hide a changed
/// page, so the prefix is wide enough that one is not expected in the life of any cluster (2^-64 per page).
pub fn hash_buffer(buf: &[u8], pages: bool, key: Option<&[u8; 32]>) -> ([u8; 32], Vec<u64>) {
    let mut hashes = Vec::with_capacity(if pages { buf.len() / PAGE_SIZE } else { 0 });
    let mode = match key {
        Some(k) => Mode::KeyedHash(k),
        None => Mode::Hash,
    };
    if buf.len() <= PAGE_SIZE {
        if pages && buf.len() == PAGE_SIZE {
            hashes.push(prefix(&subtree_leaf(buf, 0, key)));
        }
        let id = match key {
            Some(k) => blake3::keyed_hash(k, buf),
            None => blake3::hash(buf),
        };
        return (*id.as_bytes(), hashes);
    }
    let left = left_subtree_len(buf.len() as u64) as usize;
    let l = subtree(&buf[..left], 0, pages, key, &mut hashes);
    let r = subtree(&buf[left..], left as u64, pages, key, &mut hashes);
    (*merge_subtrees_root(&l, &r, mode).as_bytes(), hashes)
}

/// The chaining value of `buf`, a complete subtree at `offset` of a longer input, recording the hash of each
/// whole page in it.
fn subtree(buf: &[u8], offset: u64, pages: bool, key: Option<&[u8; 32]>, hashes: &mut Vec<u64>) -> ChainingValue {
    if buf.len() <= PAGE_SIZE {
        // Subtrees longer than a page split at powers of two of at least a page, so this is a page at a
        // page-aligned offset, or the buffer's partial last page.
        let cv = subtree_leaf(buf, offset, key);
        if pages && buf.len() == PAGE_SIZE {
            hashes.push(prefix(&cv));
        }
        return cv;
    }
    let left = left_subtree_len(buf.len() as u64) as usize;
    let l = subtree(&buf[..left], offset, pages, key, hashes);
    let r = subtree(&buf[left..], offset + left as u64, pages, key, hashes);
    let mode = match key {
        Some(k) => Mode::KeyedHash(k),
        None => Mode::Hash,
    };
    merge_subtrees_non_root(&l, &r, mode)
}

fn subtree_leaf(buf: &[u8], offset: u64, key: Option<&[u8; 32]>) -> ChainingValue {
    let mut h = match key {
        Some(k) => blake3::Hasher::new_keyed(k),
        None => blake3::Hasher::new(),
    };
    h.set_input_offset(offset);
    h.update(buf);
    h.finalize_non_root()
}

fn prefix(cv: &ChainingValue) -> u64 {
    u64::from_le_bytes(cv[..8].try_into().expect("8 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_pass_gives_the_chunk_id_and_position_bound_page_hashes() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        for len in [0, 1, 1024, 8191, 8192, 8193, 16384, 3 * 8192 + 100, 100_000, 131_072, 300_000] {
            let (id, hashes) = hash_buffer(&data[..len], true, None);
            assert_eq!(id, crate::chunk_id(&data[..len]), "length {len}");
            assert_eq!(hashes.len(), len / PAGE_SIZE, "length {len}");
            // A page's hash does not depend on the rest of the buffer, only on its place in it.
            if len >= 2 * PAGE_SIZE {
                let (_, shorter) = hash_buffer(&data[..2 * PAGE_SIZE], true, None);
                assert_eq!(hashes[..2], shorter[..], "length {len}");
            }
        }
        let (_, a) = hash_buffer(&data[..3 * PAGE_SIZE], true, None);
        let mut moved = data[..3 * PAGE_SIZE].to_vec();
        moved[PAGE_SIZE + 5] ^= 1;
        let (_, b) = hash_buffer(&moved, true, None);
        assert_eq!((a[0], a[2]), (b[0], b[2]));
        assert_ne!(a[1], b[1]);
        assert!(hash_buffer(&data[..3 * PAGE_SIZE], false, None).1.is_empty());
    }

    #[test]
    fn keyed_one_pass_matches_the_sealers_keyed_chunk_id() {
        let data: Vec<u8> = (0..300_000u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
        let sealer = crate::Sealer::encrypted(crate::ChunkCipher::new(&[3u8; 32]));
        let key = sealer.id_key().copied();
        for len in [0, 1, 8192, 8193, 3 * 8192 + 100, 131_072, 300_000] {
            let (id, hashes) = hash_buffer(&data[..len], true, key.as_ref());
            assert_eq!(id, sealer.chunk_id(&data[..len]), "length {len}");
            assert_ne!(id, crate::chunk_id(&data[..len]), "length {len}");
            if len >= PAGE_SIZE {
                assert_ne!(hashes[0], hash_buffer(&data[..len], true, None).1[0], "page hashes are keyed too");
            }
        }
    }
}
