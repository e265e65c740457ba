//! The checks run on the recovered server: pg_amcheck and the validation queries, and the rules that
//! judge a query's value (numbers, text, freshness against the reference time). Separate because the
//! judging is pure and is where the test's verdicts come from: it is unit-tested without a server.

use super::scratch::Scratch;
use super::failure::{PgError, QueryFailure, RestoreTestFailure};
use super::server::{command_as, program};
use std::path::PathBuf;
use std::time::Instant;
use strata_config::ValidationQuery;
use strata_repo::restore_tests::AmcheckOutcome;
use strata_restore::target;

/// The first column of the first row the query returns, as text (`None`: NULL); an error for a failed
/// query or no row.
pub(super) async fn first_value(client: &tokio_postgres::Client, sql: &str) -> Result<Option<String>, QueryFailure> {
    let messages = client.simple_query(sql).await.map_err(|e| QueryFailure::Failed(PgError(e)))?;
    for m in messages {
        if let tokio_postgres::SimpleQueryMessage::Row(row) = m {
            return match row.try_get(0) {
                Ok(v) => Ok(v.map(str::to_string)),
                Err(_) => Err(QueryFailure::NoColumns),
            };
        }
    }
    Err(QueryFailure::NoRows)
}

/// `pg_amcheck --all --install-missing` (the server is thrown away, so installing amcheck is harmless).
pub(super) async fn amcheck(bin: &Option<PathBuf>, s: &Scratch, superuser: &str) -> AmcheckOutcome {
    let t = Instant::now();
    let mut cmd = command_as(program(bin, "pg_amcheck"), None);
    cmd.arg("--all").arg("--install-missing").arg("-h").arg(&s.sock).arg("-p").arg(s.port.to_string()).arg("-U").arg(superuser);
    let (passed, output) = match cmd.output().await {
        Err(e) => (false, format!("cannot run {}: {e}", program(bin, "pg_amcheck").display())),
        Ok(out) => {
            let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
            let tail: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
            let tail = tail[tail.len().saturating_sub(20)..].join("\n");
            match out.status.code() {
                Some(0) => (true, tail),
                Some(2) => (false, if tail.is_empty() { "pg_amcheck reported corruption".into() } else { tail }),
                _ => (false, format!("pg_amcheck could not check ({}): {tail}", out.status)),
            }
        }
    };
    AmcheckOutcome { passed, duration_ms: t.elapsed().as_millis() as u64, output }
}

/// The failure a pg_amcheck run that did not pass stands for: its last line of output says why.
pub(super) fn amcheck_failure(outcome: &AmcheckOutcome) -> Option<RestoreTestFailure> {
    if outcome.passed {
        return None;
    }
    Some(match outcome.output.lines().rev().find(|l| !l.trim().is_empty()) {
        Some(last) => RestoreTestFailure::AmcheckFound { last_line: last.to_string() },
        None => RestoreTestFailure::AmcheckFailed,
    })
}

/// Whether a query's value meets every expectation of `q`; the reason when it does not. `reference` is
/// the recovery's reference time (Unix seconds) for `max_age_secs`.
pub(super) fn check_value(q: &ValidationQuery, value: Option<&str>, reference: i64) -> Result<(), QueryFailure> {
    let Some(v) = value else {
        return Err(QueryFailure::Null);
    };
    let shown = v.trim();
    if q.min.is_some() || q.max.is_some() {
        let n: f64 = match shown.parse::<f64>() {
            Ok(n) if !n.is_nan() => n,
            _ => return Err(QueryFailure::NotANumber { value: shown.to_string() }),
        };
        if let Some(min) = q.min {
            if n < min {
                return Err(QueryFailure::BelowMin { value: shown.to_string(), min });
            }
        }
        if let Some(max) = q.max {
            if n > max {
                return Err(QueryFailure::AboveMax { value: shown.to_string(), max });
            }
        }
    }
    if let Some(want) = &q.equals {
        if v != want {
            return Err(QueryFailure::NotEqual { value: v.to_string(), expected: want.clone() });
        }
    }
    if let Some(max_age) = q.max_age_secs {
        let t = parse_timestamp(shown).ok_or_else(|| QueryFailure::NotATimestamp { value: shown.to_string() })?;
        let age = reference - t;
        if age > max_age as i64 {
            return Err(QueryFailure::Stale { value: shown.to_string(), age_secs: age, reference, max_age_secs: max_age });
        }
    }
    Ok(())
}

/// A query's value as a Unix time (seconds): an ISO timestamp (UTC when it has no zone), a date (its
/// midnight UTC), or a number of seconds.
pub(super) fn parse_timestamp(v: &str) -> Option<i64> {
    let v = v.trim();
    if let Ok(n) = v.parse::<f64>() {
        return n.is_finite().then(|| n.floor() as i64);
    }
    let with_zone = match v.len() {
        10 => format!("{v} 00:00:00+00"),
        n if n > 10 => {
            let clock = &v[11..];
            if clock.contains(['+', '-', 'Z', 'z']) || clock.ends_with("UTC") {
                v.to_string()
            } else {
                format!("{v}+00")
            }
        }
        _ => return None,
    };
    target::parse_time(&with_zone).ok().map(|micros| micros.div_euclid(1_000_000))
}


