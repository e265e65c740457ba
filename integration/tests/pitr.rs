//! Point-in-time recovery: the seed's scenario (a table's rows deleted under load, the cluster brought back
//! to just before) with every kind of target, targets the archive cannot reach refused before anything is
//! written, a restore after an earlier PITR following the new timeline, and a restored replica.
//!
//! The moment a target names is taken while pgbench is between runs, so that "the state at T" is one set
//! of committed transactions; the backup, and the writing before and after that moment, run under load.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;
use strata_integration::*;

/// Restores into `<test dir>/<name>` with `args`, starts PostgreSQL on it (not archiving), and returns it
/// with what restore printed.
fn restore_and_boot(setup: &Setup, name: &str, args: &[&str]) -> (PgCluster, String) {
    let target = setup.dir.path().join(name);
    let mut all = vec!["restore", "--pg-data", target.to_str().unwrap()];
    all.extend_from_slice(args);
    let out = setup.strata_ok(&all);
    eprintln!("restore {args:?}: {out}");
    let mut copy = PgCluster::for_data_dir(&setup.dir, name, &target);
    copy.set_start_setting("archive_mode", "off");
    copy.start();
    (copy, out)
}

/// The copy promoted at the target: the same rows as at that moment, and it accepts writes.
fn assert_promoted_at(copy: &mut PgCluster, digests: &BTreeMap<String, String>, what: &str) {
    copy.wait_recovery_end(Duration::from_secs(300));
    assert_eq!(&copy.table_digests("postgres"), digests, "{what}: tables differ from the target's");
    assert_eq!(copy.psql("SELECT count(*) FROM orders"), "5000", "{what}");
    copy.psql("INSERT INTO orders VALUES (0, 'written after the restore')");
    LogCheck::postgres().assert_clean(copy.log_file());
    copy.stop();
}

fn segment_path(repo: &std::path::Path, name: &str) -> PathBuf {
    repo.join("stanza").join(STANZA).join("wal").join(&name[..16]).join(name)
}

