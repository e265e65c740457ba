# lib.sh: shared by bench-full.sh and bench-incr.sh (sourced, not run): the dataset (DATASET=pgbench|oltp) and
# the NATS bus (nats-server plus the three Strata services). Only functions; they use the calling script's
# globals (PGDATA, PGSOCK, PGPORT, PGBIN, BENCH_DIR, LOGDIR, TMPD, BIN, CFG, NATSDIR, NATS_SERVER, SERVICE_PIDS,
# SERVICE_OF, NATS_PID, CMD_PID) and helpers (log, die, as_pg, psql_q, stop_pid), defined before any is called.
# shellcheck shell=bash disable=SC2034 # (globals set here are read by the calling scripts)

LIB_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)

# ------------------------------------------------------------------------------------------------ dataset
# DATASET=pgbench: `pgbench -i -s $SCALE` (scale 100 is about 1.6 GB; zstd -1 compresses its tables about 40x).
# DATASET=oltp: loadtest/oltp.sql, an OLTP table mix (customers, orders, order_lines, events with jsonb; primary
# keys and five secondary indexes) of about $OLTP_MB MB (pg_database_size) that zstd -1 compresses about 2.4x.
# Each dataset has its own cluster directory by default, so REUSE=1 works for both.

# dataset_defaults: before the script's paths are set. Default BENCH_DIR and PGPORT per dataset.
dataset_defaults() {
    DATASET=${DATASET:-pgbench}
    OLTP_MB=${OLTP_MB:-1500}
    case $DATASET in
    pgbench) BENCH_DIR=${BENCH_DIR:-/tmp/strata-loadtest}; PGPORT=${PGPORT:-55433} ;;
    oltp) BENCH_DIR=${BENCH_DIR:-/tmp/strata-loadtest-oltp}; PGPORT=${PGPORT:-55435} ;;
    *) printf 'error: DATASET must be pgbench or oltp, not %s\n' "'$DATASET'" >&2; exit 1 ;;
    esac
}

# dataset_setup: after the checks. Sets DATASET_ID (what $BENCH_DIR/dataset records), DATASET_DESC (for humans),
# MAIN_TABLE (the table the churn changes most: its size and changed pages are reported) and OLTP_NCUST.
OLTP_FIXED_BYTES=12000000   # empty database plus oltp_words
OLTP_BYTES_PER_CUSTOMER=7930 # tables and indexes per customer (6 orders, ~18 lines, 4 events), measured at 150 MB
dataset_setup() {
    case $DATASET in
    pgbench)
        DATASET_ID="pgbench scale=$SCALE"
        DATASET_DESC="pgbench scale $SCALE"
        MAIN_TABLE=pgbench_accounts
        ;;
    oltp)
        [[ $OLTP_MB =~ ^[0-9]+$ ]] && ((OLTP_MB >= 20)) || die "OLTP_MB must be a number of MB, at least 20, not '$OLTP_MB'"
        OLTP_NCUST=$(((OLTP_MB * 1000000 - OLTP_FIXED_BYTES) / OLTP_BYTES_PER_CUSTOMER))
        DATASET_ID="oltp mb=$OLTP_MB"
        DATASET_DESC="oltp $OLTP_MB MB"
        MAIN_TABLE=orders
        ;;
    esac
}

# dataset_reusable: $PGDATA holds a cluster loaded with this dataset (REUSE=1 keeps it). Clusters made before
# DATASET existed have only $BENCH_DIR/scale: they are pgbench clusters.
dataset_reusable() {
    [[ -f $PGDATA/PG_VERSION ]] || return 1
    if [[ -f $BENCH_DIR/dataset ]]; then
        [[ $(cat "$BENCH_DIR/dataset") == "$DATASET_ID" ]]
    else
        [[ $DATASET == pgbench && -f $BENCH_DIR/scale && $(cat "$BENCH_DIR/scale") == "$SCALE" ]]
    fi
}
dataset_forget() { rm -f "$BENCH_DIR/dataset" "$BENCH_DIR/scale"; }
dataset_mark() {
    echo "$DATASET_ID" >"$BENCH_DIR/dataset"
    if [[ $DATASET == pgbench ]]; then echo "$SCALE" >"$BENCH_DIR/scale"; fi
}

# oltp_step NAME schema part1 part2 finish: one psql run of oltp.sql (root opens the file: postgres may not read
# the checkout), logged to logs/oltp-load-NAME.log.
oltp_step() {
    as_pg "$PGBIN/psql" -h "$PGSOCK" -p "$PGPORT" -U postgres -d bench -Xq -v ON_ERROR_STOP=1 \
        -v ncust="$OLTP_NCUST" -v schema="$2" -v part1="$3" -v part2="$4" -v finish="$5" -f - \
        <"$LIB_DIR/oltp.sql" >"$LOGDIR/oltp-load-$1.log" 2>&1
}

