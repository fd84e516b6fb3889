"""sql/schema.sql (the canonical schema) and the migrations build the same catalog."""

from __future__ import annotations

from collections.abc import Iterator

import psycopg
import pytest

from pybatch import resources

CATALOG_QUERIES = {
    "relations": """
        SELECT c.relname, c.relkind, c.relpersistence, c.reloptions::text, obj_description(c.oid, 'pg_class')
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname IN ('pybatch', 'public') AND c.relname NOT LIKE '%yoyo%'
        ORDER BY 1""",
    "columns": """
        SELECT c.relname, a.attname, format_type(a.atttypid, a.atttypmod), a.attnotnull,
               pg_get_expr(d.adbin, d.adrelid), col_description(c.oid, a.attnum)
        FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid
        JOIN pg_namespace n ON n.oid = c.relnamespace
        LEFT JOIN pg_attrdef d ON d.adrelid = a.attrelid AND d.adnum = a.attnum
        WHERE n.nspname IN ('pybatch', 'public') AND a.attnum > 0 AND NOT a.attisdropped
          AND c.relname NOT LIKE '%yoyo%'
        ORDER BY 1, 2""",
    "constraints": """
        SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid)
        FROM pg_constraint WHERE connamespace IN ('pybatch'::regnamespace, 'public'::regnamespace)
          AND conrelid::regclass::text NOT LIKE '%yoyo%'
        ORDER BY 1, 2""",
    "indexes": """
        SELECT schemaname, indexname, indexdef FROM pg_indexes
        WHERE schemaname IN ('pybatch', 'public') AND tablename NOT LIKE '%yoyo%' ORDER BY 1, 2""",
    "functions": """
        SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid), p.proconfig::text, p.prosecdef,
               p.proacl::text, obj_description(p.oid, 'pg_proc')
        FROM pg_proc p WHERE p.pronamespace = 'pybatch'::regnamespace ORDER BY 1""",
    "grants": """
        SELECT c.relname, c.relacl::text FROM pg_class c
        WHERE c.relnamespace = 'pybatch'::regnamespace ORDER BY 1""",
    "types": """
        SELECT t.typname, t.typtype FROM pg_type t
        WHERE t.typnamespace = 'pybatch'::regnamespace ORDER BY 1""",
    "views": """
        SELECT viewname, definition FROM pg_views WHERE schemaname = 'pybatch' ORDER BY 1""",
}


def catalog(dsn: str) -> dict[str, list[tuple[object, ...]]]:
    with psycopg.connect(dsn) as conn:
        return {name: conn.execute(query).fetchall() for name, query in CATALOG_QUERIES.items()}


@pytest.fixture
def schema_dsn(empty_dsn: str) -> Iterator[str]:
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        conn.execute(resources.read_sql("schema.sql"))
    yield empty_dsn


@pytest.mark.parametrize("part", sorted(CATALOG_QUERIES))
def test_schema_sql_matches_migrations(dsn: str, schema_dsn: str, part: str) -> None:
    migrated = catalog(dsn)[part]
    canonical = catalog(schema_dsn)[part]
    assert migrated, f"no {part} found: the comparison would prove nothing"
    assert canonical == migrated
