//! The uploader's metrics, named `strata_uploader_*` (and `strata_s3_retries_total{repo}` for an S3
//! repository, as the replicator exports it). Chunks, bytes and packs change with every batch, so they
//! are atomics copied into the registry when it is rendered (see `strata_metrics::Registry::on_render`).
//!
//! WAL pushes show here: `archive-push` runs in the `strata` command on the database host, and its
//! chunks and its WAL record reach the repository through an uploader (`kind="wal"` commits).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use strata_metrics::{Counter, Registry};

/// What an uploader commits, as the `kind` label of `strata_uploader_commits_total`.
#[derive(Debug, Clone, Copy)]
pub enum CommitKind {
    Backup,
    Wal,
    Checkpoint,
}

impl CommitKind {
    fn label(self) -> &'static str {
        match self {
            CommitKind::Backup => "backup",
            CommitKind::Wal => "wal",
            CommitKind::Checkpoint => "checkpoint",
        }
    }
}

/// How a commit ended, as the `outcome` label.
#[derive(Debug, Clone, Copy)]
pub enum CommitOutcome {
    Stored,
    /// A WAL file already archived with the same content.
    AlreadyArchived,
    Refused,
}

impl CommitOutcome {
    fn label(self) -> &'static str {
        match self {
            CommitOutcome::Stored => "stored",
            CommitOutcome::AlreadyArchived => "already_archived",
            CommitOutcome::Refused => "refused",
        }
    }
}

/// Every (kind, outcome) that can happen, each exported from the start.
const COMMITS: [(CommitKind, CommitOutcome); 7] = [
    (CommitKind::Backup, CommitOutcome::Stored),
    (CommitKind::Backup, CommitOutcome::Refused),
    (CommitKind::Wal, CommitOutcome::Stored),
    (CommitKind::Wal, CommitOutcome::AlreadyArchived),
    (CommitKind::Wal, CommitOutcome::Refused),
    (CommitKind::Checkpoint, CommitOutcome::Stored),
    (CommitKind::Checkpoint, CommitOutcome::Refused),
];

/// What went wrong, as the `kind` label of `strata_uploader_errors_total`.
#[derive(Debug, Clone, Copy)]
pub enum UploaderError {
    /// The work queue could not be read.
    Input,
    /// A message that is not upload work; dropped.
    Malformed,
    /// A pack could not be written; its chunks' jobs are told at once.
    PackWrite,
    /// An acknowledgement failed after the work was done (it will be redelivered and found done).
    Ack,
    /// A confirmation to a job could not be sent (the job waits, then fails on its stall deadline).
    Event,
    /// A chunk a collector asked for could not be read or sent.
    Fetch,
}

impl UploaderError {
    const ALL: [UploaderError; 6] = [
        UploaderError::Input,
        UploaderError::Malformed,
        UploaderError::PackWrite,
        UploaderError::Ack,
        UploaderError::Event,
        UploaderError::Fetch,
    ];

    fn label(self) -> &'static str {
        match self {
            UploaderError::Input => "input",
            UploaderError::Malformed => "malformed",
            UploaderError::PackWrite => "pack_write",
            UploaderError::Ack => "ack",
            UploaderError::Event => "event",
            UploaderError::Fetch => "fetch",
        }
    }
}

#[derive(Default)]
struct Counts {
    chunks: AtomicU64,
    deduplicated: AtomicU64,
    bytes: AtomicU64,
    packs: AtomicU64,
}

#[derive(Clone)]
pub struct UploaderMetrics {
    registry: Registry,
    counts: Arc<Counts>,
    commits: Counter,
    errors: Counter,
}

