//! The rows of a `many-files` run: each appended to `results.tsv` as it comes, then the summary's table
//! with the verdict, and what the archiver's pushes logged.

use anyhow::Result;
use std::fs;
use std::path::Path;

use super::super::common::{log, proc_hwm_kb, Fleet, Kv, Measured, Results, Workspace};
use super::{mib, HEADER};
use crate::bench::run_info::utc_now;

/// One row of the table: op, process, rc, wall, peak RSS in KiB, under the limit.
struct Row {
    op: String,
    process: String,
    rc: String,
    wall: String,
    kb: u64,
    ok: &'static str,
}

/// The rows of this run: appended to `results.tsv` as they come, and the summary's table.
pub(super) struct Recorder {
    results: Results,
    run_id: String,
    mode: String,
    limit_mib: u64,
    rows: Vec<Row>,
}

impl Recorder {
    /// Opens `results.tsv`; one with another header is moved aside (`results.tsv.old-<run_id>`), as the script.
    pub(super) fn open(
        ws: &Workspace,
        run_id: &str,
        mode: &str,
        limit_mib: u64,
    ) -> Result<Recorder> {
        let path = ws.path("results.tsv");
        if let Ok(text) = fs::read_to_string(&path) {
            if text.lines().next() != Some(HEADER.join("\t").as_str()) {
                fs::rename(&path, ws.path(&format!("results.tsv.old-{run_id}")))?;
            }
        }
        Ok(Recorder {
            results: Results::open(&path, &HEADER)?,
            run_id: run_id.into(),
            mode: mode.into(),
            limit_mib,
            rows: Vec::new(),
        })
    }

    pub(super) fn row(
        &mut self,
        op: &str,
        process: &str,
        rc: &str,
        wall: &str,
        kb: u64,
        note: &str,
    ) -> Result<()> {
        let ok = if kb == 0 {
            "?"
        } else if kb < self.limit_mib * 1024 {
            "yes"
        } else {
            "NO"
        };
        let fields = [
            &self.run_id,
            &utc_now(),
            &self.mode,
            op,
            process,
            rc,
            wall,
            &kb.to_string(),
            &mib(kb),
            ok,
            note,
        ];
        self.results.row(&fields.map(|f| f.to_string()))?;
        log(format!(
            "  {op} {process}: rc={rc} wall={wall}s peak_rss={} MiB (under {} MiB: {ok})",
            mib(kb),
            self.limit_mib
        ));
        self.rows.push(Row {
            op: op.into(),
            process: process.into(),
            rc: rc.into(),
            wall: wall.into(),
            kb,
            ok,
        });
        Ok(())
    }

    /// A measured strata command (it succeeded: a failure has stopped the run).
    pub(super) fn command(
        &mut self,
        op: &str,
        process: &str,
        m: &Measured,
        note: &str,
    ) -> Result<()> {
        self.row(
            op,
            process,
            "0",
            &format!("{:.2}", m.secs),
            m.max_rss_kb,
            note,
        )
    }

    /// NATS mode: each service's and nats-server's VmHWM since the last reset.
    pub(super) fn services(&mut self, op: &str, fleet: &mut Fleet) -> Result<()> {
        let Some(nats_pid) = fleet.nats_pid() else {
            return Ok(());
        };
        for (name, pid) in fleet.services() {
            self.row(
                op,
                &name,
                "-",
                "-",
                proc_hwm_kb(pid),
                &format!("VmHWM pid {pid}"),
            )?;
        }
        self.row(
            op,
            "nats-server",
            "-",
            "-",
            proc_hwm_kb(nats_pid),
            &format!("VmHWM pid {nats_pid}"),
        )
    }

    /// The summary's table, the largest peak and the verdict.
    pub(super) fn table(&self) -> String {
        let line = |a: &str, b: &str, c: &str, d: &str, e: &str, f: &str| {
            format!("{a:<11} {b:<42} {c:<10} {d:>9} {e:>13} {f}\n")
        };
        let mut t = line(
            "op",
            "process",
            "rc",
            "wall_s",
            "peak_RSS_MiB",
            &format!("under {}MiB", self.limit_mib),
        );
        for r in &self.rows {
            t.push_str(&line(&r.op, &r.process, &r.rc, &r.wall, &mib(r.kb), r.ok));
        }
        let max_kb = self.rows.iter().map(|r| r.kb).max().unwrap_or(0);
        let all_ok = if self.rows.iter().all(|r| r.ok == "yes") {
            "yes"
        } else {
            "no"
        };
        t.push_str(&format!(
            "largest peak RSS: {} MiB; every process under {} MiB: {all_ok}\n",
            mib(max_kb),
            self.limit_mib
        ));
        t
    }

    /// `<op>.<process>.rss_kb` for each row (process up to its first space), `largest_rss_kb`, `under_limit`.
    pub(super) fn kv(&self) -> Kv {
        let mut kv = Kv::new();
        for r in &self.rows {
            let process = r.process.split(' ').take(2).collect::<Vec<_>>().join("_");
            kv.set(&format!("{}.{process}.rss_kb", r.op), r.kb);
        }
        kv.set(
            "largest_rss_kb",
            self.rows.iter().map(|r| r.kb).max().unwrap_or(0),
        );
        kv.set("rss_limit_mib", self.limit_mib);
        kv.set(
            "under_limit",
            if self.rows.iter().all(|r| r.ok == "yes") {
                "yes"
            } else {
                "no"
            },
        );
        kv
    }
}

/// What `logs/archive-push-time.log` says: GNU time's `%M kB %e s rc=%x` line per push.
pub(super) struct ArchivePushes {
    pub(super) count: usize,
    pub(super) max_kb: u64,
    pub(super) failed: usize,
}

impl ArchivePushes {
    pub(super) fn read(path: &Path) -> ArchivePushes {
        let text = fs::read_to_string(path).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| l.contains(" kB ")).collect();
        let max_kb = lines
            .iter()
            .filter_map(|l| {
                let mut w = l.split_whitespace();
                let kb = w.next()?.parse::<u64>().ok()?;
                (w.next() == Some("kB")).then_some(kb)
            })
            .max()
            .unwrap_or(0);
        let failed = text
            .lines()
            .filter(|l| l.split("rc=").nth(1).is_some_and(|rc| !rc.starts_with('0')))
            .count();
        ArchivePushes {
            count: lines.len(),
            max_kb,
            failed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn archive_pushes_and_mib() {
        let dir = tempfile::tempdir().unwrap();
        let ap = dir.path().join("ap.log");
        fs::write(
            &ap,
            "12000 kB 0.05 s rc=0\n33000 kB 0.10 s rc=0\n9000 kB 0.01 s rc=1\n",
        )
        .unwrap();
        let p = ArchivePushes::read(&ap);
        assert_eq!((p.count, p.max_kb, p.failed), (3, 33000, 1));
        assert_eq!(mib(262_144), "256.0");
        assert_eq!(mib(47_068), "46.0");
    }
}
