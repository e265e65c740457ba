//! Expire keeps the newest full backups with everything that depends on them, and removes the rest: older
//! backups, the WAL only they needed, and packs nothing references.

mod common;

use common::*;
use std::time::Duration;
use strata_integration::*;


fn pack_bytes(setup: &Setup) -> usize {
    snapshot(&setup.repo).iter().filter(|(k, _)| k.ends_with(".pack")).map(|(_, v)| v.len()).sum()
}

#[test]
fn expire_keeps_the_newest_full_and_its_dependants() {
    let dir = TestDir::new("expire");
    let setup = Setup::new(&dir, "local", "", &[]);
    setup.strata_ok(&["stanza-create"]);
    setup.pg.pgbench_init(2);
    let line = setup.strata_fails(&["expire"]);
    assert!(line.contains("no retention is configured"), "{line}");

    let full1 = setup.backup("full");
    setup.pg.psql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 100 = 0");
    let incr1 = setup.backup("incr");
    // Rewrite the big table so the second full shares few chunks with the first.
    setup.pg.psql("UPDATE pgbench_accounts SET filler = md5(aid::text); VACUUM FULL pgbench_accounts");
    let full2 = setup.backup("full");
    setup.pg.psql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 100 = 1");
    let incr2 = setup.backup("incr");
    let digests = setup.pg.table_digests("postgres");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));
    let full2_wal_start = setup.info()[0]["backups"][2]["wal_start"].as_str().unwrap().to_string();

    // A compliance floor of a day: every backup is younger, so nothing goes, whatever the count says.
    let text = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(&setup.config, format!("{text}retention_min_age_days = 1\n")).unwrap();
    let out = setup.strata_ok(&["expire", "--retention-full", "1", "--dry-run", "--gc-grace-secs", "0"]);
    assert!(!out.contains("would expire backup"), "the compliance floor did not hold:\n{out}");
    std::fs::write(&setup.config, text).unwrap();

    let before = snapshot(&setup.repo);
    let out = setup.strata_ok(&["expire", "--retention-full", "1", "--dry-run", "--gc-grace-secs", "0"]);
    assert!(out.contains(&format!("would expire backup {full1}")) && out.contains(&format!("would expire backup {incr1}")), "{out}");
    assert!(!out.contains(&full2) && !out.contains(&incr2), "{out}");
    assert_eq!(snapshot(&setup.repo).keys().collect::<Vec<_>>(), before.keys().collect::<Vec<_>>(), "a dry run changed the repository");

    let packs_before = pack_bytes(&setup);
    let out = setup.strata_ok(&["expire", "--retention-full", "1", "--gc-grace-secs", "0"]);
    assert!(out.contains("remove "), "{out}");
    assert_eq!(setup.backup_labels(), vec![full2.clone(), incr2.clone()]);
    let packs_after = pack_bytes(&setup);
    assert!(packs_after < packs_before, "no pack was removed ({packs_before} -> {packs_after} bytes)\n{out}");
    let first_wal = setup.info()[0]["archive"]["first"].as_str().unwrap().to_string();
    assert!(first_wal[8..] >= full2_wal_start[8..], "WAL before the kept backups remains: {first_wal} < {full2_wal_start}");

    // What is kept still restores, to exactly its end.
    let copy = setup.restore_and_start("restored", &["--set", &incr2, "--type", "immediate"]);
    assert_eq!(copy.table_digests("postgres"), digests);
    if let Err(e) = copy.pg_amcheck() {
        panic!("pg_amcheck after expire: {e}");
    }
}

/// Appends `lines` to the `[[repo]]` entry (the last table of a config written without pipeline keys).
fn set_repo_keys(setup: &Setup, base: &str, lines: &str) {
    std::fs::write(&setup.config, format!("{base}{lines}")).unwrap();
}

