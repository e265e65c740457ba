//! The crash-point matrix: the process is killed (SIGKILL, from inside, at a named crash point of
//! `shared/crashpoint`) at each durable step of backup, commit, archive-push, expire and replication in
//! turn, and then what a crash anywhere must leave true is checked:
//! - no committed backup with a hole, and everything stored reads back: `verify` is clean;
//! - no archived WAL lost or replaced: every WAL record there before the crash is still there, byte for
//!   byte, and a segment whose push was killed is either absent or archived whole;
//! - the next run of the same operation succeeds;
//! - after the next `expire`, nothing temporary is left behind (no `.tmp-*` file, no running marker).
//!
//! Each case first checks that its crash point was reached (the process says so, then dies of SIGKILL),
//! so a build without crash points, or a point that moved off the path, fails the test instead of
//! passing it unexercised.

mod common;

use common::*;
use std::collections::BTreeMap;
use std::os::unix::process::ExitStatusExt;
use std::path::Path;
use std::process::Output;
use std::time::Duration;
use strata_integration::*;

/// Runs `strata args` with `point` armed; asserts the process died there.
fn crash_at(setup: &Setup, point: &str, action: &str, args: &[&str]) -> Output {
    let failpoints = format!("{point}={action}");
    let out = setup.strata_env(args, &[("FAILPOINTS", failpoints.as_str())]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.signal() == Some(libc::SIGKILL) && stderr.contains(&format!("crash point {point}")),
        "strata {args:?} with FAILPOINTS={failpoints} did not die at its crash point:\n{}",
        describe(&out)
    );
    out
}

/// Every archived WAL record of the stanza (path → bytes).
fn wal_records(repo: &Path) -> BTreeMap<String, Vec<u8>> {
    snapshot(repo).into_iter().filter(|(k, _)| k.contains("/wal/")).collect()
}

/// Objects a crash leaves and the next expire must remove.
fn leftovers(repo: &Path) -> Vec<String> {
    let mut out = Vec::new();
    let mut stack = vec![repo.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).into_iter().flatten().flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            if e.path().is_dir() {
                stack.push(e.path());
            } else if name.starts_with(".tmp-") || name.ends_with(".running") {
                out.push(e.path().strip_prefix(repo).unwrap().display().to_string());
            }
        }
    }
    out
}

/// What must hold after any crash: verify clean, no WAL record lost or changed.
fn assert_consistent(setup: &Setup, wal_before: &BTreeMap<String, Vec<u8>>, after: &str) {
    let out = setup.strata(&["verify"]);
    assert!(out.status.success(), "after a crash at {after}, verify is not clean:\n{}", describe(&out));
    let wal_now = wal_records(&setup.repo);
    for (k, v) in wal_before {
        assert!(wal_now.get(k) == Some(v), "after a crash at {after}, WAL record {k} is gone or changed");
    }
}

/// The next expire removes what the crash left.
fn assert_expire_cleans_up(setup: &Setup, after: &str) {
    // Expire leaves a temporary file written in the same second as its own marker (it may be a write in
    // progress; times have one-second resolution): wait for the clock to pass the newest one.
    let newest = leftovers(&setup.repo)
        .iter()
        .filter_map(|p| std::fs::metadata(setup.repo.join(p)).ok())
        .map(|m| std::os::unix::fs::MetadataExt::mtime(&m))
        .max();
    if let Some(newest) = newest {
        let now = || std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_secs() as i64;
        wait_until("the clock to pass the newest leftover's second", Duration::from_secs(5), || (now() > newest).then_some(()));
    }
    setup.strata_ok(&["expire", "--retention-full", "100", "--gc-grace-secs", "0"]);
    let left = leftovers(&setup.repo);
    assert!(left.is_empty(), "after a crash at {after} and an expire, these are left: {left:?}");
}

/// A cluster archiving into a posix repository, with one full backup.
fn setup(dir: &TestDir) -> Setup {
    let setup = Setup::new(dir, "local", "", &[]);
    setup.strata_ok(&["stanza-create"]);
    setup.pg.pgbench_init(2);
    setup.backup("full");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));
    setup
}

#[test]
fn a_backup_killed_at_any_durable_step_leaves_a_consistent_repository() {
    let dir = TestDir::new("crash_backup");
    let setup = setup(&dir);
    // Each point with the action that reaches it during an incremental backup in one process.
    let points: &[(&str, &str)] = &[
        ("backup.after-start", "return(kill)"),
        ("posix.put.before-rename", "return(kill)"),
        ("posix.put.before-rename", "2*off->return(kill)"),
        ("uploader.after-pack", "return(kill)"),
        ("backup.after-stop", "return(kill)"),
        ("uploader.before-backup-record", "return(kill)"),
        ("posix.put_new.before-link", "return(kill)"),
        ("uploader.after-backup-record", "return(kill)"),
    ];
    for (point, action) in points {
        setup.pg.pgbench_transactions(200, 2);
        let wal_before = wal_records(&setup.repo);
        let committed_before = records(&setup.repo);
        crash_at(&setup, point, action, &["backup", "--type", "incr"]);
        let committed_after = records(&setup.repo);
        // Only the last two points come after the record is durable.
        let committed = point.ends_with("after-backup-record");
        assert_eq!(
            committed_after.len(),
            committed_before.len() + usize::from(committed),
            "a crash at {point} ({action}): records before {committed_before:?}, after {committed_after:?}"
        );
        assert_consistent(&setup, &wal_before, point);
        // The next backup succeeds, and restores (verify above read every committed one back).
        setup.backup("incr");
        assert_expire_cleans_up(&setup, point);
    }
    eprintln!("crash_points: backup: {} crash points", points.len());
}

