#!/usr/bin/env bash
# Throwaway services for verre's tests, on 127.0.0.1 only, from Debian's packages:
# - PostgreSQL (`postgresql`): trust authentication, fsync off, data in a temporary folder;
#   exports VERRE_TEST_POSTGRES_URL (an admin URL; tests create their own databases).
# - poppler-utils (`pdftotext`): the reference of the PDF text measurement (installed only).
# - Dovecot IMAP over TLS (`dovecot-imapd`): one user, a test CA, a Maildir the tests write
#   into; exports VERRE_TEST_IMAP_URL, VERRE_TEST_IMAP_CA, VERRE_TEST_IMAP_MAILDIR.
#
# Source it (scripts/test.sh does) to export the variables and stop the services when the
# calling shell exits:    . scripts/ci-services.sh
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
        _VERRE_APT_UPDATED=1
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

_verre_ci_dovecot() {
    local state_dir="${VERRE_CI_SERVICES_DIR:-/tmp/verre-ci-services}"
    local state="$state_dir/dovecot.env"
    mkdir -p "$state_dir"
    if [ -f "$state" ]; then
        # shellcheck disable=SC1090
        . "$state"
        if [ -f "$VERRE_DOVECOT_DIR/run/master.pid" ] && kill -0 "$(cat "$VERRE_DOVECOT_DIR/run/master.pid")" 2>/dev/null; then
            export VERRE_TEST_IMAP_URL VERRE_TEST_IMAP_CA VERRE_TEST_IMAP_MAILDIR
            echo "ci-services: reusing Dovecot at $VERRE_TEST_IMAP_URL" >&2
            return 0
        fi
        rm -f "$state"
    fi
    if [ "$(id -u)" != 0 ]; then
        echo "ci-services: Dovecot needs root to install and start; skipping it" >&2
        return 0
    fi
    if ! command -v dovecot >/dev/null 2>&1 || [ ! -e /usr/lib/dovecot/imap ]; then
        echo "ci-services: installing Dovecot from Debian's packages" >&2
        export DEBIAN_FRONTEND=noninteractive
        [ -n "${_VERRE_APT_UPDATED:-}" ] || apt-get update -qq >&2
        apt-get install -y -qq --no-install-recommends dovecot-imapd openssl >&2
    fi

    local d port
    d="$(mktemp -d /tmp/verre-dovecot.XXXXXX)"
    chmod 755 "$d"
    port="$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')"
    # A test CA and a server certificate for 127.0.0.1 signed by it.
    (
        cd "$d"
        openssl req -x509 -newkey rsa:2048 -nodes -keyout ca.key -out ca.pem -days 3 -subj /CN=verre-test-ca 2>/dev/null
        openssl req -newkey rsa:2048 -nodes -keyout key.pem -out server.csr -subj /CN=127.0.0.1 2>/dev/null
        printf 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >server.ext
        openssl x509 -req -in server.csr -CA ca.pem -CAkey ca.key -CAcreateserial -out cert.pem -days 3 -extfile server.ext 2>/dev/null
    ) || { echo "ci-services: making the test certificates failed" >&2; return 1; }
    mkdir -p "$d/run" "$d/state" "$d/home/verre/Maildir/cur" "$d/home/verre/Maildir/new" "$d/home/verre/Maildir/tmp"
    chown -R nobody:nogroup "$d/home"
    echo 'verre:{PLAIN}verre-test-secret::::::' >"$d/users"
    cat >"$d/dovecot.conf" <<CONF
protocols = imap
listen = 127.0.0.1
base_dir = $d/run
state_dir = $d/state
log_path = $d/dovecot.log
ssl = required
ssl_cert = <$d/cert.pem
ssl_key = <$d/key.pem
auth_mechanisms = plain
passdb {
  driver = passwd-file
  args = scheme=PLAIN username_format=%u $d/users
}
userdb {
  driver = static
  args = uid=nobody gid=nogroup home=$d/home/%u
}
mail_location = maildir:~/Maildir
service imap-login {
  inet_listener imap {
    port = 0
  }
  inet_listener imaps {
    address = 127.0.0.1
    port = $port
    ssl = yes
  }
}
CONF
    dovecot -c "$d/dovecot.conf" || { cat "$d/dovecot.log" >&2 2>/dev/null; return 1; }
    # Wait for the listener (dovecot forks and returns before it accepts).
    for _ in $(seq 50); do
        python3 -c "import socket; socket.create_connection(('127.0.0.1', $port), 0.2)" 2>/dev/null && break
        sleep 0.1
    done
    VERRE_TEST_IMAP_URL="imaps://verre:verre-test-secret@127.0.0.1:$port/INBOX"
    VERRE_TEST_IMAP_CA="$d/ca.pem"
    VERRE_TEST_IMAP_MAILDIR="$d/home/verre/Maildir"
    cat >"$state" <<STATE
VERRE_DOVECOT_DIR=$d
VERRE_TEST_IMAP_URL=$VERRE_TEST_IMAP_URL
VERRE_TEST_IMAP_CA=$VERRE_TEST_IMAP_CA
VERRE_TEST_IMAP_MAILDIR=$VERRE_TEST_IMAP_MAILDIR
STATE
    export VERRE_TEST_IMAP_URL VERRE_TEST_IMAP_CA VERRE_TEST_IMAP_MAILDIR
    echo "ci-services: Dovecot IMAPS at 127.0.0.1:$port (in $d)" >&2
}

