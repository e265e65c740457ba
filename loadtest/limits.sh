#!/usr/bin/env bash
# limits.sh: the machine's limits that bound a backup, to print next to the load test's figures.
#
#   sudo loadtest/limits.sh                                          # disk only, in /tmp/strata-limits
#   sudo loadtest/limits.sh /tmp/strata-loadtest/pgdata /tmp/strata-loadtest-oltp/pgdata   # plus zstd on each
#   sudo LIMITS_DIR=/tmp/x DISK_MB=2048 loadtest/limits.sh pgbench=/path/to/heapfile
#
# Measures, each LIMITS_REPS times (median):
#   disk_read_direct_mb_s   dd iflag=direct, 1 MiB blocks, of a DISK_MB file of random bytes in LIMITS_DIR (the
#                           filesystem the benchmarks use: put LIMITS_DIR next to BENCH_DIR)
#   disk_write_direct_mb_s  dd oflag=direct of the same amount (from a buffer in memory, /dev/zero)
#   cached_read_mb_s        dd of the same file from the page cache (warm backups read from there)
# and for every sample given as an argument (NAME=FILE, FILE, or a data directory: its largest relation file,
# normally the largest table's first 1 GiB segment; NAME defaults to the file's or directory's name):
#   zstd1_<NAME>_mb_s       `zstd -b1 -T1` (one core, in memory) on the first SAMPLE_MB MiB, compression MB/s
#   zstd1_<NAME>_dec_mb_s   the same run's decompression MB/s
#   zstd1_<NAME>_ratio      the same run's ratio
#   zstd1_<NAME>_cli_mb_s   `zstd -1 -T1 -c FILE >/dev/null` on the whole file (streaming CLI, one core)
#   zstd1_<NAME>_file_ratio that run's ratio over the whole file
# (MB = 10^6 bytes.) Prints key=value lines on stdout (and into LIMITS_OUT when set); progress goes to stderr.
# Runs as root (it reads relation files of the postgres user). Needs dd, zstd; about 20 s plus 5 s per sample.
#
# Env knobs:
#   LIMITS_DIR  directory for the disk test file, removed afterwards (default /tmp/strata-limits)
#   DISK_MB     size of the disk test file in MiB (default 1024)
#   SAMPLE_MB   MiB of each sample for zstd -b (default 256)
#   LIMITS_REPS repetitions of each disk measurement (default 3)
#   LIMITS_OUT  also write the key=value lines to this file
set -euo pipefail

LIMITS_DIR=${LIMITS_DIR:-/tmp/strata-limits}
DISK_MB=${DISK_MB:-1024}
SAMPLE_MB=${SAMPLE_MB:-256}
LIMITS_REPS=${LIMITS_REPS:-3}
LIMITS_OUT=${LIMITS_OUT:-}

log() { printf '[%(%H:%M:%S)T] limits: %s\n' -1 "$*" >&2; }
die() { log "error: $*"; exit 1; }
for n in DISK_MB SAMPLE_MB LIMITS_REPS; do [[ ${!n} =~ ^[1-9][0-9]*$ ]] || die "$n must be a positive number, not '${!n}'"; done
command -v zstd >/dev/null || die "zstd is not installed (Debian package zstd)"
command -v dd >/dev/null || die "dd is missing"

mkdir -p "$LIMITS_DIR"
TESTF=$LIMITS_DIR/disk-test.$$
SAMPLEF=$LIMITS_DIR/zstd-sample.$$
trap 'rm -f "$TESTF" "$SAMPLEF"' EXIT

RESULT=()
emit() { RESULT+=("$1=$2"); log "$1=$2"; }
median() { sort -g | awk '{a[NR] = $1} END { if (NR == 0) print ""; else if (NR % 2) print a[(NR + 1) / 2]; else printf "%.1f\n", (a[NR / 2] + a[NR / 2 + 1]) / 2 }'; }
# dd_mb_s DD-ARGS...: MB/s of one dd run, from its own byte count and seconds
dd_mb_s() {
    LC_ALL=C dd "$@" 2>&1 | awk '/bytes .* copied/ { b = $1; for (i = 1; i <= NF; i++) if ($i ~ /^s,?$/) s = $(i - 1); gsub(",", "", s); if (s > 0) printf "%.0f\n", b / 1e6 / s }'
}

