//! The rows of `results-incr.tsv` and the summary of one run (`summary-incr-<run_id>.txt` and `.kv`): the
//! same columns, table, ratios, target and per-rep lines as bench-incr.sh's awk report, computed from the
//! run's rows in memory instead of re-reading the TSV (a run's rows are exactly the TSV rows of its run_id;
//! failed measurements never become rows, they fail the run).

use crate::bench::common::{median, verdict, Kv, Target};
use std::fmt::Write as _;

/// The columns of `results-incr.tsv` (bench-incr.sh's HEADER).
pub(super) const HEADER: &[&str] = &[
    "run_id",
    "ts",
    "dataset",
    "bus",
    "tool",
    "op",
    "rep",
    "position",
    "rc",
    "wall_s",
    "user_s",
    "sys_s",
    "vm_busy_cpu_s",
    "maxrss_kb",
    "added_repo_bytes",
    "stored_bytes",
    "copied_bytes",
    "read_bytes",
    "database_bytes",
    "main_table",
    "main_bytes",
    "churn_secs",
    "pgbench_xacts",
    "main_pages",
    "main_changed_pages",
    "bench_pages",
    "bench_changed_pages",
    "label",
    "note",
];

/// The target of the issue: an incremental stores at most a third of pgBackRest's bytes.
pub(super) const INCR_STORED_TARGET: f64 = 0.333;

/// One timed backup.
#[derive(Debug, Clone, Default)]
pub(super) struct Row {
    pub tool: &'static str,
    pub op: &'static str,
    pub rep: u32,
    pub position: u32,
    /// Seconds, rounded to milliseconds as the TSV holds them.
    pub wall_s: f64,
    pub user_s: f64,
    pub sys_s: f64,
    pub busy_s: f64,
    pub maxrss_kb: u64,
    pub added_bytes: i64,
    /// The info JSON's fields as text ("" when absent): stored, copied, read and database bytes.
    pub stored: String,
    pub copied: String,
    pub read: String,
    pub database: String,
    pub label: String,
    pub note: String,
}

/// What one rep's churn did (the incr rows' extra columns).
#[derive(Debug, Clone, Default)]
pub(super) struct Churn {
    pub main_table: String,
    pub main_bytes: u64,
    pub secs: u32,
    pub xacts: u64,
    /// main_pages, main_changed_pages, bench_pages, bench_changed_pages (None without pageinspect).
    pub pages: Option<[u64; 4]>,
}

/// The TSV fields of `row` (after run_id, ts, dataset, bus): bench-incr.sh's ROWS entry, facts, label, note.
pub(super) fn tsv_fields(row: &Row, churn: &Churn) -> Vec<String> {
    let mut f = vec![
        row.tool.to_string(),
        row.op.to_string(),
        row.rep.to_string(),
        row.position.to_string(),
        "0".to_string(),
        format!("{:.3}", row.wall_s),
        format!("{:.2}", row.user_s),
        format!("{:.2}", row.sys_s),
        format!("{:.2}", row.busy_s),
        row.maxrss_kb.to_string(),
        row.added_bytes.to_string(),
        row.stored.clone(),
        row.copied.clone(),
        row.read.clone(),
        row.database.clone(),
        churn.main_table.clone(),
        churn.main_bytes.to_string(),
    ];
    if row.op == "incr" {
        f.push(churn.secs.to_string());
        f.push(churn.xacts.to_string());
        match churn.pages {
            Some(p) => f.extend(p.iter().map(u64::to_string)),
            None => f.extend(std::iter::repeat_n(String::new(), 4)),
        }
    } else {
        f.extend(std::iter::repeat_n(String::new(), 6));
    }
    f.push(row.label.clone());
    f.push(row.note.clone());
    f
}

/// awk's `x + 0` of a field: its leading number, 0 when there is none.
fn num(s: &str) -> f64 {
    s.trim().parse().unwrap_or(0.0)
}

fn mib(bytes: f64) -> String {
    format!("{:.1}", bytes / 1_048_576.0)
}

fn med(v: &[f64]) -> f64 {
    median(v).unwrap_or(0.0)
}

/// Per tool and operation, in the order of first appearance.
#[derive(Default)]
struct Group {
    key: (&'static str, &'static str),
    wall: Vec<f64>,
    added: Vec<f64>,
    stored: Vec<f64>,
    rss_kb: u64,
    /// incr rows: main_bytes, xacts, and the four page counts.
    main_bytes: Vec<f64>,
    xacts: Vec<f64>,
    pages: Vec<[f64; 4]>,
}

