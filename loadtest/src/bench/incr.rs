//! `strata-bench incr`: bench-incr.sh in Rust. Incremental backups after a fixed churn, Strata against
//! pgBackRest, on one database, in one run (loadtest/README.md, "Incremental backups").
//!
//! # What it measures
//! On bench-full's `$BENCH_DIR` layout and cluster ([`common::BenchCluster`], `REUSE=1` keeps a loaded
//! one), with `archive_command` pushing every segment to both tools ([`common::archive_both_command`];
//! [`super::paired_setup`] sets up both, as for `full`), each rep:
//! waits for the archiver; (NATS mode: stops the services) wipes both repositories, restarts the services,
//! stanza-create with both; a **timed full backup** with each tool; records `pg_current_wal_lsn()` and the
//! main table's size; **one** churn (`pgbench -n -T CHURN_SECS -c 2 -j 2`, the dataset's script, see
//! [`crate::dataset::Dataset::churn_command`]) that both incrementals cover; `CHECKPOINT`; a **timed incremental** with each
//! tool; then, untimed, counts with pageinspect the pages whose LSN is past the recorded LSN. The tool that
//! goes first alternates (odd reps: Strata first). Each timed command runs as `postgres` after `sync` and
//! `PAUSE` seconds ([`common::settle`]); its repository is measured (`du -sb`) before the command and again once the
//! archiver is idle after it. Stored bytes: Strata's `stored_bytes` (`strata info --output json`),
//! pgBackRest's `info.repository.delta` (`pgbackrest info --output=json`).
//!
//! # Outputs
//! Rows append to `$BENCH_DIR/results-incr.tsv` (same columns); the summary goes to stderr and to
//! `summary-incr-<run_id>.txt`, its key=value lines to `summary-incr-<run_id>.kv` (and `KV_OUT`), the
//! settings to `run-incr-<run_id>.info`. `report` computes the table; `facts` reads the tools' JSON,
//! pgbench's output and /proc/stat.
//!
//! # Differences from the script
//! A failed command, or a newest backup of the wrong type, fails the run at once with one error line
//! (the script recorded rc != 0 rows and failed at the end): no row is ever written for a failure, so
//! `rc` is always 0. The dataset lives in database `postgres` (common.rs's cluster), not `bench`.
//! CPU and peak RSS come from the child's rusage (common.rs's [`common::measure`]) instead of `/usr/bin/time -v`.
//! The PostgreSQL port is the harness's (a reserved free port), so there is no `PGPORT`; `KV_OUT` is
//! `strata-bench --kv-out` (same variable). PostgreSQL, nats-server and the services are harness handles,
//! stopped by pid on Drop; the measured commands and pgbench are children [`common::measure`] waits for (and
//! kills on SIGINT/SIGTERM), so an error or Ctrl-C unwinds through all of them.
//!
//! # What is private here and why
//! Only what is incr's own: its knobs, its rep (`steps`), its table (`report`) and what it reads from the
//! tools' JSON and pgbench's output (`facts`); what it shares with the other benchmarks is in common.rs
//! and run_info.rs.

mod facts;
mod report;
mod steps;

use super::common::{
    self, du_bytes, install_binaries, log, output_of, strata_version, BusMode, Kv, Pgbackrest,
    Pipeline, RemoveOnDrop, Workspace,
};
use super::paired_setup::{self, open_results, PairedArgs, PairedSetup, PGBR_DIR, STRATA_REPO};
use super::run_info::{cpus, mem_total_kb, modified_utc, source_commit, utc_now};
use anyhow::{bail, Context, Result};
use std::fs;
use std::process::Command;
use steps::Bench;

/// bench-incr.sh's knobs: each a flag and the environment variable the script read, with its default.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The knobs `full` and `incr` share.
    #[command(flatten)]
    pub paired: PairedArgs,
    /// Reps; each is a full and an incremental backup with each tool (at least 1).
    #[arg(long, env = "REPS", default_value_t = 2)]
    pub reps: u32,
    /// Seconds of churn (`pgbench -n -T`) between the full and the incremental backups (at least 1).
    #[arg(long, env = "CHURN_SECS", default_value_t = 10)]
    pub churn_secs: u32,
}

