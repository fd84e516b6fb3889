"""Least privilege: `grant writer|reader|flusher` give exactly what each job needs, and nothing else."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from psycopg import errors as pg_errors

from pybatch.errors import NotMigrated, UnknownRole
from pybatch.flush import flush
from pybatch.grants import Grant, grant
from tests.integration.roles import as_role, login_role

T0 = datetime(2026, 1, 1, tzinfo=UTC)

ROLE_OID = "(SELECT oid FROM pg_roles WHERE rolname = %(role)s)"
# Every privilege a role holds directly, as (kind, object, privilege), from the ACLs in the catalog.
HELD_PRIVILEGES = """
    SELECT 'schema', n.nspname::text, a.privilege_type  -- text: a name would cut long signatures
    FROM pg_namespace n, aclexplode(n.nspacl) a WHERE a.grantee = {role}
    UNION ALL
    SELECT 'relation', c.oid::regclass::text, a.privilege_type
    FROM pg_class c, aclexplode(c.relacl) a WHERE a.grantee = {role}
    UNION ALL
    SELECT 'column', c.oid::regclass::text || '.' || att.attname, a.privilege_type
    FROM pg_attribute att JOIN pg_class c ON c.oid = att.attrelid, aclexplode(att.attacl) a
    WHERE a.grantee = {role}
    UNION ALL
    SELECT 'function', p.oid::regprocedure::text, a.privilege_type
    FROM pg_proc p, aclexplode(p.proacl) a WHERE a.grantee = {role}
    UNION ALL
    SELECT 'type', t.oid::regtype::text, a.privilege_type
    FROM pg_type t, aclexplode(t.typacl) a WHERE a.grantee = {role}
    UNION ALL
    SELECT 'database', d.datname, a.privilege_type
    FROM pg_database d, aclexplode(d.datacl) a WHERE a.grantee = {role} AND d.datname = current_database()
