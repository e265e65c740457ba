//! The audit log's readers against random and damaged input: the log itself (`read`: a torn or edited
//! line is counted as unreadable, never a panic), the config-hash sidecar (`note_config`), `--since`
//! (`parse_since`) and the time shown for any time (`format_time`).
//! Cases per target: `PROPTEST_CASES` (see `strata-fuzzkit`).

use std::time::{Duration, SystemTime};
use strata_stamp::format_time;
use strata_audit::{note_config, parse_since, read, AuditEntry, Filter, Op, Outcome};
use strata_fuzzkit::proptest::prelude::*;
use strata_fuzzkit::{bytes, check, fuzz, mutated_any};

fn valid_log(dir: &std::path::Path) -> Vec<u8> {
    let log = dir.join("valid.log");
    let entry = |op, error: Option<&str>| {
        AuditEntry::new(
            op,
            Some("main"),
            Some("local"),
            serde_json::json!({ "label": "20261124-081500F", "args": ["--type", "full"] }),
            SystemTime::UNIX_EPOCH + Duration::from_secs(1_796_000_000),
            Duration::from_millis(1500),
            error.map(str::to_string),
        )
    };
    strata_audit::append(&log, &entry(Op::Backup, None)).unwrap();
    strata_audit::append(&log, &entry(Op::Expire, Some("repository unreachable: é ✓"))).unwrap();
    std::fs::read(log).unwrap()
}

fn filters() -> Vec<Filter> {
    vec![
        Filter::default(),
        Filter { since: Some(1_796_000_000), op: Some(Op::Backup), stanza: Some("main".into()), outcome: Some(Outcome::Failed) },
    ]
}

#[test]
fn fuzz_audit_log_mutated() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let valid = valid_log(dir.path());
    let lines = valid.split(|b| *b == b'\n').filter(|l| !l.is_empty()).count();
    fuzz("audit/log-mutated", 256, mutated_any(vec![valid]), |b| {
        std::fs::write(&log, &b).unwrap();
        for filter in filters() {
            let found = read(&log, &filter).map_err(|e| TestCaseError::fail(e.to_string()))?;
            let lines_now = b.split(|c| *c == b'\n').filter(|l| !l.iter().all(u8::is_ascii_whitespace)).count();
            check!(found.entries.len() + found.unreadable_lines <= lines_now.max(lines), "more entries than lines");
            for e in &found.entries {
                let _ = (format_time(e.time), serde_json::to_string(e).unwrap());
            }
        }
        Ok(())
    });
}

#[test]
fn fuzz_audit_log_random() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    fuzz("audit/log-random", 256, bytes(400), |b| {
        std::fs::write(&log, &b).unwrap();
        read(&log, &Filter::default()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        Ok(())
    });
}

/// A damaged sidecar is read as "no config seen yet": one config-change entry, never a panic.
#[test]
fn fuzz_audit_config_sidecar() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let config = dir.path().join("strata.toml");
    note_config(&log, &config, b"bus = \"local\"\n").unwrap();
    let sidecar = std::fs::read(strata_audit::config_hash_path(&log)).unwrap();
    fuzz("audit/config-sidecar", 128, prop_oneof![mutated_any(vec![sidecar]), bytes(200)], |b| {
        std::fs::write(strata_audit::config_hash_path(&log), &b).unwrap();
        note_config(&log, &config, b"bus = \"local\"\n").map_err(|e| TestCaseError::fail(e.to_string()))?;
        Ok(())
    });
}

/// `--since` with any text, and with any number of any unit: a time or one error line.
#[test]
fn fuzz_audit_since() {
    let valid = vec![b"2026-12-01".to_vec(), b"2026-12-01 10:00".to_vec(), b"2026-12-01T10:00:30Z".to_vec(), b"24h".to_vec(), b"7d".to_vec(), b"90min".to_vec()];
    let unit = prop::sample::select(vec!["s", "min", "h", "d", "w", "M", "y", "ns"]);
    let text = prop_oneof![
        mutated_any(valid).prop_map(|b| String::from_utf8_lossy(&b).into_owned()),
        any::<String>(),
        (any::<u64>(), unit).prop_map(|(n, u)| format!("{n}{u}")),
        (0..100_000u32, 1..13u32, 1..32u32).prop_map(|(y, m, d)| format!("{y:04}-{m:02}-{d:02}")),
    ];
    fuzz("audit/since", 512, (text, any::<i64>()), |(text, now)| {
        if let Err(e) = parse_since(&text, now) {
            check!(!e.contains('\n'), "not one error line: {e:?}");
        }
        Ok(())
    });
}

/// Any time is shown (a damaged record or state file can hold any), never a panic.
#[test]
fn fuzz_audit_format_time() {
    let t = prop_oneof![any::<i64>(), Just(i64::MAX), Just(i64::MIN), Just(253_402_300_799), Just(253_402_300_800), Just(0)];
    fuzz("audit/format-time", 512, t, |t| {
        let shown = format_time(t);
        check!(shown.len() == 19, "time {t} shown as {shown:?}");
        Ok(())
    });
}

/// Found with `fuzz_audit_format_time` (a time past the year 9999 made humantime's Display fail, so
/// `format_time` panicked) and `fuzz_audit_since` (a duration of more seconds than an i64 holds overflowed).
#[test]
fn extreme_times_and_durations() {
    assert_eq!(format_time(i64::MAX), "9999-12-31 23:59:59");
    assert_eq!(format_time(-5), "1970-01-01 00:00:00");
    assert!(parse_since("18446744073709551615s", 1_796_000_000).is_err());
    assert!(parse_since("10000000000000000s", i64::MIN + 5).is_err());
}
