#!/usr/bin/env bash
# bench-repos.sh: what a repository's kind and encryption cost, in one run: full backup and restore of one
# database into four repositories, interleaved rep by rep so that the machine's drift hits them alike:
#   posix        a local directory, no encryption
#   posix-kms    the same, encrypted (AES-256-GCM, data key wrapped by KMS)
#   s3           a bucket on a loopback S3 server (moto 5.2.5, a single-threaded Python server), no encryption
#   s3-kms       the same bucket, encrypted
#
#   sudo loadtest/bench-repos.sh                     # pgbench scale 100, 3 reps
#   sudo SCALE=10 REPS=1 loadtest/bench-repos.sh     # quick check
#   sudo DATASET=oltp OLTP_MB=500 loadtest/bench-repos.sh   # less compressible data: encryption works on more bytes
#
# Runs as root; PostgreSQL and Strata run as `postgres`. Needs what scripts/install-deps.sh installs (PostgreSQL 15,
# moto at /opt/strata-tools/bin/moto_server, curl). Sources loadtest/lib.sh for the dataset. The archive_command
# pushes to the repository of the variant being measured (a file names its config). moto serves S3 and KMS on one
# loopback port; everything started is stopped at exit by pid.
#
# Output: one line per measurement in $BENCH_DIR/results-repos.tsv, then the medians and the ratios that matter
# (encrypted / plain on each kind; S3 / posix), as a table on stdout.
#
# Env knobs: DATASET (pgbench|oltp), SCALE (100), OLTP_MB, REPS (3), BENCH_DIR (/tmp/strata-bench-repos),
# PGPORT (55437), STRATA_BIN (default: cargo build --release, then target/release), PAUSE (2), VARIANTS
# ("posix posix-kms s3 s3-kms").
set -euo pipefail

HERE=$(cd "$(dirname "$0")" && pwd)
REPO_ROOT=$(cd "$HERE/.." && pwd)
# shellcheck source=lib.sh
source "$HERE/lib.sh"

BENCH_DIR=${BENCH_DIR:-/tmp/strata-bench-repos}
PGPORT=${PGPORT:-55437}
dataset_defaults
SCALE=${SCALE:-100}
REPS=${REPS:-3}
PAUSE=${PAUSE:-2}
VARIANTS=${VARIANTS:-posix posix-kms s3 s3-kms}
STRATA_BIN=${STRATA_BIN:-}
PGBIN=${PGBIN:-/usr/lib/postgresql/15/bin}
MOTO=${MOTO:-/opt/strata-tools/bin/moto_server}

STANZA=bench
PGDATA=$BENCH_DIR/pgdata
PGSOCK=$BENCH_DIR/run
LOGDIR=$BENCH_DIR/logs
TMPD=$BENCH_DIR/tmp
RESTORE=$BENCH_DIR/restore
RESULTS=$BENCH_DIR/results-repos.tsv
CURRENT=$BENCH_DIR/current-config
MOTO_PID=

