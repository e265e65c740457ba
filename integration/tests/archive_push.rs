//! The WAL archive's promises: a file is stored once and never replaced, a missing file is reported at
//! once, and with the bus down archive-push fails (PostgreSQL retries) and no segment is lost.

mod common;

use common::*;
use std::time::Duration;
use strata_integration::*;

#[test]
fn same_content_is_accepted_and_different_content_is_refused() {
    let dir = TestDir::new("archive_idempotent");
    let setup = Setup::new(&dir, "local", "", &[]);
    setup.strata_ok(&["stanza-create"]);
    setup.pg.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 10000) g");
    let segment = setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));

    let work = dir.subdir("work");
    let original = work.join("original");
    setup.strata_ok(&["archive-get", &segment, original.to_str().unwrap()]);
    let bytes = std::fs::read(&original).unwrap();
    assert_eq!(bytes.len(), 16 << 20);

    // The same file again: accepted, with a warning.
    let same = dir.subdir("same").join(&segment);
    std::fs::write(&same, &bytes).unwrap();
    let out = setup.strata(&["archive-push", same.to_str().unwrap()]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("already archived"), "{}", describe(&out));

    // A different content under the same name: refused, and the archived copy is untouched.
    let before = snapshot(&setup.repo);
    let mut changed = bytes.clone();
    changed[100_000] ^= 0xff;
    let other = dir.subdir("other").join(&segment);
    std::fs::write(&other, &changed).unwrap();
    let line = setup.strata_fails(&["archive-push", other.to_str().unwrap()]);
    assert!(line.contains("different content"), "{line}");
    let after = snapshot(&setup.repo);
    let records = |s: &std::collections::BTreeMap<String, Vec<u8>>| {
        s.iter().filter(|(k, _)| k.contains("/wal/")).map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>()
    };
    assert_eq!(records(&before), records(&after), "the WAL records changed");
    let again = work.join("again");
    setup.strata_ok(&["archive-get", &segment, again.to_str().unwrap()]);
    assert_eq!(std::fs::read(&again).unwrap(), bytes, "the archived segment changed");

    // A file that is not archived: exit 1 with one line, and no file written.
    let missing = work.join("missing");
    let out = setup.strata(&["archive-get", "0000000100000000000000FE", missing.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert_eq!(String::from_utf8_lossy(&out.stderr).lines().count(), 1, "{}", describe(&out));
    assert!(!missing.exists());

    // A segment from another cluster is refused before anything is sent.
    let foreign = dir.subdir("foreign").join(&segment);
    let mut other_system = bytes.clone();
    other_system[24..32].copy_from_slice(&42u64.to_le_bytes());
    std::fs::write(&foreign, &other_system).unwrap();
    let line = setup.strata_fails(&["archive-push", foreign.to_str().unwrap()]);
    assert!(line.contains("database system"), "{line}");
}

/// Segment names of timeline 1 in the repository, sorted.
fn archived_segments(setup: &Setup) -> Vec<String> {
    let mut names: Vec<String> = snapshot(&setup.repo)
        .into_keys()
        .filter(|k| k.contains("/wal/"))
        .filter_map(|k| k.rsplit('/').next().map(str::to_string))
        .filter(|n| n.len() == 24 && n.starts_with("00000001"))
        .collect();
    names.sort();
    names
}

#[test]
fn archive_push_fails_while_nats_is_down_and_nothing_is_lost() {
    let dir = TestDir::new("archive_nats_down");
    let mut nats = NatsServer::start(&dir);
    // Declared before the cluster so they are dropped after it: a cluster shutting down may still push WAL.
    let _services;
    let setup = Setup::new(&dir, &nats.url(), "", &[]);
    _services = Services::start(&setup);
    setup.strata_ok(&["stanza-create"]);
    setup.pg.psql("CREATE TABLE t (x int)");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));
    let failed = |pg: &PgCluster| pg.psql("SELECT failed_count FROM pg_stat_archiver").parse::<u64>().unwrap();
    let failed_before = failed(&setup.pg);

    nats.stop();
    // archive-push itself: one error line, non-zero.
    let work = dir.subdir("work");
    let copy = work.join("000000010000000000000001");
    std::fs::write(&copy, vec![0u8; 16]).unwrap();
    let line = setup.strata_fails(&["archive-push", copy.to_str().unwrap()]);
    assert!(line.contains("message bus"), "{line}");
    // PostgreSQL's archiver fails, and keeps the segments.
    for i in 0..3 {
        setup.pg.psql(&format!("INSERT INTO t SELECT g FROM generate_series(1, 50000) g; SELECT pg_switch_wal(); -- {i}"));
    }
    wait_until_every("the archiver to fail while NATS is down", Duration::from_secs(60), Duration::from_millis(200), || {
        (failed(&setup.pg) != failed_before).then_some(())
    });

    nats.start_again();
    // Wake the archiver now rather than after its 60 s back-off.
    setup.pg.psql("SELECT pg_reload_conf()");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(180));
    let segments = archived_segments(&setup);
    let first = u64::from_str_radix(&segments[0][8..], 16).unwrap();
    let last = u64::from_str_radix(&segments[segments.len() - 1][8..], 16).unwrap();
    assert_eq!(segments.len() as u64, last - first + 1, "the archive has a gap: {segments:?}");
    assert!(segments.len() >= 4, "{segments:?}");
}
