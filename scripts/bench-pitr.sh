#!/usr/bin/env bash
# Restore and WAL replay, Strata against pgBackRest on the same pgbench database, in one run: the figures
# for point-in-time recovery (issue 4).
#
#   sudo scripts/bench-pitr.sh                         # pgbench scale 100, 3 reps
#   sudo SCALE=20 REPS=1 scripts/bench-pitr.sh         # quicker
#   sudo BIN=/path/to/release scripts/bench-pitr.sh     # other Strata binaries
#
# One cluster archives every segment to both tools (archive_command runs both pushes); each tool takes a
# full backup of it. Then, REPS times, interleaved (page cache warm, as it is for both):
#   1. full restore into an empty directory: `strata restore`, `pgbackrest restore`;
#   2. delta restore over a copy that replayed to the backup's end, ran DELTA_TX pgbench transactions and
#      a checkpoint (the same bytes for both tools: one copy, duplicated): `strata restore --delta`,
#      `pgbackrest restore --delta`; bytes written as each tool reports them (Strata's summary line;
#      pgBackRest's detail log, the files it restored rather than found matching; it writes whole files).
#      The kernel's own count (/proc/PID/io write_bytes) is not used: on this VM it also counts a
#      process's unmapped anonymous memory, which made Strata's 7 MB of writes look like 79 MB;
#   3. replay of a WAL backlog (BACKLOG_TX pgbench transactions archived after the backups) from the
#      archive, starting PostgreSQL on a fresh restore: Strata's archive-get without prefetch and with
#      --wal-prefetch PREFETCH, pgBackRest's archive-get synchronous and asynchronous (archive-async,
#      spool, queue of 1 GiB). The time is PostgreSQL's own "redo done ... elapsed".
# Prints every run, then medians. Needs PostgreSQL 15, pgBackRest (scripts/install-deps.sh) and built
# Strata binaries (default: target/release, `cargo build --release --bins`). Runs as root; the cluster and
# both tools run as postgres. Uses BENCH_DIR (default /tmp/strata-pitr-bench) and port PORT.
set -euo pipefail

HERE=$(cd "$(dirname "$0")/.." && pwd)
BIN=${BIN:-$HERE/target/release}
BENCH_DIR=${BENCH_DIR:-/tmp/strata-pitr-bench}
SCALE=${SCALE:-100}
REPS=${REPS:-3}
DELTA_TX=${DELTA_TX:-2000}
BACKLOG_TX=${BACKLOG_TX:-60000}
PREFETCH=${PREFETCH:-8}
PORT=${PORT:-14432}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}

log() { printf '%s %s\n' "$(date +%T)" "$*" >&2; }
as_pg() { runuser -u postgres -- "$@"; }
[[ $(id -u) == 0 ]] || { echo "run as root (the cluster runs as postgres)" >&2; exit 2; }
[[ -x $BIN/strata ]] || { echo "no $BIN/strata: cargo build --release --bins, or set BIN" >&2; exit 2; }
command -v pgbackrest >/dev/null || { echo "pgbackrest is not installed (scripts/install-deps.sh)" >&2; exit 2; }

SRC=$BENCH_DIR/src
CONF=$BENCH_DIR/strata.toml
BRCONF=$BENCH_DIR/pgbackrest.conf
RESULTS=$BENCH_DIR/results.tsv
STRATA="$BIN/strata --config $CONF --stanza bench"
BR="pgbackrest --config=$BRCONF --stanza=bench"

stop_pg() { # stop_pg DATADIR: fast shutdown by the pid in postmaster.pid
    local pid
    [[ -f $1/postmaster.pid ]] || return 0
    pid=$(head -1 "$1/postmaster.pid")
    kill -INT "$pid" 2>/dev/null || return 0
    while kill -0 "$pid" 2>/dev/null; do sleep 0.1; done
}

