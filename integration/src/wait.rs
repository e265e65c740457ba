//! Waiting for a condition: the harness's one deadline loop.
//!
//! A test never sleeps for a fixed time hoping something happened: it names the condition and waits for
//! it, with a deadline that fails the test with what it waited for. Everything in the harness and the tests
//! that waits goes through [`wait_until`] (or [`wait_until_every`] when looking costs something, such as
//! a `strata info` run), so the rule and its failure message are written once.

use std::time::{Duration, Instant};

/// How often [`wait_until`] looks.
pub const POLL: Duration = Duration::from_millis(50);

/// Polls `probe` every 50 ms until it gives a value; panics after `timeout` naming `what`.
pub fn wait_until<T>(what: &str, timeout: Duration, probe: impl FnMut() -> Option<T>) -> T {
    wait_until_every(what, timeout, POLL, probe)
}

/// [`wait_until`] for a probe that costs something: polls every `every`.
pub fn wait_until_every<T>(what: &str, timeout: Duration, every: Duration, probe: impl FnMut() -> Option<T>) -> T {
    match poll(timeout, every, probe) {
        Some(v) => v,
        None => panic!("timed out after {timeout:?} waiting for {what}"),
    }
}

/// Polls `probe` every `every` until it gives a value, or `None` once `timeout` has passed (for waits
/// whose failure message needs what the probe saw last, or that are not failures).
pub fn poll<T>(timeout: Duration, every: Duration, mut probe: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = probe() {
            return Some(v);
        }
        if Instant::now() >= deadline {
            return None;
        }
        std::thread::sleep(every.min(deadline.saturating_duration_since(Instant::now())).max(Duration::from_millis(1)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_condition_that_comes_true_ends_the_wait_with_its_value() {
        let mut n = 0;
        assert_eq!(wait_until("n to reach 3", Duration::from_secs(5), || { n += 1; (n == 3).then_some(n) }), 3);
    }

    #[test]
    #[should_panic(expected = "waiting for the impossible")]
    fn a_condition_that_never_comes_fails_naming_it() {
        wait_until("the impossible", Duration::from_millis(100), || None::<()>);
    }

    #[test]
    fn poll_gives_none_after_the_deadline_having_looked_at_least_twice() {
        let mut looks = 0;
        assert_eq!(poll(Duration::from_millis(30), Duration::from_millis(10), || { looks += 1; None::<()> }), None);
        assert!(looks >= 2, "{looks}");
    }
}
