//! `strata-wal-bench`: how fast WAL archiving drains a backlog, and how far behind it falls under a
//! sustained write load, for Strata (synchronous and asynchronous archive-push) against pgBackRest
//! (synchronous and asynchronous) and a plain `cp`. See loadtest/README.md ("The WAL benchmark").
//!
//! # Drain
//! One PostgreSQL 15 cluster (started through the `strata-integration` harness, as the scale model does)
//! with `archive_command = ''`: PostgreSQL 15 then archives nothing and the `.ready` files pile up. A
//! backlog of real OLTP WAL (range updates of `pgbench_accounts`, full-page images after each checkpoint
//! included) is written until `--segments` are ready; then `archive_command` becomes the tool's, the
//! configuration is reloaded and the clock runs until no `.ready` file is left. The tools take turns in
//! each of `--runs` rounds, so machine noise hits them alike; `--competing` repeats each round with two
//! busy-loop processes on the host (a CPU-heavy neighbour; started and stopped by pid).
//!
//! # Sustained
//! `pgbench -i -s --sustained-scale` (default 100), then `pgbench` at full speed for `--sustained-secs`
//! (default 300) with the tool archiving; every second the lag is sampled: segments ready but not yet
//! archived, and their bytes. Max and mean are printed; the samples go to a CSV and a PNG.
//!
//! Results are printed as `key=value` lines, like the bash benches'.

use anyhow::{bail, Context, Result};
use clap::Parser;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command};
use std::time::{Duration, Instant};
use strata_integration::{command_as_postgres, write_config_with, PgCluster, PgOptions, StrataBins, TestDir};

const STANZA: &str = "main";
const PGBR_STANZA: &str = "bench";
const SEG: u64 = 16 * 1024 * 1024;

#[derive(Parser, Debug)]
#[command(about = "WAL archiving benchmark: backlog drain and sustained lag, Strata against pgBackRest and cp")]
struct Args {
    /// Tools, in the order each round runs them.
    #[arg(long, value_delimiter = ',', default_value = "strata-sync,strata-async,pgbackrest-sync,pgbackrest-async,cp")]
    tools: Vec<String>,
    /// Ready segments in each backlog.
    #[arg(long, default_value_t = 64)]
    segments: usize,
    /// Rounds of every tool.
    #[arg(long, default_value_t = 2)]
    runs: usize,
    /// Also run each round with two busy-loop processes competing for the CPU.
    #[arg(long)]
    competing: bool,
    /// pgbench scale of the drain's tables.
    #[arg(long, default_value_t = 20)]
    scale: u32,
    /// Skip the drain.
    #[arg(long)]
    no_drain: bool,
    /// Seconds of the sustained run (0: none).
    #[arg(long, default_value_t = 300)]
    sustained_secs: u32,
    /// pgbench scale of the sustained run.
    #[arg(long, default_value_t = 100)]
    sustained_scale: u32,
    /// pgbench clients of the sustained run.
    #[arg(long, default_value_t = 8)]
    sustained_clients: u32,
    /// Tools of the sustained run, one after another.
    #[arg(long, value_delimiter = ',', default_value = "strata-async")]
    sustained_tools: Vec<String>,
    /// Where the CSV, the PNG and the key=value results go.
    #[arg(long, default_value = "wal-bench-out")]
    out: PathBuf,
    /// Compression level of both Strata (wal_compress_level) and pgBackRest (zstd).
    #[arg(long, default_value_t = 3)]
    compress_level: i32,
    /// Strata's wal_compress_level when it should differ from pgBackRest's (default: --compress-level).
    #[arg(long)]
    strata_compress_level: Option<i32>,
    /// Further `[pipeline]` keys for Strata, e.g. "sealer_workers = 4" (repeatable).
    #[arg(long)]
    strata_pipeline: Vec<String>,
}

struct Bench {
    // Dropped before `dir`: the cluster stops before its directory goes.
    pg: PgCluster,
    _dir: TestDir,
    /// archive_command per tool.
    commands: Vec<(String, String)>,
    cp_dest: PathBuf,
    strata_repo: PathBuf,
    pgbr_repo: PathBuf,
    strata_async_spool: PathBuf,
    results: Vec<(String, String)>,
}

