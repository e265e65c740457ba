#!/usr/bin/env bash
# bench-incr.sh: incremental backups after a fixed pgbench run, Strata against pgBackRest, on one database, in
# one run.
#
#   sudo loadtest/bench-incr.sh                                   # pgbench scale 100, 2 reps, 10 s of pgbench
#   sudo DATASET=oltp loadtest/bench-incr.sh                      # the ~1.5 GB OLTP mix, 10 s of oltp-churn.sql
#   sudo SCALE=10 REPS=1 loadtest/bench-incr.sh                   # quick check (~1 min)
#   sudo REUSE=1 CHURN_SECS=30 loadtest/bench-incr.sh             # keep the loaded cluster, more changes
#   sudo REUSE=1 STRATA_BUS=nats:// loadtest/bench-incr.sh        # Strata's services over a local nats-server
#
# Runs as root; PostgreSQL and both tools run as the `postgres` OS user. It shares bench-full.sh's $BENCH_DIR
# layout, cluster and configs, and sources loadtest/lib.sh (dataset and NATS helpers). Needs PostgreSQL 15
# (/usr/lib/postgresql/15/bin, with the pageinspect extension for the changed-page count), pgbackrest,
# /usr/bin/time, jq and, for STRATA_BUS=nats://..., nats-server 2.10+ at /opt/strata-tools/bin/nats-server.
#
# What it does (loadtest/README.md, section "Incremental backups", has the details):
#   1. Creates a PostgreSQL 15 cluster (initdb -k) in $BENCH_DIR/pgdata and loads the dataset (pgbench -i -s
#      $SCALE, or loadtest/oltp.sql), or reuses it with REUSE=1 when it holds the same dataset. archive_command
#      pushes every segment to both tools.
#   2. For each rep: wipes both repositories, stanza-create both; a timed full backup with each tool; ONE
#      `pgbench -n -T $CHURN_SECS -c 2 -j 2` (pgbench: the built-in TPC-B; oltp: loadtest/oltp-churn.sql; both
#      tools see the same changes); CHECKPOINT; a timed incremental with each tool (the order of the tools
#      alternates between reps); then counts the pages whose LSN is newer than the WAL position just before
#      pgbench (pageinspect), i.e. the pages the churn changed.
#   3. Appends one row per measurement to $BENCH_DIR/results-incr.tsv and prints a table of medians, the
#      Strata/pgBackRest ratios, the issue's target for the incremental's stored bytes (PASS/FAIL), and each
#      incremental's stored bytes relative to the main table's size (summary-incr-<run_id>.txt and .kv).
# Everything it starts is stopped at exit by pid (PostgreSQL by the pid in postmaster.pid), never by name.
#
# Env knobs:
#   DATASET        pgbench (default) or oltp
#   BENCH_DIR      work directory (default /tmp/strata-loadtest, oltp /tmp/strata-loadtest-oltp; shared with
#                  bench-full.sh)
#   SCALE          pgbench scale (default 100, about 1.6 GB)
#   OLTP_MB        DATASET=oltp: database size in MB to generate (default 1500)
#   PGPORT         PostgreSQL port; it listens on a Unix socket in $BENCH_DIR/run only (default 55433; oltp 55435)
#   REPS           reps; each is a full and an incremental per tool (default 2)
#   REUSE          1: keep the existing cluster in $BENCH_DIR when it holds the same dataset (default 0)
#   CHURN_SECS     pgbench -T seconds between the full and the incremental backups (default 10)
#   STRATA_BIN     directory holding the Strata binaries (default: $CARGO_TARGET_DIR/release or target/release
#                  of this repository; `cargo build --release --bins` runs only when that directory has no strata)
#   STRATA_BUS     "local" (default) or a nats:// URL (host and port ignored): nats-server on a free loopback port
#                  plus strata-collector, strata-sealer and strata-uploader, as in bench-full.sh
#   STRATA_PIPELINE  pipeline overrides, "key=value key=value", as in bench-full.sh
#   PGBR_COMPRESS  pgBackRest compress-type (default zst)
#   PGBR_LEVEL     pgBackRest compress-level (default 1)
#   PROCESS_MAX    pgBackRest process-max (default 2)
#   PAUSE          seconds to wait after `sync` before each measurement (default 3)
#   SHARED_BUFFERS PostgreSQL shared_buffers (default 512MB)
#   KEEP_REPOS     1: leave the last rep's repositories in place at exit (default 1)
#   KV_OUT         also copy the summary's key=value lines to this file (bench-all.sh uses it)
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO_ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=lib.sh
source "$HERE/lib.sh"

dataset_defaults # DATASET, OLTP_MB, and the BENCH_DIR and PGPORT defaults of the dataset
SCALE=${SCALE:-100}
REPS=${REPS:-2}
REUSE=${REUSE:-0}
CHURN_SECS=${CHURN_SECS:-10}
STRATA_BIN=${STRATA_BIN:-}
BUS_KNOB=${STRATA_BUS:-local}
PIPELINE_KNOB=${STRATA_PIPELINE:-}
PGBR_COMPRESS=${PGBR_COMPRESS:-zst}
PGBR_LEVEL=${PGBR_LEVEL:-1}
PROCESS_MAX=${PROCESS_MAX:-2}
PAUSE=${PAUSE:-3}
SHARED_BUFFERS=${SHARED_BUFFERS:-512MB}
KEEP_REPOS=${KEEP_REPOS:-1}
KV_OUT=${KV_OUT:-}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
NATS_SERVER=${NATS_SERVER:-/opt/strata-tools/bin/nats-server}

