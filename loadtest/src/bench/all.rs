//! `strata-bench all`: the whole comparison in one run, `full` then `incr` for each dataset and each bus,
//! then one table with the targets and the machine's limits.
//!
//! Each benchmark runs as a child `strata-bench full|incr` with the knobs in its environment, its output
//! in `<out>/<name>.log` and its key=value lines in `<out>/<name>.kv`: a benchmark that fails is reported in
//! the table and the others still run, and `--report-only` rebuilds the table from the files of an
//! earlier run. Per dataset, `full` runs first for each bus (the first with LIMITS=1 and the run's REUSE,
//! the later ones reuse its cluster), then `incr` (its churn changes the cluster, so the full backups go
//! first). Knobs not set here (SCALE, OLTP_MB, STRATA_PIPELINE, PGBR_LEVEL, PAUSE, CHURN_SECS, ...) pass
//! through the environment to the children.

use anyhow::{bail, Context, Result};
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use super::common::{
    install_binaries, log, run_id, strata_version, Kv, Workspace, STRATA_BINARIES,
};
use super::run_info;

/// The knobs of the whole comparison.
#[derive(clap::Args, Debug, Clone)]
pub struct Args {
    /// Datasets to run, separated by spaces: pgbench, oltp.
    #[arg(long, env = "DATASETS", default_value = "pgbench oltp")]
    pub datasets: String,
    /// Bus modes, separated by spaces: local, nats (a local nats-server and the services).
    #[arg(long, env = "BUSES", default_value = "local nats")]
    pub buses: String,
    /// Reps of `full`.
    #[arg(long, env = "REPS", default_value_t = 3)]
    pub reps: u32,
    /// Reps of `incr`.
    #[arg(long, env = "INCR_REPS", default_value_t = 2)]
    pub incr_reps: u32,
    /// The first benchmark of each dataset reuses a loaded cluster too (1/0).
    #[arg(long, env = "REUSE", default_value = "0", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub reuse: bool,
    /// Measure the machine's limits in each dataset's first `full` (1/0).
    #[arg(long, env = "LIMITS", default_value = "1", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub limits: bool,
    /// Directory of strata, strata-collector, strata-sealer and strata-uploader (default
    /// `$CARGO_TARGET_DIR/release` or target/release); copied into `<out>/bin` once, so every benchmark
    /// measures the same build.
    #[arg(long, env = "STRATA_BIN")]
    pub strata_bin: Option<PathBuf>,
    /// Cluster and work directory of the pgbench dataset.
    #[arg(long, env = "BENCH_DIR_PGBENCH", default_value = "/tmp/strata-loadtest")]
    pub bench_dir_pgbench: PathBuf,
    /// Cluster and work directory of the oltp dataset.
    #[arg(long, env = "BENCH_DIR_OLTP", default_value = "/tmp/strata-loadtest-oltp")]
    pub bench_dir_oltp: PathBuf,
    /// Logs, key=value files and the summary (default /tmp/strata-loadtest-all/<run id>).
    #[arg(long, env = "OUT_DIR")]
    pub out_dir: Option<PathBuf>,
    /// Run nothing; rebuild `<out>/summary.txt` from the key=value files in OUT_DIR.
    #[arg(long, env = "REPORT_ONLY", default_value = "0", value_parser = clap::builder::BoolishValueParser::new(), action = clap::ArgAction::Set)]
    pub report_only: bool,
}

/// One child benchmark: `bench-full-pgbench-local` and so on (the names of bench-all.sh's files).
struct Part {
    bench: &'static str,
    dataset: String,
    bus: String,
}

impl Part {
    fn name(&self) -> String {
        format!("bench-{}-{}-{}", self.bench, self.dataset, self.bus)
    }
}

