//! `strata verify` finds damage a restore would trip over, names what it breaks, and passes an intact
//! repository: a flipped byte inside a pack, a truncated pack, a deleted WAL segment.

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;
use strata_integration::*;

/// Every pack file of a repository, largest first.
fn packs(repo: &Path) -> Vec<(PathBuf, u64)> {
    let mut out: Vec<(PathBuf, u64)> = pack_files(repo).into_iter().map(|p| (p.clone(), p.metadata().unwrap().len())).collect();
    out.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    out
}

/// `verify` must fail; returns its stdout and its one error line.
fn verify_fails(setup: &Setup) -> (String, String) {
    let out = setup.strata(&["verify"]);
    let line = expect_one_error_line(&out, &["verify"]);
    (String::from_utf8_lossy(&out.stdout).into_owned(), line)
}

fn verify_json(setup: &Setup) -> serde_json::Value {
    let out = setup.strata(&["verify", "--output", "json"]);
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("verify --output json printed invalid JSON ({e}):\n{}", describe(&out)))
}

#[test]
fn verify_finds_flipped_bytes_truncated_packs_and_missing_wal() {
    let dir = TestDir::new("verify");
    let setup = Setup::new(&dir, "local", "", &[]);
    setup.strata_ok(&["stanza-create"]);
    setup.pg.pgbench_init(5);
    let full = setup.backup("full");
    setup.pg.pgbench_transactions(2000, 2);
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));
    setup.pg.pgbench_transactions(2000, 2);
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));
    let incr = setup.backup("incr");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));

    // Intact: exit 0, every backup and the WAL verified, results stored and shown by info.
    let out = setup.strata_ok(&["verify"]);
    assert!(out.contains(&format!("backup {full}: ok")), "{out}");
    assert!(out.contains(&format!("backup {incr}: ok")), "{out}");
    assert!(out.contains("wal archive: ok"), "{out}");
    let doc = verify_json(&setup);
    assert_eq!(doc[0]["problem_count"], 0, "{doc:#}");
    let pages = doc[0]["backups"][0]["pages_checked"].as_u64().unwrap();
    assert!(pages > 1000, "page checksums were checked: {doc:#}");
    let info = setup.info();
    let b0 = &info[0]["backups"][0];
    assert_eq!(b0["verify"]["ok"], true, "{info:#}");
    assert_eq!(info[0]["wal_verify"]["ok"], true, "{info:#}");
    let text = setup.strata_ok(&["info"]);
    assert!(text.contains("verified: ok"), "{text}");

    // 1. One byte flipped in the middle of the biggest pack (relation data of one of the backups).
    let (pack, len) = packs(&setup.repo)[0].clone();
    let original = std::fs::read(&pack).unwrap();
    let mut damaged = original.clone();
    damaged[(len / 2) as usize] ^= 0x40;
    std::fs::write(&pack, &damaged).unwrap();
    let (out, line) = verify_fails(&setup);
    assert!(line.contains("verify found") && line.contains("'local'"), "{line}");
    let pack_name = pack.file_stem().unwrap().to_string_lossy().to_string();
    let bad = out.lines().find(|l| l.contains(&pack_name)).unwrap_or_else(|| panic!("the damaged pack {pack_name} is named:\n{out}"));
    assert!(bad.contains("file base/") && bad.contains("chunk ") && bad.contains("does not read back"), "{bad}");
    let victim_backup = [&full, &incr].into_iter().find(|l| bad.contains(&format!("backup {l}"))).unwrap_or_else(|| panic!("{bad}"));
    assert!(out.contains(&format!("backup {victim_backup}: 1 PROBLEMS")) || out.contains(&format!("backup {victim_backup}: ")), "{out}");
    // Stored: info shows the damage and the status turns critical.
    let info = setup.info();
    let entry = info[0]["backups"].as_array().unwrap().iter().find(|b| b["label"] == victim_backup.as_str()).unwrap().clone();
    assert_eq!(entry["verify"]["ok"], false, "{info:#}");
    assert_eq!(info[0]["status"]["status"], "critical", "{info:#}");
    std::fs::write(&pack, &original).unwrap();

    // 2. The same pack truncated to half its length.
    std::fs::write(&pack, &original[..(len / 2) as usize]).unwrap();
    let (out, _) = verify_fails(&setup);
    assert!(out.lines().any(|l| l.contains("truncated") && l.contains(&format!("backup {victim_backup}, file base/"))), "{out}");
    std::fs::write(&pack, &original).unwrap();
    setup.strata_ok(&["verify"]);

    // 3. An archived WAL segment between the two backups deleted: the full can no longer recover past it.
    let wal_dir = setup.repo.join("stanza/main/wal");
    let mut segments: Vec<PathBuf> = Vec::new();
    for d in std::fs::read_dir(&wal_dir).unwrap().flatten() {
        for f in std::fs::read_dir(d.path()).unwrap().flatten() {
            if f.file_name().len() == 24 {
                segments.push(f.path());
            }
        }
    }
    segments.sort();
    let full_wal_stop = info[0]["backups"][0]["wal_stop"].as_str().unwrap().to_string();
    let victim = segments
        .iter()
        .find(|p| p.file_name().unwrap().to_string_lossy().as_ref() > full_wal_stop.as_str())
        .expect("a segment archived after the full backup")
        .clone();
    let victim_name = victim.file_name().unwrap().to_string_lossy().to_string();
    let saved = std::fs::read(&victim).unwrap();
    std::fs::remove_file(&victim).unwrap();
    let (out, _) = verify_fails(&setup);
    let line = out.lines().find(|l| l.contains(&victim_name)).unwrap_or_else(|| panic!("{victim_name} is named:\n{out}"));
    assert!(line.contains("missing") && line.contains(&full), "the missing segment names the backup it cuts short: {line}");
    std::fs::write(&victim, saved).unwrap();

    // Repaired: clean again, and so are the stored results.
    setup.strata_ok(&["verify"]);
    let info = setup.info();
    assert_eq!(info[0]["status"]["verify_problems"], 0, "{info:#}");
}

