#!/usr/bin/env bash
# bench-many-files.sh: peak memory of Strata on a cluster of many small relation files.
#
#   sudo loadtest/bench-many-files.sh                                # 100,000 tables, bus = "local"
#   sudo REUSE=1 STRATA_BUS=nats:// loadtest/bench-many-files.sh     # same cluster, services over nats-server
#   sudo NTABLES=2000 loadtest/bench-many-files.sh                   # quick check (~1 min)
#
# Acceptance point of the incremental-backup work: "a cluster with 100,000 small relation files backs up with
# every process's peak RSS under 256 MiB". This measures memory, not speed (wall times are recorded, but the
# machine may be shared).
#
# Runs as root; PostgreSQL and Strata run as the `postgres` OS user. Self-contained: needs PostgreSQL 15
# (/usr/lib/postgresql/15/bin), /usr/bin/time, jq, and for STRATA_BUS=nats://... nats-server 2.10+ at
# /opt/strata-tools/bin/nats-server. It never builds Strata: STRATA_BIN must hold the binaries.
#
# What it does (loadtest/README.md, section "Many small files", has the details):
#   1. Creates a PostgreSQL 15 cluster (initdb -k) in $BENCH_DIR/pgdata with a database `many` holding $NTABLES
#      tables `t_N (id int, v text)` of one row each, made $BATCH per transaction; or reuses it with REUSE=1
#      when it was made with the same NTABLES. Reports the files under base/ and the data directory's size.
#   2. Wipes the Strata repository, (NATS mode: starts nats-server and strata-collector, -sealer, -uploader),
#      `strata stanza-create`, then under /usr/bin/time -v: a full `strata backup`; an UPDATE of $UPDATE_TABLES
#      tables; `strata backup --type incr`; `strata info --output json`; `strata restore --pg-data
#      $BENCH_DIR/restored` of the incremental (of the newest backup if the incremental failed).
#   3. Peak RSS of every Strata process: the command's ("Maximum resident set size" of /usr/bin/time -v), each
#      archive-push run by PostgreSQL's archiver (archive_command runs under /usr/bin/time too), and in NATS mode
#      each service's and nats-server's VmHWM from /proc/<pid>/status (reset through clear_refs before each
#      incremental and restore, read after each operation and once more just before the services are stopped).
#      One row per process and operation goes to $BENCH_DIR/results.tsv, and a table with the verdict against
#      $RSS_LIMIT_MIB is printed and saved as $BENCH_DIR/summary-<mode>-<run_id>.txt.
# Everything it starts (PostgreSQL, nats-server, the services) is stopped at exit by pid, never by name.
#
# Env knobs:
#   BENCH_DIR      work directory (default /tmp/strata-manyfiles)
#   PGPORT         PostgreSQL port; it listens on a Unix socket in $BENCH_DIR/run only (default 55434)
#   NTABLES        tables to create (default 100000); each is a main fork of 8 KiB, a TOAST table and its index
#   BATCH          tables created per transaction (default 1000)
#   UPDATE_TABLES  tables updated between the full and the incremental backup (default 10)
#   REUSE          1: keep the cluster in $BENCH_DIR when it was made with the same NTABLES (default 0)
#   STRATA_BIN     directory with strata, strata-collector, strata-sealer, strata-uploader
#                  (default /work/main/target/release); copied into $BENCH_DIR/bin
#   STRATA_BUS     "local" (default) or a nats:// URL (host and port ignored: nats-server is started on a free
#                  loopback port)
#   RSS_LIMIT_MIB  the limit each process's peak RSS is checked against (default 256)
#   PAUSE          seconds after `sync` before each measurement (default 2)
#   KEEP_RESTORE   1: leave $BENCH_DIR/restored in place at exit (default 0: removed after it is measured)
set -euo pipefail