impl UploaderMetrics {
    pub fn new(registry: &Registry) -> UploaderMetrics {
        let counts = Arc::new(Counts::default());
        let chunks = registry.counter("strata_uploader_chunks_total", "Chunks confirmed stored to their jobs (written, or found already stored).");
        let deduplicated = registry.counter(
            "strata_uploader_deduplicated_chunks_total",
            "Chunks confirmed without being written: the repository or the same pack already held them.",
        );
        let bytes = registry.counter("strata_uploader_bytes_total", "Sealed chunk bytes written into packs.");
        let packs = registry.counter("strata_uploader_packs_total", "Packs written to the repository.");
        let seen = counts.clone();
        registry.on_render(move || {
            chunks.set_total(&[], seen.chunks.load(Ordering::Relaxed));
            deduplicated.set_total(&[], seen.deduplicated.load(Ordering::Relaxed));
            bytes.set_total(&[], seen.bytes.load(Ordering::Relaxed));
            packs.set_total(&[], seen.packs.load(Ordering::Relaxed));
        });
        let commits = registry.counter("strata_uploader_commits_total", "Backup, WAL and checkpoint records the uploader was asked to write, by outcome.");
        for (kind, outcome) in COMMITS {
            commits.inc_by(&[("kind", kind.label()), ("outcome", outcome.label())], 0);
        }
        let errors = registry.counter("strata_uploader_errors_total", "Uploader failures by kind (refused commits are in strata_uploader_commits_total).");
        for kind in UploaderError::ALL {
            errors.inc_by(&[("kind", kind.label())], 0);
        }
        UploaderMetrics { registry: registry.clone(), counts, commits, errors }
    }

    /// For an uploader nobody scrapes (the single-host mode): the same counting, into a registry of its own.
    pub fn unexported() -> UploaderMetrics {
        UploaderMetrics::new(&Registry::new())
    }

    /// Exports the retry count of the S3 repository `repo` as `strata_s3_retries_total{repo}`.
    pub fn watch_s3(&self, repo: &str, s3: strata_storage::StorageStats) {
        let retries = self.registry.counter("strata_s3_retries_total", "Requests to an S3 repository that were retried.");
        let repo = repo.to_string();
        retries.inc_by(&[("repo", &repo)], 0);
        self.registry.on_render(move || retries.set_total(&[("repo", &repo)], s3.retries()));
    }

    /// A batch was confirmed: `chunks` chunks, `deduplicated` of them not written, in a pack of `bytes`
    /// sealed bytes (none when every chunk was already stored).
    pub fn batch_stored(&self, chunks: u64, deduplicated: u64, pack_bytes: Option<u64>) {
        self.counts.chunks.fetch_add(chunks, Ordering::Relaxed);
        self.counts.deduplicated.fetch_add(deduplicated, Ordering::Relaxed);
        if let Some(bytes) = pack_bytes {
            self.counts.packs.fetch_add(1, Ordering::Relaxed);
            self.counts.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    pub fn commit(&self, kind: CommitKind, outcome: CommitOutcome) {
        self.commits.inc(&[("kind", kind.label()), ("outcome", outcome.label())]);
    }

    pub fn error(&self, kind: UploaderError) {
        self.errors.inc(&[("kind", kind.label())]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_start_at_zero_and_add_up() {
        let r = Registry::new();
        let m = UploaderMetrics::new(&r);
        let text = r.render();
        for line in [
            "strata_uploader_chunks_total 0\n",
            "strata_uploader_bytes_total 0\n",
            "strata_uploader_packs_total 0\n",
            "strata_uploader_commits_total{kind=\"wal\",outcome=\"already_archived\"} 0\n",
            "strata_uploader_errors_total{kind=\"pack_write\"} 0\n",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        m.batch_stored(3, 1, Some(5000));
        m.batch_stored(2, 2, None);
        m.commit(CommitKind::Backup, CommitOutcome::Stored);
        let text = r.render();
        assert!(text.contains("strata_uploader_chunks_total 5\n"), "{text}");
        assert!(text.contains("strata_uploader_deduplicated_chunks_total 3\n"), "{text}");
        assert!(text.contains("strata_uploader_bytes_total 5000\n"), "{text}");
        assert!(text.contains("strata_uploader_packs_total 1\n"), "{text}");
        assert!(text.contains("strata_uploader_commits_total{kind=\"backup\",outcome=\"stored\"} 1\n"), "{text}");
    }
}
