//! The whole of a multi-region setup at once, on a bad day: a KMS-encrypted repository in one bucket,
//! replicated to a second bucket while the S3 server fails a fifth of all requests (500 and 503, through
//! the fault proxy), for the replicator, the WAL archive and the restore alike. Neither bucket holds a
//! readable row; the replicator's retries are counted on its metrics endpoint; after the first bucket is
//! deleted, the second restores the cluster.

mod common;

use common::*;
use std::time::Duration;
use strata_integration::*;

const MARKER: &str = "STRATA-REPLICATED-MARKER-0815";

fn port_of(endpoint: &str) -> u16 {
    endpoint.rsplit(':').next().and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("no port in {endpoint}"))
}

/// The value of one sample line (`name{labels} value`).
fn sample(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
}

fn containing(objects: &[(String, Vec<u8>)], needle: &[u8]) -> Vec<String> {
    objects.iter().filter(|(_, b)| b.windows(needle.len()).any(|w| w == needle)).map(|(k, _)| k.clone()).collect()
}

#[test]
fn an_encrypted_repository_replicated_through_a_failing_s3_restores_from_the_second_bucket() {
    let dir = TestDir::new("repl_faults");
    let s3 = S3Server::start(&dir);
    s3.create_bucket("region-a");
    s3.create_bucket("region-b");
    let key = s3.kms_create_key();
    // Faults from the replication on (backups and archive-push under faults are s3_faults.rs's).
    let proxy = FaultProxy::start(port_of(&s3.endpoint()), 0, 0x0bad_5eed);
    // Uncompressed chunks, so that only the encryption hides the rows from a byte search.
    let setup = Setup::new(&dir, "local", "compress_level = 0\nwal_compress_level = 0", &[]);
    let through_proxy = |bucket: &str| s3.repo_config(bucket, "main").replace(&s3.endpoint(), &proxy.endpoint());
    let metrics_port = reserve_port();
    setup.replace_posix_repo(&through_proxy("region-a"));
    setup.append_config(&format!(
        "[[repo]]\nname = \"region-b\"\n{}\n[replicator]\ninterval_secs = 1\nworkers = 2\nmetrics_listen = \"127.0.0.1:{}\"\n\
         [encryption]\n{}",
        through_proxy("region-b"),
        metrics_port.get(),
        // KMS is reached directly: the proxy stands for a flaky S3, not a flaky KMS.
        s3.kms_encryption_config(&key),
    ));

    setup.strata_ok(&["stanza-create"]);
    setup.pg.psql("SELECT pg_reload_conf()");
    setup.pg.psql(&format!(
        "CREATE TABLE secret_rows (id int primary key, v text); \
         INSERT INTO secret_rows SELECT g, '{MARKER}-' || g FROM generate_series(1, 20000) g;"
    ));
    setup.pg.pgbench_init(3);
    setup.backup("full");
    setup.pg.pgbench_run_background(3, 2).wait().expect("pgbench failed");
    setup.backup("incr");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(180));

    proxy.set_percent(20);
    let mut replicator = setup.bins.spawn_service("strata-replicator", &setup.config, dir.path());
    replicator.wait_for_log("replicator running", Duration::from_secs(30));
    wait_until_every("region-b to catch up", Duration::from_secs(300), Duration::from_millis(500), || {
        assert!(replicator.is_running(), "the replicator exited; see {}", replicator.log_file().display());
        let info = setup.info();
        let row = info[0]["replication"]
            .as_array()
            .and_then(|rows| rows.iter().find(|r| r["target"] == "region-b").cloned())
            .unwrap_or_else(|| panic!("no replication row for region-b: {info}"));
        (row["lag_objects"] == 0).then_some(())
    });
    let metrics = scrape(metrics_port.get());
    let retried = sample(&metrics, "strata_s3_retries_total{repo=\"region-b\"}").unwrap_or(0.0)
        + sample(&metrics, "strata_s3_retries_total{repo=\"region-a\"}").unwrap_or(0.0);
    assert!(replicator.stop().success(), "the replicator did not stop cleanly");
    assert!(proxy.counts().injected() > 0, "the proxy injected no fault");
    assert!(retried > 0.0, "the replicator counted no S3 retry:\n{metrics}");

    for bucket in ["region-a", "region-b"] {
        let objects = bucket_objects(&s3, bucket);
        assert!(objects.iter().any(|(k, _)| k.starts_with("main/pack/")), "no packs in {bucket}");
        let hits = containing(&objects, MARKER.as_bytes());
        assert!(hits.is_empty(), "plaintext rows in {bucket}: {hits:?}");
    }

    s3.delete_bucket_with_contents("region-a");
    let copy = setup.restore_and_start("restored", &["--repo", "region-b"]);
    assert_same_tables(&setup.pg, &copy, "postgres");
    if let Err(e) = copy.pg_amcheck() {
        panic!("pg_amcheck on the cluster restored from region-b: {e}");
    }
}
