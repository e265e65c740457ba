//! A repository whose backup and WAL records are in the unframed, unchecked form the oldest builds wrote
//! (no format header, no checksum): info, verify, an incremental backup on top of it and a restore work as
//! they did, and the records this build writes next are framed (see `strata_messages::format`).

mod common;

use common::*;
use std::path::{Path, PathBuf};
use std::time::Duration;
use strata_integration::*;
use strata_messages::{decode, decode_wal_record, encode_unframed, format, to_owned, BackupRecord};

const CHECKED: &[u8] = b"STRSUM01";

fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(files_under(&path));
        } else {
            out.push(path);
        }
    }
    out
}

/// The archive of a record this build wrote: after the checksum, framed.
fn framed_body(stored: &[u8]) -> &[u8] {
    let body = &stored.strip_prefix(CHECKED).expect("a checked record")[32..];
    assert!(body.starts_with(&format::MAGIC), "this build writes framed records");
    body
}

/// Rewrites every backup and WAL record of the stanza in the unframed, unchecked form; returns how many.
fn unframe_records(repo: &Path) -> usize {
    let stanza = repo.join("stanza").join(STANZA);
    let mut n = 0;
    for path in files_under(&stanza.join("backup")).into_iter().filter(|p| p.extension().is_some_and(|e| e == "record")) {
        let stored = std::fs::read(&path).unwrap();
        let record = to_owned::<BackupRecord>(decode::<BackupRecord>(framed_body(&stored)).unwrap());
        std::fs::write(&path, encode_unframed(&record)).unwrap();
        n += 1;
    }
    for path in files_under(&stanza.join("wal")) {
        let stored = std::fs::read(&path).unwrap();
        let record = decode_wal_record(framed_body(&stored)).unwrap();
        std::fs::write(&path, encode_unframed(&record)).unwrap();
        n += 1;
    }
    n
}

#[test]
fn a_repository_of_unframed_records_keeps_working() {
    let dir = TestDir::new("legacy_formats");
    let setup = Setup::new(&dir, "local", "", &[]);
    setup.strata_ok(&["stanza-create"]);
    setup.pg.pgbench_init(1);
    let full = setup.backup("full");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));

    let rewritten = unframe_records(&setup.repo);
    assert!(rewritten >= 3, "the backup's record and its WAL: {rewritten}");

    let info = setup.info();
    let backups = info[0]["backups"].as_array().unwrap();
    assert_eq!(backups.iter().map(|b| b["label"].as_str().unwrap()).collect::<Vec<_>>(), [full.as_str()], "{info}");
    assert!(info[0]["damaged_backups"].as_array().is_none_or(|d| d.is_empty()), "{info}");
    setup.strata_ok(&["verify"]);

    // An incremental relative to the unframed record, then a restore that replays unframed WAL records.
    setup.pg.psql("UPDATE pgbench_accounts SET abalance = abalance + 1 WHERE aid % 10 = 0");
    let incr = setup.backup("incr");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));
    let record = setup.repo.join("stanza").join(STANZA).join("backup").join(format!("{incr}.record"));
    let stored = std::fs::read(record).unwrap();
    framed_body(&stored);

    let copy = setup.restore_and_start("restored", &[]);
    assert_same_tables(&setup.pg, &copy, "postgres");
    LogCheck::postgres().assert_clean(setup.pg.log_file());
    LogCheck::postgres().assert_clean(copy.log_file());
}
