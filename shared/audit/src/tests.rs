use super::*;
use serde_json::json;

fn entry(op: Op, stanza: Option<&str>, started: i64, error: Option<&str>) -> AuditEntry {
    AuditEntry::new(
        op,
        stanza,
        Some("primary"),
        json!({"label": format!("L{started}")}),
        UNIX_EPOCH + Duration::from_secs(started as u64),
        Duration::from_millis(1500),
        error.map(str::to_string),
    )
}

#[test]
fn appends_and_reads_back() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("sub/dir/audit.log");
    let a = entry(Op::Backup, Some("main"), 1_796_232_600, None);
    let b = entry(Op::Restore, Some("main"), 1_796_232_700, Some("target is not empty"));
    append(&log, &a).unwrap();
    append(&log, &b).unwrap();
    let read = read(&log, &Filter::default()).unwrap();
    assert_eq!(read.entries, vec![a.clone(), b.clone()]);
    assert_eq!(read.unreadable_lines, 0);
    let text = std::fs::read_to_string(&log).unwrap();
    assert_eq!(text.lines().count(), 2);
    let first: serde_json::Value = serde_json::from_str(text.lines().next().unwrap()).unwrap();
    assert_eq!(first["op"], "backup");
    assert_eq!(first["outcome"], "ok");
    assert_eq!(first["time_text"], "2026-12-02 17:30:00");
    assert_eq!(first["duration_secs"], 1.5);
    assert!(first.get("error").is_none(), "{first}");
    assert_eq!(b.outcome, Outcome::Failed);
    assert_eq!(b.error.as_deref(), Some("target is not empty"));
    assert_eq!(b.pid, std::process::id());
    assert!(!b.user.is_empty() && !b.host.is_empty());
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(&log).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode & !0o640, 0, "log mode {mode:o}");
}

#[test]
fn missing_log_reads_empty() {
    let dir = tempfile::tempdir().unwrap();
    let r = read(&dir.path().join("none.log"), &Filter::default()).unwrap();
    assert!(r.entries.is_empty());
    assert_eq!(r.unreadable_lines, 0);
}

#[test]
fn filters() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let entries = [
        entry(Op::Backup, Some("main"), 1000, None),
        entry(Op::Backup, Some("other"), 2000, Some("boom")),
        entry(Op::Expire, Some("main"), 3000, None),
        entry(Op::RepoRekey, None, 4000, None),
    ];
    for e in &entries {
        append(&log, e).unwrap();
    }
    let ops = |f: Filter| -> Vec<i64> { read(&log, &f).unwrap().entries.iter().map(|e| e.time).collect() };
    assert_eq!(ops(Filter::default()), vec![1000, 2000, 3000, 4000]);
    assert_eq!(ops(Filter { since: Some(2000), ..Default::default() }), vec![2000, 3000, 4000]);
    assert_eq!(ops(Filter { op: Some(Op::Backup), ..Default::default() }), vec![1000, 2000]);
    assert_eq!(ops(Filter { outcome: Some(Outcome::Failed), ..Default::default() }), vec![2000]);
    assert_eq!(ops(Filter { outcome: Some(Outcome::Ok), ..Default::default() }), vec![1000, 3000, 4000]);
    // A stanza's operations, and the ones about every stanza.
    assert_eq!(ops(Filter { stanza: Some("main".into()), ..Default::default() }), vec![1000, 3000, 4000]);
    assert_eq!(
        ops(Filter { stanza: Some("main".into()), op: Some(Op::Backup), since: Some(500), outcome: None }),
        vec![1000]
    );
}

#[test]
fn torn_line_is_skipped_and_does_not_swallow_the_next() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let a = entry(Op::Backup, Some("main"), 1000, None);
    append(&log, &a).unwrap();
    // A writer killed mid-line: part of a line, no newline.
    let torn = serde_json::to_string(&entry(Op::Expire, Some("main"), 2000, None)).unwrap();
    let mut f = OpenOptions::new().append(true).open(&log).unwrap();
    f.write_all(&torn.as_bytes()[..torn.len() / 2]).unwrap();
    drop(f);
    let r = read(&log, &Filter::default()).unwrap();
    assert_eq!(r.entries, vec![a.clone()]);
    assert_eq!(r.unreadable_lines, 1);
    // The next append starts a new line, so it is read whole.
    let c = entry(Op::Restore, Some("main"), 3000, None);
    append(&log, &c).unwrap();
    let r = read(&log, &Filter::default()).unwrap();
    assert_eq!(r.entries, vec![a, c]);
    assert_eq!(r.unreadable_lines, 1);
}

