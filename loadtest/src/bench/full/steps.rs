//! One rep of bench-full.sh: the timed Strata, pgBackRest and pg_basebackup backups and the two restores,
//! each preceded by `sync` and the pause, each recorded as a results.tsv row.

use anyhow::{anyhow, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

use strata_integration::pg::pg_bin;
use strata_integration::StrataBins;

use super::report::Row;
use super::sampler::{top_summary, Sampler, Whose};
use super::{report, Args, ARCHIVE_IDLE_TIMEOUT};
use crate::bench::common::{
    as_postgres, du_bytes, log, measure, proc_cpu_ticks, proc_hwm_kb, run_logged, settle, wipe_dir,
    BenchCluster, Fleet, Measured, Pgbackrest, Pipeline, Results, Workspace, STANZA,
};
use crate::bench::paired_setup::{check_both, open_results};
use crate::bench::run_info::{clk_tck, utc_now, vm_busy_ticks};

/// The run's state. Field order is drop order: the server stops before the bus and the services.
pub struct Bench<'a> {
    pub args: &'a Args,
    pub ws: &'a Workspace,
    pub run_id: String,
    bins: StrataBins,
    config: PathBuf,
    pub pipeline: Pipeline,
    pgbr: Pgbackrest,
    pub cluster: BenchCluster,
    pub fleet: Fleet,
    srepo: PathBuf,
    results: Results,
    pub results_path: PathBuf,
    pub bus_url: String,
    /// This run's rows, for the summary.
    pub rows: Vec<Row>,
    clk_tck: f64,
}

/// What a timed command took, with the CPU the whole machine was busy meanwhile.
struct Timing {
    m: Measured,
    vm_busy_s: f64,
}

