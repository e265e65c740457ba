//! Every command with hostile arguments (names, paths, targets, labels, stanzas, repositories): each is
//! refused with exactly one `error:` line and a non-zero exit, never a panic, and the repository stays
//! byte-for-byte what it was. The cluster keeps running and keeps archiving throughout.
//!
//! The cases are a matrix of commands × hostile values rather than a hand-picked few, so that a new
//! command or option that builds a path from user input without checking it is caught here.

mod common;

use common::*;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;
use std::time::Duration;
use strata_integration::*;

/// Names that must never become a path, a label or a WAL file name.
const HOSTILE_NAMES: &[&str] = &[
    "../../../../../../../../etc/passwd",
    "..",
    ".",
    "",
    " ",
    "/etc/passwd",
    "a/b",
    "x\ny",
    "x\ry",
    "x\ty",
    "000000010000000000000001/../../../../etc/passwd",
    "00000001000000000000000G",
    "0000000100000000000000011",
    "00000001000000000000000",
    "00000000000000000000000000000000000000000000000000000000000000000",
    "\u{202e}000000010000000000000001",
    "%s%n%x",
    "$(id)",
    "`id`",
    "-",
    "--",
    "*",
    "20991231-000000F",
    "20991231-000000F/../../../stanza.json",
];

/// Targets of each recovery type that are not what the type takes.
const HOSTILE_TARGETS: &[(&str, &str)] = &[
    ("time", "yesterday"),
    ("time", "2026-13-45 99:99:99"),
    ("time", ""),
    ("time", "2026-12-01 10:00:00+99"),
    ("time", "x\ny"),
    ("lsn", "0/ZZZ"),
    ("lsn", "FFFFFFFFFFFFFFFFF/0"),
    ("lsn", "-1/0"),
    ("lsn", ""),
    ("xid", "-1"),
    ("xid", "99999999999999999999999"),
    ("xid", "abc"),
    ("xid", ""),
    ("name", ""),
    ("name", "x\ny"),
];

struct Case {
    stanza: String,
    args: Vec<String>,
}

fn case(args: &[&str]) -> Case {
    Case { stanza: STANZA.to_string(), args: args.iter().map(|s| s.to_string()).collect() }
}

fn case_owned(args: Vec<String>) -> Case {
    Case { stanza: STANZA.to_string(), args }
}

/// Runs one case; what is wrong with how it was refused, if anything.
fn refused_cleanly(setup: &Setup, before: &std::collections::BTreeMap<String, Vec<u8>>, c: &Case) -> Result<(), String> {
    let mut cmd = setup.bins.strata_cmd(&setup.config, &c.stanza);
    cmd.args(&c.args);
    let out = cmd.output().unwrap_or_else(|e| panic!("cannot run strata {:?}: {e}", c.args));
    let what = format!("--stanza {:?} {:?}", c.stanza, c.args);
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    if stderr.contains("panicked") || out.status.code() == Some(101) {
        return Err(format!("strata {what} panicked:\n{}", describe(&out)));
    }
    if out.status.success() {
        return Err(format!("strata {what} succeeded:\n{}", describe(&out)));
    }
    if lines.len() != 1 || !lines[0].starts_with("error: ") {
        return Err(format!("strata {what} did not print one error line:\n{}", describe(&out)));
    }
    let after = snapshot(&setup.repo);
    if after.keys().ne(before.keys()) {
        let added: Vec<_> = after.keys().filter(|k| !before.contains_key(*k)).collect();
        let removed: Vec<_> = before.keys().filter(|k| !after.contains_key(*k)).collect();
        return Err(format!("strata {what} changed the repository's objects: added {added:?}, removed {removed:?}"));
    }
    if let Some(k) = before.keys().find(|k| after[*k] != before[*k]) {
        return Err(format!("strata {what} changed {k}"));
    }
    Ok(())
}

