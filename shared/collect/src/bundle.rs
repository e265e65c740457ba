//! Small pieces share chunks.
//!
//! A cluster with 100,000 tables has 300,000 files of a page or two. Sent one chunk each, they cost a
//! message, a seal, a pack index entry and a chunk table entry apiece, and memory that grows with the file
//! count in every stage. Instead, a small piece (a small file, or the few changed pages of an incremental)
//! is appended to the open bundle, and the bundle is sent as one ordinary chunk once it is full. The file's
//! entry is final at once: it points at the bundle's reserved number in the chunk table.

use crate::chunk_table::ChunkTable;
use crate::job::{Job, JobError};
use std::sync::Mutex;

struct Open {
    number: u32,
    buf: Vec<u8>,
}

pub struct Bundler {
    capacity: usize,
    open: Mutex<Option<Open>>,
}

impl Bundler {
    pub fn new(capacity: usize) -> Self {
        Bundler { capacity, open: Mutex::new(None) }
    }

    /// Appends `bytes` to the open bundle; returns its chunk number and the offset of `bytes` in it. Sends
    /// the bundle it closes to make room.
    pub async fn add(&self, job: &Job, table: &ChunkTable, bytes: &[u8]) -> Result<(u32, u32), JobError> {
        let (at, full) = {
            let mut open = self.open.lock().expect("bundle");
            let full = match &*open {
                Some(o) if o.buf.len() + bytes.len() > self.capacity => open.take(),
                _ => None,
            };
            let o = open.get_or_insert_with(|| Open { number: table.reserve(), buf: Vec::with_capacity(self.capacity + crate::backup::MESSAGE_ROOM) });
            let at = (o.number, o.buf.len() as u32);
            o.buf.extend_from_slice(bytes);
            (at, full)
        };
        if let Some(full) = full {
            send(job, table, full).await?;
        }
        Ok(at)
    }

    /// Sends the open bundle, if any.
    pub async fn flush(&self, job: &Job, table: &ChunkTable) -> Result<(), JobError> {
        let open = self.open.lock().expect("bundle").take();
        match open {
            Some(o) => send(job, table, o).await,
            None => Ok(()),
        }
    }
}

async fn send(job: &Job, table: &ChunkTable, o: Open) -> Result<(), JobError> {
    let id = job.send(o.buf, true).await?;
    table.fill(o.number, id);
    Ok(())
}
