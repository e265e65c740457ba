//! The one retry loop of the workspace: storage requests (POSIX and S3) and bus publishes go through
//! [`retry`].
//!
//! # Why one loop
//! Before this crate each place that retried had its own loop with its own idea of when to stop, and one
//! place (POSIX storage) never retried. A retry loop gets three things wrong in practice: it retries an
//! error that can never succeed (a missing bucket, a refused key), it retries forever, and it cannot be
//! stopped while it pauses, so a shutdown waits out a backoff. Here the caller says which errors are
//! permanent (usually the error type's own `is_permanent`), the [`RetryPolicy`] bounds the attempts and the
//! time, a [`CancellationToken`] ends a pause at once, and the failure reports how many attempts were made
//! ([`GaveUp`]), so the one error line a user sees says whether Strata tried once or ten times.

use std::fmt;
use std::future::Future;
use std::time::Duration;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How often and how patiently a failed operation is tried again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts in all, the first included (at least 1).
    pub attempts: u32,
    /// Pause before the second attempt; doubled after each attempt, up to `max_pause`.
    pub first_pause: Duration,
    pub max_pause: Duration,
    /// No attempt starts later than this after the first one began (`None`: bounded by `attempts` only).
    pub give_up_after: Option<Duration>,
}

impl RetryPolicy {
    /// Tries once: for operations whose caller retries at a higher level.
    pub const ONCE: RetryPolicy =
        RetryPolicy { attempts: 1, first_pause: Duration::ZERO, max_pause: Duration::ZERO, give_up_after: None };

    /// A policy bounded by time rather than by a count: attempts go on, `first_pause` doubling up to
    /// `max_pause`, while the next one would start within `budget` of the first.
    pub fn for_duration(budget: Duration, first_pause: Duration, max_pause: Duration) -> RetryPolicy {
        RetryPolicy { attempts: u32::MAX, first_pause, max_pause, give_up_after: Some(budget) }
    }
}

/// Why [`retry`] stopped without a success: the last error, and what was tried.
#[derive(Debug)]
pub struct GaveUp<E> {
    pub last: E,
    /// Attempts made, the first included.
    pub attempts: u32,
    pub elapsed: Duration,
    /// The cancellation token ended a pause; more attempts were allowed.
    pub cancelled: bool,
}

impl<E> GaveUp<E> {
    /// What to append to the last error's message: empty after a single attempt, otherwise
    /// " (3 attempts in 1.4 s)" or " (cancelled after 2 attempts)".
    pub fn attempts_note(&self) -> String {
        if self.cancelled {
            format!(" (cancelled after {} attempt{})", self.attempts, if self.attempts == 1 { "" } else { "s" })
        } else if self.attempts > 1 {
            format!(" ({} attempts in {:.1} s)", self.attempts, self.elapsed.as_secs_f64())
        } else {
            String::new()
        }
    }

    /// The last error, for callers that report attempts elsewhere.
    pub fn into_last(self) -> E {
        self.last
    }
}

impl<E: fmt::Display> fmt::Display for GaveUp<E> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.last, self.attempts_note())
    }
}

impl<E: fmt::Debug + fmt::Display> std::error::Error for GaveUp<E> {}