BENCH_DIR=${BENCH_DIR:-/tmp/strata-manyfiles}
PGPORT=${PGPORT:-55434}
NTABLES=${NTABLES:-100000}
BATCH=${BATCH:-1000}
UPDATE_TABLES=${UPDATE_TABLES:-10}
REUSE=${REUSE:-0}
STRATA_BIN=${STRATA_BIN:-/work/main/target/release}
BUS_KNOB=${STRATA_BUS:-local}
RSS_LIMIT_MIB=${RSS_LIMIT_MIB:-256}
PAUSE=${PAUSE:-2}
KEEP_RESTORE=${KEEP_RESTORE:-0}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
NATS_SERVER=${NATS_SERVER:-/opt/strata-tools/bin/nats-server}

STANZA=many
DB=many
PGDATA=$BENCH_DIR/pgdata
PGSOCK=$BENCH_DIR/run
BIN=$BENCH_DIR/bin
LOGDIR=$BENCH_DIR/logs
TMPD=$BENCH_DIR/tmp
CFG=$BENCH_DIR/strata.toml
SREPO=$BENCH_DIR/repo
RESTORED=$BENCH_DIR/restored
NATSDIR=$BENCH_DIR/nats
RESULTS=$BENCH_DIR/results.tsv
ARCHIVE_TIME_LOG=$LOGDIR/archive-push-time.log
RUN_ID=$(date -u +%Y%m%dT%H%M%SZ)

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }
as_pg() { runuser -u postgres -- "$@"; }
psql_q() { as_pg "$PGBIN/psql" -h "$PGSOCK" -p "$PGPORT" -U postgres -d "${2:-postgres}" -XAtq -v ON_ERROR_STOP=1 -c "$1"; }
du_bytes() { du -sb "$1" 2>/dev/null | cut -f1; }
nfiles() { find "$1" -type f 2>/dev/null | wc -l; }
mib() { awk -v k="$1" 'BEGIN{printf "%.1f", k / 1024}'; }
strata() { as_pg "$BIN/strata" --config "$CFG" --stanza "$STANZA" "$@"; }

# ------------------------------------------------------------------------------------------------ checks
[[ $(id -u) -eq 0 ]] || die "run as root (PostgreSQL and Strata run as postgres through runuser)"
id postgres >/dev/null 2>&1 || die "no postgres OS user: install postgresql-15 (scripts/install-deps.sh)"
[[ -x $PGBIN/initdb ]] || die "no PostgreSQL 15 in $PGBIN"
[[ -x /usr/bin/time ]] || die "/usr/bin/time is missing (Debian package 'time')"
command -v jq >/dev/null || die "jq is missing"
for n in PGPORT NTABLES BATCH UPDATE_TABLES RSS_LIMIT_MIB PAUSE; do
    [[ ${!n} =~ ^[0-9]+$ ]] || die "$n must be a number, not '${!n}'"
done
((NTABLES >= 1 && BATCH >= 1)) || die "NTABLES and BATCH must be at least 1"
((UPDATE_TABLES <= NTABLES)) || UPDATE_TABLES=$NTABLES
case $BUS_KNOB in
local) NATS_MODE=0; MODE=local ;;
nats://*) NATS_MODE=1; MODE=nats
    [[ -x $NATS_SERVER ]] || die "STRATA_BUS=$BUS_KNOB needs nats-server at $NATS_SERVER" ;;
*) die "STRATA_BUS must be 'local' or a nats:// URL, not '$BUS_KNOB'" ;;
esac
for b in strata strata-collector strata-sealer strata-uploader; do
    [[ -x $STRATA_BIN/$b ]] || die "$STRATA_BIN/$b is missing (this script does not build; set STRATA_BIN)"
done
# The binaries read STRATA_<KEY> overrides: only the bus (set below) and pipeline overrides pass through.
# The script's own knobs (STRATA_BIN, STRATA_BUS) stay as shell variables, no longer exported.
PIPE_ENV=$(env | grep -E '^STRATA_PIPELINE__' | tr '\n' ' ' || true)
for v in $(compgen -e | grep -E '^STRATA_' | grep -vE '^STRATA_PIPELINE__'); do export -n "$v"; done

# ------------------------------------------------------------------------------------------------ cleanup
SERVICE_PIDS=()
declare -A SERVICE_OF=()
NATS_PID=""
CMD_PID=""