fn main() -> Result<()> {
    let args = Args::parse();
    for t in args.tools.iter().chain(&args.sustained_tools) {
        if !["strata-sync", "strata-async", "pgbackrest-sync", "pgbackrest-async", "cp"].contains(&t.as_str()) {
            bail!("unknown tool '{t}' (strata-sync, strata-async, pgbackrest-sync, pgbackrest-async, cp)");
        }
    }
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {:?}", args.out))?;
    let mut bench = Bench::new(&args)?;
    if !args.no_drain {
        bench.drain(&args)?;
    }
    if args.sustained_secs > 0 {
        bench.sustained(&args)?;
    }
    let mut text = String::new();
    for (k, v) in &bench.results {
        writeln!(text, "{k}={v}")?;
    }
    print!("{text}");
    std::fs::write(args.out.join("wal-bench.kv"), text)?;
    Ok(())
}

impl Bench {
    fn new(args: &Args) -> Result<Bench> {
        let dir = TestDir::new("walbench");
        let bins = StrataBins::locate();
        let opts = PgOptions::new("")
            .setting("max_wal_size", "1GB")
            .setting("checkpoint_timeout", "5min")
            .setting("shared_buffers", "256MB");
        let mut pg = PgCluster::init(&dir, opts);
        pg.start();
        let repo = dir.subdir("strata-repo");
        let mut pipeline = format!("[pipeline]\nwal_compress_level = {}\n", args.strata_compress_level.unwrap_or(args.compress_level));
        for line in &args.strata_pipeline {
            pipeline.push_str(&format!("{line}\n"));
        }
        let conn = pg.conn_string();
        let sync_cfg = write_config_with(
            &dir.subdir("strata-sync"),
            "local",
            STANZA,
            pg.data_dir(),
            &conn,
            &[("local", &format!("type = \"posix\"\npath = \"{}\"\n", repo.display()))],
            &pipeline,
        );
        let strata_async_spool = dir.subdir("strata-spool");
        std::fs::set_permissions(&strata_async_spool, std::os::unix::fs::PermissionsExt::from_mode(0o700))?;
        let async_cfg = write_config_with(
            &dir.subdir("strata-async"),
            "local",
            STANZA,
            pg.data_dir(),
            &conn,
            &[("local", &format!("type = \"posix\"\npath = \"{}\"\n", repo.display()))],
            &format!("{pipeline}\n[archive]\nasync = true\nspool_path = \"{}\"\n", strata_async_spool.display()),
        );
        run_ok(bins.strata_cmd(&sync_cfg, STANZA).arg("stanza-create"), "strata stanza-create")?;

        let pgbr_repo = dir.subdir("pgbr-repo");
        let pgbr_conf = |name: &str, asynchronous: bool| -> Result<PathBuf> {
            let path = dir.subdir("pgbr").join(name);
            std::fs::write(
                &path,
                format!(
                    "[global]\nrepo1-path={}\ncompress-type=zst\ncompress-level={}\narchive-async={}\nspool-path={}\nprocess-max=2\n\
                     lock-path={}\nlog-path={}\nlog-level-console=warn\nlog-level-file=off\nstart-fast=y\n\n[{PGBR_STANZA}]\npg1-path={}\npg1-socket-path={}\npg1-port={}\n",
                    pgbr_repo.display(),
                    args.compress_level,
                    if asynchronous { "y" } else { "n" },
                    dir.subdir("pgbr-spool").display(),
                    dir.subdir("pgbr-lock").display(),
                    dir.subdir("pgbr-log").display(),
                    pg.data_dir().display(),
                    pg.socket_dir().display(),
                    pg.port()
                ),
            )?;
            Ok(path)
        };
        let pgbr_sync = pgbr_conf("sync.conf", false)?;
        let pgbr_async = pgbr_conf("async.conf", true)?;
        run_ok(
            command_as_postgres("pgbackrest").arg(format!("--config={}", pgbr_sync.display())).arg(format!("--stanza={PGBR_STANZA}")).arg("stanza-create"),
            "pgbackrest stanza-create",
        )?;
        let cp_dest = dir.subdir("cp-dest");
        let pgbr = |conf: &Path| format!("pgbackrest --config={} --stanza={PGBR_STANZA} archive-push %p", conf.display());
        let commands = vec![
            ("strata-sync".to_string(), bins.archive_push_command(&sync_cfg, STANZA)),
            ("strata-async".to_string(), bins.archive_push_command(&async_cfg, STANZA)),
            ("pgbackrest-sync".to_string(), pgbr(&pgbr_sync)),
            ("pgbackrest-async".to_string(), pgbr(&pgbr_async)),
            ("cp".to_string(), format!("cp %p {}/%f", cp_dest.display())),
            // Discards: for WAL that is not measured (the datasets' loading).
            ("discard".to_string(), "true".to_string()),
        ];
        Ok(Bench { pg, _dir: dir, commands, cp_dest, strata_repo: repo, pgbr_repo, strata_async_spool, results: vec![
            ("strata_wal_compress_level".into(), args.strata_compress_level.unwrap_or(args.compress_level).to_string()),
            ("pgbackrest_compress_level".into(), args.compress_level.to_string()),
            ("drain_segments".into(), args.segments.to_string()),
        ] })
    }

