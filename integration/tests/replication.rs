//! Several repositories and the replicator: a backup replicated to a second bucket restores after the
//! first bucket is gone; a replicator killed mid-copy resumes and leaves the target byte-identical;
//! archive-push writes every repository and refuses, naming it, a required one it cannot write; the lag
//! shows in `info` and on the metrics endpoint.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;
use strata_integration::*;

fn posix_repo(name: &str, path: &Path) -> String {
    format!("[[repo]]\nname = \"{name}\"\ntype = \"posix\"\npath = {}\n", strata_integration::config::toml_string(&path.display().to_string()))
}

/// The replication row of `target` in `info --output json`.
fn replication_row(setup: &Setup, target: &str) -> serde_json::Value {
    let info = setup.info();
    info[0]["replication"]
        .as_array()
        .unwrap_or_else(|| panic!("info has no replication section: {info}"))
        .iter()
        .find(|r| r["target"] == target)
        .unwrap_or_else(|| panic!("info has no replication row for {target}: {info}"))
        .clone()
}

/// Polls `info` until `target` has no lag; returns the last row.
fn wait_caught_up(setup: &Setup, replicator: &mut Service, target: &str, timeout: Duration) -> serde_json::Value {
    let mut last = serde_json::Value::Null;
    let caught_up = poll(timeout, Duration::from_millis(500), || {
        assert!(replicator.is_running(), "the replicator exited; see {}", replicator.log_file().display());
        last = replication_row(setup, target);
        (last["lag_objects"] == 0).then(|| last.clone())
    });
    let row = caught_up.unwrap_or_else(|| panic!("target {target} still behind after {timeout:?}: {last}"));
    assert_eq!(row["lag_bytes"], 0, "{row}");
    assert_eq!(row["lag_seconds"], 0, "{row}");
    assert!(row["oldest_uncopied"].is_null(), "{row}");
    row
}

#[test]
fn a_backup_replicated_to_a_second_bucket_restores_after_the_first_is_deleted() {
    let dir = TestDir::new("repl_s3");
    let s3 = S3Server::start(&dir);
    s3.create_bucket("repo-a");
    s3.create_bucket("repo-b");
    let setup = Setup::new(&dir, "local", "", &[]);
    setup.use_s3(&s3, "repo-a", "");
    let metrics_port = reserve_port();
    setup.append_config(&format!(
            "[[repo]]\nname = \"b\"\ntier = \"warm\"\nstorage_class = \"STANDARD_IA\"\n{}\n[replicator]\ninterval_secs = 1\nworkers = 2\nmetrics_listen = \"127.0.0.1:{}\"",
            s3.repo_config("repo-b", ""),
            metrics_port.get()
        ),
    );
    let created = setup.strata_ok(&["stanza-create"]);
    assert!(created.contains("in repository 'b'"), "{created}");
    setup.pg.pgbench_init(5);
    let bench = setup.pg.pgbench_run_background(5, 2);
    setup.backup("full");
    bench.wait().expect("pgbench failed");
    setup.backup("incr");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(120));

    // archive-push wrote the WAL to both buckets; the backups are only in the first until replicated.
    let before = replication_row(&setup, "b");
    assert!(before["lag_objects"].as_u64().unwrap() > 0 && before["lag_bytes"].as_u64().unwrap() > 0, "{before}");
    assert_eq!(before["tier"], "warm", "{before}");
    assert!(before["oldest_uncopied"].as_str().is_some(), "{before}");

    let mut replicator = setup.bins.spawn_service("strata-replicator", &setup.config, dir.path());
    replicator.wait_for_log("replicator running", Duration::from_secs(30));
    wait_caught_up(&setup, &mut replicator, "b", Duration::from_secs(300));
    // The replicator's own next scan sees the same: its gauges fall to zero.
    let port = metrics_port.get();
    let metrics = wait_until_every("the replicator's lag gauge to reach 0", Duration::from_secs(30), Duration::from_millis(500), || {
        let m = scrape(port);
        m.contains("strata_replication_lag_bytes{target=\"b\"} 0\n").then_some(m)
    });
    assert!(metrics.contains("strata_replication_lag_seconds{target=\"b\"} 0\n"), "{metrics}");
    assert!(metrics.contains("# TYPE strata_replication_copied_bytes_total counter"), "{metrics}");
    assert!(metrics.contains("strata_replication_copied_objects_total{target=\"b\"} "), "{metrics}");
    assert!(metrics.contains("strata_s3_retries_total{repo=\"b\"} "), "{metrics}");
    assert!(replicator.stop().success(), "the replicator did not stop cleanly");

    s3.delete_bucket_with_contents("repo-a");
    let copy = setup.restore_and_start("restored", &["--repo", "b"]);
    assert_same_tables(&setup.pg, &copy, "postgres");
    if let Err(e) = copy.pg_amcheck() {
        panic!("pg_amcheck on the cluster restored from the replica: {e}");
    }
    LogCheck::postgres().assert_clean(copy.log_file());
}

