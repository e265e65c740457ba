//! The replicator's metrics, all named `strata_replication_*` (and `strata_s3_retries_total` for the S3
//! repositories it uses), labelled by target repository.

use crate::{Copied, Lag};
use strata_metrics::{Counter, Gauge, Registry};

#[derive(Clone)]
pub struct ReplicationMetrics {
    registry: Registry,
    lag_bytes: Gauge,
    lag_objects: Gauge,
    lag_seconds: Gauge,
    oldest: Gauge,
    copied_bytes: Counter,
    copied_objects: Counter,
    errors: Counter,
    s3_retries: Counter,
}

impl ReplicationMetrics {
    pub fn new(registry: Registry) -> ReplicationMetrics {
        ReplicationMetrics {
            lag_bytes: registry.gauge("strata_replication_lag_bytes", "Bytes the target still lacks of the source's committed backups and archived WAL."),
            lag_objects: registry.gauge("strata_replication_lag_objects", "Objects (packs, records) the target still lacks."),
            lag_seconds: registry.gauge("strata_replication_lag_seconds", "Seconds since the oldest object the target lacks was written in the source (0 when caught up)."),
            oldest: registry.gauge(
                "strata_replication_oldest_uncopied_timestamp_seconds",
                "When the oldest object the target lacks was written in the source; the object is the label.",
            ),
            copied_bytes: registry.counter("strata_replication_copied_bytes_total", "Bytes written to the target and verified."),
            copied_objects: registry.counter("strata_replication_copied_objects_total", "Objects written to the target and verified."),
            errors: registry.counter("strata_replication_errors_total", "Failed scans and copies (each is retried)."),
            s3_retries: registry.counter("strata_s3_retries_total", "Requests to an S3 repository that were retried."),
            registry,
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    pub fn lag(&self, target: &str, lag: &Lag, now: i64) {
        let l = [("target", target)];
        self.lag_bytes.set(&l, lag.bytes as f64);
        self.lag_objects.set(&l, lag.objects as f64);
        self.lag_seconds.set(&l, lag.seconds(now) as f64);
        self.oldest.remove_where("target", target);
        if let Some((path, at)) = &lag.oldest {
            self.oldest.set(&[("target", target), ("object", path)], *at as f64);
        }
        // Counters exist from the start, so a scrape shows 0 rather than nothing.
        self.copied_bytes.inc_by(&l, 0);
        self.copied_objects.inc_by(&l, 0);
        self.errors.inc_by(&l, 0);
    }

    pub fn copied(&self, target: &str, copied: Copied) {
        self.copied_bytes.inc_by(&[("target", target)], copied.bytes);
        self.copied_objects.inc_by(&[("target", target)], copied.objects);
    }

    pub fn error(&self, target: &str) {
        self.errors.inc(&[("target", target)]);
    }

    pub fn s3_retries(&self, repo: &str, total: u64) {
        self.s3_retries.set_total(&[("repo", repo)], total);
    }
}
