//! Restore, delta restore and verify against a hostile or damaged world: another cluster's data directory
//! given to `--delta`, a backup's own WAL deleted or truncated in the repository, a damaged chunk hit while
//! other restore workers are busy, a gap after the backup. Each must end in one clear error line (or a
//! finding that fails verify), never in a success that lies, a panic, or a changed directory.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;
use strata_integration::*;

/// The repository path of an archived WAL file's record.
fn wal_record(setup: &Setup, name: &str) -> PathBuf {
    setup.repo.join("stanza").join(STANZA).join("wal").join(&name[..16]).join(name)
}

/// The newest backup's label and stop segment, from info.
fn newest_backup(setup: &Setup) -> (String, String) {
    let info = setup.info();
    let b = info[0]["backups"].as_array().unwrap().last().expect("a backup").clone();
    (b["label"].as_str().unwrap().to_string(), b["wal_stop"].as_str().unwrap().to_string())
}

/// A cluster, its stanza and one full backup with a few files' worth of rows.
fn backed_up(dir: &TestDir, scale: u32) -> (Setup, String) {
    let setup = Setup::new(dir, "local", "", &[]);
    setup.strata_ok(&["stanza-create"]);
    setup.pg.pgbench_init(scale);
    let label = setup.backup("full");
    (setup, label)
}

fn copy_dir(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(status.success(), "cp -a {} {}", from.display(), to.display());
}

#[test]
fn delta_restore_refuses_another_cluster_another_version_and_a_missing_pg_control() {
    let dir = TestDir::new("hostile-delta");
    let (setup, _) = backed_up(&dir, 1);
    // Another cluster, stopped: initdb'd beside the stanza's, with its own system identifier.
    let other = PgCluster::init(&dir, PgOptions::new("true").name("other"));
    let refused = |target: &Path, want: &str| {
        let before = snapshot(target);
        let line = setup.strata_fails(&["restore", "--delta", "--pg-data", target.to_str().unwrap()]);
        assert!(line.contains(want), "{}: {line}", target.display());
        assert!(snapshot(target) == before, "the refused directory {} changed", target.display());
    };
    refused(other.data_dir(), "system");

    // A directory of another major version with a file of the user's.
    let v16 = dir.path().join("v16");
    copy_dir(other.data_dir(), &v16);
    std::fs::write(v16.join("PG_VERSION"), "16\n").unwrap();
    std::fs::write(v16.join("my-notes.txt"), "do not delete").unwrap();
    refused(&v16, "PostgreSQL 16");

    // The stanza's own cluster's copy, but without pg_control, or with it cut short: unknown, refused.
    let source = setup.pg.data_dir().to_path_buf();
    let no_control = dir.path().join("no-control");
    copy_dir(&source, &no_control);
    let _ = std::fs::remove_file(no_control.join("postmaster.pid"));
    let control = std::fs::read(no_control.join("global/pg_control")).unwrap();
    std::fs::remove_file(no_control.join("global/pg_control")).unwrap();
    refused(&no_control, "pg_control");
    std::fs::write(no_control.join("global/pg_control"), &control[..100]).unwrap();
    refused(&no_control, "pg_control");
}

#[test]
fn verify_and_info_fail_when_the_newest_backups_own_wal_is_missing() {
    let dir = TestDir::new("hostile-verify-wal");
    let (setup, _) = backed_up(&dir, 1);
    let (label, stop) = newest_backup(&setup);
    setup.strata_ok(&["verify"]);
    // The stop segment is the archive's last: deleting it leaves no gap between archived segments.
    std::fs::remove_file(wal_record(&setup, &stop)).unwrap();

    for args in [vec!["verify"], vec!["verify", "--set", label.as_str()]] {
        let out = setup.strata(&args);
        let line = expect_one_error_line(&out, &args);
        assert!(line.contains("verify found"), "{line}");
        let stdout = String::from_utf8_lossy(&out.stdout);
        let finding = stdout
            .lines()
            .find(|l| l.contains(&stop))
            .unwrap_or_else(|| panic!("{args:?} names the missing {stop}:\n{stdout}"));
        assert!(finding.contains(&format!("backup {label}")) && finding.contains("cannot be made consistent"), "{finding}");
    }
    let info = setup.info();
    assert_eq!(info[0]["status"]["status"], "critical", "{info:#}");
    let text = setup.strata_ok(&["info"]);
    assert!(!text.contains("status: ok"), "{text}");
    assert!(text.contains(&format!("the newest backup {label} cannot be recovered")), "{text}");
}

