//! The full / incremental / differential ladder: each backup restores to exactly its own end, and an
//! incremental stores the changed pages, not the changed files.

mod common;

use common::*;
use std::time::Duration;
use strata_integration::*;


#[test]
fn full_incr_diff_incr_each_restore_to_their_end() {
    let dir = TestDir::new("incremental");
    let setup = Setup::new(&dir, "local", "", &[]);
    setup.strata_ok(&["stanza-create"]);
    setup.pg.pgbench_init(5);

    // Nothing writes while a backup runs, so the tables right after it are the tables at its end.
    let mut expected = Vec::new();
    let full = setup.backup("full");
    expected.push((full.clone(), setup.pg.table_digests("postgres")));

    setup.pg.pgbench_run_background(3, 2).wait().expect("pgbench");
    let incr1 = setup.backup("incr");
    expected.push((incr1.clone(), setup.pg.table_digests("postgres")));

    setup.pg.pgbench_run_background(3, 2).wait().expect("pgbench");
    let diff = setup.backup("diff");
    expected.push((diff.clone(), setup.pg.table_digests("postgres")));

    setup.pg.pgbench_run_background(3, 2).wait().expect("pgbench");
    setup.pg.psql("CREATE TABLE late AS SELECT g FROM generate_series(1, 1000) g");
    let incr2 = setup.backup("incr");
    expected.push((incr2.clone(), setup.pg.table_digests("postgres")));

    // A few rows of pgbench_accounts change: the incremental stores those pages, not the table's files.
    setup.pg.psql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 5000 = 0");
    let incr3 = setup.backup("incr");
    expected.push((incr3.clone(), setup.pg.table_digests("postgres")));
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(120));

    let info = setup.info();
    let backups = info[0]["backups"].as_array().unwrap();
    let summary: Vec<(String, String, Option<String>)> = backups
        .iter()
        .map(|b| {
            (b["label"].as_str().unwrap().to_string(), b["type"].as_str().unwrap().to_string(), b["reference"].as_str().map(str::to_string))
        })
        .collect();
    assert_eq!(
        summary,
        vec![
            (full.clone(), "full".into(), None),
            (incr1.clone(), "incr".into(), Some(full.clone())),
            (diff.clone(), "diff".into(), Some(full.clone())),
            (incr2.clone(), "incr".into(), Some(diff.clone())),
            (incr3.clone(), "incr".into(), Some(incr2.clone())),
        ]
    );
    let stored = |i: usize| backups[i]["stored_bytes"].as_u64().unwrap();
    let database = |i: usize| backups[i]["database_bytes"].as_u64().unwrap();
    // 100 rows changed in a 64 MB table: the increment holds those pages (plus small files that
    // changed), a small fraction of the full backup.
    let table: u64 = setup.pg.psql("SELECT pg_relation_size('pgbench_accounts')").parse().unwrap();
    eprintln!("pgbench_accounts {table} bytes; full stored {}; incr after 100 updated rows stored {}", stored(0), stored(4));
    assert!(stored(4) * 20 < table, "the incremental stored {} bytes for a {table}-byte table", stored(4));
    assert!(backups[4]["read_bytes"].as_u64().unwrap() < database(4), "unchanged files were read again");
    assert!(stored(1) < stored(0), "an incremental after a short pgbench run stored as much as the full");

    for (i, (label, digests)) in expected.iter().enumerate() {
        let name = format!("restored-{i}");
        let copy = setup.restore_and_start(&name, &["--set", label, "--type", "immediate"]);
        assert_eq!(&copy.table_digests("postgres"), digests, "restore of {label} differs from the source at its end");
        if let Err(e) = copy.pg_amcheck() {
            panic!("pg_amcheck on the restore of {label}: {e}");
        }
    }
}

/// Over NATS the collector has no repository access: the reference manifest reaches it through an
/// uploader, and the incremental restores exactly.
#[test]
fn incremental_over_nats_with_separate_services() {
    let dir = TestDir::new("incremental_nats");
    let nats = NatsServer::start(&dir);
    // Declared before the cluster so they are dropped after it: a cluster shutting down may still push WAL.
    let _services;
    let setup = Setup::new(&dir, &nats.url(), "", &[]);
    _services = Services::start(&setup);
    setup.strata_ok(&["stanza-create"]);
    setup.pg.pgbench_init(2);
    let full = setup.backup("full");
    setup.pg.psql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 1000 = 0");
    let incr = setup.backup("incr");
    let digests = setup.pg.table_digests("postgres");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));
    let info = setup.info();
    assert_eq!(info[0]["backups"][1]["reference"], full.as_str(), "{info}");
    let copy = setup.restore_and_start("restored", &["--set", &incr, "--type", "immediate"]);
    assert_eq!(copy.table_digests("postgres"), digests);
}
