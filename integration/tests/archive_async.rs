//! Asynchronous archiving (`[archive] async = true`): the WAL shipper pushes ready segments ahead of
//! PostgreSQL's archiver, and `archive-push` exits 0 only for a segment that is durable, whatever happens
//! to the shipper (killed with SIGKILL under load) or to the bus (NATS stopped).

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;
use strata_integration::*;

/// Segment names of timeline 1 in the repository, sorted.
fn archived_segments(repo: &Path) -> Vec<String> {
    let mut names: Vec<String> = snapshot(repo)
        .into_keys()
        .filter(|k| k.contains("/wal/"))
        .filter_map(|k| k.rsplit('/').next().map(str::to_string))
        .filter(|n| n.len() == 24 && n.starts_with("00000001"))
        .collect();
    names.sort();
    names
}

fn assert_no_gap(segments: &[String]) {
    assert!(!segments.is_empty(), "nothing archived");
    let segno = |n: &str| u64::from_str_radix(&n[8..], 16).unwrap();
    let (first, last) = (segno(&segments[0]), segno(&segments[segments.len() - 1]));
    assert_eq!(segments.len() as u64, last - first + 1, "the archive has a gap: {segments:?}");
}

/// An archive_command that runs `strata archive-push` and, each time it exits 0, looks in the repository at
/// that moment for the segment's WAL record and logs `<name> durable` or `<name> MISSING`. Its name holds
/// "archive-push", which `strata check` looks for in archive_command.
fn logged_archive_command(setup: &Setup) -> (String, PathBuf) {
    let scripts = setup.dir.subdir("scripts");
    let log = scripts.join("exits.log");
    std::fs::write(&log, "").unwrap();
    std::fs::set_permissions(&log, std::os::unix::fs::PermissionsExt::from_mode(0o666)).unwrap();
    let script = scripts.join("archive-push-logged.sh");
    let strata = setup.bins.archive_push_command(&setup.config, STANZA).replace("%p", "\"$1\"");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\n{strata} || exit $?\nname=$(basename \"$1\")\n\
             if find '{repo}' -path '*/wal/*' -name \"$name\" | grep -q .; then echo \"$name durable\" >> '{log}'; \
             else echo \"$name MISSING\" >> '{log}'; fi\nexit 0\n",
            repo = setup.repo.display(),
            log = log.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    (format!("{} %p", script.display()), log)
}

fn use_archive_command(pg: &PgCluster, command: &str) {
    pg.psql(&format!("ALTER SYSTEM SET archive_command = '{}'", command.replace('\'', "''")));
    pg.psql("SELECT pg_reload_conf()");
}

fn exits(log: &Path) -> Vec<String> {
    std::fs::read_to_string(log).unwrap().lines().map(str::to_string).collect()
}

fn shipper_pid(pg: &PgCluster) -> Option<i32> {
    let file = pg.data_dir().join("pg_wal/strata-archive/shipper.pid");
    std::fs::read_to_string(file).ok()?.trim().parse().ok()
}

fn alive(pid: i32) -> bool {
    // SAFETY: signal 0 only checks the process exists.
    unsafe { libc::kill(pid, 0) == 0 }
}

#[test]
fn async_archiving_survives_the_shipper_killed_under_load() {
    let dir = TestDir::new("archive_async_kill");
    let mut setup = Setup::new(&dir, "local", "", &[("max_wal_size", "1GB")]);
    // pgbench is stopped early below: its sessions end with "connection to client lost".
    setup.pg.allow_log("FATAL:  connection to client lost");
    setup.strata_ok(&["stanza-create"]);
    setup.append_config("[archive]\nasync = true");
    let (command, log) = logged_archive_command(&setup);
    use_archive_command(&setup.pg, &command);
    setup.pg.pgbench_init(10);
    let bench = setup.pg.pgbench_run_background(120, 4);

    // pgbench is the background load; the test makes sure of WAL to archive by switching segments itself.
    setup.pg.psql("CREATE TABLE filler (x int)");
    let write_segments = |n: usize| {
        for i in 0..n {
            setup.pg.psql(&format!("INSERT INTO filler SELECT g FROM generate_series(1, 100000) g; SELECT pg_switch_wal(); -- {i}"));
        }
    };
    // The shipper is up and segments come back durable through it.
    write_segments(3);
    let first = wait_until("a shipper", Duration::from_secs(120), || shipper_pid(&setup.pg).filter(|p| alive(*p)));
    write_segments(3);
    wait_until("five segments archived", Duration::from_secs(180), || (exits(&log).len() >= 5).then_some(()));
    // SAFETY: kill on a pid read from the shipper's pid file, checked alive just above.
    assert_eq!(unsafe { libc::kill(first, libc::SIGKILL) }, 0);
    let at_kill = exits(&log).len();
    let second = wait_until("a second shipper", Duration::from_secs(120), || {
        shipper_pid(&setup.pg).filter(|p| *p != first && alive(*p))
    });
    assert_ne!(first, second);
    write_segments(6);
    wait_until("five more segments archived", Duration::from_secs(180), || (exits(&log).len() >= at_kill + 5).then_some(()));
    bench.stop();

    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(180));
    let lines = exits(&log);
    let missing: Vec<&String> = lines.iter().filter(|l| !l.ends_with(" durable")).collect();
    assert!(missing.is_empty(), "archive-push exited 0 for segments not in the repository: {missing:?}");
    let segments = archived_segments(&setup.repo);
    assert_no_gap(&segments);
    for l in &lines {
        let name = l.split(' ').next().unwrap();
        if name.len() == 24 {
            assert!(segments.iter().any(|s| s == name), "{name} was reported archived and is not in the repository");
        }
    }
    // The shipper log shows both shippers.
    let shipper_log = std::fs::read_to_string(setup.pg.data_dir().join("pg_wal/strata-archive/shipper.log")).unwrap();
    assert!(shipper_log.matches(" started for ").count() >= 2, "{shipper_log}");

    // A backup waits for its WAL through the shipper; check and info see no gap.
    setup.backup("full");
    setup.strata_ok(&["check"]);
    let info = setup.info();
    assert!(info[0]["backups"].as_array().is_some_and(|b| b.len() == 1), "{info}");
    let text = setup.strata_ok(&["info"]);
    assert!(!text.to_lowercase().contains("gap"), "{text}");
}

