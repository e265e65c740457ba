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

