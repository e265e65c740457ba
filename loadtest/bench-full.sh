#!/usr/bin/env bash
# bench-full.sh: full backup and restore, Strata against pgBackRest, plus pg_basebackup's fastest compressed mode
# (backup only), on one database, in one run.
#
#   sudo loadtest/bench-full.sh                                   # pgbench scale 100, 3 reps, single-host bus
#   sudo DATASET=oltp loadtest/bench-full.sh                      # the ~1.5 GB OLTP table mix (zstd ~2.4x)
#   sudo SCALE=10 REPS=1 loadtest/bench-full.sh                   # quick check (~1 min)
#   sudo DATASET=oltp OLTP_MB=150 REPS=1 loadtest/bench-full.sh   # quick check of the OLTP dataset
#   sudo REUSE=1 STRATA_BUS=nats:// loadtest/bench-full.sh        # services over a local nats-server
#   sudo REUSE=1 LIMITS=1 loadtest/bench-full.sh                  # also measure disk and zstd limits (limits.sh)
#
# Runs as root; PostgreSQL and the tools run as the `postgres` OS user. Needs PostgreSQL 15
# (/usr/lib/postgresql/15/bin), pgbackrest, /usr/bin/time, zstd (LIMITS=1) and, for STRATA_BUS=nats://...,
# nats-server 2.10+ at /opt/strata-tools/bin/nats-server (scripts/install-deps.sh installs all of them). Sources
# loadtest/lib.sh (dataset and NATS helpers), which reads loadtest/oltp.sql for DATASET=oltp.
#
# What it does (loadtest/README.md has the details and how to read the numbers):
#   1. Creates a PostgreSQL 15 cluster (initdb -k) in $BENCH_DIR/pgdata and loads the dataset (pgbench -i -s
#      $SCALE, or loadtest/oltp.sql for about $OLTP_MB MB), or reuses it with REUSE=1 when it holds the same
#      dataset. The cluster's archive_command is a wrapper that runs `strata archive-push` and then
#      `pgbackrest archive-push` (both must succeed), so either tool's backup finds its WAL in its own repository.
#   2. With LIMITS=1, runs loadtest/limits.sh: disk read MB/s (O_DIRECT) and zstd -1 MB/s on one core on the
#      largest table's heap file.
#   3. For each rep: wipes the Strata repository, stanza-create, timed `strata backup`; wipes the pgBackRest
#      repository, stanza-create, timed `pgbackrest backup --type=full`; timed `pg_basebackup -Ft
#      --compress=server-zstd:level=1,workers=2` into an empty directory (removed afterwards); timed restore of
#      Strata's and pgBackRest's backups into empty directories (removed afterwards). Every measurement is
#      preceded by `sync` and a $PAUSE s pause.
#   4. Appends one row per measurement to $BENCH_DIR/results.tsv and prints a table of medians, the ratios, and
#      the issue's targets with PASS/FAIL (summary-<run_id>.txt, and key=value lines in summary-<run_id>.kv).
# Everything it starts (PostgreSQL, nats-server, the Strata services, the top sampler) is stopped at exit by pid.
#
# Env knobs:
#   DATASET        pgbench (default) or oltp
#   BENCH_DIR      work directory (default /tmp/strata-loadtest; DATASET=oltp: /tmp/strata-loadtest-oltp)
#   SCALE          pgbench scale (default 100, about 1.6 GB)
#   OLTP_MB        DATASET=oltp: database size in MB (10^6 bytes) to generate (default 1500)
#   PGPORT         PostgreSQL port; it listens on a Unix socket in $BENCH_DIR/run only (default 55433; oltp 55435)
#   REPS           measurements per tool and operation (default 3)
#   REUSE          1: keep the existing cluster in $BENCH_DIR when it holds the same dataset (default 0)
#   STRATA_BIN     directory holding strata, strata-collector, strata-sealer, strata-uploader
#                  (default: `cargo build --release --bins` in this repository, then its target/release;
#                  CARGO_TARGET_DIR is honoured)
#   STRATA_BUS     "local" (default): every stage inside the strata command; a nats:// URL (the host and port
#                  are ignored): start nats-server on a free loopback port plus one strata-collector,
#                  strata-sealer and strata-uploader
#   STRATA_PIPELINE  pipeline overrides, "key=value key=value" (e.g. "sealer_workers=3 chunk_size=2097152");
#                  written into the config and exported as STRATA_PIPELINE__<KEY> to every Strata process.
#                  STRATA_PIPELINE__<KEY> variables already in the environment are passed through as well.
#   PGBR_COMPRESS  pgBackRest compress-type (default zst)
#   PGBR_LEVEL     pgBackRest compress-level (default 1)
#   PROCESS_MAX    pgBackRest process-max, for backup and restore (default 2)
#   PGBB           1: measure pg_basebackup too (default 1)
#   PGBB_COMPRESS  pg_basebackup --compress (default server-zstd:level=1,workers=2)
#   PGBB_WAL       pg_basebackup -X: stream (default) or fetch
#   LIMITS         1: run limits.sh before the reps and put its figures into the summary (default 0)
#   PAUSE          seconds to wait after `sync` before each measurement (default 3)
#   TOP_INTERVAL   seconds between top samples (0.5 s each) taken during every backup (default 1; 0 = off)
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
REPS=${REPS:-3}
REUSE=${REUSE:-0}
STRATA_BIN=${STRATA_BIN:-}
BUS_KNOB=${STRATA_BUS:-local}
PIPELINE_KNOB=${STRATA_PIPELINE:-}
PGBR_COMPRESS=${PGBR_COMPRESS:-zst}
PGBR_LEVEL=${PGBR_LEVEL:-1}
PROCESS_MAX=${PROCESS_MAX:-2}
PAUSE=${PAUSE:-3}
TOP_INTERVAL=${TOP_INTERVAL:-1}
SHARED_BUFFERS=${SHARED_BUFFERS:-512MB}
KEEP_REPOS=${KEEP_REPOS:-1}
PGBB=${PGBB:-1}
PGBB_COMPRESS=${PGBB_COMPRESS:-server-zstd:level=1,workers=2}
PGBB_WAL=${PGBB_WAL:-stream}
LIMITS=${LIMITS:-0}
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
RESTORE=$BENCH_DIR/restore
PGBB_OUT=$BENCH_DIR/basebackup
NATSDIR=$BENCH_DIR/nats
RESULTS=$BENCH_DIR/results.tsv
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
[[ -x /usr/bin/time ]] || die "/usr/bin/time is missing (Debian package 'time'): run scripts/install-deps.sh"
for n in REPS SCALE PGPORT PROCESS_MAX TOP_INTERVAL; do
    [[ ${!n} =~ ^[0-9]+$ ]] || die "$n must be a number, not '${!n}'"
