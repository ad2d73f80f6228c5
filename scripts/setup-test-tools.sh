#!/usr/bin/env bash
# Make this machine ready for `make test`, before anything runs: the system tools the tests use
# (wrk drives gunicorn in the load smoke test, openssl mints the mail tests' certificates,
# chromium is the browser the console's end-to-end test drives, promtool unit-tests the alert
# rules), and,
# given the PostgreSQL test URL, a running local PostgreSQL with that database.
# As root with apt-get the tools are installed; otherwise the script says what to install.
set -euo pipefail

database_url="${1:-}"

missing=()
# command:Debian package
for pair in wrk:wrk openssl:openssl chromium:chromium promtool:prometheus; do
    command -v "${pair%%:*}" >/dev/null 2>&1 || missing+=("${pair#*:}")
done
if ((${#missing[@]})); then
    if [[ "$(id -u)" == 0 ]] && command -v apt-get >/dev/null 2>&1; then
        echo "setup: installing ${missing[*]} with apt-get"
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
    else
        echo "setup: the tests need ${missing[*]}, which this machine lacks. Install first:" >&2
        echo "  Debian/Ubuntu: sudo apt-get install ${missing[*]}" >&2
        echo "  macOS:         brew install ${missing[*]}" >&2
        exit 1
    fi
fi

[[ -n "$database_url" ]] || exit 0

# postgresql://user[:password]@host[:port]/database, as the tests read TEST_DATABASE_URL.
pattern='^postgres(ql)?(\+[a-z0-9]+)?://([^@/]*@)?([^:/?]+)(:([0-9]+))?/([^?]+)'
if [[ ! "$database_url" =~ $pattern ]]; then
    echo "setup: TEST_DATABASE_URL=$database_url is not a postgresql://user@host:port/db URL" >&2
    exit 1
fi
host="${BASH_REMATCH[4]}"
port="${BASH_REMATCH[6]:-5432}"
database="${BASH_REMATCH[7]}"

how="start it (Debian/Ubuntu: sudo pg_ctlcluster <version> main start; macOS: brew services"
how+=" start postgresql), set TEST_DATABASE_URL to a reachable one, or run make test-sqlite"
if ! command -v pg_isready >/dev/null 2>&1; then
    echo "setup: no PostgreSQL client tools here (pg_isready); install PostgreSQL and $how" >&2
    exit 1
fi
if ! pg_isready -q -h "$host" -p "$port" && command -v pg_lsclusters >/dev/null 2>&1 \
        && [[ "$host" == 127.0.0.1 || "$host" == localhost ]]; then
    # A local cluster that is installed but stopped (a fresh container does not start it).
    while read -r version cluster cluster_port status _; do
        if [[ "$cluster_port" == "$port" && "$status" == down* ]]; then
            echo "setup: starting PostgreSQL $version/$cluster on port $port"
            pg_ctlcluster --skip-systemctl-redirect "$version" "$cluster" start
        fi
    done < <(pg_lsclusters --no-header)
    for _ in 1 2 3 4 5 6 7 8 9 10; do
        pg_isready -q -h "$host" -p "$port" && break
        sleep 1
    done
fi
if ! pg_isready -q -h "$host" -p "$port"; then
    echo "setup: PostgreSQL at $host:$port is not running; $how" >&2
    exit 1
fi

# The test database itself, when the server lets us create it.
if command -v psql >/dev/null 2>&1; then
    admin_url="${database_url%%\?*}"
    admin_url="${admin_url%/*}/postgres"
    admin_url="${admin_url/#postgres:/postgresql:}"
    admin_url="$(printf '%s' "$admin_url" | sed -E 's#^postgresql\+[a-z0-9]+:#postgresql:#')"
    exists="$(psql "$admin_url" -tAc "SELECT 1 FROM pg_database WHERE datname = '${database//\'/\'\'}'" 2>/dev/null || true)"
    if [[ "$exists" != 1 ]]; then
        echo "setup: creating the database $database"
        psql "$admin_url" -qc "CREATE DATABASE \"${database//\"/\"\"}\"" >/dev/null
    fi
fi
