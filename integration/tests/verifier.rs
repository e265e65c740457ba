//! The verifier service: verifies new backups on its own, exports metrics that agree with `info`, and
//! raises the critical alert when WAL archiving stops (once, not again while it lasts; resolved when
//! fixed).

mod common;

use common::*;
use std::time::Duration;
use strata_integration::*;

/// The value of one series (`name{labels}`) in a scrape.
fn value(metrics: &str, series: &str) -> Option<f64> {
    metrics.lines().find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.trim().parse().ok())
}

/// Waits for a condition that costs a `strata info` run or a webhook look to test.
fn wait_slow<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    wait_until_every(what, timeout, Duration::from_millis(500), f)
}

/// Rounds the verifier has finished, from its metrics.
fn rounds(port: u16) -> f64 {
    value(&scrape(port), "strata_verifier_rounds_total").unwrap_or(0.0)
}

/// Waits until the verifier has finished `n` more rounds: what proves that something (a second alert, a
/// second restore test) did not happen in them.
fn wait_rounds(port: u16, n: f64) {
    let start = rounds(port);
    wait_slow(&format!("{n} more verifier rounds"), Duration::from_secs(120), || (rounds(port) >= start + n).then_some(()));
}

#[test]
fn verifier_verifies_new_backups_exports_metrics_and_alerts_when_archiving_stops() {
    let dir = TestDir::new("verifier");
    let setup = Setup::new(&dir, "local", "", &[]);
    let hook = WebhookReceiver::start();
    let info_hook = WebhookReceiver::start();
    let port = reserve_port();
    setup.append_config(&format!(
        "[verifier]\ninterval_secs = 1\nmetrics_listen = \"127.0.0.1:{}\"\n\n[alerts]\nwebhook_critical = \"{}\"\nwebhook_info = \"{}\"\nresend_secs = 3600\n{}",
        port.get(),
        hook.url(),
        info_hook.url(),
        // The machine's disk, shared with other work, must not decide this test's status.
        "repo_full_warning_percent = 100\nrepo_full_critical_percent = 100"
    ));
    setup.strata_ok(&["stanza-create"]);
    setup.pg.pgbench_init(2);
    let label = setup.backup("full");
    // The backup that succeeded is an info-tier event, sent once by the command that took it.
    let events = info_hook.bodies();
    assert_eq!(events.len(), 1, "{events:?}");
    let text = events[0]["text"].as_str().unwrap();
    assert!(text.contains("backup succeeded") && text.contains(&label), "{text}");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));
    drop(port);
    let mut verifier = setup.bins.spawn_service("strata-verifier", &setup.config, dir.path());
    // Archiving is stopped on purpose below: the verifier raises the alert.
    verifier.allow_log(r"critical alert firing: main: WAL archiving is failing");
    verifier.wait_for_log("verifier running", Duration::from_secs(30));

    // The new backup is verified without anyone asking, and info shows it.
    let info = wait_slow("the verifier verifies the new backup", Duration::from_secs(120), || {
        let info = setup.info();
        (info[0]["backups"][0]["verify"]["ok"] == true && info[0]["wal_verify"]["ok"] == true).then_some(info)
    });
    assert_eq!(info[0]["status"]["status"], "ok", "{info:#}");

    // Metrics agree with info.
    let port = port_of(&verifier);
    let m = wait_slow("the verifier's metrics show the backup", Duration::from_secs(30), || {
        let m = scrape(port);
        value(&m, "strata_verify_last_timestamp_seconds{stanza=\"main\",repo=\"local\"}").map(|_| m)
    });
    let b = &info[0]["backups"][0];
    let st = &info[0]["status"];
    assert_eq!(value(&m, "strata_backup_last_success_timestamp_seconds{stanza=\"main\",type=\"full\"}"), b["stop_time"].as_f64(), "{m}");
    assert_eq!(value(&m, "strata_backup_stored_bytes{stanza=\"main\",type=\"full\"}"), b["stored_bytes"].as_f64(), "{m}");
    assert_eq!(
        value(&m, "strata_backup_duration_seconds{stanza=\"main\",type=\"full\"}"),
        Some((b["stop_time"].as_i64().unwrap() - b["start_time"].as_i64().unwrap()) as f64),
        "{m}"
    );
    assert_eq!(value(&m, "strata_stanza_rpo_seconds{stanza=\"main\"}"), st["rpo_secs"].as_f64(), "{m}");
    assert_eq!(value(&m, "strata_archive_failed_total{stanza=\"main\"}"), st["archiver"]["failed_count"].as_f64(), "{m}");
    assert_eq!(value(&m, "strata_archive_archived_total{stanza=\"main\"}"), st["archiver"]["archived_count"].as_f64(), "{m}");
    assert_eq!(
        value(&m, "strata_archive_last_archived_timestamp_seconds{stanza=\"main\"}"),
        st["archiver"]["last_archived_time"].as_f64(),
        "{m}"
    );
    assert_eq!(value(&m, "strata_verify_errors{stanza=\"main\",repo=\"local\"}"), Some(0.0), "{m}");
    assert_eq!(value(&m, "strata_stanza_status{stanza=\"main\"}"), Some(0.0), "{m}");
    assert!(value(&m, "strata_repo_used_bytes{repo=\"local\"}").unwrap() > 0.0, "{m}");
    assert!(value(&m, "strata_repo_size_bytes{repo=\"local\"}").unwrap() >= st["space"]["fs_size_bytes"].as_f64().unwrap() - 1.0, "{m}");
    assert!(m.contains("# TYPE strata_archive_failed_total counter"), "{m}");
    assert!(m.contains(&format!("strata_verify_runs_total{{stanza=\"main\",repo=\"local\",subject=\"backup\",outcome=\"ok\"}} 1")), "{m}");
    assert!(hook.bodies().is_empty(), "no alert while all is well: {:?}", hook.bodies());

    // Archiving breaks: the critical alert reaches the webhook within a few rounds.
    setup.pg.psql("ALTER SYSTEM SET archive_command = 'false'");
    setup.pg.psql("SELECT pg_reload_conf()");
    setup.pg.wait_for_query("SHOW archive_command", "false", Duration::from_secs(30));
    setup.pg.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS i");
    setup.pg.psql("SELECT pg_switch_wal()");
    let firing = wait_slow("the critical alert at the webhook", Duration::from_secs(60), || {
        hook.bodies().into_iter().find(|b| b["strata"]["status"] == "firing")
    });
    assert_eq!(firing["strata"]["tier"], "critical", "{firing:#}");
    assert_eq!(firing["strata"]["stanza"], "main", "{firing:#}");
    let text = firing["text"].as_str().unwrap();
    assert!(text.contains("WAL archiving is failing"), "{text}");
    let info = setup.info();
    assert_eq!(info[0]["status"]["status"], "critical", "{info:#}");
    let m = scrape(port);
    assert_eq!(value(&m, "strata_stanza_status{stanza=\"main\"}"), Some(2.0), "{m}");
    assert!(value(&m, "strata_archive_failed_total{stanza=\"main\"}").unwrap() >= 1.0, "{m}");

    // Several rounds later: still one message.
    wait_rounds(port, 4.0);
    assert_eq!(hook.bodies().len(), 1, "no duplicate: {:?}", hook.bodies());

    // Fixed: one resolved message, no second firing, status ok again.
    setup.pg.psql("ALTER SYSTEM RESET archive_command");
    setup.pg.psql("SELECT pg_reload_conf()");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(120));
    let resolved = wait_slow("the resolved message", Duration::from_secs(60), || {
        hook.bodies().into_iter().find(|b| b["strata"]["status"] == "resolved")
    });
    assert_eq!(resolved["strata"]["key"], firing["strata"]["key"], "{resolved:#}");
    wait_rounds(port, 3.0);
    let bodies = hook.bodies();
    assert_eq!(bodies.iter().filter(|b| b["strata"]["status"] == "firing").count(), 1, "{bodies:?}");
    assert_eq!(bodies.len(), 2, "{bodies:?}");
    let info = setup.info();
    assert_eq!(info[0]["status"]["status"], "ok", "{info:#}");
    assert!(verifier.stop().success(), "the verifier did not stop cleanly");
}

