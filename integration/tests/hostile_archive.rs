//! archive-push and archive-get refuse what is not what it claims: a segment under another segment's name
//! (which, once stored, would block archiving when the cluster reaches that name), history and backup
//! history files that PostgreSQL would not write, and names that are not WAL file names (a path out of the
//! repository, a newline). Each refusal is one error line and leaves the repository byte for byte as it was.

mod common;

use common::*;
use std::path::Path;
use std::time::Duration;
use strata_integration::*;

const SEG: u64 = 16 << 20;

/// The name of the segment `n` segments after `name` on its timeline (16 MiB segments: 256 per log id).
fn segment_after(name: &str, n: u64) -> String {
    let segno = u64::from_str_radix(&name[8..16], 16).unwrap() * 256 + u64::from_str_radix(&name[16..24], 16).unwrap() + n;
    format!("{}{:08X}{:08X}", &name[..8], segno / 256, segno % 256)
}

/// The WAL position where segment `name` starts.
fn start_lsn(name: &str) -> u64 {
    (u64::from_str_radix(&name[8..16], 16).unwrap() * 256 + u64::from_str_radix(&name[16..24], 16).unwrap()) * SEG
}

/// Writes `bytes` as `dir/name` (readable by postgres, who runs strata) and returns the path.
fn file(dir: &Path, name: &str, bytes: &[u8]) -> String {
    let path = dir.join(name);
    std::fs::write(&path, bytes).unwrap();
    path.to_str().unwrap().to_string()
}

/// `strata args` fails with one error line containing every one of `expect`, and the repository is unchanged.
fn refused(setup: &Setup, args: &[&str], expect: &[&str]) -> String {
    let before = snapshot(&setup.repo);
    let line = setup.strata_fails(args);
    for e in expect {
        assert!(line.contains(e), "strata {args:?}: expected {e:?} in: {line}");
    }
    assert!(snapshot(&setup.repo) == before, "strata {args:?} changed the repository");
    line
}

#[test]
fn a_segment_under_another_name_is_refused_and_archiving_goes_on() {
    let dir = TestDir::new("hostile_archive_segment");
    let setup = Setup::new(&dir, "local", "", &[]);
    setup.strata_ok(&["stanza-create"]);
    setup.pg.psql("CREATE TABLE t AS SELECT g FROM generate_series(1, 10000) g");
    let archived = setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));
    let work = dir.subdir("work");
    let original = work.join("original");
    setup.strata_ok(&["archive-get", &archived, original.to_str().unwrap()]);
    let bytes = std::fs::read(&original).unwrap();
    // The names the cluster writes next: a copy stored under one of them would block its real segment.
    let next = segment_after(&archived, 1);
    let after_next = segment_after(&archived, 2);

    let misnamed = file(&dir.subdir("misnamed"), &next, &bytes);
    refused(&setup, &["archive-push", &misnamed], &[&next, "xlp_pageaddr"]);
    let symlink = dir.subdir("symlink").join(&after_next);
    std::os::unix::fs::symlink(&original, &symlink).unwrap();
    refused(&setup, &["archive-push", symlink.to_str().unwrap()], &[&after_next, "xlp_pageaddr"]);
    let partial = file(&dir.subdir("partial"), &format!("{next}.partial"), &bytes);
    refused(&setup, &["archive-push", &partial], &[&format!("{next}.partial"), "xlp_pageaddr"]);

    // The right position but a later timeline than the name's (xlp_tli at offset 4, xlp_pageaddr at 8).
    let mut later = bytes.clone();
    later[4..8].copy_from_slice(&2u32.to_le_bytes());
    later[8..16].copy_from_slice(&start_lsn(&next).to_le_bytes());
    let later = file(&dir.subdir("later"), &next, &later);
    refused(&setup, &["archive-push", &later], &[&next, "xlp_tli"]);
    // Another segment size in the header than the stanza's (xlp_seg_size at offset 32).
    let mut size = bytes.clone();
    size[32..36].copy_from_slice(&(32u32 << 20).to_le_bytes());
    let size = file(&dir.subdir("size"), &archived, &size);
    refused(&setup, &["archive-push", &size], &[&archived, "xlp_seg_size"]);

    // The cluster archives its real segments under those names.
    setup.pg.psql("INSERT INTO t SELECT g FROM generate_series(1, 10000) g");
    let reached = setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));
    setup.pg.psql("INSERT INTO t SELECT g FROM generate_series(1, 10000) g");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));
    assert!(reached >= next, "the cluster archived {reached}, expected {next} or later");
    let fetched = work.join("next");
    setup.strata_ok(&["archive-get", &next, fetched.to_str().unwrap()]);
    let real = std::fs::read(&fetched).unwrap();
    assert_eq!(u64::from_le_bytes(real[8..16].try_into().unwrap()), start_lsn(&next), "{next} holds another segment");
}