log() { printf '[%(%H:%M:%S)T] %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }
as_pg() { runuser -u postgres -- "$@"; }
psql_q() { as_pg "$PGBIN/psql" -h "$PGSOCK" -p "$PGPORT" -U postgres -d "${2:-postgres}" -XAtq -v ON_ERROR_STOP=1 -c "$1"; }
stop_pid() { [[ -n ${1:-} ]] && kill "$1" 2>/dev/null && { for _ in $(seq 50); do kill -0 "$1" 2>/dev/null || return 0; sleep 0.1; done; kill -9 "$1" 2>/dev/null; } || true; }

[[ $(id -u) -eq 0 ]] || die "run as root (PostgreSQL and Strata run as postgres through runuser)"
[[ -x $PGBIN/initdb ]] || die "no PostgreSQL 15 in $PGBIN: run scripts/install-deps.sh"
[[ -x $MOTO ]] || die "no moto_server at $MOTO: run scripts/install-deps.sh"
command -v curl >/dev/null || die "curl is missing: run scripts/install-deps.sh"
dataset_setup

cleanup() {
    set +e
    [[ -f $PGDATA/postmaster.pid ]] && as_pg "$PGBIN/pg_ctl" -D "$PGDATA" -m fast -w stop >/dev/null 2>&1
    stop_pid "$MOTO_PID"
}
trap cleanup EXIT

mkdir -p "$BENCH_DIR" "$PGSOCK" "$LOGDIR" "$TMPD"
chown postgres: "$BENCH_DIR" "$PGSOCK" "$LOGDIR" "$TMPD"
chmod o+x "$BENCH_DIR"

# ------------------------------------------------------------------------------------------------ binaries
if [[ -z $STRATA_BIN ]]; then
    log "building release binaries"
    (cd "$REPO_ROOT" && cargo build --release --bins -q)
    STRATA_BIN=${CARGO_TARGET_DIR:-$REPO_ROOT/target}/release
fi
BIN=$BENCH_DIR/bin
mkdir -p "$BIN"
cp "$STRATA_BIN"/strata "$BIN"/
chmod 0755 "$BIN" "$BIN"/strata

# ------------------------------------------------------------------------------------------------ moto: S3 + KMS
MOTO_PORT=$(free_port)
"$MOTO" -H 127.0.0.1 -p "$MOTO_PORT" >"$LOGDIR/moto.log" 2>&1 &
MOTO_PID=$!
for _ in $(seq 100); do curl -s -o /dev/null "http://127.0.0.1:$MOTO_PORT/" && break; sleep 0.2; done
curl -sf -X PUT "http://127.0.0.1:$MOTO_PORT/strata-bench" -o /dev/null || die "cannot create the bucket on moto"
KMS_KEY=$(curl -sf -X POST "http://127.0.0.1:$MOTO_PORT/" -H 'X-Amz-Target: TrentService.CreateKey' \
    -H 'Content-Type: application/x-amz-json-1.1' \
    -H 'Authorization: AWS4-HMAC-SHA256 Credential=bench/20260101/us-east-1/kms/aws4_request, SignedHeaders=host, Signature=0' \
    -d '{}' | sed -n 's/.*"KeyId": *"\([^"]*\)".*/\1/p')
[[ -n $KMS_KEY ]] || die "cannot create a KMS key on moto"
log "moto on port $MOTO_PORT, KMS key $KMS_KEY"

# ------------------------------------------------------------------------------------------------ cluster
if dataset_reusable; then
    log "reusing the cluster in $PGDATA ($DATASET_DESC)"
else
    rm -rf "$PGDATA"
    as_pg "$PGBIN/initdb" -k -D "$PGDATA" -U postgres >"$LOGDIR/initdb.log"
    dataset_forget
fi
cat >"$BIN/archive-push.sh" <<EOF
#!/bin/sh
exec $BIN/strata --config "\$(cat $CURRENT)" --stanza $STANZA archive-push "\$1"
EOF
chmod 0755 "$BIN/archive-push.sh"
cat >"$PGDATA/bench.conf" <<EOF
listen_addresses = ''
unix_socket_directories = '$PGSOCK'
port = $PGPORT
shared_buffers = 512MB
max_wal_size = 4GB
archive_mode = on
archive_command = '$BIN/archive-push.sh %p'
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
DB_BYTES=$(psql_q "SELECT sum(pg_database_size(oid))::bigint FROM pg_database")
log "database: $((DB_BYTES / 1000000)) MB"

# ------------------------------------------------------------------------------------------------ configs
write_config() { # write_config VARIANT REP -> path of its config
    local variant=$1 rep=$2 cfg=$BENCH_DIR/strata-$1.toml repo
    {
        printf 'bus = "local"\n[stanza.%s]\npg_data = "%s"\npg_conn = "host=%s port=%s user=postgres dbname=postgres"\n' \
            "$STANZA" "$PGDATA" "$PGSOCK" "$PGPORT"
        case $variant in
        posix*)
            repo=$BENCH_DIR/repo-$variant
            rm -rf "$repo"; mkdir -p "$repo"; chown postgres: "$repo"
            printf '[[repo]]\nname = "%s"\ntype = "posix"\npath = "%s"\n' "$variant" "$repo" ;;
        s3*)
            printf '[[repo]]\nname = "%s"\ntype = "s3"\nbucket = "strata-bench"\nprefix = "%s-%s-%s"\n' "$variant" "$RUN_ID" "$variant" "$rep"
            printf 'region = "us-east-1"\nendpoint = "http://127.0.0.1:%s"\naccess_key_id = "bench"\nsecret_access_key = "bench"\n' "$MOTO_PORT" ;;
        esac
        if [[ $variant == *-kms ]]; then
            printf '[encryption]\ntype = "kms"\nkms_key_id = "%s"\nkms_region = "us-east-1"\nkms_endpoint = "http://127.0.0.1:%s"\n' "$KMS_KEY" "$MOTO_PORT"
            printf 'kms_access_key_id = "bench"\nkms_secret_access_key = "bench"\n'
        fi
    } >"$cfg"
    chmod 0644 "$cfg"
    echo "$cfg"
}

