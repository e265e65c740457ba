//! The chunk index an uploader deduplicates against: built from the pack indexes and refreshed
//! incrementally, apart from the repository's operations because only writers need it.

use super::*;

/// What the repository holds: chunk id -> location, built from the pack indexes and refreshed incrementally.
#[derive(Default)]
pub struct ChunkIndex {
    chunks: HashMap<ChunkId, ChunkRef>,
    packs: HashSet<PackId>,
}

impl ChunkIndex {
    /// Reads the indexes of packs not seen yet.
    pub async fn refresh(&mut self, repo: &Repo) -> Result<()> {
        for (id, size) in repo.list_packs().await? {
            if self.packs.contains(&id) {
                continue;
            }
            for r in repo.pack_index(&id, size).await? {
                self.chunks.entry(r.id).or_insert(r);
            }
            self.packs.insert(id);
        }
        Ok(())
    }

    pub fn get(&self, id: &ChunkId) -> Option<&ChunkRef> {
        self.chunks.get(id)
    }

    pub fn insert(&mut self, r: ChunkRef) {
        self.packs.insert(r.pack);
        self.chunks.entry(r.id).or_insert(r);
    }

    pub fn len(&self) -> usize {
        self.chunks.len()
    }

    pub fn is_empty(&self) -> bool {
        self.chunks.is_empty()
    }
}
