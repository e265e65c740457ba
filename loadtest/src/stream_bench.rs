//! `strata-stream-bench`: the RPO of WAL streaming when the primary crashes under full write load.
//!
//! Each run: a PostgreSQL 15 cluster (through the `strata-integration` harness) archived by `strata
//! archive-push`, `pgbench -i -s --scale`, a full backup, then `strata wal-stream` and pgbench at full speed
//! (`--clients`) with a script that is TPC-B-like plus one row per transaction in `commits (client)`, and
//! pgbench's per-transaction log (`-l`: each transaction's completion time). After `--load-secs` the
//! primary is stopped with `pg_ctl stop -m immediate`; the backup is restored to the end of the archive
//! (the streamer's newest partial segment included) and started.
//!
//! Each client's transactions commit one after another, and recovery replays a prefix of the WAL, so the
//! restored rows of a client are its first transactions: comparing counts per client with the log says
//! exactly which acknowledged transactions were lost, and how old the oldest lost one was when the
//! primary stopped. The target (issue 14): none acknowledged more than a second before the stop is lost.
//!
//! Results are `key=value` lines (also in `<out>/stream-bench.kv`).

use anyhow::{bail, Context, Result};
use clap::Parser;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs::File;
use std::path::PathBuf;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use strata_integration::pg::pg_bin;
use strata_integration::{command_as_postgres, write_config_with, PgCluster, PgOptions, StrataBins, TestDir};

const STANZA: &str = "main";

#[derive(Parser, Debug)]
#[command(about = "WAL streaming under load: what a primary crash loses, restored from the archive")]
struct Args {
    /// pgbench scale.
    #[arg(long, default_value_t = 50)]
    scale: u32,
    /// pgbench clients at full speed.
    #[arg(long, default_value_t = 8)]
    clients: u32,
    /// Seconds of load before the crash.
    #[arg(long, default_value_t = 30)]
    load_secs: u64,
    /// Crash runs.
    #[arg(long, default_value_t = 2)]
    runs: usize,
    /// `wal_stream.flush_ms`.
    #[arg(long, default_value_t = 1000)]
    flush_ms: u64,
    /// Kill the streamer (SIGKILL) at the moment the primary stops, as if its host died too: what it
    /// received but had not stored is lost, so the loss is bounded by flush_ms instead of by what reached it.
    #[arg(long)]
    kill_streamer: bool,
    /// Where the key=value results go.
    #[arg(long, default_value = "stream-bench-out")]
    out: PathBuf,
}

const SCRIPT: &str = "\\set aid random(1, 100000 * :scale)
\\set bid random(1, 1 * :scale)
\\set tid random(1, 10 * :scale)
\\set delta random(-5000, 5000)
BEGIN;
UPDATE pgbench_accounts SET abalance = abalance + :delta WHERE aid = :aid;
SELECT abalance FROM pgbench_accounts WHERE aid = :aid;
UPDATE pgbench_tellers SET tbalance = tbalance + :delta WHERE tid = :tid;
UPDATE pgbench_branches SET bbalance = bbalance + :delta WHERE bid = :bid;
INSERT INTO pgbench_history (tid, bid, aid, delta, mtime) VALUES (:tid, :bid, :aid, :delta, CURRENT_TIMESTAMP);
INSERT INTO commits (client) VALUES (:client_id);
END;
";

