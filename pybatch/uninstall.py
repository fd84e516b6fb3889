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
from dataclasses import dataclass

import psycopg

from pybatch import db, migrate, resources, status
from pybatch.errors import DependentObjects, PermissionDenied
from pybatch.schedule import cron

log = logging.getLogger(__name__)

# Schemas that hold only pybatch's objects and go whole.
OWN_SCHEMAS = ("pybatch", migrate.BOOKKEEPING_SCHEMA)
# What pybatch.flush_loop_deadline() sets as the application_name of a running flush loop.


@dataclass(frozen=True)
class UninstallResult:
    jobs_removed: int
    schema_existed: bool
    dropped_workspace_agents: bool
    # Objects of others dropped with pybatch because force=True (empty otherwise).
    dropped_dependants: tuple[str, ...] = ()


def uninstall(conn: psycopg.Connection, *, force: bool = False) -> UninstallResult:
    """Remove pybatch's jobs, schemas and migration bookkeeping from the database `conn` is
    connected to (the caller's autocommit connection).

    Raises DependentObjects (nothing removed) when objects outside pybatch depend on it,
    unless `force`; PermissionDenied (nothing removed) when a running flush loop belongs to
    a role this one may not terminate."""
    db.require_autocommit(conn, "uninstall")
    with db.translated("uninstall failed (nothing was removed)"):
        _check_loops_can_be_ended(conn)
        _check_dependants(conn, force=force)
    jobs = _remove_jobs(conn)
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
    return bool(status.read_setting(conn, "created_workspace_agents"))


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