done
((REPS >= 1)) || die "REPS must be at least 1"
case $PGBB_WAL in stream | fetch) ;; *) die "PGBB_WAL must be stream or fetch, not '$PGBB_WAL'" ;; esac
dataset_setup
case $BUS_KNOB in
local) NATS_MODE=0 ;;
nats://*) NATS_MODE=1
    [[ -x $NATS_SERVER ]] || die "STRATA_BUS=$BUS_KNOB needs nats-server 2.10+ at $NATS_SERVER (scripts/install-deps.sh)" ;;
*) die "STRATA_BUS must be 'local' or a nats:// URL, not '$BUS_KNOB'" ;;
esac

# ------------------------------------------------------------------------------------------------ strata config
# Every pipeline key with its default, then the overrides: STRATA_PIPELINE__<KEY> from the environment, then the
# STRATA_PIPELINE knob. The effective values go into the TOML and into the environment of every Strata process as
# STRATA_PIPELINE__<KEY> (the binaries read those themselves), so both always say the same.
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
# STRATA_PIPELINE itself would be read by the binaries as the key `pipeline` (a string, not a table): drop it.
unset STRATA_PIPELINE STRATA_CONFIG STRATA_STANZA
PIPE_DESC="${PIPE_OVERRIDES[*]:-defaults}"

# ------------------------------------------------------------------------------------------------ cleanup
SERVICE_PIDS=()      # strata services, in start order
declare -A SERVICE_OF=()
NATS_PID=""
SAMPLER_FLAG=""
SAMPLER_PID=""
CMD_PID=""           # the measured command while it runs

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

sampler_stop() {
    [[ -n $SAMPLER_PID ]] || return 0
    rm -f "$SAMPLER_FLAG"
    wait "$SAMPLER_PID" 2>/dev/null || true
    SAMPLER_PID=""
}

