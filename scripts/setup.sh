#!/usr/bin/env bash
# Idempotent set-up for `make demo` and `make test` on Debian 12/13, as root or a normal user:
#   1. the PostgreSQL server and the pg_cron package matching its major version, pgbouncer and zsh
#      (only the tests use it: they run every pybatch connection through a transaction pooler);
#   2. .venv with pybatch and its dev extras;
#   3. the Node.js example's packages (examples/node), when node and npm are present.
#
# A normal user who cannot install packages gets one pasteable command naming the real
# packages for this machine, and setup stops.
#
# For tests: PYBATCH_SETUP_ASSUME_MISSING=1 treats the server, pg_cron and psql as absent,
# PYBATCH_SETUP_ASSUME_USER=1 takes the normal-user path even as root; together they print
# the hint and exit 1 without changing anything.
set -euo pipefail
cd "$(dirname "$0")/.."

# The PostgreSQL major version installed here, or empty.
installed_major() {
    [ -n "${PYBATCH_SETUP_ASSUME_MISSING:-}" ] && return 0
    local major=""
    if command -v pg_config >/dev/null 2>&1; then
        major=$(pg_config --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
    fi
    if [ -n "$major" ] && [ -x "/usr/lib/postgresql/$major/bin/initdb" ]; then
        echo "$major"
    fi
}

# The major version `apt-get install postgresql` would bring on this machine: what apt's
# `postgresql` package depends on, else Debian's default for this release.
candidate_major() {
    local major=""
    if command -v apt-cache >/dev/null 2>&1; then
        major=$(apt-cache depends postgresql 2>/dev/null | sed -nE 's/^ *Depends: postgresql-([0-9]+)$/\1/p' | head -n1)
    fi
    if [ -z "$major" ] && [ -r /etc/os-release ]; then
        case "$(. /etc/os-release && echo "${VERSION_ID:-}")" in
            11) major=13 ;;
            12) major=15 ;;
            13) major=17 ;;
        esac
    fi
    echo "${major:-15}"
}

cron_present() {
    [ -z "${PYBATCH_SETUP_ASSUME_MISSING:-}" ] && [ -n "$1" ] \
        && [ -e "/usr/share/postgresql/$1/extension/pg_cron.control" ]
}

# The system packages this machine lacks, by their real names, one per line.
missing_packages() {
    local major
    major=$(installed_major)
    if [ -z "$major" ]; then
        major=$(candidate_major)
        echo "postgresql-$major"
        echo "postgresql-contrib"
        echo "libpq-dev"
    fi
    cron_present "$major" || echo "postgresql-$major-cron"
    if [ -n "${PYBATCH_SETUP_ASSUME_MISSING:-}" ] || ! command -v psql >/dev/null 2>&1; then
        echo "postgresql-client"
    fi
    if [ -n "${PYBATCH_SETUP_ASSUME_MISSING:-}" ] || { ! command -v pgbouncer >/dev/null 2>&1 && [ ! -x /usr/sbin/pgbouncer ]; }; then
        echo "pgbouncer"
    fi
    # The zsh completion script is checked by zsh itself (tests/unit/test_completion.py).
    if [ -n "${PYBATCH_SETUP_ASSUME_MISSING:-}" ] || ! command -v zsh >/dev/null 2>&1; then
        echo "zsh"
    fi
    python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || echo "python3-venv"
    return 0
}

# One pasteable line: every word is a plain package name, nothing the shell reinterprets.
install_hint() {
    echo "sudo apt-get update && sudo apt-get install -y $*"
}

mapfile -t need_packages < <(missing_packages)

if [ ${#need_packages[@]} -gt 0 ]; then
    if [ "$(id -u)" -ne 0 ] || [ -n "${PYBATCH_SETUP_ASSUME_USER:-}" ]; then
        echo "pybatch setup: missing system packages. Install them (as root, or with sudo), then run make again:" >&2
        echo "  $(install_hint "${need_packages[@]}")" >&2
        exit 1
    fi
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq "${need_packages[@]}" >/dev/null
    # Debian may start its own pgbouncer service (port 6432); the tests start theirs on a free port.
    major=$(installed_major)  # should pg_config name another major than apt's default, match it
    if [ -n "$major" ] && ! cron_present "$major"; then apt-get install -y -qq "postgresql-$major-cron" >/dev/null; fi
    # Debian starts a default cluster on install; pybatch runs its own, so leave that one alone.
fi

if [ ! -x .venv/bin/python ]; then
    python3 -m venv .venv
fi
stamp=.venv/.pybatch-installed
# Whether .venv still holds pybatch: `pip uninstall pybatch-pg` (the README's last step) removes
# it and its command but leaves the stamp. (Not `import pybatch`: from here that finds the checkout.)
installed() {
    [ -x .venv/bin/pybatch ] \
        && .venv/bin/python -c 'import importlib.metadata as m; m.version("pybatch-pg")' >/dev/null 2>&1
}
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ] || ! installed; then
    .venv/bin/python -m pip install --quiet --upgrade pip 2>/dev/null || true
    # The distribution was once called `pybatch` (a name PyPI gives to another project): drop it.
    if .venv/bin/python -m pip show --quiet pybatch >/dev/null 2>&1; then
        .venv/bin/python -m pip uninstall --quiet --yes pybatch
    fi
    .venv/bin/python -m pip install --quiet -e '.[cli,bench,metrics,plot,dev,docs]'
    touch "$stamp"
fi

# The Node.js example (examples/node): its locked packages, when node and npm are here.
if command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1; then
    node_stamp=examples/node/node_modules/.package-lock.json
    if [ ! -f "$node_stamp" ] || [ examples/node/package-lock.json -nt "$node_stamp" ]; then
        (cd examples/node && npm ci --no-audit --no-fund --loglevel=error >/dev/null) \
            || echo "pybatch setup: npm ci in examples/node failed; only the Node.js example needs it" >&2
    fi
fi
