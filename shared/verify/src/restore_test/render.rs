//! The text report of a restore test. Separate because it only reads a stored result: `strata
//! restore-test` prints it for a test just run, and it is unit-tested on results made up in the test.

use strata_command::{format_bytes, format_time};
use strata_repo::restore_tests::RestoreTestResult;

pub(super) fn one_line(s: &str) -> String {
    s.lines().map(str::trim).filter(|l| !l.is_empty()).collect::<Vec<_>>().join(" | ")
}


pub(super) fn secs(ms: u64) -> String {
    format!("{:.1} s", ms as f64 / 1000.0)
}

/// The text report: one line per step, then the verdict.
pub fn render_text(r: &RestoreTestResult) -> String {
    let mut out = String::new();
    let target = match (&r.target_type[..], &r.target) {
        ("default", _) => "the archive's end".to_string(),
        ("immediate", _) => "the backup's consistent point".to_string(),
        (kind, Some(t)) => format!("{kind} {t}"),
        (kind, None) => kind.to_string(),
    };
    let label = if r.label.is_empty() { "(none chosen)" } else { &r.label };
    out.push_str(&format!(
        "restore test of stanza '{}' from repository '{}': backup {label}, recovering to {target}, started {} UTC\n",
        r.stanza,
        r.repo,
        format_time(r.start_time)
    ));
    if let Some(ms) = r.restore_ms {
        out.push_str(&format!("restore: {} files, {} in {} into {}\n", r.restore_files, format_bytes(r.restore_bytes), secs(ms), r.work_dir));
    }
    if let Some(ms) = r.replay_ms {
        out.push_str(&format!("WAL replay: recovery ended and the server accepted connections after {}\n", secs(ms)));
    }
    if let (Some(b), Some(m)) = (r.peak_memory_bytes, &r.memory_measure) {
        out.push_str(&format!("peak memory of the server: {} ({})\n", format_bytes(b), m.to_uppercase()));
    }
    if let Some(a) = &r.amcheck {
        match a.passed {
            true => out.push_str(&format!("pg_amcheck: no corruption found ({})\n", secs(a.duration_ms))),
            false => out.push_str(&format!("pg_amcheck: FAILED ({}): {}\n", secs(a.duration_ms), one_line(&a.output))),
        }
    }
    if let (Some(t), Some(src)) = (r.reference_time, &r.reference_source) {
        if !r.queries.is_empty() {
            out.push_str(&format!("reference time for freshness: {} UTC ({src})\n", format_time(t)));
        }
    }
    for q in &r.queries {
        let value = q.value.as_deref().unwrap_or("-");
        match &q.reason {
            None => out.push_str(&format!("query '{}' ({}): {value}: passed\n", q.name, q.database)),
            Some(why) => out.push_str(&format!("query '{}' ({}): FAILED: {why}\n", q.name, q.database)),
        }
    }
    match &r.cleanup_error {
        None => out.push_str(&format!(
            "cleanup: {}scratch directory removed\n",
            r.postmaster_pid.map(|p| format!("server (pid {p}) stopped, ")).unwrap_or_default()
        )),
        Some(e) => out.push_str(&format!("cleanup: {e}\n")),
    }
    out.push_str(&format!("total: {}\n", secs(r.total_ms)));
    match &r.failure {
        None => out.push_str("restore test passed\n"),
        Some(why) => out.push_str(&format!("restore test FAILED: {why}\n")),
    }
    out
}


#[cfg(test)]
mod tests {
    use super::*;
    use strata_repo::restore_tests::{AmcheckOutcome, QueryOutcome, RESTORE_TEST_FORMAT};

    const START: i64 = 1_796_230_800;

    fn result() -> RestoreTestResult {
        RestoreTestResult {
            format: RESTORE_TEST_FORMAT,
            stanza: "main".into(),
            repo: "local".into(),
            label: "20261202-170000F".into(),
            target_type: "default".into(),
            target: None,
            start_time: START,
            restore_ms: Some(1500),
            restore_files: 1200,
            restore_bytes: 3 << 20,
            replay_ms: Some(250),
            total_ms: 4000,
            peak_memory_bytes: Some(200 << 20),
            memory_measure: Some("pss".into()),
            reference_time: Some(START - 60),
            reference_source: Some("the last transaction end archived (WAL summaries)".into()),
            postmaster_pid: Some(4242),
            work_dir: "/w/x".into(),
            amcheck: Some(AmcheckOutcome { passed: true, duration_ms: 800, output: String::new() }),
            queries: vec![QueryOutcome {
                name: "rows".into(),
                database: "app".into(),
                value: Some("500000".into()),
                passed: true,
                reason: None,
            }],
            passed: true,
            failure: None,
            cleanup_error: None,
        }
    }

    #[test]
    fn a_passed_test_reads_step_by_step() {
        let text = render_text(&result());
        let expected = format!(
            "restore test of stanza 'main' from repository 'local': backup 20261202-170000F, recovering to the archive's end, started {} UTC\n\
             restore: 1200 files, 3.0 MiB in 1.5 s into /w/x\n\
             WAL replay: recovery ended and the server accepted connections after 0.2 s\n\
             peak memory of the server: 200.0 MiB (PSS)\n\
             pg_amcheck: no corruption found (0.8 s)\n\
             reference time for freshness: {} UTC (the last transaction end archived (WAL summaries))\n\
             query 'rows' (app): 500000: passed\n\
             cleanup: server (pid 4242) stopped, scratch directory removed\n\
             total: 4.0 s\n\
             restore test passed\n",
            format_time(START),
            format_time(START - 60)
        );
        assert_eq!(text, expected);
    }

    #[test]
    fn a_failed_test_says_what_failed_on_one_line() {
        let mut r = result();
        r.target_type = "time".into();
        r.target = Some("2026-12-02 16:00:00+00".into());
        r.amcheck = Some(AmcheckOutcome { passed: false, duration_ms: 100, output: "heap table \"t\":\n  corrupt tuple\n".into() });
        r.queries[0].passed = false;
        r.queries[0].reason = Some("returned 1, expected ≥ 500000".into());
        r.passed = false;
        r.failure = Some("amcheck found corruption or could not check: corrupt tuple".into());
        r.cleanup_error = Some("cannot remove /w/x: busy".into());
        let text = render_text(&r);
        assert!(text.contains("recovering to time 2026-12-02 16:00:00+00,"), "{text}");
        assert!(text.contains("pg_amcheck: FAILED (0.1 s): heap table \"t\": | corrupt tuple\n"), "{text}");
        assert!(text.contains("query 'rows' (app): FAILED: returned 1, expected ≥ 500000\n"), "{text}");
        assert!(text.contains("cleanup: cannot remove /w/x: busy\n"), "{text}");
        assert!(text.ends_with("restore test FAILED: amcheck found corruption or could not check: corrupt tuple\n"), "{text}");
    }
}
