"""Schema migrations with yoyo: apply, status, rollback, print SQL.

yoyo wants a URI; pybatch speaks libpq DSNs. The DSN is parsed into keyword
arguments and handed to yoyo's psycopg 3 backend as connection arguments, so
every libpq form (URI, key=value, PG* variables) works unchanged.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import psycopg
import psycopg.conninfo
from psycopg import sql
from yoyo import read_migrations
from yoyo.backends.base import DatabaseBackend
from yoyo.connections import DatabaseURI, get_backend_class
from yoyo.migrations import MigrationList

from pybatch import db, resources
from pybatch.errors import MigrationError, PermissionDenied, PybatchError

log = logging.getLogger(__name__)

MIGRATION_TABLE = "_yoyo_migration"
# Session advisory lock: two `migrate` runs at once queue up instead of racing
# on yoyo's own tables. It is released if the process dies.
MIGRATE_LOCK_KEY = 7089336938131513955


@dataclass(frozen=True)
class MigrationState:
    id: str
    applied: bool


def _backend(dsn: str) -> DatabaseBackend:
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    dbname = params.pop("dbname", None)
    params["application_name"] = "pybatch-migrate"
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
def _locked(dsn: str) -> Iterator[DatabaseBackend]:
    lock_conn = db.connect(dsn)
    try:
        with db.translated("cannot take the migration lock"):
            _check_can_create(lock_conn)
            lock_conn.execute("SELECT pg_advisory_lock(%s)", (MIGRATE_LOCK_KEY,))
        backend = _backend(dsn)
        try:
            with backend.lock(timeout=60):
                yield backend
        finally:
            backend.connection.close()
    finally:
        lock_conn.close()


def status(dsn: str) -> list[MigrationState]:
    """Every known migration, in order, with whether it is applied.

    Read-only: it reads yoyo's table directly and creates nothing (yoyo's own
    backend would create its bookkeeping tables on a database without pybatch).
    """
    with db.connect(dsn) as conn, db.translated("cannot read migration state"):
        row = conn.execute("SELECT to_regclass(%s) IS NOT NULL", (MIGRATION_TABLE,)).fetchone()
        applied: set[str] = set()
        if row and row[0]:
            query = sql.SQL("SELECT migration_id FROM {}").format(sql.Identifier(MIGRATION_TABLE))
            applied = {r[0] for r in conn.execute(query)}
    return [MigrationState(m.id, m.id in applied) for m in _migrations()]


def pending_ids(dsn: str) -> list[str]:
    return [m.id for m in status(dsn) if not m.applied]


def apply(dsn: str, *, progress: Callable[[str], None] | None = None) -> list[str]:
    """Apply pending migrations; return their ids. Safe to run twice at once."""
    with _locked(dsn) as backend:
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
        return [m.id for m in pending]


def rollback(dsn: str, *, before: Callable[[], None] | None = None) -> str | None:
    """Roll back the last applied migration; return its id (None if nothing is applied).

    `before` runs first, inside the lock: it removes pybatch's scheduled jobs,
    which live in another database and would otherwise keep calling a dropped function.
    """
    with _locked(dsn) as backend:
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


def migration_sql(dsn: str | None, *, all_migrations: bool = False) -> str:
    """The SQL of pending migrations (every one with all_migrations), for a DBA to read or run."""
    wanted = None if all_migrations or dsn is None else set(pending_ids(dsn))
    chunks = []
    folder = resources.migrations_dir()
    for migration in _migrations():
        if wanted is not None and migration.id not in wanted:
            continue
        text = (folder / f"{migration.id}.sql").read_text(encoding="utf-8")
        chunks.append(f"-- migration {migration.id}\n{text.rstrip()}\n")
    return "\n".join(chunks)
