#!/usr/bin/env bash
# Test-only builds from third_party/ (sources and licences in the repository), run by `make test` before any server starts:
#   pg_cron 1.6 (seconds schedules) into a private copy of the server, for the tests of the
#   pg_cron 1.5+ path (Debian 12 ships pg_cron 1.4 only).
# Building may install the server's dev package, which can upgrade the server's minor
# version; servers started before that would fail to load libraries, hence "before any starts".
# As a normal user it builds pg_cron 1.6 when the server's dev package is installed, and
# otherwise says what to install and carries on: the test that needs it then fails saying so.
set -euo pipefail
cd "$(dirname "$0")/.."
vendor=${PYBATCH_VENDOR:-third_party}
dest=${PYBATCH_CRON16_HOME:-/var/tmp/pg-cron16}

# Citus 13.2.2 for the Citus tests (tests/integration/test_citus.py); headers pinned to the
# installed server, so nothing running is upgraded. As a normal user it says what to run.
bash scripts/build_citus.sh >&2 || echo "pybatch setup: Citus not built; the Citus tests will fail (CI) or skip" >&2

if [ ! -f "$vendor/pg_cron/build.sh" ]; then
    echo "pybatch setup: $vendor/pg_cron/build.sh not found (a partial checkout?); the pg_cron 1.6 tests will fail" >&2
    exit 0
fi
if ls "$dest"/done-* >/dev/null 2>&1; then
    exit 0
fi
# A normal user can build it too (into a directory it can write), once the server's dev
# package is there; only installing that package needs root.
pg_config=$(command -v pg_config || ls /usr/lib/postgresql/*/bin/pg_config 2>/dev/null | sort -V | tail -n1)
pgxs=$(dirname "$("$pg_config" --pgxs 2>/dev/null || echo /nonexistent/x)")
if [ "$(id -u)" -ne 0 ] && [ ! -d "$pgxs" ]; then
    major=$("$pg_config" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
    echo "pybatch setup: pg_cron 1.6 (for the tests of seconds schedules) needs the server's dev package:" >&2
    echo "  sudo apt-get install -y postgresql-server-dev-$major   # then run make test again" >&2
    exit 0
fi
echo "pybatch setup: building pg_cron 1.6 into $dest (once, about a minute)" >&2
bash "$vendor/pg_cron/build.sh" "$dest" >/dev/null
