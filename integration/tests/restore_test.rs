//! `strata restore-test`: a backup restored into a scratch directory, started, checked with pg_amcheck and
//! the configured queries, and thrown away, with its result stored in the repository. A pass, a stale
//! backup caught by a freshness query, a server that cannot start and a test past its deadline; after
//! each, the server the test started is gone and its directory removed.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;
use strata_integration::*;

/// The `[restore_test]` section: scratch directories in `work`, then `queries` (TOML).
fn restore_test_config(setup: &Setup, work: &Path, timeout_secs: u64, queries: &str) {
    setup.append_config(&format!(
        "[restore_test]\nwork_dir = {}\ntimeout_secs = {timeout_secs}\namcheck = true\n\n{queries}",
        strata_integration::config::toml_string(&work.display().to_string())
    ));
}

/// `restore-test --output json <extra>`: the exit status, the printed result and stderr.
fn restore_test_json(setup: &Setup, extra: &[&str]) -> (bool, Value, String) {
    let mut args = vec!["restore-test", "--output", "json"];
    args.extend_from_slice(extra);
    let out = setup.strata(&args);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let result: Value = serde_json::from_str(&stdout)
        .unwrap_or_else(|e| panic!("restore-test printed invalid JSON ({e}):\n{}", describe(&out)));
    eprintln!("restore-test {extra:?}: {}", serde_json::to_string_pretty(&result).unwrap());
    (out.status.success(), result, String::from_utf8_lossy(&out.stderr).into_owned())
}

/// Running processes (not zombies) whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<u32>() else { continue };
        if pid == std::process::id() || !process_running(pid) {
            continue;
        }
        let Ok(cmdline) = std::fs::read(format!("/proc/{pid}/cmdline")) else { continue };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            out.push(format!("{pid}: {cmdline}"));
        }
    }
    out
}

/// The process exists and is not a zombie (the postmaster is reparented away from us, and nobody may
/// reap it).
fn process_running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else { return false };
    let state = stat.rsplit(')').next().and_then(|r| r.split_whitespace().next()).unwrap_or("Z");
    state != "Z"
}

/// The server the test started is gone and the scratch directory removed; `work` is empty again.
fn assert_cleaned_up(result: &Value, work: &Path) {
    let scratch = result["work_dir"].as_str().expect("work_dir");
    assert!(scratch.starts_with(work.to_str().unwrap()), "scratch {scratch} is not under {}", work.display());
    assert!(!Path::new(scratch).exists(), "{scratch} was not removed");
    assert_eq!(std::fs::read_dir(work).unwrap().count(), 0, "{} is not empty", work.display());
    if let Some(pid) = result["postmaster_pid"].as_u64() {
        let pid = pid as u32;
        if process_running(pid) {
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            assert!(
                !String::from_utf8_lossy(&cmdline).contains(scratch),
                "the restored server (pid {pid}) still runs"
            );
        }
    }
    assert_eq!(processes_mentioning(scratch), Vec::<String>::new(), "processes still use {scratch}");
    assert_eq!(result["cleanup_error"], Value::Null);
}

/// The results stored in the repository, oldest first.
fn stored_results(setup: &Setup) -> Vec<Value> {
    let dir = setup.repo.join("stanza").join(STANZA).join("restore-test");
    let mut names: Vec<PathBuf> = std::fs::read_dir(&dir).map(|d| d.flatten().map(|e| e.path()).collect()).unwrap_or_default();
    names.sort();
    names.iter().map(|p| serde_json::from_slice(stored_body(&std::fs::read(p).unwrap())).unwrap()).collect()
}

