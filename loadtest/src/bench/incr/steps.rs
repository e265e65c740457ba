//! One run's steps: the stanzas and checks before the reps, and each rep (fresh repositories, a timed full
//! backup per tool, the churn, CHECKPOINT, a timed incremental per tool, the changed pages), in
//! bench-incr.sh's order and with its pauses.

use super::facts::{self, Newest};
use super::report::{Churn, Row};
use super::Args;
use crate::bench::common::{
    as_postgres, du_bytes, log, measure, output_of, proc_hwm_kb, run_logged, settle, timed,
    wipe_dir, BenchCluster, Fleet, Pgbackrest, Workspace, STANZA,
};
use crate::bench::paired_setup::check_both;
use crate::bench::run_info::{clk_tck, vm_busy_ticks};
use crate::dataset::Dataset;
use anyhow::{anyhow, bail, Context, Result};
use std::ffi::{OsStr, OsString};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};
use strata_integration::StrataBins;

/// How long the archiver may stay busy before a measurement starts anyway (with a warning), as the script.
const ARCHIVE_IDLE_TIMEOUT: Duration = Duration::from_secs(120);

/// The run's tools, cluster and files.
pub(super) struct Bench<'a> {
    args: &'a Args,
    pub ws: &'a Workspace,
    bins: StrataBins,
    config: PathBuf,
    // Fields drop in declaration order: PostgreSQL stops before the services its archive_command may need.
    pub cluster: BenchCluster,
    fleet: Fleet,
    pgbr: Pgbackrest,
    srepo: PathBuf,
    /// pageinspect could be created: the changed pages are counted.
    pageinspect: bool,
    /// The churn's program and arguments ([`Bench::fix_churn`]).
    churn: Option<(OsString, Vec<OsString>)>,
}