#[test]
fn pins_diff_retention_extra_wal_days_and_the_compliance_floor() {
    let dir = TestDir::new("expire_rules");
    let setup = Setup::new(&dir, "local", "", &[]);
    let base = std::fs::read_to_string(&setup.config).unwrap();
    setup.strata_ok(&["stanza-create"]);
    setup.pg.pgbench_init(1);
    let change = |i: u32| {
        setup.pg.psql(&format!("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 50 = {i}"));
        setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));
    };
    let f1 = setup.backup("full");
    change(1);
    let d1 = setup.backup("diff");
    let d1_digests = setup.pg.table_digests("postgres");
    change(2);
    let i1 = setup.backup("incr");
    change(3);
    let f2 = setup.backup("full");
    change(4);
    let d2 = setup.backup("diff");
    change(5);
    let i2 = setup.backup("incr");
    change(6);
    let d3 = setup.backup("diff");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));
    let all = vec![f1.clone(), d1.clone(), i1.clone(), f2.clone(), d2.clone(), i2.clone(), d3.clone()];
    assert_eq!(setup.backup_labels(), all);

    // The compliance floor: every backup is younger than a day, so a real run with one full and one diff
    // kept removes nothing, and says what kept them.
    set_repo_keys(&setup, &base, "retention_full = 1\nretention_diff = 1\nretention_min_age_days = 1\n");
    let out = setup.strata_ok(&["expire", "--gc-grace-secs", "0"]);
    assert!(!out.contains("expire backup"), "the compliance floor did not hold:\n{out}");
    assert!(out.contains(&format!("keep backup {f1} (full): younger than retention_min_age_days = 1 ({f1})")), "{out}");
    assert!(out.contains(&format!("keep backup {d2} (diff): younger than retention_min_age_days = 1 ({d2})")), "{out}");
    assert_eq!(setup.backup_labels(), all, "{out}");

    // A pin on D1 keeps it and its full, whatever the count says; the note shows in info.
    let line = setup.strata_fails(&["annotate", "--set", "20200101-000000F", "--pin"]);
    assert!(line.contains("does not exist"), "{line}");
    setup.strata_ok(&["annotate", "--set", &d1, "--pin", "--note", "kept for the audit"]);
    let info = setup.info();
    let b = &info[0]["backups"][1];
    assert_eq!((b["pinned"].as_bool(), b["note"].as_str()), (Some(true), Some("kept for the audit")), "{info}");
    let text = setup.strata_ok(&["info"]);
    assert!(text.contains("pinned: expire keeps it") && text.contains("note: kept for the audit"), "{text}");

    set_repo_keys(&setup, &base, "retention_full = 1\nretention_diff = 1\n");
    let out = setup.strata_ok(&["expire", "--dry-run", "--gc-grace-secs", "0"]);
    let expected = [
        format!("keep backup {f1} (full): needed by pinned ({d1})"),
        format!("keep backup {d1} (diff): pinned ({d1})"),
        format!("would expire backup {i1} (incr): depends on full backup {f1}, beyond retention_full = 1"),
        format!("would expire backup {d2} (diff): differential backup beyond retention_diff = 1"),
        format!("would expire backup {i2} (incr): depends on differential backup {d2}, beyond retention_diff = 1"),
    ];
    for e in &expected {
        assert!(out.contains(e.as_str()), "missing {e:?} in:\n{out}");
    }
    // Only WAL from before the first full may go.
    let f1_wal_start = setup.info()[0]["backups"][0]["wal_start"].as_str().unwrap().to_string();
    for l in out.lines().filter(|l| l.contains("expire WAL")) {
        let last = l.split_whitespace().nth(5).unwrap();
        assert!(last[8..] < f1_wal_start[8..], "WAL the pinned backup needs would go: {l}\n{out}");
    }
    let would_packs: Vec<String> = out.lines().filter(|l| l.starts_with("would remove pack ")).map(|l| l[6..].to_string()).collect();
    let before = snapshot(&setup.repo);
    let out = setup.strata_ok(&["expire", "--gc-grace-secs", "0"]);
    let removed_packs: Vec<String> = out.lines().filter(|l| l.starts_with("remove pack ")).map(str::to_string).collect();
    assert_eq!(removed_packs, would_packs, "the run removed other packs than the dry run listed:\n{out}");
    assert!(!removed_packs.is_empty(), "no pack was removed:\n{out}");
    for p in &removed_packs {
        let hex = p.split_whitespace().nth(2).unwrap();
        assert!(before.keys().any(|k| k.ends_with(&format!("{hex}.pack"))), "{p} was not in the repository");
        assert!(!snapshot(&setup.repo).keys().any(|k| k.ends_with(&format!("{hex}.pack"))), "{p} is still there");
    }
    assert_eq!(setup.backup_labels(), vec![f1.clone(), d1.clone(), f2.clone(), d3.clone()], "{out}");

    // The pinned diff restores, to exactly its end.
    let copy = setup.restore_and_start("restored_d1", &["--set", &d1, "--type", "immediate"]);
    assert_eq!(copy.table_digests("postgres"), d1_digests);
    if let Err(e) = copy.pg_amcheck() {
        panic!("pg_amcheck on the pinned backup's restore: {e}");
    }
    drop(copy);

    // Unpinned, F1 and D1 go; with a day of extra WAL, the WAL before F2 stays (all of it was archived
    // within the day), without it, it goes.
    setup.strata_ok(&["annotate", "--set", &d1, "--unpin"]);
    set_repo_keys(&setup, &base, "retention_full = 1\nretention_diff = 1\nretention_archive_extra_days = 1\n");
    let out = setup.strata_ok(&["expire", "--dry-run", "--gc-grace-secs", "0"]);
    assert!(out.contains(&format!("would expire backup {f1} (full): full backup beyond retention_full = 1")), "{out}");
    assert!(out.contains(&format!("would expire backup {d1} (diff): depends on full backup {f1}")), "{out}");
    assert!(!out.contains("expire WAL"), "the extra day of WAL was not kept:\n{out}");
    set_repo_keys(&setup, &base, "retention_full = 1\nretention_diff = 1\n");
    let out = setup.strata_ok(&["expire", "--gc-grace-secs", "0"]);
    assert!(out.contains("expire WAL "), "{out}");
    assert_eq!(setup.backup_labels(), vec![f2.clone(), d3.clone()], "{out}");
    let info = setup.info();
    let f2_wal_start = info[0]["backups"][0]["wal_start"].as_str().unwrap().to_string();
    let first_wal = info[0]["archive"]["first"].as_str().unwrap().to_string();
    assert_eq!(first_wal[8..], f2_wal_start[8..], "{info}");
    assert!(!snapshot(&setup.repo).keys().any(|k| k.ends_with(".annotation") || k.ends_with(".running")));

    // expire_auto: the backup expires what retention no longer keeps; a failing expire is a warning only.
    set_repo_keys(&setup, &base, "retention_full = 1\nexpire_auto = true\n");
    let out = setup.strata_ok(&["backup", "--type", "full"]);
    assert!(out.contains(&format!("expire backup {f2} (full): full backup beyond retention_full = 1")), "{out}");
    assert!(out.contains(&format!("expire backup {d3} (diff): depends on full backup {f2}")), "{out}");
    assert_eq!(setup.backup_labels().len(), 1, "{out}");
    set_repo_keys(&setup, &base, "expire_auto = true\n");
    let out = setup.strata(&["backup", "--type", "incr"]);
    assert!(out.status.success(), "{}", describe(&out));
    assert!(String::from_utf8_lossy(&out.stderr).contains("committed, but the automatic expire failed: no retention is configured"), "{}", describe(&out));
    assert_eq!(setup.backup_labels().len(), 2);
}