#[test]
fn hostile_arguments_get_one_error_line_and_change_nothing() {
    let dir = TestDir::new("hostile_input");
    let setup = Setup::new(&dir, "local", "", &[]);
    setup.strata_ok(&["stanza-create"]);
    setup.pg.pgbench_init(1);
    let label = setup.backup("full");
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));

    // Paths a hostile or careless operator may hand over, owned by postgres where they are ours.
    let scratch = dir.subdir("scratch");
    let file = scratch.join("a-file");
    std::fs::write(&file, b"not a directory, not WAL").unwrap();
    let garbage_segment = scratch.join("000000010000000000000001");
    std::fs::write(&garbage_segment, vec![0x55u8; 16 * 1024 * 1024]).unwrap();
    let empty_segment = scratch.join("000000010000000000000002");
    std::fs::write(&empty_segment, b"").unwrap();
    let newline_segment = scratch.join("00000001000000000000000\n3");
    std::fs::write(&newline_segment, b"x").unwrap();
    let world_readable_passphrase = scratch.join("passphrase");
    std::fs::write(&world_readable_passphrase, "a long enough passphrase for anything\n").unwrap();
    let owner = std::fs::metadata(&scratch).unwrap();
    for p in [&file, &garbage_segment, &empty_segment, &newline_segment, &world_readable_passphrase] {
        std::os::unix::fs::chown(p, Some(owner.uid()), Some(owner.gid())).unwrap();
    }
    std::fs::set_permissions(&world_readable_passphrase, std::fs::Permissions::from_mode(0o644)).unwrap();
    let out = scratch.join("out");
    let live = setup.pg.data_dir().display().to_string();
    let repo = setup.repo.display().to_string();
    let s = |p: &Path| p.display().to_string();

    let mut cases: Vec<Case> = Vec::new();
    for name in HOSTILE_NAMES {
        // A WAL file name from PostgreSQL or a user.
        cases.push(case(&["archive-get", name, &s(&out)]));
        cases.push(case(&["archive-get", "--prefetch", "4", name, &s(&out)]));
        // A backup label.
        cases.push(case(&["restore", "--pg-data", &s(&scratch.join("r")), "--set", name]));
        cases.push(case(&["verify", "--set", name]));
        cases.push(case(&["annotate", "--set", name, "--pin"]));
        cases.push(case(&["annotate", "--set", name, "--note", "hostile"]));
        cases.push(case(&["restore-test", "--set", name]));
        // A stanza or repository name.
        if !name.is_empty() {
            cases.push(Case { stanza: name.to_string(), args: vec!["info".into()] });
            cases.push(Case { stanza: name.to_string(), args: vec!["stanza-create".into()] });
            cases.push(Case { stanza: name.to_string(), args: vec!["backup".into()] });
        }
        cases.push(case(&["--repo", name, "info"]));
        cases.push(case(&["--repo", name, "verify"]));
        // A restore point, whatever its name, must exist.
        cases.push(case(&["restore", "--pg-data", &s(&scratch.join("r")), "--type", "name", "--target", name]));
    }
    for (kind, target) in HOSTILE_TARGETS {
        cases.push(case(&["restore", "--pg-data", &s(&scratch.join("r")), "--type", kind, "--target", target]));
        cases.push(case(&["restore-test", "--type", kind, "--target", target]));
    }
    for timeline in ["abc", "0", "-1", "99999999999", "", "latest\n"] {
        cases.push(case(&["restore", "--pg-data", &s(&scratch.join("r")), "--target-timeline", timeline]));
    }
    for map in ["abc", "1=", "=x", "1=relative/dir", "x=/tmp/y", "16384=/", "16384=/etc"] {
        cases.push(case(&["restore", "--pg-data", &s(&scratch.join("r")), "--tablespace-map", map]));
    }
    // Data directories that must never be restored into: the live cluster, the repository, the root, a
    // file, system directories.
    for pg_data in [live.as_str(), repo.as_str(), "/", "/etc", "/proc/self", &s(&file), ""] {
        cases.push(case(&["restore", "--pg-data", pg_data]));
        cases.push(case(&["restore", "--delta", "--pg-data", pg_data]));
        cases.push(case(&["restore", "--delta", "--pg-data", pg_data, "--set", &label]));
    }
    // Files that are not what archive_command hands over.
    for path in [s(&file), s(&garbage_segment), s(&empty_segment), s(&newline_segment), s(&scratch), "/etc/passwd".into(), "/dev/zero".into(), s(&scratch.join("missing")), "".into()] {
        cases.push(case_owned(vec!["archive-push".into(), path]));
    }
    // Numbers out of their range.
    cases.push(case(&["expire", "--retention-full", "0"]));
    cases.push(case(&["expire", "--retention-full", "-1"]));
    cases.push(case(&["expire", "--gc-grace-secs", "-1"]));
    cases.push(case(&["restore", "--pg-data", &s(&scratch.join("r")), "--wal-prefetch", "-1"]));
    cases.push(case(&["archive-get", "--prefetch", "-5", "000000010000000000000001", &s(&out)]));
    cases.push(case(&["backup", "--type", "everything"]));
    cases.push(case(&["info", "--output", "xml"]));
    // The audit log's filters.
    for (flag, value) in [("--since", "yesterday-ish"), ("--since", "2026-13-01"), ("--since", "-5h"), ("--op", "../x"), ("--outcome", "maybe")] {
        cases.push(case(&["audit", flag, value]));
    }
    // Keys: an unencrypted repository cannot be rekeyed; a passphrase file must be private and exist.
    cases.push(case(&["repo-rekey", "--new-passphrase-file", &s(&world_readable_passphrase)]));
    cases.push(case(&["repo-rekey", "--new-passphrase-file", &s(&scratch.join("missing"))]));
    cases.push(case(&["repo-rekey", "--new-passphrase-env", "STRATA_TEST_UNSET_VARIABLE"]));

    let before = snapshot(&setup.repo);
    let failures: Vec<String> = cases.iter().filter_map(|c| refused_cleanly(&setup, &before, c).err()).collect();
    assert!(failures.is_empty(), "{} of {} hostile invocations were not refused cleanly:\n{}", failures.len(), cases.len(), failures.join("\n"));
    assert!(setup.pg.is_running(), "the cluster stopped during the hostile commands");
    // Nothing hostile left a file in the scratch directory or beside the live cluster.
    assert!(!out.exists(), "a refused archive-get wrote {}", out.display());
    assert!(!scratch.join("r").exists(), "a refused restore created {}", scratch.join("r").display());
    // And the stanza still works: a backup and a restore of it.
    setup.pg.switch_wal_and_wait_archived(Duration::from_secs(60));
    setup.strata_ok(&["verify"]);
    eprintln!("hostile_input: {} hostile invocations refused cleanly", cases.len());
}