    fn command(&self, tool: &str) -> &str {
        &self.commands.iter().find(|(t, _)| t == tool).expect("known tool").1
    }

    fn set_archive_command(&self, command: &str) {
        self.pg.psql(&format!("ALTER SYSTEM SET archive_command = '{}'", command.replace('\'', "''")));
        self.pg.psql("SELECT pg_reload_conf()");
    }

    fn ready(&self) -> usize {
        std::fs::read_dir(self.pg.data_dir().join("pg_wal/archive_status"))
            .map(|d| d.flatten().filter(|e| e.file_name().to_string_lossy().ends_with(".ready")).count())
            .unwrap_or(0)
    }

    /// Writes OLTP WAL (range updates of pgbench_accounts) until `segments` are ready.
    fn build_backlog(&self, segments: usize, rows: u64) {
        let mut from = 1u64;
        while self.ready() < segments {
            let to = from + 20_000;
            self.pg.psql(&format!("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid BETWEEN {from} AND {to}"));
            from = if to >= rows { 1 } else { to + 1 };
            if self.ready() + 1 >= segments {
                self.pg.psql("SELECT pg_switch_wal()");
            }
        }
    }

    /// Stops what a tool left running in the background (Strata's shipper; pgBackRest's async process
    /// exits by itself once its queue is empty).
    fn stop_background(&self) {
        if let Ok(pid) = std::fs::read_to_string(self.strata_async_spool.join("shipper.pid")) {
            if let Ok(pid) = pid.trim().parse::<i32>() {
                // SAFETY: kill on the pid the shipper wrote; a stale pid names no process of ours (ESRCH).
                unsafe { libc::kill(pid, libc::SIGTERM) };
                let _ = std::fs::remove_file(self.strata_async_spool.join("shipper.pid"));
            }
        }
    }

    /// Removes what the tools archived (only WAL, and only this run's), so that the disk holds one round.
    fn remove_archived(&self) {
        let _ = std::fs::remove_dir_all(&self.cp_dest);
        let _ = std::fs::create_dir(&self.cp_dest).map(|_| chown_postgres(&self.cp_dest));
        let _ = std::fs::remove_dir_all(self.strata_repo.join("pack"));
        let _ = std::fs::remove_dir_all(self.strata_repo.join("stanza").join(STANZA).join("wal"));
        if let Ok(versions) = std::fs::read_dir(self.pgbr_repo.join("archive").join(PGBR_STANZA)) {
            for v in versions.flatten().filter(|v| v.path().is_dir()) {
                for d in std::fs::read_dir(v.path()).into_iter().flatten().flatten().filter(|d| d.path().is_dir()) {
                    let _ = std::fs::remove_dir_all(d.path());
                }
            }
        }
    }

