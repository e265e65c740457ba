#!/usr/bin/env bash
# A long fuzz run: every decoder's property tests (README, "Fuzzing") with many cases, in the debug build
# (overflow checks on, as in the test suite), and the number of cases run per target and in total.
#
#   scripts/fuzz.sh            # 100000 cases per target
#   scripts/fuzz.sh 5000       # another number
#
# The ordinary test suite runs the same targets with their small defaults. A failing target prints its
# (shrunk) input; a case running longer than strata-fuzzkit's CASE_BOUND ends its test binary with the
# input. The full output is kept in the log file named at the end.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'fuzz.sh: %s\n' "$*"; }
die() { printf 'fuzz.sh: error: %s\n' "$*" >&2; exit 1; }

cases=${1:-100000}
[[ "$cases" =~ ^[1-9][0-9]*$ ]] || die "the number of cases must be a positive integer, not '$cases'"
export PROPTEST_CASES=$cases

log=$(mktemp /tmp/strata-fuzz.XXXXXX.log)
failed=()
# Crates with tests/fuzz.rs; strata-pg keeps its targets in src/fuzz_tests.rs (they reuse a test builder).
for crate in strata-messages strata-seal strata-repo strata-keys strata-config strata-audit strata-alerts; do
    say "$crate ($cases cases per target)"
    cargo test -p "$crate" --test fuzz -- --nocapture >>"$log" 2>&1 || failed+=("$crate")
done
say "strata-pg ($cases cases per target)"
cargo test -p strata-pg --lib fuzz_tests:: -- --nocapture >>"$log" 2>&1 || failed+=(strata-pg)

echo
sed -n 's/^fuzz target \(.*\): \([0-9][0-9]*\) cases$/\1 \2/p' "$log" | sort |
    awk '{ printf "  %-36s %12d cases\n", $1, $2; total += $2; n++ }
         END { printf "  %-36s %12d cases in %d targets\n", "total", total, n }'
grep -E '^fuzz target .* (failed|aborted)|ran longer than' "$log" | cut -c1-300 || true
say "full output: $log"
[ ${#failed[@]} -eq 0 ] || die "failures in: ${failed[*]}"