/// The summary of the run's rows (`churns[rep - 1]` is rep's churn): the text of the awk report, and its
/// key=value lines appended to `kv`. `mode` is "local" or "nats".
pub(super) fn summary(rows: &[Row], churns: &[Churn], mode: &str, kv: &mut Kv) -> String {
    let churn = |rep: u32| &churns[rep as usize - 1];
    let mut groups: Vec<Group> = Vec::new();
    let mut reps: Vec<u32> = Vec::new();
    let mut main_table = String::new();
    for row in rows {
        let c = churn(row.rep);
        let i = match groups.iter().position(|g| g.key == (row.tool, row.op)) {
            Some(i) => i,
            None => {
                groups.push(Group {
                    key: (row.tool, row.op),
                    ..Group::default()
                });
                groups.len() - 1
            }
        };
        let g = &mut groups[i];
        g.wall.push(row.wall_s);
        g.added.push(row.added_bytes as f64);
        g.stored.push(num(&row.stored));
        g.rss_kb = g.rss_kb.max(row.maxrss_kb);
        main_table.clone_from(&c.main_table);
        if row.op == "incr" {
            g.main_bytes.push(c.main_bytes as f64);
            g.xacts.push(c.xacts as f64);
            if let Some(p) = c.pages {
                g.pages.push(p.map(|x| x as f64));
            }
            if !reps.contains(&row.rep) {
                reps.push(row.rep);
            }
        }
    }
    let find = |tool: &str, op: &str| groups.iter().find(|g| g.key == (tool, op));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<10} {:<4} {:>2} {:>9} {:>16} {:>16} {:>12}",
        "tool", "op", "n", "median_s", "added_repo_B", "stored_B", "peak_RSS_MiB"
    );
    for g in &groups {
        let (tool, op) = g.key;
        let (mw, ma, ms) = (med(&g.wall), med(&g.added), med(&g.stored));
        let _ = writeln!(
            out,
            "{tool:<10} {op:<4} {:>2} {mw:>9.2} {ma:>16.0} {ms:>16.0} {:>12.1}",
            g.wall.len(),
            g.rss_kb as f64 / 1024.0
        );
        kv.set(&format!("{tool}_{op}_s"), format!("{mw:.3}"));
        kv.set(&format!("{tool}_{op}_stored_bytes"), format!("{ms:.0}"));
        kv.set(&format!("{tool}_{op}_added_bytes"), format!("{ma:.0}"));
        kv.set(&format!("{tool}_{op}_peak_rss_kb"), g.rss_kb);
    }
    out.push('\n');
    for op in ["full", "incr"] {
        if let (Some(s), Some(b)) = (find("strata", op), find("pgbackrest", op)) {
            let (bw, ba, bs) = (med(&b.wall), med(&b.added), med(&b.stored));
            if bw > 0.0 {
                let q = |x: f64, y: f64| if y > 0.0 { x / y } else { 0.0 };
                let _ = writeln!(
                    out,
                    "strata/pgbackrest {op:<4}  time {:.2}   added repo bytes {:.3}   stored bytes {:.3}   peak RSS {:.2}",
                    med(&s.wall) / bw,
                    q(med(&s.added), ba),
                    q(med(&s.stored), bs),
                    q(s.rss_kb as f64, b.rss_kb as f64)
                );
            }
        }
    }
    let (s, b) = (find("strata", "incr"), find("pgbackrest", "incr"));
    out.push('\n');
    let _ = writeln!(
        out,
        "target (the issue states it for single-host mode; this run: bus {mode}){}",
        if mode == "local" {
            ""
        } else {
            ": stored bytes do not depend on the bus"
        }
    );
    let what = "incr stored bytes strata / pgbackrest";
    match (s, b) {
        (Some(s), Some(b)) if med(&b.stored) > 0.0 => {
            let v = med(&s.stored) / med(&b.stored);
            let verdict = verdict(Some(v), Target::AtMost(INCR_STORED_TARGET));
            let _ = writeln!(
                out,
                "  {what:<50} {v:>7.3}  target <= {INCR_STORED_TARGET}  {verdict}"
            );
            kv.set("ratio_incr_stored", format!("{v:.3}"));
            kv.set("ratio_incr_stored_verdict", verdict);
        }
        _ => {
            let _ = writeln!(
                out,
                "  {what:<50} {:>7}  target <= {INCR_STORED_TARGET}  -",
                "-"
            );
            kv.set("ratio_incr_stored", "");
            kv.set("ratio_incr_stored_verdict", "-");
        }
    }
    if let (Some(s), Some(b)) = (s, b) {
        if med(&b.wall) > 0.0 {
            kv.set(
                "ratio_incr_time",
                format!("{:.3}", med(&s.wall) / med(&b.wall)),
            );
        }
    }
    let Some(k) = s.or(b).filter(|g| !g.main_bytes.is_empty()) else {
        return out;
    };
    let a = med(&k.main_bytes);
    let mt = &main_table;
    out.push('\n');
    let _ = writeln!(
        out,
        "{mt}: {a:.0} bytes ({} MiB); pgbench: median {:.0} transactions per churn",
        mib(a),
        med(&k.xacts)
    );
    kv.set("main_table_bytes", format!("{a:.0}"));
    kv.set("churn_xacts", format!("{:.0}", med(&k.xacts)));
    if !k.pages.is_empty() {
        let col = |i: usize| med(&k.pages.iter().map(|p| p[i]).collect::<Vec<_>>());
        let (ap, ac, bp, bc) = (col(0), col(1), col(2), col(3));
        let _ = writeln!(
            out,
            "pages changed by the churn (page LSN past the LSN before pgbench): {mt} {ac:.0} of {ap:.0} ({:.1}%), bench database {bc:.0} of {bp:.0} ({:.1}%, {} MiB)",
            100.0 * ac / ap,
            100.0 * bc / bp,
            mib(bc * 8192.0)
        );
        kv.set("bench_changed_pages", format!("{bc:.0}"));
        kv.set("bench_pages", format!("{bp:.0}"));
    }
    if let Some(s) = s {
        let ms = med(&s.stored);
        let _ = writeln!(
            out,
            "strata     incr stored bytes     / {mt} size: {:.4} ({ms:.0} / {a:.0})",
            ms / a
        );
    }
    if let Some(b) = b {
        let ms = med(&b.stored);
        let _ = writeln!(
            out,
            "pgbackrest incr repository.delta / {mt} size: {:.4} ({ms:.0} / {a:.0})",
            ms / a
        );
    }
    for &r in &reps {
        let c = churn(r);
        let per_tool = |tool: &str| {
            rows.iter()
                .rfind(|x| x.rep == r && x.op == "incr" && x.tool == tool)
                .map_or("-".to_string(), |x| {
                    format!("{:.4}", num(&x.stored) / c.main_bytes as f64)
                })
        };
        let (changed, pages) = match c.pages {
            Some(p) => (p[1].to_string(), p[0].to_string()),
            None => ("?".to_string(), "?".to_string()),
        };
        let _ = writeln!(
            out,
            "  rep {r}: {} transactions, {mt} pages changed {changed} of {pages}; incr stored / {mt} size: strata {}, pgbackrest {}",
            c.xacts,
            per_tool("strata"),
            per_tool("pgbackrest")
        );
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(tool: &'static str, op: &'static str, rep: u32, wall: f64, stored: &str) -> Row {
        Row {
            tool,
            op,
            rep,
            position: 1,
            wall_s: wall,
            maxrss_kb: 2048,
            added_bytes: 100,
            stored: stored.into(),
            ..Row::default()
        }
    }

    #[test]
    fn summary_has_the_scripts_lines_and_keys() {
        let churns = vec![Churn {
            main_table: "pgbench_accounts".into(),
            main_bytes: 1000,
            secs: 3,
            xacts: 42,
            pages: Some([10, 5, 20, 8]),
        }];
        let rows = vec![
            row("strata", "full", 1, 2.0, "500"),
            row("pgbackrest", "full", 1, 4.0, "1000"),
            row("strata", "incr", 1, 1.0, "100"),
            row("pgbackrest", "incr", 1, 2.0, "400"),
        ];
        let mut kv = Kv::default();
        let text = summary(&rows, &churns, "local", &mut kv);
        assert!(text.starts_with(
            "tool       op    n  median_s     added_repo_B         stored_B peak_RSS_MiB\n"
        ));
        assert!(text.contains(
            "strata     full  1      2.00              100              500          2.0\n"
        ));
        assert!(text.contains("strata/pgbackrest incr  time 0.50   added repo bytes 1.000   stored bytes 0.250   peak RSS 1.00\n"));
        assert!(text.contains(
            "  incr stored bytes strata / pgbackrest                0.250  target <= 0.333  PASS\n"
        ));
        assert!(text
            .contains("pgbench_accounts 5 of 10 (50.0%), bench database 8 of 20 (40.0%, 0.1 MiB)"));
        assert!(text.contains("  rep 1: 42 transactions, pgbench_accounts pages changed 5 of 10; incr stored / pgbench_accounts size: strata 0.1000, pgbackrest 0.4000\n"));
        assert_eq!(kv.get("ratio_incr_stored"), Some("0.250"));
        assert_eq!(kv.get("ratio_incr_stored_verdict"), Some("PASS"));
        assert_eq!(kv.get("ratio_incr_time"), Some("0.500"));
        assert_eq!(kv.get("strata_incr_stored_bytes"), Some("100"));
        assert_eq!(kv.get("pgbackrest_full_peak_rss_kb"), Some("2048"));
        assert_eq!(kv.get("bench_changed_pages"), Some("8"));
    }

    #[test]
    fn full_rows_leave_the_churn_columns_empty() {
        let churn = Churn {
            main_table: "orders".into(),
            main_bytes: 7,
            secs: 3,
            xacts: 1,
            pages: None,
        };
        let full = tsv_fields(&row("strata", "full", 1, 1.0, "5"), &churn);
        let incr = tsv_fields(&row("strata", "incr", 1, 1.0, "5"), &churn);
        assert_eq!(full.len() + 4, HEADER.len());
        assert_eq!(incr.len() + 4, HEADER.len());
        assert_eq!(&full[15..23], &["orders", "7", "", "", "", "", "", ""]);
        assert_eq!(&incr[15..23], &["orders", "7", "3", "1", "", "", "", ""]);
    }
}
