#!/usr/bin/env bash
# Build and install Citus 13.2.2 for the installed PostgreSQL (tests and `pybatch local --citus`).
# Debian has no Citus package; a real deployment installs Citus's own packages (docs/citus.md).
#
# Same source, patch and steps as third_party/citus/build.sh, with one difference: the
# server headers are installed at the SAME version as the running postgresql-N package
# (postgresql-server-dev-N=<installed version>), so apt does not upgrade postgresql-N under
# servers that are already running (an upgrade makes them fail to load plpgsql.so until
# restarted). When that exact version is no longer in the archive, it falls back to
# third_party/citus/build.sh, which takes the newest minor: restart running servers afterwards.
# Idempotent: does nothing when citus.so is already installed. Needs root.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
vendor=${CITUS_VENDOR:-$root/third_party/citus}
pg_config=${PG_CONFIG:-$(command -v pg_config || true)}
if [[ -z $pg_config ]]; then pg_config=$(ls /usr/lib/postgresql/*/bin/pg_config 2>/dev/null | sort -V | tail -n1); fi
[[ -n $pg_config ]] || { echo "build_citus: no pg_config found" >&2; exit 1; }
libdir=$("$pg_config" --pkglibdir)
if [[ -f $libdir/citus.so && -z ${FORCE:-} ]]; then echo "citus already installed in $libdir"; exit 0; fi
[[ $(id -u) == 0 ]] || { echo "build_citus: needs root (apt-get, make install); run: sudo bash $0" >&2; exit 1; }
[[ -f $vendor/citus-13.2.2-src.tar.gz ]] || { echo "build_citus: no Citus source in $vendor" >&2; exit 1; }
major=$("$pg_config" --version | sed -E 's/^PostgreSQL ([0-9]+).*/\1/')
installed=$(dpkg-query -W -f='${Version}' "postgresql-$major" 2>/dev/null || true)
deps=(liblz4-dev libzstd-dev libkrb5-dev libssl-dev libselinux1-dev libxslt1-dev libpam0g-dev libreadline-dev)
if [[ -n $installed ]] && apt-get install -y -qq --no-upgrade "postgresql-server-dev-$major=$installed" "${deps[@]}" >/dev/null 2>&1 \
   || { apt-get update -qq >/dev/null 2>&1 && [[ -n $installed ]] && apt-get install -y -qq "postgresql-server-dev-$major=$installed" "${deps[@]}" >/dev/null; }; then
  work=$(mktemp -d); trap 'rm -rf "$work"' EXIT
  tar -xzf "$vendor/citus-13.2.2-src.tar.gz" -C "$work"
  cd "$work/citus-13.2.2"
  patch -p1 < "$vendor/pg15-minor-compat.patch" >/dev/null
  PG_CONFIG=$pg_config ./configure --without-libcurl >/dev/null
  make -j"$(nproc)" >/dev/null
  make install >/dev/null
  echo "citus 13.2.2 installed for PostgreSQL $major ($installed, headers pinned)"
else
  echo "build_citus: postgresql-server-dev-$major=$installed unavailable; using $vendor/build.sh (it may upgrade postgresql-$major: restart running servers)" >&2
  PG_CONFIG=$pg_config bash "$vendor/build.sh"
fi