/// Runs `attempt` until it succeeds, fails with an error `is_permanent` says no retry can fix, has used
/// every attempt or the time `policy` allows, or `cancel` fires during a pause. `on_retry(n, error, pause)`
/// is called before each pause, after the n-th failed attempt (for a log line and a counter).
///
/// Cancel safety: as `attempt`'s future; dropping this future drops the attempt in flight.
pub async fn retry<T, E, F, Fut>(
    policy: &RetryPolicy,
    cancel: &CancellationToken,
    is_permanent: impl Fn(&E) -> bool,
    mut on_retry: impl FnMut(u32, &E, Duration),
    mut attempt: F,
) -> Result<T, GaveUp<E>>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, E>>,
{
    let started = Instant::now();
    let mut pause = policy.first_pause;
    let mut attempts = 0u32;
    loop {
        attempts += 1;
        let error = match attempt().await {
            Ok(v) => return Ok(v),
            Err(e) => e,
        };
        let out_of_time = policy.give_up_after.is_some_and(|budget| started.elapsed() + pause > budget);
        if is_permanent(&error) || attempts >= policy.attempts.max(1) || out_of_time {
            return Err(GaveUp { last: error, attempts, elapsed: started.elapsed(), cancelled: false });
        }
        on_retry(attempts, &error, pause);
        tokio::select! {
            _ = cancel.cancelled() => {
                return Err(GaveUp { last: error, attempts, elapsed: started.elapsed(), cancelled: true });
            }
            _ = tokio::time::sleep(pause) => {}
        }
        pause = (pause * 2).min(policy.max_pause);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::cell::Cell;

    #[derive(Debug, PartialEq)]
    enum E {
        Transient,
        Permanent,
    }
    impl fmt::Display for E {
        fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
            write!(f, "{self:?}")
        }
    }
    fn permanent(e: &E) -> bool {
        *e == E::Permanent
    }
    const POLICY: RetryPolicy = RetryPolicy {
        attempts: 4,
        first_pause: Duration::from_millis(100),
        max_pause: Duration::from_millis(250),
        give_up_after: None,
    };

    #[tokio::test(start_paused = true)]
    async fn a_transient_error_is_retried_with_doubling_pauses_up_to_the_cap_and_then_reported_with_its_count() {
        let calls = Cell::new(0);
        let mut pauses = Vec::new();
        let started = Instant::now();
        let r: Result<(), _> = retry(&POLICY, &CancellationToken::new(), permanent, |_, _, p| pauses.push(p), || {
            calls.set(calls.get() + 1);
            async { Err(E::Transient) }
        })
        .await;
        let gave_up = r.unwrap_err();
        assert_eq!((calls.get(), gave_up.attempts, gave_up.cancelled), (4, 4, false));
        assert_eq!(pauses, [100, 200, 250].map(Duration::from_millis));
        assert_eq!(started.elapsed(), Duration::from_millis(550));
        assert_eq!(gave_up.to_string(), "Transient (4 attempts in 0.6 s)");
    }

    #[tokio::test(start_paused = true)]
    async fn a_permanent_error_is_not_retried_and_its_message_is_unchanged() {
        let calls = Cell::new(0);
        let r: Result<(), _> = retry(&POLICY, &CancellationToken::new(), permanent, |_, _, _| panic!("no retry"), || {
            calls.set(calls.get() + 1);
            async { Err(E::Permanent) }
        })
        .await;
        let gave_up = r.unwrap_err();
        assert_eq!((calls.get(), gave_up.attempts), (1, 1));
        assert_eq!(gave_up.to_string(), "Permanent");
    }

    #[tokio::test(start_paused = true)]
    async fn success_after_failures_returns_the_value() {
        let calls = Cell::new(0);
        let r = retry(&POLICY, &CancellationToken::new(), permanent, |_, _, _| {}, || {
            calls.set(calls.get() + 1);
            let n = calls.get();
            async move { if n < 3 { Err(E::Transient) } else { Ok(n) } }
        })
        .await;
        assert_eq!(r.unwrap(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn a_time_budget_stops_before_an_attempt_that_would_start_too_late() {
        let policy = RetryPolicy::for_duration(Duration::from_secs(1), Duration::from_millis(300), Duration::from_secs(5));
        let r: Result<(), _> = retry(&policy, &CancellationToken::new(), permanent, |_, _, _| {}, || async { Err(E::Transient) }).await;
        // Attempts at 0 and 0.3 s; the next would start at 0.9 s and still fits; the one after at 2.1 s.
        let gave_up = r.unwrap_err();
        assert_eq!(gave_up.attempts, 3);
        assert_eq!(gave_up.elapsed, Duration::from_millis(900));
    }

    #[tokio::test(start_paused = true)]
    async fn cancelling_ends_the_pause_at_once_and_says_so() {
        let cancel = CancellationToken::new();
        let policy = RetryPolicy { first_pause: Duration::from_secs(3600), max_pause: Duration::from_secs(3600), ..POLICY };
        let canceller = {
            let cancel = cancel.clone();
            async move {
                tokio::time::sleep(Duration::from_secs(1)).await;
                cancel.cancel();
            }
        };
        let started = Instant::now();
        let (r, ()) = tokio::join!(
            retry::<(), _, _, _>(&policy, &cancel, permanent, |_, _, _| {}, || async { Err(E::Transient) }),
            canceller
        );
        let gave_up = r.unwrap_err();
        assert!(gave_up.cancelled);
        assert_eq!(gave_up.attempts, 1);
        assert_eq!(started.elapsed(), Duration::from_secs(1));
        assert_eq!(gave_up.to_string(), "Transient (cancelled after 1 attempt)");
    }

    #[tokio::test(start_paused = true)]
    async fn a_policy_of_zero_attempts_still_tries_once() {
        let policy = RetryPolicy { attempts: 0, ..POLICY };
        let calls = Cell::new(0);
        let _ = retry::<(), _, _, _>(&policy, &CancellationToken::new(), permanent, |_, _, _| {}, || {
            calls.set(calls.get() + 1);
            async { Err(E::Transient) }
        })
        .await;
        assert_eq!(calls.get(), 1);
    }
}
