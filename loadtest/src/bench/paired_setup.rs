//! What `full` and `incr` share, because they measure the same thing (Strata against pgBackRest on one
//! cluster) and share its work directory: their common knobs ([`PairedArgs`]), the bus, the cluster with bench-full.sh's settings, an empty Strata
//! repository and an empty pgBackRest repository, and the `archive_command` that pushes every segment
//! to both; plus their results file, moved aside when an older version wrote other columns.

use anyhow::{Context, Result};
use std::fs;
use std::path::PathBuf;
use std::process::Command;
use strata_integration::StrataBins;

use super::common::{
    archive_both_command, log, posix_repo, run_logged, strata_environment, write_strata_config,
    BenchCluster, BusMode, Fleet, Pgbackrest, PgbrOptions, Pipeline, Results, Workspace,
};
use super::dataset_args::DatasetArgs;
use super::run_info::strata_source_dir;
use crate::dataset::Dataset;

/// The knobs of bench-full.sh that bench-incr.sh has too: each a flag and the environment variable the
/// scripts read, with its default (the same in both).
#[derive(clap::Args, Debug, Clone)]
pub struct PairedArgs {
    /// DATASET, SCALE, OLTP_MB.
    #[command(flatten)]
    pub data: DatasetArgs,
    /// Work directory, shared by `full` and `incr` (default /tmp/strata-loadtest; oltp:
    /// /tmp/strata-loadtest-oltp).
    #[arg(long, env = "BENCH_DIR")]
    pub bench_dir: Option<PathBuf>,
    /// Keep the cluster in the work directory when it holds the same dataset.
    #[arg(long, env = "REUSE", default_value = "0", num_args = 0..=1, default_missing_value = "1",
          value_parser = clap::builder::BoolishValueParser::new())]
    pub reuse: bool,
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
    /// pgBackRest process-max, for backup and restore.
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

impl PairedArgs {
    /// BENCH_DIR, else the dataset's default.
    pub fn bench_dir(&self) -> PathBuf {
        self.bench_dir
            .clone()
            .unwrap_or_else(|| self.data.default_bench_dir())
    }

    /// Where the measured binaries come from, for the run's info file.
    pub fn strata_bin_dir(&self) -> PathBuf {
        strata_source_dir(self.strata_bin.as_deref())
    }

    /// pgBackRest's options from PGBR_COMPRESS, PGBR_LEVEL and PROCESS_MAX.
    pub fn pgbr_options(&self) -> PgbrOptions {
        PgbrOptions {
            compress_type: self.pgbr_compress.clone(),
            compress_level: self.pgbr_level,
            process_max: self.process_max,
        }
    }

    /// The `pgbr` key: "zst:1 process-max=2".
    pub fn pgbr_desc(&self) -> String {
        format!(
            "{}:{} process-max={}",
            self.pgbr_compress, self.pgbr_level, self.process_max
        )
    }
}

/// The Strata repository, `<root>/strata-repo`.
pub const STRATA_REPO: &str = "strata-repo";
/// pgBackRest's directory (config, repository `repo`, logs), `<root>/pgbackrest`.
pub const PGBR_DIR: &str = "pgbackrest";

/// What [`start`] starts: the bus (nats-server and the services in NATS mode), the cluster (archiving to
/// both tools), the Strata config naming the Strata repository, and pgBackRest configured on its own.
pub struct PairedSetup {
    pub fleet: Fleet,
    pub bus_url: String,
    pub cluster: BenchCluster,
    pub config: PathBuf,
    pub pgbr: Pgbackrest,
}

/// Starts the bus and sets the environment every Strata process inherits ([`strata_environment`]);
/// opens the cluster holding `dataset` (REUSE) with bench-full.sh's settings (SHARED_BUFFERS); empties
/// both repositories ([`STRATA_REPO`], `<`[`PGBR_DIR`]`>/repo`: an earlier run's may belong to another
/// cluster after a new initdb); writes the Strata config; sets the `archive_command` that pushes to
/// both; then starts the services (NATS mode).
pub fn start(
    args: &PairedArgs,
    ws: &Workspace,
    bins: &StrataBins,
    mode: BusMode,
    dataset: Dataset,
    pipeline: &Pipeline,
) -> Result<PairedSetup> {
    let mut fleet = Fleet::start_bus(ws, bins, mode, pipeline)?;
    let bus_url = fleet.url();
    strata_environment(&bus_url, pipeline);
    let settings = [
        ("shared_buffers", args.shared_buffers.clone()),
        ("max_wal_size", "4GB".to_string()),
        ("min_wal_size", "256MB".to_string()),
        ("checkpoint_timeout", "15min".to_string()),
        ("log_line_prefix", "%m [%p] ".to_string()),
    ];
    let mut cluster = BenchCluster::open(ws, dataset, args.reuse, &settings)?;
    let strata_repo = ws.fresh_dir(STRATA_REPO, 0o755)?;
    let config = write_strata_config(
        ws,
        &bus_url,
        &cluster,
        &[("local", &posix_repo(&strata_repo))],
        &pipeline.toml(),
    );
    let pgbr = Pgbackrest::configure(&ws.path(PGBR_DIR), &cluster, &args.pgbr_options())?;
    pgbr.wipe_repo()?;
    let archive = archive_both_command(ws, bins, &config, &pgbr)?;
    cluster.set_archive_command(&archive)?;
    fleet.start_services(&config)?;
    Ok(PairedSetup {
        fleet,
        bus_url,
        cluster,
        config,
        pgbr,
    })
}

/// `strata check` and `pgbackrest check` (logs `strata-check.log`, `pgbackrest-check.log`): each forces a WAL switch and waits for it in its archive, so both archive
/// paths are proven end to end before the first measurement.
pub fn check_both(ws: &Workspace, strata: &mut Command, pgbr: &Pgbackrest) -> Result<()> {
    run_logged(
        strata.arg("check"),
        "strata check",
        &ws.fresh_log("strata-check.log"),
    )?;
    run_logged(
        pgbr.command().arg("check"),
        "pgbackrest check",
        &ws.fresh_log("pgbackrest-check.log"),
    )
}

/// Opens the results file `<root>/<name>` with `header`; a file an older version wrote with other
/// columns is first moved to `<name>.old-<run_id>`.
pub fn open_results(ws: &Workspace, name: &str, header: &[&str], run_id: &str) -> Result<Results> {
    let path = ws.path(name);
    if let Ok(text) = fs::read_to_string(&path) {
        if text.lines().next() != Some(header.join("\t").as_str()) {
            let old = ws.path(&format!("{name}.old-{run_id}"));
            fs::rename(&path, &old)
                .with_context(|| format!("cannot move {} aside", path.display()))?;
            log(format!(
                "{name} had other columns: moved to {}",
                old.display()
            ));
        }
    }
    Results::open(&path, header)
}