/// Makes the cluster hold a segment ready for archiving that is not archived yet: the archiver is turned
/// off for a moment (archive_command = false) while the segment is switched out. Returns its path.
fn ready_segment(setup: &Setup) -> std::path::PathBuf {
    setup.pg.psql("ALTER SYSTEM SET archive_command = 'false'");
    setup.pg.psql("SELECT pg_reload_conf()");
    setup.pg.psql("CREATE TABLE IF NOT EXISTS crash_t (i int); INSERT INTO crash_t SELECT generate_series(1, 1000)");
    let name = setup.pg.psql("SELECT pg_walfile_name(pg_switch_wal())");
    let ready = setup.pg.data_dir().join("pg_wal/archive_status").join(format!("{name}.ready"));
    wait_until(&format!("{} to appear", ready.display()), Duration::from_secs(60), || ready.exists().then_some(()));
    setup.pg.data_dir().join("pg_wal").join(name)
}

/// Gives archiving back to Strata and waits until the cluster's archiver has caught up.
fn resume_archiving(setup: &Setup) {
    setup.pg.psql("ALTER SYSTEM RESET archive_command");
    setup.pg.psql("SELECT pg_reload_conf()");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(120));
}

#[test]
fn an_archive_push_killed_at_any_durable_step_loses_and_replaces_nothing() {
    let dir = TestDir::new("crash_push");
    let setup = setup(&dir);
    let points: &[(&str, &str)] = &[
        ("posix.put.before-rename", "return(kill)"),
        ("uploader.after-pack", "return(kill)"),
        ("uploader.before-wal-record", "return(kill)"),
        ("posix.put_new.before-link", "return(kill)"),
        ("uploader.after-wal-record", "return(kill)"),
    ];
    let out = dir.subdir("fetched");
    for (point, action) in points {
        let segment = ready_segment(&setup);
        let name = segment.file_name().unwrap().to_str().unwrap().to_string();
        let wal_before = wal_records(&setup.repo);
        crash_at(&setup, point, action, &["archive-push", segment.to_str().unwrap()]);
        // Archived whole or not at all.
        let fetched = out.join(&name);
        let get = setup.strata(&["archive-get", &name, fetched.to_str().unwrap()]);
        if point.ends_with("after-wal-record") {
            assert!(get.status.success(), "a crash at {point}: the segment's record is written, but archive-get fails:\n{}", describe(&get));
            assert!(std::fs::read(&fetched).unwrap() == std::fs::read(&segment).unwrap(), "a crash at {point}: the archived {name} differs");
        } else {
            assert!(!get.status.success(), "a crash at {point}, before the record: {name} is archived anyway");
        }
        assert_consistent(&setup, &wal_before, point);
        // PostgreSQL pushes the segment again: that succeeds.
        setup.strata_ok(&["archive-push", segment.to_str().unwrap()]);
        resume_archiving(&setup);
        assert_expire_cleans_up(&setup, point);
        let _ = std::fs::remove_file(&fetched);
    }
    eprintln!("crash_points: archive-push: {} crash points", points.len());
}

#[test]
fn an_expire_killed_at_any_durable_step_leaves_every_kept_backup_restorable() {
    let dir = TestDir::new("crash_expire");
    let setup = setup(&dir);
    let points: &[(&str, &str)] = &[
        ("expire.after-records", "return(kill)"),
        ("expire.after-wal", "return(kill)"),
        ("expire.after-pack", "return(kill)"),
    ];
    for (point, action) in points {
        // Two more fulls, so that retention_full = 1 has a full (and its WAL and packs) to remove.
        setup.pg.pgbench_transactions(500, 2);
        setup.backup("full");
        setup.pg.pgbench_transactions(500, 2);
        let newest = setup.backup("full");
        setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));
        crash_at(&setup, point, action, &["expire", "--retention-full", "1", "--gc-grace-secs", "0"]);
        // Whatever the crash left, verify is clean: no kept backup lost a pack, no kept WAL went.
        let out = setup.strata(&["verify"]);
        assert!(out.status.success(), "after a crash at {point}, verify is not clean:\n{}", describe(&out));
        assert!(setup.backup_labels().contains(&newest), "a crash at {point} removed the newest full {newest}");
        setup.strata_ok(&["expire", "--retention-full", "1", "--gc-grace-secs", "0"]);
        assert_eq!(setup.backup_labels(), vec![newest.clone()], "the expire after a crash at {point} did not finish the work");
        let left = leftovers(&setup.repo);
        assert!(left.is_empty(), "after a crash at {point} and an expire, these are left: {left:?}");
        setup.strata_ok(&["verify"]);
    }
    eprintln!("crash_points: expire: {} crash points", points.len());
}

