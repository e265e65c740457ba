//! Damaged records and what crashes leave, as a hostile user or a failing disk makes them: one bad record
//! is a finding about its backup or WAL file while everything else keeps working, a flipped byte that
//! still decodes fails the record's checksum, and expire removes the temporary files and markers of
//! processes that died.

mod common;

use common::*;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};
use strata_integration::*;

fn record_path(setup: &Setup, label: &str) -> PathBuf {
    setup.repo.join("stanza").join(STANZA).join("backup").join(format!("{label}.record"))
}

fn wal_record_path(setup: &Setup, name: &str) -> PathBuf {
    setup.repo.join("stanza").join(STANZA).join("wal").join(&name[..16]).join(name)
}

fn labels(list: &Value, key: &str) -> Vec<String> {
    list.as_array().unwrap_or_else(|| panic!("not an array: {list}")).iter().map(|b| b[key].as_str().unwrap().to_string()).collect()
}

fn packs(setup: &Setup) -> Vec<PathBuf> {
    let mut p = pack_files(&setup.repo);
    p.sort();
    p
}

#[test]
fn damaged_records_are_findings_and_everything_else_keeps_working() {
    let dir = TestDir::new("hostile_records");
    let setup = Setup::new(&dir, "local", "", &[]);
    setup.strata_ok(&["stanza-create"]);
    setup.pg.pgbench_init(1);
    let full1 = setup.backup("full");
    setup.pg.psql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 10 = 0");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));
    let full2 = setup.backup("full");
    setup.pg.psql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 10 = 1");
    let full3 = setup.backup("full");
    setup.pg.psql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 10 = 2");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));
    let info = setup.info();
    let first_segment = info[0]["backups"][0]["wal_start"].as_str().unwrap().to_string();
    assert!(info[0]["backups"][1]["wal_start"].as_str().unwrap()[8..] > first_segment[8..], "{info}");

    // Garbage under a backup's name; one byte of a real record changed; garbage for a WAL record that only
    // the oldest backup needs.
    let garbage = "20991231-000000F";
    std::fs::write(record_path(&setup, garbage), "x\n").unwrap();
    let mut altered = std::fs::read(record_path(&setup, &full3)).unwrap();
    assert!(altered.len() > 0x8f && altered[0x8f] != 0x7f);
    altered[0x8f] = 0x7f;
    std::fs::write(record_path(&setup, &full3), &altered).unwrap();
    std::fs::write(wal_record_path(&setup, &first_segment), "x\n").unwrap();

    // info: the damage listed, the status not ok, the intact backups as before.
    let text = setup.strata_ok(&["info"]);
    assert!(text.contains(&format!("DAMAGED backup: {garbage}")), "{text}");
    assert!(text.contains(&format!("DAMAGED backup: {full3}")) && text.contains("checksum mismatch"), "{text}");
    assert!(text.contains(&format!("DAMAGED record of {first_segment}")), "{text}");
    assert!(text.contains("status: critical"), "{text}");
    let info = setup.info();
    assert_eq!(labels(&info[0]["backups"], "label"), vec![full1.clone(), full2.clone()], "{info}");
    let mut damaged = labels(&info[0]["damaged_backups"], "label");
    damaged.sort();
    assert_eq!(damaged, vec![full3.clone(), garbage.to_string()], "{info}");
    assert_eq!(labels(&info[0]["archive"]["damaged"], "name"), vec![first_segment.clone()], "{info}");
    assert_eq!(info[0]["status"]["status"], "critical", "{info}");

    // verify: every damaged record is a problem, the intact backups are verified all the same.
    let out = setup.strata(&["verify"]);
    let line = expect_one_error_line(&out, &["verify"]);
    assert_eq!(out.status.code(), Some(1), "{}", describe(&out));
    assert!(line.contains("problems"), "{line}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    for ok in [&full1, &full2] {
        assert!(stdout.contains(&format!("backup {ok}: ok")), "{stdout}");
    }
    assert!(stdout.contains(&format!("backup {full3}: 1 PROBLEMS")) && stdout.contains("checksum mismatch"), "{stdout}");
    assert!(stdout.contains(&format!("backup {garbage}: 1 PROBLEMS")), "{stdout}");
    assert!(stdout.contains(&format!("WAL {first_segment}: the WAL record cannot be read")), "{stdout}");
    setup.strata_ok(&["verify", "--set", &full2]);
    let line = setup.strata_fails(&["verify", "--set", &full3]);
    assert!(line.contains("problems"), "{line}");

    // restore: a backup that needs the damaged WAL record is refused naming it; the others restore.
    let refused = dir.path().join("refused");
    let line = setup.strata_fails(&["restore", "--pg-data", refused.to_str().unwrap(), "--set", &full1]);
    assert!(line.contains(&first_segment), "{line}");
    assert!(!refused.exists() || std::fs::read_dir(&refused).unwrap().next().is_none(), "the refused restore wrote files");
    let line = setup.strata_fails(&["restore", "--pg-data", refused.to_str().unwrap(), "--set", &full3]);
    assert!(line.contains(&format!("{full3}.record is corrupt: checksum mismatch")), "{line}");
    let set2 = dir.path().join("set2");
    setup.strata_ok(&["restore", "--pg-data", set2.to_str().unwrap(), "--set", &full2, "--type", "immediate"]);
    let copy = setup.restore_and_start("restored", &[]);
    assert_same_tables(&setup.pg, &copy, "postgres");
    drop(copy);

    // expire: retention on the readable records; the damaged ones and every pack stay, with one warning.
    let packs_before = packs(&setup);
    let out = setup.strata(&["expire", "--retention-full", "1", "--gc-grace-secs", "0"]);
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stdout.contains(&format!("expire backup {full1} (full)")), "{}", describe(&out));
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("no pack is removed")).collect();
    assert_eq!(warnings.len(), 1, "{}", describe(&out));
    assert!(warnings[0].starts_with("warning: ") && warnings[0].contains("cannot be read"), "{}", describe(&out));
    assert_eq!(packs(&setup), packs_before, "a pack was removed while a record is unreadable");
    for p in [record_path(&setup, garbage), record_path(&setup, &full3), wal_record_path(&setup, &first_segment)] {
        assert!(p.exists(), "expire removed the damaged {}", p.display());
    }
    assert!(!record_path(&setup, &full1).exists());
    assert_eq!(setup.backup_labels(), vec![full2.clone()]);
}