#[test]
fn point_in_time_targets_under_pgbench_load() {
    let dir = TestDir::new("pitr_targets");
    let setup = Setup::new(&dir, "local", "", &[]);
    setup.strata_ok(&["stanza-create"]);
    setup.pg.pgbench_init(2);
    setup.pg.psql(
        "CREATE TABLE orders (id int PRIMARY KEY, note text);
         INSERT INTO orders SELECT g, 'order ' || g FROM generate_series(1, 5000) g;
         CREATE TABLE markers (name text);
         INSERT INTO markers VALUES ('before backup')",
    );
    let before_backup = setup.pg.psql("SELECT clock_timestamp()");

    // The backup runs under load, and the load goes on after it.
    let bench = setup.pg.pgbench_run_background(8, 2);
    let label = setup.backup("full");
    setup.pg.psql("INSERT INTO markers VALUES ('after backup')");
    bench.wait().expect("pgbench failed");
    setup.pg.pgbench_run_background(3, 2).wait().expect("pgbench failed");

    // The moment to return to: its time, LSN and a restore point, and what every table holds.
    let t = setup.pg.psql("SELECT clock_timestamp()");
    let lsn = setup.pg.psql("SELECT pg_current_wal_insert_lsn()");
    let digests = setup.pg.table_digests("postgres");
    setup.pg.psql("SELECT pg_create_restore_point('before_delete')");
    // The mistake, then more writing.
    let xid = setup.pg.psql("BEGIN; DELETE FROM orders; SELECT txid_current(); COMMIT;");
    assert_eq!(setup.pg.psql("SELECT count(*) FROM orders"), "0");
    setup.pg.pgbench_run_background(3, 2).wait().expect("pgbench failed");
    setup.pg.psql("INSERT INTO markers VALUES ('after delete')");
    // The nightly backup runs before anyone notices: restores to the moment must pass it over.
    let later = setup.backup("full");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(120));

    let (mut copy, out) = restore_and_boot(&setup, "by_time", &["--type", "time", "--target", &t, "--target-action", "promote"]);
    assert!(out.contains(&format!("restored backup {label}")) && out.contains("stops at the first transaction end after"), "{out}");
    assert_promoted_at(&mut copy, &digests, "time");

    let (mut copy, out) = restore_and_boot(&setup, "by_lsn", &["--type", "lsn", "--target", &lsn]);
    assert!(out.contains(&format!("stops at LSN {lsn}")), "{out}");
    assert_promoted_at(&mut copy, &digests, "lsn");

    let (mut copy, _) = restore_and_boot(&setup, "by_xid", &["--type", "xid", "--target", &xid, "--target-exclusive"]);
    assert_promoted_at(&mut copy, &digests, "xid");

    let (mut copy, out) = restore_and_boot(&setup, "by_name", &["--type", "name", "--target", "before_delete"]);
    assert!(out.contains("restore point 'before_delete'"), "{out}");
    assert_promoted_at(&mut copy, &digests, "name");

    // Paused at the target: read-only, in recovery, the target's rows.
    let (mut copy, _) = restore_and_boot(&setup, "paused", &["--type", "time", "--target", &t, "--target-action", "pause"]);
    copy.wait_for_query("SELECT pg_get_wal_replay_pause_state()", "paused", Duration::from_secs(300));
    assert_eq!(copy.psql("SELECT pg_is_in_recovery()"), "t");
    assert_eq!(copy.table_digests("postgres"), digests, "paused: tables differ from the target's");
    copy.allow_log("ERROR:  cannot execute INSERT in a read-only transaction");
    let refused = copy.try_psql_db("postgres", "INSERT INTO orders VALUES (0, 'x')").expect_err("a paused copy is read-only");
    assert!(refused.to_string().contains("read-only"), "{refused}");
    LogCheck::postgres().allow("ERROR:  cannot execute INSERT in a read-only transaction").allow(r"STATEMENT:  INSERT INTO orders").assert_clean(copy.log_file());
    copy.stop();

    // Immediate: the backup's consistent point, before what was written after it returned.
    let (mut copy, _) = restore_and_boot(&setup, "immediate", &["--type", "immediate", "--set", &label]);
    copy.wait_recovery_end(Duration::from_secs(300));
    assert_eq!(copy.psql("SELECT string_agg(name, ',' ORDER BY name) FROM markers"), "before backup");
    assert_eq!(copy.psql("SELECT count(*) FROM orders"), "5000");
    if let Err(e) = copy.pg_amcheck() {
        panic!("pg_amcheck on the immediate restore: {e}");
    }
    copy.stop();

    // Targets the archive cannot reach: refused with the reason, nothing written.
    let before = snapshot(&setup.repo);
    let nowhere = dir.path().join("nowhere");
    let line = setup.strata_fails(&["restore", "--pg-data", nowhere.to_str().unwrap(), "--type", "time", "--target", &before_backup]);
    assert!(line.contains("before the end of backup"), "{line}");
    let line = setup.strata_fails(&["restore", "--pg-data", nowhere.to_str().unwrap(), "--type", "lsn", "--target", "0/1000000"]);
    assert!(line.contains("after the target LSN"), "{line}");
    let line = setup.strata_fails(&["restore", "--pg-data", nowhere.to_str().unwrap(), "--type", "time", "--target", &t, "--set", &later]);
    assert!(line.contains(&format!("before the end of backup {later}")), "{line}");
    let line = setup.strata_fails(&["restore", "--pg-data", nowhere.to_str().unwrap(), "--type", "name", "--target", "no_such_point"]);
    assert!(line.contains("restore point 'no_such_point' is not in the WAL archived"), "{line}");
    assert_eq!(before, snapshot(&setup.repo), "a refused restore changed the repository");

    // A segment between the backup's end and the target goes missing.
    let info = setup.info();
    let wal_stop = info[0]["backups"][0]["wal_stop"].as_str().unwrap().to_string();
    let next = format!("{}{:08X}", &wal_stop[..16], u32::from_str_radix(&wal_stop[16..], 16).unwrap() + 1);
    std::fs::remove_file(segment_path(&setup.repo, &next)).expect("the segment after the backup is archived");
    let before = snapshot(&setup.repo);
    let line = setup.strata_fails(&["restore", "--pg-data", nowhere.to_str().unwrap(), "--type", "time", "--target", &t]);
    assert!(line.contains(&format!("WAL is missing between {wal_stop} and")) && line.contains(&next), "{line}");
    let line = setup.strata_fails(&["restore", "--pg-data", nowhere.to_str().unwrap(), "--set", &label]);
    assert!(line.contains("recovery would stop at"), "{line}");
    assert!(!nowhere.exists(), "a refused restore created its target");
    assert_eq!(before, snapshot(&setup.repo), "a refused restore changed the repository");

    // check and info see the gap.
    let line = setup.strata_fails(&["check"]);
    assert!(line.contains(&next) && line.contains("missing"), "{line}");
    let info = setup.info();
    let gaps = info[0]["archive"]["gaps"].as_array().expect("gaps");
    assert_eq!(gaps.len(), 1, "{info}");
    assert_eq!(gaps[0]["first_missing"], next.as_str(), "{info}");
    assert_eq!(gaps[0]["last_missing"], next.as_str(), "{info}");
    let window = &info[0]["backups"][0]["recovery_window"];
    assert_eq!(window["to_segment"], wal_stop.as_str(), "{info}");
    assert_eq!(window["gap_after"]["first_missing"], next.as_str(), "{info}");
    LogCheck::postgres().assert_clean(setup.pg.log_file());
}

