//! bench-full.sh's rows and report: one results.tsv row per measurement, then the table of medians, the
//! ratios and the targets (the script's awk program, in Rust, over this run's rows), its key=value
//! lines, and the machine limits (LIMITS=1).

use crate::bench::common::{median, verdict, Kv, Target};

/// results.tsv's columns (the script's HEADER).
pub const HEADER: &[&str] = &[
    "run_id",
    "ts",
    "tool",
    "op",
    "rep",
    "rc",
    "wall_s",
    "user_s",
    "sys_s",
    "vm_busy_cpu_s",
    "cmd_maxrss_kb",
    "services_rss_kb",
    "peak_rss_kb",
    "out_bytes",
    "payload_bytes",
    "mb_s",
    "note",
];

/// One measurement: a results.tsv row.
#[derive(Debug, Clone)]
pub struct Row {
    pub tool: &'static str,
    pub op: &'static str,
    pub rep: u32,
    /// 0, or non-zero when the command failed (then the times are not figures: see [`Row::fields`]).
    pub rc: i32,
    pub wall_s: f64,
    pub user_s: f64,
    pub sys_s: f64,
    pub vm_busy_s: f64,
    pub cmd_maxrss_kb: u64,
    pub services_rss_kb: u64,
    pub out_bytes: u64,
    pub payload_bytes: u64,
    pub note: String,
}

impl Row {
    pub fn peak_rss_kb(&self) -> u64 {
        self.cmd_maxrss_kb + self.services_rss_kb
    }

    /// `payload / 10^6 / wall`, as the row's `mb_s` ("0" for a failed row or no time).
    pub fn mb_s(&self) -> String {
        if self.rc == 0 && self.wall_s > 0.0 {
            format!("{:.1}", self.payload_bytes as f64 / 1e6 / self.wall_s)
        } else {
            "0".into()
        }
    }

    /// The row's fields after run_id and ts. A failed command's times are "-": they are not figures.
    pub fn fields(&self, run_id: &str, ts: &str) -> Vec<String> {
        let ok = self.rc == 0;
        let time = |v: f64, prec: usize| {
            if ok {
                format!("{v:.prec$}")
            } else {
                "-".into()
            }
        };
        vec![
            run_id.into(),
            ts.into(),
            self.tool.into(),
            self.op.into(),
            self.rep.to_string(),
            self.rc.to_string(),
            time(self.wall_s, 3),
            time(self.user_s, 2),
            time(self.sys_s, 2),
            time(self.vm_busy_s, 2),
            self.cmd_maxrss_kb.to_string(),
            self.services_rss_kb.to_string(),
            self.peak_rss_kb().to_string(),
            self.out_bytes.to_string(),
            self.payload_bytes.to_string(),
            self.mb_s(),
            self.note.clone(),
        ]
    }
}

/// Medians per tool and operation, in first-seen order.
struct Group {
    tool: &'static str,
    op: &'static str,
    n: usize,
    wall: Vec<f64>,
    out: Vec<f64>,
    payload: Vec<f64>,
    rss_kb: u64,
}

