"""Schema migrations with yoyo, then the routines: apply, status, rollback, print SQL.

Two kinds of source (docs/architecture.md): versioned migrations (migrations/, state:
tables, types, columns, data) applied once each by yoyo, and one source file per
routine and view (sql/routines/, sql/views/) that pybatch.routines applies after them,
whenever its text or its object changed.

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

from pybatch import db, resources, routines, versions
from pybatch.errors import MigrationError, PermissionDenied, PybatchError

log = logging.getLogger(__name__)

MIGRATION_TABLE = "_yoyo_migration"
LOG_TABLE = "_yoyo_log"
BOOKKEEPING_SCHEMA = "pybatch_migrations"
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
                    # Monitoring roles may read which migrations are applied (`pybatch doctor`).
                    schema = sql.Identifier(BOOKKEEPING_SCHEMA)
                    conn.execute(sql.SQL("GRANT USAGE ON SCHEMA {} TO pg_monitor").format(schema))
                    conn.execute(
                        sql.SQL("GRANT SELECT ON {} TO pg_monitor").format(
                            sql.Identifier(BOOKKEEPING_SCHEMA, MIGRATION_TABLE)
                        )
                    )
                yield backend
        finally:
            backend.connection.close()
    finally:
        # The caller's session goes back as it came: without the lock (a dead connection has none).
        with contextlib.suppress(psycopg.Error):
            conn.execute("SELECT pg_advisory_unlock(%s)", (MIGRATE_LOCK_KEY,))


def _has_migration_table(conn: psycopg.Connection) -> bool:
    """Whether pybatch's bookkeeping table exists with yoyo's current layout (a migration_id column).

    Read from the catalog, not with to_regclass: it needs no privilege on the schema."""
    row = conn.execute(
        "SELECT EXISTS (SELECT FROM pg_catalog.pg_attribute a"
        " JOIN pg_catalog.pg_class c ON c.oid = a.attrelid"
        " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
        " WHERE n.nspname = %s AND c.relname = %s AND a.attname = 'migration_id' AND NOT a.attisdropped)",
        (BOOKKEEPING_SCHEMA, MIGRATION_TABLE),
    ).fetchone()
    return bool(row and row[0])


def recorded_ids(conn: psycopg.Connection) -> list[str]:
    """Every migration id pybatch's bookkeeping records.

    Read-only: creates nothing (yoyo's own backend would create its tables)."""
    if not _has_migration_table(conn):
        return []
    table = sql.SQL("{}.{}").format(sql.Identifier(BOOKKEEPING_SCHEMA), sql.Identifier(MIGRATION_TABLE))
    return [str(r[0]) for r in conn.execute(sql.SQL("SELECT migration_id FROM {} ORDER BY migration_id").format(table))]


def status(conn: psycopg.Connection) -> list[MigrationState]:
    """Every known migration, in order, with whether it is applied.

    Read-only: it reads the bookkeeping directly and creates nothing (yoyo's own backend
    would create its tables on a database without pybatch)."""
    db.require_autocommit(conn, "migrate.status")
    with db.translated("cannot read migration state"):
        applied = set(recorded_ids(conn))
    return [MigrationState(m.id, m.id in applied) for m in _migrations()]


def pending_ids(conn: psycopg.Connection) -> list[str]:
    return [m.id for m in status(conn) if not m.applied]


def routine_status(conn: psycopg.Connection) -> list[routines.SourceState]:
    """Every routine and view source with how it stands here (all new where pybatch is absent)."""
    db.require_autocommit(conn, "migrate.routine_status")
    return routines.states(conn)


@dataclass(frozen=True)
class Applied:
    """What one `migrate` did: versioned migrations applied, routine sources (re-)applied."""

    migrations: list[str]
    routines: list[str]


def apply(
    conn: psycopg.Connection, *, progress: Callable[[str], None] | None = None, target: str | None = None
) -> Applied:
    """Apply pending migrations, then every out-of-date routine source. Safe to run twice at once.

    Nothing is applied unless every precondition holds (see check_preconditions). `conn` is
    the caller's autocommit connection; the migrations run on yoyo's own session, the
    routines on `conn`. With `target` (a migration id), only the migrations up to it are
    applied and no routine: the state an older pybatch had, for testing its rollback."""
    versions.require_supported(conn, "migrate")
    db.require_autocommit(conn, "migrate.apply")
    check_preconditions(conn)  # before the lock, which creates the bookkeeping: a refusal leaves nothing
    with _locked(conn, "migrate.apply") as backend:
        check_preconditions(conn)  # again under the lock: another migrate may have run meanwhile
        wanted = _migrations()
        if target is not None:
            ids = [m.id for m in wanted]
            if target not in ids:
                raise MigrationError(f"no migration {target!r}: pybatch ships {', '.join(ids)}")
            wanted = wanted.__class__(wanted[: ids.index(target) + 1])
        pending = backend.to_apply(wanted)
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
        applied_routines = routines.apply(conn, progress=progress) if target is None else []
        return Applied([m.id for m in pending], applied_routines)


def check_preconditions(conn: psycopg.Connection) -> None:
    """Raise before anything is applied when migrate could not finish: the database records
    migrations this pybatch does not ship, public.workspace_agents lacks a column pybatch
    needs, or the connecting role cannot act as that table's owner (who must own the merge
    functions, so that its triggers never run with more rights than it has)."""
    with db.translated("cannot check the database before migrating"):
        shipped = {m.id for m in _migrations()}
        foreign = [mid for mid in recorded_ids(conn) if mid not in shipped]
        if foreign:
            raise MigrationError(
                f"the database records pybatch migrations this version does not ship ({', '.join(foreign)}): "
                "it was installed by another pybatch version; migrate with that version, "
                "or `pybatch uninstall` and migrate again"
            )
        problems = conn.execute(resources.read_sql("catalog/target_problems.sql")).fetchall()
        if problems:
            raise MigrationError(f"{problems[0][0]}: pybatch cannot merge into it (nothing was applied)")
        row = conn.execute(
            "SELECT c.relowner::regrole::text, pg_has_role(current_user, c.relowner, 'MEMBER'), current_user"
            " FROM pg_class c WHERE c.oid = to_regclass('public.workspace_agents')"
        ).fetchone()
    if row is not None and not row[1]:
        owner, _, user = row
        raise PermissionDenied(
            f"role {user} cannot act as {owner}, the owner of public.workspace_agents: "
            f"run `pybatch migrate` as {owner} or a superuser (nothing was applied)"
        )


def target_problems(conn: psycopg.Connection) -> list[str]:
    """What keeps public.workspace_agents from serving as the target (empty: it fits or is absent)."""
    with db.translated("cannot check public.workspace_agents"):
        return [str(r[0]) for r in conn.execute(resources.read_sql("catalog/target_problems.sql"))]


def rollback(conn: psycopg.Connection, *, before: Callable[[], None] | None = None) -> str | None:
    """Roll back the last applied migration; return its id (None if nothing is applied).

    `before` runs first, inside the lock: it removes pybatch's scheduled jobs,
    which live in another database and would otherwise keep calling a dropped function.
    Routines are not re-applied: a rolled-back state is for going back to an older
    pybatch, whose `migrate` applies its own routines.
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
    """The SQL `migrate` would run: pending migrations, then out-of-date routine sources (every
    one of both with all_migrations, or with no connection), for a DBA to read or run."""
    everything = all_migrations or conn is None
    wanted = None if everything or conn is None else set(pending_ids(conn))
    chunks = []
    folder = resources.migrations_dir()
    for migration in _migrations():
        if wanted is not None and migration.id not in wanted:
            continue
        text = (folder / f"{migration.id}.sql").read_text(encoding="utf-8")
        chunks.append(f"-- migration {migration.id}\n{text.rstrip()}\n")
    stale = (
        list(routines.sources())
        if everything or conn is None
        else [s.source for s in routine_status(conn) if s.out_of_date]
    )
    if stale:
        chunks.append(
            "-- routines and views (sql/): `pybatch migrate` applies these in one transaction holding\n"
            "-- pybatch.flush_lock, then runs pybatch.citus_distribute() and pybatch.align_owner()\n"
            "BEGIN;\nSET LOCAL check_function_bodies = off;\n\n" + routines.script(stale) + "COMMIT;\n"
        )
    return "\n".join(chunks)
