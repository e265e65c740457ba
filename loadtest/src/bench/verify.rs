//! `strata-bench verify` (was `loadtest/bench-verify.sh`): how long `strata verify` takes next to
//! `pgbackrest verify`, on the same database, in one run.
//!
//! A pgbench cluster (common's [`BenchCluster`], kept when it holds the same dataset, as the script did)
//! whose `archive_command` pushes each WAL file with both tools from after the load on (common's
//! [`archive_both_command`]: both must succeed), so that both archives hold the same WAL: what the backups
//! need. One full backup with each tool (Strata: its default zstd-1 into a posix repository; pgBackRest:
//! zst level 1, `PROCESS_MAX`); then, rep by rep, `pgbackrest verify` and `strata verify` timed one after the
//! other, each after `sync` and a pause.
//!
//! Both read back every file (pgBackRest) or chunk (Strata) of the backup and every archived WAL file, and
//! check them, but not alike: pgBackRest 2.45 compares the SHA-1 of each stored (compressed) file with the
//! repo checksum in its manifest and decompresses almost nothing; Strata decompresses each chunk, checks
//! the BLAKE3 of its plain bytes and, on top, every relation page's PostgreSQL checksum. pgBackRest's time
//! follows the repository's size, Strata's the database's (see README, Performance).
//!
//! Each measurement is one row of `<bench dir>/results-verify.tsv` (the script's columns); then the
//! medians and the ratio are printed as the script's table. A failed command fails the run.
//!
//! Differences from the script: pgBackRest's config is common's (bench-full.sh's: the same compression and
//! process-max; `repo1-retention-full=99` instead of 2 and the default `archive-check`, which change
//! nothing for one full backup); the data is in database `postgres`, not `bench` (one empty database
//! less); `PGPORT` and `PGBIN` are gone (the harness reserves the port; `STRATA_PG_BIN_DIR`).

use std::fs;
use std::path::PathBuf;

use crate::dataset::Dataset;
use anyhow::Result;

use super::common::{
    self, du_bytes, log, median, run_logged, settle, timed, BenchCluster, Kv, Pgbackrest,
    PgbrOptions, Results, Workspace, STANZA,
};

#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// pgbench -i -s scale.
    #[arg(long, env = "SCALE", default_value_t = 50)]
    pub scale: u32,
    /// Measurements per tool.
    #[arg(long, env = "REPS", default_value_t = 3)]
    pub reps: u32,
    /// Everything goes here: cluster, repositories, configs, logs, results.
    #[arg(long, env = "BENCH_DIR", default_value = "/tmp/strata-bench-verify")]
    pub bench_dir: PathBuf,
    /// Directory of the Strata release binaries (default: the workspace's target/release).
    #[arg(long, env = "STRATA_BIN")]
    pub strata_bin: Option<PathBuf>,
    /// Seconds of pause after sync before each measurement.
    #[arg(long, env = "PAUSE", default_value_t = 2.0)]
    pub pause: f64,
    /// pgBackRest's process-max (backup and verify).
    #[arg(long, env = "PROCESS_MAX", default_value_t = 2)]
    pub process_max: u32,
}