#[test]
fn a_pgbench_backup_passes_and_leaves_nothing_behind() {
    let dir = TestDir::new("restore_test_pass");
    let setup = Setup::new(&dir, "local", "", &[]);
    setup.strata_ok(&["stanza-create"]);
    setup.pg.pgbench_init(5);
    // A tablespace at a location the source uses: the test must restore it elsewhere.
    let location = dir.subdir("tblspc");
    setup.pg.psql(&format!("CREATE TABLESPACE extra LOCATION '{}'", location.display()));
    setup.pg.psql(
        "CREATE TABLE orders (id serial PRIMARY KEY, created_at timestamptz NOT NULL DEFAULT now()) TABLESPACE extra;
         INSERT INTO orders (created_at) SELECT now() - interval '1 hour' FROM generate_series(1, 100)",
    );
    let label = setup.backup("full");
    // Written after the backup: only WAL replay brings them back.
    setup.pg.pgbench_transactions(500, 2);
    setup.pg.psql("INSERT INTO orders (created_at) SELECT now() FROM generate_series(1, 10)");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(120));
    let tablespace_before: Vec<_> = std::fs::read_dir(&location).unwrap().flatten().map(|e| e.file_name()).collect();

    let work = dir.subdir("restore-test-work");
    restore_test_config(
        &setup,
        &work,
        600,
        "[[restore_test.query]]\nname = \"accounts are there\"\nsql = \"select count(*) from pgbench_accounts\"\nmin = 500000\n\n\
         [[restore_test.query]]\nname = \"orders are fresh\"\nsql = \"select max(created_at) from orders\"\nmax_age_secs = 600\n\n\
         [[restore_test.query]]\nname = \"orders after the backup were replayed\"\nsql = \"select count(*) from orders\"\nequals = \"110\"\n",
    );

    let (ok, r, stderr) = restore_test_json(&setup, &[]);
    assert!(ok, "restore-test failed: {stderr}");
    assert_eq!(r["passed"], true);
    assert_eq!(r["failure"], Value::Null);
    assert_eq!(r["label"], label.as_str());
    assert_eq!(r["target_type"], "default");
    for key in ["restore_ms", "replay_ms", "total_ms"] {
        assert!(r[key].as_u64().is_some_and(|v| v > 0), "{key}: {}", r[key]);
    }
    assert!(r["total_ms"].as_u64().unwrap() >= r["restore_ms"].as_u64().unwrap() + r["replay_ms"].as_u64().unwrap());
    assert!(r["restore_files"].as_u64().unwrap() > 100);
    assert!(r["restore_bytes"].as_u64().unwrap() > 60 << 20, "scale 5 is about 75 MB: {}", r["restore_bytes"]);
    // Shared buffers and a dozen processes: tens of MB. PSS where smaps_rollup is readable (on the test
    // machine it was not, for the postgres user's own server: RSS was reported).
    assert!(r["memory_measure"] == "pss" || r["memory_measure"] == "rss", "{}", r["memory_measure"]);
    assert!(r["peak_memory_bytes"].as_u64().unwrap() > 10 << 20, "{}", r["peak_memory_bytes"]);
    assert_eq!(r["amcheck"]["passed"], true, "{}", r["amcheck"]);
    assert!(r["reference_source"].as_str().unwrap().contains("last transaction end archived"), "{}", r["reference_source"]);
    let queries = r["queries"].as_array().unwrap();
    assert_eq!(queries.len(), 3);
    assert!(queries.iter().all(|q| q["passed"] == true), "{queries:?}");
    assert_eq!(queries[0]["value"], "500000");
    assert_eq!(queries[2]["value"], "110");
    assert!(r["postmaster_pid"].as_u64().is_some());
    assert_cleaned_up(&r, &work);
    // Nothing was written where the source's tablespace lives.
    let tablespace_after: Vec<_> = std::fs::read_dir(&location).unwrap().flatten().map(|e| e.file_name()).collect();
    assert_eq!(tablespace_before, tablespace_after);
    // The result is stored as printed. The copy promoted to timeline 2 but archived nothing: the
    // repository has no WAL or history file of timeline 2.
    let stored = stored_results(&setup);
    assert_eq!(stored, vec![r.clone()]);
    let wal: Vec<String> = snapshot(&setup.repo.join("stanza").join(STANZA).join("wal")).into_keys().collect();
    assert!(!wal.is_empty() && wal.iter().all(|p| !p.rsplit('/').next().unwrap().starts_with("00000002")), "{wal:?}");

    // Text output: a line per step and the verdict.
    let out = setup.strata_ok(&["restore-test"]);
    for want in ["restore: ", "WAL replay: ", "peak memory of the server: ", "pg_amcheck: no corruption found", "query 'accounts are there' (postgres): 500000: passed", "cleanup: server (pid "] {
        assert!(out.contains(want), "{want:?} missing from:\n{out}");
    }
    assert!(out.trim_end().ends_with("restore test passed"), "{out}");
    let stored = stored_results(&setup);
    assert_eq!(stored.len(), 2);
    assert_cleaned_up(&stored[1], &work);

    // A deadline shorter than restore, start and checks take: a failure naming the timeout, cleaned up.
    setup.edit_config("timeout_secs = 600", "timeout_secs = 1");
    let out = setup.strata(&["restore-test"]);
    let line = expect_one_error_line(&out, &["restore-test"]);
    assert!(line.starts_with("error: restore test failed: timed out after 1 s (while "), "{line}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("restore test FAILED: timed out after 1 s"), "{stdout}");
    let stored = stored_results(&setup);
    assert_eq!(stored.len(), 3);
    assert_eq!(stored[2]["passed"], false);
    assert_cleaned_up(&stored[2], &work);
}

