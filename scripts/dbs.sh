# shellcheck shell=bash
# Sourced by scripts/test.sh (and usable on its own: `source scripts/dbs.sh`): makes sure the
# local MariaDB and PostgreSQL servers the shop-driver tests use are running and have a `test`
# database, then exports their URLs:
#   RECONCILED_TEST_MYSQL_URL     (default mysql://root@127.0.0.1:3306/test)
#   RECONCILED_TEST_POSTGRES_URL  (default postgres://postgres@127.0.0.1:5432/test)
# A URL already set in the environment is kept as it is (nothing is checked). A server that
# cannot be reached or started is reported and its URL left unset: the tests then skip,
# except under CI, where they fail. Safe to source twice; never exits the calling shell, and
# runs under the caller's `set -euo pipefail`.

_reconciled_dbs() {
    local mysql_url="${RECONCILED_TEST_MYSQL_URL:-mysql://root@127.0.0.1:3306/test}"
    local pg_url="${RECONCILED_TEST_POSTGRES_URL:-postgres://postgres@127.0.0.1:5432/test}"
    local own_mysql="" own_pg=""
    [ -z "${RECONCILED_TEST_MYSQL_URL:-}" ] && own_mysql=1
    [ -z "${RECONCILED_TEST_POSTGRES_URL:-}" ] && own_pg=1

    _reconciled_mysql_up() {
        if command -v mariadb-admin >/dev/null 2>&1; then
            timeout 5 mariadb-admin --protocol=tcp -h127.0.0.1 -P3306 -uroot \
                --connect-timeout=2 ping >/dev/null 2>&1
        else
            timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/3306' 2>/dev/null
        fi
    }
    _reconciled_pg_up() {
        if command -v pg_isready >/dev/null 2>&1; then
            timeout 5 pg_isready -q -h 127.0.0.1 -p 5432 -t 2 >/dev/null 2>&1
        else
            timeout 2 bash -c 'exec 3<>/dev/tcp/127.0.0.1/5432' 2>/dev/null
        fi
    }
    # Waits up to ~30 s for a check to pass.
    _reconciled_wait() {
        local i
        for i in $(seq 1 30); do
            if "$1"; then return 0; fi
            sleep 1
        done
        return 1
    }

    # MariaDB
    local mysql_state="unreachable"
    if [ -z "$own_mysql" ]; then
        :
    elif _reconciled_mysql_up; then
        mysql_state="running"
    elif [ -x /usr/sbin/mariadbd ] && command -v start-stop-daemon >/dev/null 2>&1; then
        mkdir -p /run/mysqld 2>/dev/null || true
        chown mysql:mysql /run/mysqld 2>/dev/null || true
        start-stop-daemon --start --oknodo --background --exec /usr/sbin/mariadbd \
            >/dev/null 2>&1 || true
        if _reconciled_wait _reconciled_mysql_up; then mysql_state="started"; fi
    fi
    if [ -n "$own_mysql" ] && [ "$mysql_state" != "unreachable" ]; then
        if timeout 10 mariadb --protocol=tcp -h127.0.0.1 -P3306 -uroot \
            -e 'CREATE DATABASE IF NOT EXISTS test' >/dev/null 2>&1; then
            export RECONCILED_TEST_MYSQL_URL="$mysql_url"
        else
            mysql_state="$mysql_state, but cannot create database test as root"
        fi
    fi
    if [ -z "$own_mysql" ]; then
        echo "scripts/dbs.sh: MariaDB: RECONCILED_TEST_MYSQL_URL from the environment" >&2
    elif [ -n "${RECONCILED_TEST_MYSQL_URL:-}" ]; then
        echo "scripts/dbs.sh: MariaDB $mysql_state: RECONCILED_TEST_MYSQL_URL=$mysql_url" >&2
    else
        echo "scripts/dbs.sh: MariaDB $mysql_state at 127.0.0.1:3306: its tests skip (fail under CI)" >&2
    fi

    # PostgreSQL
    local pg_state="unreachable"
    if [ -z "$own_pg" ]; then
        :
    elif _reconciled_pg_up; then
        pg_state="running"
    elif command -v pg_ctlcluster >/dev/null 2>&1 && [ -d /etc/postgresql ]; then
        local version
        for version in $(ls /etc/postgresql 2>/dev/null); do
            pg_ctlcluster --skip-systemctl-redirect "$version" main start >/dev/null 2>&1 || true
        done
        if _reconciled_wait _reconciled_pg_up; then pg_state="started"; fi
    fi
    if [ -n "$own_pg" ] && [ "$pg_state" != "unreachable" ]; then
        if timeout 10 psql -h 127.0.0.1 -p 5432 -U postgres -d postgres -tAc \
            "SELECT 1 FROM pg_database WHERE datname = 'test'" 2>/dev/null | grep -q 1 ||
            timeout 10 createdb -h 127.0.0.1 -p 5432 -U postgres test >/dev/null 2>&1; then
            export RECONCILED_TEST_POSTGRES_URL="$pg_url"
        else
            pg_state="$pg_state, but cannot create database test as postgres"
        fi
    fi
    if [ -z "$own_pg" ]; then
        echo "scripts/dbs.sh: PostgreSQL: RECONCILED_TEST_POSTGRES_URL from the environment" >&2
    elif [ -n "${RECONCILED_TEST_POSTGRES_URL:-}" ]; then
        echo "scripts/dbs.sh: PostgreSQL $pg_state: RECONCILED_TEST_POSTGRES_URL=$pg_url" >&2
    else
        echo "scripts/dbs.sh: PostgreSQL $pg_state at 127.0.0.1:5432: its tests skip (fail under CI)" >&2
    fi

    unset -f _reconciled_mysql_up _reconciled_pg_up _reconciled_wait
    return 0
}
_reconciled_dbs || true
unset -f _reconciled_dbs
