//! The collector's metrics, named `strata_collector_*`: what its backups sent into the pipeline, and how
//! each backup ended, per stanza and type.
//!
//! Chunks and bytes are counted on the send path of every chunk, so they are plain atomics
//! ([`SentCounters`]), copied into the registry only when it is rendered; an update of the registry
//! itself takes a mutex and a map lookup. Everything else changes once per backup.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use strata_messages::{BackupSummary, BackupType};
use strata_metrics::{Counter, Gauge, Registry};

/// Chunks and plain bytes a [`crate::job::Job`] published; shared by every job of one collector.
#[derive(Debug, Default)]
pub struct SentCounters {
    chunks: AtomicU64,
    bytes: AtomicU64,
}

impl SentCounters {
    pub fn add(&self, plain_bytes: u64) {
        self.chunks.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(plain_bytes, Ordering::Relaxed);
    }

    pub fn chunks(&self) -> u64 {
        self.chunks.load(Ordering::Relaxed)
    }

    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Relaxed)
    }
}

const TYPES: [BackupType; 3] = [BackupType::Full, BackupType::Diff, BackupType::Incr];

/// Why something the collector was asked to do failed, as the `kind` label of its errors.
#[derive(Debug, Clone, Copy)]
pub enum CollectorError {
    /// A backup that ended without being committed.
    Backup,
    /// A backup request that was malformed, or refused because the stanza's backup was already running.
    Request,
}

impl CollectorError {
    const ALL: [CollectorError; 2] = [CollectorError::Backup, CollectorError::Request];

    fn label(self) -> &'static str {
        match self {
            CollectorError::Backup => "backup",
            CollectorError::Request => "request",
        }
    }
}

#[derive(Clone)]
pub struct CollectorMetrics {
    sent: Arc<SentCounters>,
    backups: Counter,
    running: Gauge,
    last_duration: Gauge,
    last_sent: Gauge,
    last_stored: Gauge,
    errors: Counter,
}

impl CollectorMetrics {
    /// Registers the collector's families in `registry`, with every series of `stanzas` at 0.
    pub fn new<'a>(registry: &Registry, stanzas: impl IntoIterator<Item = &'a str>) -> CollectorMetrics {
        let sent = Arc::new(SentCounters::default());
        let chunks = registry.counter("strata_collector_chunks_total", "Chunks the collector's backups published into the pipeline.");
        let bytes = registry.counter("strata_collector_bytes_total", "Plain bytes of the chunks the collector's backups published.");
        let counted = sent.clone();
        registry.on_render(move || {
            chunks.set_total(&[], counted.chunks());
            bytes.set_total(&[], counted.bytes());
        });
        let m = CollectorMetrics {
            sent,
            backups: registry.counter("strata_collector_backups_total", "Backups the collector ran, by outcome (success: committed)."),
            running: registry.gauge("strata_collector_backups_running", "Backups of the stanza running on this collector (0 or 1)."),
            last_duration: registry.gauge(
                "strata_collector_backup_last_duration_seconds",
                "Duration of the stanza's last successful backup of this type, from request to commit.",
            ),
            last_sent: registry.gauge("strata_collector_backup_last_sent_bytes", "Plain bytes the stanza's last successful backup of this type sent."),
            last_stored: registry.gauge(
                "strata_collector_backup_last_stored_bytes",
                "Sealed bytes the stanza's last successful backup of this type added to the repository.",
            ),
            errors: registry.counter("strata_collector_errors_total", "Failed backups and refused backup requests."),
        };
        for kind in CollectorError::ALL {
            m.errors.inc_by(&[("kind", kind.label())], 0);
        }
        for stanza in stanzas {
            m.running.set(&[("stanza", stanza)], 0.0);
            for t in TYPES {
                for outcome in ["success", "failure"] {
                    m.backups.inc_by(&[("stanza", stanza), ("type", t.as_str()), ("outcome", outcome)], 0);
                }
            }
        }
        m
    }

    /// For a collector nobody scrapes (the single-host mode): the same counting, into a registry of its own.
    pub fn unexported() -> CollectorMetrics {
        CollectorMetrics::new(&Registry::new(), [])
    }

    /// The counters every job of this collector adds its chunks to.
    pub fn sent(&self) -> Arc<SentCounters> {
        self.sent.clone()
    }

    pub fn backup_started(&self, stanza: &str) {
        self.running.set(&[("stanza", stanza)], 1.0);
    }

    /// A backup of `stanza` ended after `took`: committed with `summary`, or failed.
    pub fn backup_ended(&self, stanza: &str, backup_type: BackupType, took: Duration, summary: Option<&BackupSummary>) {
        let t = backup_type.as_str();
        self.running.set(&[("stanza", stanza)], 0.0);
        let labels = [("stanza", stanza), ("type", t)];
        match summary {
            Some(s) => {
                self.backups.inc(&[("stanza", stanza), ("type", t), ("outcome", "success")]);
                self.last_duration.set(&labels, took.as_secs_f64());
                self.last_sent.set(&labels, s.sent_bytes as f64);
                self.last_stored.set(&labels, s.stored_bytes as f64);
            }
            None => {
                self.backups.inc(&[("stanza", stanza), ("type", t), ("outcome", "failure")]);
                self.error(CollectorError::Backup);
            }
        }
    }

    pub fn error(&self, kind: CollectorError) {
        self.errors.inc(&[("kind", kind.label())]);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn series_exist_at_zero_and_follow_backups() {
        let r = Registry::new();
        let m = CollectorMetrics::new(&r, ["main"]);
        let text = r.render();
        for line in [
            "strata_collector_chunks_total 0\n",
            "strata_collector_bytes_total 0\n",
            "strata_collector_backups_total{stanza=\"main\",type=\"incr\",outcome=\"failure\"} 0\n",
            "strata_collector_backups_running{stanza=\"main\"} 0\n",
            "strata_collector_errors_total{kind=\"backup\"} 0\n",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        m.sent().add(1000);
        m.sent().add(24);
        m.backup_started("main");
        assert!(r.render().contains("strata_collector_backups_running{stanza=\"main\"} 1\n"));
        m.backup_ended("main", BackupType::Full, Duration::from_millis(2500), None);
        let text = r.render();
        assert!(text.contains("strata_collector_chunks_total 2\n"), "{text}");
        assert!(text.contains("strata_collector_bytes_total 1024\n"), "{text}");
        assert!(text.contains("strata_collector_backups_total{stanza=\"main\",type=\"full\",outcome=\"failure\"} 1\n"), "{text}");
        assert!(text.contains("strata_collector_errors_total{kind=\"backup\"} 1\n"), "{text}");
        assert!(!text.contains("strata_collector_backup_last_duration_seconds{"), "a failure sets no last duration:\n{text}");
    }
}