#[test]
fn async_archiving_with_nats_down_retries_and_loses_nothing() {
    let dir = TestDir::new("archive_async_nats_down");
    let mut nats = NatsServer::start(&dir);
    // Declared before the cluster so they are dropped after it: a cluster shutting down may still push WAL.
    let _services;
    let setup = Setup::new(&dir, &nats.url(), "stall_timeout_secs = 10", &[]);
    _services = Services::start(&setup);
    setup.strata_ok(&["stanza-create"]);
    setup.append_config("[archive]\nasync = true");
    setup.pg.psql("CREATE TABLE t (x int)");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));
    let shipper = wait_until("a shipper", Duration::from_secs(60), || shipper_pid(&setup.pg).filter(|p| alive(*p)));
    let failed = |pg: &PgCluster| pg.psql("SELECT failed_count FROM pg_stat_archiver").parse::<u64>().unwrap();
    let failed_before = failed(&setup.pg);

    nats.stop();
    for i in 0..3 {
        setup.pg.psql(&format!("INSERT INTO t SELECT g FROM generate_series(1, 50000) g; SELECT pg_switch_wal(); -- {i}"));
    }
    wait_until_every("the archiver to fail while NATS is down", Duration::from_secs(120), Duration::from_millis(200), || {
        (failed(&setup.pg) != failed_before).then_some(())
    });
    let ready = std::fs::read_dir(setup.pg.data_dir().join("pg_wal/archive_status"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".ready"))
        .count();
    assert!(ready >= 1, "PostgreSQL keeps the segments it could not archive");

    nats.start_again();
    // Wake the archiver now rather than after its 60 s back-off.
    setup.pg.psql("SELECT pg_reload_conf()");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(180));
    let segments = archived_segments(&setup.repo);
    assert_no_gap(&segments);
    assert!(segments.len() >= 4, "{segments:?}");
    // The segments went through a shipper (the first, or one started after it gave up).
    assert!(shipper_pid(&setup.pg).is_some_and(alive) || alive(shipper), "no shipper ran");
    setup.strata_ok(&["check"]);
}