/// Objects of a posix repository, without checkpoints of running backups (never replicated).
fn committed_objects(repo: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    snapshot(repo).into_iter().filter(|(k, _)| !k.ends_with(".partial")).collect()
}

#[test]
fn a_replicator_killed_mid_copy_resumes_and_the_target_ends_byte_identical() {
    let dir = TestDir::new("repl_kill");
    // Uncompressed, so the backup is a few hundred MB of 64 MiB packs and copying takes a while.
    let setup = Setup::new(&dir, "local", "compress_level = 0\nin_flight_bytes = 268435456", &[]);
    let target = dir.subdir("repo-b");
    setup.append_config(&format!("{}\n[replicator]\ninterval_secs = 1\nworkers = 1", posix_repo("b", &target)));
    setup.strata_ok(&["stanza-create"]);
    setup.pg.pgbench_init(25);
    setup.backup("full");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(120));
    let before = replication_row(&setup, "b");
    assert!(before["lag_bytes"].as_u64().unwrap() > 100_000_000, "{before}");
    assert!(before["lag_seconds"].as_u64().is_some(), "{before}");

    // Killed once some of the backup's packs are on the target (archive-push put the WAL's there) and
    // before its record is.
    let wal_packs = snapshot_names(&target.join("pack")).len();
    let mut replicator = setup.bins.spawn_service("strata-replicator", &setup.config, dir.path());
    wait_until_every("a pack to reach the target", Duration::from_secs(120), Duration::from_millis(20), || {
        assert!(replicator.is_running(), "the replicator exited; see {}", replicator.log_file().display());
        (snapshot_names(&target.join("pack")).len() > wal_packs).then_some(())
    });
    replicator.kill();
    assert!(records(&target).is_empty(), "the backup was already copied whole: the kill came too late to test a resume");
    let mid = replication_row(&setup, "b");
    assert!(mid["lag_objects"].as_u64().unwrap() > 0, "{mid}");
    assert!(mid["lag_bytes"].as_u64().unwrap() < before["lag_bytes"].as_u64().unwrap(), "copied packs still count: {mid}");

    let mut replicator = setup.bins.spawn_service("strata-replicator", &setup.config, dir.path());
    wait_caught_up(&setup, &mut replicator, "b", Duration::from_secs(300));
    assert!(replicator.stop().success());

    // Every committed object of the source is on the target with the same bytes, and the target holds
    // nothing else but whole copies of source objects.
    let source = committed_objects(&setup.repo);
    let copied = committed_objects(&target);
    for (name, bytes) in &copied {
        assert!(source.get(name) == Some(bytes), "{name} on the target is not a copy of the source's");
    }
    for name in source.keys().filter(|k| k.ends_with(".record") || k.contains("/wal/") || k.ends_with("stanza.json")) {
        assert!(copied.contains_key(name), "{name} was not replicated");
    }
    let labels = setup.backup_labels();
    let info_b = setup.strata_ok(&["--repo", "b", "info", "--output", "json"]);
    let info_b: serde_json::Value = serde_json::from_str(&info_b).unwrap();
    assert_eq!(info_b[0]["repo"], "b");
    assert_eq!(info_b[0]["backups"].as_array().unwrap().len(), labels.len(), "{info_b}");
}