/// The table, the ratios and the targets (the summary's body), adding their key=value lines to `kv`.
/// `mode` is "local" or "nats".
pub fn summarize(rows: &[Row], mode: &str, kv: &mut Kv) -> String {
    let mut groups: Vec<Group> = Vec::new();
    let mut failed: Vec<(&str, &str, usize)> = Vec::new();
    for r in rows {
        if r.rc != 0 {
            match failed.iter_mut().find(|f| f.0 == r.tool && f.1 == r.op) {
                Some(f) => f.2 += 1,
                None => failed.push((r.tool, r.op, 1)),
            }
            continue;
        }
        let i = match groups.iter().position(|g| g.tool == r.tool && g.op == r.op) {
            Some(i) => i,
            None => {
                groups.push(Group {
                    tool: r.tool,
                    op: r.op,
                    n: 0,
                    wall: vec![],
                    out: vec![],
                    payload: vec![],
                    rss_kb: 0,
                });
                groups.len() - 1
            }
        };
        let g = &mut groups[i];
        g.n += 1;
        g.wall.push(r.wall_s);
        g.out.push(r.out_bytes as f64);
        g.payload.push(r.payload_bytes as f64);
        g.rss_kb = g.rss_kb.max(r.peak_rss_kb());
    }

    let mut s = format!(
        "{:<13} {:<8} {:>3} {:>9} {:>9} {:>9} {:>8} {:>13} {:>15} {:>6}\n",
        "tool",
        "op",
        "n",
        "median_s",
        "min_s",
        "max_s",
        "MB/s",
        "peak_rss_MiB",
        "repo/out_bytes",
        "ratio"
    );
    // (median wall, MB/s, peak RSS kB) per "tool|op"; median repository bytes per tool's backup.
    let mut figures: Vec<(String, f64, f64, u64)> = Vec::new();
    let mut repo_bytes: Vec<(&str, f64)> = Vec::new();
    for g in &groups {
        let w = median(&g.wall).unwrap_or(0.0);
        let p = median(&g.payload).unwrap_or(0.0);
        let ob = median(&g.out).unwrap_or(0.0);
        let mbs = if w > 0.0 { p / 1e6 / w } else { 0.0 };
        let min = g.wall.iter().copied().fold(f64::INFINITY, f64::min);
        let max = g.wall.iter().copied().fold(0.0, f64::max);
        let backup = g.op == "backup";
        let out_col = if backup {
            format!("{ob:.0}")
        } else {
            "-".into()
        };
        let ratio = if backup && ob > 0.0 {
            format!("{:.1}x", p / ob)
        } else {
            String::new()
        };
        s += &format!(
            "{:<13} {:<8} {:>3} {:>9.2} {:>9.2} {:>9.2} {:>8.1} {:>13.1} {:>15} {:>6}\n",
            g.tool,
            g.op,
            g.n,
            w,
            min,
            max,
            mbs,
            g.rss_kb as f64 / 1024.0,
            out_col,
            ratio
        );
        kv.set(&format!("{}_{}_s", g.tool, g.op), format!("{w:.3}"));
        kv.set(&format!("{}_{}_peak_rss_kb", g.tool, g.op), g.rss_kb);
        if backup {
            kv.set(&format!("{}_backup_bytes", g.tool), format!("{ob:.0}"));
            repo_bytes.push((g.tool, ob));
        }
        figures.push((format!("{}|{}", g.tool, g.op), w, mbs, g.rss_kb));
    }
    for (tool, op, n) in &failed {
        s += &format!("FAILED: {tool}|{op} x{n} (not in the medians)\n");
        kv.set(&format!("{tool}_{op}_failed"), n);
    }
    s += "(ratio: database bytes / repository or output bytes; repositories include the WAL archived since stanza-create)\n\n";

    let fig = |k: &str| figures.iter().find(|f| f.0 == k).map(|f| (f.1, f.2, f.3));
    // Strata's over the other's (time, throughput, peak RSS), when both exist and the other's time is > 0.
    let pair = |a: &str, b: &str| match (fig(a), fig(b)) {
        (Some(x), Some(y)) if y.0 > 0.0 => Some((
            x.0 / y.0,
            x.1 / y.1,
            if y.2 > 0 {
                x.2 as f64 / y.2 as f64
            } else {
                0.0
            },
        )),
        _ => None,
    };
    let backup_pgbr = pair("strata|backup", "pgbackrest|backup");
    let backup_pgbb = pair("strata|backup", "pg_basebackup|backup");
    let restore_pgbr = pair("strata|restore", "pgbackrest|restore");
    let repo = |t: &str| repo_bytes.iter().find(|r| r.0 == t).map(|r| r.1);
    let repo_ratio = match (repo("strata"), repo("pgbackrest")) {
        (Some(a), Some(b)) if b > 0.0 => Some((a / b, a, b)),
        _ => None,
    };
    if let Some((t, m, r)) = backup_pgbr {
        s += &format!("strata/pgbackrest    backup   time ratio {t:.2}   throughput ratio {m:.2}   peak RSS ratio {r:.2}\n");
    }
    if let Some((t, m, _)) = backup_pgbb {
        s +=
            &format!("strata/pg_basebackup backup   time ratio {t:.2}   throughput ratio {m:.2}\n");
    }
    if let Some((t, m, r)) = restore_pgbr {
        s += &format!("strata/pgbackrest    restore  time ratio {t:.2}   throughput ratio {m:.2}   peak RSS ratio {r:.2}\n");
    }
    if let Some((r, a, b)) = repo_ratio {
        s += &format!("strata/pgbackrest    repo     size ratio {r:.2} ({a:.0} / {b:.0} bytes)\n");
    }
    s += "\n";
    s += &format!(
        "targets (the issue states them for single-host mode; this run: bus {mode}){}\n",
        if mode == "local" {
            ""
        } else {
            ": shown for comparison only"
        }
    );
    let targets = [
        (
            "backup time strata / pgbackrest",
            "ratio_backup_pgbr",
            backup_pgbr.map(|x| x.0),
            Target::AtMost(0.50),
            "<=",
            "0.50",
        ),
        (
            "backup time strata / pg_basebackup",
            "ratio_backup_pgbb",
            backup_pgbb.map(|x| x.0),
            Target::AtMost(1.25),
            "<=",
            "1.25",
        ),
        (
            "restore time strata / pgbackrest",
            "ratio_restore_pgbr",
            restore_pgbr.map(|x| x.0),
            Target::AtMost(0.80),
            "<=",
            "0.80",
        ),
        (
            "repo size strata / pgbackrest (comparable compr.)",
            "ratio_repo",
            repo_ratio.map(|x| x.0),
            Target::Within(0.90, 1.10),
            "in",
            "0.90..1.10",
        ),
    ];
    for (what, key, value, target, op, lim) in targets {
        let v = verdict(value, target);
        match value {
            Some(x) => {
                s += &format!("  {what:<50} {x:>7.3}  target {op} {lim:<5}  {v}\n");
                kv.set(key, format!("{x:.3}"));
            }
            None => {
                s += &format!("  {what:<50} {:>7}  target {op} {lim:<5}  -\n", "-");
                kv.set(key, "");
            }
        }
        kv.set(&format!("{key}_verdict"), v);
    }
    s
}