#[test]
fn verify_of_one_backup_and_a_bad_label() {
    let dir = TestDir::new("verify-set");
    let setup = Setup::new(&dir, "local", "", &[]);
    setup.strata_ok(&["stanza-create"]);
    setup.pg.pgbench_init(1);
    let full = setup.backup("full");
    let out = setup.strata_ok(&["verify", "--set", &full]);
    assert!(out.contains(&format!("backup {full}: ok")), "{out}");
    let line = setup.strata_fails(&["verify", "--set", "20000101-000000F"]);
    assert!(line.contains("20000101-000000F"), "{line}");
}

/// Copies a posix repository's tree, owners and modes included (`cp -a`), as a replica would hold it.
fn copy_repo(from: &Path, to: &Path) {
    let status = std::process::Command::new("cp").arg("-a").arg(from).arg(to).status().unwrap();
    assert!(status.success(), "cp -a {} {}", from.display(), to.display());
}

#[test]
fn verify_reads_every_repository_and_names_the_damaged_one() {
    let dir = TestDir::new("verify-repos");
    let setup = Setup::new(&dir, "local", "", &[]);
    setup.strata_ok(&["stanza-create"]);
    setup.pg.pgbench_init(1);
    let full = setup.backup("full");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));
    // A second repository holding the same objects, as the replicator leaves it.
    let second = dir.path().join("repo-b");
    copy_repo(&setup.repo, &second);
    setup.append_config(&format!(
        "[[repo]]\nname = \"b\"\ntype = \"posix\"\npath = {}\n",
        strata_integration::config::toml_string(&second.display().to_string())
    ));
    let out = setup.strata_ok(&["verify"]);
    for repo in ["local", "b"] {
        assert!(out.contains(&format!("repository '{repo}' backup {full}: ok")), "{out}");
        assert!(out.contains(&format!("repository '{repo}' wal archive: ok")), "{out}");
    }

    // One byte flipped in the middle of every pack of b (some hold only WAL from before the backup,
    // which no backup needs and verify does not read): b is named, local still verifies clean.
    let damaged_packs: Vec<String> = packs(&second)
        .into_iter()
        .map(|(pack, len)| {
            let mut bytes = std::fs::read(&pack).unwrap();
            bytes[(len / 2) as usize] ^= 0x01;
            std::fs::write(&pack, &bytes).unwrap();
            pack.file_stem().unwrap().to_string_lossy().to_string()
        })
        .collect();
    let (out, line) = verify_fails(&setup);
    assert!(line.contains("'b'") && !line.contains("'local'"), "only b is damaged: {line}");
    assert!(out.contains(&format!("repository 'local' backup {full}: ok")), "{out}");
    assert!(out.contains(&format!("repository 'b' backup {full}: ")) && out.contains("PROBLEMS"), "{out}");
    assert!(
        out.lines().any(|l| damaged_packs.iter().any(|p| l.contains(p.as_str())) && l.contains(&format!("backup {full}"))),
        "a damaged pack is named with its backup:\n{out}"
    );
    // `--repo` narrows verify to one repository; each keeps its own results for info.
    setup.strata_ok(&["--repo", "local", "verify"]);
    let info = setup.strata_ok(&["--repo", "b", "info", "--output", "json"]);
    let info: serde_json::Value = serde_json::from_str(&info).unwrap();
    assert_eq!(info[0]["backups"][0]["verify"]["ok"], false, "{info:#}");
    assert_eq!(setup.info()[0]["backups"][0]["verify"]["ok"], true);
}
