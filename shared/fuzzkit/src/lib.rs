//! The decoders' fuzz tests' common part: random bytes, mutations of a valid encoding, and a runner that
//! counts cases and bounds each one in time.
//!
//! Every decoder of stored or received bytes must meet damaged or hostile input with an error, never a
//! panic or a hang (README, "Fuzzing"). Each crate that decodes such bytes has a `tests/fuzz.rs` (or a
//! `fuzz_tests` module where the valid encodings need private test builders) whose targets call [`fuzz`]
//! with a strategy from here. Random bytes rarely get past a decoder's first check (a length, a magic, a
//! checksum), so most targets start from a valid encoding and damage it ([`mutated`]): flipped bits,
//! bytes set to 0x00/0xFF/0x7F, truncation, extension, splices of the input into itself.
//!
//! The number of cases per target is the target's default (kept small, so that all of them run in the
//! ordinary test suite in well under a minute) unless `PROPTEST_CASES` says otherwise; `scripts/fuzz.sh`
//! sets it for a long run. Each target prints `fuzz target <name>: <n> cases` when it finishes, which
//! the script adds up.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestError, TestRunner};
use std::fmt::Debug;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub use proptest;

/// How long one case may take before the target counts as hung (a debug build; the inputs are at most
/// a few MiB, which every decoder reads in well under a second).
pub const CASE_BOUND: Duration = Duration::from_secs(20);

/// Shrinking a failure stops after this many steps: a 1 MiB WAL segment would otherwise shrink for hours.
const MAX_SHRINK_ITERS: u32 = 2_000;

/// Cases per target: `PROPTEST_CASES` when set, else `default`.
pub fn cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES").ok().and_then(|v| v.trim().parse().ok()).unwrap_or(default)
}

/// A byte as a fuzzer would pick it: the values decoders special-case (0x00, 0xFF, 0x7F, 0x80) as often
/// as any other, and the characters that structure text formats (TOML, JSON, history files).
pub fn interesting_byte() -> BoxedStrategy<u8> {
    prop_oneof![
        3 => any::<u8>(),
        1 => Just(0x00u8),
        1 => Just(0xFFu8),
        1 => Just(0x7Fu8),
        1 => Just(0x80u8),
        2 => proptest::sample::select(b"\"'{}[]=,:.\n\t #/\\-+0123456789eEx_".to_vec()),
    ]
    .boxed()
}

/// Random bytes, up to `max_len` of them.
pub fn bytes(max_len: usize) -> BoxedStrategy<Vec<u8>> {
    proptest::collection::vec(interesting_byte(), 0..=max_len).boxed()
}

/// One change to an encoding. Positions are taken modulo the input's length when applied, so a mutation
/// stays meaningful however the earlier ones changed the length.
#[derive(Debug, Clone)]
pub enum Mutation {
    /// Flips one bit.
    Flip { at: u32, bit: u8 },
    /// Sets `len` bytes from `at` to `byte`.
    Set { at: u32, len: u8, byte: u8 },
    /// Cuts the input at `at`.
    Truncate { at: u32 },
    /// Appends bytes.
    Extend(Vec<u8>),
    /// Inserts bytes at `at`.
    Insert { at: u32, bytes: Vec<u8> },
    /// Removes up to `len` bytes at `at`.
    Remove { at: u32, len: u16 },
    /// Copies up to `len` bytes of the input from `from` over the bytes at `to` (a splice of the input
    /// into itself: valid-looking lengths, offsets and headers in the wrong place).
    Splice { from: u32, to: u32, len: u16 },
    /// Overwrites 1, 2, 4 or 8 bytes at `at` with a little-endian integer near a boundary.
    Int { at: u32, width: u8, value: u64 },
}