#[test]
fn restore_after_a_pitr_follows_the_new_timeline() {
    let dir = TestDir::new("pitr_timeline");
    let mut setup = Setup::new(&dir, "local", "", &[]);
    setup.strata_ok(&["stanza-create"]);
    setup.pg.psql(
        "CREATE TABLE orders (id int PRIMARY KEY, note text);
         INSERT INTO orders SELECT g, 'order ' || g FROM generate_series(1, 5000) g",
    );
    setup.backup("full");
    setup.pg.psql("INSERT INTO orders VALUES (5001, 'after the backup')");
    // A backup's stop time is kept in whole seconds, so a time target must be a second past it.
    setup.pg.psql("SELECT pg_sleep(1.1)");
    let t = setup.pg.psql("SELECT clock_timestamp()");
    setup.pg.psql("DELETE FROM orders");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));
    // The old primary is gone; its timeline stays in the archive, past the point the PITR branches at.
    setup.pg.stop();

    // First PITR: the copy promotes onto timeline 2 and archives into the same stanza.
    let first = dir.path().join("first");
    setup.strata_ok(&["restore", "--pg-data", first.to_str().unwrap(), "--type", "time", "--target", &t]);
    let mut first = PgCluster::for_data_dir(&dir, "first", &first);
    first.start();
    first.wait_recovery_end(Duration::from_secs(300));
    assert_eq!(first.psql("SELECT count(*) FROM orders"), "5001");
    first.psql("CHECKPOINT");
    assert_eq!(first.psql("SELECT timeline_id FROM pg_control_checkpoint()"), "2");
    first.psql("INSERT INTO orders VALUES (6000, 'on timeline 2')");
    first.switch_wal_and_wait_archived(Duration::from_secs(60));
    let on_tl2 = first.table_digests("postgres");
    assert!(setup.repo.join("stanza/main/wal/history/00000002.history").is_file());

    // The same backup again, to the latest timeline: it follows timeline 2 (fetching WAL ahead of recovery,
    // across the switch of timelines).
    let (mut latest, out) = restore_and_boot(&setup, "latest", &["--wal-prefetch", "3"]);
    assert!(out.contains("on timeline 2"), "{out}");
    latest.wait_recovery_end(Duration::from_secs(300));
    let auto_conf = std::fs::read_to_string(latest.data_dir().join("postgresql.auto.conf")).unwrap();
    assert!(auto_conf.contains("archive-get --prefetch 3 %f"), "{auto_conf}");
    // Recovery ran to the archive's end, where the spool is removed.
    assert!(!latest.data_dir().join("pg_wal/strata-spool").exists(), "the prefetch spool was left behind");
    assert_eq!(latest.table_digests("postgres"), on_tl2);
    latest.psql("CHECKPOINT");
    assert_eq!(latest.psql("SELECT timeline_id FROM pg_control_checkpoint()"), "3");
    LogCheck::postgres().assert_clean(latest.log_file());
    latest.stop();

    // Staying on the backup's timeline replays the old primary's history, delete included.
    let (mut current, _) = restore_and_boot(&setup, "current", &["--target-timeline", "current"]);
    current.wait_recovery_end(Duration::from_secs(300));
    assert_eq!(current.psql("SELECT count(*) FROM orders"), "0");
    current.stop();

    // A timeline the archive does not know is refused.
    let nowhere = dir.path().join("nowhere");
    let line = setup.strata_fails(&["restore", "--pg-data", nowhere.to_str().unwrap(), "--target-timeline", "7"]);
    assert!(line.contains("00000007.history"), "{line}");
    LogCheck::postgres().assert_clean(first.log_file());
}