fn main() -> Result<()> {
    let args = Args::parse();
    std::fs::create_dir_all(&args.out).with_context(|| format!("cannot create {:?}", args.out))?;
    let mut results: Vec<(String, String)> = vec![
        ("stream_scale".into(), args.scale.to_string()),
        ("stream_clients".into(), args.clients.to_string()),
        ("stream_flush_ms".into(), args.flush_ms.to_string()),
        ("stream_kill_streamer".into(), args.kill_streamer.to_string()),
    ];
    let mut all_ok = true;
    for run in 1..=args.runs {
        let r = crash_run(&args, run)?;
        eprintln!(
            "run {run}: {} transactions acknowledged ({:.0} tps, {:.1} MB/s of WAL), {} more than 1 s before the stop; {} restored, {} lost, the oldest lost {} ms before the stop",
            r.acked, r.tps, r.wal_mb_s, r.needed, r.restored, r.lost, r.oldest_lost_ms
        );
        all_ok &= r.needed_missing == 0;
        for (k, v) in [
            ("acked", r.acked.to_string()),
            ("tps", format!("{:.0}", r.tps)),
            ("wal_mb_s", format!("{:.1}", r.wal_mb_s)),
            ("needed", r.needed.to_string()),
            ("restored", r.restored.to_string()),
            ("lost", r.lost.to_string()),
            ("needed_missing", r.needed_missing.to_string()),
            ("oldest_lost_ms", r.oldest_lost_ms.to_string()),
        ] {
            results.push((format!("stream_run{run}_{k}"), v));
        }
    }
    results.push(("stream_rpo_1s_met".into(), all_ok.to_string()));
    let mut text = String::new();
    for (k, v) in &results {
        writeln!(text, "{k}={v}")?;
    }
    print!("{text}");
    std::fs::write(args.out.join("stream-bench.kv"), text)?;
    if !all_ok {
        bail!("a transaction acknowledged more than a second before the stop was lost");
    }
    Ok(())
}

struct RunResult {
    acked: usize,
    tps: f64,
    wal_mb_s: f64,
    needed: usize,
    restored: usize,
    lost: usize,
    needed_missing: usize,
    oldest_lost_ms: i64,
}

/// `strata wal-stream`, killed when dropped.
struct Streamer(Child, PathBuf);