fn mutation() -> impl Strategy<Value = Mutation> {
    let boundary = prop_oneof![
        Just(0u64),
        Just(1),
        Just(u64::MAX),
        Just(i64::MAX as u64),
        Just(u32::MAX as u64),
        Just(i32::MAX as u64),
        Just(0x7F),
        Just(0x80),
        any::<u64>(),
    ];
    prop_oneof![
        4 => (any::<u32>(), 0..8u8).prop_map(|(at, bit)| Mutation::Flip { at, bit }),
        4 => (any::<u32>(), 1..9u8, interesting_byte()).prop_map(|(at, len, byte)| Mutation::Set { at, len, byte }),
        2 => any::<u32>().prop_map(|at| Mutation::Truncate { at }),
        1 => proptest::collection::vec(interesting_byte(), 1..64).prop_map(Mutation::Extend),
        2 => (any::<u32>(), proptest::collection::vec(interesting_byte(), 1..16)).prop_map(|(at, bytes)| Mutation::Insert { at, bytes }),
        2 => (any::<u32>(), 1..64u16).prop_map(|(at, len)| Mutation::Remove { at, len }),
        2 => (any::<u32>(), any::<u32>(), 1..256u16).prop_map(|(from, to, len)| Mutation::Splice { from, to, len }),
        3 => (any::<u32>(), prop_oneof![Just(1u8), Just(2), Just(4), Just(8)], boundary)
            .prop_map(|(at, width, value)| Mutation::Int { at, width, value }),
    ]
}

/// `at` as a position in `len` bytes (`len` itself for an empty input).
fn position(at: u32, len: usize) -> usize {
    if len == 0 {
        0
    } else {
        at as usize % len
    }
}

impl Mutation {
    pub fn apply(&self, b: &mut Vec<u8>) {
        let n = b.len();
        match self {
            Mutation::Flip { at, bit } if n > 0 => b[position(*at, n)] ^= 1 << (bit % 8),
            Mutation::Set { at, len, byte } if n > 0 => {
                let start = position(*at, n);
                let end = (start + *len as usize).min(n);
                b[start..end].fill(*byte);
            }
            Mutation::Truncate { at } => b.truncate(position(*at, n)),
            Mutation::Extend(more) => b.extend_from_slice(more),
            Mutation::Insert { at, bytes } => {
                let at = position(*at, n);
                b.splice(at..at, bytes.iter().copied());
            }
            Mutation::Remove { at, len } if n > 0 => {
                let start = position(*at, n);
                b.drain(start..(start + *len as usize).min(n));
            }
            Mutation::Splice { from, to, len } if n > 0 => {
                let (from, to) = (position(*from, n), position(*to, n));
                let len = (*len as usize).min(n - from).min(n - to);
                b.copy_within(from..from + len, to);
            }
            Mutation::Int { at, width, value } if n > 0 => {
                let at = position(*at, n);
                let le = value.to_le_bytes();
                let len = (*width as usize).min(n - at);
                b[at..at + len].copy_from_slice(&le[..len]);
            }
            _ => {}
        }
    }
}

/// `valid` with one to four [`Mutation`]s (shrinking towards fewer of them).
pub fn mutated(valid: Vec<u8>) -> BoxedStrategy<Vec<u8>> {
    let valid = Arc::new(valid);
    proptest::collection::vec(mutation(), 1..=4)
        .prop_map(move |ms| {
            let mut b = valid.as_ref().clone();
            for m in &ms {
                m.apply(&mut b);
            }
            b
        })
        .boxed()
}

/// One of `valids`, mutated: for decoders with several kinds of valid input (every message type).
pub fn mutated_any(valids: Vec<Vec<u8>>) -> BoxedStrategy<Vec<u8>> {
    assert!(!valids.is_empty(), "no valid encoding to mutate");
    let valids = Arc::new(valids);
    (0..valids.len(), proptest::collection::vec(mutation(), 1..=4))
        .prop_map(move |(i, ms)| {
            let mut b = valids[i].clone();
            for m in &ms {
                m.apply(&mut b);
            }
            b
        })
        .boxed()
}