# poppler's `pdftotext`, the reference the PDF text measurement compares with
# (crates/intake/tests/pdf_text): installed when absent and root, as the services are.
_verre_ci_poppler() {
    command -v pdftotext >/dev/null 2>&1 && return 0
    if [ "$(id -u)" != 0 ]; then
        echo "ci-services: pdftotext is not installed and this is not root; skipping it" >&2
        return 0
    fi
    echo "ci-services: installing poppler-utils from Debian's packages" >&2
    export DEBIAN_FRONTEND=noninteractive
    [ -n "${_VERRE_APT_UPDATED:-}" ] || apt-get update -qq >&2
    _VERRE_APT_UPDATED=1
    apt-get install -y -qq --no-install-recommends poppler-utils >&2
}

# Stop what _verre_ci_services started (the EXIT trap of a shell that sourced this file).
ci_services_stop() {
    local dir="${VERRE_CI_SERVICES_DIR:-/tmp/verre-ci-services}"
    if [ -f "$dir/postgres.env" ]; then
        # shellcheck disable=SC1090
        . "$dir/postgres.env"
        runuser -u postgres -- "$VERRE_PG_BIN/pg_ctl" -D "$VERRE_PG_DATA" -m immediate stop >/dev/null 2>&1 || true
        rm -rf "$(dirname "$VERRE_PG_DATA")" "$dir/postgres.env"
    fi
    if [ -f "$dir/dovecot.env" ]; then
        # shellcheck disable=SC1090
        . "$dir/dovecot.env"
        if [ -f "$VERRE_DOVECOT_DIR/run/master.pid" ]; then
            kill "$(cat "$VERRE_DOVECOT_DIR/run/master.pid")" 2>/dev/null || true
        fi
        rm -rf "$VERRE_DOVECOT_DIR" "$dir/dovecot.env"
    fi
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    set -euo pipefail
    _verre_ci_services
    _verre_ci_dovecot
    _verre_ci_poppler
    for v in VERRE_TEST_POSTGRES_URL VERRE_TEST_IMAP_URL VERRE_TEST_IMAP_CA VERRE_TEST_IMAP_MAILDIR; do
        echo "export $v=${!v:-}"
    done
else
    trap ci_services_stop EXIT
    _verre_ci_services || return 1
    _verre_ci_dovecot || return 1
    _verre_ci_poppler || return 1
fi
