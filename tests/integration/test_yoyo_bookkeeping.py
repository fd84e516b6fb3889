"""pybatch's yoyo bookkeeping is its own (schema pybatch_migrations), never another app's in public.

Another application that uses yoyo keeps _yoyo_migration, _yoyo_log, _yoyo_version and
yoyo_lock in `public`. Before, pybatch shared them: an app migration called 0001_initial made
pybatch skip its own, and uninstall dropped the app's history.
"""

from __future__ import annotations

from pathlib import Path

import psycopg
import psycopg.conninfo
import pytest
from psycopg import sql
from yoyo import get_backend, read_migrations

from pybatch import migrate, resources
from pybatch.errors import MigrationError

YOYO_TABLES = ("_yoyo_migration", "_yoyo_log", "_yoyo_version", "yoyo_lock")
SHIPPED = [m.id for m in read_migrations(str(resources.migrations_dir()))]


def yoyo_uri(dsn: str) -> str:
    """A yoyo URI for the test database, with yoyo's default bookkeeping (the current schema, public)."""
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    return f"postgresql+psycopg://{params['user']}@{params['host']}:{params['port']}/{params['dbname']}"


@pytest.fixture
def other_app(tmp_path: Path) -> Path:
    """Another application's yoyo migrations; its first one has pybatch's first migration's id."""
    folder = tmp_path / "other_app"
    folder.mkdir()
    (folder / "0001_initial.sql").write_text("CREATE TABLE public.other_app_things (id int PRIMARY KEY);\n")
    (folder / "0002_more.sql").write_text(
        "-- depends: 0001_initial\nALTER TABLE public.other_app_things ADD COLUMN name text;\n"
    )
    return folder


def yoyo_apply(dsn: str, folder: Path) -> None:
    """Apply migrations the way any yoyo user (and pybatch before this fix) does: bookkeeping in public."""
    backend = get_backend(yoyo_uri(dsn))
    try:
        with backend.lock():
            backend.apply_migrations(backend.to_apply(read_migrations(str(folder))))
    finally:
        backend.connection.close()


def yoyo_pending(dsn: str, folder: Path) -> list[str]:
    backend = get_backend(yoyo_uri(dsn))
    try:
        return [m.id for m in backend.to_apply(read_migrations(str(folder)))]
    finally:
        backend.connection.close()


def rows(dsn: str, schema: str, table: str) -> list[tuple[object, ...]]:
    with psycopg.connect(dsn) as conn:
        query = sql.SQL("SELECT * FROM {}.{} ORDER BY 1, 2").format(sql.Identifier(schema), sql.Identifier(table))
        return conn.execute(query).fetchall()


def ids(dsn: str, schema: str, table: str = "_yoyo_migration") -> list[str]:
    with psycopg.connect(dsn) as conn:
        query = sql.SQL("SELECT migration_id FROM {}.{} ORDER BY 1").format(
            sql.Identifier(schema), sql.Identifier(table)
        )
        return [str(r[0]) for r in conn.execute(query)]


def tables_in(dsn: str, schema: str) -> set[str]:
    with psycopg.connect(dsn) as conn:
        found = conn.execute("SELECT tablename FROM pg_tables WHERE schemaname = %s", (schema,)).fetchall()
    return {r[0] for r in found}


def schema_exists(dsn: str, name: str) -> bool:
    with psycopg.connect(dsn) as conn:
        row = conn.execute("SELECT count(*) FROM pg_namespace WHERE nspname = %s", (name,)).fetchone()
    return row == (1,)


def test_fresh_install_keeps_its_bookkeeping_in_its_own_schema(empty_dsn: str, empty_conn: psycopg.Connection) -> None:
    assert migrate.apply(empty_conn).migrations == SHIPPED
    assert tables_in(empty_dsn, migrate.BOOKKEEPING_SCHEMA) == set(YOYO_TABLES)
    assert not tables_in(empty_dsn, "public") & set(YOYO_TABLES)  # nothing of yoyo's in public
    assert ids(empty_dsn, migrate.BOOKKEEPING_SCHEMA) == sorted(SHIPPED)


def test_another_apps_0001_initial_does_not_hide_pybatchs(
    empty_dsn: str, empty_conn: psycopg.Connection, other_app: Path
) -> None:
    """(a) The other app applied its own 0001_initial first: pybatch still installs everything."""
    yoyo_apply(empty_dsn, other_app)
    before = {table: rows(empty_dsn, "public", table) for table in ("_yoyo_migration", "_yoyo_log", "_yoyo_version")}
    assert [m.id for m in migrate.status(empty_conn) if m.applied] == []  # the app's 0001_initial is not ours

    assert migrate.apply(empty_conn).migrations == SHIPPED
    assert all(m.applied for m in migrate.status(empty_conn))
    with psycopg.connect(empty_dsn) as conn:
        assert conn.execute("SELECT to_regclass('pybatch.settings') IS NOT NULL").fetchone() == (True,)
    # The other app's bookkeeping is exactly as it was, and yoyo still sees its migrations applied.
    assert {table: rows(empty_dsn, "public", table) for table in before} == before
    assert yoyo_pending(empty_dsn, other_app) == []
    assert migrate.apply(empty_conn) == migrate.Applied([], [])


def test_migrations_this_version_does_not_ship_are_refused_before_anything_is_applied(
    empty_dsn: str, empty_conn: psycopg.Connection
) -> None:
    """A database installed by another pybatch (a newer one, or a development layout before the
    baseline) records migration ids this version does not know: migrate refuses, naming them."""
    migrate.apply(empty_conn)
    with psycopg.connect(empty_dsn, autocommit=True) as conn:
        table = sql.Identifier(migrate.BOOKKEEPING_SCHEMA, "_yoyo_migration")
        conn.execute(
            sql.SQL("INSERT INTO {} (migration_hash, migration_id, applied_at_utc) VALUES ('x', %s, now())").format(
                table
            ),
            ("0009_from_the_future",),
        )
        conn.execute("DROP FUNCTION pybatch.flush_tidy()")  # a routine migrate would otherwise restore
    with pytest.raises(MigrationError, match="0009_from_the_future"):
        migrate.apply(empty_conn)
    with psycopg.connect(empty_dsn) as conn:
        assert conn.execute("SELECT to_regprocedure('pybatch.flush_tidy()')").fetchone() == (None,)