    fn drain(&mut self, args: &Args) -> Result<()> {
        self.set_archive_command("");
        self.pg.pgbench_init(args.scale);
        let rows = u64::from(args.scale) * 100_000;
        // What loading the tables wrote is not measured.
        self.drain_once("discard", 0)?;
        let loads: &[bool] = if args.competing { &[false, true] } else { &[false] };
        for &competing in loads {
            let mut rates: Vec<(String, Vec<f64>)> = args.tools.iter().map(|t| (t.clone(), Vec::new())).collect();
            for run in 1..=args.runs {
                for (tool, list) in rates.iter_mut() {
                    self.build_backlog(args.segments, rows);
                    let hogs = if competing { Some(Hogs::start(2)?) } else { None };
                    let (n, secs) = self.drain_once(tool, args.segments)?;
                    drop(hogs);
                    self.stop_background();
                    let rate = n as f64 / secs;
                    list.push(rate);
                    let tag = if competing { "competing" } else { "idle" };
                    eprintln!("drain {tag} run {run} {tool}: {n} segments in {secs:.2} s = {rate:.1} seg/s");
                    self.results.push((format!("drain_{tag}_run{run}_{}_seg_s", tool.replace('-', "_")), format!("{rate:.1}")));
                    self.remove_archived();
                }
            }
            let tag = if competing { "competing" } else { "idle" };
            for (tool, list) in &rates {
                let mean = list.iter().sum::<f64>() / list.len().max(1) as f64;
                self.results.push((format!("drain_{tag}_mean_{}_seg_s", tool.replace('-', "_")), format!("{mean:.1}")));
            }
            let mean = |t: &str| rates.iter().find(|(n, _)| n == t).map(|(_, l)| l.iter().sum::<f64>() / l.len().max(1) as f64);
            if let (Some(s), Some(p)) = (mean("strata-async"), mean("pgbackrest-async")) {
                self.results.push((format!("drain_{tag}_strata_async_over_pgbackrest_async"), format!("{:.2}", s / p)));
            }
        }
        Ok(())
    }