""".replace("{role}", ROLE_OID)

WRITER_PRIVILEGES = {
    ("schema", "pybatch", "USAGE"),
    ("relation", "pybatch.heartbeats", "INSERT"),
    ("function", "pybatch.disconnect(uuid,timestamp with time zone)", "EXECUTE"),
    # The client checks at= against the tolerance disconnect() applies; nothing else in settings.
    ("column", "pybatch.settings.future_tolerance", "SELECT"),
}
FLUSHER_PRIVILEGES = {
    ("schema", "pybatch", "USAGE"),
    # The default flush is a procedure calling its steps, so the caller needs each step.
    ("function", "pybatch.flush_in_passes(bigint,interval,pybatch.flush_result)", "EXECUTE"),
    ("function", "pybatch.flush_begin(bigint,interval)", "EXECUTE"),
    ("function", "pybatch.flush_pass(pybatch.flush_result)", "EXECUTE"),
    ("function", "pybatch.flush_finish(pybatch.flush_result)", "EXECUTE"),
    ("function", "pybatch.flush_distributed(bigint,interval)", "EXECUTE"),
    ("function", "pybatch.flush_tidy()", "EXECUTE"),
    ("function", "pybatch.flush(bigint,interval)", "EXECUTE"),
    # A flush in lanes (flush_in_lanes, `scheduler --lanes`): its own steps, from Python.
    ("function", "pybatch.flush_begin_lanes(bigint,interval,integer)", "EXECUTE"),
    ("function", "pybatch.flush_lane_pass(pybatch.flush_result,integer)", "EXECUTE"),
    ("function", "pybatch.flush_last_pass()", "EXECUTE"),
    # The pg_cron 1.4 loop.
    ("function", "pybatch.flush_loop(interval,timestamp with time zone)", "EXECUTE"),
    ("function", "pybatch.flush_loop_deadline(timestamp with time zone)", "EXECUTE"),
    (
        "function",
        "pybatch.flush_loop_next(pybatch.flush_result,interval,timestamp with time zone,timestamp with time zone)",
        "EXECUTE",
    ),
    # `pybatch scheduler`: its lease, its metrics, its yardsticks and its --interval.
    ("function", "pybatch.scheduler_claim(text,interval)", "EXECUTE"),
    ("function", "pybatch.scheduler_release(text)", "EXECUTE"),
    ("function", "pybatch.staleness_budget(interval,interval,interval,interval)", "EXECUTE"),
    ("function", "pybatch.staging_stats()", "EXECUTE"),
    ("column", "pybatch.settings.flush_interval", "SELECT"),
    ("column", "pybatch.settings.inactive_timeout", "SELECT"),
    ("column", "pybatch.settings.future_tolerance", "SELECT"),
    ("column", "pybatch.settings.max_rows_per_flush", "SELECT"),
    ("column", "pybatch.settings.flush_interval", "UPDATE"),
}


def held(conn: psycopg.Connection, role: str) -> set[tuple[str, str, str]]:
    return {tuple(row) for row in conn.execute(HELD_PRIVILEGES, {"role": role}).fetchall()}


def user_tables(conn: psycopg.Connection) -> list[str]:
    """Every table, view and sequence outside the system schemas."""
    rows = conn.execute("""
        SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname)
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind IN ('r', 'p', 'v', 'm', 'S', 'f')
          AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%%'
    """).fetchall()
    return [str(row[0]) for row in rows]


@pytest.fixture
def agent(conn: psycopg.Connection) -> uuid.UUID:
    agent_id = uuid.uuid4()
    conn.execute("INSERT INTO public.workspace_agents (id) VALUES (%s)", (agent_id,))
    return agent_id


@pytest.fixture
def writer(conn: psycopg.Connection) -> Iterator[str]:
    with login_role(conn, "writer") as role:
        grant(conn, Grant.WRITER, role)
        yield role


def test_writer_gets_exactly_insert_and_disconnect(conn: psycopg.Connection, writer: str) -> None:
    assert held(conn, writer) == WRITER_PRIVILEGES


def test_flusher_gets_exactly_what_the_flush_paths_run(conn: psycopg.Connection) -> None:
    with login_role(conn, "flusher") as role:
        grant(conn, Grant.FLUSHER, role)
        assert held(conn, role) == FLUSHER_PRIVILEGES


def test_grants_are_idempotent(conn: psycopg.Connection, writer: str) -> None:
    grant(conn, Grant.WRITER, writer)
    assert held(conn, writer) == WRITER_PRIVILEGES


def test_writer_can_insert_copy_and_disconnect(
    dsn: str, conn: psycopg.Connection, writer: str, agent: uuid.UUID
) -> None:
    with as_role(dsn, writer) as w:
        w.execute("INSERT INTO pybatch.heartbeats (agent_id, beat_at) VALUES (%s, %s)", (agent, T0))
        w.execute("INSERT INTO pybatch.heartbeats (agent_id) VALUES (%s)", (agent,))  # server-clock default
        with w.cursor() as cur, cur.copy("COPY pybatch.heartbeats (agent_id, replica_id, beat_at) FROM STDIN") as cp:
            cp.write_row((agent, None, T0))
        assert w.execute("SELECT pybatch.disconnect(%s, %s)", (agent, T0)).fetchone() == (True,)
    assert conn.execute("SELECT count(*) FROM pybatch.heartbeats").fetchone() == (3,)
    assert conn.execute("SELECT disconnected_at FROM public.workspace_agents WHERE id = %s", (agent,)).fetchone() == (
        T0,
    )


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE public.workspace_agents SET disconnected_at = now()",
        "SELECT * FROM public.workspace_agents",
        "DELETE FROM public.workspace_agents",
        "INSERT INTO public.workspace_agents (id) VALUES (gen_random_uuid())",
        "DELETE FROM pybatch.heartbeats",
        "TRUNCATE pybatch.heartbeats",
        "SELECT * FROM pybatch.heartbeats",
        "UPDATE pybatch.heartbeats SET beat_at = now()",
        "COPY pybatch.heartbeats TO STDOUT",
        "UPDATE pybatch.settings SET future_tolerance = '100 years'",
        "DELETE FROM pybatch.flush_log",
        "SELECT * FROM pybatch.flush()",
        "SELECT pybatch.align_owner()",
        "CREATE TABLE pybatch.mine (x int)",
        "CREATE FUNCTION pybatch.now() RETURNS timestamptz LANGUAGE sql AS 'SELECT now()'",
        "ALTER TABLE pybatch.heartbeats ADD COLUMN x int",
    ],
)
def test_writer_cannot(dsn: str, writer: str, statement: str) -> None:
    with as_role(dsn, writer) as w, pytest.raises(pg_errors.InsufficientPrivilege):
        w.execute(statement)


def test_writer_cannot_read_any_table(dsn: str, conn: psycopg.Connection, writer: str) -> None:
    tables = user_tables(conn)
    assert "public.workspace_agents" in tables and "pybatch.flush_log" in tables
    with as_role(dsn, writer) as w:
        # By oid: a name in a schema the writer has no USAGE on (pybatch_migrations) does not even resolve.
        readable = [
            t
            for t in tables
            if w.execute(
                "SELECT has_table_privilege(c.oid, 'SELECT')"
                " FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
                " WHERE quote_ident(n.nspname) || '.' || quote_ident(c.relname) = %s",
                (t,),
            ).fetchone()
            != (False,)
        ]
        for table in tables:  # and the server really refuses, not just the catalog
            if table == "pybatch.settings":
                continue  # one column is readable: checked below
            with pytest.raises(pg_errors.InsufficientPrivilege):
                w.execute(f"SELECT 1 FROM {table} LIMIT 1")
        assert w.execute("SELECT future_tolerance FROM pybatch.settings").fetchone() is not None
        for column in ("flush_interval", "inactive_timeout", "history_retention", "max_rows_per_flush"):
            with pytest.raises(pg_errors.InsufficientPrivilege):
                w.execute(f"SELECT {column} FROM pybatch.settings")
    assert readable == []


def test_flush_needs_the_flusher_grant(dsn: str, conn: psycopg.Connection, writer: str, agent: uuid.UUID) -> None:
    with as_role(dsn, writer) as w:
        w.execute("INSERT INTO pybatch.heartbeats (agent_id, beat_at) VALUES (%s, %s)", (agent, T0))
        with pytest.raises(pg_errors.InsufficientPrivilege):
            w.execute("SELECT * FROM pybatch.flush()")
        grant(conn, Grant.FLUSHER, writer)
        result = flush(w)
    assert result.ok and result.agents_updated == 1
    assert conn.execute("SELECT last_connected_at FROM public.workspace_agents WHERE id = %s", (agent,)).fetchone() == (
        T0,
    )


def test_flusher_alone_cannot_write_or_read(dsn: str, conn: psycopg.Connection, agent: uuid.UUID) -> None:
    with login_role(conn, "flusher") as role:
        grant(conn, Grant.FLUSHER, role)
        with as_role(dsn, role) as f:
            assert flush(f).ok
            for statement in (
                "INSERT INTO pybatch.heartbeats (agent_id) VALUES (gen_random_uuid())",
                "SELECT * FROM public.workspace_agents",
                "SELECT * FROM pybatch.heartbeats",
            ):
                with pytest.raises(pg_errors.InsufficientPrivilege):
                    f.execute(statement)


def test_reader_reads_every_view_and_no_table(dsn: str, conn: psycopg.Connection, agent: uuid.UUID) -> None:
    # A view added after pybatch's own (as a later migration would) is found in the catalog too.
    conn.execute("CREATE VIEW pybatch.zz_test_agents AS SELECT count(*) AS agents FROM public.workspace_agents")
    conn.execute("COMMENT ON VIEW pybatch.zz_test_agents IS 'test view'")
    views = [
        r[0]
        for r in conn.execute(
            "SELECT c.oid::regclass::text FROM pg_class c WHERE c.relnamespace = 'pybatch'::regnamespace "
            "AND c.relkind IN ('v', 'm')"
        ).fetchall()
    ]
    # Functions a view calls are checked against the caller, so the reader needs EXECUTE on them.
    view_functions = {
        r[0]
        for r in conn.execute(
            """
        SELECT DISTINCT d.refobjid::regprocedure::text FROM pg_depend d JOIN pg_rewrite rw ON rw.oid = d.objid
        WHERE d.classid = 'pg_rewrite'::regclass AND d.refclassid = 'pg_proc'::regclass
          AND rw.ev_class = ANY(%s::regclass[])
          AND (SELECT pronamespace FROM pg_proc WHERE oid = d.refobjid) = 'pybatch'::regnamespace
    """,
            (views,),
        ).fetchall()
    }
    assert "pybatch.flush(bigint,interval)" not in view_functions
    with login_role(conn, "reader") as role:
        grant(conn, Grant.READER, role)
        assert held(conn, role) == (
            {("schema", "pybatch", "USAGE"), ("relation", "pybatch.settings", "SELECT")}
            | {("relation", v, "SELECT") for v in views}
            | {("function", f, "EXECUTE") for f in view_functions}
        )
        with as_role(dsn, role) as r:
            for view in views:
                r.execute(f"SELECT * FROM {view}").fetchall()
            assert r.execute("SELECT agents FROM pybatch.zz_test_agents").fetchone() == (1,)
            assert r.execute("SELECT count(*) FROM pybatch.settings").fetchone() == (1,)
            tables = [t for t in user_tables(conn) if t not in views and t != "pybatch.settings"]
            for table in tables:
                with pytest.raises(pg_errors.InsufficientPrivilege):
                    r.execute(f"SELECT 1 FROM {table} LIMIT 1")
            for statement in (
                "INSERT INTO pybatch.heartbeats (agent_id) VALUES (gen_random_uuid())",
                "SELECT * FROM pybatch.flush()",
                f"SELECT pybatch.disconnect('{agent}')",
            ):
                with pytest.raises(pg_errors.InsufficientPrivilege):
                    r.execute(statement)


def test_unknown_role_is_named(conn: psycopg.Connection) -> None:
    with pytest.raises(UnknownRole, match="no_such_role_x"):
        grant(conn, Grant.WRITER, "no_such_role_x")


def test_grant_without_pybatch_says_migrate(empty_dsn: str) -> None:
    with (
        psycopg.connect(empty_dsn, autocommit=True) as c,
        login_role(c, "w") as role,
        pytest.raises(NotMigrated, match="pybatch migrate"),
    ):
        grant(c, Grant.WRITER, role)


@pytest.mark.parametrize("name", ['w"; DROP TABLE public.workspace_agents; --', "W-Mixed Case", "w'quote"])
def test_role_names_are_quoted_identifiers(dsn: str, conn: psycopg.Connection, name: str, agent: uuid.UUID) -> None:
    with login_role(conn, name=name) as role:
        grant(conn, Grant.WRITER, role)
        assert held(conn, role) == WRITER_PRIVILEGES
        with as_role(dsn, role) as w:
            w.execute("INSERT INTO pybatch.heartbeats (agent_id) VALUES (%s)", (agent,))
    assert conn.execute("SELECT to_regclass('public.workspace_agents') IS NOT NULL").fetchone() == (True,)


# -- the functions themselves ---------------------------------------------------------

PYBATCH_FUNCTIONS = """
    SELECT p.oid::regprocedure::text, p.prosecdef, p.proconfig,
           has_function_privilege('public', p.oid, 'EXECUTE') AS public_execute, p.prokind
    FROM pg_proc p WHERE p.pronamespace = 'pybatch'::regnamespace
"""


def test_every_pybatch_function_pins_search_path(conn: psycopg.Connection) -> None:
    functions = conn.execute(PYBATCH_FUNCTIONS).fetchall()
    assert {"pybatch.flush(bigint,interval)", "pybatch.disconnect(uuid,timestamp with time zone)"} <= {
        f[0] for f in functions
    }
    unpinned = [
        (name, secdef, public, kind)
        for name, secdef, config, public, kind in functions
        if "search_path=pg_catalog, pg_temp" not in (config or [])
    ]
    # A procedure that COMMITs cannot have a SET clause (PostgreSQL forbids it); such a procedure
    # must then run with its caller's rights only (no SECURITY DEFINER) and not be public.
    assert [u for u in unpinned if not (u[3] == "p" and not u[1] and not u[2])] == []


def test_security_definer_functions_are_not_public(conn: psycopg.Connection) -> None:
    functions = conn.execute(PYBATCH_FUNCTIONS).fetchall()
    definer = {name for name, secdef, _, _, _ in functions if secdef}
    assert {"pybatch.flush(bigint,interval)", "pybatch.disconnect(uuid,timestamp with time zone)"} <= definer
    assert [name for name, secdef, _, public, _ in functions if secdef and public] == []
