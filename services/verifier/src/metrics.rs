//! The verifier's metrics: the stanzas' health as `info` computes it (`strata_verify::health`), and the outcome
//! of verifications. Names follow Prometheus conventions and are the ones `deploy/prometheus` and
//! `deploy/grafana` use.

use strata_verify::health::{Health, Level};
use strata_metrics::{Counter, Gauge, Registry};
use strata_repo::verify_results::{VerifyResult, WAL_SUBJECT};

#[derive(Clone)]
pub struct VerifierMetrics {
    registry: Registry,
    backup_last_success: Gauge,
    backup_age: Gauge,
    backup_duration: Gauge,
    backup_stored: Gauge,
    rpo: Gauge,
    archive_lag_bytes: Gauge,
    archive_lag_seconds: Gauge,
    archive_failed: Counter,
    archive_archived: Counter,
    archive_last_archived: Gauge,
    archive_last_failed: Gauge,
    repo_used: Gauge,
    repo_size: Gauge,
    repo_free: Gauge,
    verify_last: Gauge,
    verify_errors: Gauge,
    verify_duration: Gauge,
    verify_bytes: Counter,
    verify_runs: Counter,
    stanza_status: Gauge,
    round_errors: Counter,
    rounds: Counter,
    alerts_firing: Gauge,
    restore_test_last: Gauge,
    restore_test_success: Gauge,
    restore_test_duration: Gauge,
    restore_test_memory: Gauge,
}

impl VerifierMetrics {
    pub fn new(registry: Registry) -> VerifierMetrics {
        VerifierMetrics {
            backup_last_success: registry.gauge("strata_backup_last_success_timestamp_seconds", "When the newest committed backup of the type ended."),
            backup_age: registry.gauge("strata_backup_age_seconds", "Seconds since the newest committed backup of the type ended."),
            backup_duration: registry.gauge("strata_backup_duration_seconds", "How long the newest backup of the type took."),
            backup_stored: registry.gauge("strata_backup_stored_bytes", "Bytes the newest backup of the type added to the repository."),
            rpo: registry.gauge("strata_stanza_rpo_seconds", "The stanza's recovery point objective (rpo_secs)."),
            archive_lag_bytes: registry.gauge("strata_archive_lag_bytes", "WAL bytes written after the end of the last archived segment."),
            archive_lag_seconds: registry.gauge("strata_archive_lag_seconds", "How long a whole segment has waited to be archived (0: none waits)."),
            archive_failed: registry.counter("strata_archive_failed_total", "Failed archive_command runs (pg_stat_archiver.failed_count)."),
            archive_archived: registry.counter("strata_archive_archived_total", "WAL files archived (pg_stat_archiver.archived_count)."),
            archive_last_archived: registry.gauge("strata_archive_last_archived_timestamp_seconds", "When the last WAL file was archived."),
            archive_last_failed: registry.gauge("strata_archive_last_failed_timestamp_seconds", "When archiving last failed (0: never)."),
            repo_used: registry.gauge("strata_repo_used_bytes", "Bytes of the repository's objects."),
            repo_size: registry.gauge("strata_repo_size_bytes", "Size of the filesystem holding the repository (POSIX repositories)."),
            repo_free: registry.gauge("strata_repo_free_bytes", "Free bytes on the filesystem holding the repository (POSIX repositories)."),
            verify_last: registry.gauge("strata_verify_last_timestamp_seconds", "When the newest stored verification of the stanza in the repository ran."),
            verify_errors: registry.gauge("strata_verify_errors", "Problems the stored verifications of the stanza's backups and WAL found (0: intact)."),
            verify_duration: registry.gauge("strata_verify_duration_seconds", "How long the last verification by this verifier took."),
            verify_bytes: registry.counter("strata_verify_bytes_total", "Stored bytes read back and checked by this verifier."),
            verify_runs: registry.counter("strata_verify_runs_total", "Verifications run by this verifier, by subject kind (backup, wal) and outcome."),
            stanza_status: registry.gauge("strata_stanza_status", "The stanza's status over its repositories: 0 ok, 1 warning, 2 critical."),
            round_errors: registry.counter("strata_verifier_errors_total", "Verification rounds or health evaluations that failed (retried next round)."),
            rounds: registry.counter(
                "strata_verifier_rounds_total",
                "Rounds this verifier finished (health, verification, alerts, restore tests): what a test or an operator waits on to know a round has passed.",
            ),
            alerts_firing: registry.gauge("strata_alerts_firing", "Alerts firing now, by tier."),
            restore_test_last: registry.gauge("strata_restore_test_last_timestamp_seconds", "When the newest restore test of the stanza started."),
            restore_test_success: registry.gauge("strata_restore_test_success", "Whether the newest restore test passed (1) or failed (0)."),
            restore_test_duration: registry.gauge(
                "strata_restore_test_duration_seconds",
                "Phases of the newest restore test: restore (files written), replay (server start to end of recovery), total.",
            ),
            restore_test_memory: registry.gauge("strata_restore_test_peak_memory_bytes", "Peak memory of the newest restore test's server."),
            registry,
        }
    }

