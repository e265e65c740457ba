//! `strata-bench incr`: bench-incr.sh in Rust. Incremental backups after a fixed churn, Strata against
//! pgBackRest, on one database, in one run (loadtest/README.md, "Incremental backups").
//!
//! # What it measures
//! On bench-full's `$BENCH_DIR` layout and cluster (common.rs: [`BenchCluster`], `REUSE=1` keeps a loaded
//! one), with `archive_command` pushing every segment to both tools ([`archive_both_command`]), each rep:
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
    self, archive_both_command, du_bytes, install_binaries, log, output_of, posix_repo,
    strata_version, write_strata_config, BenchCluster, BusMode, Fleet, Kv, Pgbackrest, PgbrOptions,
    Pipeline, RemoveOnDrop, Results, Workspace,
};
use super::dataset_args::DatasetArgs;
use super::run_info::{
    cpus, mem_total_kb, modified_utc, source_commit, strata_source_dir, utc_now,
};
use anyhow::{bail, Context, Result};
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use steps::Bench;

/// bench-incr.sh's knobs: each a flag and the environment variable the script read, with its default.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// DATASET, SCALE, OLTP_MB.
    #[command(flatten)]
    pub data: DatasetArgs,
    /// Work directory, shared with `full` (default /tmp/strata-loadtest; oltp: /tmp/strata-loadtest-oltp).
    #[arg(long, env = "BENCH_DIR")]
    pub bench_dir: Option<PathBuf>,
    /// Reps; each is a full and an incremental backup with each tool (at least 1).
    #[arg(long, env = "REPS", default_value_t = 2)]
    pub reps: u32,
    /// Keep the cluster in the work directory when it holds the same dataset.
    #[arg(long, env = "REUSE", default_value = "0", num_args = 0..=1, default_missing_value = "1",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub reuse: bool,
    /// Seconds of churn (`pgbench -n -T`) between the full and the incremental backups (at least 1).
    #[arg(long, env = "CHURN_SECS", default_value_t = 10)]
    pub churn_secs: u32,
    /// Directory of strata, strata-collector, strata-sealer and strata-uploader (default: the
    /// workspace's release build, $CARGO_TARGET_DIR/release).
    #[arg(long, env = "STRATA_BIN")]
    pub strata_bin: Option<PathBuf>,
    /// "local" (every stage in the strata command) or a nats:// URL (its host and port are ignored: a
    /// nats-server on a free loopback port plus one collector, sealer and uploader).
    #[arg(long, env = "STRATA_BUS", default_value = "local")]
    pub strata_bus: String,
    /// Pipeline overrides, "key=value key=value" (`STRATA_PIPELINE__<KEY>` variables count too).
    #[arg(long, env = "STRATA_PIPELINE", default_value = "")]
    pub strata_pipeline: String,
    /// pgBackRest compress-type.
    #[arg(long, env = "PGBR_COMPRESS", default_value = "zst")]
    pub pgbr_compress: String,
    /// pgBackRest compress-level.
    #[arg(long, env = "PGBR_LEVEL", default_value_t = 1)]
    pub pgbr_level: u32,
    /// pgBackRest process-max.
    #[arg(long, env = "PROCESS_MAX", default_value_t = 2)]
    pub process_max: u32,
    /// Seconds of pause after `sync` before each measurement.
    #[arg(long, env = "PAUSE", default_value_t = 3.0)]
    pub pause: f64,
    /// PostgreSQL shared_buffers.
    #[arg(long, env = "SHARED_BUFFERS", default_value = "512MB")]
    pub shared_buffers: String,
    /// Leave the last rep's repositories in place at exit.
    #[arg(long, env = "KEEP_REPOS", default_value = "1", num_args = 0..=1, default_missing_value = "1",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub keep_repos: bool,
}

impl Args {
    fn bench_dir(&self) -> PathBuf {
        self.bench_dir
            .clone()
            .unwrap_or_else(|| self.data.default_bench_dir())
    }

    /// Where the measured binaries come from, for run-incr-<id>.info.
    fn strata_bin_dir(&self) -> PathBuf {
        strata_source_dir(self.strata_bin.as_deref())
    }
}

