//! WAL streaming (`strata wal-stream`): a primary that crashes loses at most the last second of commits,
//! and a slot the streamer left behind is reported.
//!
//! The crash test writes one row per transaction from a client that notes when each commit was
//! acknowledged, stops the primary with `pg_ctl stop -m immediate` (the archive_command never sees the
//! segment being written), restores the backup to the end of the archive and counts: every row whose
//! commit was acknowledged more than a second before the stop must be there.

mod common;

use common::*;
use std::fs::File;
use std::path::PathBuf;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use strata_integration::*;

const SLOT: &str = "strata_main";

/// A running `strata wal-stream`, stopped (SIGKILL) on drop.
struct Streamer {
    child: Child,
    log: PathBuf,
}

impl Streamer {
    fn start(setup: &Setup, name: &str) -> Streamer {
        let log = setup.dir.path().join(format!("{name}.log"));
        let out = File::create(&log).unwrap();
        let child = setup
            .bins
            .strata_cmd(&setup.config, STANZA)
            .arg("wal-stream")
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("cannot start strata wal-stream");
        Streamer { child, log }
    }

    fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    fn signal(&mut self, signal: libc::c_int) -> std::process::ExitStatus {
        // SAFETY: a signal to the child this handle owns, by pid.
        unsafe { libc::kill(self.child.id() as i32, signal) };
        wait_until("wal-stream to exit", Duration::from_secs(60), || self.child.try_wait().unwrap())
    }
}