# ---------------------------------------------------------------------------------------------------- disk
log "disk: $DISK_MB MiB test file in $LIMITS_DIR ($(df -h "$LIMITS_DIR" | awk 'NR == 2 {print $1 ", " $4 " free"}'))"
w=()
for ((r = 1; r <= LIMITS_REPS; r++)); do
    w+=("$(dd_mb_s if=/dev/zero of="$TESTF" bs=1M count="$DISK_MB" oflag=direct conv=fsync)")
done
emit disk_write_direct_mb_s "$(printf '%s\n' "${w[@]}" | median)"
# Random bytes, so that nothing below the filesystem can shortcut the reads (zeros may be stored sparsely).
head -c "$((DISK_MB * 1048576))" /dev/urandom >"$TESTF"
sync
rd=()
for ((r = 1; r <= LIMITS_REPS; r++)); do rd+=("$(dd_mb_s if="$TESTF" of=/dev/null bs=1M iflag=direct)"); done
emit disk_read_direct_mb_s "$(printf '%s\n' "${rd[@]}" | median)"
dd if="$TESTF" of=/dev/null bs=1M 2>/dev/null # into the page cache
rc=()
for ((r = 1; r <= LIMITS_REPS; r++)); do rc+=("$(dd_mb_s if="$TESTF" of=/dev/null bs=1M)"); done
emit cached_read_mb_s "$(printf '%s\n' "${rc[@]}" | median)"
rm -f "$TESTF"

# ---------------------------------------------------------------------------------------------------- zstd
# largest_relation_file DIR: the largest file under DIR/base named like a relation's main fork (digits, or digits
# and a segment number), normally the largest table's first segment.
largest_relation_file() {
    find "$1/base" -type f -regextype posix-extended -regex '.*/[0-9]+(\.[0-9]+)?' -printf '%s %p\n' 2>/dev/null |
        sort -rn | awk 'NR == 1 {print $2}'
}
emit zstd_version "$(zstd --version | grep -o 'v[0-9.]*' | head -1)"
for arg in "$@"; do
    name=${arg%%=*} path=${arg#*=}
    if [[ $arg != *=* ]]; then
        path=$arg
        if [[ -d $path ]]; then name=$(basename "$(dirname "$path")"); [[ $(basename "$path") != pgdata ]] && name=$(basename "$path"); else name=$(basename "$path"); fi
    fi
    name=${name//[^A-Za-z0-9_]/_}
    if [[ -d $path ]]; then
        f=$(largest_relation_file "$path")
        [[ -n $f ]] || die "no relation file under $path/base"
        path=$f
    fi
    [[ -f $path ]] || die "sample $arg: $path is not a file"
    size=$(stat -c %s "$path")
    emit "zstd1_${name}_file" "$path"
    emit "zstd1_${name}_file_bytes" "$size"
    head -c "$((SAMPLE_MB * 1048576))" "$path" >"$SAMPLEF"
    # zstd -b prints progress with \r; the result is the last line with "->": "... : IN -> OUT (xR), C MB/s, D MB/s"
    line=$(zstd -b1 -e1 -i3 -T1 "$SAMPLEF" 2>&1 | tr '\r' '\n' | grep -- '->' | tail -1)
    read -r ratio cmbs dmbs < <(awk '{ for (i = 1; i <= NF; i++) { if ($i ~ /^\(x/) { r = $i; gsub(/[(x),]/, "", r) } if ($i ~ /^MB\/s/) m[++n] = $(i - 1) } print r, m[1], m[2] }' <<<"$line")
    emit "zstd1_${name}_ratio" "$ratio"
    emit "zstd1_${name}_mb_s" "$cmbs"
    emit "zstd1_${name}_dec_mb_s" "$dmbs"
    cat "$path" >/dev/null # from the page cache, as the in-memory benchmark
    t0=$(date +%s.%N)
    csize=$(zstd -1 -T1 -c "$path" | wc -c)
    t1=$(date +%s.%N)
    emit "zstd1_${name}_cli_mb_s" "$(awk -v b="$size" -v a="$t0" -v c="$t1" 'BEGIN { printf "%.0f", b / 1e6 / (c - a) }')"
    emit "zstd1_${name}_file_ratio" "$(awk -v b="$size" -v c="$csize" 'BEGIN { printf "%.2f", b / c }')"
done
rm -f "$SAMPLEF"

printf '%s\n' "${RESULT[@]}"
if [[ -n $LIMITS_OUT ]]; then printf '%s\n' "${RESULT[@]}" >"$LIMITS_OUT"; fi
