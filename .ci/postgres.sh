#!/usr/bin/env bash
# Start a throwaway PostgreSQL server for the store tests and export CLBENCH_TEST_PG_URL.
#
#   eval "$(bash .ci/postgres.sh)"     # start; sets CLBENCH_TEST_PG_URL and CLBENCH_TEST_PG_DIR
#   bash .ci/postgres.sh --stop        # stop the server started above and delete its folder
#
# Needs Debian's PostgreSQL server (apt-get install -y postgresql). The cluster lives in a new
# temporary folder, listens on 127.0.0.1 only, on a free port, and trusts local connections: it
# is for tests, never for data. As root, the server runs as the `postgres` user (PostgreSQL
# refuses to run as root); as any other user, as that user. Logs go to stderr; stdout carries only
# the `export` lines, so `eval "$(...)"` is all a caller needs. Sourcing the script works too.

_clbench_pg_main() {
    local bindir dir port user url
    bindir=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1)
    if [ -z "$bindir" ] || [ ! -x "$bindir/initdb" ]; then
        echo "postgres.sh: no PostgreSQL server found under /usr/lib/postgresql; install it with: apt-get install -y postgresql" >&2
        return 1
    fi

    if [ "$(id -u)" = 0 ]; then
        user=postgres
        _clbench_pg_run() { runuser -u postgres -- "$@"; }
    else
        user=$(id -un)
        _clbench_pg_run() { "$@"; }
    fi

    if [ "${1:-}" = "--stop" ]; then
        if [ -z "${CLBENCH_TEST_PG_DIR:-}" ] || [ ! -d "$CLBENCH_TEST_PG_DIR/data" ]; then
            echo "postgres.sh: CLBENCH_TEST_PG_DIR does not name a running test cluster" >&2
            return 1
        fi
        _clbench_pg_run "$bindir/pg_ctl" -D "$CLBENCH_TEST_PG_DIR/data" -m immediate stop >&2 || true
        rm -rf "$CLBENCH_TEST_PG_DIR"
        return 0
    fi

    dir=$(mktemp -d /tmp/clbench-pg.XXXXXX) || return 1
    chmod 755 "$dir"
    [ "$user" = postgres ] && chown postgres: "$dir"

    # A free port: one that refuses a connection (bash's /dev/tcp, no extra tools needed).
    port=""
    for _ in $(seq 1 50); do
        local candidate=$((20000 + RANDOM % 40000))
        if ! (exec 3<>"/dev/tcp/127.0.0.1/$candidate") 2>/dev/null; then
            port=$candidate
            break
        fi
    done
    if [ -z "$port" ]; then
        echo "postgres.sh: found no free port" >&2
        return 1
    fi

    _clbench_pg_run "$bindir/initdb" -D "$dir/data" -U "$user" -A trust -E UTF8 --no-sync >"$dir/initdb.log" 2>&1 || {
        cat "$dir/initdb.log" >&2
        return 1
    }
    # fsync off: a test server does not need to survive a power cut, and it is much faster.
    _clbench_pg_run "$bindir/pg_ctl" -D "$dir/data" -l "$dir/server.log" -w -t 60 \
        -o "-c listen_addresses=127.0.0.1 -p $port -k $dir -c fsync=off -c synchronous_commit=off -c full_page_writes=off" \
        start >&2 || {
        cat "$dir/server.log" >&2
        return 1
    }
    _clbench_pg_run "$bindir/createdb" -h 127.0.0.1 -p "$port" -U "$user" clbench_test >&2 || return 1

    url="postgresql+psycopg://$user@127.0.0.1:$port/clbench_test"
    export CLBENCH_TEST_PG_URL="$url" CLBENCH_TEST_PG_DIR="$dir"
    echo "postgres.sh: PostgreSQL $(basename "$(dirname "$bindir")") on 127.0.0.1:$port, data in $dir" >&2
    echo "export CLBENCH_TEST_PG_URL='$url'"
    echo "export CLBENCH_TEST_PG_DIR='$dir'"
}

if [ "${BASH_SOURCE[0]}" = "$0" ]; then
    _clbench_pg_main "$@"
    exit $?
else
    _clbench_pg_main "$@" >/dev/null
fi