/// The metrics port the verifier logged.
fn port_of(verifier: &Service) -> u16 {
    let log = std::fs::read_to_string(verifier.log_file()).unwrap();
    let at = log.find("metrics at http://127.0.0.1:").expect("the verifier logs its metrics address");
    let rest = &log[at + "metrics at http://127.0.0.1:".len()..];
    rest[..rest.find('/').unwrap()].parse().unwrap()
}

#[test]
fn a_scheduled_restore_test_that_fails_raises_the_critical_alert() {
    let dir = TestDir::new("verifier-rt");
    let setup = Setup::new(&dir, "local", "", &[]);
    let hook = WebhookReceiver::start();
    let audit = dir.path().join("audit.log");
    let port = reserve_port();
    setup.append_config(&format!(
        "[verifier]\ninterval_secs = 1\nmetrics_listen = \"127.0.0.1:{}\"\n\n[alerts]\nwebhook_critical = \"{}\"\nrepo_full_warning_percent = 100\nrepo_full_critical_percent = 100\n\n\
         [audit]\npath = \"{}\"\n\n[restore_test]\ninterval_secs = 86400\ntimeout_secs = 300\namcheck = false\n\n\
         [[restore_test.query]]\nname = \"no such table\"\nsql = \"select count(*) from no_such_table\"\n",
        port.get(),
        hook.url(),
        audit.display()
    ));
    setup.strata_ok(&["stanza-create"]);
    setup.pg.psql("CREATE TABLE t AS SELECT generate_series(1, 1000) AS i");
    setup.backup("full");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));
    drop(port);
    let mut verifier = setup.bins.spawn_service("strata-verifier", &setup.config, dir.path());
    // The restore test is made to fail (a query on a table that does not exist).
    verifier
        .allow_log(r"restore test finished passed=false")
        .allow_log(r"scheduled restore test failed")
        .allow_log(r"critical alert firing: main: the restore test of");
    verifier.wait_for_log("verifier running", Duration::from_secs(30));
    let port = port_of(&verifier);
    let firing = wait_slow("the restore test's critical alert", Duration::from_secs(300), || {
        hook.bodies().into_iter().find(|b| b["strata"]["status"] == "firing")
    });
    let text = firing["text"].as_str().unwrap();
    assert!(text.contains("restore test") && text.contains("no such table"), "{text}");
    let info = setup.info();
    let t = &info[0]["status"]["last_restore_test"];
    assert_eq!(t["passed"], false, "{info:#}");
    assert!(t["failure"].as_str().unwrap().contains("no such table"), "{info:#}");
    assert!(setup.strata_ok(&["info"]).contains("last restore test: FAILED"));
    // One scheduled test per interval, whatever the number of rounds; it is in the audit log.
    wait_rounds(port, 3.0);
    let out = setup.strata_ok(&["audit", "--op", "restore-test", "--output", "json"]);
    let entries: Vec<serde_json::Value> = out.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(entries.len(), 1, "{out}");
    assert_eq!(entries[0]["outcome"], "failed", "{out}");
    assert!(entries[0]["error"].as_str().unwrap().contains("no such table"), "{out}");
    assert!(verifier.stop().success(), "the verifier did not stop cleanly");
}

