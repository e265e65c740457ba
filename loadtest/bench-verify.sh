#!/usr/bin/env bash
# bench-verify.sh: how long `strata verify` takes next to `pgbackrest verify`, on the same database, in one run.
#
#   sudo loadtest/bench-verify.sh                     # pgbench scale 50, 3 reps
#   sudo SCALE=10 REPS=1 loadtest/bench-verify.sh     # quick check
#
# Runs as root; PostgreSQL, Strata and pgBackRest run as `postgres`. Needs what scripts/install-deps.sh installs
# (PostgreSQL 15, pgbackrest). Sources loadtest/lib.sh for the dataset.
#
# What it does: a cluster with the pgbench dataset whose archive_command (from after the load on) pushes each WAL
# file with both tools (both must succeed); one full backup with each (Strata: zstd-1, posix repository; pgBackRest: zst level 1, process-max
# 2); then, rep by rep, `pgbackrest verify` and `strata verify` timed one after the other, each after `sync` and a
# pause. Both read back every file (pgBackRest) or chunk (Strata) of the backup and every archived WAL file, and
# check them, but not alike: pgBackRest 2.45 compares the SHA-1 of each stored (compressed) file with the repo
# checksum in its manifest and decompresses almost nothing; Strata decrypts nothing here (no encryption),
# decompresses each chunk, checks the BLAKE3 of its plain bytes and, on top, every relation page's PostgreSQL
# checksum. pgBackRest's time follows the repository's size, Strata's the database's (see README, Performance).
#
# Output: one line per measurement in $BENCH_DIR/results-verify.tsv, then the medians and the ratio on stdout.
#
# Env knobs: SCALE (50), REPS (3), BENCH_DIR (/tmp/strata-bench-verify), PGPORT (55439), STRATA_BIN (the
# directory holding the strata binary; default: cargo build --release, then target/release), PAUSE (2),
# PROCESS_MAX (pgBackRest verify's process-max, 2).
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO_ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=lib.sh
source "$HERE/lib.sh"

BENCH_DIR=${BENCH_DIR:-/tmp/strata-bench-verify}
PGPORT=${PGPORT:-55439}
DATASET=pgbench
dataset_defaults
SCALE=${SCALE:-50}
REPS=${REPS:-3}
PAUSE=${PAUSE:-2}
PROCESS_MAX=${PROCESS_MAX:-2}
STRATA_BIN=${STRATA_BIN:-}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}

STANZA=bench
PGDATA=$BENCH_DIR/pgdata
PGSOCK=$BENCH_DIR/run
LOGDIR=$BENCH_DIR/logs
RESULTS=$BENCH_DIR/results-verify.tsv
CFG=$BENCH_DIR/strata.toml
PGBR_CONF=$BENCH_DIR/pgbackrest.conf

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }
as_pg() { runuser -u postgres -- "$@"; }
psql_q() { as_pg "$PGBIN/psql" -h "$PGSOCK" -p "$PGPORT" -U postgres -d "${2:-postgres}" -XAtq -v ON_ERROR_STOP=1 -c "$1"; }

[[ $(id -u) -eq 0 ]] || die "run as root (PostgreSQL and the tools run as postgres through runuser)"
[[ -x $PGBIN/initdb ]] || die "no PostgreSQL 15 in $PGBIN: run scripts/install-deps.sh"
command -v pgbackrest >/dev/null || die "pgbackrest is missing: run scripts/install-deps.sh"
dataset_setup

cleanup() {
    set +e
    [[ -f $PGDATA/postmaster.pid ]] && as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null 2>&1
}
trap cleanup EXIT

rm -rf "$BENCH_DIR/repo-strata" "$BENCH_DIR/repo-pgbr"
mkdir -p "$BENCH_DIR" "$PGSOCK" "$LOGDIR" "$BENCH_DIR/repo-strata" "$BENCH_DIR/repo-pgbr"
chown postgres: "$BENCH_DIR" "$PGSOCK" "$LOGDIR" "$BENCH_DIR/repo-strata" "$BENCH_DIR/repo-pgbr"
chmod o+x "$BENCH_DIR"