#[cfg(test)]
mod tests {
    use super::*;

    fn query(min: Option<f64>, max: Option<f64>, equals: Option<&str>, max_age_secs: Option<u64>) -> ValidationQuery {
        ValidationQuery {
            name: "q".into(),
            stanza: None,
            database: "postgres".into(),
            sql: "select 1".into(),
            min,
            max,
            equals: equals.map(str::to_string),
            max_age_secs,
        }
    }

    /// 2026-12-02 17:00:00 UTC.
    const REF: i64 = 1_796_230_800;

    /// `check_value` with its failure as the text stored in the result.
    fn verdict(q: &ValidationQuery, value: Option<&str>, reference: i64) -> Result<(), String> {
        check_value(q, value, reference).map_err(|e| e.to_string())
    }

    #[test]
    fn numbers_are_compared_with_min_and_max() {
        let q = query(Some(500000.0), Some(600000.0), None, None);
        assert_eq!(verdict(&q, Some("500000"), REF), Ok(()));
        assert_eq!(verdict(&q, Some(" 600000 "), REF), Ok(()));
        assert_eq!(verdict(&q, Some("499999"), REF), Err("returned 499999, expected ≥ 500000".into()));
        assert_eq!(verdict(&q, Some("600000.5"), REF), Err("returned 600000.5, expected ≤ 600000".into()));
        assert_eq!(verdict(&q, Some("5.5e5"), REF), Ok(()));
        assert_eq!(verdict(&q, Some("NaN"), REF), Err("returned 'NaN', which is not a number".into()));
        assert_eq!(verdict(&q, Some("many"), REF), Err("returned 'many', which is not a number".into()));
        assert_eq!(verdict(&q, None, REF), Err("returned NULL".into()));
        // Only a minimum: anything above passes.
        assert_eq!(verdict(&query(Some(1.0), None, None, None), Some("1e12"), REF), Ok(()));
    }

    #[test]
    fn text_is_compared_exactly() {
        let q = query(None, None, Some("on"), None);
        assert_eq!(verdict(&q, Some("on"), REF), Ok(()));
        assert_eq!(verdict(&q, Some("off"), REF), Err("returned 'off', expected 'on'".into()));
        assert_eq!(verdict(&q, Some("on "), REF), Err("returned 'on ', expected 'on'".into()));
        // No expectation at all: any value but NULL passes.
        assert_eq!(verdict(&query(None, None, None, None), Some("anything"), REF), Ok(()));
    }

    #[test]
    fn timestamps_are_compared_with_the_reference_time() {
        let q = query(None, None, None, Some(3600));
        assert_eq!(verdict(&q, Some("2026-12-02 16:00:00+00"), REF), Ok(()));
        assert_eq!(verdict(&q, Some("2026-12-02 16:30:00.123456+00"), REF), Ok(()));
        // Newer than the reference (a clock ahead): fresh.
        assert_eq!(verdict(&q, Some("2026-12-02 18:00:00+00"), REF), Ok(()));
        assert_eq!(
            verdict(&q, Some("2026-12-02 15:59:59+00"), REF),
            Err("returned 2026-12-02 15:59:59+00, 3601 s before the reference time 2026-12-02 17:00:00 UTC, expected at most 3600 s".into())
        );
        // Another zone, no zone (UTC), a date, Unix seconds.
        assert_eq!(verdict(&q, Some("2026-12-02 17:30:00+01:30"), REF), Ok(()));
        assert!(verdict(&q, Some("2026-12-02 17:30:00+03"), REF).is_err());
        assert_eq!(verdict(&q, Some("2026-12-02 16:00:00"), REF), Ok(()));
        assert!(verdict(&q, Some("2026-11-29 17:00:00"), REF).is_err());
        assert_eq!(verdict(&query(None, None, None, Some(86400)), Some("2026-12-02"), REF), Ok(()));
        assert_eq!(verdict(&q, Some(&(REF - 10).to_string()), REF), Ok(()));
        assert!(verdict(&q, Some(&(REF - 3601).to_string()), REF).is_err());
        assert_eq!(verdict(&q, Some("infinity"), REF), Err("returned 'infinity', which is not a timestamp".into()));
        assert_eq!(verdict(&q, Some("yesterday-ish"), REF), Err("returned 'yesterday-ish', which is not a timestamp".into()));
    }

    #[test]
    fn timestamps_parse_as_postgresql_prints_them() {
        assert_eq!(parse_timestamp("2026-12-02 17:00:00+00"), Some(REF));
        assert_eq!(parse_timestamp("2026-12-02T17:00:00Z"), Some(REF));
        assert_eq!(parse_timestamp("2026-12-02 12:00:00-05"), Some(REF));
        assert_eq!(parse_timestamp("2026-12-02 17:00:00.999999"), Some(REF));
        assert_eq!(parse_timestamp("2026-12-02"), Some(REF - 17 * 3600));
        assert_eq!(parse_timestamp("1796230800.7"), Some(REF));
        assert_eq!(parse_timestamp("-infinity"), None);
        assert_eq!(parse_timestamp("2026-13-02 17:00:00"), None);
    }

}