/// Paths of the files under `dir` (recursively), temporary files left out.
fn snapshot_names(dir: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            if e.file_name().to_string_lossy().starts_with(".tmp-") {
                continue;
            }
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path().display().to_string());
            }
        }
    }
    out
}

/// The WAL records of a posix repository, by file name, with their bytes.
fn wal_records(repo: &Path) -> std::collections::BTreeMap<String, Vec<u8>> {
    snapshot(repo)
        .into_iter()
        .filter(|(k, _)| k.contains("/wal/"))
        .map(|(k, v)| (k.rsplit('/').next().unwrap().to_string(), v))
        .collect()
}

#[test]
fn archive_push_writes_every_repository_and_names_a_required_one_it_cannot() {
    let dir = TestDir::new("repl_push");
    let setup = Setup::new(&dir, "local", "", &[]);
    let second = dir.subdir("repo-b");
    setup.append_config(&posix_repo("b", &second));
    setup.strata_ok(&["stanza-create"]);
    let first_segment = setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));
    let (a, b) = (wal_records(&setup.repo), wal_records(&second));
    assert!(a.contains_key(&first_segment), "{:?}", a.keys());
    assert_eq!(a, b, "both repositories hold every archived WAL file, the same records");
    let fetched_b = dir.path().join("from-b");
    setup.strata_ok(&["--repo", "b", "archive-get", &first_segment, fetched_b.to_str().unwrap()]);
    let fetched_a = dir.path().join("from-a");
    setup.strata_ok(&["archive-get", &first_segment, fetched_a.to_str().unwrap()]);
    assert_eq!(std::fs::read(&fetched_a).unwrap(), std::fs::read(&fetched_b).unwrap());
    // archive-push takes the WAL file's name from the path, as PostgreSQL's %p gives it.
    let segment_file = dir.subdir("push").join(&first_segment);
    std::fs::copy(&fetched_a, &segment_file).unwrap();

    // The second repository goes away (an unmounted file system); it is required: archive-push fails,
    // naming it, and the primary keeps its copy.
    let away = dir.path().join("repo-b.away");
    std::fs::rename(&second, &away).unwrap();
    let out = setup.strata(&["archive-push", segment_file.to_str().unwrap()]);
    assert!(!out.status.success(), "archive-push succeeded without a required repository:\n{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let error = stderr.lines().last().unwrap_or_default();
    assert!(error.starts_with("error: ") && error.contains("'b'"), "{}", describe(&out));
    assert_eq!(stderr.lines().filter(|l| l.starts_with("error: ")).count(), 1, "{}", describe(&out));

    // Not required: archive-push succeeds with a warning, and the replicator fills the gap later.
    setup.append_config("archive_required = false");
    let out = setup.strata(&["archive-push", segment_file.to_str().unwrap()]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("warning: ") && String::from_utf8_lossy(&out.stderr).contains("'b'"), "{}", describe(&out));
    setup.pg.psql("CREATE TABLE written_while_b_was_away AS SELECT 1 AS x");
    let missed = setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));
    std::fs::rename(&away, &second).unwrap();
    assert!(!wal_records(&second).contains_key(&missed));
    let row = replication_row(&setup, "b");
    assert!(row["lag_objects"].as_u64().unwrap() >= 1, "{row}");
    // The segment's pack and record, written in that order.
    let oldest = row["oldest_uncopied"].as_str().unwrap();
    assert!(oldest.starts_with("pack/") || oldest.contains("/wal/"), "{row}");

    setup.append_config("[replicator]\ninterval_secs = 1");
    let mut replicator = setup.bins.spawn_service("strata-replicator", &setup.config, dir.path());
    wait_caught_up(&setup, &mut replicator, "b", Duration::from_secs(120));
    assert!(replicator.stop().success());
    let (a, b) = (wal_records(&setup.repo), wal_records(&second));
    assert!(b.contains_key(&missed));
    for (name, bytes) in &a {
        assert_eq!(b.get(name), Some(bytes), "{name} differs or is missing in the second repository");
    }
}

