//! The audit log: every auditable command appends one line with its outcome, config edits are recorded,
//! and `strata audit` shows and filters them without a stanza or a repository.

mod common;

use common::*;
use serde_json::Value;
use std::process::Command;
use strata_integration::*;

/// `strata audit <args>` as root and without a stanza, as an auditor would run it; its entries.
fn audit(setup: &Setup, args: &[&str]) -> Vec<Value> {
    let text = audit_text(setup, &[&["--output", "json"], args].concat());
    text.lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("audit printed a line that is not JSON ({e}): {l}")))
        .collect()
}

fn audit_text(setup: &Setup, args: &[&str]) -> String {
    let out = Command::new(setup.bins.path(strata_integration::bins::STRATA_CLI))
        .arg("--config")
        .arg(&setup.config)
        .arg("audit")
        .args(args)
        .env_remove("STRATA_STANZA")
        .output()
        .unwrap();
    assert!(out.status.success(), "strata audit {args:?} failed:\n{}", describe(&out));
    assert!(out.stderr.is_empty(), "strata audit {args:?} warned:\n{}", describe(&out));
    String::from_utf8(out.stdout).unwrap()
}

fn ops(entries: &[Value]) -> Vec<(String, String)> {
    entries.iter().map(|e| (e["op"].as_str().unwrap().to_string(), e["outcome"].as_str().unwrap().to_string())).collect()
}

fn pair(op: &str, outcome: &str) -> (String, String) {
    (op.to_string(), outcome.to_string())
}