STANZA=bench
PGDATA=$BENCH_DIR/pgdata
PGSOCK=$BENCH_DIR/run
BIN=$BENCH_DIR/bin
LOGDIR=$BENCH_DIR/logs
TMPD=$BENCH_DIR/tmp
CFG=$BENCH_DIR/strata.toml
SREPO=$BENCH_DIR/strata-repo
BR=$BENCH_DIR/pgbackrest
BRCONF=$BR/pgbackrest.conf
BRREPO=$BR/repo
NATSDIR=$BENCH_DIR/nats
RESULTS=$BENCH_DIR/results-incr.tsv
RUN_ID=$(date -u +%Y%m%dT%H%M%SZ)
CLK_TCK=$(getconf CLK_TCK)

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }
as_pg() { runuser -u postgres -- "$@"; }
psql_q() { as_pg "$PGBIN/psql" -h "$PGSOCK" -p "$PGPORT" -U postgres -d "${2:-postgres}" -XAtq -v ON_ERROR_STOP=1 -c "$1"; }
du_bytes() { du -sb "$1" 2>/dev/null | awk '{print $1 + 0}'; }
wipe_dir() { find "$1" -mindepth 1 -delete; }
db_bytes() { psql_q "SELECT sum(pg_database_size(oid))::bigint FROM pg_database"; }

# ------------------------------------------------------------------------------------------------ checks
[[ $(id -u) -eq 0 ]] || die "run as root (PostgreSQL and the tools run as postgres through runuser)"
id postgres >/dev/null 2>&1 || die "no postgres OS user: install postgresql-15 (scripts/install-deps.sh)"
[[ -x $PGBIN/initdb ]] || die "no PostgreSQL 15 in $PGBIN: run scripts/install-deps.sh"
command -v pgbackrest >/dev/null || die "pgbackrest is not installed: run scripts/install-deps.sh"
command -v jq >/dev/null || die "jq is not installed (it reads both tools' info --output json)"
[[ -x /usr/bin/time ]] || die "/usr/bin/time is missing (Debian package 'time'): run scripts/install-deps.sh"
for n in REPS SCALE PGPORT PROCESS_MAX CHURN_SECS; do
    [[ ${!n} =~ ^[0-9]+$ ]] || die "$n must be a number, not '${!n}'"
done
((REPS >= 1)) || die "REPS must be at least 1"
((CHURN_SECS >= 1)) || die "CHURN_SECS must be at least 1"
case $BUS_KNOB in
local) NATS_MODE=0 ;;
nats://*) NATS_MODE=1
    [[ -x $NATS_SERVER ]] || die "STRATA_BUS=$BUS_KNOB needs nats-server 2.10+ at $NATS_SERVER (scripts/install-deps.sh)" ;;
*) die "STRATA_BUS must be 'local' or a nats:// URL, not '$BUS_KNOB'" ;;
esac
dataset_setup

# ------------------------------------------------------------------------------------------------ strata config
# As in bench-full.sh: every pipeline key with its default, then STRATA_PIPELINE__<KEY> from the environment, then
# the STRATA_PIPELINE knob; the effective values go into the TOML and into every Strata process's environment.
PIPELINE_KEYS=(chunk_size compress_level wal_compress_level read_workers sealer_workers uploader_workers
    pack_size in_flight_bytes stall_timeout_secs)
declare -A PIPE=([chunk_size]=1048576 [compress_level]=1 [wal_compress_level]=3 [read_workers]=2
    [sealer_workers]=2 [uploader_workers]=2 [pack_size]=67108864 [in_flight_bytes]=67108864
    [stall_timeout_secs]=120)
PIPE_OVERRIDES=()
for k in "${PIPELINE_KEYS[@]}"; do
    v=STRATA_PIPELINE__${k^^}
    if [[ -n ${!v:-} ]]; then PIPE[$k]=${!v}; PIPE_OVERRIDES+=("$k=${!v}"); fi