#[test]
fn replicators_on_nats_share_the_work_and_copy_each_backup_once() {
    let dir = TestDir::new("repl_nats");
    let nats = NatsServer::start(&dir);
    let setup = Setup::new(&dir, "local", "", &[]);
    let target = dir.subdir("repo-b");
    setup.append_config(&format!("{}\n[replicator]\ninterval_secs = 1\nworkers = 2", posix_repo("b", &target)));
    setup.strata_ok(&["stanza-create"]);
    setup.pg.pgbench_init(3);
    let full = setup.backup("full");
    setup.pg.pgbench_run_background(2, 2).wait().expect("pgbench failed");
    let incr = setup.backup("incr");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));

    // From here on the replicators share their work over NATS (the idle cluster archives nothing more).
    let text = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(&setup.config, text.replace("bus = \"local\"", &format!("bus = \"{}\"", nats.url()))).unwrap();
    let log_a = dir.subdir("replicator-a");
    let log_b = dir.subdir("replicator-b");
    let mut first = setup.bins.spawn_service("strata-replicator", &setup.config, &log_a);
    let mut second = setup.bins.spawn_service("strata-replicator", &setup.config, &log_b);
    first.wait_for_log("replicator running.*shared=true", Duration::from_secs(30));
    second.wait_for_log("replicator running.*shared=true", Duration::from_secs(30));
    wait_caught_up(&setup, &mut first, "b", Duration::from_secs(120));
    assert!(second.is_running());
    assert!(first.stop().success() && second.stop().success());

    // Both scanners published both backups; the queue kept one task of each (message ids), so each
    // backup was copied by one worker of one process.
    let logs = std::fs::read_to_string(first.log_file()).unwrap() + &std::fs::read_to_string(second.log_file()).unwrap();
    for label in [&full, &incr] {
        let copies = logs.lines().filter(|l| l.contains(" replicated ") && l.contains(&format!("main.backup.{label}"))).count();
        assert_eq!(copies, 1, "backup {label} copied {copies} times:\n{logs}");
    }
    let source = committed_objects(&setup.repo);
    for (name, bytes) in &committed_objects(&target) {
        assert!(source.get(name) == Some(bytes), "{name} on the target is not a copy of the source's");
    }
    assert_eq!(records(&target).len(), 2);
}

/// Successful writes per object key of `bucket` in moto's request log: `PUT /<bucket>/<key>` answered
/// 200, without the parts of multipart uploads (`?partNumber=`), whose completion is a POST.
fn puts_per_key(log: &str, bucket: &str) -> std::collections::BTreeMap<String, usize> {
    let mut out = std::collections::BTreeMap::new();
    let prefix = format!("\"PUT /{bucket}/");
    for line in log.lines() {
        let Some((_, rest)) = line.split_once(&prefix) else { continue };
        let Some((target, status)) = rest.split_once(" HTTP/1.1\" ") else { continue };
        if !status.starts_with("200") || target.contains("partNumber=") {
            continue;
        }
        let key = target.split('?').next().unwrap_or(target).to_string();
        if !key.contains(".strata-probe-") {
            *out.entry(key).or_insert(0) += 1;
        }
    }
    out
}

