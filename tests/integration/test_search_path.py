"""search_path hijack: a writer who owns a schema fills it with look-alikes of what flush() and
disconnect() use (now(), least/greatest-like functions, count, an `=` on uuid, `>` on timestamptz,
tables named settings/workspace_agents/heartbeats, temp tables too) and puts it first on its
search_path. Every look-alike logs to evil.hijacked when it runs; after calling the SECURITY
DEFINER functions the log must be empty. A control function without a pinned search_path
proves the trap works."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import UTC, datetime

import psycopg
import pytest
from psycopg import sql

from pybatch.flush import flush
from pybatch.grants import Grant, grant
from tests.integration.roles import as_role, login_role

T0 = datetime(2026, 1, 1, tzinfo=UTC)

TRAP = """
CREATE TABLE evil.hijacked (what text);
GRANT INSERT ON evil.hijacked TO PUBLIC;
CREATE FUNCTION evil.trap(what text) RETURNS void LANGUAGE sql AS
    'INSERT INTO evil.hijacked VALUES (what)';
CREATE FUNCTION evil.now() RETURNS timestamptz LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.trap('now'); RETURN 'infinity'; END $$;
CREATE FUNCTION evil.clock_timestamp() RETURNS timestamptz LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.trap('clock_timestamp'); RETURN '-infinity'; END $$;
CREATE FUNCTION evil.greatest_ts(a timestamptz, b timestamptz) RETURNS timestamptz LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.trap('greatest_ts'); RETURN a; END $$;
CREATE FUNCTION evil.pg_try_advisory_xact_lock(k bigint) RETURNS boolean LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.trap('advisory_lock'); RETURN true; END $$;
CREATE FUNCTION evil.to_regclass(t text) RETURNS regclass LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.trap('to_regclass'); RETURN NULL; END $$;
CREATE FUNCTION evil.count(anyelement) RETURNS bigint LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.trap('count'); RETURN 0; END $$;
CREATE FUNCTION evil.uuid_eq(a uuid, b uuid) RETURNS boolean LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.trap('uuid ='); RETURN true; END $$;
CREATE OPERATOR evil.= (LEFTARG = uuid, RIGHTARG = uuid, FUNCTION = evil.uuid_eq);
CREATE FUNCTION evil.ts_gt(a timestamptz, b timestamptz) RETURNS boolean LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.trap('timestamptz >'); RETURN false; END $$;
CREATE OPERATOR evil.> (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = evil.ts_gt);
CREATE OPERATOR evil.>= (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = evil.ts_gt);
CREATE OPERATOR evil.<= (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = evil.ts_gt);
CREATE FUNCTION evil.int_eq(a integer, b integer) RETURNS boolean LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.trap('integer ='); RETURN a OPERATOR(pg_catalog.=) b; END $$;
CREATE OPERATOR evil.= (LEFTARG = integer, RIGHTARG = integer, FUNCTION = evil.int_eq);
CREATE FUNCTION evil.ts_minus(a timestamptz, b timestamptz) RETURNS interval LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.trap('timestamptz -'); RETURN interval '0'; END $$;
CREATE OPERATOR evil.- (LEFTARG = timestamptz, RIGHTARG = timestamptz, FUNCTION = evil.ts_minus);
CREATE FUNCTION evil.ts_ok(t pg_catalog.timestamptz) RETURNS boolean LANGUAGE plpgsql AS
    $$ BEGIN PERFORM evil.trap('timestamptz domain'); RETURN true; END $$;