pg_pid() { if [[ -f $PGDATA/postmaster.pid ]]; then head -1 "$PGDATA/postmaster.pid"; fi; }
pg_running() { local p; p=$(pg_pid); [[ -n $p ]] && kill -0 "$p" 2>/dev/null; }
pg_start() {
    pg_running && return 0
    as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -l "$LOGDIR/postgresql.log" -w -t 600 start >/dev/null ||
        { tail -20 "$LOGDIR/postgresql.log" >&2; die "PostgreSQL did not start"; }
    log "PostgreSQL started (pid $(pg_pid), socket $PGSOCK/.s.PGSQL.$PGPORT)"
}
# By the pid in postmaster.pid, never by name: SIGINT (fast shutdown), SIGQUIT after 120 s.
pg_stop() {
    local pid i
    pid=$(pg_pid)
    [[ -n $pid ]] && kill -0 "$pid" 2>/dev/null || return 0
    kill -INT "$pid" 2>/dev/null || true
    for ((i = 0; i < 1200; i++)); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
        log "PostgreSQL pid $pid still running after 120 s: SIGQUIT"
        kill -QUIT "$pid" 2>/dev/null || true
        sleep 2
    fi
    log "PostgreSQL stopped (pid $pid)"
}
# stop_pid PID NAME: SIGTERM, up to 30 s, then SIGKILL. Only pids this script started.
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
services_stop() {
    local i pid
    for ((i = ${#SERVICE_PIDS[@]} - 1; i >= 0; i--)); do
        pid=${SERVICE_PIDS[$i]}
        stop_pid "$pid" "${SERVICE_OF[$pid]}"
    done
    SERVICE_PIDS=()
    SERVICE_OF=()
}
cleanup() {
    local rc=$?
    set +e
    [[ -n $CMD_PID ]] && stop_pid "$CMD_PID" "measured command"
    pg_stop
    services_stop
    [[ -n $NATS_PID ]] && stop_pid "$NATS_PID" nats-server
    [[ $KEEP_RESTORE == 1 ]] || rm -rf "$RESTORED"
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# ------------------------------------------------------------------------------------------------ directories
mkdir -p "$BENCH_DIR" "$PGSOCK" "$LOGDIR" "$TMPD" "$BIN"
chmod 755 "$BENCH_DIR" "$BIN"
chown postgres:postgres "$BENCH_DIR" "$PGSOCK" "$LOGDIR" "$TMPD"
cd "$BENCH_DIR" # the postgres user cannot enter root's working directory
pg_stop         # a cluster left by an interrupted run (ours: it lives in $BENCH_DIR), by its pid

for b in strata strata-collector strata-sealer strata-uploader; do
    # A copy the postgres user can execute, and that a concurrent rebuild cannot change under the run.
    install -m 0755 "$STRATA_BIN/$b" "$BIN/$b.new" && mv -f "$BIN/$b.new" "$BIN/$b"
done
STRATA_VERSION=$("$BIN/strata" --version 2>/dev/null || echo "strata ?")
log "$STRATA_VERSION (from $STRATA_BIN, built $(date -u -r "$STRATA_BIN/strata" +%FT%TZ)), bus $BUS_KNOB, ${PIPE_ENV:-pipeline defaults}"

# ------------------------------------------------------------------------------------------------ cluster
write_pg_conf() { # write_pg_conf ARCHIVE_COMMAND: the settings this script owns, included by postgresql.conf
    cat >"$PGDATA/manyfiles.conf" <<EOF
# Written by loadtest/bench-many-files.sh at every run; included from postgresql.conf.
port = $PGPORT
listen_addresses = ''
unix_socket_directories = '$PGSOCK'
shared_buffers = 256MB
max_locks_per_transaction = 1024
max_wal_size = 2GB
min_wal_size = 256MB
checkpoint_timeout = 15min
wal_level = replica
archive_mode = on
archive_command = '${1//\'/\'\'}'
max_wal_senders = 10
log_checkpoints = on
log_line_prefix = '%m [%p] '
EOF
    chown postgres:postgres "$PGDATA/manyfiles.conf"
}

if [[ $REUSE == 1 && -f $PGDATA/PG_VERSION && -f $BENCH_DIR/ntables && $(cat "$BENCH_DIR/ntables") == "$NTABLES" ]]; then
    log "REUSE=1: reusing the $NTABLES-table cluster in $PGDATA"
else
    [[ $REUSE == 1 ]] && log "REUSE=1 but no $NTABLES-table cluster in $PGDATA: creating one"
    rm -rf "$PGDATA" "$BENCH_DIR/ntables"
    log "initdb -k $PGDATA"
    as_pg "$PGBIN/initdb" -D "$PGDATA" -k -U postgres --auth=trust -E UTF8 --locale=C >"$LOGDIR/initdb.log"
    printf "\ninclude_if_exists = 'manyfiles.conf'\n" >>"$PGDATA/postgresql.conf"
    # While loading, WAL is thrown away: no repository exists yet, and the load's WAL is not what is measured.
    write_pg_conf /bin/true
    pg_start
    psql_q "CREATE DATABASE $DB"
    log "creating $NTABLES tables (id int, v text) of one row each, $BATCH per transaction"
    t0=$(date +%s)
    for ((lo = 1; lo <= NTABLES; lo += BATCH)); do
        hi=$((lo + BATCH - 1)); ((hi <= NTABLES)) || hi=$NTABLES
        psql_q "DO \$\$ BEGIN FOR i IN $lo..$hi LOOP
                    EXECUTE format('CREATE TABLE t_%s (id int, v text)', i);
                    EXECUTE format('INSERT INTO t_%s VALUES (%s, ''row %s'')', i, i, i);
                END LOOP; END \$\$" "$DB" >>"$LOGDIR/create-tables.log" 2>&1 ||
            { tail -5 "$LOGDIR/create-tables.log" >&2; die "creating tables $lo..$hi failed"; }
        if (((hi / BATCH) % 10 == 0 || hi == NTABLES)); then log "  $hi/$NTABLES tables ($(($(date +%s) - t0)) s)"; fi
    done
    psql_q "CHECKPOINT"
    pg_stop
    echo "$NTABLES" >"$BENCH_DIR/ntables"
fi

# ------------------------------------------------------------------------------------------------ repository
# Wiped at every run: each mode starts from an empty repository, and a new initdb makes the old one foreign.
rm -rf "$SREPO" "$RESTORED"
mkdir -p "$SREPO"
chown postgres:postgres "$SREPO"

# ------------------------------------------------------------------------------------------------ bus
BUS_URL=local
free_port() {
    local p used
    used=$(ss -Htan 2>/dev/null | awk '{n = split($4, a, ":"); print a[n]}' | sort -u)
    for _ in $(seq 1 200); do
        p=$((20000 + RANDOM % 30000))
        grep -qx "$p" <<<"$used" || { echo "$p"; return 0; }
    done
    die "no free loopback port found"
}
nats_ready() { # the server greets a client with an INFO line that says whether JetStream is on
    local fd line=""
    { exec {fd}<>"/dev/tcp/127.0.0.1/$1"; } 2>/dev/null || return 1
    read -r -t 2 line <&"$fd" || true
    exec {fd}>&-
    [[ $line == INFO* && $line == *'"jetstream":true'* ]]
}
if ((NATS_MODE)); then
    rm -rf "$NATSDIR"
    mkdir -p "$NATSDIR/js"
    chown -R postgres:postgres "$NATSDIR"
    NATS_PORT=$(free_port)
    cat >"$NATSDIR/nats-server.conf" <<EOF
# Written by loadtest/bench-many-files.sh; follows deploy/nats/nats-server.conf where it matters to Strata.
listen: 127.0.0.1:$NATS_PORT
server_name: strata-manyfiles
max_payload: 8MB
max_pending: 64MB
jetstream {
    store_dir: $NATSDIR/js
    max_memory_store: 64MB
}
EOF
    chmod 644 "$NATSDIR/nats-server.conf"
    setpriv --reuid=postgres --regid=postgres --init-groups \
        "$NATS_SERVER" -c "$NATSDIR/nats-server.conf" >"$LOGDIR/nats-server.log" 2>&1 &
    NATS_PID=$!
    for ((i = 0; i < 300; i++)); do
        nats_ready "$NATS_PORT" && break
        kill -0 "$NATS_PID" 2>/dev/null || { tail -20 "$LOGDIR/nats-server.log" >&2; die "nats-server exited"; }
        sleep 0.1
    done
    nats_ready "$NATS_PORT" || die "nats-server not ready on 127.0.0.1:$NATS_PORT after 30 s"
    BUS_URL=nats://127.0.0.1:$NATS_PORT
    log "nats-server $("$NATS_SERVER" --version 2>&1 | head -1) pid $NATS_PID on $BUS_URL"
fi
# The binaries also read STRATA_BUS: make it say what the config says.
export STRATA_BUS=$BUS_URL

cat >"$CFG" <<EOF
# Written by loadtest/bench-many-files.sh.
bus = "$BUS_URL"

[stanza.$STANZA]
pg_data = "$PGDATA"
pg_conn = "host=$PGSOCK port=$PGPORT user=postgres dbname=postgres"

[[repo]]
name = "local"
type = "posix"
path = "$SREPO"
EOF
chmod 644 "$CFG"

# ------------------------------------------------------------------------------------------------ services
service_start() { # service_start NAME: one Strata service as postgres, up once it logs "running"
    local name=$1 pid i
    echo "----- $(date -u +%FT%TZ) start (run $RUN_ID)" >>"$LOGDIR/$name.log"
    setpriv --reuid=postgres --regid=postgres --init-groups env HOME=/var/lib/postgresql \
        "$BIN/$name" --config "$CFG" >>"$LOGDIR/$name.log" 2>&1 &
    pid=$!
    SERVICE_PIDS+=("$pid")
    SERVICE_OF[$pid]=$name
    for ((i = 0; i < 300; i++)); do
        grep -q "running" <(tail -n 5 "$LOGDIR/$name.log") && break
        kill -0 "$pid" 2>/dev/null || { tail -20 "$LOGDIR/$name.log" >&2; die "$name exited at start"; }
        sleep 0.1
    done
    grep -q "running" <(tail -n 5 "$LOGDIR/$name.log") || die "$name did not report running within 30 s (log $LOGDIR/$name.log)"
}
if ((NATS_MODE)); then
    for s in strata-collector strata-sealer strata-uploader; do service_start "$s"; done
    log "services: $(for p in "${SERVICE_PIDS[@]}"; do printf '%s=%s ' "${SERVICE_OF[$p]}" "$p"; done)"
fi
hwm_kb() { awk '/^VmHWM:/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
hwm_reset() { # peak RSS counted from now on (clear_refs 5 resets VmHWM to the current RSS)
    local p
    for p in "${SERVICE_PIDS[@]}" $NATS_PID; do echo 5 >"/proc/$p/clear_refs" 2>/dev/null || true; done
}

# ------------------------------------------------------------------------------------------------ cluster up
# archive_command is the plain `strata archive-push`, run under /usr/bin/time so that each push's peak RSS is
# logged (GNU time exits with the command's status).
: >"$ARCHIVE_TIME_LOG"
chown postgres:postgres "$ARCHIVE_TIME_LOG"
ARCHIVE_CMD="/usr/bin/time -a -o $ARCHIVE_TIME_LOG -f '%M kB %e s rc=%x' $BIN/strata --config $CFG --stanza $STANZA archive-push %p"
write_pg_conf "$ARCHIVE_CMD"
pg_start
[[ $(psql_q "SHOW archive_command") == "$ARCHIVE_CMD" ]] || die "archive_command was not applied"
strata stanza-create >"$LOGDIR/stanza-create-$MODE.log" 2>&1 ||
    { cat "$LOGDIR/stanza-create-$MODE.log" >&2; die "strata stanza-create failed"; }

DB_OID=$(psql_q "SELECT oid FROM pg_database WHERE datname = '$DB'")
BASE_FILES=$(nfiles "$PGDATA/base")
DB_FILES=$(nfiles "$PGDATA/base/$DB_OID")
PGDATA_FILES=$(nfiles "$PGDATA")
PGDATA_BYTES=$(du_bytes "$PGDATA")                                 # apparent size (du -sb)
PGDATA_DISK=$(du -s -B1 "$PGDATA" | awk '{print $1}')               # allocated blocks
NREL=$(psql_q "SELECT count(*) FROM pg_class WHERE relkind = 'r' AND relname LIKE 't\_%'" "$DB")
log "cluster: $NREL tables t_N in database $DB; base/ holds $BASE_FILES files ($DB_FILES in base/$DB_OID), the data directory $PGDATA_FILES files, $PGDATA_BYTES bytes (du -sb), $PGDATA_DISK on disk"

# ------------------------------------------------------------------------------------------------ measuring
wait_archive_idle() { # no WAL waiting for archive_command, so no push runs during the next measurement
    local i
    for ((i = 0; i < 1200; i++)); do
        [[ -z $(find "$PGDATA/pg_wal/archive_status" -name '*.ready' -print -quit) ]] && return 0
        sleep 0.1
    done
    log "warning: WAL still waiting for archive_command after 120 s (see $LOGDIR/postgresql.log)"
}

HEADER='run_id	ts	mode	op	process	rc	wall_s	peak_rss_kb	peak_rss_mib	under_limit	note'
[[ -f $RESULTS && $(head -1 "$RESULTS") == "$HEADER" ]] || { [[ -f $RESULTS ]] && mv "$RESULTS" "$RESULTS.old-$RUN_ID"; echo "$HEADER" >"$RESULTS"; }
ROWS=()   # "op|process|rc|wall|kb|note" of this run
FAILURES=0
record() { # record OP PROCESS RC WALL KB NOTE
    local ok=yes
    (($5 < RSS_LIMIT_MIB * 1024)) || ok=NO
    ((${5:-0} > 0)) || ok="?"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$RUN_ID" "$(date -u +%FT%TZ)" "$MODE" "$1" "$2" "$3" "$4" "$5" \
        "$(mib "$5")" "$ok" "$6" >>"$RESULTS"
    ROWS+=("$1|$2|$3|$4|$5|$ok")
    log "  $1 $2: rc=$3 wall=${4}s peak_rss=$(mib "$5") MiB (under $RSS_LIMIT_MIB MiB: $ok)"
}

# run_timed NAME CMD...: as postgres under /usr/bin/time -v, after sync and a pause. Sets RC WALL MAXRSS.
run_timed() {
    local name=$1; shift
    local tf=$TMPD/time.$name t0 t1
    rm -f "$tf"
    wait_archive_idle
    sync
    sleep "$PAUSE"
    if [[ ${RESET_HWM:-1} == 1 ]]; then hwm_reset; fi
    t0=$(date +%s.%N)
    as_pg /usr/bin/time -v -o "$tf" "$@" >"$LOGDIR/$name.log" 2>&1 &
    CMD_PID=$!
    set +e
    wait "$CMD_PID"
    RC=$?
    set -e
    t1=$(date +%s.%N)
    CMD_PID=""
    WALL=$(awk -v a="$t0" -v b="$t1" 'BEGIN{printf "%.2f", b - a}')
    MAXRSS=$(awk -F': ' '/Maximum resident/{print $2}' "$tf" 2>/dev/null || true)
    MAXRSS=${MAXRSS:-0}
    cp -f "$tf" "$LOGDIR/$name.time" 2>/dev/null || true
    if ((RC != 0)); then
        log "FAILED (rc=$RC): $* -- log $LOGDIR/$name.log:"
        grep -v '^Command exited with non-zero status' "$LOGDIR/$name.log" | tail -n 5 | sed 's/^/    /' >&2 || true
        FAILURES=$((FAILURES + 1))
    fi
}
# record_services OP: each service's and nats-server's VmHWM since the last hwm_reset
record_services() {
    ((NATS_MODE)) || return 0
    local p
    for p in "${SERVICE_PIDS[@]}"; do record "$1" "${SERVICE_OF[$p]}" - - "$(hwm_kb "$p")" "VmHWM pid $p"; done
    record "$1" nats-server - - "$(hwm_kb "$NATS_PID")" "VmHWM pid $NATS_PID"
}
said() { # the line a strata command printed last that is not /usr/bin/time's
    grep -v '^Command exited with non-zero status' "$1" | grep -v '^[[:space:]]*$' | tail -n 1
}

BUS_NOTE="bus=$BUS_URL"
# 1. full
log "full backup ($NTABLES tables, $BASE_FILES files under base/)"
# VmHWM is not reset before the full: the services' full rows cover their start, stanza-create and the full.
RESET_HWM=0 run_timed "$MODE-full" "$BIN/strata" --config "$CFG" --stanza "$STANZA" backup
FULL_SAID=$(said "$LOGDIR/$MODE-full.log")
FULL_LABEL=$(grep -m1 -oE 'backup [0-9]{8}-[0-9]{6}F committed' "$LOGDIR/$MODE-full.log" | awk '{print $2}' || true)
record full "strata backup" "$RC" "$WALL" "$MAXRSS" "$BUS_NOTE; said: $FULL_SAID"
record_services full

# 2. a few changed tables, then the incremental
psql_q "DO \$\$ BEGIN FOR i IN 1..$UPDATE_TABLES LOOP
            EXECUTE format('UPDATE t_%s SET v = v || '' changed $RUN_ID''', i);
        END LOOP; END \$\$" "$DB"
log "updated $UPDATE_TABLES tables (t_1..t_$UPDATE_TABLES); incremental backup"
run_timed "$MODE-incr" "$BIN/strata" --config "$CFG" --stanza "$STANZA" backup --type incr
INCR_SAID=$(said "$LOGDIR/$MODE-incr.log")
INCR_RC=$RC
INCR_LABEL=$(grep -m1 -oE 'backup [0-9]{8}-[0-9]{6}I committed' "$LOGDIR/$MODE-incr.log" | awk '{print $2}' || true)
record incr "strata backup --type incr" "$RC" "$WALL" "$MAXRSS" "$BUS_NOTE; said: $INCR_SAID"
record_services incr

# 3. info
INFO_JSON=$LOGDIR/$MODE-info.json
t0=$(date +%s.%N)
as_pg /usr/bin/time -v -o "$TMPD/time.$MODE-info" "$BIN/strata" --config "$CFG" --stanza "$STANZA" info --output json \
    >"$INFO_JSON" 2>"$LOGDIR/$MODE-info.err" && RC=0 || RC=$?
WALL=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.2f", b - a}')
MAXRSS=$(awk -F': ' '/Maximum resident/{print $2}' "$TMPD/time.$MODE-info" 2>/dev/null || echo 0)
record info "strata info --output json" "$RC" "$WALL" "${MAXRSS:-0}" "json: $INFO_JSON"
INFO_SUMMARY=$(jq -r '
    [.. | objects | select(has("label") and (has("backup_type") or has("type")))] | unique_by(.label) | .[] |
    [.label, (.backup_type // .type), (.reference // "-"),
     ((.database_bytes // .size // "?") | tostring), ((.read_bytes // "?") | tostring),
     ((.sent_bytes // "?") | tostring), ((.stored_bytes // .repo_size // "?") | tostring),
     ((.files // .file_count // "?") | tostring)] | @tsv' "$INFO_JSON" 2>/dev/null || true)
[[ -n $INFO_SUMMARY ]] && log "info: label type reference database read sent stored files:"$'\n'"$INFO_SUMMARY"

# 4. restore of the incremental (of the newest backup when the incremental failed)
RESTORE_SET=${INCR_LABEL:-$FULL_LABEL}
if [[ -n $RESTORE_SET ]]; then
    [[ -n $INCR_LABEL ]] || log "no incremental: restoring the full backup $FULL_LABEL instead"
    rm -rf "$RESTORED"; mkdir -p "$RESTORED"; chmod 700 "$RESTORED"; chown postgres:postgres "$RESTORED"
    run_timed "$MODE-restore" "$BIN/strata" --config "$CFG" --stanza "$STANZA" restore --pg-data "$RESTORED" --set "$RESTORE_SET"
    R_FILES=$(nfiles "$RESTORED"); R_BASE=$(nfiles "$RESTORED/base"); R_BYTES=$(du_bytes "$RESTORED")
    ok=yes; [[ -f $RESTORED/PG_VERSION && -f $RESTORED/global/pg_control && -d $RESTORED/base ]] || ok=no
    if [[ $ok == no && $RC == 0 ]]; then RC=99; FAILURES=$((FAILURES + 1)); fi
    record restore "strata restore --set $RESTORE_SET" "$RC" "$WALL" "$MAXRSS" \
        "files=$R_FILES base_files=$R_BASE bytes=$R_BYTES data_dir_ok=$ok said: $(said "$LOGDIR/$MODE-restore.log")"
    record_services restore
    log "restored $R_FILES files ($R_BASE under base/), $R_BYTES bytes, data dir ok: $ok"
    [[ $KEEP_RESTORE == 1 ]] || rm -rf "$RESTORED"
else
    log "no backup to restore"
fi

# 5. archive-push (every push of this run, run by PostgreSQL's archiver), and the services once more
wait_archive_idle
AP_N=$(grep -c ' kB ' "$ARCHIVE_TIME_LOG" || true)
AP_KB=$(awk '$2 == "kB" && $1 + 0 > m { m = $1 + 0 } END { print m + 0 }' "$ARCHIVE_TIME_LOG")
AP_FAIL=$(grep -c 'rc=[1-9]' "$ARCHIVE_TIME_LOG" || true)
record wal "strata archive-push (max of $AP_N)" "$( ((AP_FAIL == 0)) && echo 0 || echo "$AP_FAIL failed")" - "$AP_KB" \
    "pushes=$AP_N failed=$AP_FAIL log=$ARCHIVE_TIME_LOG"
if ((NATS_MODE)); then
    # Just before stopping them: VmHWM since the reset before the restore. A service's lifetime peak is the
    # largest of its rows: VmHWM was only reset before the incremental and before the restore.
    record_services "before-stop"
fi

# ------------------------------------------------------------------------------------------------ report
SUMMARY=$BENCH_DIR/summary-$MODE-$RUN_ID.txt
{
    echo "== run $RUN_ID, bus $BUS_URL, $STRATA_VERSION ($STRATA_BIN, built $(date -u -r "$STRATA_BIN/strata" +%FT%TZ)), ${PIPE_ENV:-pipeline defaults}"
    echo "cluster: $NREL tables in database $DB; base/ $BASE_FILES files; data directory $PGDATA_FILES files, $PGDATA_BYTES bytes (du -sb), $PGDATA_DISK on disk"
    printf '%-11s %-42s %-10s %9s %13s %s\n' op process rc wall_s peak_RSS_MiB "under ${RSS_LIMIT_MIB}MiB"
    for r in "${ROWS[@]}"; do
        IFS='|' read -r op proc rc wall kb ok <<<"$r"
        printf '%-11s %-42s %-10s %9s %13s %s\n' "$op" "$proc" "$rc" "$wall" "$(mib "$kb")" "$ok"
    done
    max_kb=0; all_ok=yes
    for r in "${ROWS[@]}"; do
        IFS='|' read -r op proc rc wall kb ok <<<"$r"
        ((kb > max_kb)) && max_kb=$kb
        [[ $ok == yes ]] || all_ok=no
    done
    echo "largest peak RSS: $(mib "$max_kb") MiB; every process under $RSS_LIMIT_MIB MiB: $all_ok"
    echo "repository: $(du_bytes "$SREPO") bytes (du -sb $SREPO, WAL included)"
    echo "full:    ${FULL_SAID:--}"
    echo "incr:    ${INCR_SAID:--}"
    [[ -n $INFO_SUMMARY ]] && { echo "info (label type reference database read sent stored files):"; echo "$INFO_SUMMARY"; }
    echo "rows: $RESULTS (run_id $RUN_ID); logs: $LOGDIR"
} >"$SUMMARY"
echo >&2
cat "$SUMMARY" >&2
((FAILURES == 0)) || die "$FAILURES command(s) failed; see above (incr rc=$INCR_RC)"