    pub fn alerts_firing(&self, tier: &str, count: usize) {
        self.alerts_firing.set(&[("tier", tier)], count as f64);
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// One verification by this process.
    pub fn verified(&self, stanza: &str, repo: &str, r: &VerifyResult) {
        let l = [("stanza", stanza), ("repo", repo)];
        self.verify_duration.set(&l, r.duration_secs);
        self.verify_bytes.inc_by(&l, r.stored_bytes);
        let kind = if r.subject == WAL_SUBJECT { "wal" } else { "backup" };
        let outcome = if r.ok() { "ok" } else { "damaged" };
        self.verify_runs.inc(&[("stanza", stanza), ("repo", repo), ("subject", kind), ("outcome", outcome)]);
    }

    pub fn round_done(&self) {
        self.rounds.inc(&[]);
    }

    pub fn round_error(&self, stanza: &str, repo: &str) {
        self.round_errors.inc(&[("stanza", stanza), ("repo", repo)]);
    }

    pub fn stanza_status(&self, stanza: &str, level: Level) {
        self.stanza_status.set(&[("stanza", stanza)], level.as_number());
    }

    /// The facts of one evaluation. Stanza-level facts (backups, archiver) come from every repository's
    /// evaluation alike; the primary's is evaluated first and they agree unless replication lags.
    pub fn health(&self, h: &Health) {
        let stanza = h.stanza.as_str();
        let s = [("stanza", stanza)];
        self.rpo.set(&s, h.rpo_secs as f64);
        for (kind, b) in &h.last_backup {
            let l = [("stanza", stanza), ("type", kind.as_str())];
            self.backup_last_success.set(&l, b.stop_time as f64);
            self.backup_age.set(&l, (h.time - b.stop_time).max(0) as f64);
            self.backup_duration.set(&l, b.duration_secs as f64);
            self.backup_stored.set(&l, b.stored_bytes as f64);
        }
        if let Ok(a) = &h.archiver {
            self.archive_lag_bytes.set(&s, a.lag_bytes as f64);
            self.archive_lag_seconds.set(&s, a.lag_seconds as f64);
            self.archive_failed.set_total(&s, a.failed_count.max(0) as u64);
            self.archive_archived.set_total(&s, a.archived_count.max(0) as u64);
            self.archive_last_archived.set(&s, a.last_archived_time.unwrap_or(0) as f64);
            self.archive_last_failed.set(&s, a.last_failed_time.unwrap_or(0) as f64);
        }
        let r = [("repo", h.repo.as_str())];
        if let Ok(space) = &h.space {
            self.repo_used.set(&r, space.used_bytes as f64);
            if let (Some(size), Some(free)) = (space.fs_size_bytes, space.fs_free_bytes) {
                self.repo_size.set(&r, size as f64);
                self.repo_free.set(&r, free as f64);
            }
        }
        let l = [("stanza", stanza), ("repo", h.repo.as_str())];
        self.verify_errors.set(&l, h.verify_problems() as f64);
        if let Some(t) = h.last_verify_time() {
            self.verify_last.set(&l, t as f64);
        }
        self.verify_bytes.inc_by(&l, 0);
        if let Some(t) = &h.restore_test {
            self.restore_test_last.set(&s, t.start_time as f64);
            self.restore_test_success.set(&s, if t.passed { 1.0 } else { 0.0 });
            for (phase, ms) in [("restore", t.restore_ms), ("replay", t.replay_ms), ("total", Some(t.total_ms))] {
                match ms {
                    Some(ms) => self.restore_test_duration.set(&[("stanza", stanza), ("phase", phase)], ms as f64 / 1000.0),
                    None => self.restore_test_duration.remove_where("phase", phase),
                }
            }
            if let Some(m) = t.peak_memory_bytes {
                self.restore_test_memory.set(&s, m as f64);
            }
        }
    }
}
