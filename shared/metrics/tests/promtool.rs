//! The exposition parses with Prometheus' own parser: `promtool check metrics` (which also lints names,
//! help and types) on a registry holding every kind of series Strata exports. promtool is at
//! `$STRATA_PROMTOOL`, else where `scripts/install-deps.sh` puts it; without it the test says so and passes.

use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

#[test]
fn promtool_accepts_the_exposition() {
    let promtool = std::env::var_os("STRATA_PROMTOOL")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/opt/strata-tools/bin/promtool"));
    if !promtool.is_file() {
        eprintln!("promtool not found at {}: exposition not checked", promtool.display());
        return;
    }
    let r = strata_metrics::Registry::new();
    let copied = r.counter("strata_test_copied_bytes_total", "Bytes copied, with a \\ and a\nnewline.");
    copied.inc_by(&[("target", "b"), ("stanza", "main")], 1234);
    copied.set_total(&[("target", "a \"quoted\"\nvalue \\"), ("stanza", "main")], 7);
    r.counter("strata_test_unused_total", "A family without series.");
    let lag = r.gauge("strata_test_lag_seconds", "Seconds behind.");
    lag.set(&[], 0.25);
    lag.set(&[("target", "b")], 3.0);
    lag.set(&[("target", "nan")], f64::NAN);
    lag.set(&[("target", "inf")], f64::INFINITY);
    lag.set(&[("target", "big")], 1e20);
    let text = r.render();

    let mut child = Command::new(&promtool)
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics rejects:\n{text}\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}