#[test]
fn a_backup_damaged_after_its_first_verification_is_found_by_the_next_one() {
    let dir = TestDir::new("verifier-again");
    let setup = Setup::new(&dir, "local", "", &[]);
    let hook = WebhookReceiver::start();
    setup.append_config(&format!(
        "[verifier]\ninterval_secs = 1\nreverify_secs = 4\n\n[alerts]\nwebhook_critical = \"{}\"\n\
         repo_full_warning_percent = 100\nrepo_full_critical_percent = 100",
        hook.url()
    ));
    setup.strata_ok(&["stanza-create"]);
    setup.pg.pgbench_init(2);
    let label = setup.backup("full");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));
    let mut verifier = setup.bins.spawn_service("strata-verifier", &setup.config, dir.path());
    // The backup is damaged on purpose after its first round.
    verifier.allow_log(r"backup is damaged").allow_log(r"WAL archive problem").allow_log(r"critical alert firing: main: verify found");
    verifier.wait_for_log("verifier running", Duration::from_secs(30));
    let first = wait_slow("the first verification", Duration::from_secs(120), || {
        let info = setup.info();
        (info[0]["backups"][0]["verify"]["ok"] == true).then(|| info[0]["backups"][0]["verify"]["time"].as_i64().unwrap())
    });
    assert!(hook.bodies().is_empty(), "{:?}", hook.bodies());

    // Bit rot after the backup was found intact: one byte flipped in the middle of every pack.
    for pack in pack_files(&setup.repo) {
        let mut bytes = std::fs::read(&pack).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x10;
        std::fs::write(&pack, &bytes).unwrap();
    }
    let firing = wait_slow("the critical alert of the second verification", Duration::from_secs(120), || {
        hook.bodies().into_iter().find(|b| b["strata"]["status"] == "firing")
    });
    let text = firing["text"].as_str().unwrap();
    assert!(text.contains("verify found") && text.contains(&label), "{text}");
    let info = setup.info();
    let again = &info[0]["backups"][0]["verify"];
    assert_eq!(again["ok"], false, "{info:#}");
    assert!(again["time"].as_i64().unwrap() >= first + 4, "verified again only once the first result was reverify_secs old: {info:#}");
    assert_eq!(info[0]["status"]["status"], "critical", "{info:#}");
    // The WAL files found intact the first time are read back again too, and their damage found.
    wait_slow("the WAL read back again", Duration::from_secs(60), || (setup.info()[0]["wal_verify"]["ok"] == false).then_some(()));
    assert!(verifier.stop().success(), "the verifier did not stop cleanly");
}