/// The summary's "machine limits" section from limits' key=value lines (with heap_table), for `dataset`.
pub fn limits_section(lim: &Kv, dataset: &str, payload: u64, cpus: usize) -> String {
    let get = |k: &str| lim.get(k).unwrap_or("").to_string();
    let z = |k: &str| get(&format!("zstd1_{dataset}_{k}"));
    let file_mib = z("file_bytes").parse::<u64>().unwrap_or(0) / 1_048_576;
    let mut s = String::from("\nmachine limits (limits.sh; MB = 10^6 bytes):\n");
    s += &format!(
        "  disk: read O_DIRECT {} MB/s, read from page cache {} MB/s, write O_DIRECT {} MB/s\n",
        get("disk_read_direct_mb_s"),
        get("cached_read_mb_s"),
        get("disk_write_direct_mb_s")
    );
    s += &format!(
        "  zstd -1, one core, {} heap (first {file_mib} MiB segment): {} MB/s in memory (zstd -b1, ratio {}), {} MB/s streaming (zstd -1 -T1, ratio {}); decompression {} MB/s\n",
        get("heap_table"),
        z("mb_s"),
        z("ratio"),
        z("cli_mb_s"),
        z("file_ratio"),
        z("dec_mb_s")
    );
    let rate = z("mb_s").parse::<f64>().unwrap_or(0.0);
    if rate > 0.0 {
        let mb = payload as f64 / 1e6;
        s += &format!(
            "  compressing the {mb:.0} MB payload at that rate takes {:.2} s on one core, {:.2} s on {cpus} cores\n",
            mb / rate,
            mb / rate / cpus as f64
        );
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(tool: &'static str, op: &'static str, rc: i32, wall: f64, out: u64) -> Row {
        Row {
            tool,
            op,
            rep: 1,
            rc,
            wall_s: wall,
            user_s: 0.0,
            sys_s: 0.0,
            vm_busy_s: 0.0,
            cmd_maxrss_kb: 1024,
            services_rss_kb: 0,
            out_bytes: out,
            payload_bytes: 100_000_000,
            note: String::new(),
        }
    }

    #[test]
    fn summary_has_the_scripts_keys_and_leaves_failures_out() {
        let rows = [
            row("strata", "backup", 0, 2.0, 10_000_000),
            row("pgbackrest", "backup", 0, 5.0, 10_000_000),
            row("pg_basebackup", "backup", 1, 1.0, 0),
            row("strata", "restore", 0, 1.0, 0),
            row("pgbackrest", "restore", 0, 2.0, 0),
        ];
        let mut kv = Kv::default();
        let text = summarize(&rows, "local", &mut kv);
        assert_eq!(kv.get("strata_backup_s"), Some("2.000"));
        assert_eq!(kv.get("ratio_backup_pgbr"), Some("0.400"));
        assert_eq!(kv.get("ratio_backup_pgbr_verdict"), Some("PASS"));
        assert_eq!(kv.get("ratio_backup_pgbb"), Some(""));
        assert_eq!(kv.get("ratio_backup_pgbb_verdict"), Some("-"));
        assert_eq!(kv.get("ratio_repo_verdict"), Some("PASS"));
        assert_eq!(kv.get("pg_basebackup_backup_failed"), Some("1"));
        assert!(text.contains("FAILED: pg_basebackup|backup x1 (not in the medians)"));
        assert!(text.contains("strata        backup     1      2.00"));
    }
}