    /// Switches archive_command to `tool`'s and times until nothing is ready. (segments, seconds)
    fn drain_once(&self, tool: &str, expect: usize) -> Result<(usize, f64)> {
        let n = self.ready();
        if n < expect {
            bail!("only {n} segments ready, {expect} expected");
        }
        let started = Instant::now();
        self.set_archive_command(self.command(tool));
        while self.ready() > 0 {
            if started.elapsed() > Duration::from_secs(1800) {
                bail!("{tool}: {} segments still ready after 30 minutes; see {}", self.ready(), self.pg.log_file().display());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        let secs = started.elapsed().as_secs_f64();
        self.set_archive_command("");
        Ok((n, secs))
    }

    fn sustained(&mut self, args: &Args) -> Result<()> {
        self.set_archive_command(self.command("discard"));
        self.pg.pgbench_init(args.sustained_scale);
        for tool in args.sustained_tools.clone() {
            // Start from an empty queue: what init wrote is archived first.
            self.set_archive_command(self.command(&tool));
            self.pg.psql("SELECT pg_switch_wal()");
            let started = Instant::now();
            while self.ready() > 0 {
                if started.elapsed() > Duration::from_secs(1800) {
                    bail!("{tool}: the init's WAL is not archived after 30 minutes");
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let lsn0 = self.pg.psql("SELECT pg_current_wal_lsn() - '0/0'").parse::<f64>().unwrap_or(0.0);
            let bench = self.pg.pgbench_run_background(args.sustained_secs, args.sustained_clients);
            let mut samples: Vec<(f64, usize)> = Vec::new();
            let t0 = Instant::now();
            let mut next = t0;
            while t0.elapsed() < Duration::from_secs(u64::from(args.sustained_secs)) {
                next += Duration::from_secs(1);
                samples.push((t0.elapsed().as_secs_f64(), self.ready()));
                if let Some(wait) = next.checked_duration_since(Instant::now()) {
                    std::thread::sleep(wait);
                }
            }
            let out = bench.wait().map_err(|e| anyhow::anyhow!("pgbench failed: {e}"))?;
            let lsn1 = self.pg.psql("SELECT pg_current_wal_lsn() - '0/0'").parse::<f64>().unwrap_or(0.0);
            self.stop_background();
            let key = tool.replace('-', "_");
            let max = samples.iter().map(|s| s.1).max().unwrap_or(0);
            let mean = samples.iter().map(|s| s.1 as f64).sum::<f64>() / samples.len().max(1) as f64;
            let wal_mb_s = (lsn1 - lsn0) / 1e6 / f64::from(args.sustained_secs);
            let tps = out.lines().find(|l| l.starts_with("tps")).and_then(|l| l.split_whitespace().nth(2)).unwrap_or("?").to_string();
            eprintln!("sustained {tool}: lag max {max} segments, mean {mean:.2}; WAL {wal_mb_s:.1} MB/s; tps {tps}");
            self.results.push((format!("sustained_{key}_lag_max_segments"), max.to_string()));
            self.results.push((format!("sustained_{key}_lag_mean_segments"), format!("{mean:.2}")));
            self.results.push((format!("sustained_{key}_lag_max_bytes"), (max as u64 * SEG).to_string()));
            self.results.push((format!("sustained_{key}_wal_mb_s"), format!("{wal_mb_s:.1}")));
            self.results.push((format!("sustained_{key}_tps"), tps));
            let mut csv = String::from("seconds,ready_segments,ready_bytes\n");
            for (t, n) in &samples {
                writeln!(csv, "{t:.1},{n},{}", *n as u64 * SEG)?;
            }
            let csv_path = args.out.join(format!("sustained-{tool}.csv"));
            std::fs::write(&csv_path, csv)?;
            self.remove_archived();
            let png = args.out.join(format!("sustained-{tool}.png"));
            plot(&samples, &format!("{tool}: archive lag under pgbench -c {} (scale {})", args.sustained_clients, args.sustained_scale), &png)?;
            self.results.push((format!("sustained_{key}_csv"), csv_path.display().to_string()));
        }
        Ok(())
    }
}

impl Drop for Bench {
    fn drop(&mut self) {
        self.stop_background();
    }
}

fn chown_postgres(path: &Path) {
    let _ = Command::new("chown").arg("postgres:postgres").arg(path).status();
}

fn run_ok(cmd: &mut Command, what: &str) -> Result<()> {
    let out = cmd.output().with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!("{what} failed: {}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    }
    Ok(())
}

/// CPU-heavy neighbours: busy-loop shells, stopped by pid when dropped.
struct Hogs(Vec<Child>);

impl Hogs {
    fn start(n: usize) -> Result<Hogs> {
        let mut v = Vec::new();
        for _ in 0..n {
            v.push(Command::new("sh").args(["-c", "while :; do :; done"]).spawn().context("cannot start a busy loop")?);
        }
        Ok(Hogs(v))
    }
}

impl Drop for Hogs {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn plot(samples: &[(f64, usize)], title: &str, path: &Path) -> Result<()> {
    use plotters::prelude::*;
    let text = register_font();
    let xmax = samples.last().map(|s| s.0).unwrap_or(1.0).max(1.0);
    let ymax = samples.iter().map(|s| s.1).max().unwrap_or(0).max(5) as f64 * 1.1;
    let root = BitMapBackend::new(path, (960, 500)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut builder = ChartBuilder::on(&root);
    builder.margin(20).x_label_area_size(45).y_label_area_size(55);
    if text {
        builder.caption(title, ("sans-serif", 16));
    }
    let mut chart = builder.build_cartesian_2d(0f64..xmax, 0f64..ymax)?;
    let mut mesh = chart.configure_mesh();
    if text {
        mesh.x_desc("seconds").y_desc("segments ready, not archived");
    } else {
        mesh.x_labels(0).y_labels(0);
    }
    mesh.draw()?;
    chart.draw_series(LineSeries::new(samples.iter().map(|&(t, n)| (t, n as f64)), RED.stroke_width(2)))?;
    chart.draw_series(LineSeries::new(vec![(0.0, 4.0), (xmax, 4.0)], BLACK.mix(0.35)))?;
    root.present()?;
    Ok(())
}

fn register_font() -> bool {
    for c in ["/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf", "/usr/share/fonts/TTF/DejaVuSans.ttf", "/usr/share/fonts/dejavu/DejaVuSans.ttf"] {
        if let Ok(bytes) = std::fs::read(c) {
            let bytes: &'static [u8] = Box::leak(bytes.into_boxed_slice());
            if plotters::style::register_font("sans-serif", plotters::style::FontStyle::Normal, bytes).is_ok() {
                return true;
            }
        }
    }
    false
}
