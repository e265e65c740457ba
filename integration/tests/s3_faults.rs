//! An S3 server that fails a share of requests with 500 InternalError and 503 SlowDown (a fault-injecting
//! proxy on loopback in front of moto): backups, WAL archiving and restores succeed through Strata's
//! retries. An S3 server that cannot be reached: archive-push fails with one error line, and PostgreSQL
//! keeps the segment until it can be archived.

mod common;

use common::*;
use std::time::Duration;
use strata_integration::*;

const RETRY_WARNING: &str = "S3 request failed; retrying";

fn port_of(endpoint: &str) -> u16 {
    endpoint.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no port in {endpoint}"))
}

/// A cluster whose archive_command logs Strata's warnings (the retries) into PostgreSQL's log, with its
/// repository in `bucket` on `s3`, reached through `proxy`.
fn setup_through(dir: &TestDir, s3: &S3Server, proxy: &FaultProxy, bucket: &str) -> Setup {
    let bins = StrataBins::locate();
    let config = dir.path().join(config::CONFIG_FILE_NAME);
    let archive_command = format!("STRATA_LOG=warn {}", bins.archive_push_command(&config, STANZA));
    let setup = Setup::new(dir, "local", "", &[("archive_command", &archive_command)]);
    setup.replace_posix_repo(&s3.repo_config(bucket, "faulty").replace(&s3.endpoint(), &proxy.endpoint()));
    setup
}

fn failed_count(pg: &PgCluster) -> u64 {
    pg.psql("SELECT failed_count FROM pg_stat_archiver").parse().unwrap()
}

/// `backup --type <kind>` with Strata's warnings on; returns the label and the retries it logged.
fn backup_counting_retries(setup: &Setup, kind: &str) -> (String, usize) {
    let out = setup.strata_env(&["backup", "--type", kind], &[("STRATA_LOG", "warn")]);
    assert!(out.status.success(), "backup through the faulty S3 failed:\n{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let label = stdout.split_whitespace().nth(2).expect("label").to_string();
    (label, String::from_utf8_lossy(&out.stderr).matches(RETRY_WARNING).count())
}

#[test]
fn backup_archive_and_restore_through_an_s3_failing_a_fifth_of_requests() {
    let dir = TestDir::new("s3_faults");
    let s3 = S3Server::start(&dir);
    s3.create_bucket("strata-test");
    let proxy = FaultProxy::start(port_of(&s3.endpoint()), 20, 0x5eed_f00d);
    let setup = setup_through(&dir, &s3, &proxy, "strata-test");
    setup.strata_ok(&["stanza-create"]);
    // A segment that failed before the stanza existed is retried now, not after the archiver's back-off.
    setup.pg.psql("SELECT pg_reload_conf()");
    setup.pg.pgbench_init(5);
    // Whatever failed before the stanza existed is archived now; from here on nothing may fail.
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(180));
    let failed_before = failed_count(&setup.pg);

    let bench = setup.pg.pgbench_run_background(8, 2);
    let (full, full_retries) = backup_counting_retries(&setup, "full");
    bench.wait().expect("pgbench failed");
    let bench = setup.pg.pgbench_run_background(4, 2);
    let (incr, incr_retries) = backup_counting_retries(&setup, "incr");
    bench.wait().expect("pgbench failed");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(180));

    let counts = proxy.counts();
    let wal_retries = std::fs::read_to_string(setup.pg.log_file()).unwrap().matches(RETRY_WARNING).count();
    eprintln!(
        "through the proxy: {counts:?}; retries logged: full {full_retries}, incr {incr_retries}, archive-push {wal_retries}"
    );
    assert!(counts.internal_errors > 0 && counts.slow_downs > 0, "the proxy injected too little: {counts:?}");
    let share = counts.injected() as f64 / (counts.injected() + counts.forwarded) as f64;
    assert!((0.1..0.3).contains(&share), "{share:.2} of requests failed, not about a fifth: {counts:?}");
    assert!(full_retries > 0 && incr_retries > 0, "a backup through the faulty S3 retried nothing");
    assert!(wal_retries > 0, "archive-push through the faulty S3 retried nothing");
    assert_eq!(failed_count(&setup.pg), failed_before, "archive-push failed although every request succeeds on retry");

    // Every segment is archived, and the backups restore (through the faulty S3 as well).
    let info = setup.info();
    assert_eq!(info[0]["archive"]["gaps"].as_array().map(|g| g.len()), Some(0), "{info}");
    assert_eq!(setup.backup_labels(), vec![full, incr]);
    let copy = setup.restore_and_start("restored", &[]);
    assert_same_tables(&setup.pg, &copy, "postgres");
    if let Err(e) = copy.pg_amcheck() {
        panic!("pg_amcheck on the cluster restored through the faulty S3: {e}");
    }
    LogCheck::postgres().assert_clean(copy.log_file());
}

#[test]
fn with_s3_unreachable_archive_push_fails_and_postgresql_keeps_the_segment() {
    let dir = TestDir::new("s3_down");
    let s3 = S3Server::start(&dir);
    s3.create_bucket("strata-test");
    let proxy = FaultProxy::start(port_of(&s3.endpoint()), 0, 1);
    let setup = setup_through(&dir, &s3, &proxy, "strata-test");
    setup.strata_ok(&["stanza-create"]);
    setup.pg.psql("CREATE TABLE t (x int)");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(120));
    let failed_before = failed_count(&setup.pg);

    proxy.set_down(true);
    // archive-push itself: one error line, non-zero, after its retries.
    let pg_wal = setup.pg.data_dir().join("pg_wal");
    setup.pg.psql("INSERT INTO t SELECT g FROM generate_series(1, 50000) g");
    let segment = setup.pg.psql("SELECT pg_walfile_name(pg_switch_wal())");
    let line = setup.strata_fails(&["archive-push", pg_wal.join(&segment).to_str().unwrap()]);
    assert!(line.contains("cannot reach S3"), "{line}");
    // PostgreSQL's archiver fails, and keeps the segment and its .ready file.
    wait_until_every("the archiver to fail while S3 is unreachable", Duration::from_secs(120), Duration::from_millis(200), || {
        (failed_count(&setup.pg) != failed_before).then_some(())
    });
    let ready = pg_wal.join("archive_status").join(format!("{segment}.ready"));
    assert!(pg_wal.join(&segment).exists(), "PostgreSQL removed {segment} although it was not archived");
    assert!(ready.exists(), "{} is missing while the segment is not archived", ready.display());
    let log = std::fs::read_to_string(setup.pg.log_file()).unwrap();
    assert!(log.contains("archive command failed"), "PostgreSQL's log shows no archive failure");

    proxy.set_down(false);
    // Wake the archiver now rather than after its 60 s back-off.
    setup.pg.psql("SELECT pg_reload_conf()");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(180));
    assert!(pg_wal.join("archive_status").join(format!("{segment}.done")).exists() || !pg_wal.join(&segment).exists());
    let fetched = dir.path().join("fetched");
    setup.strata_ok(&["archive-get", &segment, fetched.to_str().unwrap()]);
    assert_eq!(std::fs::metadata(&fetched).unwrap().len(), 16 << 20);
    assert_eq!(proxy.counts().injected(), 0);
}
