//! What a hostile or unlucky operator found on main, each reproduced: two `repo-rekey` at once, two
//! backups of one stanza at once (and one killed outright), a failing `archive_command` during a backup,
//! services started before NATS, errors that repeated themselves, a deleted key file.

mod common;

use common::*;
use std::process::{Child, Output, Stdio};
use std::time::{Duration, Instant};
use strata_integration::*;

fn spawn_strata(setup: &Setup, args: &[&str]) -> Child {
    let mut cmd = setup.bins.strata_cmd(&setup.config, STANZA);
    cmd.args(args).stdin(Stdio::null()).stdout(Stdio::piped()).stderr(Stdio::piped());
    cmd.spawn().unwrap_or_else(|e| panic!("cannot run strata {args:?}: {e}"))
}

/// The names of the stanza's running markers (`<label>.running`).
fn running_markers(setup: &Setup) -> Vec<String> {
    let dir = setup.repo.join("stanza").join(STANZA).join("backup");
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .map(|d| d.flatten().map(|e| e.file_name().to_string_lossy().into_owned()).filter(|n| n.ends_with(".running")).collect())
        .unwrap_or_default();
    names.sort();
    names
}

fn set_archive_command_failing(setup: &Setup, failing: bool) {
    if failing {
        setup.pg.psql("ALTER SYSTEM SET archive_command = 'false'");
    } else {
        setup.pg.psql("ALTER SYSTEM RESET archive_command");
    }
    setup.pg.psql("SELECT pg_reload_conf()");
}

fn stderr_lines(out: &Output) -> Vec<String> {
    String::from_utf8_lossy(&out.stderr).lines().filter(|l| !l.trim().is_empty()).map(str::to_string).collect()
}

#[test]
fn a_second_backup_is_refused_at_once_naming_the_running_one_and_a_killed_one_blocks_nothing() {
    let dir = TestDir::new("ops_backup_lock");
    let setup = Setup::new(&dir, "local", "archive_timeout_secs = 600", &[]);
    setup.strata_ok(&["stanza-create"]);

    // A backup that cannot end while archive_command fails: it waits for its last WAL segment.
    set_archive_command_failing(&setup, true);
    let first = spawn_strata(&setup, &["backup", "--type", "full"]);
    let marker = wait_until("the first backup's running marker", Duration::from_secs(60), || running_markers(&setup).pop());
    let label = marker.trim_end_matches(".running").to_string();
    let started = Instant::now();
    let line = setup.strata_fails(&["backup", "--type", "full"]);
    assert!(started.elapsed() < Duration::from_secs(20), "the second backup was not refused at once");
    assert!(line.contains("a backup of stanza 'main' is already running"), "{line}");
    assert!(line.contains(&format!("backup {label}")) && line.contains(&format!("pid {}", first.id())) && line.contains("host "), "{line}");
    assert_eq!(running_markers(&setup), vec![marker.clone()], "the refused backup must leave the running one's marker alone");
    set_archive_command_failing(&setup, false);
    let out = first.wait_with_output().unwrap();
    assert!(out.status.success(), "the running backup must go on to its commit:\n{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stdout).contains(&format!("backup {label} committed")), "{}", describe(&out));

    // Killed outright (SIGKILL) while it waits: the next backup is not blocked.
    set_archive_command_failing(&setup, true);
    let mut killed = spawn_strata(&setup, &["backup", "--type", "full"]);
    wait_until("the second backup's running marker", Duration::from_secs(60), || running_markers(&setup).pop());
    killed.kill().unwrap();
    killed.wait().unwrap();
    set_archive_command_failing(&setup, false);
    setup.backup("full");

    // Started at the same moment, several times: never both at work (the loser's error was a commit
    // refused with "already exists" after a whole backup's work), never both refused.
    for round in 0..3 {
        let both = [spawn_strata(&setup, &["backup", "--type", "incr"]), spawn_strata(&setup, &["backup", "--type", "incr"])];
        let outs: Vec<Output> = both.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
        assert!(outs.iter().any(|o| o.status.success()), "round {round}: one of two backups at once must succeed:\n{}\n{}", describe(&outs[0]), describe(&outs[1]));
        for o in outs.iter().filter(|o| !o.status.success()) {
            let line = expect_one_error_line(o, &["backup"]);
            assert!(line.contains("is already running"), "round {round}: {line}");
        }
    }

    // An unreadable directory in the repository: the path and the reason once, not twice.
    use std::os::unix::fs::PermissionsExt;
    let stanza_dir = setup.repo.join("stanza").join(STANZA);
    std::fs::set_permissions(&stanza_dir, std::fs::Permissions::from_mode(0o000)).unwrap();
    let out = setup.strata(&["backup"]);
    std::fs::set_permissions(&stanza_dir, std::fs::Permissions::from_mode(0o750)).unwrap();
    let line = expect_one_error_line(&out, &["backup"]);
    assert_eq!(line.matches("permission denied").count(), 1, "{line}");
}

#[test]
fn a_backup_whose_wal_is_not_archived_fails_after_archive_timeout_secs_naming_segment_and_failure() {
    let dir = TestDir::new("ops_archive_timeout");
    let setup = Setup::new(&dir, "local", "archive_timeout_secs = 8", &[]);
    setup.strata_ok(&["stanza-create"]);
    set_archive_command_failing(&setup, true);
    let started = Instant::now();
    let out = setup.strata(&["backup", "--type", "full"]);
    let took = started.elapsed();
    assert!(!out.status.success(), "{}", describe(&out));
    assert!(took < Duration::from_secs(60), "the backup waited {took:?} instead of archive_timeout_secs = 8");
    let lines = stderr_lines(&out);
    let errors: Vec<&String> = lines.iter().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), 1, "{}", describe(&out));
    let error = errors[0];
    assert_eq!(lines.last(), Some(error), "{}", describe(&out));
    // On the way: a line while it waits, naming the segment.
    let waiting = lines.iter().find(|l| l.starts_with("waiting for WAL segment ")).unwrap_or_else(|| panic!("no progress line:\n{}", describe(&out)));
    let segment = waiting["waiting for WAL segment ".len()..].split(' ').next().unwrap();
    assert_eq!(segment.len(), 24, "{waiting}");
    assert!(error.contains(&format!("WAL segment {segment}")) && error.contains("not archived within 8 s"), "{error}");
    assert!(error.contains("pg_stat_archiver: ") && error.contains("failed attempts, the last for "), "{error}");
}

