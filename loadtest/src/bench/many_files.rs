//! `strata-bench many-files`, the port of `loadtest/bench-many-files.sh`: the peak memory of every Strata
//! process on a cluster of many small relation files. Acceptance point of the incremental-backup work: "a
//! cluster with 100,000 small relation files backs up with every process's peak RSS under 256 MiB". It
//! measures memory, not speed (wall times are recorded, but the machine may be shared).
//!
//! # What a run does (loadtest/README.md, "Many small files")
//! 1. The cluster ([`cluster`]): `NTABLES` one-row tables in database `many`, kept with `--reuse`.
//! 2. The repository is wiped; in NATS mode nats-server and strata-collector, -sealer, -uploader start
//!    ([`Fleet`]); `strata stanza-create`; then, each after the archiver is idle, `sync` and `PAUSE`: a
//!    full `strata backup`, an `UPDATE` of `UPDATE_TABLES` tables, `strata backup --type incr`, `strata
//!    info --output json` (no pause, as the script), `strata restore` of the incremental.
//! 3. Peak RSS of every Strata process: the command's own (its rusage through [`measure`], where the
//!    script read `/usr/bin/time -v`); each `archive-push` PostgreSQL's archiver runs (archive_command is
//!    `/usr/bin/time -a -o logs/archive-push-time.log -f '%M kB %e s rc=%x' strata ... archive-push %p`:
//!    PostgreSQL runs it, so GNU time stays there); in NATS mode each service's and nats-server's
//!    `VmHWM`, reset (clear_refs 5) before the incremental and the restore, never before the full, and
//!    read after each operation and once more before they stop.
//!
//! One row per process and operation goes to `<bench dir>/results.tsv`; the table with the verdict
//! against `RSS_LIMIT_MIB` is printed and saved as `summary-<mode>-<run_id>.txt`.
//!
//! # Where it differs from the script
//! - A failed command fails the run at once ([`measure`]), with its log's tail; the script recorded its
//!   rc, went on (restoring the full when the incremental failed) and exited 1 at the end. So does a
//!   restore that leaves no usable data directory, and a failed archive-push (the script only counted it).
//! - PostgreSQL's port is one the harness reserves (no `PGPORT`), on 127.0.0.1 and a socket in the
//!   harness directory, with its server log there; nats-server is the harness's (its config, not the
//!   script's `max_pending`/`max_memory_store`).
//! - The `STRATA_*` variables the binaries would read as config overrides are removed from this
//!   process's environment (all but `STRATA_PIPELINE__*` and the harness's own), and `STRATA_BUS` is set to
//!   the run's bus, before the services and the measured PostgreSQL start: the script's `export -n`.

mod cluster;
mod rows;
mod said;

use anyhow::{bail, Result};
use serde_json::Value;
use std::fs;
use std::path::{Path, PathBuf};

use strata_integration::write_config_with;

use super::common::{
    as_postgres, chown_postgres, du_bytes, install_binaries, log, measure, posix_repo, run_id,
    run_logged, settle, strata_environment, strata_version, BusMode, Fleet, Kv, Measured, Pipeline,
    RemoveOnDrop, Workspace,
};
use super::run_info::{modified_utc, strata_source_dir};
use cluster::{disk_bytes, nfiles, ManyCluster, DB};
use rows::{ArchivePushes, Recorder};
use said::{committed_label, info_summary, said};

/// GNU time, which the archive_command runs `strata archive-push` under (PostgreSQL runs it, not us).
const GNU_TIME: &str = "/usr/bin/time";

/// The stanza of this benchmark (the script's).
const STANZA: &str = "many";

/// The columns of `results.tsv`.
const HEADER: [&str; 11] = [
    "run_id",
    "ts",
    "mode",
    "op",
    "process",
    "rc",
    "wall_s",
    "peak_rss_kb",
    "peak_rss_mib",
    "under_limit",
    "note",
];