/// What a failing or hung input is shown as: its length and its first bytes.
fn show<T: Debug>(value: &T) -> String {
    let text = format!("{value:?}");
    if text.len() <= 4000 {
        text
    } else {
        let cut = (0..=4000).rev().find(|&i| text.is_char_boundary(i)).unwrap_or(0);
        format!("{}... ({} characters in all)", &text[..cut], text.len())
    }
}

/// Runs `test` on `cases(default_cases)` inputs from `strategy`. A panic or an `Err` fails the target
/// with the (shrunk) input; a case running longer than [`CASE_BOUND`] ends the process, since a hung
/// decoder cannot be interrupted, after printing the input. Prints the number of cases run.
pub fn fuzz<S>(target: &str, default_cases: u32, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S: Strategy,
    S::Value: Clone + Debug + Send + 'static,
{
    let mut config = Config::with_cases(cases(default_cases));
    config.failure_persistence = None;
    config.max_shrink_iters = MAX_SHRINK_ITERS;
    let mut runner = TestRunner::new(config);

    // The watchdog: the running case's start and input, checked every 100 ms.
    type Running = Option<(Instant, Box<dyn Debug + Send>)>;
    let running: Arc<Mutex<Running>> = Arc::new(Mutex::new(None));
    let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let watchdog = {
        let (running, done, target) = (running.clone(), done.clone(), target.to_string());
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(100));
                let guard = running.lock().unwrap_or_else(|p| p.into_inner());
                if let Some((start, input)) = guard.as_ref() {
                    if start.elapsed() > CASE_BOUND {
                        eprintln!(
                            "fuzz target {target}: a case ran longer than {} s (a hang); its input: {}",
                            CASE_BOUND.as_secs(),
                            show(input)
                        );
                        std::process::exit(101);
                    }
                }
            }
        })
    };

    let count = AtomicU64::new(0);
    let result = runner.run(&strategy, |value| {
        count.fetch_add(1, Ordering::Relaxed);
        *running.lock().unwrap_or_else(|p| p.into_inner()) = Some((Instant::now(), Box::new(value.clone())));
        let outcome = test(value);
        *running.lock().unwrap_or_else(|p| p.into_inner()) = None;
        outcome
    });
    done.store(true, Ordering::Relaxed);
    let _ = watchdog.join();
    match result {
        Ok(()) => println!("fuzz target {target}: {} cases", count.load(Ordering::Relaxed)),
        Err(TestError::Fail(reason, value)) => {
            panic!("fuzz target {target} failed: {reason}\nminimal input: {}", show(&value))
        }
        Err(TestError::Abort(reason)) => panic!("fuzz target {target} aborted: {reason}"),
    }
}

/// Fails a case when `condition` does not hold (for properties beyond "does not panic").
#[macro_export]
macro_rules! check {
    ($cond:expr, $($msg:tt)+) => {
        if !$cond {
            return Err($crate::proptest::test_runner::TestCaseError::fail(format!($($msg)+)));
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mutations_stay_in_bounds_of_any_input() {
        for len in [0usize, 1, 2, 7, 100] {
            let base: Vec<u8> = (0..len as u8).collect();
            fuzz(&format!("mutations of {len} bytes"), 64, mutated(base), |_| Ok(()));
        }
    }

    #[test]
    fn a_panicking_case_fails_the_target() {
        let caught = std::panic::catch_unwind(|| {
            fuzz("always panics", 4, bytes(8), |_| panic!("boom"));
        });
        assert!(caught.is_err());
    }

    #[test]
    fn mutated_inputs_differ_from_the_valid_one() {
        let valid = vec![0x55u8; 64];
        let mut runner = TestRunner::deterministic();
        let changed = (0..200)
            .filter(|_| mutated(valid.clone()).new_tree(&mut runner).unwrap().current() != valid)
            .count();
        assert!(changed > 150, "only {changed} of 200 mutations changed the input");
    }
}