fn ready_count(pg: &PgCluster) -> usize {
    std::fs::read_dir(pg.data_dir().join("pg_wal/archive_status"))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".ready"))
        .count()
}

#[test]
fn over_push_queue_max_segments_are_dropped_loudly() {
    let dir = TestDir::new("archive_queue_max");
    let setup = Setup::new(&dir, "local", "", &[]);
    let hook = WebhookReceiver::start();
    setup.strata_ok(&["stanza-create"]);
    // One segment may wait; a second one over it is dropped.
    setup.append_config(&format!("[archive]\npush_queue_max = 16777216\n\n[alerts]\nwebhook_critical = \"{}\"", hook.url()));
    setup.pg.psql("CREATE TABLE t (x int)");
    setup.backup("full");

    // Archiving stops (a failing command) while three segments fill up.
    let strata_command = setup.bins.archive_push_command(&setup.config, STANZA);
    use_archive_command(&setup.pg, "/bin/false");
    for i in 0..3 {
        setup.pg.psql(&format!("INSERT INTO t SELECT g FROM generate_series(1, 50000) g; SELECT pg_switch_wal(); -- {i}"));
    }
    wait_until("three segments ready", Duration::from_secs(60), || (ready_count(&setup.pg) >= 3).then_some(()));
    use_archive_command(&setup.pg, &strata_command);
    wait_until("the queue drained", Duration::from_secs(120), || (ready_count(&setup.pg) == 0).then_some(()));
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));

    // The drops are recorded, and nothing dropped is in the archive.
    let dropped: Vec<String> = std::fs::read_dir(setup.repo.join("stanza/main/dropped"))
        .expect("dropped records")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().trim_end_matches(".json").to_string())
        .collect();
    assert!(!dropped.is_empty(), "nothing was dropped");
    let archived = archived_segments(&setup.repo);
    for d in &dropped {
        assert!(!archived.contains(d), "{d} is both dropped and archived");
    }
    // info shows the hole, in the archive and in the backup's recoverable window, and says why.
    let text = setup.strata_ok(&["info"]);
    let gap_line = text.lines().find(|l| l.contains("wal archive gap")).unwrap_or_else(|| panic!("no gap shown:\n{text}"));
    assert!(gap_line.contains(&format!("{} of them DROPPED", dropped.len())), "{text}");
    let window = text.lines().find(|l| l.contains("then WAL missing")).unwrap_or_else(|| panic!("no hole in the window:\n{text}"));
    assert!(window.contains("DROPPED"), "{text}");
    let json = serde_json::to_string(&setup.info()).unwrap();
    assert!(json.contains(&format!("\"dropped\":{}", dropped.len())), "{json}");
    // check fails on it, naming the drop.
    let line = setup.strata_fails(&["check"]);
    assert!(line.contains("DROPPED") && line.contains("push_queue_max"), "{line}");
    // A critical alert went out for each dropped segment.
    for d in &dropped {
        let alert = hook.wait_for(|b| b.to_string().contains(d.as_str()) && b.to_string().contains("DROPPED"), Duration::from_secs(30));
        assert_eq!(alert["strata"]["tier"], "critical", "{alert}");
    }
}