/// Runs the benchmark: see the module docs.
pub fn run(args: &Args) -> Result<Kv> {
    if args.reps < 1 {
        bail!("REPS must be at least 1");
    }
    if args.churn_secs < 1 {
        bail!("CHURN_SECS must be at least 1");
    }
    if args.paired.pause.is_nan() || args.paired.pause < 0.0 {
        bail!(
            "PAUSE must be a number of seconds, not '{}'",
            args.paired.pause
        );
    }
    let dataset = args.paired.data.dataset()?;
    let mode = BusMode::parse(&args.paired.strata_bus)?;
    let pipeline = Pipeline::from_env(&args.paired.strata_pipeline)?;
    let run_id = common::run_id();
    let ws = Workspace::create(&args.paired.bench_dir())?;
    let srepo = ws.path(STRATA_REPO);
    let pgbr_dir = ws.path(PGBR_DIR);
    // Without KEEP_REPOS, both repositories go; declared before the servers, so it runs after every
    // server and service is stopped (also on an error).
    let _cleanup = RemoveOnDrop {
        dirs: if args.paired.keep_repos {
            Vec::new()
        } else {
            vec![srepo.clone(), pgbr_dir.join("repo")]
        },
    };

    let bins = install_binaries(args.paired.strata_bin.as_deref(), &ws)?;
    let help = output_of(
        Command::new(bins.path("strata")).args(["backup", "--help"]),
        "strata backup --help",
    )?;
    if !help.contains("incr") {
        bail!(
            "{}/strata (built {}) has no incremental backups (backup --type incr): use a newer build",
            args.paired.strata_bin_dir().display(),
            modified_utc(&args.paired.strata_bin_dir().join("strata"))
        );
    }
    let version = strata_version(&bins);
    let pgbr_version = Pgbackrest::version();
    log(format!(
        "{version} (from {}, built {}), {pgbr_version}, pipeline: {}",
        args.paired.strata_bin_dir().display(),
        modified_utc(&args.paired.strata_bin_dir().join("strata")),
        pipeline.describe()
    ));

    // bench-full.sh's bus, cluster and repositories: the two benchmarks share them.
    let PairedSetup {
        fleet,
        bus_url,
        cluster,
        config,
        pgbr,
    } = paired_setup::start(&args.paired, &ws, &bins, mode, dataset, &pipeline)?;

    let results = open_results(&ws, "results-incr.tsv", report::HEADER, &run_id)?;
    let results_path = ws.path("results-incr.tsv");
    let mut bench = Bench::new(args, &ws, bins, config, cluster, fleet, pgbr, srepo);
    bench.prepare()?;

    let payload = bench.cluster.db_bytes();
    let churn_args = bench.fix_churn(dataset)?;
    let churn_desc = format!(
        "pgbench -T {} -c 2 -j 2 {}",
        args.churn_secs,
        churn_args.join(" ")
    );
    log(format!(
        "run {run_id}: {}, payload {payload} bytes, {} reps, bus {bus_url}, {churn_desc} between full and incr",
        args.paired.data.desc(),
        args.reps
    ));
    write_info(
        args,
        &bench,
        &run_id,
        payload,
        &version,
        &pgbr_version,
        &churn_args,
        &bus_url,
        &pipeline,
    )?;

    let bus = mode.name();
    let dataset_col = dataset.describe().replace(' ', ":");
    let mut rows = Vec::new();
    let mut churns = Vec::new();
    for rep in 1..=args.reps {
        common::check_interrupted()?;
        log(format!("---- rep {rep}/{}", args.reps));
        let (rep_rows, churn) = bench.rep(rep)?;
        for row in &rep_rows {
            let mut fields = vec![
                run_id.clone(),
                utc_now(),
                dataset_col.clone(),
                bus.to_string(),
            ];
            fields.extend(report::tsv_fields(row, &churn));
            results.row(&fields)?;
        }
        rows.extend(rep_rows);
        churns.push(churn);
    }

    // The report.
    let summary_path = ws.path(&format!("summary-incr-{run_id}.txt"));
    let kv_path = ws.path(&format!("summary-incr-{run_id}.kv"));
    let mut kv = Kv::new();
    kv.set("run_id", &run_id);
    kv.set("script", "strata-bench incr");
    kv.set("dataset", args.paired.data.name());
    kv.set("dataset_desc", args.paired.data.desc());
    kv.set("bus", bus);
    kv.set("payload_bytes", payload);
    kv.set("reps", args.reps);
    kv.set("churn_secs", args.churn_secs);
    kv.set("main_table", args.paired.data.main_table());
    kv.set("pgbr", args.paired.pgbr_desc());
    kv.set("pipeline", pipeline.describe());
    let table = report::summary(&rows, &churns, bus, &mut kv);
    kv.write(&kv_path)?;
    let churn_what = if churn_args.is_empty() {
        "(built-in TPC-B)".to_string()
    } else {
        churn_args.join(" ")
    };
    let text = format!(
        "\n== run {run_id}: {}, payload {payload} bytes ({:.0} MB), {} reps, bus {bus_url}, pgbench -T {} -c 2 -j 2 {churn_what} \
         between full and incr; Strata pipeline {}; pgBackRest {}:{} process-max {}\n   \
         stored = Strata's stored_bytes / pgBackRest's repository.delta; added = repository du -sb after - before (WAL included)\n\
         {table}\nrows: {} (run_id {run_id}); key=value: {}; logs: {}\n",
        args.paired.data.desc(),
        payload as f64 / 1e6,
        args.reps,
        args.churn_secs,
        pipeline.describe(),
        args.paired.pgbr_compress,
        args.paired.pgbr_level,
        args.paired.process_max,
        results_path.display(),
        kv_path.display(),
        ws.logs().display(),
    );
    eprint!("{text}");
    fs::write(&summary_path, &text)
        .with_context(|| format!("cannot write {}", summary_path.display()))?;
    drop(bench);
    Ok(kv)
}