/// The benchmark's knobs (the script's environment variables).
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Work directory: cluster (`pgdata`), repository (`repo`, wiped at every run), configs, logs, results.
    #[arg(long, env = "BENCH_DIR", default_value = "/tmp/strata-manyfiles")]
    pub bench_dir: PathBuf,
    /// Tables to create; each is a main fork of 8 KiB, a TOAST table and its index.
    #[arg(long, env = "NTABLES", default_value_t = 100_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub ntables: u32,
    /// Tables created per transaction.
    #[arg(long, env = "BATCH", default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..))]
    pub batch: u32,
    /// Tables updated (t_1..) between the full and the incremental backup (at most NTABLES).
    #[arg(long, env = "UPDATE_TABLES", default_value_t = 10)]
    pub update_tables: u32,
    /// Keep the cluster in the bench directory when it was made with the same NTABLES (REUSE=1).
    #[arg(long, env = "REUSE", value_parser = clap::builder::FalseyValueParser::new())]
    pub reuse: bool,
    /// Directory with strata, strata-collector, strata-sealer, strata-uploader (default
    /// `$CARGO_TARGET_DIR/release`, else the workspace's `target/release`); copied into `<bench dir>/bin`.
    #[arg(long, env = "STRATA_BIN")]
    pub strata_bin: Option<PathBuf>,
    /// "local", or a nats:// URL (its host and port are ignored: nats-server is started on a free port).
    #[arg(long, env = "STRATA_BUS", default_value = "local")]
    pub bus: String,
    /// The limit each process's peak RSS is checked against, MiB.
    #[arg(long, env = "RSS_LIMIT_MIB", default_value_t = 256)]
    pub rss_limit_mib: u64,
    /// Seconds after `sync` before each measurement.
    #[arg(long, env = "PAUSE", default_value_t = 2.0)]
    pub pause: f64,
    /// Leave `<bench dir>/restored` in place at the end (KEEP_RESTORE=1).
    #[arg(long, env = "KEEP_RESTORE", value_parser = clap::builder::FalseyValueParser::new())]
    pub keep_restore: bool,
}

