//! `strata-bench full` (bench-full.sh): a full backup and a restore of one database with Strata and with
//! pgBackRest in one run, alternating the tools, plus pg_basebackup's fastest compressed mode (backup
//! only); prints medians, ratios and the targets with PASS/FAIL.
//!
//! Same measurement as the script: the cluster's archive_command pushes every segment to both
//! repositories; each rep wipes and stanza-creates each repository before its timed backup, then
//! restores both backups into empty directories; every measurement follows `sync` and a pause, runs as
//! postgres, and is timed with the child's own rusage (what `/usr/bin/time -v` reported). Rows go to
//! `results.tsv`, the table to `summary-<run_id>.txt` and stderr, the key=value lines to
//! `summary-<run_id>.kv` (and, through strata-bench's `--kv-out`, KV_OUT), the settings to `run-<run_id>.info`, top samples of every
//! backup to `logs/top-*.log` ([`sampler`]).
//!
//! Unlike the script, a failed measurement ends the run (its row is still written, with rc 1 and no
//! times): a number is only ever the time of a command that worked. `PGPORT` is gone: the harness
//! reserves the port (the server listens on its own socket directory, as before).

mod report;
mod sampler;
mod steps;

use anyhow::{bail, Context, Result};
use std::fs;
use std::process::Command;
use std::time::Duration;

use strata_integration::pg::pg_bin;

use super::common::{
    self, du_bytes, install_binaries, log, output_of, strata_version, BusMode, Kv, Pgbackrest,
    Pipeline, RemoveOnDrop, Workspace,
};
use super::limits;
use super::paired_setup::{self, PairedArgs, PairedSetup, PGBR_DIR, STRATA_REPO};
use super::run_info::{self, mem_total_kb, modified_utc, source_commit};
use steps::Bench;

/// How pg_basebackup gets its WAL (`-X`).
#[derive(clap::ValueEnum, Debug, Clone, Copy, PartialEq, Eq)]
pub enum PgbbWal {
    Stream,
    Fetch,
}

impl PgbbWal {
    fn as_str(self) -> &'static str {
        match self {
            PgbbWal::Stream => "stream",
            PgbbWal::Fetch => "fetch",
        }
    }
}

/// bench-full.sh's knobs: each a flag and the environment variable the script read, with its default.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// The knobs `full` and `incr` share.
    #[command(flatten)]
    pub paired: PairedArgs,
    /// Measurements per tool and operation (at least 1).
    #[arg(long, env = "REPS", default_value_t = 3)]
    pub reps: u32,
    /// Measure pg_basebackup too.
    #[arg(long, env = "PGBB", default_value = "1", num_args = 0..=1, default_missing_value = "1",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub pgbb: bool,
    /// pg_basebackup --compress.
    #[arg(
        long,
        env = "PGBB_COMPRESS",
        default_value = "server-zstd:level=1,workers=2"
    )]
    pub pgbb_compress: String,
    /// pg_basebackup -X.
    #[arg(long, env = "PGBB_WAL", value_enum, default_value = "stream")]
    pub pgbb_wal: PgbbWal,
    /// Measure the machine's limits (disk, zstd on one core) first and add them to the summary.
    #[arg(long, env = "LIMITS", default_value = "0", num_args = 0..=1, default_missing_value = "1",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub limits: bool,
    /// Seconds between top samples (0.5 s each) during every backup; 0 = off.
    #[arg(long, env = "TOP_INTERVAL", default_value_t = 1)]
    pub top_interval: u32,
}

