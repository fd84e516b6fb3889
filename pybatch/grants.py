"""Least-privilege grants: give an existing role exactly what one pybatch job needs.

- writer:  USAGE on schema pybatch, INSERT on pybatch.heartbeats (INSERT and COPY FROM),
           EXECUTE on pybatch.disconnect(uuid, timestamptz).
- reader:  USAGE on schema pybatch, SELECT on pybatch.settings (no agent data; `pybatch
           status` shows it), SELECT on every view in schema pybatch, and EXECUTE on
           the pybatch functions those views call (PostgreSQL checks a function called in a
           view against the caller, not the view owner). Both are found in the catalog, so
           views added by later migrations are covered. Views read tables with their owner's
           rights, so a reader sees what the views show and nothing else.
- flusher: USAGE on schema pybatch, EXECUTE on every routine of the flush paths
           (FLUSHER_ROUTINES), SELECT on the settings it reads and UPDATE of flush_interval.

flush() and disconnect() are SECURITY DEFINER with a pinned search_path: they write
public.workspace_agents for the caller, who never gets a privilege on that table.
Role names are user input and are quoted with psycopg.sql.Identifier, never formatted in.
"""

from __future__ import annotations

import enum
import logging

import psycopg
from psycopg import sql

from pybatch import db
from pybatch.errors import UnknownRole

log = logging.getLogger(__name__)


class Grant(enum.StrEnum):
    WRITER = "writer"
    READER = "reader"
    FLUSHER = "flusher"


SCHEMA_USAGE = sql.SQL("GRANT USAGE ON SCHEMA pybatch TO {role}")

# Everything a flusher runs: the default flush (a procedure that calls its steps, so
# the caller needs each), the single-transaction flush, the pg_cron 1.4 loop, the
# scheduler's lease and the staging figures its metrics report. Constants, never input.
FLUSH_ROUTINES = (
    "PROCEDURE pybatch.flush_in_passes(bigint, interval, pybatch.flush_result)",
    "FUNCTION pybatch.flush_begin(bigint, interval)",
    "FUNCTION pybatch.flush_begin_lanes(bigint, interval, integer)",
    "FUNCTION pybatch.flush_pass(pybatch.flush_result)",
    "FUNCTION pybatch.flush_lane_pass(pybatch.flush_result, integer)",
    "FUNCTION pybatch.flush_last_pass()",
    "FUNCTION pybatch.flush_finish(pybatch.flush_result)",
    "FUNCTION pybatch.flush_distributed(bigint, interval)",
    "FUNCTION pybatch.flush_tidy()",
    "FUNCTION pybatch.flush(bigint, interval)",
    "PROCEDURE pybatch.flush_loop(interval, timestamptz)",
    "FUNCTION pybatch.flush_loop_deadline(timestamptz)",
    "FUNCTION pybatch.flush_loop_next(pybatch.flush_result, interval, timestamptz, timestamptz)",
)
FLUSHER_ROUTINES = (
    *FLUSH_ROUTINES,
    "FUNCTION pybatch.scheduler_claim(text, interval)",
    "FUNCTION pybatch.scheduler_release(text)",
    # `cron install --interval` checks the staleness budget first.
    "FUNCTION pybatch.staleness_budget(interval, interval, interval, interval)",
    "FUNCTION pybatch.staging_stats()",
)

# Fixed statements per grant; {role} is the only placeholder and is always an Identifier.
FIXED_STATEMENTS: dict[Grant, list[sql.SQL]] = {
    Grant.WRITER: [
        SCHEMA_USAGE,
        sql.SQL("GRANT INSERT ON TABLE pybatch.heartbeats TO {role}"),
        sql.SQL("GRANT EXECUTE ON FUNCTION pybatch.disconnect(uuid, timestamptz) TO {role}"),
        # The client checks its at= times against the same tolerance disconnect() uses.
        sql.SQL("GRANT SELECT (future_tolerance) ON TABLE pybatch.settings TO {role}"),
    ],
    # settings holds the yardsticks (intervals, cap) that `pybatch status` shows; no agent data.
    Grant.READER: [SCHEMA_USAGE, sql.SQL("GRANT SELECT ON TABLE pybatch.settings TO {role}")],
    Grant.FLUSHER: [
        SCHEMA_USAGE,
        # Each routine is a constant of this module; {role} stays the statement's only placeholder.
        *(sql.SQL(f"GRANT EXECUTE ON {routine} TO {{role}}") for routine in FLUSHER_ROUTINES),
        # The scheduler reads its yardsticks and may store its --interval; nothing else in settings.
        sql.SQL(
            "GRANT SELECT (flush_interval, inactive_timeout, future_tolerance, max_rows_per_flush)"
            " ON TABLE pybatch.settings TO {role}"
        ),
        sql.SQL("GRANT UPDATE (flush_interval) ON TABLE pybatch.settings TO {role}"),
    ],
}

