"""Schema migrations with yoyo: apply, status, rollback, print SQL.

Every operation takes the caller's autocommit connection and leaves it as it found
it. yoyo's backend opens a connection of its own from a URI: it gets the caller's
connection parameters (db.params_like: server, role, password, options) as
connection arguments, so every libpq form (URI, key=value, PG* variables) works
unchanged. The migrate lock is a session advisory lock on the caller's connection,
released before the operation returns.

pybatch's yoyo bookkeeping (_yoyo_migration, _yoyo_log, _yoyo_version,
yoyo_lock) lives in a schema of its own, BOOKKEEPING_SCHEMA, never in `public`
where another application's yoyo keeps its tables: a migration id like
`0001_initial` would otherwise be shared. yoyo's PostgreSQL backend takes a
`schema` connection argument and sets search_path to it on its connection, so
every migration runs with that search_path (they schema-qualify every name).
Installations made with the old public bookkeeping are carried over on the
next migrate (see _carry_over).
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import psycopg
from psycopg import sql
from yoyo import read_migrations
from yoyo.backends.base import DatabaseBackend
from yoyo.connections import DatabaseURI, get_backend_class
from yoyo.migrations import MigrationList

from pybatch import db, resources, versions
from pybatch.errors import MigrationError, PermissionDenied, PybatchError

log = logging.getLogger(__name__)

MIGRATION_TABLE = "_yoyo_migration"
LOG_TABLE = "_yoyo_log"
BOOKKEEPING_SCHEMA = "pybatch_migrations"
# Where pybatch kept its bookkeeping before it had a schema of its own (shared with other apps).
LEGACY_SCHEMA = "public"
# Session advisory lock: two `migrate` runs at once queue up instead of racing
# on yoyo's own tables. It is released if the process dies.
MIGRATE_LOCK_KEY = 7089336938131513955


@dataclass(frozen=True)
class MigrationState:
    id: str
    applied: bool


def _backend(conn: psycopg.Connection) -> DatabaseBackend:
    """yoyo's backend, on a session of its own like `conn` (yoyo builds its connection from a URI)."""
    params: dict[str, Any] = db.params_like(conn, application_name="pybatch-migrate")
    dbname = params.pop("dbname")
    # yoyo's backend pops `schema` and runs SET search_path TO it: all four tables land there.
    params["schema"] = BOOKKEEPING_SCHEMA
    uri = DatabaseURI("postgresql+psycopg", None, None, None, None, dbname, params)
    backend_class = get_backend_class("postgresql+psycopg")
    with db.translated("cannot open the migration connection"):
        backend: DatabaseBackend = backend_class(uri, MIGRATION_TABLE)
        backend.init_database()
    return backend


def _migrations() -> MigrationList:
    return read_migrations(str(resources.migrations_dir()))


def _check_can_create(conn: psycopg.Connection) -> None:
    """Fail early, and clearly, when the role cannot create pybatch's objects
    (yoyo would otherwise wait on a lock table it could not create)."""
    row = conn.execute(
        "SELECT current_user, current_database(), current_schema(),"
        " has_database_privilege(current_database(), 'CREATE'),"
        " COALESCE(has_schema_privilege(current_schema(), 'CREATE'), false)"
    ).fetchone()
    assert row is not None
    user, dbname, schema, can_create_schema, can_create_in_schema = row
    if schema is None:
        raise PermissionDenied(f"role {user!r} has no schema on its search_path in database {dbname!r}")
    if not (can_create_schema and can_create_in_schema):
        raise PermissionDenied(
            f"permission denied: role {user!r} needs CREATE on database {dbname!r} and on schema {schema!r} "
            "to install pybatch (run `pybatch migrate` as the database owner)"
        )


@contextlib.contextmanager
def _locked(conn: psycopg.Connection, operation: str) -> Iterator[DatabaseBackend]:
    """Hold the migrate lock on `conn` (released on the way out) and yield yoyo's backend."""
    db.require_autocommit(conn, operation)
    with db.translated("cannot take the migration lock"):
        _check_can_create(conn)
        conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATE_LOCK_KEY,))
    try:
        with db.translated(f"cannot create schema {BOOKKEEPING_SCHEMA} for pybatch's migration bookkeeping"):
            conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(BOOKKEEPING_SCHEMA)))
        backend = _backend(conn)
        try:
            with backend.lock(timeout=60):
                with db.translated("cannot create pybatch's migration bookkeeping"):
                    backend.ensure_internal_schema_updated()  # yoyo's tables, in BOOKKEEPING_SCHEMA
                _carry_over(conn)
                yield backend
        finally:
            backend.connection.close()
    finally:
        # The caller's session goes back as it came: without the lock (a dead connection has none).
        with contextlib.suppress(psycopg.Error):
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATE_LOCK_KEY,))


