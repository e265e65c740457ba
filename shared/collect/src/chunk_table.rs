//! The chunk table of the manifest being written.
//!
//! File entries point at chunks by their number in this table ([`strata_messages::Piece::chunk`]), so an
//! entry is final as soon as its file is read, while its chunks are still on their way to a pack. Numbers
//! are handed out as chunks are sent (or taken from a reference backup, whose locations are already known);
//! the table is resolved into [`ChunkRef`]s once every chunk is confirmed, or partially for a checkpoint.

use std::collections::HashMap;
use std::sync::Mutex;
use strata_messages::{ChunkId, ChunkRef};

enum Slot {
    /// Sent by this backup; its location comes with the uploader's confirmation.
    Sent(ChunkId),
    /// Already stored (a reference's or an interrupted attempt's chunk).
    Known(ChunkRef),
    /// A shared chunk still being filled ([`crate::bundle`]).
    Reserved,
}

#[derive(Default)]
struct Inner {
    slots: Vec<Slot>,
    by_id: HashMap<ChunkId, u32>,
}

#[derive(Default)]
pub struct ChunkTable {
    inner: Mutex<Inner>,
}

impl ChunkTable {
    /// The number of a chunk this backup sent (the same number for the same content).
    pub fn sent(&self, id: ChunkId) -> u32 {
        let mut t = self.inner.lock().expect("chunk table");
        if let Some(&n) = t.by_id.get(&id) {
            return n;
        }
        let n = t.slots.len() as u32;
        t.slots.push(Slot::Sent(id));
        t.by_id.insert(id, n);
        n
    }

    /// The number of a chunk already stored.
    pub fn known(&self, r: ChunkRef) -> u32 {
        let mut t = self.inner.lock().expect("chunk table");
        if let Some(&n) = t.by_id.get(&r.id) {
            if let Slot::Sent(_) = t.slots[n as usize] {
                t.slots[n as usize] = Slot::Known(r);
            }
            return n;
        }
        let n = t.slots.len() as u32;
        t.slots.push(Slot::Known(r));
        t.by_id.insert(r.id, n);
        n
    }

    /// A number for a chunk whose content is not complete yet; [`ChunkTable::fill`] names it once sent.
    pub fn reserve(&self) -> u32 {
        let mut t = self.inner.lock().expect("chunk table");
        t.slots.push(Slot::Reserved);
        (t.slots.len() - 1) as u32
    }

    pub fn fill(&self, n: u32, id: ChunkId) {
        let mut t = self.inner.lock().expect("chunk table");
        t.slots[n as usize] = Slot::Sent(id);
        t.by_id.entry(id).or_insert(n);
    }

    /// The table as a manifest records it. `locate` answers where a sent chunk is stored; a chunk it does not
    /// know (not confirmed yet) becomes [`ChunkRef::UNKNOWN`], and its number is returned in the second list.
    pub fn resolve(&self, locate: impl Fn(&ChunkId) -> Option<ChunkRef>) -> (Vec<ChunkRef>, Vec<u32>) {
        let t = self.inner.lock().expect("chunk table");
        let mut missing = Vec::new();
        let refs = t
            .slots
            .iter()
            .enumerate()
            .map(|(n, slot)| match slot {
                Slot::Known(r) => *r,
                Slot::Sent(id) => locate(id).unwrap_or_else(|| {
                    missing.push(n as u32);
                    ChunkRef::UNKNOWN
                }),
                Slot::Reserved => {
                    missing.push(n as u32);
                    ChunkRef::UNKNOWN
                }
            })
            .collect();
        (refs, missing)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(n: u8) -> ChunkRef {
        ChunkRef { id: [n; 32], pack: [n; 16], offset: 0, sealed_len: 1, raw_len: 1 }
    }

    #[test]
    fn numbers_are_stable_and_resolve() {
        let t = ChunkTable::default();
        assert_eq!(t.sent([1; 32]), 0);
        assert_eq!(t.known(r(2)), 1);
        assert_eq!(t.sent([1; 32]), 0, "same content, same number");
        assert_eq!(t.known(r(2)), 1);
        let b = t.reserve();
        assert_eq!(b, 2);
        let (refs, missing) = t.resolve(|_| None);
        assert_eq!(missing, vec![0, 2]);
        assert!(refs[0].is_unknown() && refs[2].is_unknown());
        assert_eq!(refs[1], r(2));
        t.fill(b, [3; 32]);
        let (refs, missing) = t.resolve(|id| Some(r(id[0])));
        assert!(missing.is_empty());
        assert_eq!(refs, vec![r(1), r(2), r(3)]);
    }
}
