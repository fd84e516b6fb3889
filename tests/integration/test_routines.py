"""Routines and views come from one source file each (sql/routines/, sql/views/), which
`pybatch migrate` applies and re-applies when the file changed or its object drifted; versioned
migrations hold only state, and each one's rollback restores the catalog from before it."""

from __future__ import annotations

import dataclasses
import uuid
from collections.abc import Iterator

import psycopg
import pytest
from psycopg import sql

from pybatch import doctor, migrate, routines
from pybatch.routines import State
from tests.helpers import connected

# The catalog of schemas pybatch and public, part by part (yoyo's own tables left out).
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
        SELECT c.conrelid::regclass::text, c.conname, pg_get_constraintdef(c.oid)
        FROM pg_constraint c JOIN pg_namespace n ON n.oid = c.connamespace
        WHERE n.nspname IN ('pybatch', 'public') AND c.conrelid::regclass::text NOT LIKE '%yoyo%'
        ORDER BY 1, 2""",
    "indexes": """
        SELECT schemaname, indexname, indexdef FROM pg_indexes
        WHERE schemaname IN ('pybatch', 'public') AND tablename NOT LIKE '%yoyo%' ORDER BY 1, 2""",
    "functions": """
        SELECT p.oid::regprocedure::text, pg_get_functiondef(p.oid), p.proconfig::text, p.prosecdef,
               p.proacl::text, obj_description(p.oid, 'pg_proc'), p.proowner::regrole::text
        FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace WHERE n.nspname = 'pybatch' ORDER BY 1""",
    "grants": """
        SELECT c.relname, c.relacl::text FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE n.nspname = 'pybatch' ORDER BY 1""",
    "types": """
        SELECT t.typname, t.typtype FROM pg_type t JOIN pg_namespace n ON n.oid = t.typnamespace
        WHERE n.nspname = 'pybatch' ORDER BY 1""",
    "views": """
        SELECT viewname, definition FROM pg_views WHERE schemaname = 'pybatch' ORDER BY 1""",
    "schemas": """
        SELECT nspname, nspacl::text, obj_description(oid, 'pg_namespace') FROM pg_namespace
        WHERE nspname = 'pybatch'""",
}


def catalog(conn: psycopg.Connection) -> dict[str, list[tuple[object, ...]]]:
    return {name: conn.execute(query).fetchall() for name, query in CATALOG_QUERIES.items()}


def without_sourced_objects(parts: dict[str, list[tuple[object, ...]]]) -> dict[str, list[tuple[object, ...]]]:
    """The catalog minus what the source files define (routines and views are re-applied from
    their sources by every migrate, not restored by a rollback)."""
    names = {s.name.removeprefix("pybatch.") for s in routines.sources()}
    kept = dict(parts)
    kept["functions"] = [r for r in parts["functions"] if str(r[0]).split("(")[0].removeprefix("pybatch.") not in names]
    kept["views"] = [r for r in parts["views"] if r[0] not in names]
    for part in ("relations", "grants"):
        kept[part] = [r for r in parts[part] if r[0] not in names]
    kept["columns"] = [r for r in parts["columns"] if r[0] not in names]
    kept["types"] = [r for r in parts["types"] if str(r[0]).removeprefix("_") not in names]  # views' row types
    return kept


def test_every_routine_and_view_has_one_source_and_every_source_its_object(conn: psycopg.Connection) -> None:
    in_catalog = routines.fingerprints(conn)
    defined = {s.name for s in routines.sources()}
    assert len(defined) > 40, "too few sources found: the comparison would prove nothing"
    assert set(in_catalog) == defined
    overloads = conn.execute(
        "SELECT proname FROM pg_proc WHERE pronamespace = 'pybatch'::regnamespace GROUP BY 1 HAVING count(*) > 1"
    ).fetchall()
    assert overloads == []  # one name, one routine: its source file is named after it
    assert routines.unknown_objects(conn) == []
    assert all(s.state is State.CURRENT for s in routines.states(conn))


def test_applying_the_routines_again_changes_nothing(conn: psycopg.Connection) -> None:
    before = catalog(conn)
    assert migrate.apply(conn) == migrate.Applied([], [])
    conn.execute("DELETE FROM pybatch.routine_sources")  # forget them all: every source runs again
    again = migrate.apply(conn)
    assert sorted(again.routines) == sorted(s.path for s in routines.sources())
    after = catalog(conn)
    for part in CATALOG_QUERIES:
        assert after[part] == before[part], part


SHIPPED = routines.sources()


def _edited(path: str, old: str, new: str) -> tuple[routines.Source, ...]:
    """The shipped sources with one line of one file changed, as a contributor would edit it."""
    edited = []
    for source in SHIPPED:
        if source.path == path:
            assert old in source.text
            source = dataclasses.replace(source, text=source.text.replace(old, new))
        edited.append(source)
    return tuple(edited)


def test_an_edited_routine_is_named_by_status_then_applied_by_migrate(
    conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = "routines/inspect/seconds_text.sql"
    monkeypatch.setattr(routines, "sources", lambda: _edited(path, "|| ' s'", "|| ' seconds'"))
    stale = [(s.source.path, s.state) for s in migrate.routine_status(conn) if s.out_of_date]
    assert stale == [(path, State.CHANGED)]
    assert "|| ' seconds'" in migrate.migration_sql(conn)  # `pybatch sql` shows what migrate will run
    checks = {c.name: c for c in doctor.doctor(conn).checks}
    assert checks["routines"].level == doctor.FAIL and "pybatch.seconds_text (changed)" in checks["routines"].message

    assert migrate.apply(conn) == migrate.Applied([], [path])
    assert conn.execute("SELECT pybatch.seconds_text(interval '1.5 s')").fetchone() == ("1.5 seconds",)
    assert migrate.routine_status(conn) == [routines.SourceState(s, State.CURRENT) for s in routines.sources()]


@pytest.mark.parametrize(
    ("tamper", "source", "check"),
    [
        (
            "ALTER FUNCTION pybatch.flush_pass(pybatch.flush_result) SECURITY INVOKER",
            "routines/flush/flush_pass.sql",
            "SELECT prosecdef FROM pg_proc WHERE oid = 'pybatch.flush_pass(pybatch.flush_result)'::regprocedure",
        ),
        (
            "ALTER FUNCTION pybatch.merge_pass_in(regclass, regclass, integer, uuid) RESET enable_indexscan",
            "routines/flush/merge_pass_in.sql",
            "SELECT 'enable_indexscan=off' = ANY (proconfig) FROM pg_proc"
            " WHERE oid = 'pybatch.merge_pass_in(regclass, regclass, integer, uuid)'::regprocedure",
        ),
        (
            "ALTER FUNCTION pybatch.disconnect(uuid, timestamptz) SET search_path = public, pg_catalog",
            "routines/write/disconnect.sql",
            "SELECT 'search_path=pg_catalog, pg_temp' = ANY (proconfig) FROM pg_proc"
            " WHERE oid = 'pybatch.disconnect(uuid, timestamptz)'::regprocedure",
        ),
        (
            "DROP VIEW pybatch.staleness",
            "views/staleness.sql",
            "SELECT to_regclass('pybatch.staleness') IS NOT NULL",
        ),
    ],
)
def test_an_object_altered_or_dropped_since_migrate_is_named_and_restored(
    conn: psycopg.Connection, tamper: str, source: str, check: str
) -> None:
    conn.execute(tamper)
    assert conn.execute(check).fetchone() == (False,)
    assert [(s.source.path, s.state) for s in migrate.routine_status(conn) if s.out_of_date] == [
        (source, State.DRIFTED)
    ]
    assert migrate.apply(conn).routines == [source]
    assert conn.execute(check).fetchone() == (True,)


def test_a_view_that_changes_its_columns_is_rebuilt_with_its_grants(
    conn: psycopg.Connection, monkeypatch: pytest.MonkeyPatch
) -> None:
    reader = f"reader_{uuid.uuid4().hex[:8]}"
    conn.execute(sql.SQL("CREATE ROLE {}").format(sql.Identifier(reader)))
    try:
        conn.execute(
            sql.SQL("GRANT SELECT ON pybatch.flush_lock_holders, pybatch.health TO {}").format(sql.Identifier(reader))
        )
        path = "views/flush_lock_holders.sql"
        # name -> text changes the column's type: CREATE OR REPLACE VIEW cannot do that.
        monkeypatch.setattr(routines, "sources", lambda: _edited(path, "a.usename AS role", "a.usename::text AS role"))
        assert migrate.apply(conn).routines == [path]
        column_type = conn.execute(
            "SELECT format_type(atttypid, atttypmod) FROM pg_attribute"
            " WHERE attrelid = 'pybatch.flush_lock_holders'::regclass AND attname = 'role'"
        ).fetchone()
        assert column_type == ("text",)
        for view in ("pybatch.flush_lock_holders", "pybatch.health"):  # health reads it: rebuilt too
            granted = conn.execute("SELECT has_table_privilege(%s, %s, 'SELECT')", (reader, view)).fetchone()
            assert granted == (True,), view
        assert all(s.state is State.CURRENT for s in migrate.routine_status(conn))
    finally:
        conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(reader)))
        conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(reader)))


@pytest.fixture
def migration_ids() -> list[str]:
    ids = [m.id for m in migrate._migrations()]
    assert ids, "no migrations found"
    return ids


def _state_up_to(dsn: str, ids: list[str], n: int) -> dict[str, list[tuple[object, ...]]]:
    """The catalog of a fresh database with the first n migrations applied (n = 0: none)."""
    with psycopg.connect(dsn, autocommit=True) as conn:
        if n:
            migrate.apply(conn, target=ids[n - 1])
        return without_sourced_objects(catalog(conn))


@pytest.fixture
def second_empty_dsn(pg_cluster: object) -> Iterator[str]:
    from tests.conftest import _fresh_database

    yield from _fresh_database(pg_cluster, None)  # type: ignore[arg-type]


def test_rolling_back_each_migration_restores_the_catalog_from_before_it(
    empty_dsn: str, second_empty_dsn: str, migration_ids: list[str]
) -> None:
    """For each migration N: apply up to N (with the routines when N is the last), roll N back,
    and the catalog is what applying up to N-1 built. Routines and views are left out of the
    comparison: every migrate re-applies them from their sources, a rollback does not."""
    for n in range(1, len(migration_ids) + 1):
        with psycopg.connect(empty_dsn, autocommit=True) as conn:
            migrate.apply(conn, target=None if n == len(migration_ids) else migration_ids[n - 1])
            assert migrate.rollback(conn) == migration_ids[n - 1]
            rolled_back = without_sourced_objects(catalog(conn))
        expected = _state_up_to(second_empty_dsn, migration_ids, n - 1)
        for part in CATALOG_QUERIES:
            assert rolled_back[part] == expected[part], (migration_ids[n - 1], part)
        for dsn in (empty_dsn, second_empty_dsn):  # both from nothing again for the next N
            while connected(dsn, migrate.rollback):
                pass