/// `run-incr-<run_id>.info`: the run's settings, as bench-incr.sh wrote them.
#[allow(clippy::too_many_arguments)]
fn write_info(
    args: &Args,
    b: &Bench,
    run_id: &str,
    payload: u64,
    version: &str,
    pgbr_version: &str,
    churn_args: &[String],
    bus_url: &str,
    pipeline: &Pipeline,
) -> Result<()> {
    let source = source_commit();
    let mem_kb = mem_total_kb().map(|kb| kb.to_string()).unwrap_or_default();
    let cpus = cpus().unwrap_or(0);
    let bin_dir = args.paired.strata_bin_dir();
    let churn = if churn_args.is_empty() {
        "(TPC-B)".to_string()
    } else {
        churn_args.join(" ")
    };
    let pipe = pipeline
        .toml()
        .lines()
        .skip(1)
        .map(|l| l.replace(" = ", "="))
        .collect::<Vec<_>>()
        .join(" ");
    let text = format!(
        "run_id={run_id}\nscript=strata-bench incr\ndataset={}\nscale={} churn_secs={} churn_args={churn}\n\
         payload_bytes={payload}\ndata_dir_bytes={}\nstrata={version} ({}, built {})\nsource={source}\n\
         pgbackrest={pgbr_version} compress={}\nbus={bus_url} pipeline: {pipe}\ncpus={cpus} mem_kb={mem_kb}\n",
        args.paired.data.dataset()?.describe(),
        args.paired.data.scale,
        args.churn_secs,
        du_bytes(b.cluster.data_dir()),
        bin_dir.display(),
        modified_utc(&bin_dir.join("strata")),
        args.paired.pgbr_desc(),
    );
    let path = b.ws.path(&format!("run-incr-{run_id}.info"));
    fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
}
