//! `audit`: shows the audit log; and the hook that records every auditable command in it.
//!
//! The log (`[audit] path`, format in `strata_audit`) is written by the commands themselves: [`audit_op`]
//! wraps a command's work, and [`note_config`] records a changed config file at the start of every
//! command. A log that cannot be written costs one `warning:` line on stderr and does not change the
//! command's result or exit status (the reasons are in `strata_audit`'s module doc). `strata audit` reads
//! the file only: it needs no stanza and does not open a repository, so it works when they are broken.

use crate::OutputFormat;
use anyhow::Context;
use serde_json::{json, Value};
use std::future::Future;
use std::path::Path;
use std::time::{Instant, SystemTime};
use strata_audit::{AuditEntry, Filter, Op, Outcome};
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

/// `strata audit`: the entries that pass the filters, oldest first.
pub fn show(
    cfg: &Config,
    stanza: Option<&str>,
    since: Option<&str>,
    op: Option<Op>,
    outcome: Option<Outcome>,
    output: OutputFormat,
) -> anyhow::Result<()> {
    let log = cfg.audit.path.as_deref().context("no audit log is configured (set [audit] path)")?;
    let since = since.map(|s| strata_audit::parse_since(s, crate::cmd::now())).transpose().map_err(anyhow::Error::msg)?;
    let filter = Filter { since, op, stanza: stanza.map(str::to_string), outcome };
    let read = strata_audit::read(log, &filter)?;
    for e in &read.entries {
        match output {
            OutputFormat::Json => println!("{}", serde_json::to_string(e)?),
            OutputFormat::Text => println!("{}", text_line(e)),
        }
    }
    if read.unreadable_lines > 0 {
        eprintln!(
            "warning: audit log {}: {} line(s) are not entries (torn by a crash or edited) and were skipped",
            log.display(),
            read.unreadable_lines
        );
    }
    Ok(())
}

/// `2026-12-02 17:30:00  ok      backup         main  full 20261202-173000F  by postgres@host (12.3 s)`
fn text_line(e: &AuditEntry) -> String {
    let mut line = format!(
        "{}  {:<7} {:<14} {}  {}  by {}@{} ({:.1} s)",
        e.time_text,
        e.outcome.as_str(),
        e.op,
        e.stanza.as_deref().unwrap_or("-"),
        summary(&e.op, &e.what),
        e.user,
        e.host,
        e.duration_secs
    );
    if let Some(err) = &e.error {
        line.push_str(": ");
        line.push_str(err);
    }
    line
}

/// The few words of an entry's `what` worth a column.
fn summary(op: &str, what: &Value) -> String {
    let s = |k: &str| what.get(k).and_then(Value::as_str);
    match op {
        "backup" => [s("type"), s("label")].into_iter().flatten().collect::<Vec<_>>().join(" "),
        "restore" => {
            let mut t = format!("{} into {}", s("set").unwrap_or("newest"), s("pg_data").unwrap_or("?"));
            if let Some(kind) = s("type").filter(|k| *k != "default") {
                t.push_str(&format!(", to {kind}"));
                if let Some(target) = s("target") {
                    t.push_str(&format!(" {target}"));
                }
            }
            if what.get("delta") == Some(&json!(true)) {
                t.push_str(", delta");
            }
            t
        }
        "config-change" => {
            let short = |k: &str| s(k).map(|h| h[..h.len().min(12)].to_string());
            match short("old_hash") {
                None => format!("{} first seen {}", s("config").unwrap_or("?"), short("new_hash").unwrap_or_default()),
                Some(old) => format!("{} {old} -> {}", s("config").unwrap_or("?"), short("new_hash").unwrap_or_default()),
            }
        }
        _ => {
            let Some(map) = what.as_object() else { return String::new() };
            map.iter()
                .filter(|(k, v)| k.as_str() != "args" && !v.is_null() && **v != json!(false))
                .map(|(k, v)| match v {
                    Value::String(text) => format!("{k}={text}"),
                    Value::Bool(true) => k.clone(),
                    other => format!("{k}={other}"),
                })
                .collect::<Vec<_>>()
                .join(" ")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(op: Op, what: Value, error: Option<&str>) -> AuditEntry {
        let mut e = AuditEntry::new(
            op,
            Some("main"),
            Some("primary"),
            what,
            std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_796_232_600),
            std::time::Duration::from_millis(12_340),
            error.map(str::to_string),
        );
        e.user = "postgres".into();
        e.host = "db1".into();
        e
    }

    #[test]
    fn text_lines() {
        let e = entry(Op::Backup, json!({"type": "full", "label": "20261202-173000F", "args": ["backup"]}), None);
        assert_eq!(
            text_line(&e),
            "2026-12-02 17:30:00  ok      backup         main  full 20261202-173000F  by postgres@db1 (12.3 s)"
        );
        let e = entry(
            Op::Restore,
            json!({"pg_data": "/x", "set": null, "type": "time", "target": "2026-12-02 17:00:00", "delta": false}),
            Some("restore: /x is not empty"),
        );
        assert_eq!(
            text_line(&e),
            "2026-12-02 17:30:00  failed  restore        main  newest into /x, to time 2026-12-02 17:00:00  by postgres@db1 (12.3 s): restore: /x is not empty"
        );
        let e = entry(Op::Expire, json!({"retention_full": 2, "dry_run": true, "args": ["expire"]}), None);
        let line = text_line(&e);
        assert!(line.contains("dry_run") && line.contains("retention_full=2") && !line.contains("args"), "{line}");
        let e = entry(Op::ConfigChange, json!({"config": "/etc/s.toml", "old_hash": null, "new_hash": "0123456789abcdef"}), None);
        assert!(text_line(&e).contains("/etc/s.toml first seen 0123456789ab  "), "{}", text_line(&e));
    }
}