#[test]
fn a_standby_restore_streams_from_the_primary() {
    let dir = TestDir::new("pitr_standby");
    let setup = Setup::new(&dir, "local", "", &[]);
    setup.strata_ok(&["stanza-create"]);
    setup.pg.psql("CREATE TABLE t (x int); INSERT INTO t VALUES (1)");
    setup.backup("full");
    setup.pg.psql("INSERT INTO t VALUES (2)");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));

    let nowhere = dir.path().join("nowhere");
    let line = setup.strata_fails(&["restore", "--pg-data", nowhere.to_str().unwrap(), "--type", "standby", "--target-action", "promote"]);
    assert!(line.contains("--target-action"), "{line}");

    let (replica, out) = restore_and_boot(&setup, "replica", &["--type", "standby"]);
    assert!(out.contains("replica"), "{out}");
    assert!(replica.data_dir().join("standby.signal").is_file());
    assert!(!replica.data_dir().join("recovery.signal").exists());
    assert_eq!(replica.psql("SELECT pg_is_in_recovery()"), "t");
    replica.wait_for_query("SELECT count(*) FROM t", "2", Duration::from_secs(120));
    // Rows written on the primary now arrive by streaming, not through the archive.
    setup.pg.psql("INSERT INTO t VALUES (3)");
    replica.wait_for_query("SELECT count(*) FROM t", "3", Duration::from_secs(120));
    replica.wait_for_query("SELECT status FROM pg_stat_wal_receiver", "streaming", Duration::from_secs(60));
    LogCheck::postgres().assert_clean(replica.log_file());
}

#[test]
fn bad_recovery_options_are_one_error_line_and_write_nothing() {
    let dir = TestDir::new("pitr_bad_input");
    let setup = Setup::new(&dir, "local", "", &[]);
    setup.strata_ok(&["stanza-create"]);
    setup.pg.psql("CREATE TABLE t (x int)");
    setup.backup("full");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));
    let before = snapshot(&setup.repo);
    let target = dir.path().join("restored");
    let pg_data = target.to_str().unwrap();
    let long_name = "n".repeat(64);
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["--type", "time"], "needs --target"),
        (vec!["--type", "time", "--target", "yesterday"], "expected a time like"),
        (vec!["--type", "time", "--target", "2026-02-30 10:00:00+00"], "not a valid date"),
        (vec!["--type", "time", "--target", "2026-11-24 10:00:00 Mars/Olympus"], "unknown time zone"),
        (vec!["--type", "lsn", "--target", "5000028"], "invalid lsn"),
        (vec!["--type", "xid", "--target", "-1"], "not a transaction id"),
        (vec!["--type", "name", "--target", &long_name], "1 to 63 bytes"),
        (vec!["--target", "x"], "--target is only for"),
        (vec!["--type", "immediate", "--target", "x"], "--target is only for"),
        (vec!["--target-action", "pause"], "--target-action is only for"),
        (vec!["--type", "name", "--target", "rp", "--target-exclusive"], "--target-exclusive is only for"),
        (vec!["--target-timeline", "newest"], "expected current, latest or a timeline number"),
        (vec!["--type", "nonsense"], "invalid value 'nonsense'"),
        (vec!["--type", "xid", "--target", "99999999"], "is not in the WAL archived"),
        (vec!["--set", "20200101-000000F"], "does not exist"),
    ];
    for (extra, expect) in cases {
        let mut args = vec!["restore", "--pg-data", pg_data];
        args.extend_from_slice(&extra);
        let line = setup.strata_fails(&args);
        assert!(line.contains(expect), "{args:?}: {line}");
        assert!(!target.exists(), "{args:?} created the target");
    }
    assert_eq!(before, snapshot(&setup.repo), "a refused restore changed the repository");
}
