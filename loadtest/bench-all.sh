#!/usr/bin/env bash
# bench-all.sh: the whole comparison in one run: bench-full.sh (full backup, restore; Strata, pgBackRest,
# pg_basebackup) and bench-incr.sh (incremental after a fixed pgbench run) for each dataset and each bus mode,
# then one combined table with the issue's targets and the machine's limits.
#
#   sudo STRATA_BIN=/path/to/release loadtest/bench-all.sh                           # pgbench 100 + oltp 1500 MB
#   sudo SCALE=10 OLTP_MB=150 REPS=1 INCR_REPS=1 STRATA_BIN=... loadtest/bench-all.sh   # quick check (~8 min)
#   sudo REUSE=1 BUSES=local loadtest/bench-all.sh                                   # loaded clusters, no NATS
#
# Order, per dataset: bench-full.sh for each bus (the first one with LIMITS=1), then bench-incr.sh for each bus
# (the incrementals' churn changes the cluster, so the full backups go first). The first script of a dataset loads
# its cluster unless REUSE=1 finds it; the later ones reuse it. A script that fails is reported in the table and
# the others still run. Each dataset keeps its own cluster directory (BENCH_DIR_PGBENCH, BENCH_DIR_OLTP).
#
# Env knobs (everything else, e.g. SCALE, OLTP_MB, STRATA_PIPELINE, PGBR_LEVEL, PROCESS_MAX, PAUSE, CHURN_SECS,
# PGBB_WAL, is passed through to the scripts):
#   DATASETS           datasets to run (default "pgbench oltp")
#   BUSES              bus modes (default "local nats"; nats = STRATA_BUS=nats://, a local nats-server)
#   REPS               bench-full.sh reps (default 3)
#   INCR_REPS          bench-incr.sh reps (default 2)
#   REUSE              1: the first script of each dataset reuses a loaded cluster too (default 0)
#   LIMITS             1: limits.sh once per dataset, in its first bench-full.sh (default 1)
#   STRATA_BIN         directory with the four Strata binaries; unset: `cargo build --release --bins` once.
#                      They are copied into $OUT_DIR/bin once, so every script measures the same build.
#   BENCH_DIR_PGBENCH  cluster and work directory of the pgbench dataset (default /tmp/strata-loadtest)
#   BENCH_DIR_OLTP     the same for the oltp dataset (default /tmp/strata-loadtest-oltp)
#   OUT_DIR            logs, key=value files and the combined summary (default /tmp/strata-loadtest-all/<run_id>)
#   REPORT_ONLY        1: run nothing, only rebuild $OUT_DIR/summary.txt from the key=value files in OUT_DIR
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO_ROOT=$(cd "$HERE/.." && pwd)
RUN_ID=$(date -u +%Y%m%dT%H%M%SZ)

DATASETS=${DATASETS:-"pgbench oltp"}
BUSES=${BUSES:-"local nats"}
REPS=${REPS:-3}
INCR_REPS=${INCR_REPS:-2}
REUSE=${REUSE:-0}
LIMITS=${LIMITS:-1}
STRATA_BIN=${STRATA_BIN:-}
BENCH_DIR_PGBENCH=${BENCH_DIR_PGBENCH:-/tmp/strata-loadtest}
BENCH_DIR_OLTP=${BENCH_DIR_OLTP:-/tmp/strata-loadtest-oltp}
OUT_DIR=${OUT_DIR:-/tmp/strata-loadtest-all/$RUN_ID}
REPORT_ONLY=${REPORT_ONLY:-0}