#[test]
fn expire_while_a_backup_runs_leaves_it_restorable() {
    let dir = TestDir::new("expire_running");
    // Slow compression keeps the backup running for several expires.
    let setup = Setup::new(&dir, "local", "compress_level = 12", &[]);
    setup.strata_ok(&["stanza-create"]);
    setup.pg.pgbench_init(20);
    let f0 = setup.backup("full");
    // Rewrite the big table so the next full shares few chunks (and so few packs) with this one.
    setup.pg.psql("UPDATE pgbench_accounts SET filler = md5(aid::text); VACUUM FULL pgbench_accounts");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(120));
    let packs = || -> std::collections::BTreeSet<String> { snapshot(&setup.repo).into_keys().filter(|k| k.ends_with(".pack")).collect() };
    let packs_of_f0 = packs();

    let mut backup = setup.bins.strata_cmd(&setup.config, STANZA);
    let mut backup = backup
        .args(["backup", "--type", "full"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let (mut during, mut saw_running) = (0, false);
    while backup.try_wait().unwrap().is_none() {
        let out = setup.strata_ok(&["expire", "--retention-full", "1", "--gc-grace-secs", "0"]);
        during += 1;
        saw_running |= out.contains("stay while backup");
        // The older full goes only once the new one is committed (its marker may still be there then).
        assert!(!out.contains("expire backup") || out.contains(&format!("expire backup {f0} (full)")), "{out}");
    }
    let out = backup.wait_with_output().unwrap();
    assert!(out.status.success(), "the backup failed while expire ran:\n{}", describe(&out));
    eprintln!("expire ran {during} times during the backup");
    assert!(saw_running, "no expire saw the backup running ({during} runs)");
    assert!(!snapshot(&setup.repo).keys().any(|k| k.ends_with(".running")), "the backup left its marker");

    // Now the older full goes, with its packs, and the new one restores.
    // (A run of the loop may already have done this, between the marker's removal and the command's exit.)
    let out = setup.strata_ok(&["expire", "--retention-full", "1", "--gc-grace-secs", "0"]);
    let now = packs();
    let gone = packs_of_f0.iter().filter(|p| !now.contains(*p)).count();
    assert!(gone > 0, "none of the {} packs of the expired full went:\n{out}", packs_of_f0.len());
    let labels = setup.backup_labels();
    assert!(labels.len() == 1 && labels[0] != f0, "{labels:?}\n{out}");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(120));
    let copy = setup.restore_and_start("restored", &[]);
    assert_same_tables(&setup.pg, &copy, "postgres");
    if let Err(e) = copy.pg_amcheck() {
        panic!("pg_amcheck after expire during the backup: {e}");
    }
}