impl Drop for Streamer {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn slot_active(pg: &PgCluster) -> Option<bool> {
    match pg.psql(&format!("SELECT active FROM pg_replication_slots WHERE slot_name = '{SLOT}'")).as_str() {
        "t" => Some(true),
        "f" => Some(false),
        _ => None,
    }
}

fn lsn(text: &str) -> u64 {
    let (hi, lo) = text.split_once('/').unwrap_or_else(|| panic!("not an LSN: {text}"));
    (u64::from_str_radix(hi, 16).unwrap() << 32) | u64::from_str_radix(lo, 16).unwrap()
}

/// The end of what `info` says the streamer stored, if it stored anything.
fn streamed_lsn(setup: &Setup) -> Option<u64> {
    setup.info()[0]["wal_stream"]["stored_lsn"].as_str().map(lsn)
}

#[test]
fn a_restore_after_a_primary_crash_holds_every_commit_older_than_a_second() {
    let dir = TestDir::new("wal_stream_crash");
    let mut setup = Setup::new(&dir, "local", "", &[]);
    setup.strata_ok(&["stanza-create"]);
    setup.pg.psql("CREATE TABLE commits (id int PRIMARY KEY, pad text)");
    setup.pg.pgbench_init(5);
    setup.backup("full");

    let mut streamer = Streamer::start(&setup, "wal-stream");
    wait_until("the streamer's slot to be active", Duration::from_secs(60), || slot_active(&setup.pg).filter(|a| *a));

    // One row per transaction; each acknowledged commit is noted with its time.
    let acked: Arc<Mutex<Vec<(i32, Instant)>>> = Arc::default();
    let conn = setup.pg.conn_string();
    let writer = {
        let acked = acked.clone();
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async move {
                let (client, connection) = tokio_postgres::connect(&conn, tokio_postgres::NoTls).await.unwrap();
                tokio::spawn(connection);
                for id in 1.. {
                    let pad = "x".repeat(500);
                    if client.execute("INSERT INTO commits VALUES ($1, $2)", &[&id, &pad]).await.is_err() {
                        return;
                    }
                    acked.lock().unwrap().push((id, Instant::now()));
                }
            })
        })
    };
    // pgbench beside it, so that segments fill and switch on their own while streaming.
    let bench = setup.pg.pgbench_run_background(120, 2);
    let count = |acked: &Arc<Mutex<Vec<(i32, Instant)>>>| acked.lock().unwrap().len();
    wait_until("200 commits", Duration::from_secs(60), || (count(&acked) >= 200).then_some(()));
    // A segment ends while streaming: the streamer archives it whole, then streams the next one.
    setup.pg.psql("SELECT pg_switch_wal()");
    wait_until("400 commits", Duration::from_secs(60), || (count(&acked) >= 400).then_some(()));
    let written = lsn(&setup.pg.psql("SELECT pg_current_wal_lsn()"));
    wait_until("the streamer to store what was written", Duration::from_secs(60), || {
        streamed_lsn(&setup).filter(|l| *l >= written)
    });
    let before_crash = count(&acked);
    wait_until("400 more commits", Duration::from_secs(60), || (count(&acked) >= before_crash + 400).then_some(()));
    let segments_streamed = wait_until("a segment filled under load", Duration::from_secs(120), || {
        let n: u64 = setup.pg.psql("SELECT (pg_current_wal_lsn() - '0/0'::pg_lsn)::bigint / (16 * 1024 * 1024)").parse().unwrap();
        (n > (written >> 24) + 1).then_some(n)
    });
    eprintln!("streaming reached segment {segments_streamed}");

    let crash = Instant::now();
    setup.pg.allow_log(r"archive command was terminated by signal 3: Quit");
    setup.pg.stop_immediate();
    writer.join().unwrap();
    drop(bench);
    let acked = acked.lock().unwrap().clone();
    let last = acked.last().unwrap().0;
    let required = acked.iter().filter(|(_, at)| *at + Duration::from_secs(1) <= crash).map(|(id, _)| *id).max().unwrap();
    wait_until("the streamer to notice the crash", Duration::from_secs(60), || {
        streamer.log_text().contains("WAL streaming interrupted").then_some(())
    });
    let status = streamer.signal(libc::SIGTERM);
    assert!(status.success(), "wal-stream exited with {status} after SIGTERM:\n{}", streamer.log_text());
    let log = streamer.log_text();
    assert!(!log.contains("panicked"), "{log}");

    let info = setup.info();
    let stream = &info[0]["wal_stream"];
    assert!(stream["segment"].is_string(), "info shows no streamed position: {info:#}");
    let text = setup.strata_ok(&["info"]);
    assert!(text.contains("wal stream: stored up to"), "{text}");

    let copy = setup.restore_and_start("restored", &[]);
    let restored: i32 = copy.psql("SELECT COALESCE(max(id), 0) FROM commits").parse().unwrap();
    let complete: i64 = copy.psql(&format!("SELECT count(*) FROM commits WHERE id <= {required}")).parse().unwrap();
    eprintln!(
        "acknowledged {last} commits; {required} more than 1 s before the crash; restored up to {restored} ({} lost)",
        last - restored
    );
    assert_eq!(complete, i64::from(required), "commits older than a second before the crash are missing");
    // The segment being written at the crash came from the streamer's partial.
    let copy_log = std::fs::read_to_string(copy.log_file()).unwrap();
    assert!(copy_log.contains("served its streamed part"), "recovery did not use a streamed partial segment:\n{copy_log}");
    assert!(restored >= required, "restored up to {restored}, needed {required}");
}