log() { printf '[%(%H:%M:%S)T] bench-all: %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }

[[ $(id -u) -eq 0 ]] || die "run as root (the scripts run PostgreSQL and the tools as postgres)"
[[ -z ${BENCH_DIR:-} ]] || die "BENCH_DIR would put both datasets in one directory: set BENCH_DIR_PGBENCH / BENCH_DIR_OLTP"
[[ -z ${PGPORT:-} ]] || die "PGPORT: each dataset has its own default port (55433, 55435); unset it"
[[ -z ${DATASET:-} ]] || die "DATASET: use DATASETS (\"pgbench oltp\")"
[[ -z ${STRATA_BUS:-} ]] || die "STRATA_BUS: use BUSES (\"local nats\")"
for d in $DATASETS; do [[ $d == pgbench || $d == oltp ]] || die "DATASETS: '$d' is not pgbench or oltp"; done
for b in $BUSES; do [[ $b == local || $b == nats ]] || die "BUSES: '$b' is not local or nats"; done
for n in REPS INCR_REPS; do [[ ${!n} =~ ^[1-9][0-9]*$ ]] || die "$n must be a positive number, not '${!n}'"; done

FAILED=()
if [[ $REPORT_ONLY == 1 ]]; then
    [[ -d $OUT_DIR/bin ]] || die "REPORT_ONLY=1 needs OUT_DIR, the directory of an earlier run"
else
    mkdir -p "$OUT_DIR/bin"
    if [[ -z $STRATA_BIN ]]; then
        export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$REPO_ROOT/target}
        log "building the Strata binaries (cargo build --release --bins in $REPO_ROOT)"
        (cd "$REPO_ROOT" && cargo build --release --bins) >"$OUT_DIR/cargo-build.log" 2>&1 ||
            { tail -30 "$OUT_DIR/cargo-build.log" >&2; die "cargo build failed (log: $OUT_DIR/cargo-build.log)"; }
        STRATA_BIN=$CARGO_TARGET_DIR/release
    fi
    for b in strata strata-collector strata-sealer strata-uploader; do
        [[ -x $STRATA_BIN/$b ]] || die "$STRATA_BIN/$b is missing"
        install -p -m 0755 "$STRATA_BIN/$b" "$OUT_DIR/bin/$b" # -p: keeps the build time, which the summaries print
    done
    log "run $RUN_ID: datasets '$DATASETS', buses '$BUSES', REPS=$REPS INCR_REPS=$INCR_REPS; binaries from $STRATA_BIN (built $(date -u -r "$STRATA_BIN/strata" +%FT%TZ)); output in $OUT_DIR"

    # run_one SCRIPT DATASET BUS REUSE LIMITS: one script run; its log and key=value file go to $OUT_DIR.
    run_one() {
        local script=$1 ds=$2 bus=$3 reuse=$4 limits=$5 name dir reps rc=0 url=local t0
        name=${script%.sh}-$ds-$bus
        if [[ $ds == pgbench ]]; then dir=$BENCH_DIR_PGBENCH; else dir=$BENCH_DIR_OLTP; fi
        [[ $bus == nats ]] && url=nats://
        if [[ $script == bench-full.sh ]]; then reps=$REPS; else reps=$INCR_REPS; fi
        log "$name: $script DATASET=$ds STRATA_BUS=$url REPS=$reps REUSE=$reuse LIMITS=$limits BENCH_DIR=$dir (log $OUT_DIR/$name.log)"
        t0=$SECONDS
        DATASET=$ds STRATA_BUS=$url REPS=$reps REUSE=$reuse LIMITS=$limits BENCH_DIR=$dir STRATA_BIN=$OUT_DIR/bin \
            KV_OUT=$OUT_DIR/$name.kv "$HERE/$script" >"$OUT_DIR/$name.log" 2>&1 || rc=$?
        if ((rc != 0)); then
            FAILED+=("$name (rc=$rc)")
            log "$name FAILED (rc=$rc) after $((SECONDS - t0)) s: $(grep -m1 -E 'error|FAILED' "$OUT_DIR/$name.log" || tail -1 "$OUT_DIR/$name.log")"
        else
            log "$name done in $((SECONDS - t0)) s"
        fi
    }

    for ds in $DATASETS; do
        reuse=$REUSE limits=$LIMITS
        for bus in $BUSES; do
            run_one bench-full.sh "$ds" "$bus" "$reuse" "$limits"
            reuse=1 limits=0
        done
        for bus in $BUSES; do
            run_one bench-incr.sh "$ds" "$bus" "$reuse" 0
            reuse=1
        done
    done