cleanup() {
    for d in "$BENCH_DIR"/*/; do stop_pg "$d"; done 2>/dev/null || true
}
trap cleanup EXIT

cleanup
rm -rf "$BENCH_DIR"
mkdir -p "$BENCH_DIR"/{strata-repo,br-repo,br-log,br-lock,br-spool}
chown -R postgres: "$BENCH_DIR"
chmod 755 "$BENCH_DIR"

cat > "$CONF" <<EOF
bus = "local"
[stanza.bench]
pg_data = "$SRC"
pg_conn = "host=$BENCH_DIR port=$PORT user=postgres dbname=postgres"
[[repo]]
name = "local"
type = "posix"
path = "$BENCH_DIR/strata-repo"
EOF
cat > "$BRCONF" <<EOF
[global]
repo1-path=$BENCH_DIR/br-repo
repo1-retention-full=99
compress-type=zst
compress-level=1
process-max=2
start-fast=y
log-level-console=warn
log-level-file=off
lock-path=$BENCH_DIR/br-lock
spool-path=$BENCH_DIR/br-spool
archive-async=n
archive-get-queue-max=1GiB

[bench]
pg1-path=$SRC
pg1-port=$PORT
pg1-socket-path=$BENCH_DIR
EOF
chmod 644 "$CONF" "$BRCONF"

log "cluster: initdb, pgbench -i -s $SCALE"
as_pg "$PGBIN/initdb" -D "$SRC" -k --auth=trust -U postgres --no-sync >/dev/null
cat >> "$SRC/postgresql.conf" <<EOF
port = $PORT
listen_addresses = ''
unix_socket_directories = '$BENCH_DIR'
wal_level = replica
archive_mode = on
archive_command = '$STRATA archive-push %p && $BR archive-push %p'
max_wal_size = 4GB
shared_buffers = 256MB
logging_collector = off
EOF
as_pg "$PGBIN/pg_ctl" -D "$SRC" -l "$BENCH_DIR/src.log" -w start >/dev/null
PSQL="$PGBIN/psql -X -q -A -t -h $BENCH_DIR -p $PORT -U postgres postgres"
as_pg $STRATA stanza-create >/dev/null
as_pg $BR stanza-create >/dev/null
as_pg "$PGBIN/pgbench" -i -q -s "$SCALE" -h "$BENCH_DIR" -p "$PORT" postgres >/dev/null 2>&1

wait_archived() { # forces a switch and waits until the archiver has passed it
    local seg
    seg=$(as_pg $PSQL -c "SELECT pg_walfile_name(pg_switch_wal())")
    until [[ "$(as_pg $PSQL -c "SELECT coalesce(last_archived_wal, '') >= '$seg' FROM pg_stat_archiver")" == t ]]; do sleep 0.5; done
}
wait_archived
log "backups"
as_pg $STRATA backup --type full >/dev/null
as_pg $BR backup --type=full >/dev/null
DB_BYTES=$(as_pg $PSQL -c "SELECT sum(pg_database_size(datname)) FROM pg_database")

log "WAL backlog: $BACKLOG_TX pgbench transactions"
LSN0=$(as_pg $PSQL -c "SELECT pg_current_wal_lsn()")
as_pg "$PGBIN/pgbench" -n -c 4 -j 2 -t $((BACKLOG_TX / 4)) -h "$BENCH_DIR" -p "$PORT" postgres >/dev/null 2>&1
BACKLOG_BYTES=$(as_pg $PSQL -c "SELECT pg_current_wal_lsn() - '$LSN0'::pg_lsn")
wait_archived
stop_pg "$SRC"

printf 'tool\top\trep\tseconds\twritten_bytes\tnote\n' > "$RESULTS"
record() { printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$@" >> "$RESULTS"; log "$*"; }

timed() { # timed CMD...: runs it as postgres; sets SECS, output in $BENCH_DIR/last.out
    local start
    start=$(date +%s.%N)
    runuser -u postgres -- "$@" > "$BENCH_DIR/last.out" 2>&1 || { cat "$BENCH_DIR/last.out" >&2; exit 1; }
    SECS=$(awk "BEGIN { printf \"%.2f\", $(date +%s.%N) - $start }")
}

strata_wrote() { # bytes after "wrote " in Strata's delta summary
    grep -o 'wrote [0-9.]* [KMGT]*i*B' "$BENCH_DIR/last.out" | awk '{ u = $3; m = 1
        if (u == "KiB") m = 1024; if (u == "MiB") m = 1048576; if (u == "GiB") m = 1073741824; printf "%.0f", $2 * m }'
}

pgbackrest_wrote() { # bytes of the files pgBackRest's detail log says it restored (not found matching)
    grep 'DETAIL: restore file' "$BENCH_DIR/last.out" | grep -v ' - exists and ' |
        sed 's/.*(\([0-9.]*\)\([KMG]*B\), .*/\1 \2/' | awk '{ m = 1
            if ($2 == "KB") m = 1024; if ($2 == "MB") m = 1048576; if ($2 == "GB") m = 1073741824; s += $1 * m }
            END { printf "%.0f", s }'
}