/// Runs the benchmark: see the module docs.
pub fn run(args: &Args) -> Result<Kv> {
    if args.reps < 1 {
        bail!("REPS must be at least 1");
    }
    if args.churn_secs < 1 {
        bail!("CHURN_SECS must be at least 1");
    }
    if args.pause.is_nan() || args.pause < 0.0 {
        bail!("PAUSE must be a number of seconds, not '{}'", args.pause);
    }
    let dataset = args.data.dataset()?;
    let mode = BusMode::parse(&args.strata_bus)?;
    let pipeline = Pipeline::from_env(&args.strata_pipeline)?;
    let run_id = common::run_id();
    let ws = Workspace::create(&args.bench_dir())?;
    let srepo = ws.path("strata-repo");
    let pgbr_dir = ws.path("pgbackrest");
    // Without KEEP_REPOS, both repositories go; declared before the servers, so it runs after every
    // server and service is stopped (also on an error).
    let _cleanup = RemoveOnDrop {
        dirs: if args.keep_repos {
            Vec::new()
        } else {
            vec![srepo.clone(), pgbr_dir.join("repo")]
        },
    };

    let bins = install_binaries(args.strata_bin.as_deref(), &ws)?;
    let help = output_of(
        Command::new(bins.path("strata")).args(["backup", "--help"]),
        "strata backup --help",
    )?;
    if !help.contains("incr") {
        bail!(
            "{}/strata (built {}) has no incremental backups (backup --type incr): use a newer build",
            args.strata_bin_dir().display(),
            modified_utc(&args.strata_bin_dir().join("strata"))
        );
    }
    let version = strata_version(&bins);
    let pgbr_version = Pgbackrest::version();
    log(format!(
        "{version} (from {}, built {}), {pgbr_version}, pipeline: {}",
        args.strata_bin_dir().display(),
        modified_utc(&args.strata_bin_dir().join("strata")),
        pipeline.describe()
    ));

    // Every Strata process (the CLI, the services, and the archive_command PostgreSQL runs) inherits this
    // environment: the effective pipeline as STRATA_PIPELINE__<KEY>, and STRATA_BUS with the real URL, so
    // the binaries' own overrides agree with the config (as bench-incr.sh exported them). Set while this
    // process has no other thread, before the bus and the server start.
    for var in ["STRATA_PIPELINE", "STRATA_CONFIG", "STRATA_STANZA"] {
        std::env::remove_var(var);
    }
    for (k, v) in pipeline.env_pairs() {
        std::env::set_var(k, v);
    }
    let mut fleet = Fleet::start_bus(&ws, &bins, mode, &pipeline)?;
    let bus_url = fleet.url();
    std::env::set_var("STRATA_BUS", &bus_url);

    // bench-full.sh's settings: the two benchmarks share the cluster.
    let settings = [
        ("shared_buffers", args.shared_buffers.clone()),
        ("max_wal_size", "4GB".to_string()),
        ("min_wal_size", "256MB".to_string()),
        ("checkpoint_timeout", "15min".to_string()),
        ("log_line_prefix", "%m [%p] ".to_string()),
    ];
    let mut cluster = BenchCluster::open(&ws, dataset, args.reuse, &settings)?;

    ws.fresh_dir("strata-repo", 0o755)?;
    let config = write_strata_config(
        &ws,
        &bus_url,
        &cluster,
        &[("local", &posix_repo(&srepo))],
        &pipeline.toml(),
    );
    let pgbr = Pgbackrest::configure(
        &pgbr_dir,
        &cluster,
        &PgbrOptions {
            compress_type: args.pgbr_compress.clone(),
            compress_level: args.pgbr_level,
            process_max: args.process_max,
        },
    )?;
    pgbr.wipe_repo()?;
    let archive = archive_both_command(&ws, &bins, &config, &pgbr)?;
    cluster.set_archive_command(&archive)?;
    fleet.start_services(&config)?;

    let results_path = ws.path("results-incr.tsv");
    set_aside_other_columns(&results_path, &run_id)?;
    let results = Results::open(&results_path, report::HEADER)?;
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
        args.data.desc(),
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
    kv.set("dataset", args.data.name());
    kv.set("dataset_desc", args.data.desc());
    kv.set("bus", bus);
    kv.set("payload_bytes", payload);
    kv.set("reps", args.reps);
    kv.set("churn_secs", args.churn_secs);
    kv.set("main_table", args.data.main_table());
    kv.set(
        "pgbr",
        format!(
            "{}:{} process-max={}",
            args.pgbr_compress, args.pgbr_level, args.process_max
        ),
    );
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
        args.data.desc(),
        payload as f64 / 1e6,
        args.reps,
        args.churn_secs,
        pipeline.describe(),
        args.pgbr_compress,
        args.pgbr_level,
        args.process_max,
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

/// A results-incr.tsv written with other columns is moved to `results-incr.tsv.old-<run_id>`.
fn set_aside_other_columns(path: &Path, run_id: &str) -> Result<()> {
    let Ok(text) = fs::read_to_string(path) else {
        return Ok(());
    };
    if text.lines().next() == Some(report::HEADER.join("\t").as_str()) {
        return Ok(());
    }
    let old = path.with_file_name(format!("results-incr.tsv.old-{run_id}"));
    fs::rename(path, &old).with_context(|| format!("cannot move {} aside", path.display()))?;
    log(format!(
        "results-incr.tsv had other columns: moved to {}",
        old.display()
    ));
    Ok(())
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
    let bin_dir = args.strata_bin_dir();
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
         pgbackrest={pgbr_version} compress={}:{} process-max={}\nbus={bus_url} pipeline: {pipe}\ncpus={cpus} mem_kb={mem_kb}\n",
        args.data.dataset()?.describe(),
        args.data.scale,
        args.churn_secs,
        du_bytes(b.cluster.data_dir()),
        bin_dir.display(),
        modified_utc(&bin_dir.join("strata")),
        args.pgbr_compress,
        args.pgbr_level,
        args.process_max,
    );
    let path = b.ws.path(&format!("run-incr-{run_id}.info"));
    fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))
}