#[test]
fn services_wait_for_nats_at_start_and_run_once_it_is_reachable() {
    let dir = TestDir::new("ops_nats_wait");
    let mut nats = NatsServer::start(&dir);
    // No archiving: the archive_command would wait for services this test does not run.
    let setup = Setup::new(&dir, &nats.url(), "", &[("archive_mode", "off")]);
    nats.stop();
    let mut sealer = Service::spawn(&setup.bins, "strata-sealer", &setup.config, dir.path());
    let mut uploader = Service::spawn(&setup.bins, "strata-uploader", &setup.config, dir.path());
    let line = sealer.wait_for_log("NATS is not reachable yet; retrying", Duration::from_secs(60));
    assert!(line.contains("cannot reach the message bus"), "the reason is logged: {line}");
    uploader.wait_for_log("NATS is not reachable yet; retrying", Duration::from_secs(60));
    sealer.wait_for_log("try_number=2", Duration::from_secs(60));
    // Told to stop while it waits: a clean exit.
    assert!(uploader.stop().success(), "an uploader stopped while waiting for NATS must exit 0");
    nats.start_again();
    sealer.wait_for_log("sealer running", Duration::from_secs(90));
    assert!(sealer.is_running());
}

#[test]
fn concurrent_repo_rekeys_one_wins_and_a_deleted_key_file_is_named() {
    let dir = TestDir::new("ops_rekey_race");
    let setup = Setup::new(&dir, "local", "", &[]);
    let mut current = secret_file(&dir, "pass-0", "the first passphrase of this test");
    setup.append_config(&format!("[encryption]\ntype = \"passphrase\"\npassphrase_file = \"{}\"", current.display()));
    setup.strata_ok(&["stanza-create"]);
    setup.backup("full");
    let mut loser_file = None;
    for round in 1..=3 {
        let files: Vec<_> = ["a", "b"].iter().map(|w| secret_file(&dir, &format!("pass-{round}-{w}"), &format!("passphrase {w} of round {round}"))).collect();
        let children: Vec<Child> = files.iter().map(|f| spawn_strata(&setup, &["repo-rekey", "--new-passphrase-file", f.to_str().unwrap()])).collect();
        let outs: Vec<Output> = children.into_iter().map(|c| c.wait_with_output().unwrap()).collect();
        let winners: Vec<usize> = (0..2).filter(|&i| outs[i].status.success()).collect();
        assert_eq!(winners.len(), 1, "round {round}: exactly one rekey must succeed:\n{}\n{}", describe(&outs[0]), describe(&outs[1]));
        let (w, l) = (winners[0], 1 - winners[0]);
        expect_one_error_line(&outs[l], &["repo-rekey"]);
        // The winner's passphrase opens the repository.
        setup.edit_config(&current.display().to_string(), &files[w].display().to_string());
        setup.strata_ok(&["info"]);
        current = files[w].clone();
        loser_file = Some(files[l].clone());
    }
    // The loser's does not.
    let loser = loser_file.unwrap();
    setup.edit_config(&current.display().to_string(), &loser.display().to_string());
    assert!(setup.strata_fails(&["info"]).contains("wrong passphrase"));
    setup.edit_config(&loser.display().to_string(), &current.display().to_string());

    // A key file deleted from the encrypted repository is named as missing.
    std::fs::remove_file(setup.repo.join("keys/strata.keys")).unwrap();
    let line = setup.strata_fails(&["info"]);
    assert!(line.contains("the key file keys/strata.keys is missing") && !line.contains("unencrypted"), "{line}");
}