def _table(schema: str, name: str) -> sql.Composed:
    return sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))


def _has_migration_table(conn: psycopg.Connection, schema: str) -> bool:
    """Whether schema.{MIGRATION_TABLE} exists with yoyo's current layout (a migration_id column).

    Read from the catalog, not with to_regclass: it needs no privilege on the schema."""
    row = conn.execute(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_attribute a"
        " JOIN pg_catalog.pg_class c ON c.oid = a.attrelid"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s AND a.attname = 'migration_id' AND NOT a.attisdropped)",
        (schema, MIGRATION_TABLE),
    ).fetchone()
    return bool(row and row[0])


def _pybatch_schema_exists(conn: psycopg.Connection) -> bool:
    row = conn.execute("SELECT EXISTS (SELECT FROM pg_catalog.pg_namespace WHERE nspname = 'pybatch')").fetchone()
    return bool(row and row[0])


def _ids_in(conn: psycopg.Connection, schema: str, only: list[str] | None = None) -> list[str]:
    table = _table(schema, MIGRATION_TABLE)
    if only is None:
        query = sql.SQL("SELECT migration_id FROM {} ORDER BY migration_id").format(table)
        return [str(r[0]) for r in conn.execute(query)]
    query = sql.SQL("SELECT migration_id FROM {} WHERE migration_id = ANY(%s) ORDER BY migration_id").format(table)
    return [str(r[0]) for r in conn.execute(query, (only,))]


def legacy_ids(conn: psycopg.Connection) -> list[str]:
    """pybatch's migration ids still recorded in the old shared bookkeeping (public._yoyo_migration).

    Only an installation made before pybatch had its own bookkeeping has them: schema pybatch
    exists, pybatch's own bookkeeping records none of its migrations, and public's table names
    migrations pybatch ships. Another app's rows (even one called 0001_initial, where pybatch
    was never installed) never count. Read-only."""
    shipped = [m.id for m in _migrations()]
    if not _pybatch_schema_exists(conn) or not _has_migration_table(conn, LEGACY_SCHEMA):
        return []
    if _has_migration_table(conn, BOOKKEEPING_SCHEMA) and _ids_in(conn, BOOKKEEPING_SCHEMA, shipped):
        return []  # already carried over
    return _ids_in(conn, LEGACY_SCHEMA, shipped)


def _carry_over(conn: psycopg.Connection) -> None:
    """Move an old installation's rows from public's yoyo tables into pybatch's own, once.

    Runs under the migrate lock after yoyo created its tables in BOOKKEEPING_SCHEMA. Only rows
    of migrations pybatch ships move (copied, then deleted from public, in one transaction);
    other apps' rows and public's tables themselves stay. A second run finds nothing to do."""
    with db.translated(f"cannot carry pybatch's migration history over from {LEGACY_SCHEMA}"), conn.transaction():
        ids = legacy_ids(conn)
        if not ids:
            return
        for name, columns in ((MIGRATION_TABLE, _MIGRATION_COLUMNS), (LOG_TABLE, _LOG_COLUMNS)):
            source, target = _table(LEGACY_SCHEMA, name), _table(BOOKKEEPING_SCHEMA, name)
            cols = sql.SQL(", ").join(sql.Identifier(c) for c in columns)
            conn.execute(
                sql.SQL(
                    "INSERT INTO {target} ({cols}) SELECT {cols} FROM {source}"
                    " WHERE migration_id = ANY(%s) ON CONFLICT DO NOTHING"
                ).format(target=target, cols=cols, source=source),
                (ids,),
            )
            conn.execute(sql.SQL("DELETE FROM {} WHERE migration_id = ANY(%s)").format(source), (ids,))
    log.info(
        "carried pybatch's migration history over to its own schema",
        extra={"migrations": ids, "schema": BOOKKEEPING_SCHEMA},
    )


