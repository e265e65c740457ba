//! The hook that records every auditable operation in the audit log (`strata audit` shows the log).
//!
//! The log (`[audit] path`, format in `strata_audit`) is written by the commands themselves: [`audit_op`]
//! wraps a command's work, and [`note_config`] records a changed config file at the start of every
//! command. A log that cannot be written costs one `warning:` line on stderr and does not change the
//! command's result or exit status (the reasons are in `strata_audit`'s module doc).

use serde_json::{json, Value};
use std::future::Future;
use std::path::Path;
use std::time::{Instant, SystemTime};
use strata_audit::{AuditEntry, Op};
use strata_config::Config;

/// What a command's result adds to its audit entry's `what` (a backup's label, say); most add nothing.
pub trait AuditDetails {
    fn audit_details(&self) -> Option<Value> {
        None
    }
}

impl AuditDetails for () {}

/// A committed backup: its label, and its type as the label says (a diff or incr with no full to refer
/// to is taken as a full).
pub struct BackupLabel(pub String);

impl AuditDetails for BackupLabel {
    fn audit_details(&self) -> Option<Value> {
        let kind = match self.0.chars().last() {
            Some('F') => "full",
            Some('D') => "diff",
            Some('I') => "incr",
            _ => return Some(json!({ "label": self.0 })),
        };
        Some(json!({ "label": self.0, "type": kind }))
    }
}

/// Runs an auditable command's work and appends its entry (start time, duration, outcome, error text)
/// when an audit log is configured. The work's result is returned unchanged.
///
/// `what` holds the command's arguments; the work's [`AuditDetails`] are merged into it on success.
pub async fn audit_op<T: AuditDetails>(
    cfg: &Config,
    op: Op,
    stanza: Option<&str>,
    repo: Option<&str>,
    mut what: Value,
    work: impl Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let started = SystemTime::now();
    let clock = Instant::now();
    let result = work.await;
    if let Ok(done) = &result {
        announce_success(cfg, op, stanza, done.audit_details()).await;
    }
    let Some(log) = cfg.audit.path.as_deref() else { return result };
    let error = match &result {
        Ok(done) => {
            if let (Some(Value::Object(add)), Value::Object(into)) = (done.audit_details(), &mut what) {
                into.extend(add);
            }
            None
        }
        // As the user sees it: the context chain on one line.
        Err(e) => Some(format!("{e:#}")),
    };
    let entry = AuditEntry::new(op, stanza, repo, what, started, clock.elapsed(), error);
    if let Err(e) = strata_audit::append(log, &entry) {
        warn_unwritable(&e, &format!("this {op} is not recorded"));
    }
    result
}

/// Backups, expires and restore tests that succeed are info-tier events (`[alerts] webhook_info`): sent
/// once, by the command that did the work, since no service sees them all. A webhook that cannot be
/// reached costs a warning line, never the command's result.
async fn announce_success(cfg: &Config, op: Op, stanza: Option<&str>, details: Option<Value>) {
    if cfg.alerts.webhook_info.is_none() || !matches!(op, Op::Backup | Op::Expire | Op::RestoreTest) {
        return;
    }
    let stanza = stanza.unwrap_or("-");
    let detail = details.as_ref().map(|d| d.to_string()).unwrap_or_default();
    let label = details.as_ref().and_then(|d| d.get("label")).and_then(Value::as_str).map(|l| format!(" ({l})")).unwrap_or_default();
    let alert = strata_alerts::Alert {
        key: format!("{op}/{stanza}"),
        tier: strata_alerts::Tier::Info,
        stanza: Some(stanza.to_string()),
        summary: format!("{stanza}: {op} succeeded{label}"),
        details: detail,
    };
    match strata_alerts::Notifier::new(&cfg.alerts, None) {
        Ok(mut n) => {
            if let strata_alerts::DeliveryOutcome::Failed(why) = n.event(alert).await.outcome {
                eprintln!("warning: alerts.webhook_info: {why} (the {op} itself succeeded)");
            }
        }
        Err(e) => eprintln!("warning: {e} (the {op} itself succeeded)"),
    }
}

/// The command line (without the program's path), for an entry's `what`.
pub fn args() -> Vec<String> {
    std::env::args().skip(1).collect()
}

/// Records the config file's content in the audit log's config history (a `config-change` entry when it
/// is new or differs from the last one seen), when an audit log is configured.
pub fn note_config(cfg: &Config, config_path: &Path) {
    let Some(log) = cfg.audit.path.as_deref() else { return };
    let bytes = match std::fs::read(config_path) {
        Ok(b) => b,
        Err(e) => {
            eprintln!("warning: audit log {}: cannot read the config file {} to record changes: {e}", log.display(), config_path.display());
            return;
        }
    };
    if let Err(e) = strata_audit::note_config(log, config_path, &bytes) {
        warn_unwritable(&e, "config changes are not recorded");
    }
}

fn warn_unwritable(e: &strata_audit::AuditError, what_is_lost: &str) {
    eprintln!("warning: {e} ({what_is_lost}; the command's own result is unaffected)");
}