cleanup() {
    local rc=$?
    set +e
    sampler_stop
    [[ -n $CMD_PID ]] && stop_pid "$CMD_PID" "measured command"
    pg_stop
    services_stop
    [[ -n $NATS_PID ]] && stop_pid "$NATS_PID" nats-server
    rm -rf "$RESTORE" "$PGBB_OUT"
    if [[ $KEEP_REPOS != 1 ]]; then rm -rf "$SREPO" "$BRREPO"; fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------------------------------------ directories
mkdir -p "$BENCH_DIR"
chmod 755 "$BENCH_DIR"
mkdir -p "$PGSOCK" "$LOGDIR" "$TMPD" "$BR"/{log,lock,spool} "$RESTORE" "$BIN"
chown postgres:postgres "$BENCH_DIR" "$PGSOCK" "$LOGDIR" "$TMPD" "$RESTORE"
chown -R postgres:postgres "$BR"
chmod 755 "$BIN"
cd "$BENCH_DIR" # the postgres user cannot enter root's working directory

# A stale cluster of an interrupted run (ours: it lives in $BENCH_DIR) is stopped by its pid.
pg_stop

# ------------------------------------------------------------------------------------------------ binaries
if [[ -z $STRATA_BIN ]]; then
    export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
    log "building the Strata binaries (cargo build --release --bins in $REPO_ROOT, target $CARGO_TARGET_DIR)"
    (cd "$REPO_ROOT" && cargo build --release --bins) >"$LOGDIR/cargo-build.log" 2>&1 ||
        { tail -30 "$LOGDIR/cargo-build.log" >&2; die "cargo build failed (log: $LOGDIR/cargo-build.log)"; }
    STRATA_BIN=$CARGO_TARGET_DIR/release
fi
for b in strata strata-collector strata-sealer strata-uploader; do
    [[ -x $STRATA_BIN/$b ]] || die "$STRATA_BIN/$b is missing (set STRATA_BIN to the directory of the binaries)"
    # A copy the postgres user can execute, and that a concurrent rebuild cannot change under the run.
    install -m 0755 "$STRATA_BIN/$b" "$BIN/$b.new" && mv -f "$BIN/$b.new" "$BIN/$b"
done
STRATA_VERSION=$("$BIN/strata" --version 2>/dev/null || echo "strata ?")
PGBR_VERSION=$(pgbackrest version)
log "$STRATA_VERSION (from $STRATA_BIN), $PGBR_VERSION, bus $BUS_KNOB, pipeline: $PIPE_DESC"

# ------------------------------------------------------------------------------------------------ cluster
write_pg_conf() { # write_pg_conf ARCHIVE_COMMAND: the settings this script owns, included by postgresql.conf
    cat >"$PGDATA/loadtest.conf" <<EOF
# Written by loadtest/bench-full.sh at every run; included from postgresql.conf.
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

cat >"$CFG" <<EOF
# Written by loadtest/bench-full.sh.
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

# archive_command: the segment must reach both repositories, so that either tool's backup finds the WAL it
# waits for. Each push's duration is logged to logs/archive-push.log. The name must contain "pgbackrest"
# (pgbackrest check and backup refuse an archive_command without it) and "archive-push" (strata check).
cat >"$BIN/archive-push-strata-pgbackrest.sh" <<EOF
#!/bin/sh
# archive_command of the load test (written by loadtest/bench-full.sh): strata, then pgbackrest; both must succeed.
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

# Repositories of an earlier run may belong to another cluster (after a new initdb): start both empty.
mkdir -p "$SREPO" "$BRREPO"
wipe_dir "$SREPO"
wipe_dir "$BRREPO"
chown postgres:postgres "$SREPO" "$BRREPO"

write_pg_conf "$BIN/archive-push-strata-pgbackrest.sh %p"
pg_start
[[ $(psql_q "SHOW archive_command") == "$BIN/archive-push-strata-pgbackrest.sh %p" ]] || die "archive_command was not applied"

# ------------------------------------------------------------------------------------------------ services
# service_start, services_restart, services_stop, services_reset_hwm, hwm_kb: lib.sh

# ------------------------------------------------------------------------------------------------ measuring
# WAL is only written by the backups themselves here; before a repository is wiped, the archiver must be idle
# so that no push lands in a half-made repository (it would fail and be retried, delaying the next backup).
wait_archive_idle() {
    local i
    for ((i = 0; i < 1200; i++)); do
        [[ -z $(find "$PGDATA/pg_wal/archive_status" -name '*.ready' -print -quit) ]] && return 0
        sleep 0.1
    done
    log "warning: WAL still waiting for archive_command after 120 s (see $LOGDIR/postgresql.log)"
}

cpu_busy() { awk '/^cpu /{print $2 + $3 + $4 + $7 + $8; exit}' /proc/stat; }

# Our processes: the measured command's tree, the Strata services, nats-server, then PostgreSQL's (the archiver's
# archive_command children included), at most 20 (top -p's limit). Neighbours on a shared machine run processes
# with the same names (other checkouts' strata binaries, their own PostgreSQL), so samples are split by pid.
our_pids() { # our_pids CMD_PID
    ps -e -o pid=,ppid= | awk -v roots="$1 ${SERVICE_PIDS[*]} $NATS_PID $(pg_pid "$PGDATA")" '
        { parent[$1] = $2 }
        END {
            nr = split(roots, r, " ")
            for (i = 1; i <= nr; i++) {            # breadth first from each root, in root order
                if (!(r[i] in parent) || (r[i] in seen)) continue
                q[1] = r[i]; head = 1; tail = 1; seen[r[i]] = 1; out[++n] = r[i]
                while (head <= tail) {
                    p = q[head++]
                    for (c in parent) if (parent[c] == p && !(c in seen)) { seen[c] = 1; q[++tail] = c; out[++n] = c }
                }
            }
            for (i = 1; i <= n && i <= 20; i++) printf "%s%s", (i > 1 ? "," : ""), out[i]
        }'
}

# A top sample every TOP_INTERVAL s (the first one TOP_INTERVAL s in): every process, and the threads of ours,
# both over the same 0.5 s (the second frame of `top -n2`; the first frame's interval is a few ms).
sampler_start() { # sampler_start NAME CMD_PID
    ((TOP_INTERVAL > 0)) || return 0
    SAMPLER_FLAG=$TMPD/sampler.$$
    : >"$SAMPLER_FLAG"
    local out=$LOGDIR/top-$1.log flag=$SAMPLER_FLAG cmd_pid=$2
    : >"$out"
    (
        while :; do
            for ((i = 0; i < TOP_INTERVAL * 10; i++)); do [[ -e $flag ]] || exit 0; sleep 0.1; done
            pids=$(our_pids "$cmd_pid")
            [[ -n $pids ]] || continue
            top -b -n2 -d 0.5 -w 400 >"$out.p" 2>/dev/null &
            top -b -n2 -d 0.5 -H -w 400 -p "$pids" >"$out.t" 2>/dev/null
            wait
            { echo "=== ours $pids"
              echo "=== process"; awk '/^top -/ { f++ } f == 2' "$out.p" | head -n 30
              echo "=== thread"; awk '/^top -/ { f++ } f == 2' "$out.t" | head -n 40; } >>"$out"
            rm -f "$out.p" "$out.t"
        done
    ) &
    SAMPLER_PID=$!
}
# Average %CPU per command name over the samples, busiest first. WHAT: "ours" (our processes), "others" (the rest
# of the machine: neighbours' noise), "threads" (threads of our processes by thread name; not logged: top -H
# showed the strata command's idle main thread busy, while /proc/<pid>/task/*/stat and perf put all its CPU on the
# tokio workers and blocking pool, all named "tokio-rt-worker", so thread names do not tell the stages apart).
top_summary() { # top_summary FILE WHAT N
    awk -v what="$2" '
        /^=== ours / { samples++; delete ours; n = split($3, a, ","); for (i = 1; i <= n; i++) ours[a[i]] = 1; next }
        /^=== / { sec = $2; hdr = 0; next }
        /^ *PID +USER/ { hdr = 1; next }
        !hdr || NF < 12 { next }
        {
            cmd = $12; for (i = 13; i <= NF; i++) cmd = cmd " " $i
            if (sec == "thread" && what == "threads") cpu[cmd] += $9
            else if (sec == "process" && what == "ours" && ($1 in ours)) cpu[cmd] += $9
            else if (sec == "process" && what == "others" && !($1 in ours)) cpu[cmd] += $9
        }
        END {
            if (samples == 0) exit
            for (c in cpu) if (cpu[c] / samples >= 0.5) printf "%.0f%% %s\n", cpu[c] / samples, c
        }' "$1" | sort -rn | head -n "$3" | paste -sd, | sed 's/,/, /g'
}
top_report() { # top_report NAME: logs the summaries, sets TOP_NOTE for results.tsv
    local f=$LOGDIR/top-$1.log ours others n
    TOP_NOTE=""
    [[ -s $f ]] || return 0
    n=$(grep -c '^=== ours ' "$f" || true)
    ours=$(top_summary "$f" ours 6); others=$(top_summary "$f" others 4)
    log "  top ($n samples) ours: ${ours:--}; others (noise): ${others:--}"
    TOP_NOTE="top($n samples) ours: ${ours:--}; others: ${others:--}"
}

# run_timed NAME CMD...: CMD as postgres under /usr/bin/time -v, after sync and a pause; with SAMPLE_AS set,
# top samples are taken meanwhile into logs/top-$SAMPLE_AS.log (SAMPLE_AS is cleared).
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
    if [[ -n ${SAMPLE_AS:-} ]]; then sampler_start "$SAMPLE_AS" "$CMD_PID"; fi
    set +e
    wait "$CMD_PID"
    RC=$?
    set -e
    t1=$(date +%s.%N); b1=$(cpu_busy)
    CMD_PID=""
    sampler_stop
    SAMPLE_AS=""
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

HEADER='run_id	ts	tool	op	rep	rc	wall_s	user_s	sys_s	vm_busy_cpu_s	cmd_maxrss_kb	services_rss_kb	peak_rss_kb	out_bytes	payload_bytes	mb_s	note'
if [[ -f $RESULTS && $(head -1 "$RESULTS") != "$HEADER" ]]; then
    mv "$RESULTS" "$RESULTS.old-$RUN_ID"
    log "results.tsv had other columns: moved to $RESULTS.old-$RUN_ID"
fi
[[ -f $RESULTS ]] || echo "$HEADER" >"$RESULTS"

# record TOOL OP REP SERVICES_RSS_KB REPO_BYTES PAYLOAD NOTE
record() {
    local tool=$1 op=$2 rep=$3 svc=$4 repo=$5 payload=$6 note=$7 peak mbs
    peak=$((MAXRSS + svc))
    mbs=$(awk -v p="$payload" -v w="$WALL" 'BEGIN{ if (w > 0) printf "%.1f", p / 1e6 / w; else print 0 }')
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$RUN_ID" "$(date -u +%FT%TZ)" \
        "$tool" "$op" "$rep" "$RC" "$WALL" "$USER_S" "$SYS_S" "$BUSY" "$MAXRSS" "$svc" "$peak" "$repo" "$payload" \
        "$mbs" "$note" >>"$RESULTS"
    log "$tool $op #$rep: rc=$RC ${WALL}s ${mbs}MB/s cpu=${USER_S}+${SYS_S}s vm_busy=${BUSY}s rss=${peak}kB repo=${repo} $note"
}

strata() { as_pg "$BIN/strata" --config "$CFG" --stanza "$STANZA" "$@"; }
pgbr() { as_pg pgbackrest --config="$BRCONF" --stanza="$STANZA" "$@"; }


new_restore_dir() {
    local d=$RESTORE/$1
    rm -rf "$d"; mkdir -p "$d"; chmod 700 "$d"; chown postgres:postgres "$d"
    echo "$d"
}
check_restored() { # check_restored DIR: the restored directory looks like a data directory
    [[ -f $1/PG_VERSION && -f $1/global/pg_control && -d $1/base ]]
}

strata_backup() { # strata_backup REP
    local rep=$1 payload svc=0 nats_kb="" note label p
    wait_archive_idle
    services_stop
    wipe_dir "$SREPO"
    services_restart
    strata stanza-create >"$LOGDIR/strata-stanza-create-$rep.log" 2>&1 ||
        { cat "$LOGDIR/strata-stanza-create-$rep.log" >&2; die "strata stanza-create failed"; }
    payload=$(db_bytes)
    services_reset_hwm
    local -A cpu_before=()
    if ((NATS_MODE)); then for p in "${SERVICE_PIDS[@]}" $NATS_PID; do cpu_before[$p]=$(cpu_ticks "$p"); done; fi
    SAMPLE_AS="strata-backup-$rep"
    run_timed "strata-backup-$rep" "$BIN/strata" --config "$CFG" --stanza "$STANZA" backup
    local cpu_note=""
    if ((NATS_MODE)); then
        for p in "${SERVICE_PIDS[@]}"; do svc=$((svc + $(hwm_kb "$p"))); done
        nats_kb=$(hwm_kb "$NATS_PID")
        # CPU-seconds each process used during the backup (the command's own is cpu= in the log line).
        for p in "${SERVICE_PIDS[@]}" $NATS_PID; do
            cpu_note+=" cpu_${SERVICE_OF[$p]:-nats-server}=$(awk -v a="${cpu_before[$p]}" -v b="$(cpu_ticks "$p")" -v hz="$(getconf CLK_TCK)" 'BEGIN{printf "%.2f", (b - a) / hz}')"
        done
    fi
    label=$(awk '/^(full|diff|incr) backup .* committed/{print $3; exit}' "$LOGDIR/strata-backup-$rep.log")
    wait_archive_idle
    note="label=${label:-?} bus=$BUS_URL pipeline=${PIPE_DESC// /,}"
    [[ -n $nats_kb ]] && note+=" nats_server_hwm_kb=$nats_kb$cpu_note"
    note+=" said: $(grep -m1 'committed:' "$LOGDIR/strata-backup-$rep.log" | cut -d: -f2- | sed 's/^ //')"
    top_report "strata-backup-$rep"
    note+=" $TOP_NOTE"
    strata info --output json >"$LOGDIR/strata-info-$rep.json" 2>&1 || true
    record strata backup "$rep" "$svc" "$(du_bytes "$SREPO")" "$payload" "$note"
    BACKUP_OK=0
    if ((RC == 0)) && [[ -n $label ]]; then BACKUP_OK=1; fi
}

pgbr_backup() { # pgbr_backup REP
    local rep=$1 payload label note
    wait_archive_idle
    wipe_dir "$BRREPO"
    pgbr stanza-create >"$LOGDIR/pgbackrest-stanza-create-$rep.log" 2>&1 ||
        { cat "$LOGDIR/pgbackrest-stanza-create-$rep.log" >&2; die "pgbackrest stanza-create failed"; }
    payload=$(db_bytes)
    SAMPLE_AS="pgbackrest-backup-$rep"
    run_timed "pgbackrest-backup-$rep" pgbackrest --config="$BRCONF" --stanza="$STANZA" backup --type=full
    label=$(readlink "$BRREPO/backup/$STANZA/latest" 2>/dev/null || true)
    wait_archive_idle
    note="label=${label:-?} compress=$PGBR_COMPRESS:$PGBR_LEVEL process-max=$PROCESS_MAX"
    [[ -n $label ]] && note+=" backup_set_bytes=$(du_bytes "$BRREPO/backup/$STANZA/$label")"
    top_report "pgbackrest-backup-$rep"
    note+=" $TOP_NOTE"
    record pgbackrest backup "$rep" 0 "$(du_bytes "$BRREPO")" "$payload" "$note"
    BACKUP_OK=0
    if ((RC == 0)) && [[ -n $label ]]; then BACKUP_OK=1; fi
}

# pgbb_backup REP: pg_basebackup -Ft with $PGBB_COMPRESS into an empty directory, removed afterwards. It writes a
# tar (compressed by the server's walsender, with zstd's own threads) plus pg_wal.tar (-X stream: streamed over a
# second connection, not compressed) and a backup_manifest, and fsyncs them. Unlike the other two it does not
# wait for the archiver (it carries its WAL itself); the archiver still pushes the segment its stop switched to.
pgbb_backup() {
    local rep=$1 payload out note files
    wait_archive_idle
    rm -rf "$PGBB_OUT"
    mkdir -p "$PGBB_OUT"; chmod 700 "$PGBB_OUT"; chown postgres:postgres "$PGBB_OUT"
    payload=$(db_bytes)
    SAMPLE_AS="pg_basebackup-backup-$rep"
    run_timed "pg_basebackup-backup-$rep" "$PGBIN/pg_basebackup" -h "$PGSOCK" -p "$PGPORT" -U postgres -D "$PGBB_OUT" \
        -Ft -X "$PGBB_WAL" --checkpoint=fast --compress="$PGBB_COMPRESS"
    wait_archive_idle
    out=$(du_bytes "$PGBB_OUT")
    files=$(find "$PGBB_OUT" -type f -printf '%P:%s,' | sed 's/,$//')
    if ((RC == 0)) && [[ ! -f $PGBB_OUT/backup_manifest ]]; then
        log "pg_basebackup left no backup_manifest in $PGBB_OUT"
        RC=99; FAILURES=$((FAILURES + 1))
    fi
    top_report "pg_basebackup-backup-$rep"
    note="-Ft -X $PGBB_WAL --checkpoint=fast --compress=$PGBB_COMPRESS files=${files:--} $TOP_NOTE"
    record pg_basebackup backup "$rep" 0 "$out" "$payload" "$note"
    rm -rf "$PGBB_OUT"
}

restore_one() { # restore_one TOOL REP PAYLOAD
    local tool=$1 rep=$2 payload=$3 dir size ok=yes
    dir=$(new_restore_dir "$tool")
    if [[ $tool == strata ]]; then
        run_timed "strata-restore-$rep" "$BIN/strata" --config "$CFG" --stanza "$STANZA" restore --pg-data "$dir"
    else
        run_timed "pgbackrest-restore-$rep" pgbackrest --config="$BRCONF" --stanza="$STANZA" restore --pg1-path="$dir"
    fi
    size=$(du_bytes "$dir")
    check_restored "$dir" || ok=no
    if [[ $ok == no && $RC == 0 ]]; then
        log "restored directory $dir lacks PG_VERSION, global/pg_control or base/"
        RC=99; FAILURES=$((FAILURES + 1))
    fi
    record "$tool" restore "$rep" 0 "$size" "$payload" "restored_bytes=$size files=$(find "$dir" -type f | wc -l) data_dir_ok=$ok"
    rm -rf "$dir"
}

# ------------------------------------------------------------------------------------------------ run
FAILURES=0
services_restart
for tool in strata pgbackrest; do # stanzas exist before the first WAL push
    if [[ $tool == strata ]]; then strata stanza-create >"$LOGDIR/strata-stanza-create-0.log" 2>&1 ||
        { cat "$LOGDIR/strata-stanza-create-0.log" >&2; die "strata stanza-create failed"; }
    else pgbr stanza-create >"$LOGDIR/pgbackrest-stanza-create-0.log" 2>&1 ||
        { cat "$LOGDIR/pgbackrest-stanza-create-0.log" >&2; die "pgbackrest stanza-create failed"; }
    fi
done
# Both archive paths work end to end (each forces a WAL switch and waits for it in its archive).
strata check >"$LOGDIR/strata-check.log" 2>&1 || { cat "$LOGDIR/strata-check.log" >&2; die "strata check failed"; }
pgbr check >"$LOGDIR/pgbackrest-check.log" 2>&1 || { cat "$LOGDIR/pgbackrest-check.log" >&2; die "pgbackrest check failed"; }

PAYLOAD=$(db_bytes)
log "run $RUN_ID: $DATASET_DESC, payload $PAYLOAD bytes (sum of pg_database_size), $REPS reps, bus $BUS_URL"
{
    echo "run_id=$RUN_ID"
    echo "dataset=$DATASET_ID"
    echo "scale=$SCALE"
    echo "payload_bytes=$PAYLOAD"
    echo "data_dir_bytes=$(du_bytes "$PGDATA")"
    echo "strata=$STRATA_VERSION ($STRATA_BIN, built $(date -u -r "$STRATA_BIN/strata" +%FT%TZ))"
    echo "source=$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO_ROOT" status --porcelain --untracked-files=no 2>/dev/null | grep -q . && echo ' (uncommitted changes)')"
    echo "pgbackrest=$PGBR_VERSION compress=$PGBR_COMPRESS:$PGBR_LEVEL process-max=$PROCESS_MAX"
    ((PGBB)) && echo "pg_basebackup=$("$PGBIN/pg_basebackup" --version) -Ft -X $PGBB_WAL --checkpoint=fast --compress=$PGBB_COMPRESS"
    echo "bus=$BUS_URL pipeline: $(for k in "${PIPELINE_KEYS[@]}"; do printf '%s=%s ' "$k" "${PIPE[$k]}"; done)"
    echo "cpus=$(nproc) mem_kb=$(awk '/MemTotal/{print $2}' /proc/meminfo)"
} >"$BENCH_DIR/run-$RUN_ID.info"

# Machine limits, next to the figures: disk read (O_DIRECT) in $BENCH_DIR, zstd -1 on one core on the largest
# table's first heap segment.
LIMITS_FILE=""
if [[ $LIMITS == 1 ]]; then
    read -r heap_table heap_file <<<"$(dataset_heap_file)"
    LIMITS_FILE=$BENCH_DIR/limits-$RUN_ID.txt
    log "limits.sh: disk in $BENCH_DIR/limits, zstd -1 on $heap_table ($heap_file)"
    LIMITS_DIR=$BENCH_DIR/limits LIMITS_OUT=$LIMITS_FILE "$HERE/limits.sh" "$DATASET=$heap_file" >/dev/null 2>"$LOGDIR/limits-$RUN_ID.log" ||
        { tail -5 "$LOGDIR/limits-$RUN_ID.log" >&2; die "limits.sh failed (log $LOGDIR/limits-$RUN_ID.log)"; }
    echo "heap_table=$heap_table" >>"$LIMITS_FILE"
    rmdir "$BENCH_DIR/limits" 2>/dev/null || true
fi

for rep in $(seq 1 "$REPS"); do
    log "---- rep $rep/$REPS"
    strata_backup "$rep"; s_ok=$BACKUP_OK
    pgbr_backup "$rep"; p_ok=$BACKUP_OK
    if ((PGBB)); then pgbb_backup "$rep"; fi
    if ((s_ok)); then restore_one strata "$rep" "$PAYLOAD"; else log "strata restore #$rep skipped: no backup"; fi
    if ((p_ok)); then restore_one pgbackrest "$rep" "$PAYLOAD"; else log "pgbackrest restore #$rep skipped: no backup"; fi
done

# ------------------------------------------------------------------------------------------------ report
# The table of medians, the ratios, and the issue's targets (stated for single-host mode) with PASS/FAIL; the same
# figures as key=value lines in summary-<run_id>.kv (bench-all.sh combines those).
SUMMARY=$BENCH_DIR/summary-$RUN_ID.txt
KV=$BENCH_DIR/summary-$RUN_ID.kv
{
    echo "run_id=$RUN_ID"
    echo "script=bench-full.sh"
    echo "dataset=$DATASET"
    echo "dataset_desc=$DATASET_DESC"
    echo "bus=$( ((NATS_MODE)) && echo nats || echo local)"
    echo "payload_bytes=$PAYLOAD"
    echo "reps=$REPS"
    echo "pgbr=$PGBR_COMPRESS:$PGBR_LEVEL process-max=$PROCESS_MAX"
    echo "pgbb=-Ft -X $PGBB_WAL --compress=$PGBB_COMPRESS"
    echo "pipeline=$PIPE_DESC"
} >"$KV"
awk -F'\t' -v run="$RUN_ID" -v kv="$KV" -v mode="$( ((NATS_MODE)) && echo nats || echo local)" '
    function median(list,    n, a, i, j, t) {
        n = split(list, a, " ")
        for (i = 2; i <= n; i++) { t = a[i]; for (j = i - 1; j >= 1 && a[j] + 0 > t + 0; j--) a[j + 1] = a[j]; a[j + 1] = t }
        return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
    }
    function target(what, key, v, op, lim, has,    ok, verdict) {
        if (!has) { printf "  %-50s %7s  target %s %-5s  -\n", what, "-", (op == "le" ? "<=" : "in"), lim; print key "=" >> kv; print key "_verdict=-" >> kv; return }
        if (op == "le") ok = v <= lim + 0
        else { split(lim, r, "[.][.]"); ok = v >= r[1] + 0 && v <= r[2] + 0 }
        verdict = ok ? "PASS" : "FAIL"
        printf "  %-50s %7.3f  target %s %-5s  %s\n", what, v, (op == "le" ? "<=" : "in"), lim, verdict
        printf "%s=%.3f\n%s_verdict=%s\n", key, v, key, verdict >> kv
    }
    NR == 1 || $1 != run || $6 != 0 { if (NR > 1 && $1 == run && $6 != 0) failed[$3 "|" $4]++; next }
    {
        k = $3 "|" $4
        if (!(k in n)) order[++nk] = k
        n[k]++; wall[k] = wall[k] " " $7; repo[k] = repo[k] " " $14; pay[k] = pay[k] " " $15
        if ($13 + 0 > rss[k]) rss[k] = $13 + 0
        if (!(k in mn) || $7 + 0 < mn[k]) mn[k] = $7 + 0
        if ($7 + 0 > mx[k]) mx[k] = $7 + 0
    }
    END {
        printf "%-13s %-8s %3s %9s %9s %9s %8s %13s %15s %6s\n", "tool", "op", "n", "median_s", "min_s", "max_s", "MB/s", "peak_rss_MiB", "repo/out_bytes", "ratio"
        for (i = 1; i <= nk; i++) {
            k = order[i]; split(k, t, "|")
            w = median(wall[k]); p = median(pay[k]); mbs[k] = w > 0 ? p / 1e6 / w : 0; mw[k] = w
            ob = median(repo[k])
            printf "%-13s %-8s %3d %9.2f %9.2f %9.2f %8.1f %13.1f %15s %6s\n", t[1], t[2], n[k], w, mn[k], mx[k], mbs[k], rss[k] / 1024, \
                t[2] == "backup" ? sprintf("%.0f", ob) : "-", (t[2] == "backup" && ob > 0) ? sprintf("%.1fx", p / ob) : ""
            if (t[2] == "backup") rb[t[1]] = ob
            rr[k] = rss[k]
            printf "%s_%s_s=%.3f\n%s_%s_peak_rss_kb=%d\n", t[1], t[2], w, t[1], t[2], rss[k] >> kv
            if (t[2] == "backup") printf "%s_backup_bytes=%.0f\n", t[1], ob >> kv
        }
        for (k in failed) { printf "FAILED: %s x%d (not in the medians)\n", k, failed[k]; split(k, t, "|"); printf "%s_%s_failed=%d\n", t[1], t[2], failed[k] >> kv }
        print "(ratio: database bytes / repository or output bytes; repositories include the WAL archived since stanza-create)"
        print ""
        s = "strata|backup"; b = "pgbackrest|backup"; g = "pg_basebackup|backup"
        if ((s in mw) && (b in mw) && mw[b] > 0)
            printf "strata/pgbackrest    backup   time ratio %.2f   throughput ratio %.2f   peak RSS ratio %.2f\n", mw[s] / mw[b], mbs[s] / mbs[b], (rr[b] > 0 ? rr[s] / rr[b] : 0)
        if ((s in mw) && (g in mw) && mw[g] > 0)
            printf "strata/pg_basebackup backup   time ratio %.2f   throughput ratio %.2f\n", mw[s] / mw[g], mbs[s] / mbs[g]
        s = "strata|restore"; b = "pgbackrest|restore"
        if ((s in mw) && (b in mw) && mw[b] > 0)
            printf "strata/pgbackrest    restore  time ratio %.2f   throughput ratio %.2f   peak RSS ratio %.2f\n", mw[s] / mw[b], mbs[s] / mbs[b], (rr[b] > 0 ? rr[s] / rr[b] : 0)
        if (("strata" in rb) && ("pgbackrest" in rb) && rb["pgbackrest"] > 0)
            printf "strata/pgbackrest    repo     size ratio %.2f (%.0f / %.0f bytes)\n", rb["strata"] / rb["pgbackrest"], rb["strata"], rb["pgbackrest"]
        print ""
        printf "targets (the issue states them for single-host mode; this run: bus %s)%s\n", mode, (mode == "local" ? "" : ": shown for comparison only")
        s = "strata|backup"; b = "pgbackrest|backup"; g = "pg_basebackup|backup"
        target("backup time strata / pgbackrest", "ratio_backup_pgbr", ((s in mw) && (b in mw) && mw[b] > 0) ? mw[s] / mw[b] : 0, "le", "0.50", (s in mw) && (b in mw) && mw[b] > 0)
        target("backup time strata / pg_basebackup", "ratio_backup_pgbb", ((s in mw) && (g in mw) && mw[g] > 0) ? mw[s] / mw[g] : 0, "le", "1.25", (s in mw) && (g in mw) && mw[g] > 0)
        s = "strata|restore"; b = "pgbackrest|restore"
        target("restore time strata / pgbackrest", "ratio_restore_pgbr", ((s in mw) && (b in mw) && mw[b] > 0) ? mw[s] / mw[b] : 0, "le", "0.80", (s in mw) && (b in mw) && mw[b] > 0)
        target("repo size strata / pgbackrest (comparable compr.)", "ratio_repo", (("strata" in rb) && rb["pgbackrest"] > 0) ? rb["strata"] / rb["pgbackrest"] : 0, "in", "0.90..1.10", ("strata" in rb) && ("pgbackrest" in rb) && rb["pgbackrest"] > 0)
    }' "$RESULTS" >"$SUMMARY"
if [[ -n $LIMITS_FILE && -s $LIMITS_FILE ]]; then
    sed 's/^/limit_/' "$LIMITS_FILE" >>"$KV"
    lim() { awk -F= -v k="$1" '$1 == k { sub(/^[^=]*=/, ""); print; exit }' "$LIMITS_FILE"; }
    {
        echo
        echo "machine limits (limits.sh; MB = 10^6 bytes):"
        echo "  disk: read O_DIRECT $(lim disk_read_direct_mb_s) MB/s, read from page cache $(lim cached_read_mb_s) MB/s, write O_DIRECT $(lim disk_write_direct_mb_s) MB/s"
        echo "  zstd -1, one core, $(lim heap_table) heap (first $(( $(lim "zstd1_${DATASET}_file_bytes") / 1048576 )) MiB segment): $(lim "zstd1_${DATASET}_mb_s") MB/s in memory (zstd -b1, ratio $(lim "zstd1_${DATASET}_ratio")), $(lim "zstd1_${DATASET}_cli_mb_s") MB/s streaming (zstd -1 -T1, ratio $(lim "zstd1_${DATASET}_file_ratio")); decompression $(lim "zstd1_${DATASET}_dec_mb_s") MB/s"
        awk -v p="$PAYLOAD" -v z="$(lim "zstd1_${DATASET}_mb_s")" -v c="$(nproc)" 'BEGIN { if (z > 0) printf "  compressing the %.0f MB payload at that rate takes %.2f s on one core, %.2f s on %d cores\n", p / 1e6, p / 1e6 / z, p / 1e6 / z / c, c }'
    } >>"$SUMMARY"
fi
{
    echo
    echo "== run $RUN_ID: $DATASET_DESC, payload $PAYLOAD bytes ($(awk -v p="$PAYLOAD" 'BEGIN{printf "%.0f", p / 1e6}') MB), $REPS reps, bus $BUS_URL, pipeline $PIPE_DESC; pgBackRest $PGBR_COMPRESS:$PGBR_LEVEL process-max $PROCESS_MAX$( ((PGBB)) && echo "; pg_basebackup -Ft -X $PGBB_WAL --compress=$PGBB_COMPRESS")"
    cat "$SUMMARY"
    echo
    echo "rows: $RESULTS (run_id $RUN_ID); key=value: $KV; logs: $LOGDIR"
} | tee -a "$SUMMARY.tmp" >&2
mv "$SUMMARY.tmp" "$SUMMARY"
if [[ -n $KV_OUT ]]; then cp "$KV" "$KV_OUT"; fi
((FAILURES == 0)) || die "$FAILURES measurement(s) failed; see the logs above"