#[test]
fn restore_refuses_a_needed_wal_record_that_does_not_read() {
    let dir = TestDir::new("hostile-restore-wal");
    let (setup, _) = backed_up(&dir, 1);
    let (label, stop) = newest_backup(&setup);
    std::fs::write(wal_record(&setup, &stop), b"").unwrap();
    for extra in [&[][..], &["--type", "immediate"][..]] {
        let target = dir.path().join(format!("restored{}", extra.len()));
        let mut args = vec!["restore", "--pg-data", target.to_str().unwrap()];
        args.extend_from_slice(extra);
        let line = setup.strata_fails(&args);
        assert!(line.contains(&stop) && line.contains(&label) && line.contains("cannot be restored"), "{line}");
        assert!(!target.exists(), "nothing is written before the refusal");
    }
    // A verify names the unreadable record and the backup it breaks.
    let out = setup.strata(&["verify"]);
    expect_one_error_line(&out, &["verify"]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let finding = stdout.lines().find(|l| l.contains(&stop)).unwrap_or_else(|| panic!("{stdout}"));
    assert!(finding.contains(&format!("backup {label}")), "{finding}");
}

#[test]
fn restore_after_a_chunk_hash_failure_prints_one_error_line_every_time() {
    let dir = TestDir::new("hostile-restore-chunk");
    let setup = Setup::new(&dir, "local", "", &[]);
    setup.strata_ok(&["stanza-create"]);
    setup.pg.pgbench_init(3);
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));
    let before = pack_files(&setup.repo);
    setup.backup("full");
    // One byte flipped three quarters into the largest pack the backup wrote (WAL archived meanwhile has
    // its own packs): the worker that meets that chunk fails while the others are busy with theirs, which
    // is when a worker abandoned mid-task used to panic as the process exited.
    let written: Vec<PathBuf> = pack_files(&setup.repo).into_iter().filter(|p| !before.contains(p)).collect();
    let largest = written.iter().max_by_key(|p| std::fs::metadata(p).unwrap().len()).expect("the backup wrote a pack");
    let mut bytes = std::fs::read(largest).unwrap();
    let at = bytes.len() * 3 / 4;
    bytes[at] ^= 0x40;
    std::fs::write(largest, &bytes).unwrap();
    for run in 0..30 {
        let target = dir.path().join(format!("restore-{run}"));
        let line = setup.strata_fails(&["restore", "--pg-data", target.to_str().unwrap()]);
        assert!(line.contains("chunk"), "run {run}: {line}");
    }
}

#[test]
fn restore_refusing_a_gap_names_where_recovery_would_stop() {
    let dir = TestDir::new("hostile-restore-gap");
    let (setup, _) = backed_up(&dir, 1);
    let (_, stop) = newest_backup(&setup);
    let mut after = Vec::new();
    for _ in 0..2 {
        setup.pg.pgbench_transactions(50, 1);
        after.push(setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60)));
    }
    assert!(after[0] > stop, "{after:?} follow {stop}");
    let missing = wal_record(&setup, &after[0]);
    std::fs::remove_file(&missing).unwrap();
    let target = dir.path().join("restored");
    let line = setup.strata_fails(&["restore", "--pg-data", target.to_str().unwrap()]);
    // The last segment recovery reads is the one before the gap.
    let before = after[0].clone();
    let previous = {
        let n = u64::from_str_radix(&before[16..], 16).unwrap() - 1;
        format!("{}{:08X}", &before[..16], n)
    };
    assert!(line.contains(&format!("recovery would stop at {previous} and")), "{line}");
    assert!(!target.exists());
}