#[test]
fn each_operation_is_recorded_with_its_outcome() {
    let dir = TestDir::new("audit");
    let setup = Setup::new(&dir, "local", "", &[]);
    let log = dir.path().join("audit/strata-audit.log");
    setup.append_config(&format!("[audit]\npath = \"{}\"", log.display()));

    setup.strata_ok(&["stanza-create"]);
    let label = setup.backup("full");
    let target = dir.subdir("not-empty");
    std::fs::write(target.join("keep-me"), b"x").unwrap();
    let error = setup.strata_fails(&["restore", "--pg-data", target.to_str().unwrap()]);
    setup.strata_ok(&["expire", "--retention-full", "1"]);

    // The config as first seen (by whichever command came first: archive-push runs too), then the
    // operations, in order.
    let entries = audit(&setup, &[]);
    let operations: Vec<&Value> = entries.iter().filter(|e| e["op"] != "config-change").collect();
    assert_eq!(
        ops(&operations.iter().map(|e| (*e).clone()).collect::<Vec<_>>()),
        vec![pair("stanza-create", "ok"), pair("backup", "ok"), pair("restore", "failed"), pair("expire", "ok")],
        "{entries:#?}"
    );
    let changes: Vec<&Value> = entries.iter().filter(|e| e["op"] == "config-change").collect();
    assert_eq!(changes.len(), 1, "{entries:#?}");
    assert_eq!(changes[0]["what"]["first_seen"], true);
    assert_eq!(entries[0]["op"], "config-change", "the config is noted before the first operation runs");

    let (create, backup, restore, expire) = (operations[0], operations[1], operations[2], operations[3]);
    for e in [create, backup, restore, expire] {
        assert_eq!(e["user"], "postgres", "{e}");
        assert_eq!(e["stanza"], STANZA, "{e}");
        assert!(e["pid"].as_u64().unwrap() > 0 && e["time"].as_i64().unwrap() > 1_700_000_000, "{e}");
        assert!(e["duration_secs"].as_f64().unwrap() >= 0.0, "{e}");
        assert!(!e["host"].as_str().unwrap().is_empty(), "{e}");
        assert!(e["what"]["args"].as_array().unwrap().len() > 2, "{e}");
    }
    assert_eq!(backup["what"]["label"], label.as_str());
    assert_eq!(backup["what"]["type"], "full");
    assert_eq!(backup["repo"], "local");
    assert!(backup.get("error").is_none(), "{backup}");
    // The failed restore carries the error the user saw.
    assert_eq!(restore["what"]["pg_data"], target.to_str().unwrap());
    let recorded = restore["error"].as_str().unwrap();
    assert_eq!(format!("error: {recorded}"), error);
    assert!(recorded.contains("is not empty"), "{recorded}");
    // Expire without --repo worked on every repository.
    assert_eq!(expire["repo"], Value::Null);
    assert_eq!(expire["what"]["retention_full"], 1);

    // Every line of the file is one entry.
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.lines().count(), entries.len());

    // A config edit is recorded once, by the next command (here the audit command itself).
    setup.append_config("# edited: the audit log records this");
    let after = audit(&setup, &["--op", "config-change"]);
    assert_eq!(after.len(), 2, "{after:#?}");
    assert_eq!(after[1]["what"]["first_seen"], false);
    assert_eq!(after[1]["what"]["old_hash"], changes[0]["what"]["new_hash"]);
    assert_ne!(after[1]["what"]["new_hash"], after[1]["what"]["old_hash"]);
    assert_eq!(after[1]["what"]["config"], setup.config.canonicalize().unwrap().to_str().unwrap());
    assert_eq!(audit(&setup, &["--op", "config-change"]).len(), 2, "an unchanged config is not recorded again");
    // Root (running audit) recorded that change: the files stay the postgres user's, who appends next.
    use std::os::unix::fs::MetadataExt;
    let owner = std::fs::metadata(&log).unwrap().uid();
    let sidecar = log.with_file_name("strata-audit.log.config-hash");
    assert_eq!(std::fs::metadata(&sidecar).unwrap().uid(), owner);
    setup.append_config("# edited again");
    setup.strata_ok(&["annotate", "--set", &label, "--note", "audited"]);
    let after = audit(&setup, &["--op", "config-change"]);
    assert_eq!(after.len(), 3, "{after:#?}");
    assert_eq!(after[2]["user"], "postgres");
    let annotate = audit(&setup, &["--op", "annotate"]);
    assert_eq!(annotate.len(), 1);
    assert_eq!(annotate[0]["what"]["note"], "audited");

    // Filters and the text form.
    assert_eq!(ops(&audit(&setup, &["--outcome", "failed"])), vec![pair("restore", "failed")]);
    assert_eq!(ops(&audit(&setup, &["--op", "backup", "--since", "1h"])), vec![pair("backup", "ok")]);
    assert!(audit(&setup, &["--since", "2999-01-01"]).is_empty());
    let text = audit_text(&setup, &["--op", "backup"]);
    let line = text.trim_end();
    assert!(line.contains(&format!("  ok      backup         {STANZA}  full {label}  by postgres@")), "{line}");
    assert!(line.ends_with(" s)"), "{line}");

    // Bad filters are one error line.
    let out = Command::new(setup.bins.path(strata_integration::bins::STRATA_CLI))
        .arg("--config")
        .arg(&setup.config)
        .args(["audit", "--op", "backups"])
        .output()
        .unwrap();
    let line = expect_one_error_line(&out, &["audit", "--op", "backups"]);
    assert!(line.contains("restore-test"), "{line}");
    let line = setup.strata_fails(&["audit", "--since", "yesterday"]);
    assert!(line.contains("--since 'yesterday'"), "{line}");
}

#[test]
fn unwritable_audit_log_warns_and_keeps_the_result() {
    let dir = TestDir::new("audit_unwritable");
    let setup = Setup::new(&dir, "local", "", &[]);
    // A directory where the log file should be: no user can append to it.
    let log = dir.subdir("audit.log");
    setup.append_config(&format!("[audit]\npath = \"{}\"", log.display()));
    let out = setup.strata(&["stanza-create"]);
    assert!(out.status.success(), "{}", describe(&out));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.starts_with("warning: audit log ")).collect();
    // One for the config, one for the operation.
    assert_eq!(warnings.len(), 2, "{stderr}");
    assert!(warnings[1].contains("this stanza-create is not recorded"), "{stderr}");
    // A failing command still fails with its own error, after the warnings.
    let out = setup.strata(&["annotate", "--set", "20990101-000000F", "--pin"]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.lines().last().unwrap().starts_with("error: annotate"), "{stderr}");
}
