//! What bench-incr.sh read with jq, awk and pageinspect, as pure functions: the newest backup in each tool's
//! `info` JSON, pgbench's transaction count and tps, the changed-pages query, and the whole VM's busy CPU
//! time (/proc/stat), which common.rs's `measure` (the child's own rusage) does not give.

use anyhow::{bail, Context, Result};
use serde_json::Value;

/// The newest backup of a repository, as the row and its note need it. Numbers are kept as text, as jq's
/// `@tsv` printed them ("" when the field is missing or null).
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Newest {
    pub label: String,
    pub kind: String,
    pub reference: String,
    pub stored: String,
    pub copied: String,
    pub read: String,
    pub database: String,
    /// pgBackRest only: `.info.repository.size`.
    pub repo_size: String,
}

/// jq's `@tsv` of a value: strings as they are, numbers as numbers, null and missing as "".
fn text(v: Option<&Value>) -> String {
    match v {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(v) => v.to_string(),
    }
}

/// `strata info --output json`: `.[0].backups[-1]` with label, type, reference (or "-"), stored_bytes,
/// sent_bytes, read_bytes, database_bytes.
pub(super) fn strata_newest(json: &str) -> Result<Newest> {
    let v: Value = serde_json::from_str(json).context("strata info: not JSON")?;
    let Some(b) = v
        .pointer("/0/backups")
        .and_then(Value::as_array)
        .and_then(|a| a.last())
    else {
        bail!("strata info lists no backup");
    };
    let reference = text(b.get("reference"));
    Ok(Newest {
        label: text(b.get("label")),
        kind: text(b.get("type")),
        reference: if reference.is_empty() {
            "-".into()
        } else {
            reference
        },
        stored: text(b.get("stored_bytes")),
        copied: text(b.get("sent_bytes")),
        read: text(b.get("read_bytes")),
        database: text(b.get("database_bytes")),
        repo_size: String::new(),
    })
}

/// `pgbackrest info --output=json`: `.[0].backup[-1]` with label, type, prior (or "-"),
/// info.repository.delta, info.delta, info.size, info.repository.size.
pub(super) fn pgbackrest_newest(json: &str) -> Result<Newest> {
    let v: Value = serde_json::from_str(json).context("pgbackrest info: not JSON")?;
    let Some(b) = v
        .pointer("/0/backup")
        .and_then(Value::as_array)
        .and_then(|a| a.last())
    else {
        bail!("pgbackrest info lists no backup");
    };
    let prior = text(b.get("prior"));
    Ok(Newest {
        label: text(b.get("label")),
        kind: text(b.get("type")),
        reference: if prior.is_empty() { "-".into() } else { prior },
        stored: text(b.pointer("/info/repository/delta")),
        copied: text(b.pointer("/info/delta")),
        read: String::new(),
        database: text(b.pointer("/info/size")),
        repo_size: text(b.pointer("/info/repository/size")),
    })
}

/// pgbench's "number of transactions actually processed: N[/M]" and "tps = X" from its output.
pub(super) fn pgbench_figures(log: &str) -> (Option<u64>, Option<String>) {
    let xacts = log.lines().find_map(|l| {
        let rest = l.split_once("number of transactions actually processed")?.1;
        let n = rest.trim_start_matches(|c: char| c == ':' || c.is_whitespace());
        n.split('/').next()?.trim().parse().ok()
    });
    let tps = log.lines().find_map(|l| {
        l.strip_prefix("tps = ")?
            .split_whitespace()
            .next()
            .map(str::to_string)
    });
    (xacts, tps)
}

/// bench-incr.sh's changed_pages query: pages of the main fork whose page LSN is past `lsn`, for
/// `main_table` and for every permanent relation of the database (catalogs included), read through
/// pageinspect's get_raw_page. One line: "main_pages|main_changed|all_pages|all_changed".
pub(super) fn changed_pages_sql(lsn: &str, main_table: &str) -> String {
    format!(
        "WITH rels AS (
            SELECT c.oid::regclass::text AS rel, c.relname, pg_relation_size(c.oid) / 8192 AS pages
            FROM pg_class c
            WHERE c.relkind IN ('r', 'i', 't', 'm') AND c.relpersistence = 'p' AND pg_relation_size(c.oid) > 0
        ), counted AS (
            SELECT r.relname, max(r.pages) AS pages,
                   count(*) FILTER (WHERE (page_header(get_raw_page(r.rel, 'main', b))).lsn > '{lsn}'::pg_lsn) AS changed
            FROM rels r, generate_series(0, r.pages - 1) b
            GROUP BY r.rel, r.relname
        )
        SELECT coalesce(sum(pages) FILTER (WHERE relname = '{main_table}'), 0),
               coalesce(sum(changed) FILTER (WHERE relname = '{main_table}'), 0),
               sum(pages), sum(changed)
        FROM counted"
    )
}

/// The four numbers of [`changed_pages_sql`]'s answer.
pub(super) fn parse_changed_pages(out: &str) -> Result<[u64; 4]> {
    let nums: Vec<u64> = out
        .trim()
        .split('|')
        .map(|s| s.trim().parse::<u64>())
        .collect::<Result<_, _>>()
        .with_context(|| format!("changed pages: unexpected answer {out:?}"))?;
    match <[u64; 4]>::try_from(nums) {
        Ok(a) => Ok(a),
        Err(_) => bail!("changed pages: unexpected answer {out:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn newest_backups_of_both_tools() {
        let s = r#"[{"stanza":"bench","backups":[{"label":"a","type":"full"},
            {"label":"b","type":"incr","reference":"a","stored_bytes":12,"sent_bytes":34,"read_bytes":56,"database_bytes":78}]}]"#;
        let n = strata_newest(s).unwrap();
        assert_eq!(
            (n.label.as_str(), n.kind.as_str(), n.reference.as_str()),
            ("b", "incr", "a")
        );
        assert_eq!(
            (
                n.stored.as_str(),
                n.copied.as_str(),
                n.read.as_str(),
                n.database.as_str()
            ),
            ("12", "34", "56", "78")
        );
        let p = r#"[{"backup":[{"label":"F","type":"full","info":{"delta":5,"size":6,"repository":{"delta":3,"size":4}}}]}]"#;
        let n = pgbackrest_newest(p).unwrap();
        assert_eq!(
            (n.label.as_str(), n.kind.as_str(), n.reference.as_str()),
            ("F", "full", "-")
        );
        assert_eq!(
            (
                n.stored.as_str(),
                n.copied.as_str(),
                n.database.as_str(),
                n.repo_size.as_str()
            ),
            ("3", "5", "6", "4")
        );
        assert!(strata_newest(r#"[{"backups":[]}]"#).is_err());
    }

    #[test]
    fn pgbench_output() {
        let log = "transaction type: <builtin: TPC-B (sort of)>\nnumber of transactions actually processed: 1234\nlatency average = 1.6 ms\ntps = 411.9 (without initial connection time)\n";
        assert_eq!(pgbench_figures(log), (Some(1234), Some("411.9".into())));
        assert_eq!(
            pgbench_figures("number of transactions actually processed: 10/20\n").0,
            Some(10)
        );
        assert_eq!(parse_changed_pages("10|2|30|4").unwrap(), [10, 2, 30, 4]);
        assert!(parse_changed_pages("10|2").is_err());
    }
}