impl<'a> Bench<'a> {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        args: &'a Args,
        ws: &'a Workspace,
        bins: StrataBins,
        config: PathBuf,
        cluster: BenchCluster,
        fleet: Fleet,
        pgbr: Pgbackrest,
        srepo: PathBuf,
    ) -> Bench<'a> {
        Bench {
            args,
            ws,
            bins,
            config,
            cluster,
            fleet,
            pgbr,
            srepo,
            pageinspect: false,
            churn: None,
        }
    }

    fn strata(&self) -> Command {
        self.bins.strata_cmd(&self.config, STANZA)
    }

    fn sql(&self, sql: &str) -> Result<String> {
        self.cluster
            .pg()
            .try_psql_db("postgres", sql)
            .map_err(|e| anyhow!("psql: {e}"))
    }

    fn wait_archive_idle(&self) {
        if !self.cluster.wait_archive_idle(ARCHIVE_IDLE_TIMEOUT) {
            log(format!(
                "warning: WAL still waiting for archive_command after 120 s (see {})",
                self.cluster.pg().log_file().display()
            ));
        }
    }

    fn stanza_create(&self, tag: &str) -> Result<()> {
        let log = self
            .ws
            .fresh_log(&format!("strata-stanza-create-{tag}.log"));
        run_logged(
            self.strata().arg("stanza-create"),
            "strata stanza-create",
            &log,
        )?;
        self.pgbr.stanza_create(
            &self
                .ws
                .fresh_log(&format!("pgbackrest-stanza-create-{tag}.log")),
        )
    }

    /// Before the reps: both stanzas (before the first WAL push), both checks, and pageinspect (created
    /// before any backup, so that its catalog rows are not a change an incremental sees).
    pub fn prepare(&mut self) -> Result<()> {
        self.stanza_create("0")?;
        check_both(self.ws, &mut self.strata(), &self.pgbr)?;
        match self.sql("CREATE EXTENSION IF NOT EXISTS pageinspect") {
            Ok(_) => self.pageinspect = true,
            Err(e) => log(format!(
                "warning: no pageinspect ({}): changed pages are not counted",
                e.to_string().lines().next().unwrap_or("")
            )),
        }
        Ok(())
    }

    /// Fixes the churn for the whole run, as bench-incr.sh did (its `-D ncust=... -D norders=...` are the
    /// counts before the first rep, not before each): the dataset's churn command, built once, is replayed
    /// in every rep. Returns its pgbench arguments besides -n -T -c -j and the connection (none for TPC-B).
    pub fn fix_churn(&mut self, dataset: Dataset) -> Result<Vec<String>> {
        dataset.prepare_churn(self.ws.root())?;
        let log = self.ws.tmp().join("churn.log");
        let cmd = dataset.churn_command(
            self.cluster.pg(),
            self.ws.root(),
            self.args.churn_secs,
            2,
            &log,
        )?;
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        let from = args
            .iter()
            .position(|a| a == "-j")
            .map_or(args.len(), |i| i + 2);
        let to = args.iter().position(|a| a == "-h").unwrap_or(args.len());
        self.churn = Some((
            cmd.get_program().to_os_string(),
            cmd.get_args().map(OsStr::to_os_string).collect(),
        ));
        Ok(args
            .get(from..to)
            .map(<[String]>::to_vec)
            .unwrap_or_default())
    }

    /// One rep: its rows (in the order they were measured) and what its churn did.
    pub fn rep(&mut self, rep: u32) -> Result<(Vec<Row>, Churn)> {
        // The tool that goes first alternates, so neither always backs up right after the CHECKPOINT.
        let order = if rep % 2 == 1 {
            ["strata", "pgbackrest"]
        } else {
            ["pgbackrest", "strata"]
        };

        // Fresh repositories for both tools. NATS mode: the uploader caches the chunk index; fresh services
        // for a fresh repository.
        self.wait_archive_idle();
        self.fleet.stop_services();
        wipe_dir(&self.srepo)?;
        self.pgbr.wipe_repo()?;
        self.fleet.start_services(&self.config)?;
        self.stanza_create(&rep.to_string())?;

        let mut rows = Vec::new();
        for (i, tool) in order.into_iter().enumerate() {
            rows.push(self.backup(tool, "full", rep, i as u32 + 1)?);
        }

        // The churn: one pgbench run that both incrementals cover.
        self.wait_archive_idle();
        let main_table = self.args.paired.data.main_table();
        let lsn0 = self.sql("SELECT pg_current_wal_lsn()")?;
        let main_bytes: u64 = self
            .sql(&format!("SELECT pg_relation_size('{main_table}')"))?
            .parse()
            .context("pg_relation_size")?;
        let log_path = self.ws.fresh_log(&format!("pgbench-churn-{rep}.log"));
        let (program, churn_args) = self
            .churn
            .as_ref()
            .ok_or_else(|| anyhow!("the churn is not fixed"))?;
        let mut cmd = as_postgres(program);
        cmd.args(churn_args);
        log(format!(
            "pgbench {} (from LSN {lsn0})",
            churn_args
                .iter()
                .map(|a| a.to_string_lossy())
                .collect::<Vec<_>>()
                .join(" ")
        ));
        timed(&mut cmd, "pgbench (churn)", &log_path)?;
        let (xacts, tps) =
            facts::pgbench_figures(&fs::read_to_string(&log_path).unwrap_or_default());
        let xacts = xacts.ok_or_else(|| {
            anyhow!(
                "pgbench printed no transaction count; log {}",
                log_path.display()
            )
        })?;
        self.sql("CHECKPOINT")?;
        log(format!(
            "pgbench: {xacts} transactions ({} tps); {main_table} is {main_bytes} bytes; CHECKPOINT done",
            tps.as_deref().unwrap_or("?")
        ));

        for (i, tool) in order.into_iter().enumerate() {
            rows.push(self.backup(tool, "incr", rep, i as u32 + 1)?);
        }

        let pages = if self.pageinspect {
            let t0 = Instant::now();
            let p = facts::parse_changed_pages(
                &self.sql(&facts::changed_pages_sql(&lsn0, main_table))?,
            )?;
            log(format!(
                "changed since LSN {lsn0}: {main_table} {} of {} pages, bench database {} of {} pages (counted in {:.1} s)",
                p[1],
                p[0],
                p[3],
                p[2],
                t0.elapsed().as_secs_f64()
            ));
            Some(p)
        } else {
            None
        };
        let churn = Churn {
            main_table: main_table.to_string(),
            main_bytes,
            secs: self.args.churn_secs,
            xacts,
            pages,
        };
        Ok((rows, churn))
    }

    /// One timed backup (`op` full or incr) with `tool`. The repository is measured right before the
    /// command and again once the archiver is idle after it, so "added" is the backup plus the WAL segment
    /// (or two) its stop switched to. Fails when the command fails or the newest backup in the repository
    /// is not of type `op` (e.g. Strata falling back to a full).
    fn backup(
        &mut self,
        tool: &'static str,
        op: &'static str,
        rep: u32,
        position: u32,
    ) -> Result<Row> {
        let name = format!("{tool}-{op}-{rep}");
        let log_path = self.ws.fresh_log(&format!("{name}.log"));
        self.wait_archive_idle();
        let strata = tool == "strata";
        let repo = if strata {
            self.srepo.clone()
        } else {
            self.pgbr.repo().to_path_buf()
        };
        let before = du_bytes(&repo);
        let mut cmd = if strata {
            self.fleet.reset_hwm();
            let mut c = self.strata();
            c.args(["backup", "--type", op]);
            c
        } else {
            let mut c = self.pgbr.command();
            c.args(["backup", &format!("--type={op}")]);
            c
        };
        settle(self.args.paired.pause);
        let busy0 = vm_busy_ticks();
        let m = measure(
            &mut cmd,
            &format!("{tool} backup --type {op} (rep {rep})"),
            &log_path,
        )?;
        let busy = vm_busy_ticks().saturating_sub(busy0) as f64 / clk_tck();
        let services_kb = self.fleet.hwm_kb();
        self.wait_archive_idle();
        let after = du_bytes(&repo);

        let mut maxrss_kb = m.max_rss_kb;
        let (newest, note) = if strata {
            let said = fs::read_to_string(&log_path)
                .unwrap_or_default()
                .lines()
                .find(|l| l.contains(" committed"))
                .unwrap_or("")
                .to_string();
            let mut note = format!("said: {said}");
            if !self.fleet.services().is_empty() {
                // The command plus the services' peaks, as bench-full's peak_rss_kb.
                let nats_kb = self.fleet.nats_pid().map_or(0, proc_hwm_kb);
                note = format!("cmd_maxrss_kb={maxrss_kb} services_hwm_kb={services_kb} nats_server_hwm_kb={nats_kb} {note}");
                maxrss_kb += services_kb;
            }
            let n = facts::strata_newest(
                &self.info_json(&name, self.strata().args(["info", "--output", "json"]))?,
            )?;
            let note = format!("type={} reference={} {note}", n.kind, n.reference);
            (n, note)
        } else {
            let n = facts::pgbackrest_newest(
                &self.info_json(&name, self.pgbr.command().args(["info", "--output=json"]))?,
            )?;
            let set_du = du_bytes(&self.pgbr.repo().join("backup").join(STANZA).join(&n.label));
            let note = format!(
                "type={} reference={} info.size={} info.delta={} repository.size={} repository.delta={} backup_set_du={set_du}",
                n.kind, n.reference, n.database, n.copied, n.repo_size, n.stored
            );
            (n, note)
        };
        let added = after as i64 - before as i64;
        log(format!(
            "{tool} {op} #{rep}: rc=0 {:.3}s cpu={:.2}+{:.2}s vm_busy={busy:.2}s rss={maxrss_kb}kB added={added} stored={} label={}",
            m.secs, m.user_s, m.sys_s, newest.stored, newest.label
        ));
        if newest.kind != op {
            bail!(
                "{tool} {op} #{rep}: the newest backup in the repository is '{}' of type '{}', not {op} (log {})",
                newest.label,
                newest.kind,
                log_path.display()
            );
        }
        let Newest {
            label,
            stored,
            copied,
            read,
            database,
            ..
        } = newest;
        Ok(Row {
            tool,
            op,
            rep,
            position,
            wall_s: (m.secs * 1000.0).round() / 1000.0,
            user_s: m.user_s,
            sys_s: m.sys_s,
            busy_s: busy,
            maxrss_kb,
            added_bytes: added,
            stored,
            copied,
            read,
            database,
            label,
            note,
        })
    }

    /// Runs an `info` command, keeps its JSON in `logs/<name>-info.json` (its stderr in `.err`) and returns it.
    fn info_json(&self, name: &str, cmd: &mut Command) -> Result<String> {
        let err_path = self.ws.log(&format!("{name}-info.err"));
        let json = output_of(cmd, &format!("{name}: info")).inspect_err(|e| {
            let _ = fs::write(&err_path, format!("{e:#}\n"));
        })?;
        let _ = fs::remove_file(&err_path);
        write_file(&self.ws.log(&format!("{name}-info.json")), &json)?;
        Ok(json)
    }
}

fn write_file(path: &Path, text: &str) -> Result<()> {
    fs::write(path, text).with_context(|| format!("cannot write {}", path.display()))
}
