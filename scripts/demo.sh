#!/usr/bin/env bash
# demo.sh: installs what is missing, builds Strata, and shows a backup coming back.
#
#   sudo scripts/demo.sh            # as root on a fresh Debian 12 machine
#
# Starts a throw-away PostgreSQL 15 cluster (initdb -k) in $DEMO_DIR (default /tmp/strata-demo) on port
# $DEMO_PORT (default 25432), archives its WAL with strata, writes data, backs it up, writes more, restores the
# backup into a new directory, starts PostgreSQL on it and shows the data came back. Single-host mode: no
# broker, every stage runs inside the strata command. Everything it starts is stopped by pid at exit.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
DEMO_DIR=${DEMO_DIR:-/tmp/strata-demo}
DEMO_PORT=${DEMO_PORT:-25432}
PGBIN=/usr/lib/postgresql/15/bin
say() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

if [[ ${SKIP_INSTALL:-0} != 1 ]]; then
    say "installing what is missing"
    "$HERE/scripts/install-deps.sh"
fi
say "building"
export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HERE/target}
(cd "$HERE" && cargo build --bins --release -q)
rm -rf "$DEMO_DIR"
mkdir -p "$DEMO_DIR/bin" "$DEMO_DIR/repo" "$DEMO_DIR/sock"
# The archive_command runs as postgres: give it a copy of the binary it can reach.
cp "$CARGO_TARGET_DIR/release/strata" "$DEMO_DIR/bin/"
chown -R postgres:postgres "$DEMO_DIR"
chmod 755 "$DEMO_DIR"
STRATA="$DEMO_DIR/bin/strata --config $DEMO_DIR/strata.toml --stanza demo"
as_pg() { runuser -u postgres -- "$@"; }
psql_demo() { as_pg "$PGBIN/psql" -h "$DEMO_DIR/sock" -p "$1" -U postgres -d postgres -XAtq -v ON_ERROR_STOP=1 -c "$2"; }
stop_pg() { # by the pid in postmaster.pid, never by name
    local pid
    [[ -f $1/postmaster.pid ]] || return 0
    pid=$(head -1 "$1/postmaster.pid")
    kill -INT "$pid" 2>/dev/null || return 0
    for _ in $(seq 1 100); do kill -0 "$pid" 2>/dev/null || return 0; sleep 0.1; done
    kill -QUIT "$pid" 2>/dev/null || true
}
trap 'stop_pg "$DEMO_DIR/restored"; stop_pg "$DEMO_DIR/data"' EXIT

cat >"$DEMO_DIR/strata.toml" <<TOML
bus = "local"

[stanza.demo]
pg_data = "$DEMO_DIR/data"
pg_conn = "host=$DEMO_DIR/sock port=$DEMO_PORT user=postgres dbname=postgres"

[[repo]]
name = "local"
type = "posix"
path = "$DEMO_DIR/repo"
TOML
chmod 644 "$DEMO_DIR/strata.toml"

say "creating a PostgreSQL 15 cluster with data checksums"
as_pg "$PGBIN/initdb" -k -D "$DEMO_DIR/data" -U postgres --auth=trust -E UTF8 --locale=C >/dev/null
cat >>"$DEMO_DIR/data/postgresql.conf" <<CONF
port = $DEMO_PORT
listen_addresses = ''
unix_socket_directories = '$DEMO_DIR/sock'
wal_level = replica
archive_mode = on
archive_command = '$STRATA archive-push %p'
CONF
as_pg "$PGBIN/pg_ctl" -D "$DEMO_DIR/data" -l "$DEMO_DIR/data.log" -w start >/dev/null
$STRATA stanza-create

say "writing data, then backing up"
psql_demo "$DEMO_PORT" "CREATE TABLE orders (id int PRIMARY KEY, item text); INSERT INTO orders SELECT g, 'item ' || g FROM generate_series(1, 100000) g;"
$STRATA check
$STRATA backup
say "writing more after the backup (archived WAL carries it)"
psql_demo "$DEMO_PORT" "INSERT INTO orders SELECT g, 'late ' || g FROM generate_series(100001, 100500) g;"
psql_demo "$DEMO_PORT" "SELECT pg_switch_wal()" >/dev/null
$STRATA check >/dev/null
echo "source: $(psql_demo "$DEMO_PORT" "SELECT count(*) || ' rows, md5 ' || md5(string_agg(id || item, ',' ORDER BY id)) FROM orders")"
$STRATA info

say "restoring into a new directory and starting PostgreSQL on it"
$STRATA restore --pg-data "$DEMO_DIR/restored"
RPORT=$((DEMO_PORT + 1))
# The restored copy must not archive into the demo stanza as if it were the source.
as_pg "$PGBIN/pg_ctl" -D "$DEMO_DIR/restored" -l "$DEMO_DIR/restored.log" -w -t 120 \
    -o "-p $RPORT -c archive_mode=off" start >/dev/null
for _ in $(seq 1 300); do
    [[ $(psql_demo "$RPORT" "SELECT pg_is_in_recovery()") == f ]] && break
    sleep 0.2
done
echo "restored: $(psql_demo "$RPORT" "SELECT count(*) || ' rows, md5 ' || md5(string_agg(id || item, ',' ORDER BY id)) FROM orders")"
say "done: the restored cluster holds every committed row"