CREATE DOMAIN evil.timestamptz AS pg_catalog.timestamptz CHECK (evil.ts_ok(VALUE));
CREATE TABLE evil.settings (singleton boolean, future_tolerance interval, max_rows_per_flush bigint);
INSERT INTO evil.settings VALUES (true, '1000 years', 1);
CREATE TABLE evil.workspace_agents (id uuid, disconnected_at timestamptz, last_connected_at timestamptz);
CREATE TABLE evil.heartbeats (agent_id uuid, replica_id uuid, beat_at timestamptz);
CREATE TABLE evil.flush_log (id bigint);
"""

HIJACK_PATH = "SET search_path = evil, pg_catalog, public, pybatch"


@pytest.fixture
def attacker(dsn: str, conn: psycopg.Connection) -> Iterator[psycopg.Connection]:
    """A writer + flusher that owns schema evil, full of traps, first on its search_path."""
    with login_role(conn, "attacker") as role:
        grant(conn, Grant.WRITER, role)
        grant(conn, Grant.FLUSHER, role)
        conn.execute(sql.SQL("CREATE SCHEMA evil AUTHORIZATION {}").format(sql.Identifier(role)))
        with as_role(dsn, role) as a:
            a.execute(TRAP)
            a.execute(HIJACK_PATH)
            # Temp tables are on every search_path (pg_temp), also inside pinned functions.
            a.execute("CREATE TEMP TABLE settings (singleton boolean, future_tolerance interval)")
            a.execute("CREATE TEMP TABLE workspace_agents (id uuid, disconnected_at timestamptz)")
            a.execute("CREATE TEMP TABLE heartbeats (agent_id uuid, replica_id uuid, beat_at timestamptz)")
            yield a
        conn.execute("DROP SCHEMA evil CASCADE")


def hijacked(attacker: psycopg.Connection) -> list[str]:
    return [row[0] for row in attacker.execute("SELECT what FROM evil.hijacked").fetchall()]


def test_the_trap_fires_on_an_unpinned_function(conn: psycopg.Connection, attacker: psycopg.Connection) -> None:
    # Control: the same call path through a function WITHOUT a pinned search_path is hijacked,
    # so an empty log below means the pinning worked, not that the trap was broken.
    conn.execute("""
        CREATE FUNCTION public.unpinned(a uuid) RETURNS boolean LANGUAGE plpgsql SECURITY DEFINER AS
        $$ BEGIN RETURN now() > now() OR a = a; END $$;
        GRANT EXECUTE ON FUNCTION public.unpinned(uuid) TO PUBLIC;
    """)
    attacker.execute("SELECT public.unpinned(gen_random_uuid())")
    assert {"now", "timestamptz >"} <= set(hijacked(attacker))


def test_disconnect_and_flush_ignore_shadowing_objects(conn: psycopg.Connection, attacker: psycopg.Connection) -> None:
    agents = [uuid.uuid4() for _ in range(3)]
    conn.execute("INSERT INTO public.workspace_agents (id) SELECT unnest(%s::uuid[])", (agents,))
    with attacker.cursor() as cur, cur.copy("COPY pybatch.heartbeats (agent_id, beat_at) FROM STDIN") as cp:
        for agent in agents:
            cp.write_row((agent, T0))
    attacker.execute("INSERT INTO pybatch.heartbeats (agent_id, beat_at) VALUES (%s, '9999-12-31')", (agents[0],))
    result = flush(attacker)
    assert result.ok and result.agents_updated == 3 and result.future_heartbeats == 1
    assert result.rows_staged == 4  # the real max_rows_per_flush, not evil.settings' 1
    assert attacker.execute("SELECT pybatch.disconnect(%s, %s)", (agents[1], T0)).fetchone() == (True,)
    # The real `>`/`=`: a disconnect older than the merged beat changes nothing; an unknown agent raises.
    assert attacker.execute("SELECT pybatch.disconnect(%s, '2025-01-01')", (agents[2],)).fetchone() == (False,)
    with pytest.raises(psycopg.errors.NoDataFound):
        attacker.execute("SELECT pybatch.disconnect(%s, %s)", (uuid.uuid4(), T0))
    assert hijacked(attacker) == []
    rows = conn.execute(
        "SELECT id, last_connected_at, disconnected_at FROM public.workspace_agents WHERE id = ANY(%s) ORDER BY id",
        (agents,),
    ).fetchall()
    assert rows == sorted([(agents[0], T0, None), (agents[1], T0, T0), (agents[2], T0, None)])
    assert conn.execute("SELECT count(*) FROM pybatch.heartbeats").fetchone() == (0,)


@pytest.mark.parametrize("setting_on", ["database", "role"])
def test_procedures_ignore_a_search_path_set_on_the_database_or_the_role(
    dsn: str, conn: psycopg.Connection, attacker: psycopg.Connection, setting_on: str
) -> None:
    """The procedures (no SET clause is allowed where they COMMIT) run under the caller's
    search_path. A database owner's ALTER DATABASE ... SET search_path (or a role setting) puts
    evil's `=` on integer, `-` on timestamptz and a timestamptz domain first: a superuser's CALL,
    the pg_cron 1.4 loop and `pybatch flush` must run none of them."""
    dbname = conn.info.dbname
    superuser = conn.info.user
    target = (
        sql.SQL("DATABASE {}").format(sql.Identifier(dbname))
        if setting_on == "database"
        else sql.SQL("ROLE {} IN DATABASE {}").format(sql.Identifier(superuser), sql.Identifier(dbname))
    )
    conn.execute(sql.SQL("ALTER {} SET search_path = evil, pg_catalog").format(target))
    try:
        agent = uuid.uuid4()
        conn.execute("INSERT INTO public.workspace_agents (id) VALUES (%s)", (agent,))
        conn.execute("INSERT INTO pybatch.heartbeats (agent_id, beat_at) VALUES (%s, %s)", (agent, T0))
        with psycopg.connect(dsn, autocommit=True) as victim:  # a new session: the setting applies
            assert victim.execute("SHOW search_path").fetchone() == ("evil, pg_catalog",)
            victim.execute("CALL pybatch.flush_in_passes()")
            victim.execute("CALL pybatch.flush_loop(interval '1 second', pg_catalog.clock_timestamp())")
            result = flush(victim)
            assert result.ok
        assert hijacked(attacker) == []
        row = conn.execute("SELECT last_connected_at FROM public.workspace_agents WHERE id = %s", (agent,)).fetchone()
        assert row == (T0,)
    finally:
        conn.execute(sql.SQL("ALTER {} RESET search_path").format(target))


def test_the_trap_fires_on_an_unqualified_procedure(conn: psycopg.Connection, attacker: psycopg.Connection) -> None:
    """Control for the test above: the same comparison in an unqualified procedure is hijacked."""
    conn.execute("""
        CREATE PROCEDURE public.unqualified(a integer) LANGUAGE plpgsql AS
        $$ DECLARE t timestamptz := pg_catalog.now(); BEGIN IF a = a THEN COMMIT; END IF; END $$;
        GRANT EXECUTE ON PROCEDURE public.unqualified(integer) TO PUBLIC;
    """)
    attacker.execute("CALL public.unqualified(1)")
    assert {"integer =", "timestamptz domain"} <= set(hijacked(attacker))