# Every view (plain or materialized) in schema pybatch, in a stable order.
VIEWS_QUERY = """
    SELECT c.relname
    FROM pg_catalog.pg_class c
    JOIN pg_catalog.pg_namespace n ON n.oid = c.relnamespace
    WHERE n.nspname = 'pybatch' AND c.relkind IN ('v', 'm')
    ORDER BY c.relname
"""


# Functions in schema pybatch that some pybatch view calls (via the view's rewrite rule).
VIEW_FUNCTIONS_QUERY = """
    SELECT DISTINCT p.proname, pg_catalog.pg_get_function_identity_arguments(p.oid)
    FROM pg_catalog.pg_depend d
    JOIN pg_catalog.pg_rewrite r ON d.classid = 'pg_catalog.pg_rewrite'::pg_catalog.regclass AND r.oid = d.objid
    JOIN pg_catalog.pg_class v ON v.oid = r.ev_class
    JOIN pg_catalog.pg_proc p ON d.refclassid = 'pg_catalog.pg_proc'::pg_catalog.regclass AND p.oid = d.refobjid
    WHERE v.relnamespace = 'pybatch'::pg_catalog.regnamespace AND v.relkind IN ('v', 'm')
      AND p.pronamespace = 'pybatch'::pg_catalog.regnamespace
    ORDER BY 1, 2
"""


def role_exists(conn: psycopg.Connection, role: str) -> bool:
    row = conn.execute("SELECT 1 FROM pg_catalog.pg_roles WHERE rolname = %s", (role,)).fetchone()
    return row is not None


def statements(conn: psycopg.Connection, kind: Grant, role: str) -> list[sql.Composed]:
    """The GRANT statements for `kind`, with the role quoted as an identifier."""
    role_id = sql.Identifier(role)
    composed = [statement.format(role=role_id) for statement in FIXED_STATEMENTS[kind]]
    if kind is Grant.READER:
        with db.translated("cannot list the pybatch views"):
            views = [str(row[0]) for row in conn.execute(VIEWS_QUERY).fetchall()]
            functions = [(str(name), str(args)) for name, args in conn.execute(VIEW_FUNCTIONS_QUERY).fetchall()]
        composed += [
            sql.SQL("GRANT SELECT ON TABLE {view} TO {role}").format(view=sql.Identifier("pybatch", view), role=role_id)
            for view in views
        ]
        # The argument list comes from the catalog (type names), never from input.
        composed += [
            sql.SQL("GRANT EXECUTE ON FUNCTION {function}({args}) TO {role}").format(
                function=sql.Identifier("pybatch", name), args=sql.SQL(args), role=role_id
            )
            for name, args in functions
        ]
    return composed


def grant(conn: psycopg.Connection, kind: Grant, role: str) -> list[str]:
    """Grant `kind` to the existing role `role` in one transaction; return the statements run.

    Raises UnknownRole when the role does not exist, NotMigrated when pybatch is not
    installed, PermissionDenied when the connecting role may not grant.
    """
    db.require_text_encoding(conn, "grant")
    with db.translated(f"cannot grant {kind} to role {role!r}"), conn.transaction():
        if not role_exists(conn, role):
            raise UnknownRole(f"role {role!r} does not exist; create it first (CREATE ROLE)")
        done = []
        for statement in statements(conn, kind, role):
            conn.execute(statement)
            done.append(statement.as_string(conn))
    log.info("granted %s to %s", kind, role, extra={"grant": str(kind), "role": role, "statements": done})
    return done