# dataset_load: fills the (running, empty) `bench` database.
dataset_load() {
    local t0 p1 p2 rc1 rc2
    t0=$(date +%s.%N)
    case $DATASET in
    pgbench)
        log "pgbench -i -s $SCALE"
        as_pg "$PGBIN/pgbench" -i -s "$SCALE" -h "$PGSOCK" -p "$PGPORT" -U postgres bench >"$LOGDIR/pgbench-init.log" 2>&1 ||
            { tail -20 "$LOGDIR/pgbench-init.log" >&2; die "pgbench -i failed"; }
        log "pgbench -i took $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b - a}') s"
        ;;
    oltp)
        log "oltp dataset: $OLTP_NCUST customers (about $OLTP_MB MB), loadtest/oltp.sql in two sessions"
        oltp_step schema 1 0 0 0 || { tail -20 "$LOGDIR/oltp-load-schema.log" >&2; die "oltp.sql (schema) failed"; }
        oltp_step part1 0 1 0 0 & p1=$!
        oltp_step part2 0 0 1 0 & p2=$!
        rc1=0; rc2=0
        wait "$p1" || rc1=$?
        wait "$p2" || rc2=$?
        ((rc1 == 0)) || { tail -20 "$LOGDIR/oltp-load-part1.log" >&2; die "oltp.sql (customers, orders) failed"; }
        ((rc2 == 0)) || { tail -20 "$LOGDIR/oltp-load-part2.log" >&2; die "oltp.sql (order_lines, events) failed"; }
        oltp_step finish 0 0 0 1 || { tail -20 "$LOGDIR/oltp-load-finish.log" >&2; die "oltp.sql (finish) failed"; }
        log "oltp load took $(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN{printf "%.1f", b - a}') s: $(psql_q "
            SELECT string_agg(format('%s %s rows %s MB', relname, reltuples::bigint, round(pg_total_relation_size(oid) / 1e6)), ', ' ORDER BY relname)
            FROM pg_class WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace" bench); database $(psql_q "SELECT pg_database_size('bench')") bytes"
        ;;
    esac
}

# dataset_churn_args: sets CHURN_ARGS, pgbench's arguments (besides -n -T -c -j and the connection) for the
# fixed churn between a full and an incremental backup. pgbench: its built-in TPC-B. oltp: loadtest/oltp-churn.sql
# (copied into $BENCH_DIR for the postgres user), over the customers and orders that exist now.
dataset_churn_args() {
    CHURN_ARGS=()
    [[ $DATASET == oltp ]] || return 0
    install -m 0644 -o postgres -g postgres "$LIB_DIR/oltp-churn.sql" "$BENCH_DIR/oltp-churn.sql"
    CHURN_ARGS=(-f "$BENCH_DIR/oltp-churn.sql" -D "ncust=$(psql_q "SELECT max(id) FROM customers" bench)"
        -D "norders=$(psql_q "SELECT max(id) FROM orders" bench)")
}

# dataset_heap_file: "TABLE PATH": the largest table of `bench` and the path of its first segment (main fork).
dataset_heap_file() {
    local row
    row=$(psql_q "SELECT relname || ' ' || pg_relation_filepath(oid) FROM pg_class
                  WHERE relkind = 'r' AND relnamespace = 'public'::regnamespace
                  ORDER BY pg_relation_size(oid) DESC LIMIT 1" bench)
    echo "${row%% *} $PGDATA/${row#* }"
}

# ------------------------------------------------------------------------------------------------ NATS bus
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

# bus_start: in NATS mode, nats-server (config after deploy/nats/nats-server.conf) on a free loopback port, run as
# postgres through setpriv so that NATS_PID is the server's own pid. Sets BUS_URL ("local" otherwise) and exports
# STRATA_BUS with it, so the binaries' own STRATA_BUS override agrees with the config.
bus_start() {
    BUS_URL=local
    if ((NATS_MODE)); then
        local i
        rm -rf "$NATSDIR"
        mkdir -p "$NATSDIR/js"
        chown -R postgres:postgres "$NATSDIR"
        NATS_PORT=$(free_port)
        cat >"$NATSDIR/nats-server.conf" <<EOF
# Written by loadtest/lib.sh; follows deploy/nats/nats-server.conf where it matters to Strata.
listen: 127.0.0.1:$NATS_PORT
server_name: strata-loadtest
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
    export STRATA_BUS=$BUS_URL
}

service_start() { # service_start NAME: one Strata service as postgres, up once it logs "running"
    local name=$1 pid i
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
    grep -q "running" "$LOGDIR/$name.log" || die "$name did not report running within 30 s (log $LOGDIR/$name.log)"
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
# The uploader keeps the repository's chunk index in memory from its first lookup on, so after the repository
# is wiped the services are restarted (which also resets their peak RSS).
services_restart() {
    ((NATS_MODE)) || return 0
    services_stop
    local s
    for s in strata-collector strata-sealer strata-uploader; do
        echo "----- $(date -u +%FT%TZ) start" >>"$LOGDIR/$s.log"
        service_start "$s"
    done
    log "services: $(for p in "${SERVICE_PIDS[@]}"; do printf '%s=%s ' "${SERVICE_OF[$p]}" "$p"; done)"
}
services_reset_hwm() { # peak RSS counted from now on (clear_refs 5 resets VmHWM)
    local p
    for p in "${SERVICE_PIDS[@]}" $NATS_PID; do echo 5 >"/proc/$p/clear_refs" 2>/dev/null || true; done
}
cpu_ticks() { # utime + stime of a process, in clock ticks (fields 14 and 15 of /proc/PID/stat, after the name)
    awk '{ sub(/^.*\) /, ""); print $12 + $13 }' "/proc/$1/stat" 2>/dev/null || echo 0
}
hwm_kb() { awk '/^VmHWM:/{print $2}' "/proc/$1/status" 2>/dev/null || echo 0; }
services_hwm_kb() { # sum of the services' VmHWM
    local p sum=0
    for p in "${SERVICE_PIDS[@]}"; do sum=$((sum + $(hwm_kb "$p"))); done
    echo "$sum"
}

# ------------------------------------------------------------------------------------------------ verdicts
# verdict VALUE OP LIMIT: PASS or FAIL (OP is le or ge); "-" when VALUE is empty.
verdict() {
    [[ -n $1 ]] || { echo -; return 0; }
    awk -v v="$1" -v op="$2" -v l="$3" 'BEGIN { ok = (op == "le") ? (v + 0 <= l + 0) : (v + 0 >= l + 0); print ok ? "PASS" : "FAIL" }'
}