/// Runs the comparison (or only the report) and returns the summary's verdicts as key=value lines.
pub fn run(args: &Args) -> Result<Kv> {
    for var in ["BENCH_DIR", "DATASET", "STRATA_BUS", "PGPORT"] {
        if std::env::var_os(var).is_some() {
            bail!("{var} is set: `all` sets it per benchmark (use DATASETS, BUSES, BENCH_DIR_PGBENCH, BENCH_DIR_OLTP)");
        }
    }
    let datasets: Vec<String> = args.datasets.split_whitespace().map(String::from).collect();
    let buses: Vec<String> = args.buses.split_whitespace().map(String::from).collect();
    for d in &datasets {
        if d != "pgbench" && d != "oltp" {
            bail!("DATASETS: '{d}' is not pgbench or oltp");
        }
    }
    for b in &buses {
        if b != "local" && b != "nats" {
            bail!("BUSES: '{b}' is not local or nats");
        }
    }
    if args.reps == 0 || args.incr_reps == 0 {
        bail!("REPS and INCR_REPS must be at least 1");
    }
    let out = args
        .out_dir
        .clone()
        .unwrap_or_else(|| PathBuf::from("/tmp/strata-loadtest-all").join(run_id()));
    let mut failed = Vec::new();
    if args.report_only {
        if !out.join("bin").is_dir() {
            bail!("--report-only needs OUT_DIR, the directory of an earlier run");
        }
    } else {
        let ws = Workspace::create(&out)?;
        let bins = install_binaries(args.strata_bin.as_deref(), &ws)?;
        log(format!(
            "datasets '{}', buses '{}', REPS={} INCR_REPS={}; {}; output in {}",
            args.datasets,
            args.buses,
            args.reps,
            args.incr_reps,
            strata_version(&bins),
            out.display()
        ));
        for ds in &datasets {
            let (mut reuse, mut limits) = (args.reuse, args.limits);
            let mut parts = Vec::new();
            for bench in ["full", "incr"] {
                for bus in &buses {
                    parts.push(Part {
                        bench,
                        dataset: ds.clone(),
                        bus: bus.clone(),
                    });
                }
            }
            for part in parts {
                let is_full = part.bench == "full";
                let reps = if is_full { args.reps } else { args.incr_reps };
                let dir = if part.dataset == "pgbench" {
                    &args.bench_dir_pgbench
                } else {
                    &args.bench_dir_oltp
                };
                match run_part(&part, &out, dir, reps, reuse, limits && is_full) {
                    Ok(()) => {}
                    Err(e) => {
                        log(format!("{} FAILED: {e:#}", part.name()));
                        failed.push(part.name());
                    }
                }
                reuse = true;
                limits = false;
            }
        }
    }
    let summary = summary(&out, &datasets, &buses, &failed)?;
    let path = out.join("summary.txt");
    fs::write(&path, &summary.0).with_context(|| format!("cannot write {}", path.display()))?;
    eprintln!();
    eprint!("{}", summary.0);
    if !failed.is_empty() {
        bail!("failed: {}", failed.join(", "));
    }
    Ok(summary.1)
}