RUN_ID=$(date -u +%Y%m%dT%H%M%SZ)
[[ -f $RESULTS ]] || printf 'run\tdataset\tvariant\trep\top\tseconds\tdb_bytes\tstored_bytes\n' >"$RESULTS"
strata() { as_pg "$BIN/strata" --config "$1" --stanza "$STANZA" "${@:2}"; }
timed() { local t0 t1; t0=$(date +%s%N); "$@" >/dev/null; t1=$(date +%s%N); awk -v a="$t0" -v b="$t1" 'BEGIN { printf "%.3f", (b - a) / 1e9 }'; }

for rep in $(seq 1 "$REPS"); do
    for variant in $VARIANTS; do
        cfg=$(write_config "$variant" "$rep")
        echo "$cfg" >"$CURRENT"; chmod 0644 "$CURRENT"
        strata "$cfg" stanza-create >/dev/null
        psql_q "SELECT pg_switch_wal()" >/dev/null # the next segments go to this variant's repository
        sync; sleep "$PAUSE"
        secs=$(timed strata "$cfg" backup --type full)
        stored=$(strata "$cfg" info --output json | python3 -c 'import json,sys; print(json.load(sys.stdin)[0]["backups"][-1]["stored_bytes"])')
        printf '%s\t%s\t%s\t%s\tbackup\t%.3f\t%s\t%s\n' "$RUN_ID" "$DATASET_DESC" "$variant" "$rep" "$secs" "$DB_BYTES" "$stored" >>"$RESULTS"
        log "$variant rep $rep: backup $secs s, stored $((stored / 1000000)) MB"
        rm -rf "$RESTORE"; mkdir -p "$RESTORE"; chown postgres: "$RESTORE"; chmod 0700 "$RESTORE"
        sync; sleep "$PAUSE"
        secs=$(timed strata "$cfg" restore --pg-data "$RESTORE")
        printf '%s\t%s\t%s\t%s\trestore\t%.3f\t%s\t%s\n' "$RUN_ID" "$DATASET_DESC" "$variant" "$rep" "$secs" "$DB_BYTES" "$stored" >>"$RESULTS"
        log "$variant rep $rep: restore $secs s"
        rm -rf "$RESTORE"
    done
done

# ------------------------------------------------------------------------------------------------ summary
python3 - "$RESULTS" "$RUN_ID" <<'EOF'
import csv, statistics, sys
rows = [r for r in csv.DictReader(open(sys.argv[1]), delimiter="\t") if r["run"] == sys.argv[2]]
med = {}
for (v, op) in sorted({(r["variant"], r["op"]) for r in rows}):
    med[v, op] = statistics.median(float(r["seconds"]) for r in rows if r["variant"] == v and r["op"] == op)
db = int(rows[0]["db_bytes"])
print(f"dataset: {rows[0]['dataset']}, {db / 1e6:.0f} MB, medians of {len(rows) // max(1, len(med))} reps, run {sys.argv[2]}")
print(f"{'variant':<10} {'backup s':>9} {'MB/s':>7} {'restore s':>10} {'MB/s':>7}")
for v in dict.fromkeys(r["variant"] for r in rows):
    b, r = med.get((v, "backup")), med.get((v, "restore"))
    print(f"{v:<10} {b:>9.2f} {db / 1e6 / b:>7.0f} {r:>10.2f} {db / 1e6 / r:>7.0f}")
for kind in ("posix", "s3"):
    if (kind, "backup") in med and (kind + "-kms", "backup") in med:
        print(f"encrypted / plain on {kind}: backup {med[kind + '-kms', 'backup'] / med[kind, 'backup']:.2f}x, "
              f"restore {med[kind + '-kms', 'restore'] / med[kind, 'restore']:.2f}x the time")
if ("s3", "backup") in med and ("posix", "backup") in med:
    print(f"s3 / posix: backup {med['s3', 'backup'] / med['posix', 'backup']:.2f}x, "
          f"restore {med['s3', 'restore'] / med['posix', 'restore']:.2f}x the time")
EOF