impl Drop for Streamer {
    fn drop(&mut self) {
        if self.0.try_wait().ok().flatten().is_none() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

fn crash_run(args: &Args, run: usize) -> Result<RunResult> {
    let dir = TestDir::new(&format!("streambench{run}"));
    let bins = StrataBins::locate();
    let config = dir.path().join("strata.toml");
    let opts = PgOptions::new(bins.archive_push_command(&config, STANZA))
        .setting("max_wal_size", "2GB")
        .setting("shared_buffers", "256MB");
    let mut pg = PgCluster::init(&dir, opts);
    let repo = dir.subdir("repo");
    write_config_with(
        dir.path(),
        "local",
        STANZA,
        pg.data_dir(),
        &pg.conn_string(),
        &[("local", &format!("type = \"posix\"\npath = \"{}\"\n", repo.display()))],
        &format!("[archive]\nasync = true\n\n[wal_stream]\nflush_ms = {}\n", args.flush_ms),
    );
    pg.start();
    let strata = |what: &[&str]| -> Result<String> {
        let out = bins.strata_cmd(&config, STANZA).args(what).output().with_context(|| format!("cannot run strata {what:?}"))?;
        if !out.status.success() {
            bail!("strata {what:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    };
    strata(&["stanza-create"])?;
    pg.pgbench_init(args.scale);
    pg.psql("CREATE TABLE commits (client int NOT NULL)");
    strata(&["backup", "--type", "full"])?;

    let log = dir.path().join("wal-stream.log");
    let out = File::create(&log)?;
    let child = bins.strata_cmd(&config, STANZA).arg("wal-stream").stdout(out.try_clone()?).stderr(out).spawn()?;
    let mut streamer = Streamer(child, log.clone());
    wait_for("the streamer's slot to be active", Duration::from_secs(60), || {
        pg.psql("SELECT active FROM pg_replication_slots WHERE slot_name = 'strata_main'") == "t"
    })?;

    let script = dir.path().join("commits.sql");
    std::fs::write(&script, SCRIPT)?;
    let bench_dir = dir.subdir("pgbench-log");
    let start_lsn = pg.psql("SELECT pg_current_wal_lsn()");
    let started = Instant::now();
    let mut bench = command_as_postgres(pg_bin("pgbench"))
        .args(["-n", "-c", &args.clients.to_string(), "-j", "2", "-T", "3600", "-l", "--log-prefix"])
        .arg(bench_dir.join("tx"))
        .arg("-f")
        .arg(&script)
        .arg("-h")
        .arg(pg.socket_dir())
        .args(["-p", &pg.port().to_string(), "-U", "postgres", "postgres"])
        .current_dir(&bench_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("cannot start pgbench")?;
    // The load runs for its time; nothing is being waited for.
    std::thread::sleep(Duration::from_secs(args.load_secs));
    let end_lsn = pg.psql("SELECT pg_current_wal_lsn()");
    let wal_bytes: u64 = pg.psql(&format!("SELECT pg_wal_lsn_diff('{end_lsn}', '{start_lsn}')::bigint")).parse()?;
    let load = started.elapsed().as_secs_f64();
    let crash = SystemTime::now().duration_since(UNIX_EPOCH)?.as_micros() as i64;
    if args.kill_streamer {
        // SAFETY: SIGKILL to the streamer this run started, by pid.
        unsafe { libc::kill(streamer.0.id() as i32, libc::SIGKILL) };
        let _ = streamer.0.wait();
    }
    pg.stop_immediate();
    let _ = bench.wait();
    if !args.kill_streamer {
        wait_for("the streamer to notice the crash", Duration::from_secs(60), || {
            std::fs::read_to_string(&log).unwrap_or_default().contains("WAL streaming interrupted")
        })?;
        // SAFETY: SIGTERM to the streamer this run started, by pid.
        unsafe { libc::kill(streamer.0.id() as i32, libc::SIGTERM) };
        let status = streamer.0.wait()?;
        if !status.success() {
            bail!("wal-stream exited with {status}; see {}", streamer.1.display());
        }
    }

    // Each client's acknowledged transactions, by completion time (pgbench's log: client, transaction,
    // latency, script, epoch seconds, microseconds).
    let mut acked: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for e in std::fs::read_dir(&bench_dir)?.flatten() {
        for line in std::fs::read_to_string(e.path())?.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 6 {
                continue;
            }
            let (client, secs, micros): (i64, i64, i64) = (f[0].parse()?, f[4].parse()?, f[5].parse()?);
            acked.entry(client).or_default().push(secs * 1_000_000 + micros);
        }
    }
    for times in acked.values_mut() {
        times.sort();
    }

    let target = dir.path().join("restored");
    strata(&["restore", "--pg-data", target.to_str().expect("utf-8 path")])?;
    let mut copy = PgCluster::for_data_dir(&dir, "restored", &target);
    copy.set_start_setting("archive_mode", "off");
    copy.start();
    copy.wait_recovery_end(Duration::from_secs(600));
    let mut restored: BTreeMap<i64, usize> = BTreeMap::new();
    for line in copy.psql("SELECT client || ' ' || count(*) FROM commits GROUP BY client").lines() {
        if let Some((c, n)) = line.split_once(' ') {
            restored.insert(c.parse()?, n.parse()?);
        }
    }
    copy.stop();

    let (mut n_acked, mut needed, mut n_restored, mut lost, mut needed_missing, mut oldest_lost_ms) = (0, 0, 0, 0, 0, 0i64);
    for (client, times) in &acked {
        let have = restored.get(client).copied().unwrap_or(0);
        n_acked += times.len();
        n_restored += have.min(times.len());
        let need = times.iter().filter(|t| **t + 1_000_000 <= crash).count();
        needed += need;
        needed_missing += need.saturating_sub(have);
        if have < times.len() {
            lost += times.len() - have;
            oldest_lost_ms = oldest_lost_ms.max((crash - times[have]) / 1000);
        }
    }
    Ok(RunResult {
        acked: n_acked,
        tps: n_acked as f64 / load,
        wal_mb_s: wal_bytes as f64 / load / 1e6,
        needed,
        restored: n_restored,
        lost,
        needed_missing,
        oldest_lost_ms,
    })
}

fn wait_for(what: &str, timeout: Duration, mut ready: impl FnMut() -> bool) -> Result<()> {
    let deadline = Instant::now() + timeout;
    while !ready() {
        if Instant::now() > deadline {
            bail!("timed out after {timeout:?} waiting for {what}");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    Ok(())
}
