#!/usr/bin/env bash
# Idempotent set-up for `make demo` and `make test` on Debian 12/13, as root or a normal user:
#   1. the PostgreSQL server and the pg_cron package matching its major version;
#   2. .venv with pybatch and its dev extras.
set -euo pipefail
cd "$(dirname "$0")/.."

need_packages=()
major=""
if command -v pg_config >/dev/null 2>&1; then
    major=$(pg_config --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
fi
if [ -z "$major" ] || [ ! -x "/usr/lib/postgresql/$major/bin/initdb" ]; then
    # No server yet: Debian's default major (15 on Debian 12, 17 on Debian 13).
    need_packages+=(postgresql postgresql-contrib libpq-dev)
    major=""
fi
cron_present() { [ -n "$1" ] && ls "/usr/share/postgresql/$1/extension/pg_cron.control" >/dev/null 2>&1; }
if ! cron_present "$major"; then
    if [ -n "$major" ]; then need_packages+=("postgresql-$major-cron"); else need_packages+=(CRON); fi
fi
command -v psql >/dev/null 2>&1 || need_packages+=(postgresql-client)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || need_packages+=(python3-venv)

if [ ${#need_packages[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ]; then
        pkgs="${need_packages[*]}"
        pkgs="${pkgs//CRON/postgresql-<major>-cron}"
        echo "pybatch setup: missing system packages. Run as root:" >&2
        echo "  apt-get update && apt-get install -y $pkgs" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    server_pkgs=()
    for p in "${need_packages[@]}"; do [ "$p" != CRON ] && server_pkgs+=("$p"); done
    apt-get install -y -qq "${server_pkgs[@]}" >/dev/null
    major=$(pg_config --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
    cron_present "$major" || apt-get install -y -qq "postgresql-$major-cron" >/dev/null
    # Debian starts a default cluster on install; pybatch runs its own, so leave that one alone.
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
stamp=.venv/.pybatch-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
    .venv/bin/python -m pip install --quiet --upgrade pip 2>/dev/null || true
    .venv/bin/python -m pip install --quiet -e '.[dev,plot]'
    touch "$stamp"
fi