/// Runs the benchmark: see the module docs. Returns `run_id`, `mode`, the cluster's figures and each
/// row's peak RSS (`<op>.<process>.rss_kb`), the largest and the verdict.
pub fn run(args: &Args) -> Result<Kv> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("run as root (PostgreSQL and Strata run as postgres)");
    }
    if !Path::new(GNU_TIME).is_file() {
        bail!("{GNU_TIME} is missing (Debian package 'time'): the archive_command runs under it");
    }
    let mode = BusMode::parse(&args.bus)?;
    let update_tables = args.update_tables.min(args.ntables);
    let run_id = run_id();
    let pipeline = Pipeline::from_env("")?;
    let pipe_env = pipeline_env();

    let ws = Workspace::create(&args.bench_dir)?;
    let bins = install_binaries(args.strata_bin.as_deref(), &ws)?;
    let version = strata_version(&bins);
    let from = strata_source_dir(args.strata_bin.as_deref());
    let built = modified_utc(&from.join("strata"));
    log(format!(
        "{version} (from {}, built {built}), bus {}, {pipe_env}",
        from.display(),
        args.bus
    ));

    // Declared before the cluster, so that on every exit PostgreSQL stops first, then the services, then
    // nats-server (the script's cleanup order: the Fleet drops its services before its nats-server).
    let mut fleet: Option<Fleet> = None;
    let mut cluster = ManyCluster::open(&ws, args.ntables, args.batch, args.reuse)?;

    // Wiped at every run: each mode starts from an empty repository, and a new initdb makes the old one foreign.
    let repo = ws.path("repo");
    let restored = ws.path("restored");
    for dir in [&repo, &restored] {
        if dir.exists() {
            fs::remove_dir_all(dir)?;
        }
    }
    fs::create_dir_all(&repo)?;
    chown_postgres(&repo)?;
    let _restored_guard = RemoveOnDrop {
        dirs: (!args.keep_restore)
            .then(|| restored.clone())
            .into_iter()
            .collect(),
    };

    let fleet = fleet.insert(Fleet::start_bus(&ws, &bins, mode, &pipeline)?);
    let url = fleet.url();
    let config = write_config_with(
        ws.root(),
        &url,
        STANZA,
        cluster.data_dir(),
        &cluster.conn_string(),
        &[("local", &posix_repo(&repo))],
        "",
    );
    strata_environment(&url, &pipeline);
    fleet.start_services(&config)?;

    let ap_log = ws.empty_log("archive-push-time.log")?;
    chown_postgres(&ap_log)?;
    let archive_command = format!(
        "{GNU_TIME} -a -o {} -f '%M kB %e s rc=%x' {} --config {} --stanza {STANZA} archive-push %p",
        ap_log.display(),
        bins.path("strata").display(),
        config.display()
    );
    cluster.start(&archive_command)?;
    let strata = |sub: &[&str]| {
        let mut cmd = as_postgres(bins.path("strata"));
        cmd.arg("--config")
            .arg(&config)
            .args(["--stanza", STANZA])
            .args(sub);
        pipeline.apply_env(&mut cmd);
        cmd
    };
    let m = mode.name();
    let stanza_log = ws.fresh_log(&format!("stanza-create-{m}.log"));
    run_logged(
        &mut strata(&["stanza-create"]),
        "strata stanza-create",
        &stanza_log,
    )?;

    let data_dir = cluster.data_dir().to_path_buf();
    let db_oid = cluster.sql(
        "postgres",
        &format!("SELECT oid FROM pg_database WHERE datname = '{DB}'"),
    )?;
    let base_files = nfiles(&data_dir.join("base"));
    let db_files = nfiles(&data_dir.join("base").join(&db_oid));
    let pgdata_files = nfiles(&data_dir);
    let pgdata_bytes = du_bytes(&data_dir);
    let pgdata_disk = disk_bytes(&data_dir);
    let nrel = cluster.sql(
        DB,
        "SELECT count(*) FROM pg_class WHERE relkind = 'r' AND relname LIKE 't\\_%'",
    )?;
    let cluster_line = format!(
        "{nrel} tables in database {DB}; base/ {base_files} files; data directory {pgdata_files} files, \
         {pgdata_bytes} bytes (du -sb), {pgdata_disk} on disk"
    );
    log(format!(
        "cluster: {nrel} tables t_N in database {DB}; base/ holds {base_files} files ({db_files} in base/{db_oid}), \
         the data directory {pgdata_files} files, {pgdata_bytes} bytes (du -sb), {pgdata_disk} on disk"
    ));

    let mut rec = Recorder::open(&ws, &run_id, m, args.rss_limit_mib)?;
    let step = |name: &str,
                what: &str,
                sub: &[&str],
                fleet: &mut Fleet,
                reset_hwm: bool|
     -> Result<(Measured, PathBuf)> {
        cluster.wait_archive_idle();
        settle(args.pause);
        if reset_hwm {
            fleet.reset_hwm();
        }
        let log = ws.fresh_log(&format!("{m}-{name}.log"));
        Ok((measure(&mut strata(sub), what, &log)?, log))
    };
    let bus_note = format!("bus={url}");

    // 1. full. VmHWM is not reset before it: the services' full rows cover their start, stanza-create and the full.
    log(format!(
        "full backup ({} tables, {base_files} files under base/)",
        args.ntables
    ));
    let (full, full_log) = step("full", "strata backup", &["backup"], fleet, false)?;
    let full_said = said(&full_log);
    let full_label = committed_label(&full_log, 'F');
    rec.command(
        "full",
        "strata backup",
        &full,
        &format!("{bus_note}; said: {full_said}"),
    )?;
    rec.services("full", fleet)?;

    // 2. a few changed tables, then the incremental
    cluster.sql(
        DB,
        &format!(
            "DO $$ BEGIN FOR i IN 1..{update_tables} LOOP
                EXECUTE format('UPDATE t_%s SET v = v || '' changed {run_id}''', i);
            END LOOP; END $$"
        ),
    )?;
    log(format!(
        "updated {update_tables} tables (t_1..t_{update_tables}); incremental backup"
    ));
    let what = "strata backup --type incr";
    let (incr, incr_log) = step("incr", what, &["backup", "--type", "incr"], fleet, true)?;
    let incr_said = said(&incr_log);
    let incr_label = committed_label(&incr_log, 'I');
    rec.command(
        "incr",
        what,
        &incr,
        &format!("{bus_note}; said: {incr_said}"),
    )?;
    rec.services("incr", fleet)?;

    // 3. info, its JSON on stdout into its own file: `sh -c 'exec ...'` becomes strata, so the rusage is strata's.
    let info_json = ws.log(&format!("{m}-info.json"));
    let info = strata(&["info", "--output", "json"]);
    let mut sh = as_postgres("/bin/sh");
    sh.args([
        "-c",
        "out=$1; err=$2; shift 2; exec \"$@\" >\"$out\" 2>\"$err\"",
        "sh",
    ])
    .arg(&info_json)
    .arg(ws.log(&format!("{m}-info.err")))
    .arg(info.get_program())
    .args(info.get_args())
    .envs(info.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))));
    let info_m = measure(
        &mut sh,
        "strata info --output json",
        &ws.log(&format!("{m}-info.log")),
    )?;
    rec.command(
        "info",
        "strata info --output json",
        &info_m,
        &format!("json: {}", info_json.display()),
    )?;
    let info_summary = fs::read_to_string(&info_json)
        .ok()
        .and_then(|t| serde_json::from_str::<Value>(&t).ok())
        .map(|v| info_summary(&v))
        .unwrap_or_default();
    if !info_summary.is_empty() {
        log(format!(
            "info: label type reference database read sent stored files:\n{info_summary}"
        ));
    }

    // 4. restore of the incremental (every failure has stopped the run, so there is one unless its line is missing)
    match incr_label.as_ref().or(full_label.as_ref()) {
        Some(set) => {
            if incr_label.is_none() {
                log(format!(
                    "no incremental label in {}: restoring the full backup {set} instead",
                    incr_log.display()
                ));
            }
            let target = ws.fresh_dir("restored", 0o700)?;
            let target_s = target.display().to_string();
            let what = format!("strata restore --set {set}");
            let (restore, restore_log) = step(
                "restore",
                &what,
                &["restore", "--pg-data", &target_s, "--set", set],
                fleet,
                true,
            )?;
            let (r_files, r_base, r_bytes) = (
                nfiles(&target),
                nfiles(&target.join("base")),
                du_bytes(&target),
            );
            let ok = target.join("PG_VERSION").is_file()
                && target.join("global/pg_control").is_file()
                && target.join("base").is_dir();
            if !ok {
                bail!("{what} exited 0 but {} is no data directory (PG_VERSION, global/pg_control, base/)", target.display());
            }
            let note = format!(
                "files={r_files} base_files={r_base} bytes={r_bytes} data_dir_ok=yes said: {}",
                said(&restore_log)
            );
            rec.command("restore", &what, &restore, &note)?;
            rec.services("restore", fleet)?;
            log(format!("restored {r_files} files ({r_base} under base/), {r_bytes} bytes, data dir ok: yes"));
            if !args.keep_restore {
                fs::remove_dir_all(&target)?;
            }
        }
        None => log("no backup to restore"),
    }

    // 5. archive-push (every push of this run, run by PostgreSQL's archiver), and the services once more
    cluster.wait_archive_idle();
    let pushes = ArchivePushes::read(&ap_log);
    if pushes.failed > 0 {
        bail!(
            "{} of {} archive-push runs failed (rc in {})",
            pushes.failed,
            pushes.count,
            ap_log.display()
        );
    }
    let note = format!("pushes={} failed=0 log={}", pushes.count, ap_log.display());
    rec.row(
        "wal",
        &format!("strata archive-push (max of {})", pushes.count),
        "0",
        "-",
        pushes.max_kb,
        &note,
    )?;
    // Just before stopping them: VmHWM since the reset before the restore. A service's lifetime peak is the
    // largest of its rows: VmHWM was only reset before the incremental and before the restore.
    rec.services("before-stop", fleet)?;

    // report
    let summary_path = ws.path(&format!("summary-{m}-{run_id}.txt"));
    let mut summary = format!(
        "== run {run_id}, bus {url}, {version} ({}, built {built}), {pipe_env}\ncluster: {cluster_line}\n",
        from.display()
    );
    summary.push_str(&rec.table());
    summary.push_str(&format!(
        "repository: {} bytes (du -sb {}, WAL included)\n",
        du_bytes(&repo),
        repo.display()
    ));
    summary.push_str(&format!(
        "full:    {}\nincr:    {}\n",
        or_dash(&full_said),
        or_dash(&incr_said)
    ));
    if !info_summary.is_empty() {
        summary.push_str(&format!(
            "info (label type reference database read sent stored files):\n{info_summary}\n"
        ));
    }
    summary.push_str(&format!(
        "rows: {} (run_id {run_id}); logs: {}\n",
        ws.path("results.tsv").display(),
        ws.logs().display()
    ));
    fs::write(&summary_path, &summary)?;
    eprintln!("\n{summary}");

    let mut kv = rec.kv();
    kv.set("run_id", &run_id);
    kv.set("mode", m);
    kv.set("ntables", args.ntables);
    kv.set("base_files", base_files);
    kv.set("pgdata_files", pgdata_files);
    kv.set("pgdata_bytes", pgdata_bytes);
    kv.set("summary", summary_path.display());
    Ok(kv)
}

fn or_dash(s: &str) -> &str {
    if s.is_empty() {
        "-"
    } else {
        s
    }
}

/// `kb` KiB in MiB with one decimal.
fn mib(kb: u64) -> String {
    format!("{:.1}", kb as f64 / 1024.0)
}

/// The `STRATA_PIPELINE__*` variables as the script logged them (`K=V K=V `), or "pipeline defaults".
fn pipeline_env() -> String {
    let mut vars: Vec<String> = std::env::vars()
        .filter(|(k, _)| k.starts_with("STRATA_PIPELINE__"))
        .map(|(k, v)| format!("{k}={v} "))
        .collect();
    vars.sort();
    if vars.is_empty() {
        "pipeline defaults".into()
    } else {
        vars.concat()
    }
}