done
for kv in ${PIPELINE_KNOB//,/ }; do
    k=${kv%%=*} val=${kv#*=}
    k=${k,,}; k=${k#strata_pipeline__}
    [[ $kv == *=* && -v "PIPE[$k]" ]] || die "STRATA_PIPELINE: '$kv' is not key=value with a key among: ${PIPELINE_KEYS[*]}"
    [[ $val =~ ^[0-9]+$ ]] || die "STRATA_PIPELINE: $k must be a number, not '$val'"
    PIPE[$k]=$val; PIPE_OVERRIDES+=("$k=$val")
done
for k in "${PIPELINE_KEYS[@]}"; do
    [[ ${PIPE[$k]} =~ ^[0-9]+$ ]] || die "pipeline.$k must be a number, not '${PIPE[$k]}'"
    export "STRATA_PIPELINE__${k^^}=${PIPE[$k]}"
done
unset STRATA_PIPELINE STRATA_CONFIG STRATA_STANZA
PIPE_DESC="${PIPE_OVERRIDES[*]:-defaults}"

# ------------------------------------------------------------------------------------------------ cleanup
CMD_PID="" # the measured command (or pgbench) while it runs
SERVICE_PIDS=() # NATS mode: the Strata services, in start order
declare -A SERVICE_OF=()
NATS_PID=""

pg_pid() { if [[ -f $1/postmaster.pid ]]; then head -1 "$1/postmaster.pid"; fi; }
pg_running() { local p; p=$(pg_pid "$PGDATA"); [[ -n $p ]] && kill -0 "$p" 2>/dev/null; }
pg_start() {
    pg_running && return 0
    as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$LOGDIR/postgresql.log" -w -t 300 start >/dev/null ||
        { tail -20 "$LOGDIR/postgresql.log" >&2; die "PostgreSQL did not start"; }
    log "PostgreSQL started (pid $(pg_pid "$PGDATA"), socket $PGSOCK/.s.PGSQL.$PGPORT)"
}
# By the pid in postmaster.pid, never by name: SIGINT (fast shutdown), then SIGQUIT after 60 s.
pg_stop() {
    local pid i
    pid=$(pg_pid "$PGDATA")
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -INT "$pid" 2>/dev/null || true
    for ((i = 0; i < 600; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        log "PostgreSQL pid $pid still running after 60 s: SIGQUIT"
        kill -QUIT "$pid" 2>/dev/null || true
        sleep 2
    fi
    log "PostgreSQL stopped (pid $pid)"
}

# stop_pid PID NAME: SIGTERM, wait up to 30 s, then SIGKILL. Only pids this script started.
stop_pid() {
    local pid=$1 name=$2 i
    kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < 300; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        log "$name (pid $pid) did not stop in 30 s: SIGKILL"
        kill -KILL "$pid" 2>/dev/null || true
    fi
    wait "$pid" 2>/dev/null || true
}

cleanup() {
    local rc=$?
    set +e
    [[ -n $CMD_PID ]] && stop_pid "$CMD_PID" "measured command"
    pg_stop
    services_stop
    [[ -n $NATS_PID ]] && stop_pid "$NATS_PID" nats-server
    if [[ $KEEP_REPOS != 1 ]]; then rm -rf "$SREPO" "$BRREPO"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------------------------------------ directories
mkdir -p "$BENCH_DIR"
chmod 755 "$BENCH_DIR"
mkdir -p "$PGSOCK" "$LOGDIR" "$TMPD" "$BR"/{log,lock,spool} "$BIN"
chown postgres:postgres "$BENCH_DIR" "$PGSOCK" "$LOGDIR" "$TMPD"
chown -R postgres:postgres "$BR"
chmod 755 "$BIN"
cd "$BENCH_DIR" # the postgres user cannot enter root's working directory

# A stale cluster of an interrupted run (ours: it lives in $BENCH_DIR) is stopped by its pid.
pg_stop

# ------------------------------------------------------------------------------------------------ binaries
# Existing binaries are used as they are: builds belong to whoever works on the tree. Only when there is no
# strata at all is one built.
if [[ -z $STRATA_BIN ]]; then
    STRATA_BIN=${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release
    if [[ ! -x $STRATA_BIN/strata ]]; then
        log "no $STRATA_BIN/strata: cargo build --release --bins in $REPO_ROOT"
        (cd "$REPO_ROOT" && cargo build --release --bins) >"$LOGDIR/cargo-build.log" 2>&1 ||
            { tail -30 "$LOGDIR/cargo-build.log" >&2; die "cargo build failed (log: $LOGDIR/cargo-build.log)"; }
    fi
fi
[[ -x $STRATA_BIN/strata ]] || die "$STRATA_BIN/strata is missing (set STRATA_BIN to the directory of the binaries)"
for b in strata strata-collector strata-sealer strata-uploader; do
    if [[ ! -x $STRATA_BIN/$b ]]; then
        ((NATS_MODE)) && die "$STRATA_BIN/$b is missing (NATS mode runs the services)"
        continue # single-host bus: only strata runs; the rest is copied if present
    fi
    # A copy the postgres user can execute, and that a concurrent rebuild cannot change under the run.
    install -m 0755 "$STRATA_BIN/$b" "$BIN/$b.new" && mv -f "$BIN/$b.new" "$BIN/$b"
done
"$BIN/strata" backup --help 2>/dev/null | grep -q 'incr' ||
    die "$STRATA_BIN/strata (built $(date -u -r "$STRATA_BIN/strata" +%FT%TZ)) has no incremental backups (backup --type incr): use a newer build"
STRATA_VERSION=$("$BIN/strata" --version 2>/dev/null || echo "strata ?")
PGBR_VERSION=$(pgbackrest version)
log "$STRATA_VERSION (from $STRATA_BIN, built $(date -u -r "$STRATA_BIN/strata" +%FT%TZ)), $PGBR_VERSION, pipeline: $PIPE_DESC"

# ------------------------------------------------------------------------------------------------ cluster
write_pg_conf() { # write_pg_conf ARCHIVE_COMMAND: the settings this script owns, included by postgresql.conf
    cat >"$PGDATA/loadtest.conf" <<EOF
# Written by loadtest/bench-incr.sh at every run (bench-full.sh writes the same); included from postgresql.conf.
port = $PGPORT
listen_addresses = ''
unix_socket_directories = '$PGSOCK'
shared_buffers = $SHARED_BUFFERS
max_wal_size = 4GB
min_wal_size = 256MB
checkpoint_timeout = 15min
wal_level = replica
archive_mode = on
archive_command = '${1//\'/\'\'}'
max_wal_senders = 10
log_checkpoints = on
log_line_prefix = '%m [%p] '
EOF
    chown postgres:postgres "$PGDATA/loadtest.conf"
}

if [[ $REUSE == 1 ]] && dataset_reusable; then
    log "REUSE=1: reusing the $DATASET_DESC cluster in $PGDATA"
else
    [[ $REUSE == 1 ]] && log "REUSE=1 but no $DATASET_DESC cluster in $PGDATA: creating one"
    rm -rf "$PGDATA"
    dataset_forget
    log "initdb -k $PGDATA"
    as_pg "$PGBIN/initdb" -D "$PGDATA" -k -U postgres --auth=trust -E UTF8 --locale=C >"$LOGDIR/initdb.log"
    printf "\ninclude_if_exists = 'loadtest.conf'\n" >>"$PGDATA/postgresql.conf"
    # While loading, WAL is thrown away: no repository exists yet, and the load's WAL is not what is measured.
    write_pg_conf /bin/true
    pg_start
    psql_q "CREATE DATABASE bench"
    dataset_load
    psql_q "CHECKPOINT"
    pg_stop
    dataset_mark
fi

# ------------------------------------------------------------------------------------------------ bus
bus_start # NATS mode: nats-server on a free loopback port (lib.sh); sets BUS_URL and exports STRATA_BUS

# ------------------------------------------------------------------------------------------------ configs
cat >"$CFG" <<EOF
# Written by loadtest/bench-incr.sh.
bus = "$BUS_URL"

[pipeline]
$(for k in "${PIPELINE_KEYS[@]}"; do echo "$k = ${PIPE[$k]}"; done)

[stanza.$STANZA]
pg_data = "$PGDATA"
pg_conn = "host=$PGSOCK port=$PGPORT user=postgres dbname=postgres"

[[repo]]
name = "local"
type = "posix"
path = "$SREPO"
EOF
chmod 644 "$CFG"

cat >"$BRCONF" <<EOF
[global]
repo1-path=$BRREPO
repo1-retention-full=99
log-path=$BR/log
lock-path=$BR/lock
spool-path=$BR/spool
log-level-console=warn
log-level-file=info
start-fast=y
compress-type=$PGBR_COMPRESS
compress-level=$PGBR_LEVEL
process-max=$PROCESS_MAX
archive-async=n

[$STANZA]
pg1-path=$PGDATA
pg1-port=$PGPORT
pg1-socket-path=$PGSOCK
EOF
chmod 644 "$BRCONF"

# archive_command: the segment must reach both repositories (see bench-full.sh; same wrapper, same name).
cat >"$BIN/archive-push-strata-pgbackrest.sh" <<EOF
#!/bin/sh
# archive_command of the load test (written by loadtest/bench-incr.sh): strata, then pgbackrest; both must succeed.
p=\$1
t0=\$(date +%s.%N)
"$BIN/strata" --config "$CFG" --stanza $STANZA archive-push "\$p" || { echo "archive-push-strata-pgbackrest: strata archive-push \$p failed" >&2; exit 1; }
t1=\$(date +%s.%N)
pgbackrest --config="$BRCONF" --stanza=$STANZA archive-push "\$p" || { echo "archive-push-strata-pgbackrest: pgbackrest archive-push \$p failed" >&2; exit 1; }
t2=\$(date +%s.%N)
awk -v f="\${p##*/}" -v a="\$t0" -v b="\$t1" -v c="\$t2" 'BEGIN { printf "%s strata_s=%.3f pgbackrest_s=%.3f\n", f, b - a, c - b }' >>"$LOGDIR/archive-push.log"
exit 0
EOF
chmod 755 "$BIN/archive-push-strata-pgbackrest.sh"

mkdir -p "$SREPO" "$BRREPO"
wipe_dir "$SREPO"
wipe_dir "$BRREPO"
chown postgres:postgres "$SREPO" "$BRREPO"

write_pg_conf "$BIN/archive-push-strata-pgbackrest.sh %p"
pg_start
[[ $(psql_q "SHOW archive_command") == "$BIN/archive-push-strata-pgbackrest.sh %p" ]] || die "archive_command was not applied"

# ------------------------------------------------------------------------------------------------ measuring
# Before a repository is wiped, and after each backup (so its last segment is in both repositories before the
# next measurement starts), the archiver must be idle.
wait_archive_idle() {
    local i
    for ((i = 0; i < 1200; i++)); do
        [[ -z $(find "$PGDATA/pg_wal/archive_status" -name '*.ready' -print -quit) ]] && return 0
        sleep 0.1
    done
    log "warning: WAL still waiting for archive_command after 120 s (see $LOGDIR/postgresql.log)"
}

cpu_busy() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8; exit}' /proc/stat; }

# run_timed NAME CMD...: CMD as postgres under /usr/bin/time -v, after sync and a pause.
# Sets RC WALL USER_S SYS_S MAXRSS BUSY (CPU seconds the whole VM spent busy meanwhile).
run_timed() {
    local name=$1; shift
    local tf=$TMPD/time.$name t0 t1 b0 b1
    rm -f "$tf"
    sync
    sleep "$PAUSE"
    b0=$(cpu_busy); t0=$(date +%s.%N)
    as_pg /usr/bin/time -v -o "$tf" "$@" >"$LOGDIR/$name.log" 2>&1 &
    CMD_PID=$!
    set +e
    wait "$CMD_PID"
    RC=$?
    set -e
    t1=$(date +%s.%N); b1=$(cpu_busy)
    CMD_PID=""
    WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.3f", b - a}')
    BUSY=$(awk -v a="$b0" -v b="$b1" -v hz="$CLK_TCK" 'BEGIN{printf "%.2f", (b - a) / hz}')
    USER_S=$(awk -F': ' '/User time/{print $2}' "$tf" 2>/dev/null || true)
    SYS_S=$(awk -F': ' '/System time/{print $2}' "$tf" 2>/dev/null || true)
    MAXRSS=$(awk -F': ' '/Maximum resident/{print $2}' "$tf" 2>/dev/null || true)
    USER_S=${USER_S:-0} SYS_S=${SYS_S:-0} MAXRSS=${MAXRSS:-0}
    if ((RC != 0)); then
        log "FAILED (rc=$RC): $* -- log $LOGDIR/$name.log"
        tail -n 5 "$LOGDIR/$name.log" >&2 || true
        FAILURES=$((FAILURES + 1))
    fi
}

HEADER='run_id	ts	dataset	bus	tool	op	rep	position	rc	wall_s	user_s	sys_s	vm_busy_cpu_s	maxrss_kb	added_repo_bytes	stored_bytes	copied_bytes	read_bytes	database_bytes	main_table	main_bytes	churn_secs	pgbench_xacts	main_pages	main_changed_pages	bench_pages	bench_changed_pages	label	note'
if [[ -f $RESULTS && $(head -1 "$RESULTS") != "$HEADER" ]]; then
    mv "$RESULTS" "$RESULTS.old-$RUN_ID"
    log "results-incr.tsv had other columns: moved to $RESULTS.old-$RUN_ID"
fi
[[ -f $RESULTS ]] || echo "$HEADER" >"$RESULTS"

strata() { as_pg "$BIN/strata" --config "$CFG" --stanza "$STANZA" "$@"; }
pgbr() { as_pg pgbackrest --config="$BRCONF" --stanza="$STANZA" "$@"; }

# measure TOOL OP REP POSITION: one timed backup (OP full or incr) with TOOL. The repository is measured right
# before the command and again once the archiver is idle after it, so "added" is the backup plus the WAL segment
# (or two) its stop switched to, which the wrapper pushed to both repositories. Adds a row (without the rep's
# pgbench figures, which are known only later) to ROWS.
measure() {
    local tool=$1 op=$2 rep=$3 pos=$4 before after name=$1-$2-$3 label="" type="" ref="" stored="" copied="" read="" dbb=""
    local reposize="" note="" j svc_kb=0
    wait_archive_idle
    if [[ $tool == strata ]]; then
        before=$(du_bytes "$SREPO")
        services_reset_hwm
        run_timed "$name" "$BIN/strata" --config "$CFG" --stanza "$STANZA" backup --type "$op"
        ((NATS_MODE)) && svc_kb=$(services_hwm_kb)
        wait_archive_idle
        after=$(du_bytes "$SREPO")
        note="said: $(grep -m1 ' committed' "$LOGDIR/$name.log" || true)"
        if ((NATS_MODE)); then # the command plus the services' peaks, as bench-full.sh's peak_rss_kb
            note="cmd_maxrss_kb=$MAXRSS services_hwm_kb=$svc_kb nats_server_hwm_kb=$(hwm_kb "$NATS_PID") $note"
            MAXRSS=$((MAXRSS + svc_kb))
        fi
        if strata info --output json >"$LOGDIR/$name-info.json" 2>"$LOGDIR/$name-info.err"; then
            j=$(jq -r '.[0].backups[-1] | [.label, .type, (.reference // "-"), .stored_bytes, .sent_bytes, .read_bytes, .database_bytes] | @tsv' "$LOGDIR/$name-info.json")
            IFS=$'\t' read -r label type ref stored copied read dbb <<<"$j"
            note="type=$type reference=$ref $note"
        else
            log "strata info failed: $(cat "$LOGDIR/$name-info.err")"
        fi
    else
        before=$(du_bytes "$BRREPO")
        run_timed "$name" pgbackrest --config="$BRCONF" --stanza="$STANZA" backup --type="$op"
        wait_archive_idle
        after=$(du_bytes "$BRREPO")
        if pgbr info --output=json >"$LOGDIR/$name-info.json" 2>"$LOGDIR/$name-info.err"; then
            j=$(jq -r '.[0].backup[-1] | [.label, .type, (.prior // "-"), .info.repository.delta, .info.delta, .info.size, .info.repository.size] | @tsv' "$LOGDIR/$name-info.json")
            IFS=$'\t' read -r label type ref stored copied dbb reposize <<<"$j"
            note="type=$type reference=$ref info.size=$dbb info.delta=$copied repository.size=$reposize repository.delta=$stored"
            note+=" backup_set_du=$(du_bytes "$BRREPO/backup/$STANZA/$label")"
        else
            log "pgbackrest info failed: $(cat "$LOGDIR/$name-info.err")"
        fi
    fi
    if ((RC == 0)) && [[ ${type:-} != "$op" ]]; then
        log "$tool $op #$rep: the newest backup in the repository is '${label:-?}' of type '${type:-?}', not $op"
        RC=98; FAILURES=$((FAILURES + 1))
    fi
    ROWS+=("$tool	$op	$rep	$pos	$RC	$WALL	$USER_S	$SYS_S	$BUSY	$MAXRSS	$((after - before))	$stored	$copied	$read	$dbb")
    LABELS+=("$label")
    NOTES+=("$note")
    log "$tool $op #$rep: rc=$RC ${WALL}s cpu=${USER_S}+${SYS_S}s vm_busy=${BUSY}s rss=${MAXRSS}kB added=$((after - before)) stored=$stored label=$label"
}

# changed_pages LSN: "main_pages main_changed bench_pages bench_changed": pages of the main fork whose page LSN is
# past LSN, for $MAIN_TABLE (pgbench_accounts, or orders for the oltp dataset) and for every permanent relation of
# the bench database (catalogs included). Reads every page through pageinspect's get_raw_page (after the backups: it goes through
# shared_buffers and the page cache).
changed_pages() {
    ((HAVE_PAGEINSPECT)) || { echo "   "; return 0; }
    psql_q "
        WITH rels AS (
            SELECT c.oid::regclass::text AS rel, c.relname, pg_relation_size(c.oid) / 8192 AS pages
            FROM pg_class c
            WHERE c.relkind IN ('r', 'i', 't', 'm') AND c.relpersistence = 'p' AND pg_relation_size(c.oid) > 0
        ), counted AS (
            SELECT r.relname, max(r.pages) AS pages,
                   count(*) FILTER (WHERE (page_header(get_raw_page(r.rel, 'main', b))).lsn > '$1'::pg_lsn) AS changed
            FROM rels r, generate_series(0, r.pages - 1) b
            GROUP BY r.rel, r.relname
        )
        SELECT coalesce(sum(pages) FILTER (WHERE relname = '$MAIN_TABLE'), 0),
               coalesce(sum(changed) FILTER (WHERE relname = '$MAIN_TABLE'), 0),
               sum(pages), sum(changed)
        FROM counted" bench | tr '|' ' '
}

# ------------------------------------------------------------------------------------------------ run
FAILURES=0
services_restart # NATS mode: the services must run before the first WAL push
for tool in strata pgbackrest; do # stanzas exist before the first WAL push
    if [[ $tool == strata ]]; then strata stanza-create >"$LOGDIR/strata-stanza-create-0.log" 2>&1 ||
        { cat "$LOGDIR/strata-stanza-create-0.log" >&2; die "strata stanza-create failed"; }
    else pgbr stanza-create >"$LOGDIR/pgbackrest-stanza-create-0.log" 2>&1 ||
        { cat "$LOGDIR/pgbackrest-stanza-create-0.log" >&2; die "pgbackrest stanza-create failed"; }
    fi
done
strata check >"$LOGDIR/strata-check.log" 2>&1 || { cat "$LOGDIR/strata-check.log" >&2; die "strata check failed"; }
pgbr check >"$LOGDIR/pgbackrest-check.log" 2>&1 || { cat "$LOGDIR/pgbackrest-check.log" >&2; die "pgbackrest check failed"; }

# pageinspect is created once here, before any backup, so that its catalog rows are not a change an incremental
# sees.
HAVE_PAGEINSPECT=0
if psql_q "CREATE EXTENSION IF NOT EXISTS pageinspect" bench >/dev/null 2>"$LOGDIR/pageinspect.err"; then
    HAVE_PAGEINSPECT=1
else
    log "warning: no pageinspect ($(head -1 "$LOGDIR/pageinspect.err")): changed pages are not counted"
fi

PAYLOAD=$(db_bytes)
dataset_churn_args
log "run $RUN_ID: $DATASET_DESC, payload $PAYLOAD bytes, $REPS reps, bus $BUS_URL, pgbench -T $CHURN_SECS -c 2 -j 2 ${CHURN_ARGS[*]} between full and incr"
{
    echo "run_id=$RUN_ID"
    echo "script=bench-incr.sh"
    echo "dataset=$DATASET_ID"
    echo "scale=$SCALE churn_secs=$CHURN_SECS churn_args=${CHURN_ARGS[*]:-(TPC-B)}"
    echo "payload_bytes=$PAYLOAD"
    echo "data_dir_bytes=$(du_bytes "$PGDATA")"
    echo "strata=$STRATA_VERSION ($STRATA_BIN, built $(date -u -r "$STRATA_BIN/strata" +%FT%TZ))"
    echo "source=$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO_ROOT" status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo ' (uncommitted changes)')"
    echo "pgbackrest=$PGBR_VERSION compress=$PGBR_COMPRESS:$PGBR_LEVEL process-max=$PROCESS_MAX"
    echo "bus=$BUS_URL pipeline: $(for k in "${PIPELINE_KEYS[@]}"; do printf '%s=%s ' "$k" "${PIPE[$k]}"; done)"
    echo "cpus=$(nproc) mem_kb=$(awk '/MemTotal/{print $2}' /proc/meminfo)"
} >"$BENCH_DIR/run-incr-$RUN_ID.info"

for rep in $(seq 1 "$REPS"); do
    log "---- rep $rep/$REPS"
    # The tool that goes first alternates, so neither always backs up right after the CHECKPOINT.
    if ((rep % 2)); then order=(strata pgbackrest); else order=(pgbackrest strata); fi
    ROWS=() LABELS=() NOTES=()

    # Fresh repositories for both tools.
    wait_archive_idle
    services_stop # NATS mode: the uploader caches the chunk index; fresh services for a fresh repository
    wipe_dir "$SREPO"
    wipe_dir "$BRREPO"
    services_restart
    strata stanza-create >"$LOGDIR/strata-stanza-create-$rep.log" 2>&1 ||
        { cat "$LOGDIR/strata-stanza-create-$rep.log" >&2; die "strata stanza-create failed"; }
    pgbr stanza-create >"$LOGDIR/pgbackrest-stanza-create-$rep.log" 2>&1 ||
        { cat "$LOGDIR/pgbackrest-stanza-create-$rep.log" >&2; die "pgbackrest stanza-create failed"; }

    pos=0
    for tool in "${order[@]}"; do pos=$((pos + 1)); measure "$tool" full "$rep" "$pos"; done

    # The churn: one pgbench run that both incrementals cover.
    wait_archive_idle
    lsn0=$(psql_q "SELECT pg_current_wal_lsn()")
    main_bytes=$(psql_q "SELECT pg_relation_size('$MAIN_TABLE')" bench)
    log "pgbench -n -T $CHURN_SECS -c 2 -j 2 ${CHURN_ARGS[*]} bench (from LSN $lsn0)"
    as_pg "$PGBIN/pgbench" -n -T "$CHURN_SECS" -c 2 -j 2 "${CHURN_ARGS[@]}" -h "$PGSOCK" -p "$PGPORT" -U postgres bench \
        >"$LOGDIR/pgbench-churn-$rep.log" 2>&1 &
    CMD_PID=$!
    wait "$CMD_PID" || { CMD_PID=""; tail -20 "$LOGDIR/pgbench-churn-$rep.log" >&2; die "pgbench failed"; }
    CMD_PID=""
    xacts=$(awk -F': *' '/number of transactions actually processed/ {split($2, a, "/"); print a[1] + 0}' "$LOGDIR/pgbench-churn-$rep.log")
    tps=$(awk '/^tps = / {print $3; exit}' "$LOGDIR/pgbench-churn-$rep.log")
    psql_q "CHECKPOINT"
    log "pgbench: $xacts transactions (${tps:-?} tps); $MAIN_TABLE is $main_bytes bytes; CHECKPOINT done"

    pos=0
    for tool in "${order[@]}"; do pos=$((pos + 1)); measure "$tool" incr "$rep" "$pos"; done

    t0=$(date +%s.%N)
    read -r acc_pages acc_changed bench_pages bench_changed <<<"$(changed_pages "$lsn0")" || true
    ((HAVE_PAGEINSPECT)) && log "changed since LSN $lsn0: $MAIN_TABLE $acc_changed of $acc_pages pages, bench database $bench_changed of $bench_pages pages (counted in $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b - a}') s)"

    for i in "${!ROWS[@]}"; do
        IFS=$'\t' read -r tool op _ _ _ <<<"${ROWS[$i]}"
        if [[ $op == incr ]]; then
            facts="$MAIN_TABLE	$main_bytes	$CHURN_SECS	$xacts	${acc_pages:-}	${acc_changed:-}	${bench_pages:-}	${bench_changed:-}"
        else
            facts="$MAIN_TABLE	$main_bytes"$'\t\t\t\t\t\t'
        fi
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$RUN_ID" "$(date -u +%FT%TZ)" "${DATASET_ID// /:}" "$( ((NATS_MODE)) && echo nats || echo local)" "${ROWS[$i]}" "$facts" \
            "${LABELS[$i]}" "${NOTES[$i]}" >>"$RESULTS"
    done
done

# ------------------------------------------------------------------------------------------------ report
SUMMARY=$BENCH_DIR/summary-incr-$RUN_ID.txt
KV=$BENCH_DIR/summary-incr-$RUN_ID.kv
{
    echo "run_id=$RUN_ID"
    echo "script=bench-incr.sh"
    echo "dataset=$DATASET"
    echo "dataset_desc=$DATASET_DESC"
    echo "bus=$( ((NATS_MODE)) && echo nats || echo local)"
    echo "payload_bytes=$PAYLOAD"
    echo "reps=$REPS"
    echo "churn_secs=$CHURN_SECS"
    echo "main_table=$MAIN_TABLE"
    echo "pgbr=$PGBR_COMPRESS:$PGBR_LEVEL process-max=$PROCESS_MAX"
    echo "pipeline=$PIPE_DESC"
} >"$KV"
# Columns: 1 run_id 2 ts 3 dataset 4 bus 5 tool 6 op 7 rep 8 position 9 rc 10 wall_s 11 user_s 12 sys_s
# 13 vm_busy_cpu_s 14 maxrss_kb 15 added_repo_bytes 16 stored_bytes 17 copied_bytes 18 read_bytes 19 database_bytes
# 20 main_table 21 main_bytes 22 churn_secs 23 pgbench_xacts 24 main_pages 25 main_changed_pages 26 bench_pages
# 27 bench_changed_pages 28 label 29 note
awk -F'\t' -v run="$RUN_ID" -v kv="$KV" -v mode="$( ((NATS_MODE)) && echo nats || echo local)" '
    function median(list,    n, a, i, j, t) {
        n = split(list, a, " ")
        if (n == 0) return ""
        for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    function mib(b) { return sprintf("%.1f", b / 1048576) }
    NR == 1 || $1 != run { next }
    $9 != 0 { failed[$5 "|" $6]++; next }
    {
        k = $5 "|" $6
        if (!(k in n)) order[++nk] = k
        n[k]++; wall[k] = wall[k] " " $10; added[k] = added[k] " " $15; stored[k] = stored[k] " " $16
        if ($14 + 0 > rss[k]) rss[k] = $14 + 0
        mt = $20
        if ($6 == "incr") {
            acc[k] = acc[k] " " $21; xa[k] = xa[k] " " $23
            if ($25 != "") { ap[k] = ap[k] " " $24; ac[k] = ac[k] " " $25; bp[k] = bp[k] " " $26; bc[k] = bc[k] " " $27 }
            if (!($7 in rx)) reps[++nr] = $7
            rx[$7] = $23; rc[$7] = $25; rp[$7] = $24; racc[$7] = $21; rst[$7 "|" $5] = $16
        }
    }
    END {
        printf "%-10s %-4s %2s %9s %16s %16s %12s\n", "tool", "op", "n", "median_s", "added_repo_B", "stored_B", "peak_RSS_MiB"
        for (i = 1; i <= nk; i++) {
            k = order[i]; split(k, t, "|")
            mw[k] = median(wall[k]); ma[k] = median(added[k]); ms[k] = median(stored[k])
            printf "%-10s %-4s %2d %9.2f %16.0f %16.0f %12.1f\n", t[1], t[2], n[k], mw[k], ma[k], ms[k], rss[k] / 1024
            printf "%s_%s_s=%.3f\n%s_%s_stored_bytes=%.0f\n%s_%s_added_bytes=%.0f\n%s_%s_peak_rss_kb=%d\n", t[1], t[2], mw[k], t[1], t[2], ms[k], t[1], t[2], ma[k], t[1], t[2], rss[k] >> kv
        }
        for (k in failed) { printf "FAILED: %s x%d (not in the medians)\n", k, failed[k]; split(k, t, "|"); printf "%s_%s_failed=%d\n", t[1], t[2], failed[k] >> kv }
        print ""
        for (j = 1; j <= 2; j++) {
            op = j == 1 ? "full" : "incr"; s = "strata|" op; b = "pgbackrest|" op
            if ((s in mw) && (b in mw) && mw[b] > 0)
                printf "strata/pgbackrest %-4s  time %.2f   added repo bytes %.3f   stored bytes %.3f   peak RSS %.2f\n", op,
                    mw[s] / mw[b], (ma[b] > 0 ? ma[s] / ma[b] : 0), (ms[b] > 0 ? ms[s] / ms[b] : 0), (rss[b] > 0 ? rss[s] / rss[b] : 0)
        }
        s = "strata|incr"; b = "pgbackrest|incr"
        print ""
        printf "target (the issue states it for single-host mode; this run: bus %s)%s\n", mode, (mode == "local" ? "" : ": stored bytes do not depend on the bus")
        if ((s in ms) && (b in ms) && ms[b] > 0) {
            v = ms[s] / ms[b]; verdict = v <= 0.333 ? "PASS" : "FAIL"
            printf "  %-50s %7.3f  target <= 0.333  %s\n", "incr stored bytes strata / pgbackrest", v, verdict
            printf "ratio_incr_stored=%.3f\nratio_incr_stored_verdict=%s\n", v, verdict >> kv
        } else {
            printf "  %-50s %7s  target <= 0.333  -\n", "incr stored bytes strata / pgbackrest", "-"
            print "ratio_incr_stored=\nratio_incr_stored_verdict=-" >> kv
        }
        if ((s in mw) && (b in mw) && mw[b] > 0) printf "ratio_incr_time=%.3f\n", mw[s] / mw[b] >> kv
        k = (s in acc) ? s : b
        if (k in acc) {
            a = median(acc[k])
            print ""
            printf "%s: %.0f bytes (%s MiB); pgbench: median %.0f transactions per churn\n", mt, a, mib(a), median(xa[k])
            printf "main_table_bytes=%.0f\nchurn_xacts=%.0f\n", a, median(xa[k]) >> kv
            if (k in ac) {
                printf "pages changed by the churn (page LSN past the LSN before pgbench): %s %.0f of %.0f (%.1f%%), bench database %.0f of %.0f (%.1f%%, %s MiB)\n",
                    mt, median(ac[k]), median(ap[k]), 100 * median(ac[k]) / median(ap[k]), median(bc[k]), median(bp[k]), 100 * median(bc[k]) / median(bp[k]), mib(median(bc[k]) * 8192)
                printf "bench_changed_pages=%.0f\nbench_pages=%.0f\n", median(bc[k]), median(bp[k]) >> kv
            }
            if (s in ms) printf "strata     incr stored bytes     / %s size: %.4f (%.0f / %.0f)\n", mt, ms[s] / a, ms[s], a
            if (b in ms) printf "pgbackrest incr repository.delta / %s size: %.4f (%.0f / %.0f)\n", mt, ms[b] / a, ms[b], a
            for (i = 1; i <= nr; i++) {
                r = reps[i]
                printf "  rep %s: %s transactions, %s pages changed %s of %s; incr stored / %s size: strata %s, pgbackrest %s\n", r, rx[r], mt,
                    (rc[r] != "" ? rc[r] : "?"), (rp[r] != "" ? rp[r] : "?"), mt,
                    ((r "|strata") in rst ? sprintf("%.4f", rst[r "|strata"] / racc[r]) : "-"), ((r "|pgbackrest") in rst ? sprintf("%.4f", rst[r "|pgbackrest"] / racc[r]) : "-")
            }
        }
    }' "$RESULTS" >"$SUMMARY"
{
    echo
    echo "== run $RUN_ID: $DATASET_DESC, payload $PAYLOAD bytes ($(awk -v p="$PAYLOAD" 'BEGIN{printf "%.0f", p / 1e6}') MB), $REPS reps, bus $BUS_URL, pgbench -T $CHURN_SECS -c 2 -j 2 ${CHURN_ARGS[*]:-(built-in TPC-B)} between full and incr; Strata pipeline $PIPE_DESC; pgBackRest $PGBR_COMPRESS:$PGBR_LEVEL process-max $PROCESS_MAX"
    echo "   stored = Strata's stored_bytes / pgBackRest's repository.delta; added = repository du -sb after - before (WAL included)"
    cat "$SUMMARY"
    echo
    echo "rows: $RESULTS (run_id $RUN_ID); key=value: $KV; logs: $LOGDIR"
} | tee -a "$SUMMARY.tmp" >&2
mv "$SUMMARY.tmp" "$SUMMARY"
if [[ -n $KV_OUT ]]; then cp "$KV" "$KV_OUT"; fi
((FAILURES == 0)) || die "$FAILURES measurement(s) failed; see the logs above"
