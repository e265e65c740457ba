//! The WAL scanner archive-push summarizes segments with (`strata_pg::walscan`) finds, in real WAL, exactly
//! the records `pg_waldump` shows that recovery targets stop at: commits, aborts, prepared transactions'
//! commits and rollbacks, and restore points, including those split across two segments.

mod common;

use common::*;
use std::process::Command;
use std::time::Duration;
use strata_integration::pg::pg_bin;
use strata_integration::*;
use strata_pg::walscan::{join_split_record, scan_segment, WalEvent};
use strata_pg::Lsn;

/// `YYYY-MM-DD HH:MM:SS.ffffff` (UTC) as Unix microseconds.
fn utc_micros(date: &str, time: &str) -> i64 {
    let d: Vec<i64> = date.split('-').map(|p| p.parse().unwrap()).collect();
    let (hms, frac) = time.split_once('.').unwrap_or((time, "0"));
    let t: Vec<i64> = hms.split(':').map(|p| p.parse().unwrap()).collect();
    let (y, m) = if d[1] <= 2 { (d[0] - 1, d[1] + 9) } else { (d[0], d[1] - 3) };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + (153 * m + 2) / 5 + d[2] - 1;
    let days = era * 146097 + doe - 719468;
    let micros: i64 = format!("{frac:0<6}")[..6].parse().unwrap();
    (days * 86400 + t[0] * 3600 + t[1] * 60 + t[2]) * 1_000_000 + micros
}

/// The events of pg_waldump's output, in the scanner's form.
fn waldump_events(text: &str) -> Vec<WalEvent> {
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(desc) = line.split("desc: ").nth(1) else { continue };
        let lsn: Lsn = line.split("lsn: ").nth(1).unwrap().split(',').next().unwrap().parse().unwrap();
        let words: Vec<&str> = desc.split_whitespace().collect();
        if let Some(name) = desc.strip_prefix("RESTORE_POINT ").filter(|_| line.contains("rmgr: XLOG")) {
            // pg_waldump shows the name but not the time; the scanner's time is checked by the PITR tests.
            out.push(WalEvent::RestorePoint { lsn, name: name.trim_end().to_string(), time: 0 });
            continue;
        }
        if !line.contains("rmgr: Transaction") {
            continue;
        }
        let (commit, prepared) = match words[0] {
            "COMMIT" => (true, false),
            "ABORT" => (false, false),
            "COMMIT_PREPARED" => (true, true),
            "ABORT_PREPARED" => (false, true),
            _ => continue,
        };
        let (xid, rest) = if prepared {
            (words[1].trim_end_matches(':').parse().unwrap(), &words[2..])
        } else {
            (line.split("tx:").nth(1).unwrap().split(',').next().unwrap().trim().parse().unwrap(), &words[1..])
        };
        out.push(WalEvent::XactEnd { lsn, xid, time: utc_micros(rest[0], rest[1]), commit });
    }
    out
}

#[test]
fn the_scanner_finds_what_pg_waldump_shows() {
    let dir = TestDir::new("wal_summary");
    let setup = Setup::new(&dir, "local", "", &[("max_prepared_transactions", "5")]);
    setup.strata_ok(&["stanza-create"]);
    setup.pg.pgbench_init(1);
    setup.pg.psql(
        "CREATE TABLE t (x int);
         BEGIN; INSERT INTO t VALUES (1); ROLLBACK;
         SELECT pg_create_restore_point('first point');
         BEGIN; INSERT INTO t VALUES (2); PREPARE TRANSACTION 'p1';
         COMMIT PREPARED 'p1';
         BEGIN; INSERT INTO t VALUES (3); PREPARE TRANSACTION 'p2';
         ROLLBACK PREPARED 'p2';",
    );
    setup.pg.pgbench_transactions(300, 2);
    // Transactions that write nothing but their commit record: every record crossing a segment's end is
    // then a commit, split between two segments. A 40-byte commit ends exactly at a given segment's end
    // one time in five (records are 8-byte aligned), so the stream spans four segment ends (about 64 MB
    // of WAL): with 700,000 commits and one or two ends it failed about one run in five.
    setup.pg.psql(
        "SET synchronous_commit = off;
         CREATE PROCEDURE commits(n int) LANGUAGE plpgsql AS $$
         BEGIN FOR i IN 1..n LOOP PERFORM txid_current(); COMMIT; END LOOP; END $$;
         CALL commits(1600000);
         SELECT pg_create_restore_point('last point');",
    );
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(120));

    let work = dir.subdir("segments");
    let mut names: Vec<String> = snapshot(&setup.repo)
        .into_keys()
        .filter_map(|k| k.rsplit('/').next().map(str::to_string))
        .filter(|n| n.len() == 24)
        .collect();
    names.sort();
    for n in &names {
        setup.strata_ok(&["archive-get", n, work.join(n).to_str().unwrap()]);
    }
    let dump = Command::new(pg_bin("pg_waldump"))
        .env("TZ", "UTC")
        .arg("--path")
        .arg(&work)
        .arg(&names[0])
        .arg(names.last().unwrap())
        .output()
        .expect("pg_waldump runs");
    let text = String::from_utf8_lossy(&dump.stdout);
    let want = waldump_events(&text);

    let mut got = Vec::new();
    let mut pending: Option<(Vec<u8>, Lsn)> = None;
    let mut joined = 0;
    for n in &names {
        let scan = scan_segment(&std::fs::read(work.join(n)).unwrap()).unwrap_or_else(|e| panic!("{n}: {e}"));
        if let Some((tail, lsn)) = pending.take() {
            if let Some(e) = join_split_record(&tail, lsn, &scan.head) {
                got.push(e);
                joined += 1;
            }
        }
        got.extend(scan.events.iter().cloned());
        if !scan.tail.is_empty() {
            pending = Some((scan.tail.clone(), scan.tail_lsn));
        }
    }
    for e in got.iter_mut() {
        if let WalEvent::RestorePoint { time, .. } = e {
            *time = 0;
        }
    }
    assert!(want.len() > 1_600_000, "pg_waldump found {} events", want.len());
    assert_eq!(want.len(), got.len(), "pg_waldump and the scan disagree on the number of events");
    for (w, g) in want.iter().zip(&got) {
        assert_eq!(w, g);
    }
    assert!(joined >= 1, "no commit was split across segments ({} segments)", names.len());
    assert!(got.iter().any(|e| matches!(e, WalEvent::RestorePoint { name, .. } if name == "first point")));
    assert!(got.iter().any(|e| matches!(e, WalEvent::XactEnd { commit: false, .. })));
}
