//! What the strata commands said: a log's last line, the label a backup committed, and `strata info
//! --output json` summed up as the script's `jq` did.

use serde_json::Value;
use std::fs;
use std::path::Path;

/// The last non-blank line a command printed.
pub(super) fn said(log: &Path) -> String {
    let text = fs::read_to_string(log).unwrap_or_default();
    text.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_string()
}

/// The first `backup <YYYYMMDD-HHMMSS><kind> committed` label in a log.
pub(super) fn committed_label(log: &Path, kind: char) -> Option<String> {
    let text = fs::read_to_string(log).ok()?;
    text.match_indices("backup ").find_map(|(i, _)| {
        let rest = &text[i + "backup ".len()..];
        let label = rest.get(..16)?;
        let b = label.as_bytes();
        let digits = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_digit);
        let ok = digits(0..8) && b[8] == b'-' && digits(9..15) && b[15] == kind as u8;
        (ok && rest[16..].starts_with(" committed")).then(|| label.to_string())
    })
}

/// `jq`'s summary of the script: every object with a label and a type, one per label (sorted), as
/// `label type reference database read sent stored files` (tab-separated).
pub(super) fn info_summary(json: &Value) -> String {
    fn walk<'a>(v: &'a Value, out: &mut Vec<&'a serde_json::Map<String, Value>>) {
        match v {
            Value::Object(o) => {
                if o.contains_key("label")
                    && (o.contains_key("backup_type") || o.contains_key("type"))
                {
                    out.push(o);
                }
                o.values().for_each(|c| walk(c, out));
            }
            Value::Array(a) => a.iter().for_each(|c| walk(c, out)),
            _ => {}
        }
    }
    // jq's `a // b`: a unless it is null or false; tostring and @tsv print strings raw, the rest as JSON.
    let text = |v: &Value| match v {
        Value::String(s) => s.clone(),
        Value::Null => String::new(),
        v => v.to_string(),
    };
    let pick = |o: &serde_json::Map<String, Value>, keys: &[&str], default: &str| {
        keys.iter()
            .filter_map(|k| o.get(*k))
            .find(|v| !matches!(v, Value::Null | Value::Bool(false)))
            .map(text)
            .unwrap_or_else(|| default.to_string())
    };
    let mut found = Vec::new();
    walk(json, &mut found);
    found.sort_by_key(|o| text(&o["label"]));
    found.dedup_by_key(|o| text(&o["label"]));
    found
        .iter()
        .map(|o| {
            [
                text(&o["label"]),
                pick(o, &["backup_type", "type"], ""),
                pick(o, &["reference"], "-"),
                pick(o, &["database_bytes", "size"], "?"),
                pick(o, &["read_bytes"], "?"),
                pick(o, &["sent_bytes"], "?"),
                pick(o, &["stored_bytes", "repo_size"], "?"),
                pick(o, &["files", "file_count"], "?"),
            ]
            .join("\t")
        })
        .collect::<Vec<_>>()
        .join("\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn labels_last_lines_and_info() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("full.log");
        fs::write(
            &log,
            "x\nbackup 20261207-211500F committed: 3 files\nbackup 20261207-211600I committed\n\n",
        )
        .unwrap();
        assert_eq!(
            committed_label(&log, 'F').as_deref(),
            Some("20261207-211500F")
        );
        assert_eq!(
            committed_label(&log, 'I').as_deref(),
            Some("20261207-211600I")
        );
        assert_eq!(said(&log), "backup 20261207-211600I committed");
        let json: Value = serde_json::from_str(
            r#"{"backups":[{"label":"B","type":"incr","reference":"A","size":5,"files":2},
                {"label":"A","backup_type":"full","reference":null,"database_bytes":9,"read_bytes":9}]}"#,
        )
        .unwrap();
        assert_eq!(
            info_summary(&json),
            "A\tfull\t-\t9\t9\t?\t?\t?\nB\tincr\tA\t5\t?\t?\t?\t2"
        );
    }
}
