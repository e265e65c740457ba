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
