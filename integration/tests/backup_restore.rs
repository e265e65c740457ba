//! A full backup of a cluster under pgbench load, restored into a new directory: over a real nats-server
//! with every service a separate process, and in single-host mode.

mod common;

use common::*;
use std::time::Duration;
use strata_integration::*;

/// Backs up under load, restores, and checks the copy: it starts, recovers, holds the same rows as the
/// source (after the source's WAL is archived) and pg_amcheck finds nothing.
fn backup_under_load_and_restore(setup: &Setup) {
    setup.pg.pgbench_init(5);
    setup.strata_ok(&["check"]);

    // pgbench runs for a fixed time longer than the backup and is waited for, not killed: a killed client
    // leaves "connection to client lost" in the server log, which the log check rightly refuses.
    let bench = setup.pg.pgbench_run_background(10, 2);
    let out = setup.strata_ok(&["backup"]);
    assert!(out.contains("committed"), "{out}");
    let bench_out = bench.wait().expect("pgbench failed");
    assert!(bench_out.contains("number of transactions actually processed"), "{bench_out}");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(120));

    let info = setup.info();
    let backups = info[0]["backups"].as_array().unwrap();
    assert_eq!(backups.len(), 1, "{info}");
    let b = &backups[0];
    assert_eq!(b["type"], "full");
    assert!(b["database_bytes"].as_u64().unwrap() > 70_000_000, "{b}");
    assert!(b["stored_bytes"].as_u64().unwrap() > 0, "{b}");
    assert_eq!(b["checksum_failures"], 0, "{b}");
    assert!(info[0]["archive"]["first"].is_string(), "{info}");

    let copy = setup.restore_and_start("restored", &[]);
    assert_same_tables(&setup.pg, &copy, "postgres");
    if let Err(e) = copy.pg_amcheck() {
        panic!("pg_amcheck on the restored cluster: {e}");
    }
    // The copy accepts writes once recovery ended.
    copy.psql("CREATE TABLE after_restore (x int); INSERT INTO after_restore VALUES (1)");
    LogCheck::postgres().assert_clean(setup.pg.log_file());
    LogCheck::postgres().assert_clean(copy.log_file());
}

#[test]
fn full_backup_over_nats_with_separate_services() {
    let dir = TestDir::new("backup_nats");
    let nats = NatsServer::start(&dir);
    // Declared before the cluster so they are dropped after it: a cluster shutting down may still push WAL.
    let services;
    let setup = Setup::new(&dir, &nats.url(), "", &[]);
    services = Services::start(&setup);
    setup.strata_ok(&["stanza-create"]);
    backup_under_load_and_restore(&setup);
    for s in [&services.collector, &services.sealer, &services.uploader] {
        LogCheck::new().assert_clean(s.log_file());
    }
}

#[test]
fn full_backup_in_single_host_mode() {
    let dir = TestDir::new("backup_local");
    let setup = Setup::new(&dir, "local", "", &[]);
    setup.strata_ok(&["stanza-create"]);
    backup_under_load_and_restore(&setup);
}