#[test]
fn a_stale_backup_fails_its_freshness_check() {
    let dir = TestDir::new("restore_test_stale");
    let setup = Setup::new(&dir, "local", "", &[]);
    setup.strata_ok(&["stanza-create"]);
    setup.pg.pgbench_init(1);
    setup.pg.psql(
        "CREATE TABLE events (id serial PRIMARY KEY, created_at timestamptz NOT NULL);
         INSERT INTO events (created_at) VALUES (now() - interval '3 days')",
    );
    let label = setup.backup("full");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(120));
    let work = dir.subdir("restore-test-work");
    restore_test_config(
        &setup,
        &work,
        600,
        "[[restore_test.query]]\nname = \"events are fresh\"\nsql = \"select max(created_at) from events\"\nmax_age_secs = 3600\n",
    );

    let (ok, r, stderr) = restore_test_json(&setup, &[]);
    assert!(!ok, "a stale backup passed");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].starts_with("error: restore test failed: query 'events are fresh' returned "), "{stderr}");
    assert_eq!(r["passed"], false);
    assert_eq!(r["label"], label.as_str());
    let failure = r["failure"].as_str().unwrap();
    assert!(failure.contains("events are fresh") && failure.contains("expected at most 3600 s"), "{failure}");
    assert_eq!(r["queries"][0]["passed"], false);
    assert_eq!(r["amcheck"]["passed"], true);
    assert!(r["replay_ms"].as_u64().is_some(), "the server started and recovered");
    assert_cleaned_up(&r, &work);

    // A fresh event written after the backup: a restore to the archive's end replays it and passes ...
    setup.pg.psql("INSERT INTO events (created_at) VALUES (now())");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(120));
    let (ok, r, stderr) = restore_test_json(&setup, &[]);
    assert!(ok, "{stderr}");
    assert_eq!(r["queries"][0]["passed"], true);
    assert_cleaned_up(&r, &work);
    // ... but the backup alone (--type immediate) still only holds the stale one, measured against the
    // backup's end.
    let (ok, r, _) = restore_test_json(&setup, &["--type", "immediate"]);
    assert!(!ok);
    assert_eq!(r["target_type"], "immediate");
    assert_eq!(r["reference_source"], "the backup's end");
    assert!(r["failure"].as_str().unwrap().starts_with("query 'events are fresh' returned "), "{}", r["failure"]);
    assert_cleaned_up(&r, &work);
    assert_eq!(stored_results(&setup).iter().map(|r| r["passed"].as_bool().unwrap()).collect::<Vec<_>>(), vec![false, true, false]);
}

#[test]
fn a_server_that_cannot_start_is_a_failure_with_its_log() {
    let dir = TestDir::new("restore_test_no_start");
    let setup = Setup::new(&dir, "local", "", &[]);
    setup.strata_ok(&["stanza-create"]);
    setup.pg.pgbench_init(1);
    // Takes effect at the next start only: the source keeps running, every restored copy fails to start.
    setup.pg.psql("ALTER SYSTEM SET shared_preload_libraries = 'strata_no_such_library'");
    setup.backup("full");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(120));
    let work = dir.subdir("restore-test-work");
    restore_test_config(&setup, &work, 600, "");

    let (ok, r, stderr) = restore_test_json(&setup, &[]);
    assert!(!ok);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].starts_with("error: restore test failed: cannot start the restored server: "), "{stderr}");
    let failure = r["failure"].as_str().unwrap();
    assert!(failure.contains("server log:") && failure.contains("strata_no_such_library"), "{failure}");
    assert!(r["restore_ms"].as_u64().is_some(), "the restore itself worked");
    assert_eq!(r["replay_ms"], Value::Null);
    assert_eq!(r["amcheck"], Value::Null);
    assert_cleaned_up(&r, &work);
    assert_eq!(stored_results(&setup), vec![r]);
}