#[test]
fn concurrent_appends_keep_every_line_whole() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    const THREADS: usize = 8;
    const PER_THREAD: usize = 50;
    // Lines well over PIPE_BUF (4096), which O_APPEND alone would not keep whole.
    let big = "x".repeat(10_000);
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (log, big) = (&log, &big);
            s.spawn(move || {
                for i in 0..PER_THREAD {
                    let mut e = entry(Op::Verify, Some("main"), (t * 1000 + i) as i64, None);
                    e.what = json!({"thread": t, "i": i, "pad": big});
                    append(log, &e).unwrap();
                }
            });
        }
    });
    let r = read(&log, &Filter::default()).unwrap();
    assert_eq!(r.unreadable_lines, 0);
    assert_eq!(r.entries.len(), THREADS * PER_THREAD);
    for t in 0..THREADS {
        let mine: Vec<u64> = r
            .entries
            .iter()
            .filter(|e| e.what["thread"] == t)
            .map(|e| e.what["i"].as_u64().unwrap())
            .collect();
        assert_eq!(mine, (0..PER_THREAD as u64).collect::<Vec<_>>(), "thread {t}");
    }
}

#[test]
fn config_changes_are_noted_once_each() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("audit.log");
    let cfg = dir.path().join("strata.toml");
    let first = note_config(&log, &cfg, b"bus = \"local\"\n").unwrap().expect("first seen");
    assert_eq!(first.op, "config-change");
    assert_eq!(first.what["first_seen"], true);
    assert_eq!(first.what["old_hash"], serde_json::Value::Null);
    let h1 = blake3::hash(b"bus = \"local\"\n").to_hex().to_string();
    assert_eq!(first.what["new_hash"], h1.as_str());
    assert_eq!(first.what["config"], cfg.display().to_string());
    assert!(note_config(&log, &cfg, b"bus = \"local\"\n").unwrap().is_none(), "unchanged");
    let second = note_config(&log, &cfg, b"bus = \"nats://x\"\n").unwrap().expect("changed");
    assert_eq!(second.what["first_seen"], false);
    assert_eq!(second.what["old_hash"], h1.as_str());
    assert!(note_config(&log, &cfg, b"bus = \"nats://x\"\n").unwrap().is_none());
    // Another config sharing the log is tracked on its own.
    let other = dir.path().join("other.toml");
    assert!(note_config(&log, &other, b"a").unwrap().is_some());
    assert!(note_config(&log, &cfg, b"bus = \"nats://x\"\n").unwrap().is_none());
    assert!(note_config(&log, &other, b"a").unwrap().is_none());
    let r = read(&log, &Filter { op: Some(Op::ConfigChange), ..Default::default() }).unwrap();
    assert_eq!(r.entries, vec![first, second.clone(), r.entries[2].clone()]);
    assert_eq!(r.entries.len(), 3);
    assert!(config_hash_path(&log).ends_with("audit.log.config-hash"));
    assert!(config_hash_path(&log).is_file());
}

#[test]
fn unwritable_log_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    // A directory where the file should be: fails for root too.
    let log = dir.path().join("audit.log");
    std::fs::create_dir(&log).unwrap();
    let e = append(&log, &entry(Op::Backup, None, 1, None)).unwrap_err();
    assert!(e.to_string().starts_with(&format!("audit log {}", log.display())), "{e}");
    assert!(note_config(&log, Path::new("/c.toml"), b"x").is_err());
}

#[test]
fn since_forms() {
    let now = 1_796_232_600; // 2026-12-02 17:30:00
    assert_eq!(parse_since("2026-12-02", now).unwrap(), 1_796_169_600);
    assert_eq!(parse_since("2026-12-02 17:30", now).unwrap(), now);
    assert_eq!(parse_since("2026-12-02 17:30:00", now).unwrap(), now);
    assert_eq!(parse_since("2026-12-02T17:30:00Z", now).unwrap(), now);
    assert_eq!(parse_since("24h", now).unwrap(), now - 86_400);
    assert_eq!(parse_since("7d", now).unwrap(), now - 7 * 86_400);
    assert_eq!(parse_since("90min", now).unwrap(), now - 5400);
    assert!(parse_since("yesterday", now).is_err());
    assert!(parse_since("2026-13-01", now).is_err());
    assert_eq!(format_time(now), "2026-12-02 17:30:00");
}

#[test]
fn op_names_round_trip() {
    for op in Op::ALL {
        assert_eq!(op.as_str().parse::<Op>().unwrap(), op);
    }
    let e = "backups".parse::<Op>().unwrap_err();
    assert!(e.contains("restore-test"), "{e}");
}