pub fn run(args: &Args) -> Result<Kv> {
    let ws = Workspace::create(&args.bench_dir)?;
    let bins = common::install_binaries(args.strata_bin.as_deref(), &ws)?;
    let settings = [
        ("shared_buffers", "512MB".to_string()),
        ("max_wal_size", "4GB".to_string()),
    ];
    // The script kept a cluster holding the same dataset without being asked (it had no REUSE knob).
    let mut cluster =
        BenchCluster::open(&ws, Dataset::Pgbench { scale: args.scale }, true, &settings)?;

    // Both repositories start empty.
    let strata_repo = ws.fresh_dir("repo-strata", 0o755)?;
    let cfg = common::write_strata_config(
        &ws,
        "local",
        &cluster,
        &[("local", &common::posix_repo(&strata_repo))],
        "",
    );
    let pgbr_opts = PgbrOptions {
        compress_type: "zst".into(),
        compress_level: 1,
        process_max: args.process_max,
    };
    let pgbr = Pgbackrest::configure(&ws.path("pgbackrest"), &cluster, &pgbr_opts)?;
    pgbr.wipe_repo()?;

    // Archiving starts after the load, so that both archives hold the same WAL: what the backups need.
    // (pgBackRest verifies every WAL file in its archive; Strata those from the oldest backup's start.)
    let archive = common::archive_both_command(&ws, &bins, &cfg, &pgbr)?;
    cluster.set_archive_command(&archive)?;
    cluster.pg().psql("SELECT pg_switch_wal()");
    // The setup commands' output, this run's only (a failure's error shows its tail).
    let setup_log = ws.empty_log("setup.log")?;
    let strata = |sub: &[&str]| {
        let mut cmd = bins.strata_cmd(&cfg, STANZA);
        cmd.args(sub);
        cmd
    };
    run_logged(
        &mut strata(&["stanza-create"]),
        "strata stanza-create",
        &setup_log,
    )?;
    pgbr.stanza_create(&setup_log)?;
    let db_bytes = cluster.db_bytes();
    log(format!(
        "database: {} MB; full backups",
        db_bytes / 1_000_000
    ));
    run_logged(
        &mut strata(&["backup", "--type", "full"]),
        "strata backup",
        &setup_log,
    )?;
    run_logged(
        pgbr.command().args(["backup", "--type=full"]),
        "pgbackrest backup",
        &setup_log,
    )?;
    cluster.pg().psql("SELECT pg_switch_wal()");
    std::thread::sleep(std::time::Duration::from_secs(2));
    let strata_repo_bytes = du_bytes(&strata_repo);
    let pgbr_repo_bytes = du_bytes(pgbr.repo());
    log(format!(
        "repositories: strata {} MB, pgbackrest {} MB",
        strata_repo_bytes / 1_000_000,
        pgbr_repo_bytes / 1_000_000
    ));

    let run_id = common::run_id();
    let results = Results::open(
        &ws.path("results-verify.tsv"),
        &["run", "tool", "rep", "seconds", "db_bytes", "repo_bytes"],
    )?;
    let last_out = ws.log("last.out");
    let (mut pgbr_secs, mut strata_secs) = (Vec::new(), Vec::new());
    for rep in 1..=args.reps {
        settle(args.pause);
        let secs = timed(
            pgbr.command().arg("verify"),
            &format!("pgbackrest verify (rep {rep})"),
            &last_out,
        )?;
        results.row(&[
            run_id.clone(),
            "pgbackrest".into(),
            rep.to_string(),
            format!("{secs:.3}"),
            db_bytes.to_string(),
            pgbr_repo_bytes.to_string(),
        ])?;
        pgbr_secs.push(secs);
        log(format!("rep {rep}: pgbackrest verify {secs:.3} s"));
        settle(args.pause);
        let _ = fs::remove_file(&last_out); // its last line is strata verify's verdict
        let secs = timed(
            &mut strata(&["verify"]),
            &format!("strata verify (rep {rep})"),
            &last_out,
        )?;
        results.row(&[
            run_id.clone(),
            "strata".into(),
            rep.to_string(),
            format!("{secs:.3}"),
            db_bytes.to_string(),
            strata_repo_bytes.to_string(),
        ])?;
        strata_secs.push(secs);
        let verdict = fs::read_to_string(&last_out)
            .unwrap_or_default()
            .lines()
            .last()
            .unwrap_or("")
            .to_string();
        log(format!("rep {rep}: strata verify {secs:.3} s ({verdict})"));
    }

    let db_mb = db_bytes as f64 / 1e6;
    let (p, s) = (
        median(&pgbr_secs).unwrap_or(f64::NAN),
        median(&strata_secs).unwrap_or(f64::NAN),
    );
    println!(
        "database {db_mb:.0} MB, run {run_id}, medians of {} reps",
        args.reps
    );
    for (tool, secs, repo) in [
        ("pgbackrest", p, pgbr_repo_bytes),
        ("strata", s, strata_repo_bytes),
    ] {
        println!(
            "{tool:<11} verify {secs:6.2} s  ({:5.0} MB/s of database, repository {:.0} MB)",
            db_mb / secs,
            repo as f64 / 1e6
        );
    }
    println!("strata / pgbackrest: {:.2}x the time", s / p);

    let mut kv = Kv::new();
    kv.set("run_id", &run_id);
    kv.set("script", "bench-verify");
    kv.set("db_bytes", db_bytes);
    kv.set("reps", args.reps);
    kv.set("pgbackrest_verify_s", format!("{p:.3}"));
    kv.set("strata_verify_s", format!("{s:.3}"));
    kv.set("pgbackrest_repo_bytes", pgbr_repo_bytes);
    kv.set("strata_repo_bytes", strata_repo_bytes);
    kv.set("ratio_verify", format!("{:.3}", s / p));
    Ok(kv)
}
