#!/usr/bin/env bash
# Rebuild sql/schema.sql, the canonical current schema, from migrations/ in order.
# tests/integration/test_schema_catalog.py checks that both build the same catalog.
set -euo pipefail
cd "$(dirname "$0")/.."
{
cat <<'HEADER'
-- pybatch: the canonical current schema, for reading and for tools that want
-- the whole schema at once (`psql -f sql/schema.sql` on an empty database).
-- It must build the same catalog as applying every migration in migrations/:
-- tests/integration/test_schema_catalog.py checks that. Rebuild it with
-- scripts/sync_schema.sh after adding a migration.

HEADER
for f in $(ls migrations/[0-9]*.sql | grep -v '\.rollback\.sql$' | sort); do
  echo "-- ==========================================================================="
  echo "-- from $f"
  echo "-- ==========================================================================="
  grep -v '^-- depends:' "$f"
  echo
done
} > sql/schema.sql