boot() { # boot DATADIR LOG: starts a restored copy (not archiving), waits for recovery to end; sets REDO
    as_pg "$PGBIN/pg_ctl" -D "$1" -l "$2" -w -t 3600 -o "-c port=$((PORT + 1)) -c archive_mode=off -c unix_socket_directories=$BENCH_DIR" start >/dev/null
    until [[ "$(as_pg "$PGBIN/psql" -X -q -A -t -h "$BENCH_DIR" -p $((PORT + 1)) -U postgres postgres -c 'SELECT pg_is_in_recovery()' 2>/dev/null)" == f ]]; do sleep 0.2; done
    REDO=$(grep -o 'redo done at .*elapsed: [0-9.]* s' "$2" | tail -1 | sed 's/.*elapsed: \([0-9.]*\) s/\1/')
}

restore_strata() { as_pg $STRATA restore --pg-data "$@"; }
for rep in $(seq 1 "$REPS"); do
    # 1. Full restores.
    rm -rf "$BENCH_DIR/r-strata" "$BENCH_DIR/r-br"
    timed $STRATA restore --pg-data "$BENCH_DIR/r-strata" --type immediate
    record strata full-restore "$rep" "$SECS" "$DB_BYTES" ""
    install -d -o postgres -g postgres -m 700 "$BENCH_DIR/r-br"
    timed $BR --pg1-path="$BENCH_DIR/r-br" restore --type=immediate --target-action=promote
    record pgbackrest full-restore "$rep" "$SECS" "$DB_BYTES" ""

    # 2. Delta restores over the same moved-on copy.
    boot "$BENCH_DIR/r-strata" "$BENCH_DIR/delta-$rep.log"
    as_pg "$PGBIN/pgbench" -n -c 2 -j 2 -t $((DELTA_TX / 2)) -h "$BENCH_DIR" -p $((PORT + 1)) postgres >/dev/null 2>&1
    as_pg "$PGBIN/psql" -X -q -h "$BENCH_DIR" -p $((PORT + 1)) -U postgres postgres -c CHECKPOINT
    stop_pg "$BENCH_DIR/r-strata"
    rm -rf "$BENCH_DIR/r-br"
    cp -a "$BENCH_DIR/r-strata" "$BENCH_DIR/r-br"
    timed $STRATA restore --pg-data "$BENCH_DIR/r-strata" --delta --type immediate
    record strata delta-restore "$rep" "$SECS" "$(strata_wrote)" "$(grep -o 'read .* files;' "$BENCH_DIR/last.out")"
    timed $BR --pg1-path="$BENCH_DIR/r-br" restore --delta --type=immediate --target-action=promote --log-level-console=detail
    record pgbackrest delta-restore "$rep" "$SECS" "$(pgbackrest_wrote)" ""

    # 3. Replay of the WAL backlog.
    for variant in strata-0 "strata-$PREFETCH" pgbackrest-sync pgbackrest-async; do
        d=$BENCH_DIR/w-$variant
        rm -rf "$d" "$BENCH_DIR/br-spool"/*
        case $variant in
            strata-*) restore_strata "$d" --wal-prefetch "${variant#strata-}" >/dev/null ;;
            pgbackrest-*)
                [[ $variant == pgbackrest-async ]] && async=y || async=n
                sed -i "s/^archive-async=.*/archive-async=$async/" "$BRCONF"
                install -d -o postgres -g postgres -m 700 "$d"
                as_pg $BR --pg1-path="$d" restore >/dev/null ;;
        esac
        start=$(date +%s.%N)
        boot "$d" "$BENCH_DIR/replay-$variant-$rep.log"
        wall=$(awk "BEGIN { printf \"%.1f\", $(date +%s.%N) - $start }")
        stop_pg "$d"
        record "${variant%%-*}" "replay-${variant#*-}" "$rep" "$REDO" 0 "wall ${wall}s"
        rm -rf "$d"
    done
    sed -i 's/^archive-async=.*/archive-async=n/' "$BRCONF"
done

echo
echo "pgbench scale $SCALE: database $((DB_BYTES / 1048576)) MiB; WAL backlog $((BACKLOG_BYTES / 1048576)) MiB ($BACKLOG_TX transactions); delta after $DELTA_TX transactions; $REPS reps; $(nproc) cores"
awk -F'\t' 'NR > 1 { k = $1 " " $2; n[k]++; s[k] = s[k] " " $4; w[k] = w[k] " " $5 }
    function median(list,   a, c, i, j, t) { c = split(list, a, " "); for (i = 1; i <= c; i++) for (j = i + 1; j <= c; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }; return a[int((c + 1) / 2)] }
    END { printf "%-34s %10s %16s\n", "tool / measure", "median s", "median written"; for (k in n) printf "%-34s %10.2f %16.0f\n", k, median(s[k]), median(w[k]) }' "$RESULTS" | sort
echo "(every run: $RESULTS)"
