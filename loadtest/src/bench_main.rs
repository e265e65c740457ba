//! `strata-bench`: the benchmarks of loadtest/ (see `strata_loadtest::bench`). A thin main: parse, run,
//! write the key=value lines where `--kv-out` says, exit non-zero with one error line on a failure.

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use strata_loadtest::bench::{self, common};

#[derive(Parser, Debug)]
#[command(
    name = "strata-bench",
    version,
    about = "Strata beside pgBackRest and pg_basebackup, in one run"
)]
struct Cli {
    /// Also write the benchmark's key=value lines to this file.
    #[arg(long, global = true, env = "KV_OUT")]
    kv_out: Option<PathBuf>,
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand, Debug)]
enum Bench {
    /// Full backup and restore: Strata, pgBackRest, pg_basebackup.
    Full(bench::full::Args),
    /// Incremental backups after a fixed churn: Strata, pgBackRest.
    Incr(bench::incr::Args),
    /// Peak memory of every Strata process on a cluster of many small relation files.
    ManyFiles(bench::many_files::Args),
    /// What a repository's kind (posix, S3) and encryption (KMS) cost.
    Repos(bench::repos::Args),
    /// `strata verify` beside `pgbackrest verify`.
    Verify(bench::verify::Args),
    /// The machine's limits: disk read and zstd -1 rates.
    Limits(bench::limits::Args),
    /// `full` and `incr` for each dataset and bus, and one combined table.
    All(bench::all::Args),
}

fn main() {
    common::install_signal_handlers();
    if let Err(e) = run() {
        eprintln!("strata-bench: error: {e:#}");
        std::process::exit(1);
    }
}

fn run() -> Result<()> {
    let cli = Cli::parse();
    let kv = match &cli.bench {
        Bench::Full(a) => bench::full::run(a)?,
        Bench::Incr(a) => bench::incr::run(a)?,
        Bench::ManyFiles(a) => bench::many_files::run(a)?,
        Bench::Repos(a) => bench::repos::run(a)?,
        Bench::Verify(a) => bench::verify::run(a)?,
        Bench::Limits(a) => bench::limits::run(a)?,
        Bench::All(a) => bench::all::run(a)?,
    };
    if let Some(path) = &cli.kv_out {
        kv.write(path)?;
    }
    Ok(())
}
