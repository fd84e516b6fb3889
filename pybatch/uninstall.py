"""Remove pybatch from a database: its pg_cron jobs first, then sql/uninstall.sql.

Only pybatch's own objects go: schema pybatch, its migration bookkeeping (schema
pybatch_migrations), and public.workspace_agents only when pybatch created it
(pybatch.settings.created_workspace_agents); a table that was there before stays.
Another application's objects are never touched: yoyo's tables in public stay, with
every row that is not pybatch's.

Objects of others that depend on pybatch's (a view over pybatch.agent_status, a column
of type pybatch.flush_result, ...) would go with a CASCADE: uninstall lists them and
refuses (DependentObjects) unless force=True, which drops them too and names them.

Before anything is removed, uninstall checks that it can end a running pg_cron flush
loop: a loop running as a superuser cannot be ended by a non-superuser owner, and the
error says which pid and what to do.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass

import psycopg
from psycopg import sql

from pybatch import db, migrate, resources, settings, status
from pybatch.errors import DependentObjects, PermissionDenied
from pybatch.schedule import cron

log = logging.getLogger(__name__)

# Schemas that hold only pybatch's objects and go whole.
OWN_SCHEMAS = ("pybatch", migrate.BOOKKEEPING_SCHEMA)
# What pybatch.flush_loop_deadline() sets as the application_name of a running flush loop.


@dataclass(frozen=True)
class UninstallPlan:
    """What uninstall would remove from one database, read before anything is removed."""

    database: str
    server: str
    cron_database: str | None
    jobs: tuple[str, ...]
    # Tables that go, qualified, with their exact row counts (workspace_agents when pybatch created it).
    tables: tuple[tuple[str, int], ...]
    # Views, functions and procedures, types and sequences in schema pybatch.
    other_objects: dict[str, int]
    # public.workspace_agents when it exists and stays: its row count.
    kept_workspace_agents: int | None
    dependants: tuple[str, ...]

    def lines(self) -> list[str]:
        """The plan as lines for a person: each object with its row count."""
        out: list[str] = []
        cron_db = f" (in pg_cron's database {self.cron_database})" if self.cron_database else ""
        out.extend(f"  pg_cron job {name}{cron_db}" for name in self.jobs)
        for name, rows in self.tables:
            note = " (staged heartbeats not yet flushed)" if name == "pybatch.heartbeats" and rows else ""
            note = " (pybatch created it)" if name == "public.workspace_agents" else note
            out.append(f"  table {name}: {rows} row(s){note}")
        others = ", ".join(f"{count} {kind}" for kind, count in self.other_objects.items() if count)
        if others:
            out.append(f"  in schema pybatch: {others}")
        out.extend(f"  {dependant} (another's object that depends on pybatch's)" for dependant in self.dependants)
        if not out:
            out.append("  nothing: pybatch is not installed here")
        return out


def plan(conn: psycopg.Connection) -> UninstallPlan:
    """What `uninstall(conn)` would remove, with row counts; changes nothing."""
    db.require_autocommit(conn, "uninstall.plan")
    cron_database, jobs = cron.job_names(conn)
    with db.translated("cannot read what uninstall would remove"):
        names = conn.execute(
            "SELECT n.nspname, c.relname FROM pg_catalog.pg_class c"
            " JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace"
            " WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p') AND NOT c.relispartition"
            " ORDER BY n.nspname, c.relname",
            (list(OWN_SCHEMAS),),
        ).fetchall()
        created = status.installed(conn) and _created_target(conn)
        target_row = conn.execute("SELECT pg_catalog.to_regclass('public.workspace_agents') IS NOT NULL").fetchone()
        target_exists = bool(target_row and target_row[0])
        tables = [(str(schema), str(name)) for schema, name in names]
        if created and target_exists:
            tables.append(("public", "workspace_agents"))
        counted = tuple((f"{schema}.{name}", _count(conn, schema, name)) for schema, name in tables)
        kept = _count(conn, "public", "workspace_agents") if target_exists and not created else None
        row = conn.execute(
            "SELECT (SELECT count(*) FROM pg_catalog.pg_class c"
            "   WHERE c.relnamespace = n.oid AND c.relkind IN ('v', 'm')),"
            " (SELECT count(*) FROM pg_catalog.pg_proc p WHERE p.pronamespace = n.oid),"
            " (SELECT count(*) FROM pg_catalog.pg_type t WHERE t.typnamespace = n.oid AND t.typtype IN ('c', 'e', 'd')"
            "   AND NOT EXISTS (SELECT FROM pg_catalog.pg_class c WHERE c.oid = t.typrelid AND c.relkind <> 'c')),"
            " (SELECT count(*) FROM pg_catalog.pg_class c WHERE c.relnamespace = n.oid AND c.relkind = 'S')"
            " FROM pg_catalog.pg_namespace n WHERE n.nspname = 'pybatch'"
        ).fetchone()
        found = dependants(conn)
    views, routines, types, sequences = (int(v) for v in row) if row else (0, 0, 0, 0)
    return UninstallPlan(
        database=str(conn.info.dbname),
        server=f"{conn.info.host}:{conn.info.port}",
        cron_database=cron_database,
        jobs=tuple(jobs),
        tables=counted,
        other_objects={
            "views": views,
            "functions and procedures": routines,
            "types": types,
            "sequences": sequences,
        },
        kept_workspace_agents=kept,
        dependants=tuple(found),
    )


def _count(conn: psycopg.Connection, schema: str, name: str) -> int:
    row = conn.execute(
        sql.SQL("SELECT count(*) FROM {}.{}").format(sql.Identifier(schema), sql.Identifier(name))
    ).fetchone()
    return int(row[0]) if row else 0


@dataclass(frozen=True)
class UninstallResult:
    jobs_removed: int
    schema_existed: bool
    dropped_workspace_agents: bool
    # Objects of others dropped with pybatch because force=True (empty otherwise).
    dropped_dependants: tuple[str, ...] = ()


def uninstall(
    conn: psycopg.Connection, *, force: bool = False, progress: Callable[[str], None] | None = None
) -> UninstallResult:
    """Remove pybatch's jobs, schemas and migration bookkeeping from the database `conn` is
    connected to (the caller's autocommit connection). `progress`, when given, is called with a
    line before each step (`plan(conn)` says beforehand what will go).

    Raises DependentObjects (nothing removed) when objects outside pybatch depend on it,
    unless `force`; PermissionDenied (nothing removed) when a running flush loop belongs to
    a role this one may not terminate."""
    db.require_autocommit(conn, "uninstall")
    say = progress or (lambda _line: None)
    say("checking that nothing else depends on pybatch and that a running flush loop can be ended")
    with db.translated("uninstall failed (nothing was removed)"):
        _check_loops_can_be_ended(conn)
        _check_dependants(conn, force=force)
    say("removing the pg_cron jobs and ending a running flush loop")
    jobs = _remove_jobs(conn)
    say("dropping schema pybatch and the migration bookkeeping (one transaction; waits for their locks)")
    with db.translated("uninstall failed (nothing was removed)"), conn.transaction():
        created = _created_target(conn) if status.installed(conn) else None
        # Again inside the transaction that drops: the list named is the list dropped.
        dropped = _check_dependants(conn, force=force)
        conn.execute("SELECT pg_catalog.set_config('pybatch.uninstall_force', %s, true)", ("on" if force else "off",))
        conn.execute(resources.read_sql("uninstall.sql"))
    result = UninstallResult(jobs, created is not None, bool(created), tuple(dropped))
    log.info(
        "uninstalled pybatch",
        extra={
            "jobs_removed": result.jobs_removed,
            "schema_existed": result.schema_existed,
            "dropped_workspace_agents": result.dropped_workspace_agents,
            "dropped_dependants": list(result.dropped_dependants),
        },
    )
    return result


def dependants(conn: psycopg.Connection) -> list[str]:
    """Objects outside pybatch that depend on pybatch's objects, each as 'kind schema.name'
    (for example 'view public.my_status' or 'table column public.t.result'), sorted."""
    target = _created_target_oid(conn)
    rows = conn.execute(
        resources.read_sql("uninstall_dependants.sql"),
        {"schemas": list(OWN_SCHEMAS), "target": target},
    ).fetchall()
    return [str(r[0]) for r in rows]


def _check_dependants(conn: psycopg.Connection, *, force: bool) -> list[str]:
    found = dependants(conn)
    if found and not force:
        raise DependentObjects(found)
    return found


def _created_target(conn: psycopg.Connection) -> bool:
    return bool(settings.read_setting(conn, "created_workspace_agents"))


def _created_target_oid(conn: psycopg.Connection) -> int | None:
    """public.workspace_agents's oid when pybatch created it (it is then pybatch's to drop)."""
    if not status.installed(conn) or not _created_target(conn):
        return None
    row = conn.execute("SELECT to_regclass('public.workspace_agents')::oid").fetchone()
    return int(row[0]) if row and row[0] is not None else None


def _check_loops_can_be_ended(conn: psycopg.Connection) -> None:
    """Removing the jobs ends a running pg_cron flush loop (pg_terminate_backend). A role may
    terminate only backends of roles whose rights it has (or, with pg_signal_backend, any
    non-superuser's); never a superuser's unless it is one. Say so before removing anything."""
    rows = conn.execute(
        "SELECT a.pid, a.usename, COALESCE(r.rolsuper, false)"
        " FROM pg_catalog.pg_stat_activity a LEFT JOIN pg_catalog.pg_roles r ON r.oid = a.usesysid"
        " WHERE a.datname = pg_catalog.current_database() AND a.pid <> pg_catalog.pg_backend_pid()"
        " AND (a.application_name = %s OR a.query ILIKE 'CALL pybatch.flush_loop(%%')"
        " AND NOT (SELECT rolsuper FROM pg_catalog.pg_roles WHERE rolname = current_user)"
        " AND (COALESCE(r.rolsuper, true) OR NOT (pg_catalog.pg_has_role(current_user, a.usesysid, 'USAGE')"
        "      OR pg_catalog.pg_has_role(current_user, 'pg_signal_backend', 'USAGE')))"
        " ORDER BY a.pid",
        (cron.LOOP_APPLICATION_NAME,),
    ).fetchall()
    if not rows:
        return
    user_row = conn.execute("SELECT current_user").fetchone()
    user = user_row[0] if user_row else "?"
    pids = ", ".join(str(pid) for pid, _, _ in rows)
    owners = ", ".join(sorted({f"{'superuser ' if sup else ''}{name!r}" for _, name, sup in rows}))
    raise PermissionDenied(
        f"cannot uninstall: pybatch's pg_cron flush loop (pid {pids}) runs as {owners}, which role {user!r} "
        f"may not terminate; run `pybatch uninstall` as a superuser, or have {owners} run `pybatch cron remove` "
        f"(or SELECT cron.unschedule(...)) and SELECT pg_terminate_backend({rows[0][0]}), then retry "
        "(nothing was removed)"
    )


def _remove_jobs(conn: psycopg.Connection) -> int:
    """Remove this database's pg_cron jobs first: left behind, they would call dropped functions."""
    try:
        return int(cron.remove(conn))
    except PermissionDenied as exc:
        if "terminate" not in str(exc):
            raise
        # A loop that started after the check above, as a role this one may not terminate.
        raise PermissionDenied(
            f"{exc}; a flush loop running as another role (a superuser's pg_cron job) must be ended by that role "
            "or a superuser: run `pybatch uninstall` as a superuser (pybatch's schema was not removed)"
        ) from None