impl<'a> Bench<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        args: &'a Args,
        ws: &'a Workspace,
        run_id: String,
        bins: StrataBins,
        config: PathBuf,
        pipeline: Pipeline,
        pgbr: Pgbackrest,
        cluster: BenchCluster,
        fleet: Fleet,
        srepo: PathBuf,
    ) -> Result<Bench<'a>> {
        let results = open_results(ws, "results.tsv", report::HEADER, &run_id)?;
        let results_path = ws.path("results.tsv");
        let bus_url = fleet.url();
        let clk_tck = clk_tck();
        Ok(Bench {
            args,
            ws,
            run_id,
            bins,
            config,
            pipeline,
            pgbr,
            cluster,
            fleet,
            srepo,
            results,
            results_path,
            bus_url,
            rows: Vec::new(),
            clk_tck,
        })
    }

    fn strata(&self) -> Command {
        self.bins.strata_cmd(&self.config, STANZA)
    }

    /// Both stanzas exist before the first WAL push; `strata check` and `pgbackrest check` prove both
    /// archive paths end to end (each forces a WAL switch and waits for it in its archive).
    pub fn prepare(&mut self) -> Result<()> {
        run_logged(
            self.strata().arg("stanza-create"),
            "strata stanza-create",
            &self.ws.fresh_log("strata-stanza-create-0.log"),
        )?;
        self.pgbr
            .stanza_create(&self.ws.fresh_log("pgbackrest-stanza-create-0.log"))?;
        check_both(self.ws, &mut self.strata(), &self.pgbr)
    }

    /// WAL is only written by the backups here; before a repository is wiped the archiver must be idle,
    /// so that no push lands in a half-made repository.
    fn wait_archive_idle(&self) {
        if !self.cluster.wait_archive_idle(ARCHIVE_IDLE_TIMEOUT) {
            log(format!(
                "warning: WAL still waiting for archive_command after 120 s (see {})",
                self.cluster.pg().log_file().display()
            ));
        }
    }

    /// Runs `cmd` after `sync` and the pause, output to `logs/<name>.log`; with `sample`, top samples go
    /// to `logs/top-<name>.log` meanwhile.
    fn timed(&mut self, name: &str, mut cmd: Command, sample: bool) -> Result<Timing> {
        let log_file = self.ws.fresh_log(&format!("{name}.log"));
        settle(self.args.paired.pause);
        let b0 = vm_busy_ticks();
        let sampler = if sample {
            let mut roots: Vec<u32> = self.fleet.services().into_iter().map(|(_, p)| p).collect();
            roots.extend(self.fleet.nats_pid());
            roots.extend(self.cluster.pg().pid().map(|p| p as u32));
            Sampler::start(
                &self.ws.log(&format!("top-{name}.log")),
                self.args.top_interval,
                roots,
            )?
        } else {
            None
        };
        let result = measure(&mut cmd, name, &log_file);
        if let Some(s) = sampler {
            s.stop();
        }
        let vm_busy_s = vm_busy_ticks().saturating_sub(b0) as f64 / self.clk_tck;
        Ok(Timing {
            m: result?,
            vm_busy_s,
        })
    }

    /// Appends `row` to results.tsv and logs it.
    fn record(&mut self, row: Row) -> Result<()> {
        let fields = row.fields(&self.run_id, &utc_now());
        self.results.row(&fields)?;
        log(format!(
            "{} {} #{}: rc={} {}s {}MB/s cpu={}+{}s vm_busy={}s rss={}kB repo={} {}",
            row.tool,
            row.op,
            row.rep,
            row.rc,
            fields[6],
            row.mb_s(),
            fields[7],
            fields[8],
            fields[9],
            row.peak_rss_kb(),
            row.out_bytes,
            row.note
        ));
        self.rows.push(row);
        Ok(())
    }

    /// A timed step's figures; for a failed command, its row (rc 1, no times) and then the error.
    fn record_timing(
        &mut self,
        tool: &'static str,
        op: &'static str,
        rep: u32,
        payload: u64,
        t: Result<Timing>,
    ) -> Result<Timing> {
        let e = match t {
            Ok(t) => return Ok(t),
            Err(e) => e,
        };
        let failed = Timing {
            m: Measured::default(),
            vm_busy_s: 0.0,
        };
        self.record(Row {
            rc: 1,
            ..row(tool, op, rep, &failed, 0, 0, payload, String::new())
        })?;
        Err(e)
    }

    /// A backup or restore that ran but left no usable result: its row with rc 99, then the error.
    fn fail(&mut self, mut r: Row, why: String) -> anyhow::Error {
        r.rc = 99;
        match self.record(r) {
            Ok(()) => anyhow!(why),
            Err(e) => e,
        }
    }

    fn top_report(&self, name: &str) -> String {
        let text = fs::read_to_string(self.ws.log(&format!("top-{name}.log"))).unwrap_or_default();
        if text.is_empty() {
            return String::new();
        }
        let n = text.lines().filter(|l| l.starts_with("=== ours ")).count();
        let or_dash = |s: String| if s.is_empty() { "-".to_string() } else { s };
        let ours = or_dash(top_summary(&text, Whose::Ours, 6));
        let others = or_dash(top_summary(&text, Whose::Others, 4));
        log(format!(
            "  top ({n} samples) ours: {ours}; others (noise): {others}"
        ));
        format!("top({n} samples) ours: {ours}; others: {others}")
    }

    /// Wipes the Strata repository (NATS mode: restarts the services, whose uploader caches the chunk
    /// index), stanza-create, timed `strata backup`; an error unless it committed a backup.
    pub fn strata_backup(&mut self, rep: u32) -> Result<()> {
        self.wait_archive_idle();
        self.fleet.stop_services();
        wipe_dir(&self.srepo)?;
        self.fleet.start_services(&self.config)?;
        run_logged(
            self.strata().arg("stanza-create"),
            "strata stanza-create",
            &self
                .ws
                .fresh_log(&format!("strata-stanza-create-{rep}.log")),
        )?;
        let payload = self.cluster.db_bytes();
        self.fleet.reset_hwm();
        let mut procs = self.fleet.services();
        if let Some(p) = self.fleet.nats_pid() {
            procs.push(("nats-server".into(), p));
        }
        let cpu_before: Vec<u64> = procs.iter().map(|(_, p)| proc_cpu_ticks(*p)).collect();
        let name = format!("strata-backup-{rep}");
        let mut cmd = self.strata();
        cmd.arg("backup");
        let t = self.timed(&name, cmd, true);
        let t = self.record_timing("strata", "backup", rep, payload, t)?;
        let mut svc = 0;
        let mut nats_note = String::new();
        if let Some(nats_pid) = self.fleet.nats_pid() {
            svc = self.fleet.hwm_kb();
            nats_note = format!(" nats_server_hwm_kb={}", proc_hwm_kb(nats_pid));
            // CPU-seconds each process used during the backup (the command's own is cpu= in the log line).
            for ((svc_name, pid), before) in procs.iter().zip(&cpu_before) {
                let secs = proc_cpu_ticks(*pid).saturating_sub(*before) as f64 / self.clk_tck;
                nats_note.push_str(&format!(" cpu_{svc_name}={secs:.2}"));
            }
        }
        let text = fs::read_to_string(self.ws.log(&format!("{name}.log"))).unwrap_or_default();
        let label = committed_label(&text);
        self.wait_archive_idle();
        let said = text
            .lines()
            .find(|l| l.contains("committed:"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, rest)| rest.strip_prefix(' ').unwrap_or(rest).to_string())
            .unwrap_or_default();
        let top = self.top_report(&name);
        let note = format!(
            "label={} bus={} pipeline={}{nats_note} said: {said} {top}",
            label.as_deref().unwrap_or("?"),
            self.bus_url,
            self.pipeline.describe().replace(' ', ",")
        );
        let mut info = self.strata();
        info.args(["info", "--output", "json"]);
        let _ = run_logged(
            &mut info,
            "strata info",
            &self.ws.fresh_log(&format!("strata-info-{rep}.json")),
        );
        let r = row(
            "strata",
            "backup",
            rep,
            &t,
            svc,
            du_bytes(&self.srepo),
            payload,
            note,
        );
        if label.is_none() {
            return Err(self.fail(
                r,
                format!(
                    "strata backup #{rep} printed no committed backup label (log {})",
                    self.ws.log(&format!("{name}.log")).display()
                ),
            ));
        }
        self.record(r)
    }

    /// Wipes the pgBackRest repository, stanza-create, timed `pgbackrest backup --type=full`.
    pub fn pgbr_backup(&mut self, rep: u32) -> Result<()> {
        self.wait_archive_idle();
        self.pgbr.wipe_repo()?;
        self.pgbr.stanza_create(
            &self
                .ws
                .fresh_log(&format!("pgbackrest-stanza-create-{rep}.log")),
        )?;
        let payload = self.cluster.db_bytes();
        let name = format!("pgbackrest-backup-{rep}");
        let mut cmd = self.pgbr.command();
        cmd.args(["backup", "--type=full"]);
        let t = self.timed(&name, cmd, true);
        let t = self.record_timing("pgbackrest", "backup", rep, payload, t)?;
        let label = fs::read_link(self.pgbr.repo().join(format!("backup/{STANZA}/latest")))
            .ok()
            .map(|p| p.display().to_string());
        self.wait_archive_idle();
        let mut note = format!(
            "label={} compress={}",
            label.as_deref().unwrap_or("?"),
            self.args.paired.pgbr_desc()
        );
        if let Some(l) = &label {
            note.push_str(&format!(
                " backup_set_bytes={}",
                du_bytes(&self.pgbr.repo().join(format!("backup/{STANZA}/{l}")))
            ));
        }
        note.push(' ');
        note.push_str(&self.top_report(&name));
        let r = row(
            "pgbackrest",
            "backup",
            rep,
            &t,
            0,
            du_bytes(self.pgbr.repo()),
            payload,
            note,
        );
        if label.is_none() {
            return Err(self.fail(
                r,
                format!(
                    "pgbackrest backup #{rep} left no latest backup in {}",
                    self.pgbr.repo().display()
                ),
            ));
        }
        self.record(r)
    }

    /// pg_basebackup -Ft into an empty directory, removed afterwards: a tar compressed by the server's
    /// walsender, pg_wal.tar (-X stream: streamed, not compressed) and a backup_manifest. Unlike the other
    /// two it does not wait for the archiver (it carries its WAL itself).
    pub fn pgbb_backup(&mut self, rep: u32) -> Result<()> {
        self.wait_archive_idle();
        let out = self.ws.fresh_dir("basebackup", 0o700)?;
        let payload = self.cluster.db_bytes();
        let name = format!("pg_basebackup-backup-{rep}");
        let a = self.args;
        let pg = self.cluster.pg();
        let mut cmd = as_postgres(pg_bin("pg_basebackup"));
        cmd.arg("-h")
            .arg(pg.socket_dir())
            .args(["-p", &pg.port().to_string(), "-U", "postgres", "-D"])
            .arg(&out)
            .args(["-Ft", "-X", a.pgbb_wal.as_str(), "--checkpoint=fast"])
            .arg(format!("--compress={}", a.pgbb_compress));
        let t = self.timed(&name, cmd, true);
        let t = self.record_timing("pg_basebackup", "backup", rep, payload, t)?;
        self.wait_archive_idle();
        let files = list_files(&out, &out)
            .into_iter()
            .map(|(p, s)| format!("{p}:{s}"))
            .collect::<Vec<_>>()
            .join(",");
        let top = self.top_report(&name);
        let note = format!(
            "-Ft -X {} --checkpoint=fast --compress={} files={} {top}",
            a.pgbb_wal.as_str(),
            a.pgbb_compress,
            if files.is_empty() { "-" } else { &files }
        );
        let r = row(
            "pg_basebackup",
            "backup",
            rep,
            &t,
            0,
            du_bytes(&out),
            payload,
            note,
        );
        if !out.join("backup_manifest").is_file() {
            return Err(self.fail(
                r,
                format!("pg_basebackup left no backup_manifest in {}", out.display()),
            ));
        }
        self.record(r)?;
        fs::remove_dir_all(&out).with_context(|| format!("cannot remove {}", out.display()))
    }

    /// Timed restore of `tool`'s latest backup into a new empty directory, checked to look like a data
    /// directory, then removed.
    pub fn restore_one(&mut self, tool: &'static str, rep: u32, payload: u64) -> Result<()> {
        let dir = self.ws.fresh_dir(&format!("restore/{tool}"), 0o700)?;
        let (name, cmd) = if tool == "strata" {
            let mut c = self.strata();
            c.args(["restore", "--pg-data"]).arg(&dir);
            (format!("strata-restore-{rep}"), c)
        } else {
            let mut c = self.pgbr.command();
            c.arg("restore")
                .arg(format!("--pg1-path={}", dir.display()));
            (format!("pgbackrest-restore-{rep}"), c)
        };
        let t = self.timed(&name, cmd, false);
        let t = self.record_timing(tool, "restore", rep, payload, t)?;
        let size = du_bytes(&dir);
        let ok = dir.join("PG_VERSION").is_file()
            && dir.join("global/pg_control").is_file()
            && dir.join("base").is_dir();
        let files = list_files(&dir, &dir).len();
        let note = format!(
            "restored_bytes={size} files={files} data_dir_ok={}",
            if ok { "yes" } else { "no" }
        );
        let r = row(tool, "restore", rep, &t, 0, size, payload, note);
        if !ok {
            return Err(self.fail(
                r,
                format!(
                    "restored directory {} lacks PG_VERSION, global/pg_control or base/",
                    dir.display()
                ),
            ));
        }
        self.record(r)?;
        fs::remove_dir_all(&dir).with_context(|| format!("cannot remove {}", dir.display()))
    }
}

