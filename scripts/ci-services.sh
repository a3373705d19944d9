#!/usr/bin/env bash
# Throwaway services for verre's tests: a PostgreSQL cluster on 127.0.0.1 (Debian's
# `postgresql` package), trust authentication, fsync off, data in a temporary folder.
#
# Source it (scripts/test.sh does) to export VERRE_TEST_POSTGRES_URL and stop the cluster
# when the calling shell exits:    . scripts/ci-services.sh
# Or run it to start the cluster and print the variables:   scripts/ci-services.sh
# Idempotent: a cluster this script started and that still runs is reused. Listens on the
# loopback only. Installing packages needs root (CI runs as root); without root and without
# PostgreSQL installed it says so and exports nothing (the PostgreSQL tests then skip
# locally and fail under CI).

_verre_ci_services() {
    local state_dir="${VERRE_CI_SERVICES_DIR:-/tmp/verre-ci-services}"
    local state="$state_dir/postgres.env"
    mkdir -p "$state_dir"

    if [ -f "$state" ]; then
        # shellcheck disable=SC1090
        . "$state"
        if [ -n "${VERRE_PG_BIN:-}" ] && runuser -u postgres -- "$VERRE_PG_BIN/pg_ctl" -D "$VERRE_PG_DATA" status >/dev/null 2>&1; then
            export VERRE_TEST_POSTGRES_URL
            echo "ci-services: reusing PostgreSQL at $VERRE_TEST_POSTGRES_URL" >&2
            return 0
        fi
        rm -f "$state"
    fi

    if ! ls /usr/lib/postgresql/*/bin/initdb >/dev/null 2>&1; then
        if [ "$(id -u)" != 0 ]; then
            echo "ci-services: PostgreSQL is not installed and this is not root; skipping it" >&2
            return 0
        fi
        echo "ci-services: installing PostgreSQL from Debian's packages" >&2
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq >&2
        # The package's own cluster is never started (no init system in CI; we start ours).
        apt-get install -y -qq --no-install-recommends postgresql >&2
    fi
    local bin
    bin="$(ls -d /usr/lib/postgresql/*/bin | sort -V | tail -n 1)"
    if [ "$(id -u)" != 0 ]; then
        echo "ci-services: starting PostgreSQL needs root (it runs as the postgres user); skipping it" >&2
        return 0
    fi

    local data port
    data="$(mktemp -d /tmp/verre-pg.XXXXXX)"
    chown postgres:postgres "$data"
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    runuser -u postgres -- "$bin/initdb" -D "$data/db" -A trust -U postgres --no-sync >"$data/initdb.log" 2>&1 \
        || { cat "$data/initdb.log" >&2; return 1; }
    runuser -u postgres -- "$bin/pg_ctl" -D "$data/db" -l "$data/server.log" -w -t 60 start \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $data -c fsync=off -c synchronous_commit=off -c full_page_writes=off -c max_connections=200" >&2 \
        || { cat "$data/server.log" >&2; return 1; }
    VERRE_TEST_POSTGRES_URL="postgres://postgres@127.0.0.1:$port/postgres"
    cat >"$state" <<STATE
VERRE_PG_BIN=$bin
VERRE_PG_DATA=$data/db
VERRE_TEST_POSTGRES_URL=$VERRE_TEST_POSTGRES_URL
STATE
    export VERRE_TEST_POSTGRES_URL
    echo "ci-services: PostgreSQL at $VERRE_TEST_POSTGRES_URL (data in $data)" >&2
}

# Stop what _verre_ci_services started (the EXIT trap of a shell that sourced this file).
ci_services_stop() {
    local state="${VERRE_CI_SERVICES_DIR:-/tmp/verre-ci-services}/postgres.env"
    [ -f "$state" ] || return 0
    # shellcheck disable=SC1090
    . "$state"
    runuser -u postgres -- "$VERRE_PG_BIN/pg_ctl" -D "$VERRE_PG_DATA" -m immediate stop >/dev/null 2>&1 || true
    rm -rf "$(dirname "$VERRE_PG_DATA")" "$state"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    _verre_ci_services
    echo "export VERRE_TEST_POSTGRES_URL=${VERRE_TEST_POSTGRES_URL:-}"
else
    _verre_ci_services || return 1
    trap ci_services_stop EXIT
fi
