#!/usr/bin/env bash
# Runs Strata's whole test suite (README's test command; .ci/run calls it after installing dependencies):
# builds the binaries, makes sure the postgres OS user can execute them, and runs `cargo test --workspace`.
#
#   scripts/test.sh                       # everything
#   scripts/test.sh -p strata-integration # extra arguments go to `cargo test`
#
# Why the binaries need care: PostgreSQL runs `archive_command` (and so `strata archive-push`) as the
# postgres user, and the integration tests run every Strata process as postgres too. postgres must be able
# to traverse every parent directory of the binaries. Build directories outside home directories get o+x
# on their parents; a build under /root or /home is not opened up, the binaries are copied to a
# world-readable /tmp/strata-bin-<pid> for the run instead.
#
# Environment: CARGO_TARGET_DIR (optional, honoured by cargo); RUST_TEST_THREADS (default 2: each
# integration test runs its own PostgreSQL and nats-server, and the machines have 2 cores).
# Exports STRATA_BIN_DIR for the tests (integration/src/bins.rs).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

say() { printf 'test.sh: %s\n' "$*"; }
die() { printf 'test.sh: error: %s\n' "$*" >&2; exit 1; }

# Crash points (shared/crashpoint) are compiled into the binaries the tests run, and only into those; the
# tests are built with the same features so that nothing is compiled twice.
features=(--features strata-crashpoint/failpoints)
cargo build --bins "${features[@]}"

target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
[ -n "$target_dir" ] || die "cannot find cargo's target directory (cargo metadata)"
bin_dir="$target_dir/debug"
[ -x "$bin_dir/strata" ] || die "no strata binary in $bin_dir after cargo build --bins"

if [ "$(id -u)" -eq 0 ]; then
    id postgres >/dev/null 2>&1 || die "no postgres OS user: run scripts/install-deps.sh"
    postgres_can_run() { runuser -u postgres -- test -x "$1/strata"; }
    if ! postgres_can_run "$bin_dir"; then
        case "$bin_dir" in
            /root | /root/* | /home/*) ;; # never open up a home directory
            *)
                d=$bin_dir
                while [ "$d" != / ]; do
                    chmod o+x "$d"
                    d=$(dirname "$d")
                done
                ;;
        esac
    fi
    if ! postgres_can_run "$bin_dir"; then
        copy=/tmp/strata-bin-$$
        rm -rf "$copy"
        mkdir -m 0755 "$copy"
        trap 'rm -rf "$copy"' EXIT
        find "$bin_dir" -maxdepth 1 -type f -name 'strata*' -perm -u+x -exec cp {} "$copy"/ \;
        chmod 0755 "$copy"/*
        say "postgres cannot reach $bin_dir; using copies in $copy"
        bin_dir=$copy
        postgres_can_run "$bin_dir" || die "postgres cannot execute $bin_dir/strata"
    fi
fi

export STRATA_BIN_DIR=$bin_dir
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-2}
say "STRATA_BIN_DIR=$STRATA_BIN_DIR RUST_TEST_THREADS=$RUST_TEST_THREADS"
cargo test --workspace "${features[@]}" "$@"