/// Item 5 of issue 13: two replicator processes sharing one NATS work queue copy a repository of WAL
/// files, a full and two incremental backups (which share packs with the full) into an empty S3 bucket,
/// and write every object of it exactly once (moto's request log), the objects both count as copied add
/// up to the bucket's, no pack is read back (the ETag verifies each write), and the copy verifies.
#[test]
fn two_replicators_copy_into_s3_and_write_no_object_twice() {
    let dir = TestDir::new("repl_two");
    let nats = NatsServer::start(&dir);
    let s3 = S3Server::start(&dir);
    s3.create_bucket("repo-b");
    let setup = Setup::new(&dir, "local", "", &[]);
    setup.strata_ok(&["stanza-create"]);
    setup.pg.pgbench_init(3);
    let mut labels = vec![setup.backup("full")];
    for _ in 0..2 {
        setup.pg.pgbench_run_background(2, 2).wait().expect("pgbench failed");
        labels.push(setup.backup("incr"));
    }
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));

    // The target joins the config only now, so everything in its bucket is the replicators' work (the
    // idle cluster archives nothing more), and from here on they share it over NATS.
    let (port_a, port_b) = (reserve_port(), reserve_port());
    let text = std::fs::read_to_string(&setup.config).unwrap().replace("bus = \"local\"", &format!("bus = \"{}\"", nats.url()));
    let with_target = |port: u16| {
        format!(
            "{text}\n[[repo]]\nname = \"b\"\n{}\n[replicator]\ninterval_secs = 1\nworkers = 2\nmetrics_listen = \"127.0.0.1:{port}\"\n",
            s3.repo_config("repo-b", "main")
        )
    };
    std::fs::write(&setup.config, with_target(port_a.get())).unwrap();
    let config_b = dir.path().join("strata-b.conf");
    std::fs::write(&config_b, with_target(port_b.get())).unwrap();
    let mut first = setup.bins.spawn_service("strata-replicator", &setup.config, &dir.subdir("replicator-a"));
    let mut second = setup.bins.spawn_service("strata-replicator", &config_b, &dir.subdir("replicator-b"));
    first.wait_for_log("replicator running.*shared=true", Duration::from_secs(30));
    second.wait_for_log("replicator running.*shared=true", Duration::from_secs(30));
    wait_caught_up(&setup, &mut first, "b", Duration::from_secs(180));
    assert!(second.is_running(), "the second replicator exited; see {}", second.log_file().display());
    // Both processes' counters, once each has seen the target caught up in a scan of its own.
    let copied_objects = |port: u16| -> u64 {
        let m = wait_until_every(
            &format!("the replicator on port {port} to see the target caught up"),
            Duration::from_secs(30),
            Duration::from_millis(250),
            || {
                let m = scrape(port);
                m.contains("strata_replication_lag_objects{target=\"b\"} 0\n").then_some(m)
            },
        );
        let line = m.lines().find(|l| l.starts_with("strata_replication_copied_objects_total{target=\"b\"} "));
        line.and_then(|l| l.rsplit(' ').next()?.parse::<f64>().ok()).unwrap_or(0.0) as u64
    };
    let (copied_a, copied_b) = (copied_objects(port_a.get()), copied_objects(port_b.get()));
    assert!(first.stop().success() && second.stop().success(), "a replicator did not stop cleanly");

    // The request log as the replicators left it (reading the bucket below adds GETs).
    let log = std::fs::read_to_string(s3.log_file()).unwrap();
    let objects = bucket_objects(&s3, "repo-b");
    let puts = puts_per_key(&log, "repo-b");
    let twice: Vec<_> = puts.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "objects written more than once: {twice:?}");
    let keys: Vec<String> = objects.iter().map(|(k, _)| k.clone()).collect();
    assert_eq!(puts.keys().cloned().collect::<Vec<_>>(), keys, "the objects written are not the bucket's");
    assert_eq!(copied_a + copied_b, objects.len() as u64, "copied {copied_a} + {copied_b} objects into a bucket of {}", objects.len());
    let packs = keys.iter().filter(|k| k.starts_with("main/pack/")).count();
    assert!(packs > 1, "{keys:?}");
    let read_back: Vec<&str> = log.lines().filter(|l| l.contains("\"GET /repo-b/main/pack/")).collect();
    assert!(read_back.is_empty(), "packs were read back from the target: {read_back:?}");
    // The copy is whole and every chunk of it reads back.
    let source = committed_objects(&setup.repo);
    for (key, bytes) in &objects {
        let name = key.strip_prefix("main/").unwrap_or(key);
        assert!(source.get(name) == Some(bytes), "{name} on the target is not a copy of the source's");
    }
    for name in source.keys().filter(|k| k.ends_with(".record") || k.contains("/wal/") || k.ends_with("stanza.json")) {
        assert!(keys.contains(&format!("main/{name}")), "{name} was not replicated");
    }
    assert!(labels.iter().all(|l| keys.iter().any(|k| k.ends_with(&format!("{l}.record")))), "{labels:?}");
    setup.strata_ok(&["--repo", "b", "verify"]);
}