/// Runs one child benchmark; an error when it fails (its log names why).
fn run_part(
    part: &Part,
    out: &Path,
    dir: &Path,
    reps: u32,
    reuse: bool,
    limits: bool,
) -> Result<()> {
    let name = part.name();
    let log_path = out.join(format!("{name}.log"));
    let bus_url = if part.bus == "nats" {
        "nats://"
    } else {
        "local"
    };
    log(format!(
        "{name}: DATASET={} STRATA_BUS={bus_url} REPS={reps} REUSE={} LIMITS={} BENCH_DIR={} (log {})",
        part.dataset,
        u8::from(reuse),
        u8::from(limits),
        dir.display(),
        log_path.display()
    ));
    let t0 = Instant::now();
    let log_file = fs::File::create(&log_path)?;
    let status = Command::new(std::env::current_exe()?)
        .arg(part.bench)
        .env("DATASET", &part.dataset)
        .env("STRATA_BUS", bus_url)
        .env("REPS", reps.to_string())
        .env("REUSE", if reuse { "1" } else { "0" })
        .env("LIMITS", if limits { "1" } else { "0" })
        .env("BENCH_DIR", dir)
        .env("STRATA_BIN", out.join("bin"))
        .env("KV_OUT", out.join(format!("{name}.kv")))
        .stdout(log_file.try_clone()?)
        .stderr(log_file)
        .status()?;
    super::common::check_interrupted()?;
    if !status.success() {
        let text = fs::read_to_string(&log_path).unwrap_or_default();
        let first = text
            .lines()
            .find(|l| l.contains("error") || l.contains("FAILED"))
            .or_else(|| text.lines().last())
            .unwrap_or("");
        bail!(
            "{status} after {:.0} s: {first}",
            t0.elapsed().as_secs_f64()
        );
    }
    log(format!(
        "{name} done in {:.0} s",
        t0.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// A value of a key=value file, formatted; "-" when missing.
fn num(kv: Option<&Kv>, key: &str, decimals: usize) -> String {
    match kv.and_then(|k| k.get_f64(key)) {
        Some(v) => format!("{v:.decimals$}"),
        None => "-".into(),
    }
}

/// Bytes as MB (10^6), one decimal; "-" when missing.
fn mb(kv: Option<&Kv>, key: &str) -> String {
    match kv.and_then(|k| k.get_f64(key)) {
        Some(v) => format!("{:.1}", v / 1e6),
        None => "-".into(),
    }
}

/// A verdict field; "-" when missing.
fn vr(kv: Option<&Kv>, key: &str) -> String {
    match kv.and_then(|k| k.get(key)).filter(|v| !v.is_empty()) {
        Some(v) => v.to_string(),
        None => "-".into(),
    }
}

/// Calls `row` with each dataset and bus's key=value lines of `bench` ("full" or "incr"), in table
/// order; a part that left none gets its row here instead: "(no result: see <its log>)".
fn each_result(
    s: &mut String,
    out: &Path,
    bench: &str,
    datasets: &[String],
    buses: &[String],
    mut row: impl FnMut(&mut String, &str, &str, &Kv) -> Result<()>,
) -> Result<()> {
    for ds in datasets {
        for bus in buses {
            let name = format!("bench-{bench}-{ds}-{bus}");
            match Kv::read(&out.join(format!("{name}.kv"))) {
                Ok(kv) => row(s, ds, bus, &kv)?,
                Err(_) => writeln!(
                    s,
                    "{ds:<8} {bus:<6}  (no result: see {})",
                    out.join(format!("{name}.log")).display()
                )?,
            }
        }
    }
    Ok(())
}

/// The combined table (bench-all.sh's summary.txt) and the verdicts as key=value lines.
fn summary(
    out: &Path,
    datasets: &[String],
    buses: &[String],
    failed: &[String],
) -> Result<(String, Kv)> {
    let read = |name: String| Kv::read(&out.join(format!("{name}.kv"))).ok();
    let mut s = String::new();
    let mut verdicts = Kv::new();
    let cores = run_info::cpus().unwrap_or(1);
    let mem_gb = run_info::mem_total_kb()
        .map(|kb| kb as f64 / 1e6)
        .unwrap_or(0.0);
    let strata = out.join("bin").join(STRATA_BINARIES[0]);
    let version = Command::new(&strata)
        .arg("--version")
        .output()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    let source = Command::new("git")
        .args([
            "-C",
            env!("CARGO_MANIFEST_DIR"),
            "rev-parse",
            "--short",
            "HEAD",
        ])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "?".into());
    let run = out
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    writeln!(s, "== strata-bench all {run}: {cores} cores, {mem_gb:.0} GB RAM; Strata {version} (source {source})")?;
    let first_full = datasets
        .iter()
        .flat_map(|d| buses.iter().map(move |b| (d, b)))
        .find_map(|(d, b)| read(format!("bench-full-{d}-{b}")));
    let first_incr = datasets
        .iter()
        .flat_map(|d| buses.iter().map(move |b| (d, b)))
        .find_map(|(d, b)| read(format!("bench-incr-{d}-{b}")));
    if let Some(f) = &first_full {
        writeln!(
            s,
            "   Strata pipeline {}; pgBackRest {}; pg_basebackup {}; reps: {} (full), {} (incr); times are medians",
            f.get("pipeline").unwrap_or("-"),
            f.get("pgbr").unwrap_or("-"),
            f.get("pgbb").unwrap_or("-"),
            f.get("reps").unwrap_or("-"),
            first_incr.as_ref().and_then(|i| i.get("reps")).unwrap_or("-"),
        )?;
    }
    writeln!(s, "   Targets (single-host mode): backup strata/pgbackrest <= 0.50, strata/pg_basebackup <= 1.25; restore strata/pgbackrest <= 0.80;")?;
    writeln!(s, "   incremental stored bytes strata/pgbackrest <= 0.333; repository size strata/pgbackrest within 0.90..1.10 (comparable compression).")?;
    writeln!(s)?;
    writeln!(s, "Full backup and restore (strata-bench full), seconds:")?;
    writeln!(
        s,
        "{:<8} {:<6} {:>8} | {:>8} {:>8} {:>8} {:>12} {:>12} | {:>8} {:>8} {:>12} | {:>12} {:>12} {:>11}",
        "dataset", "bus", "DB_MB", "strata", "pgbackrest", "pg_basebk", "S/pgbr<=.50", "S/pgbb<=1.25", "S_rest", "pgbr_rest", "S/pgbr<=.80", "S_repo_MB", "pgbr_repo_MB", "S/pgbr_repo"
    )?;
    each_result(&mut s, out, "full", datasets, buses, |s, ds, bus, f| {
        let f = Some(f);
        writeln!(
            s,
            "{:<8} {:<6} {:>8} | {:>8} {:>8} {:>8} {:>7} {:<4} {:>7} {:<4} | {:>8} {:>8} {:>7} {:<4} | {:>12} {:>12} {:>6} {:<4}",
            ds,
            bus,
            mb(f, "payload_bytes"),
            num(f, "strata_backup_s", 2),
            num(f, "pgbackrest_backup_s", 2),
            num(f, "pg_basebackup_backup_s", 2),
            num(f, "ratio_backup_pgbr", 3),
            vr(f, "ratio_backup_pgbr_verdict"),
            num(f, "ratio_backup_pgbb", 3),
            vr(f, "ratio_backup_pgbb_verdict"),
            num(f, "strata_restore_s", 2),
            num(f, "pgbackrest_restore_s", 2),
            num(f, "ratio_restore_pgbr", 3),
            vr(f, "ratio_restore_pgbr_verdict"),
            mb(f, "strata_backup_bytes"),
            mb(f, "pgbackrest_backup_bytes"),
            num(f, "ratio_repo", 3),
            vr(f, "ratio_repo_verdict"),
        )?;
        Ok(())
    })?;
    writeln!(s)?;
    writeln!(s, "Incremental after a fixed pgbench run (strata-bench incr): seconds, stored bytes (Strata stored_bytes, pgBackRest repository.delta):")?;
    writeln!(
        s,
        "{:<8} {:<6} {:>6} {:>9} | {:>8} {:>8} {:>7} | {:>12} {:>12} {:>14}",
        "dataset",
        "bus",
        "churn_s",
        "xacts",
        "strata",
        "pgbackrest",
        "S/pgbr",
        "S_stored_MB",
        "pgbr_stored_MB",
        "S/pgbr<=.333"
    )?;
    each_result(&mut s, out, "incr", datasets, buses, |s, ds, bus, f| {
        let f = Some(f);
        writeln!(
            s,
            "{:<8} {:<6} {:>6} {:>9} | {:>8} {:>8} {:>7} | {:>12} {:>12} {:>9} {:<4}",
            ds,
            bus,
            f.and_then(|k| k.get("churn_secs")).unwrap_or("-"),
            num(f, "churn_xacts", 0),
            num(f, "strata_incr_s", 2),
            num(f, "pgbackrest_incr_s", 2),
            num(f, "ratio_incr_time", 3),
            mb(f, "strata_incr_stored_bytes"),
            mb(f, "pgbackrest_incr_stored_bytes"),
            num(f, "ratio_incr_stored", 3),
            vr(f, "ratio_incr_stored_verdict"),
        )?;
        Ok(())
    })?;
    writeln!(s)?;
    writeln!(
        s,
        "Machine limits (strata-bench limits, in each dataset's first full; MB = 10^6 bytes):"
    )?;
    for ds in datasets {
        let with_limits = buses
            .iter()
            .filter_map(|b| read(format!("bench-full-{ds}-{b}")))
            .find(|k| {
                k.get("limit_disk_read_direct_mb_s")
                    .is_some_and(|v| !v.is_empty())
            });
        let Some(f) = with_limits else {
            writeln!(s, "  {ds}: not measured")?;
            continue;
        };
        let z = f.get_f64(&format!("limit_zstd1_{ds}_mb_s"));
        let payload = f.get_f64("payload_bytes");
        let rate = match (z, payload) {
            (Some(z), Some(p)) if z > 0.0 => format!(
                "compressing the database at that rate: {:.2} s on {cores} cores",
                p / 1e6 / z / cores as f64
            ),
            _ => String::new(),
        };
        writeln!(
            s,
            "  {ds}: disk read O_DIRECT {} MB/s, page-cache read {} MB/s; zstd -1 on one core, {} heap: {} MB/s (ratio {}), streaming CLI {} MB/s; {rate}",
            f.get("limit_disk_read_direct_mb_s").unwrap_or("-"),
            f.get("limit_cached_read_mb_s").unwrap_or("-"),
            f.get("limit_heap_table").unwrap_or("-"),
            f.get(&format!("limit_zstd1_{ds}_mb_s")).unwrap_or("-"),
            f.get(&format!("limit_zstd1_{ds}_ratio")).unwrap_or("-"),
            f.get(&format!("limit_zstd1_{ds}_cli_mb_s")).unwrap_or("-"),
        )?;
    }
    writeln!(s)?;
    writeln!(s, "Single-host verdicts:")?;
    for ds in datasets {
        let f = read(format!("bench-full-{ds}-local"));
        let i = read(format!("bench-incr-{ds}-local"));
        let mut line = String::new();
        for k in [
            "ratio_backup_pgbr",
            "ratio_backup_pgbb",
            "ratio_restore_pgbr",
            "ratio_repo",
        ] {
            let v = vr(f.as_ref(), &format!("{k}_verdict"));
            verdicts.set(&format!("{ds}_{k}_verdict"), &v);
            write!(line, " {k}={v}")?;
        }
        let v = vr(i.as_ref(), "ratio_incr_stored_verdict");
        verdicts.set(&format!("{ds}_ratio_incr_stored_verdict"), &v);
        write!(line, " ratio_incr_stored={v}")?;
        writeln!(s, "  {ds}:{line}")?;
    }
    if !failed.is_empty() {
        writeln!(s)?;
        writeln!(
            s,
            "FAILED: {} (logs in {})",
            failed.join(" "),
            out.display()
        )?;
    }
    writeln!(s)?;
    writeln!(
        s,
        "per-benchmark summaries and logs: {0}/*.log, key=value: {0}/*.kv",
        out.display()
    )?;
    Ok((s, verdicts))
}
