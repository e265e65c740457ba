//! Checkpoints of a running backup, so an interrupted one is resumed instead of started over.
//!
//! Every few seconds the collector writes, through the pipeline, a manifest head naming every chunk
//! confirmed stored so far and every file list whose chunks all are, and asks an uploader to record it as
//! the backup's [`BackupCheckpoint`]. The next backup of the stanza (`strata backup` passes the newest
//! checkpoint along) does not send those chunks again and does not read again the files those lists hold,
//! when they have not changed since. A checkpoint's cost grows with the chunk table, so checkpoints are
//! spaced to write at most about [`BYTES_PER_SECOND`] of heads. The head is sealed here and skips the
//! sealers' queue ([`Job::send_sealed`]): behind a full in-flight window it would describe a state
//! seconds old by the time it is stored.

use crate::bundle::Bundler;
use crate::chunk_table::ChunkTable;
use crate::file_lists::FileListWriter;
use crate::job::Job;
use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;
use strata_messages::{encode, BackupCheckpoint, ChunkRef, ManifestHead, FORMAT_VERSION};
use tokio::sync::watch;
use tracing::debug;

const MIN_INTERVAL: Duration = Duration::from_secs(1);
const BYTES_PER_SECOND: f64 = 1024.0 * 1024.0;
/// How long a checkpoint's own head may take to be stored before the checkpoint is skipped.
const HEAD_WAIT: Duration = Duration::from_secs(30);

/// What a checkpoint is made of; shared with the backup that fills it.
pub struct Sources {
    pub job: Arc<Job>,
    pub table: Arc<ChunkTable>,
    pub lists: Arc<FileListWriter>,
    pub bundler: Arc<Bundler>,
    /// The head to write, with `chunks` and `file_lists` left empty.
    pub template: ManifestHead,
    pub attempt_start: i64,
    pub chunk_size: usize,
}

pub struct Checkpointer {
    stop: watch::Sender<bool>,
    task: tokio::task::JoinHandle<()>,
}

impl Checkpointer {
    pub fn start(sources: Sources) -> Checkpointer {
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(sources, stopped));
        Checkpointer { stop, task }
    }

    /// Stops after the checkpoint being written, if any (a chunk half sent would never be confirmed).
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

async fn run(s: Sources, mut stopped: watch::Receiver<bool>) {
    let mut interval = MIN_INTERVAL;
    let mut last = (0usize, 0usize);
    loop {
        tokio::select! {
            _ = tokio::time::sleep(interval) => {}
            _ = stopped.changed() => return,
        }
        // Send the open bundle and the entries gathered since the last checkpoint even if they are not
        // full, so that the next checkpoint can name them.
        if s.bundler.flush(&s.job, &s.table).await.is_err() || s.lists.flush(&s.job).await.is_err() {
            return;
        }
        let (chunks, missing) = s.table.resolve(|id| s.job.location(id));
        let file_lists: Vec<ChunkRef> = s
            .lists
            .sent()
            .iter()
            .filter(|l| l.uses.iter().all(|n| missing.binary_search(n).is_err()))
            .filter_map(|l| s.job.location(&l.id))
            .collect();
        let progress = (chunks.len() - missing.len(), file_lists.len());
        if progress == last {
            continue;
        }
        let head = ManifestHead { chunks, file_lists, ..s.template.clone() };
        let bytes = encode(&head);
        let mut ids = Vec::new();
        for piece in bytes.chunks(s.chunk_size) {
            match s.job.send_sealed(piece.to_vec()).await {
                Ok(id) => ids.push(id),
                Err(_) => return, // the backup is failing; it reports why
            }
        }
        let deadline = tokio::time::Instant::now() + HEAD_WAIT;
        let head_chunks = loop {
            if let Some(refs) = ids.iter().map(|id| s.job.location(id)).collect::<Option<Vec<ChunkRef>>>() {
                break Some(refs);
            }
            if tokio::time::Instant::now() >= deadline {
                break None;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(50)) => {}
                _ = stopped.changed() => return,
            }
        };
        let Some(head_chunks) = head_chunks else { continue };
        let packs: Vec<_> =
            head.packs().chain(head_chunks.iter().map(|c| c.pack)).collect::<HashSet<_>>().into_iter().collect();
        let checkpoint = BackupCheckpoint {
            version: FORMAT_VERSION,
            label: s.template.summary.label.clone(),
            attempt_start: s.attempt_start,
            head_len: bytes.len() as u64,
            head_chunks,
        };
        if s.job.checkpoint(packs, checkpoint).await.is_err() {
            return;
        }
        debug!(chunks = progress.0, file_lists = progress.1, bytes = bytes.len(), "checkpoint sent");
        last = progress;
        interval = MIN_INTERVAL.max(Duration::from_secs_f64(bytes.len() as f64 / BYTES_PER_SECOND));
    }
}