/// Sets a file's modification time `secs` seconds into the past.
fn age_file(path: &Path, secs: u64) {
    let f = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    f.set_modified(SystemTime::now() - Duration::from_secs(secs)).unwrap();
}

#[test]
fn expire_removes_what_dead_processes_left() {
    let dir = TestDir::new("hostile_leftovers");
    let setup = Setup::new(&dir, "local", "", &[]);
    setup.strata_ok(&["stanza-create"]);
    setup.backup("full");
    // Temporary files as the posix storage names them, left by a push and a replicator killed between
    // writing and renaming: two hours old, and a recent one.
    let wal_dir = setup.repo.join("stanza").join(STANZA).join("wal").join("0000000100000000");
    let pack_dir = setup.repo.join("pack").join("ab");
    std::fs::create_dir_all(&wal_dir).unwrap();
    std::fs::create_dir_all(&pack_dir).unwrap();
    let old_wal_tmp = wal_dir.join(".tmp-000000010000000000000009-0123456789abcdef");
    let old_pack_tmp = pack_dir.join(".tmp-ab000000000000000000000000000000.pack-fedcba9876543210");
    let fresh_tmp = pack_dir.join(".tmp-ab111111111111111111111111111111.pack-0000000000000001");
    for p in [&old_wal_tmp, &old_pack_tmp, &fresh_tmp] {
        std::fs::write(p, vec![7u8; 4096]).unwrap();
    }
    // This test runs as root, strata as the repository's owner, who wrote them.
    let owner = std::fs::metadata(&setup.repo).unwrap();
    for p in [&wal_dir, &pack_dir, &old_wal_tmp, &old_pack_tmp, &fresh_tmp] {
        use std::os::unix::fs::MetadataExt;
        std::os::unix::fs::chown(p, Some(owner.uid()), Some(owner.gid())).unwrap();
    }
    age_file(&old_wal_tmp, 7200);
    age_file(&old_pack_tmp, 7200);
    // A minute old: younger than the grace period below, but older than any expire started after it.
    age_file(&fresh_tmp, 60);
    // Markers of a backup that died on another host and of an expire killed here, not refreshed for two
    // hours; and an old marker of this host whose process still exists (a stopped backup may resume).
    let backup_dir = setup.repo.join("stanza").join(STANZA).join("backup");
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap().trim().to_string();
    let marker = |name: &str, kind: &str, host: &str, pid: u32| {
        let p = backup_dir.join(format!("{name}.running"));
        let body = serde_json::json!({ "kind": kind, "label": name, "start_time": 1_700_000_000, "host": host, "pid": pid });
        std::fs::write(&p, serde_json::to_vec_pretty(&body).unwrap()).unwrap();
        age_file(&p, 7200);
        p
    };
    let dead_backup = marker("20200101-000000F", "backup", "elsewhere", 4242);
    let dead_expire = marker("expire-1700000000-4243", "expire", &host, 999_999_999);
    let alive = marker("20200102-000000F", "backup", &host, std::process::id());

    let out = setup.strata(&["expire", "--retention-full", "1", "--gc-grace-secs", "3600"]);
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for p in [&old_wal_tmp, &old_pack_tmp] {
        let rel = p.strip_prefix(&setup.repo).unwrap().display().to_string();
        assert!(stdout.contains(&format!("remove temporary file {rel}")), "{}", describe(&out));
        assert!(!p.exists(), "{rel} is still there");
    }
    assert!(fresh_tmp.exists(), "a temporary file younger than the grace period was removed");
    assert!(stdout.contains("remove the marker of backup 20200101-000000F") && !dead_backup.exists(), "{}", describe(&out));
    assert!(stdout.contains("remove the marker of expire expire-1700000000-4243") && !dead_expire.exists(), "{}", describe(&out));
    assert!(alive.exists(), "the marker of a live process was removed");

    // Nothing is warned about again but the marker whose process lives.
    let out = setup.strata(&["expire", "--retention-full", "1", "--gc-grace-secs", "3600"]);
    assert!(out.status.success(), "{}", describe(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stdout.contains("remove the marker") && !stdout.contains("remove temporary file"), "{}", describe(&out));
    assert!(!stderr.contains("20200101-000000F"), "{}", describe(&out));
    assert!(stderr.contains("20200102-000000F"), "{}", describe(&out));
    // With no grace, the young temporary file goes too.
    let out = setup.strata_ok(&["expire", "--retention-full", "1", "--gc-grace-secs", "0"]);
    assert!(!fresh_tmp.exists(), "{out}");
    std::fs::remove_file(&alive).unwrap();
}