#[test]
fn backups_due_together_are_verified_in_one_pass_that_reads_shared_chunks_once() {
    let dir = TestDir::new("verifier-pass");
    let setup = Setup::new(&dir, "local", "", &[]);
    setup.append_config("[verifier]\ninterval_secs = 1\n\n[alerts]\nrepo_full_warning_percent = 100\nrepo_full_critical_percent = 100");
    setup.strata_ok(&["stanza-create"]);
    setup.pg.pgbench_init(2);
    let full = setup.backup("full");
    setup.pg.pgbench_transactions(200, 2);
    let incr = setup.backup("incr");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));
    let mut verifier = setup.bins.spawn_service("strata-verifier", &setup.config, dir.path());
    verifier.wait_for_log("verifier running", Duration::from_secs(30));
    let info = wait_slow("both backups verified", Duration::from_secs(120), || {
        let info = setup.info();
        let b = info[0]["backups"].as_array().unwrap();
        (b.len() == 2 && b.iter().all(|b| b["verify"]["ok"] == true)).then_some(info)
    });
    assert!(verifier.stop().success(), "the verifier did not stop cleanly");
    let chunks = |i: usize| info[0]["backups"][i]["verify"]["chunks"].as_u64().unwrap();
    assert_eq!(info[0]["backups"][1]["label"], incr.as_str());
    // Verified alone, the incremental reads every chunk its files point at, most of them the full's.
    let alone: serde_json::Value = serde_json::from_str(&setup.strata_ok(&["verify", "--set", &incr, "--output", "json"])).unwrap();
    let alone = alone[0]["backups"][0]["chunks"].as_u64().unwrap();
    eprintln!("one pass: full {} chunks, incr {} chunks; the incr alone: {alone} chunks", chunks(0), chunks(1));
    assert!(alone * 2 > chunks(0), "the incremental shares most of the full's chunks: {alone} vs {}", chunks(0));
    assert!(chunks(1) * 4 < alone, "in the pass with {full}, {incr} read only its own chunks: {} of {alone}", chunks(1));
}