fi

# ------------------------------------------------------------------------------------------------ combined table
kv() { [[ -f $1 ]] && awk -F= -v k="$2" '$1 == k { sub(/^[^=]*=/, ""); print; exit }' "$1" || true; }
num() { awk -v v="$1" -v f="$2" 'BEGIN { if (v == "") print "-"; else printf f, v }'; }
mb() { awk -v v="$1" 'BEGIN { if (v == "") print "-"; else printf "%.1f", v / 1e6 }'; }
vr() { [[ -n $1 && $1 != - ]] && echo "$1" || echo "-"; }

SUMMARY=$OUT_DIR/summary.txt
{
    echo "== bench-all $(basename "$OUT_DIR"): $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GB", $2 / 1e6 }' /proc/meminfo) RAM; Strata $("$OUT_DIR/bin/strata" --version 2>/dev/null) (binaries built $(date -u -r "$OUT_DIR/bin/strata" +%FT%TZ), source $(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo '?'))"
    f=$(ls "$OUT_DIR"/bench-full-*.kv 2>/dev/null | head -1 || true)
    fi=$(ls "$OUT_DIR"/bench-incr-*.kv 2>/dev/null | head -1 || true)
    [[ -n $f ]] && echo "   Strata pipeline $(kv "$f" pipeline); pgBackRest $(kv "$f" pgbr); pg_basebackup $(kv "$f" pgbb); reps: $(kv "$f" reps) (full), $(kv "$fi" reps) (incr); times are medians"
    echo "   Targets (single-host mode): backup strata/pgbackrest <= 0.50, strata/pg_basebackup <= 1.25; restore strata/pgbackrest <= 0.80;"
    echo "   incremental stored bytes strata/pgbackrest <= 0.333; repository size strata/pgbackrest within 0.90..1.10 (comparable compression)."
    echo
    echo "Full backup and restore (bench-full.sh), seconds:"
    printf '%-8s %-6s %8s | %8s %8s %8s %12s %12s | %8s %8s %12s | %12s %12s %11s\n' dataset bus DB_MB strata pgbackrest pg_basebk "S/pgbr<=.50" "S/pgbb<=1.25" "S_rest" "pgbr_rest" "S/pgbr<=.80" "S_repo_MB" "pgbr_repo_MB" "S/pgbr_repo"
    for ds in $DATASETS; do
        for bus in $BUSES; do
            f=$OUT_DIR/bench-full-$ds-$bus.kv
            if [[ ! -f $f ]]; then printf '%-8s %-6s  (no result: see %s)\n' "$ds" "$bus" "$OUT_DIR/bench-full-$ds-$bus.log"; continue; fi
            printf '%-8s %-6s %8s | %8s %8s %8s %7s %-4s %7s %-4s | %8s %8s %7s %-4s | %12s %12s %6s %-4s\n' "$ds" "$bus" \
                "$(mb "$(kv "$f" payload_bytes)")" \
                "$(num "$(kv "$f" strata_backup_s)" %.2f)" "$(num "$(kv "$f" pgbackrest_backup_s)" %.2f)" "$(num "$(kv "$f" pg_basebackup_backup_s)" %.2f)" \
                "$(num "$(kv "$f" ratio_backup_pgbr)" %.3f)" "$(vr "$(kv "$f" ratio_backup_pgbr_verdict)")" \
                "$(num "$(kv "$f" ratio_backup_pgbb)" %.3f)" "$(vr "$(kv "$f" ratio_backup_pgbb_verdict)")" \
                "$(num "$(kv "$f" strata_restore_s)" %.2f)" "$(num "$(kv "$f" pgbackrest_restore_s)" %.2f)" \
                "$(num "$(kv "$f" ratio_restore_pgbr)" %.3f)" "$(vr "$(kv "$f" ratio_restore_pgbr_verdict)")" \
                "$(mb "$(kv "$f" strata_backup_bytes)")" "$(mb "$(kv "$f" pgbackrest_backup_bytes)")" \
                "$(num "$(kv "$f" ratio_repo)" %.3f)" "$(vr "$(kv "$f" ratio_repo_verdict)")"
        done
    done
    echo
    echo "Incremental after a fixed pgbench run (bench-incr.sh): seconds, stored bytes (Strata stored_bytes, pgBackRest repository.delta):"
    printf '%-8s %-6s %6s %9s | %8s %8s %7s | %12s %12s %14s\n' dataset bus churn_s xacts strata pgbackrest "S/pgbr" "S_stored_MB" "pgbr_stored_MB" "S/pgbr<=.333"
    for ds in $DATASETS; do
        for bus in $BUSES; do
            f=$OUT_DIR/bench-incr-$ds-$bus.kv
            if [[ ! -f $f ]]; then printf '%-8s %-6s  (no result: see %s)\n' "$ds" "$bus" "$OUT_DIR/bench-incr-$ds-$bus.log"; continue; fi
            printf '%-8s %-6s %6s %9s | %8s %8s %7s | %12s %12s %9s %-4s\n' "$ds" "$bus" "$(kv "$f" churn_secs)" "$(num "$(kv "$f" churn_xacts)" %.0f)" \
                "$(num "$(kv "$f" strata_incr_s)" %.2f)" "$(num "$(kv "$f" pgbackrest_incr_s)" %.2f)" "$(num "$(kv "$f" ratio_incr_time)" %.3f)" \
                "$(mb "$(kv "$f" strata_incr_stored_bytes)")" "$(mb "$(kv "$f" pgbackrest_incr_stored_bytes)")" \
                "$(num "$(kv "$f" ratio_incr_stored)" %.3f)" "$(vr "$(kv "$f" ratio_incr_stored_verdict)")"
        done
    done
    echo
    echo "Machine limits (limits.sh, in each dataset's first bench-full.sh; MB = 10^6 bytes):"
    for ds in $DATASETS; do
        f=$(ls "$OUT_DIR"/bench-full-"$ds"-*.kv 2>/dev/null | while read -r x; do if [[ -n $(kv "$x" limit_disk_read_direct_mb_s) ]]; then echo "$x"; fi; done | head -1 || true)
        [[ -n $f ]] || { echo "  $ds: not measured"; continue; }
        z=$(kv "$f" "limit_zstd1_${ds}_mb_s")
        echo "  $ds: disk read O_DIRECT $(kv "$f" limit_disk_read_direct_mb_s) MB/s, page-cache read $(kv "$f" limit_cached_read_mb_s) MB/s; zstd -1 on one core, $(kv "$f" limit_heap_table) heap: $z MB/s (ratio $(kv "$f" "limit_zstd1_${ds}_ratio")), streaming CLI $(kv "$f" "limit_zstd1_${ds}_cli_mb_s") MB/s; $(awk -v p="$(kv "$f" payload_bytes)" -v z="$z" -v c="$(nproc)" 'BEGIN { if (z > 0) printf "compressing the database at that rate: %.2f s on %d cores", p / 1e6 / z / c, c }')"
    done
    echo
    echo "Single-host verdicts:"
    for ds in $DATASETS; do
        f=$OUT_DIR/bench-full-$ds-local.kv i=$OUT_DIR/bench-incr-$ds-local.kv
        line=""
        for k in ratio_backup_pgbr ratio_backup_pgbb ratio_restore_pgbr ratio_repo; do line+=" $k=$(vr "$(kv "$f" "${k}_verdict")")"; done
        line+=" ratio_incr_stored=$(vr "$(kv "$i" ratio_incr_stored_verdict)")"
        echo "  $ds:$line"
    done
    if ((${#FAILED[@]})); then echo; echo "FAILED scripts: ${FAILED[*]} (logs in $OUT_DIR)"; fi
    echo
    echo "per-script summaries and logs: $OUT_DIR/*.log, key=value: $OUT_DIR/*.kv"
} >"$SUMMARY"
echo >&2
cat "$SUMMARY" >&2
((${#FAILED[@]} == 0)) || exit 1