#[test]
fn a_replicator_killed_before_a_record_leaves_no_record_without_its_data() {
    let dir = TestDir::new("crash_replicator");
    let setup = setup(&dir);
    let target = dir.subdir("repo-b");
    setup.append_config(&format!(
        "[[repo]]\nname = \"b\"\ntype = \"posix\"\npath = \"{}\"\n[replicator]\ninterval_secs = 1\nworkers = 1",
        target.display()
    ));
    let points = ["replicator.before-wal-record", "replicator.before-backup-record"];
    for point in points {
        let failpoints = format!("{point}=return(kill)");
        let mut replicator =
            Service::spawn_with_env(&setup.bins, "strata-replicator", &setup.config, dir.path(), &[("FAILPOINTS", failpoints.as_str())]);
        let status = replicator.wait_exit(Duration::from_secs(120));
        assert_eq!(status.signal(), Some(libc::SIGKILL), "the replicator did not die at {point}; see {}", replicator.log_file().display());
        // What the target holds is consistent: verify reads every repository.
        let out = setup.strata(&["--repo", "b", "verify"]);
        assert!(out.status.success() || String::from_utf8_lossy(&out.stderr).contains("does not exist"), "after a crash at {point}, the target is not clean:\n{}", describe(&out));
    }
    // Then a replicator without crash points catches up, and the copy verifies.
    let mut replicator = setup.bins.spawn_service("strata-replicator", &setup.config, dir.path());
    wait_until_every("the replicator to copy the backup to b", Duration::from_secs(300), Duration::from_millis(200), || {
        assert!(replicator.is_running(), "the replicator exited; see {}", replicator.log_file().display());
        let out = setup.strata(&["--repo", "b", "info", "--output", "json"]);
        let v: Option<serde_json::Value> = out.status.success().then(|| serde_json::from_slice(&out.stdout).unwrap());
        v.is_some_and(|v| v[0]["backups"].as_array().is_some_and(|b| !b.is_empty())).then_some(())
    });
    assert!(replicator.stop().success());
    setup.strata_ok(&["--repo", "b", "verify"]);
    setup.strata_ok(&["--repo", "b", "expire", "--retention-full", "100", "--gc-grace-secs", "0"]);
    let left = leftovers(&target);
    assert!(left.is_empty(), "after crashes of the replicator and an expire of b, these are left: {left:?}");
}

#[test]
fn a_rekey_killed_between_repositories_is_finished_by_the_next_one() {
    let dir = TestDir::new("crash_rekey");
    let setup = Setup::new(&dir, "local", "", &[]);
    let second = dir.subdir("repo-b");
    let old = secret_file(&dir, "pass-old", "the passphrase before the rekey");
    let new = secret_file(&dir, "pass-new", "the passphrase after the rekey");
    setup.append_config(&format!(
        "[[repo]]\nname = \"b\"\ntype = \"posix\"\npath = \"{}\"\n[encryption]\ntype = \"passphrase\"\npassphrase_file = \"{}\"",
        second.display(),
        old.display()
    ));
    setup.strata_ok(&["stanza-create"]);
    setup.pg.pgbench_init(1);
    setup.backup("full");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));
    let wal_before = wal_records(&setup.repo);
    let key_file = |repo: &Path| std::fs::read(repo.join("keys/strata.keys")).unwrap();
    let (a_before, b_before) = (key_file(&setup.repo), key_file(&second));

    let point = "rekey.after-repository";
    crash_at(&setup, point, "return(kill)", &["repo-rekey", "--new-passphrase-file", new.to_str().unwrap()]);
    // One repository has the new wrap, the other still the old one; nothing else changed.
    assert_ne!(key_file(&setup.repo), a_before, "a crash at {point}: the first repository was not rewrapped");
    assert_eq!(key_file(&second), b_before, "a crash at {point}: the second repository was rewrapped too");
    // The next rekey, still with the old key configured, finishes the work.
    setup.strata_ok(&["repo-rekey", "--new-passphrase-file", new.to_str().unwrap()]);
    setup.edit_config(&old.display().to_string(), &new.display().to_string());
    assert_consistent(&setup, &wal_before, point);
    setup.strata_ok(&["--repo", "b", "verify"]);
    setup.backup("incr");
    assert_expire_cleans_up(&setup, point);
    assert!(!setup.repo.join("keys/rekey.lock").exists() && !second.join("keys/rekey.lock").exists(), "a crash at {point}: the rekey lock stayed");
}