/// Runs the benchmark: see the module docs.
pub fn run(args: &Args) -> Result<Kv> {
    if args.reps < 1 {
        bail!("REPS must be at least 1");
    }
    if !args.paired.pause.is_finite() || args.paired.pause < 0.0 {
        bail!(
            "PAUSE must be a number of seconds, not '{}'",
            args.paired.pause
        );
    }
    let dataset = args.paired.data.dataset()?;
    let mode = BusMode::parse(&args.paired.strata_bus)?;
    let pipeline = Pipeline::from_env(&args.paired.strata_pipeline)?;
    let run_id = common::run_id();
    let root = args.paired.bench_dir();
    let ws = Workspace::create(&root)?;
    let srepo = ws.path(STRATA_REPO);
    let pgbr_dir = ws.path(PGBR_DIR);
    // What only lives during the run (restore targets, pg_basebackup's output) and, without KEEP_REPOS,
    // both repositories; declared before the servers, so it runs after every server is stopped.
    let mut cleanup = RemoveOnDrop {
        dirs: vec![ws.path("restore"), ws.path("basebackup")],
    };
    if !args.paired.keep_repos {
        cleanup.dirs.extend([srepo.clone(), pgbr_dir.join("repo")]);
    }

    let bins = install_binaries(args.paired.strata_bin.as_deref(), &ws)?;
    let version = strata_version(&bins);
    let pgbr_version = Pgbackrest::version();
    log(format!(
        "{version} (from {}), {pgbr_version}, bus {}, pipeline: {}",
        args.paired.strata_bin_dir().display(),
        args.paired.strata_bus,
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
    let mut bench = Bench::new(
        args,
        &ws,
        run_id.clone(),
        bins,
        config,
        pipeline,
        pgbr,
        cluster,
        fleet,
        srepo,
    )?;
    bench.prepare()?;

    let payload = bench.cluster.db_bytes();
    log(format!(
        "run {run_id}: {}, payload {payload} bytes (sum of pg_database_size), {} reps, bus {bus_url}",
        args.paired.data.desc(),
        args.reps
    ));
    write_info(args, &bench, &run_id, payload, &version, &pgbr_version)?;
    let limits = if args.limits {
        Some(run_limits(args, &bench, &run_id)?)
    } else {
        None
    };

    for rep in 1..=args.reps {
        log(format!("---- rep {rep}/{}", args.reps));
        bench.strata_backup(rep)?;
        bench.pgbr_backup(rep)?;
        if args.pgbb {
            bench.pgbb_backup(rep)?;
        }
        bench.restore_one("strata", rep, payload)?;
        bench.restore_one("pgbackrest", rep, payload)?;
    }

    let kv = write_report(args, &bench, &run_id, payload, limits.as_ref())?;
    drop(bench);
    drop(cleanup);
    Ok(kv)
}

/// `run-<run_id>.info`: dataset, payload, binaries (build time, commit, uncommitted changes), settings.
fn write_info(
    args: &Args,
    b: &Bench,
    run_id: &str,
    payload: u64,
    version: &str,
    pgbr_version: &str,
) -> Result<()> {
    let bin_dir = args.paired.strata_bin_dir();
    let built = modified_utc(&bin_dir.join("strata"));
    let source = source_commit();
    let mut info = Kv::new();
    info.set("run_id", run_id);
    info.set("dataset", args.paired.data.dataset()?.describe());
    info.set("scale", args.paired.data.scale);
    info.set("payload_bytes", payload);
    info.set("data_dir_bytes", du_bytes(b.cluster.data_dir()));
    info.set(
        "strata",
        format!("{version} ({}, built {built})", bin_dir.display()),
    );
    info.set("source", source);
    info.set(
        "pgbackrest",
        format!("{pgbr_version} compress={}", args.paired.pgbr_desc()),
    );
    if args.pgbb {
        let v = output_of(
            Command::new(pg_bin("pg_basebackup")).arg("--version"),
            "pg_basebackup --version",
        )?;
        info.set(
            "pg_basebackup",
            format!(
                "{} -Ft -X {} --checkpoint=fast --compress={}",
                v.trim(),
                args.pgbb_wal.as_str(),
                args.pgbb_compress
            ),
        );
    }
    let pipe: String = b
        .pipeline
        .toml()
        .lines()
        .filter_map(|l| l.split_once(" = "))
        .map(|(k, v)| format!("{k}={v} "))
        .collect();
    info.set("bus", format!("{} pipeline: {pipe}", b.bus_url));
    let mem_kb = mem_total_kb().map(|kb| kb.to_string()).unwrap_or_default();
    info.set("cpus", format!("{} mem_kb={mem_kb}", cpus()));
    info.write(&b.ws.path(&format!("run-{run_id}.info")))
}

fn cpus() -> usize {
    run_info::cpus().unwrap_or(1)
}

/// LIMITS=1: the machine's limits (limits.rs) with the dataset's largest table's first heap segment as
/// the zstd sample; written to `limits-<run_id>.txt` with `heap_table`.
fn run_limits(args: &Args, b: &Bench, run_id: &str) -> Result<Kv> {
    let row = b.cluster.pg().psql(
        "SELECT relname || ' ' || pg_relation_filepath(oid) FROM pg_class \
         WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace \
         ORDER BY pg_relation_size(oid) DESC LIMIT 1",
    );
    let (table, rel) = row
        .split_once(' ')
        .context("no table in the database for limits")?;
    let heap = b.cluster.data_dir().join(rel);
    let file = b.ws.path(&format!("limits-{run_id}.txt"));
    let dir = b.ws.path("limits");
    log(format!(
        "limits: disk in {}, zstd -1 on {table} ({})",
        dir.display(),
        heap.display()
    ));
    // limits' own knobs (DISK_MB, SAMPLE_MB, LIMITS_REPS) come from the environment, as the script's did.
    let mut limits_args = limits::Args::for_samples(
        &dir,
        &[format!("{}={}", args.paired.data.name(), heap.display())],
    )?;
    limits_args.limits_out = Some(file.clone());
    let mut kv = limits::run(&limits_args).context("limits failed")?;
    kv.set("heap_table", table);
    kv.write(&file)?;
    let _ = fs::remove_dir(&dir);
    Ok(kv)
}

/// The summary (table, ratios, targets, limits) into `summary-<run_id>.txt` and on stderr, the key=value
/// lines into `summary-<run_id>.kv` (returned: strata-bench writes them to `--kv-out`).
fn write_report(
    args: &Args,
    b: &Bench,
    run_id: &str,
    payload: u64,
    limits: Option<&Kv>,
) -> Result<Kv> {
    let mode = b.fleet.mode().name();
    let mut kv = Kv::new();
    kv.set("run_id", run_id);
    kv.set("script", "strata-bench full");
    kv.set("dataset", args.paired.data.name());
    kv.set("dataset_desc", args.paired.data.desc());
    kv.set("bus", mode);
    kv.set("payload_bytes", payload);
    kv.set("reps", args.reps);
    kv.set("pgbr", args.paired.pgbr_desc());
    kv.set(
        "pgbb",
        format!(
            "-Ft -X {} --compress={}",
            args.pgbb_wal.as_str(),
            args.pgbb_compress
        ),
    );
    kv.set("pipeline", b.pipeline.describe());
    let mut body = report::summarize(&b.rows, mode, &mut kv);
    if let Some(lim) = limits.filter(|l| !l.render().is_empty()) {
        kv.extend(&limits::prefixed(lim, "limit_"));
        body.push_str(&report::limits_section(
            lim,
            args.paired.data.name(),
            payload,
            cpus(),
        ));
    }
    let summary = b.ws.path(&format!("summary-{run_id}.txt"));
    let kv_path = b.ws.path(&format!("summary-{run_id}.kv"));
    let pgbb = if args.pgbb {
        format!(
            "; pg_basebackup -Ft -X {} --compress={}",
            args.pgbb_wal.as_str(),
            args.pgbb_compress
        )
    } else {
        String::new()
    };
    let text = format!(
        "\n== run {run_id}: {}, payload {payload} bytes ({:.0} MB), {} reps, bus {}, pipeline {}; pgBackRest {}:{} process-max {}{pgbb}\n{body}\nrows: {} (run_id {run_id}); key=value: {}; logs: {}\n",
        args.paired.data.desc(),
        payload as f64 / 1e6,
        args.reps,
        b.bus_url,
        b.pipeline.describe(),
        args.paired.pgbr_compress,
        args.paired.pgbr_level,
        args.paired.process_max,
        b.results_path.display(),
        kv_path.display(),
        b.ws.logs().display(),
    );
    eprint!("{text}");
    fs::write(&summary, &text).with_context(|| format!("cannot write {}", summary.display()))?;
    kv.write(&kv_path)?;
    Ok(kv)
}

/// How long a backup step waits for the archiver before it goes on with a warning (the script's 120 s).
const ARCHIVE_IDLE_TIMEOUT: Duration = Duration::from_secs(120);
