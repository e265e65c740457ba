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
fn restore_after_a_chunk_hash_failure_prints_one_error_line_every_time() {
    let dir = TestDir::new("hostile-restore-chunk");
    let setup = Setup::new(&dir, "local", "", &[]);
    setup.strata_ok(&["stanza-create"]);
    setup.pg.pgbench_init(3);
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));
    let before = pack_files(&setup.repo);
    setup.backup("full");
    // A byte flipped at each eighth of each pack the backup wrote (WAL archived meanwhile has its own
    // packs; restore does not read their chunks), so that a worker fails while the others still work.
    let written: Vec<PathBuf> = pack_files(&setup.repo).into_iter().filter(|p| !before.contains(p)).collect();
    assert!(!written.is_empty());
    for pack in written {
        let mut bytes = std::fs::read(&pack).unwrap();
        let len = bytes.len();
        for k in 1..8 {
            bytes[len * k / 8] ^= 0x40;
        }
        std::fs::write(&pack, &bytes).unwrap();
    }
    for run in 0..20 {
        let target = dir.path().join(format!("restore-{run}"));
        let line = setup.strata_fails(&["restore", "--pg-data", target.to_str().unwrap()]);
        assert!(line.contains("chunk"), "run {run}: {line}");
    }
}

