//! The manifest's file entries, written while the backup runs.
//!
//! Entries are final when their file is read (they point at chunk numbers, see [`crate::chunk_table`]), so
//! they are gathered into [`FileList`] chunks of about `target` bytes and sent down the pipeline like any
//! chunk as soon as one fills: however many files the cluster has, the collector holds one list. Each
//! sent list remembers which chunk numbers its entries use, so a checkpoint can tell which lists are
//! safe to name (every chunk they point at is stored).
//!
//! Lists are sealed here and go straight to the uploaders ([`Job::send_presealed`]), not behind the data
//! queued for the sealers: a list is what lets a resumed backup skip the files it names, and behind a
//! full in-flight window it would be stored seconds after its files, or never if a sealer dies.

use crate::job::{Job, JobError};
use std::sync::{Arc, Mutex};
use strata_messages::{encode, ChunkId, FileEntry, FileList, FORMAT_VERSION, ZERO_CHUNK};

/// A file list sent down the pipeline.
#[derive(Clone)]
pub struct SentList {
    pub id: ChunkId,
    /// The chunk numbers its entries use, sorted, without duplicates.
    pub uses: Vec<u32>,
}

#[derive(Default)]
struct Pending {
    files: Vec<FileEntry>,
    bytes: usize,
}

pub struct FileListWriter {
    target: usize,
    pending: Mutex<Pending>,
    sent: Mutex<Vec<SentList>>,
}

/// About how many bytes an entry takes in a list.
fn encoded_size(e: &FileEntry) -> usize {
    64 + e.path.len() + e.link_target.len() + e.pieces.len() * 12 + e.page_hashes.len() * 8
}

impl FileListWriter {
    pub fn new(target: usize) -> Self {
        FileListWriter { target, pending: Mutex::default(), sent: Mutex::default() }
    }

    /// Adds a finished entry; sends the list it fills.
    pub async fn add(&self, job: &Arc<Job>, entry: FileEntry) -> Result<(), JobError> {
        let full = {
            let mut p = self.pending.lock().expect("pending file list");
            p.bytes += encoded_size(&entry);
            p.files.push(entry);
            match p.bytes >= self.target {
                true => Some(std::mem::take(&mut *p)),
                false => None,
            }
        };
        match full {
            Some(p) => self.send(job, p.files).await,
            None => Ok(()),
        }
    }

    /// Sends what is pending.
    pub async fn flush(&self, job: &Arc<Job>) -> Result<(), JobError> {
        let p = std::mem::take(&mut *self.pending.lock().expect("pending file list"));
        match p.files.is_empty() {
            true => Ok(()),
            false => self.send(job, p.files).await,
        }
    }

    /// Every list sent so far.
    pub fn sent(&self) -> Vec<SentList> {
        self.sent.lock().expect("sent file lists").clone()
    }

    async fn send(&self, job: &Arc<Job>, files: Vec<FileEntry>) -> Result<(), JobError> {
        let mut uses: Vec<u32> =
            files.iter().flat_map(|f| f.pieces.iter().map(|p| p.chunk)).filter(|&c| c != ZERO_CHUNK).collect();
        uses.sort_unstable();
        uses.dedup();
        let sealing = job.clone();
        // Up to a megabyte compressed at the configured level: blocking work.
        let (id, raw_len, message) = tokio::task::spawn_blocking(move || {
            let bytes = encode(&FileList { version: FORMAT_VERSION, files });
            let id = sealing.chunk_id(&bytes);
            (id, bytes.len(), sealing.sealed_message(id, &bytes))
        })
        .await
        .expect("file list sealing task");
        let id = job.send_presealed(id, raw_len, message).await?;
        self.sent.lock().expect("sent file lists").push(SentList { id, uses });
        Ok(())
    }
}