#[test]
fn a_slot_left_by_a_dead_streamer_is_reported() {
    let dir = TestDir::new("wal_stream_slot");
    let setup = Setup::new(&dir, "local", "", &[]);
    setup.strata_ok(&["stanza-create"]);
    let mut streamer = Streamer::start(&setup, "wal-stream");
    wait_until("the streamer's slot to be active", Duration::from_secs(60), || slot_active(&setup.pg).filter(|a| *a));
    let out = setup.strata_ok(&["check"]);
    assert!(out.contains(&format!("WAL streamer connected to slot {SLOT}")), "{out}");
    // info: where the stream stands against the cluster, and the slot.
    setup.pg.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS n");
    let written = lsn(&setup.pg.psql("SELECT pg_current_wal_lsn()"));
    wait_until("the streamer to store what was written", Duration::from_secs(60), || {
        streamed_lsn(&setup).filter(|l| *l >= written)
    });
    let info = setup.info();
    assert_eq!(info[0]["wal_stream_slot"]["active"], true, "{info:#}");
    assert!(info[0]["wal_stream"]["lag_bytes"].is_u64(), "{info:#}");
    let text = setup.strata_ok(&["info"]);
    assert!(text.contains(&format!("wal stream slot: {SLOT} in use")), "{text}");

    streamer.signal(libc::SIGKILL);
    wait_until("the slot to be inactive", Duration::from_secs(60), || slot_active(&setup.pg).filter(|a| !a));
    let line = setup.strata_fails(&["check"]);
    assert!(line.contains(&format!("replication slot {SLOT} has no WAL streamer connected")), "{line}");
    assert!(line.contains("pg_drop_replication_slot"), "{line}");
    let info = setup.info();
    assert_eq!(info[0]["wal_stream_slot"]["active"], false, "{info:#}");
    let reasons = info[0]["status"]["reasons"].to_string();
    assert!(reasons.contains("wal-stream-slot") && info[0]["status"]["status"] == "critical", "{info:#}");

    // Started again, it takes the slot back and check passes.
    let _streamer = Streamer::start(&setup, "wal-stream-2");
    wait_until("the slot to be active again", Duration::from_secs(60), || slot_active(&setup.pg).filter(|a| *a));
    setup.strata_ok(&["check"]);
}

#[test]
fn over_nats_the_stream_goes_through_the_fleets_sealers_and_uploaders_and_shows_in_metrics() {
    let dir = TestDir::new("wal_stream_nats");
    let nats = NatsServer::start(&dir);
    // Declared before the cluster so they are dropped after it: a cluster shutting down still pushes WAL,
    // through the sealers and uploaders.
    let _services;
    let setup = Setup::new(&dir, &nats.url(), "", &[]);
    let port = reserve_port();
    setup.append_config(&format!("[wal_stream]\nflush_ms = 200\nstatus_interval_secs = 1\nmetrics_listen = \"127.0.0.1:{}\"", port.get()));
    _services = Services::start(&setup);
    setup.strata_ok(&["stanza-create"]);
    let _streamer = Streamer::start(&setup, "wal-stream");
    wait_until("the streamer's slot to be active", Duration::from_secs(60), || slot_active(&setup.pg).filter(|a| *a));
    setup.pg.psql("CREATE TABLE t AS SELECT generate_series(1, 100000) AS n");
    let written = lsn(&setup.pg.psql("SELECT pg_current_wal_lsn()"));
    wait_until("the streamer to store what was written", Duration::from_secs(60), || {
        streamed_lsn(&setup).filter(|l| *l >= written)
    });
    // The stored position is reported once it is durable; the lag falls to nothing while the cluster idles.
    let metric = |body: &str, name: &str| -> Option<f64> {
        body.lines().find(|l| l.starts_with(name) && l.contains("stanza=\"main\"")).and_then(|l| l.rsplit(' ').next()?.parse().ok())
    };
    wait_until("the streamer's metrics to show the stored position", Duration::from_secs(60), || {
        let body = scrape(port.get());
        let stored = metric(&body, "strata_wal_stream_stored_lsn")?;
        (stored >= written as f64 && metric(&body, "strata_wal_stream_lag_bytes")? == 0.0).then_some(())
    });
    let body = scrape(port.get());
    for name in ["strata_wal_stream_received_lsn", "strata_wal_stream_server_lsn", "strata_wal_stream_lag_seconds", "strata_wal_stream_partials_total"] {
        assert!(metric(&body, name).is_some(), "{name} missing:\n{body}");
    }
    // The slot is sampled every status interval.
    wait_until("the slot's retained WAL in the metrics", Duration::from_secs(60), || {
        metric(&scrape(port.get()), "strata_wal_stream_slot_active").filter(|v| *v == 1.0)
    });
}