#[test]
fn history_files_that_postgresql_would_not_write_are_refused() {
    let dir = TestDir::new("hostile_archive_history");
    let setup = Setup::new(&dir, "local", "", &[]);
    setup.strata_ok(&["stanza-create"]);
    let archived = setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));
    let files = dir.subdir("files");

    // History files: syntax, parents, and a parent the archive knows.
    let garbage = file(&files, "00000002.history", b"garbage");
    refused(&setup, &["archive-push", &garbage], &["00000002.history", "malformed"]);
    let empty = file(&dir.subdir("empty"), "00000002.history", b"");
    refused(&setup, &["archive-push", &empty], &["00000002.history", "no parent"]);
    let not_below = file(&dir.subdir("not_below"), "00000002.history", b"2\t0/5000000\tno recovery target specified\n");
    refused(&setup, &["archive-push", &not_below], &["00000002.history", "malformed"]);
    let unknown = file(&files, "00000008.history", b"1\t0/3000000\tx\n7\t0/5000000\tno recovery target specified\n");
    refused(&setup, &["archive-push", &unknown], &["00000008.history", "timeline 7"]);
    let first = file(&files, "00000001.history", b"");
    refused(&setup, &["archive-push", &first], &["00000001.history"]);
    // Backup history files: the first lines must be PostgreSQL's and match the name.
    let backup = format!("{archived}.00000028.backup");
    let garbage_backup = file(&files, &backup, b"garbage");
    refused(&setup, &["archive-push", &garbage_backup], &[&backup, "START WAL LOCATION"]);

    // What PostgreSQL writes is accepted: a history branching from timeline 1, then one from timeline 2,
    // now known by its history file.
    let start = start_lsn(&archived);
    let tl2 = format!("1\t0/{:X}\tno recovery target specified\n", start + 0x28);
    let valid = file(&dir.subdir("valid"), "00000002.history", tl2.as_bytes());
    setup.strata_ok(&["archive-push", &valid]);
    let tl3 = format!("{tl2}2\t0/{:X}\tbefore 2026-12-07 08:00:00+00\n", start + 0x100);
    let valid = file(&dir.subdir("valid"), "00000003.history", tl3.as_bytes());
    setup.strata_ok(&["archive-push", &valid]);
}

#[test]
fn names_that_are_not_wal_file_names_are_refused_in_one_line() {
    let dir = TestDir::new("hostile_archive_names");
    let setup = Setup::new(&dir, "local", "", &[]);
    setup.strata_ok(&["stanza-create"]);
    let archived = setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));
    let files = dir.subdir("files");

    // Refused before any path is built from them.
    let out = dir.subdir("out").join("passwd");
    let out = out.to_str().unwrap();
    refused(&setup, &["archive-get", "../../../../../../../../etc/passwd", out], &["is not a WAL file name"]);
    refused(&setup, &["archive-get", "--prefetch", "2", "../../../../../../../../etc/passwd", out], &["is not a WAL file name"]);
    let under_a_segment = format!("{archived}/../../../../../../../../etc/passwd");
    refused(&setup, &["archive-get", &under_a_segment, out], &["is not a WAL file name"]);
    assert!(std::fs::read_dir(dir.path().join("out")).unwrap().next().is_none(), "archive-get wrote into DEST's directory");
    let not_wal = file(&files, "passwd", b"root:x:0:0");
    refused(&setup, &["archive-push", &not_wal], &["is not a WAL file name"]);
}

#[test]
fn a_newline_in_a_name_is_quoted_escaped_on_one_line() {
    let dir = TestDir::new("hostile_archive_newline");
    let setup = Setup::new(&dir, "local", "", &[]);
    setup.strata_ok(&["stanza-create"]);
    let archived = setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));
    let files = dir.subdir("files");
    let out = dir.subdir("out").join("segment");
    let out = out.to_str().unwrap();

    let newline = file(&files, &format!("{archived}\n"), b"x");
    refused(&setup, &["archive-push", &newline], &["is not a WAL file name", "\\n"]);
    let in_dir = dir.subdir("a\nb").join(segment_after(&archived, 1));
    refused(&setup, &["archive-push", in_dir.to_str().unwrap()], &["cannot read", "\\n"]);
    refused(&setup, &["archive-get", &format!("{archived}\nx"), out], &["is not a WAL file name", "\\n"]);
}