#[allow(clippy::too_many_arguments)]
fn row(
    tool: &'static str,
    op: &'static str,
    rep: u32,
    t: &Timing,
    svc: u64,
    out: u64,
    payload: u64,
    note: String,
) -> Row {
    Row {
        tool,
        op,
        rep,
        rc: 0,
        wall_s: t.m.secs,
        user_s: t.m.user_s,
        sys_s: t.m.sys_s,
        vm_busy_s: t.vm_busy_s,
        cmd_maxrss_kb: t.m.max_rss_kb,
        services_rss_kb: svc,
        out_bytes: out,
        payload_bytes: payload,
        note,
    }
}

/// The label `strata backup` prints: the third word of its first "(full|diff|incr) backup ... committed" line.
fn committed_label(log_text: &str) -> Option<String> {
    log_text.lines().find_map(|l| {
        let rest = ["full", "diff", "incr"]
            .iter()
            .find_map(|k| l.strip_prefix(k)?.strip_prefix(" backup "))?;
        if !rest.contains(" committed") {
            return None;
        }
        l.split_whitespace().nth(2).map(String::from)
    })
}

/// Every regular file under `dir` as (path relative to `base`, size), like `find -type f -printf '%P:%s'`.
fn list_files(dir: &Path, base: &Path) -> Vec<(String, u64)> {
    let mut out = Vec::new();
    let Ok(entries) = fs::read_dir(dir) else {
        return out;
    };
    for e in entries.flatten() {
        let p = e.path();
        let Ok(meta) = fs::symlink_metadata(&p) else {
            continue;
        };
        if meta.is_dir() {
            out.extend(list_files(&p, base));
        } else if meta.is_file() {
            let rel = p.strip_prefix(base).unwrap_or(&p).display().to_string();
            out.push((rel, meta.len()));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_label_is_the_third_word_of_the_committed_line() {
        let log = "reading\nfull backup 20261207-211500F of 1.2 GB committed: 3 files\n";
        assert_eq!(committed_label(log).as_deref(), Some("20261207-211500F"));
        assert_eq!(committed_label("full backup failed\n"), None);
    }
}