if [[ -z $STRATA_BIN ]]; then
    log "building release binaries"
    (cd "$REPO_ROOT" && cargo build --release --bins -q)
    STRATA_BIN=${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release
fi
[[ -x $STRATA_BIN/strata ]] || die "$STRATA_BIN/strata is missing (STRATA_BIN is the directory of the binaries)"
BIN=$BENCH_DIR/bin
mkdir -p "$BIN"
cp "$STRATA_BIN"/strata "$BIN"/
chmod 0755 "$BIN" "$BIN"/strata

cat >"$CFG" <<EOF
bus = "local"
[stanza.$STANZA]
pg_data = "$PGDATA"
pg_conn = "host=$PGSOCK port=$PGPORT user=postgres dbname=postgres"
[[repo]]
name = "local"
type = "posix"
path = "$BENCH_DIR/repo-strata"
EOF
cat >"$PGBR_CONF" <<EOF
[global]
repo1-path=$BENCH_DIR/repo-pgbr
repo1-retention-full=2
compress-type=zst
compress-level=1
process-max=$PROCESS_MAX
log-level-console=warn
log-path=$LOGDIR
lock-path=$BENCH_DIR/run
start-fast=y
archive-check=n
[$STANZA]
pg1-path=$PGDATA
pg1-socket-path=$PGSOCK
pg1-port=$PGPORT
EOF
chmod 0644 "$CFG" "$PGBR_CONF"

if dataset_reusable; then
    log "reusing the cluster in $PGDATA ($DATASET_DESC)"
else
    rm -rf "$PGDATA"
    as_pg "$PGBIN/initdb" -k -D "$PGDATA" -U postgres >"$LOGDIR/initdb.log"
    dataset_forget
fi
cat >"$BIN/archive-push.sh" <<EOF
#!/bin/sh
$BIN/strata --config $CFG --stanza $STANZA archive-push "\$1" && pgbackrest --config=$PGBR_CONF --stanza=$STANZA archive-push "\$1"
EOF
chmod 0755 "$BIN/archive-push.sh"
cat >"$PGDATA/bench.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$PGSOCK'
port = $PGPORT
shared_buffers = 512MB
max_wal_size = 4GB
archive_mode = on
archive_command = '/bin/true'
EOF
grep -q "include 'bench.conf'" "$PGDATA/postgresql.conf" || echo "include 'bench.conf'" >>"$PGDATA/postgresql.conf"
chown postgres: "$PGDATA/bench.conf"
as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$LOGDIR/postgres.log" -w start >/dev/null
if ! dataset_reusable; then
    log "loading $DATASET_DESC"
    [[ $(psql_q "SELECT count(*) FROM pg_database WHERE datname = 'bench'") == 1 ]] || psql_q "CREATE DATABASE bench"
    dataset_load
    dataset_mark
fi
# Archiving starts after the load, so that both archives hold the same WAL: what the backups need. (pgBackRest
# verifies every WAL file in its archive; Strata those from the oldest backup's start.)
psql_q "ALTER SYSTEM SET archive_command = '$BIN/archive-push.sh %p'" >/dev/null
psql_q "SELECT pg_reload_conf()" >/dev/null
psql_q "SELECT pg_switch_wal()" >/dev/null
as_pg "$BIN/strata" --config "$CFG" --stanza "$STANZA" stanza-create >/dev/null
as_pg pgbackrest --config="$PGBR_CONF" --stanza="$STANZA" stanza-create >/dev/null
DB_BYTES=$(psql_q "SELECT sum(pg_database_size(oid))::bigint FROM pg_database")
log "database: $((DB_BYTES / 1000000)) MB; full backups"
as_pg "$BIN/strata" --config "$CFG" --stanza "$STANZA" backup --type full >/dev/null
as_pg pgbackrest --config="$PGBR_CONF" --stanza="$STANZA" backup --type=full >/dev/null
psql_q "SELECT pg_switch_wal()" >/dev/null
sleep 2
STRATA_REPO=$(du -sb "$BENCH_DIR/repo-strata" | cut -f1)
PGBR_REPO=$(du -sb "$BENCH_DIR/repo-pgbr" | cut -f1)
log "repositories: strata $((STRATA_REPO / 1000000)) MB, pgbackrest $((PGBR_REPO / 1000000)) MB"

RUN_ID=$(date -u +%Y%m%dT%H%M%SZ)
[[ -f $RESULTS ]] || printf 'run\ttool\trep\tseconds\tdb_bytes\trepo_bytes\n' >"$RESULTS"
timed() { local t0 t1; t0=$(date +%s%N); "$@" >"$LOGDIR/last.out" 2>&1 || { cat "$LOGDIR/last.out" >&2; die "$* failed"; }; t1=$(date +%s%N); awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'; }
for rep in $(seq 1 "$REPS"); do
    sync; sleep "$PAUSE"
    secs=$(timed as_pg pgbackrest --config="$PGBR_CONF" --stanza="$STANZA" verify)
    printf '%s\tpgbackrest\t%s\t%s\t%s\t%s\n' "$RUN_ID" "$rep" "$secs" "$DB_BYTES" "$PGBR_REPO" >>"$RESULTS"
    log "rep $rep: pgbackrest verify $secs s"
    sync; sleep "$PAUSE"
    secs=$(timed as_pg "$BIN/strata" --config "$CFG" --stanza "$STANZA" verify)
    printf '%s\tstrata\t%s\t%s\t%s\t%s\n' "$RUN_ID" "$rep" "$secs" "$DB_BYTES" "$STRATA_REPO" >>"$RESULTS"
    log "rep $rep: strata verify $secs s ($(tail -1 "$LOGDIR/last.out"))"
done

python3 - "$RESULTS" "$RUN_ID" <<'EOF'
import csv, statistics, sys
rows = [r for r in csv.DictReader(open(sys.argv[1]), delimiter="\t") if r["run"] == sys.argv[2]]
med = {t: statistics.median(float(r["seconds"]) for r in rows if r["tool"] == t) for t in ("strata", "pgbackrest")}
repo = {r["tool"]: int(r["repo_bytes"]) for r in rows}
db = int(rows[0]["db_bytes"])
print(f"database {db / 1e6:.0f} MB, run {sys.argv[2]}, medians of {len(rows) // 2} reps")
for t in ("pgbackrest", "strata"):
    print(f"{t:<11} verify {med[t]:6.2f} s  ({db / 1e6 / med[t]:5.0f} MB/s of database, repository {repo[t] / 1e6:.0f} MB)")
print(f"strata / pgbackrest: {med['strata'] / med['pgbackrest']:.2f}x the time")
EOF