# yoyo 6+ layout of the two tables that hold per-migration rows (_yoyo_version and yoyo_lock hold none).
_MIGRATION_COLUMNS = ("migration_hash", "migration_id", "applied_at_utc")
_LOG_COLUMNS = (
    "id",
    "migration_hash",
    "migration_id",
    "operation",
    "username",
    "hostname",
    "comment",
    "created_at_utc",
)


def recorded_ids(conn: psycopg.Connection) -> list[str]:
    """Every migration id pybatch's bookkeeping records (an old installation's: its ids in public).

    Read-only: creates nothing (yoyo's own backend would create its tables)."""
    legacy = legacy_ids(conn)
    if legacy:
        return legacy
    if not _has_migration_table(conn, BOOKKEEPING_SCHEMA):
        return []
    return _ids_in(conn, BOOKKEEPING_SCHEMA)


def status(conn: psycopg.Connection) -> list[MigrationState]:
    """Every known migration, in order, with whether it is applied.

    Read-only: it reads the bookkeeping directly and creates or moves nothing (yoyo's own
    backend would create its tables on a database without pybatch; migrate carries an old
    installation's public bookkeeping over, status only reads it)."""
    db.require_autocommit(conn, "migrate.status")
    with db.translated("cannot read migration state"):
        applied = set(recorded_ids(conn))
    return [MigrationState(m.id, m.id in applied) for m in _migrations()]


def pending_ids(conn: psycopg.Connection) -> list[str]:
    return [m.id for m in status(conn) if not m.applied]


def apply(conn: psycopg.Connection, *, progress: Callable[[str], None] | None = None) -> list[str]:
    """Apply pending migrations; return their ids. Safe to run twice at once.

    `conn` is the caller's autocommit connection; the migrations run on yoyo's own session."""
    versions.require_supported(conn, "migrate")
    with _locked(conn, "migrate.apply") as backend:
        pending = backend.to_apply(_migrations())
        for migration in pending:
            if progress:
                progress(migration.id)
            try:
                backend.apply_one(migration)
            except PybatchError:
                raise
            except Exception as exc:
                raise MigrationError(f"migration {migration.id} failed: {db.first_line(exc)}") from None
            log.info("applied migration", extra={"migration": migration.id})
        _align_owner(conn)
        return [m.id for m in pending]


def _align_owner(conn: psycopg.Connection) -> None:
    """Give the merge functions to the owner of public.workspace_agents, on every run: the
    table may have changed hands since the last migration (see pybatch.align_owner())."""
    with db.translated("cannot align pybatch's functions with the table owner"):
        row = conn.execute("SELECT to_regprocedure('pybatch.align_owner()') IS NOT NULL").fetchone()
        if row and row[0]:
            conn.execute("SELECT pybatch.align_owner()")


def rollback(conn: psycopg.Connection, *, before: Callable[[], None] | None = None) -> str | None:
    """Roll back the last applied migration; return its id (None if nothing is applied).

    `before` runs first, inside the lock: it removes pybatch's scheduled jobs,
    which live in another database and would otherwise keep calling a dropped function.
    """
    versions.require_supported(conn, "migrate --rollback")
    with _locked(conn, "migrate.rollback") as backend:
        applied = backend.to_rollback(_migrations())
        if not applied:
            return None
        last = applied[:1]
        if before is not None:
            before()
        try:
            backend.rollback_migrations(last)
        except Exception as exc:
            raise MigrationError(f"rollback of {last[0].id} failed: {db.first_line(exc)}") from None
        log.info("rolled back migration", extra={"migration": last[0].id})
        return str(last[0].id)


def migration_sql(conn: psycopg.Connection | None, *, all_migrations: bool = False) -> str:
    """The SQL of pending migrations (every one with all_migrations, or with no connection),
    for a DBA to read or run."""
    wanted = None if all_migrations or conn is None else set(pending_ids(conn))
    chunks = []
    folder = resources.migrations_dir()
    for migration in _migrations():
        if wanted is not None and migration.id not in wanted:
            continue
        text = (folder / f"{migration.id}.sql").read_text(encoding="utf-8")
        chunks.append(f"-- migration {migration.id}\n{text.rstrip()}\n")
    return "\n".join(chunks)
