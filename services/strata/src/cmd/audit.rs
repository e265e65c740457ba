//! `audit`: shows the audit log (`[audit] path`, format in `strata_audit`). The hook that writes it is
//! `strata_command::audit`. `strata audit` reads the file only: it needs no stanza and does not open a
//! repository, so it works when they are broken.

use anyhow::Context;
use serde_json::{json, Value};
use strata_audit::{AuditEntry, Filter, Op, Outcome};
use strata_command::OutputFormat;
use strata_config::Config;

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
    let since = since.map(|s| strata_audit::parse_since(s, strata_command::now())).transpose().map_err(anyhow::Error::msg)?;
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
