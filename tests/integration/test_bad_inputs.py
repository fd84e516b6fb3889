"""Runs every SQL and client-API entry of the bad-input catalogue (tests/bad_inputs.py).

Each entry's scenario is the function named like its id. Error entries must raise an error
matching `entry.error`; every scenario also checks that nothing accepted before is lost."""

from __future__ import annotations

import re
import threading
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg import sql

from pybatch.client import HeartbeatClient
from pybatch.errors import ConfigError, InvalidHeartbeat, PybatchError, UnknownAgent
from pybatch.flush import flush
from tests.bad_inputs import CLIENT, INJECTION, SQL, BadInput, by_surface

T0 = datetime(2026, 1, 1, tzinfo=UTC)
Scenario = Callable[[BadInput, str, psycopg.Connection], None]


def new_agents(conn: psycopg.Connection, n: int = 1) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(n)]
    conn.execute(
        "INSERT INTO public.workspace_agents (id, created_at) SELECT unnest(%s::uuid[]), %s",
        (ids, T0 - timedelta(days=1)),
    )
    return ids


def staged(conn: psycopg.Connection) -> int:
    row = conn.execute("SELECT count(*) FROM pybatch.heartbeats").fetchone()
    assert row is not None
    return int(row[0])


def state(conn: psycopg.Connection, agent: uuid.UUID) -> tuple[object, ...]:
    row = conn.execute(
        "SELECT first_connected_at, last_connected_at, disconnected_at, last_connected_replica_id "
        "FROM public.workspace_agents WHERE id = %s",
        (agent,),
    ).fetchone()
    assert row is not None
    return tuple(row)


def stage(conn: psycopg.Connection, agent: uuid.UUID, at: object, replica: uuid.UUID | None = None) -> None:
    conn.execute(
        "INSERT INTO pybatch.heartbeats (agent_id, replica_id, beat_at) VALUES (%s, %s, %s)", (agent, replica, at)
    )


def raises(entry: BadInput, call: Callable[[], object], kind: type[BaseException] = Exception) -> None:
    assert entry.error is not None
    with pytest.raises(kind) as info:
        call()
    assert re.search(entry.error, str(info.value)), (entry.id, str(info.value))


def accepted_kept(conn: psycopg.Connection) -> Callable[[], None]:
    """Stage one good beat now; the returned check proves it survived the bad input and merges."""
    (agent,) = new_agents(conn)
    stage(conn, agent, T0)

    def check() -> None:
        while staged(conn):
            assert flush(conn).ok
        assert state(conn, agent)[1] == T0

    return check


# -- SQL ------------------------------------------------------------------------------------


def sql_insert_malformed_uuid(entry: BadInput, dsn: str, conn: psycopg.Connection) -> None:
    check = accepted_kept(conn)
    raises(entry, lambda: conn.execute("INSERT INTO pybatch.heartbeats (agent_id) VALUES ('not-a-uuid')"))
    assert staged(conn) == 1
    check()


def sql_copy_one_malformed_row(entry: BadInput, dsn: str, conn: psycopg.Connection) -> None:
    check = accepted_kept(conn)
    good = new_agents(conn, 2)

    def copy() -> None:
        with conn.cursor() as cur, cur.copy("COPY pybatch.heartbeats (agent_id, beat_at) FROM STDIN") as cp:
            cp.write(f"{good[0]}\t2026-01-01\n{good[1]}\t2026-01-01\nzzz\t2026-01-01\n")

    raises(entry, copy)
    assert staged(conn) == 1
    check()


def sql_disconnect_malformed_uuid(entry: BadInput, dsn: str, conn: psycopg.Connection) -> None:
    check = accepted_kept(conn)
    raises(entry, lambda: conn.execute("SELECT pybatch.disconnect(%s)", (INJECTION,)))
    check()


def sql_insert_null_agent(entry: BadInput, dsn: str, conn: psycopg.Connection) -> None:
    check = accepted_kept(conn)
    raises(entry, lambda: conn.execute("INSERT INTO pybatch.heartbeats (agent_id) VALUES (NULL)"))
    check()


def sql_insert_null_beat_at(entry: BadInput, dsn: str, conn: psycopg.Connection) -> None:
    check = accepted_kept(conn)
    (agent,) = new_agents(conn)
    raises(entry, lambda: stage(conn, agent, None))
    check()


def sql_null_replica_stays_null(entry: BadInput, dsn: str, conn: psycopg.Connection) -> None:
    (agent,) = new_agents(conn)
    stage(conn, agent, T0, uuid.UUID(int=7))
    flush(conn)
    stage(conn, agent, T0 + timedelta(seconds=1), None)
    assert flush(conn).ok
    assert state(conn, agent) == (T0, T0 + timedelta(seconds=1), None, None)


def sql_disconnect_nulls(entry: BadInput, dsn: str, conn: psycopg.Connection) -> None:
    (agent,) = new_agents(conn)
    raises(entry, lambda: conn.execute("SELECT pybatch.disconnect(NULL, now())"))
    raises(entry, lambda: conn.execute("SELECT pybatch.disconnect(%s, NULL)", (agent,)))
    assert state(conn, agent) == (None, None, None, None)


def sql_flush_null_arguments(entry: BadInput, dsn: str, conn: psycopg.Connection) -> None:
    check = accepted_kept(conn)
    row = conn.execute("SELECT rows_staged, error, skipped FROM pybatch.flush(NULL, NULL)").fetchone()
    assert row == (1, None, False)
    check()


def sql_flush_bad_max_rows(entry: BadInput, dsn: str, conn: psycopg.Connection) -> None:
    check = accepted_kept(conn)
    raises(entry, lambda: flush(conn, max_rows=-1), ConfigError)
    assert staged(conn) == 1
    nothing = flush(conn, max_rows=0)
    assert nothing.ok and nothing.rows_staged == 0 and staged(conn) == 1
    check()


def _future_dropped(conn: psycopg.Connection, at: str) -> None:
    (agent,) = new_agents(conn)
    stage(conn, agent, T0)
    flush(conn)
    stage(conn, agent, at)
    result = flush(conn)
    assert result.ok and result.future_heartbeats == 1 and result.agents_updated == 0
    assert state(conn, agent) == (T0, T0, None, None) and staged(conn) == 0


def _non_finite_rejected(entry: BadInput, conn: psycopg.Connection, at: str) -> None:
    check = accepted_kept(conn)
    (agent,) = new_agents(conn)
    raises(entry, lambda: stage(conn, agent, at))
    assert flush(conn).ok
    assert state(conn, agent) == (None, None, None, None)
    check()


def sql_beat_plus_infinity(entry: BadInput, dsn: str, conn: psycopg.Connection) -> None:
    _non_finite_rejected(entry, conn, "infinity")


def sql_beat_year_9999(entry: BadInput, dsn: str, conn: psycopg.Connection) -> None:
    _future_dropped(conn, "9999-12-31")


def sql_beat_out_of_range(entry: BadInput, dsn: str, conn: psycopg.Connection) -> None:
    check = accepted_kept(conn)
    (agent,) = new_agents(conn)
    raises(
        entry,
        lambda: conn.execute(
            "INSERT INTO pybatch.heartbeats (agent_id, beat_at) VALUES (%s, '300000-01-01')", (agent,)
        ),
    )
    check()


def sql_beat_minus_infinity(entry: BadInput, dsn: str, conn: psycopg.Connection) -> None:
    _non_finite_rejected(entry, conn, "-infinity")


def sql_beat_year_1(entry: BadInput, dsn: str, conn: psycopg.Connection) -> None:
    (agent,) = new_agents(conn)
    replica = uuid.UUID(int=9)
    stage(conn, agent, T0, replica)
    flush(conn)
    conn.execute("SELECT pybatch.disconnect(%s, %s)", (agent, T0 + timedelta(seconds=1)))
    year_1 = datetime(1, 1, 1, tzinfo=UTC)
    stage(conn, agent, year_1, uuid.UUID(int=1))
    assert flush(conn).ok
    assert state(conn, agent) == (year_1, T0, T0 + timedelta(seconds=1), replica)


def sql_disconnect_infinity(entry: BadInput, dsn: str, conn: psycopg.Connection) -> None:
    (agent,) = new_agents(conn)
    for at in ("infinity", "-infinity"):
        raises(entry, lambda: conn.execute("SELECT pybatch.disconnect(%s, %s)", (agent, at)))  # noqa: B023
    assert state(conn, agent) == (None, None, None, None)


def sql_disconnect_far_past(entry: BadInput, dsn: str, conn: psycopg.Connection) -> None:
    (agent,) = new_agents(conn)
    stage(conn, agent, T0)
    flush(conn)
    assert conn.execute("SELECT pybatch.disconnect(%s, '0001-01-01')", (agent,)).fetchone() == (False,)
    assert state(conn, agent) == (T0, T0, None, None)


def sql_naive_timestamp(entry: BadInput, dsn: str, conn: psycopg.Connection) -> None:
    (agent,) = new_agents(conn)
    conn.execute("SET TimeZone = 'Asia/Tokyo'")
    conn.execute("INSERT INTO pybatch.heartbeats (agent_id, beat_at) VALUES (%s, '2026-01-01 00:00')", (agent,))
    conn.execute("RESET TimeZone")
    assert flush(conn).ok
    assert state(conn, agent)[1] == datetime(2025, 12, 31, 15, tzinfo=UTC)


def sql_unknown_agent_beat(entry: BadInput, dsn: str, conn: psycopg.Connection) -> None:
    check = accepted_kept(conn)
    ghost = uuid.uuid4()
    stage(conn, ghost, T0)
    result = flush(conn)
    assert result.ok and result.unknown_heartbeats == 1 and result.agents_updated == 1
    assert conn.execute("SELECT count(*) FROM public.workspace_agents WHERE id = %s", (ghost,)).fetchone() == (0,)
    check()


def sql_agent_deleted_before_flush(entry: BadInput, dsn: str, conn: psycopg.Connection) -> None:
    check = accepted_kept(conn)
    (doomed,) = new_agents(conn)
    stage(conn, doomed, T0)
    conn.execute("DELETE FROM public.workspace_agents WHERE id = %s", (doomed,))
    result = flush(conn)
    assert result.ok and result.unknown_heartbeats == 1 and result.agents_updated == 1
    check()


def sql_disconnect_unknown_agent(entry: BadInput, dsn: str, conn: psycopg.Connection) -> None:
    raises(entry, lambda: conn.execute("SELECT pybatch.disconnect(%s)", (uuid.uuid4(),)), psycopg.errors.NoDataFound)


def sql_huge_copy(entry: BadInput, dsn: str, conn: psycopg.Connection) -> None:
    agents = new_agents(conn, 20_000)
    with conn.cursor() as cur, cur.copy("COPY pybatch.heartbeats (agent_id, beat_at) FROM STDIN") as cp:
        for second in range(10):
            at = (T0 + timedelta(seconds=second)).isoformat()
            cp.write("".join(f"{agent}\t{at}\n" for agent in agents))
    assert staged(conn) == 200_000
    passes = 0
    while staged(conn):
        result = flush(conn, max_rows=50_000)
        assert result.ok and result.rows_staged is not None and result.rows_staged <= 50_000
        passes += 1
    assert passes == 4
    row = conn.execute(
        "SELECT count(*) FROM public.workspace_agents WHERE id = ANY(%s) "
        "AND first_connected_at = %s AND last_connected_at = %s",
        (agents, T0, T0 + timedelta(seconds=9)),
    ).fetchone()
    assert row == (20_000,)


def sql_read_only_database(entry: BadInput, dsn: str, conn: psycopg.Connection) -> None:
    (agent,) = new_agents(conn)
    stage(conn, agent, T0)
    dbname = conn.info.dbname
    conn.execute(sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(sql.Identifier(dbname)))
    try:
        with psycopg.connect(dsn, autocommit=True) as ro:
            raises(entry, lambda: stage(ro, agent, T0 + timedelta(seconds=1)))
            raises(entry, lambda: ro.execute("SELECT pybatch.disconnect(%s, %s)", (agent, T0)))
            raises(entry, lambda: flush(ro), PybatchError)
    finally:
        conn.execute(sql.SQL("ALTER DATABASE {} RESET default_transaction_read_only").format(sql.Identifier(dbname)))
    assert staged(conn) == 1 and state(conn, agent) == (None, None, None, None)
    assert flush(conn).ok and state(conn, agent)[1] == T0


def sql_flush_connection_killed(entry: BadInput, dsn: str, conn: psycopg.Connection) -> None:
    agents = new_agents(conn, 3)
    for agent in agents:
        stage(conn, agent, T0)
    # A trigger makes the flush slow enough to be killed while it merges.
    conn.execute("""
        CREATE FUNCTION public.slow_update() RETURNS trigger LANGUAGE plpgsql AS
        $$ BEGIN PERFORM pg_sleep(0.5); RETURN NEW; END $$;
        CREATE TRIGGER slow_update BEFORE UPDATE ON public.workspace_agents
            FOR EACH ROW EXECUTE FUNCTION public.slow_update();
    """)
    errors: list[BaseException] = []
    with psycopg.connect(dsn, autocommit=True) as victim:
        pid = victim.info.backend_pid

        def run() -> None:
            try:
                flush(victim)
            except BaseException as exc:
                errors.append(exc)

        thread = threading.Thread(target=run)
        thread.start()
        deadline = time.monotonic() + 10
        while conn.execute("SELECT wait_event FROM pg_stat_activity WHERE pid = %s", (pid,)).fetchone() != ("PgSleep",):
            assert time.monotonic() < deadline
            time.sleep(0.02)
        conn.execute("SELECT pg_terminate_backend(%s)", (pid,))
        thread.join()
    assert len(errors) == 1 and entry.error and re.search(entry.error, str(errors[0]))
    conn.execute("DROP TRIGGER slow_update ON public.workspace_agents")
    # Nothing merged is lost: the beats wait in staging or, handed off, in pybatch.pending.
    row = conn.execute(
        "SELECT (SELECT count(*) FROM pybatch.heartbeats) + (SELECT COALESCE(sum(beats), 0) FROM pybatch.pending)"
    ).fetchone()
    assert row == (3,)
    assert flush(conn).agents_updated == 3 and staged(conn) == 0
    assert conn.execute("SELECT count(*) FROM pybatch.pending").fetchone() == (0,)


# -- client API ------------------------------------------------------------------------------


def client_beat_malformed_uuid(entry: BadInput, dsn: str, conn: psycopg.Connection) -> None:
    with HeartbeatClient(dsn) as client:
        for value in ("not-a-uuid", 12345, b"0123456789abcdef"):
            raises(entry, lambda v=value: client.beat(v), InvalidHeartbeat)  # type: ignore[misc]
    assert staged(conn) == 0


def client_beat_malformed_replica(entry: BadInput, dsn: str, conn: psycopg.Connection) -> None:
    (agent,) = new_agents(conn)
    with HeartbeatClient(dsn) as client:
        raises(entry, lambda: client.beat(agent, replica_id="replica-1"), InvalidHeartbeat)
    assert staged(conn) == 0


def client_disconnect_malformed_uuid(entry: BadInput, dsn: str, conn: psycopg.Connection) -> None:
    with HeartbeatClient(dsn) as client:
        raises(entry, lambda: client.disconnect(INJECTION), InvalidHeartbeat)


def client_beat_none_agent(entry: BadInput, dsn: str, conn: psycopg.Connection) -> None:
    with HeartbeatClient(dsn) as client:
        raises(entry, lambda: client.beat(None), InvalidHeartbeat)
        raises(entry, lambda: client.disconnect(None), InvalidHeartbeat)
    assert staged(conn) == 0


def client_naive_datetime(entry: BadInput, dsn: str, conn: psycopg.Connection) -> None:
    (agent,) = new_agents(conn)
    for mode in ("immediate", "buffered"):
        with HeartbeatClient(dsn, mode=mode) as client:
            raises(entry, lambda c=client: c.beat(agent, at=datetime(2026, 1, 1)), InvalidHeartbeat)  # type: ignore[misc]
            raises(entry, lambda c=client: c.disconnect(agent, at=datetime(2026, 1, 1)), InvalidHeartbeat)  # type: ignore[misc]
    assert staged(conn) == 0


def client_far_future(entry: BadInput, dsn: str, conn: psycopg.Connection) -> None:
    (agent,) = new_agents(conn)
    with HeartbeatClient(dsn) as client:
        raises(entry, lambda: client.beat(agent, at=datetime(9999, 12, 31, tzinfo=UTC)), InvalidHeartbeat)
    assert staged(conn) == 0


def client_far_past(entry: BadInput, dsn: str, conn: psycopg.Connection) -> None:
    (agent,) = new_agents(conn)
    year_1 = datetime(1, 1, 1, tzinfo=UTC)
    with HeartbeatClient(dsn) as client:
        client.beat(agent, at=T0)
        client.beat(agent, at=year_1)
    assert flush(conn).ok
    assert state(conn, agent)[:3] == (year_1, T0, None)


def client_at_not_datetime(entry: BadInput, dsn: str, conn: psycopg.Connection) -> None:
    (agent,) = new_agents(conn)
    with HeartbeatClient(dsn) as client:
        raises(entry, lambda: client.beat(agent, at="2026-01-01T00:00:00Z"), InvalidHeartbeat)  # type: ignore[arg-type]


def client_disconnect_unknown_agent(entry: BadInput, dsn: str, conn: psycopg.Connection) -> None:
    with HeartbeatClient(dsn) as client:
        raises(entry, lambda: client.disconnect(uuid.uuid4()), UnknownAgent)


def client_huge_buffer(entry: BadInput, dsn: str, conn: psycopg.Connection) -> None:
    agents = new_agents(conn, 50_000)
    with HeartbeatClient(dsn, mode="buffered", write_interval="10s", max_batch=20_000) as client:
        for agent in agents:
            client.beat(agent, at=T0)
    assert staged(conn) == 50_000
    assert flush(conn).agents_updated == 50_000


def client_empty_database(entry: BadInput, dsn: str, conn: psycopg.Connection) -> None:
    with psycopg.connect(dsn, autocommit=True) as admin:
        admin.execute("CREATE DATABASE " + conn.info.dbname + "_empty")
    empty = psycopg.conninfo.make_conninfo(dsn, dbname=conn.info.dbname + "_empty")
    try:
        with HeartbeatClient(empty) as client:
            raises(entry, lambda: client.beat(uuid.uuid4()), PybatchError)
    finally:
        with psycopg.connect(dsn, autocommit=True) as admin:
            admin.execute("DROP DATABASE " + conn.info.dbname + "_empty")


def wait_until(condition: Callable[[], bool], timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def client_read_only_database(entry: BadInput, dsn: str, conn: psycopg.Connection) -> None:
    agents = new_agents(conn, 3)
    dbname = sql.Identifier(conn.info.dbname)
    conn.execute(sql.SQL("ALTER DATABASE {} SET default_transaction_read_only = on").format(dbname))
    buffered = HeartbeatClient(dsn, mode="buffered", write_interval="50ms")
    try:
        with HeartbeatClient(dsn) as client:
            raises(entry, lambda: client.beat(agents[0], at=T0), PybatchError)
        for agent in agents:
            buffered.beat(agent, at=T0)
        wait_until(lambda: buffered.stats.write_failures >= 1)  # the writer tried, and the server refused
        assert buffered.stats.buffer_size == 3 and staged(conn) == 0
    finally:
        conn.execute(sql.SQL("ALTER DATABASE {} RESET default_transaction_read_only").format(dbname))
    # The writer's session keeps read-only until it reconnects: close() must still not lose rows
    # silently -- it either writes them or raises naming them.
    try:
        buffered.close()
    except PybatchError as exc:
        assert re.search(r"read-only|not written", str(exc))
        return
    assert staged(conn) == 3


def client_immediate_connection_killed(entry: BadInput, dsn: str, conn: psycopg.Connection) -> None:
    agents = new_agents(conn, 3)
    written = []
    with HeartbeatClient(dsn) as client:
        client.beat(agents[0], at=T0)
        written.append(agents[0])
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pybatch' "
            "AND pid <> pg_backend_pid() AND datname = current_database()"
        )
        for agent in agents[1:]:
            try:
                client.beat(agent, at=T0)
                written.append(agent)
            except PybatchError as exc:  # allowed once: the caller learns the beat was not written
                assert "DatabaseUnavailable" in type(exc).__name__ or "terminat" in str(exc) or "closed" in str(exc)
                client.beat(agent, at=T0)
                written.append(agent)
    assert flush(conn).ok
    assert all(state(conn, agent)[1] == T0 for agent in written) and len(written) == 3


def client_buffered_connection_killed(entry: BadInput, dsn: str, conn: psycopg.Connection) -> None:
    agents = new_agents(conn, 100)
    with HeartbeatClient(dsn, mode="buffered", write_interval="50ms", max_backoff="200ms") as client:
        for agent in agents[:50]:
            client.beat(agent, at=T0)
        wait_until(lambda: client.stats.rows_written >= 50)
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE application_name = 'pybatch' "
            "AND pid <> pg_backend_pid() AND datname = current_database()"
        )
        for agent in agents[50:]:
            client.beat(agent, at=T0)
        wait_until(lambda: client.stats.rows_written >= 100)  # written again after the kill, before close()
    # Every agent staged; after the reconnect the client writes its recent beats again
    # (docs/ha.md), so the first 50 may be staged twice: the flush folds them.
    agents_staged = conn.execute("SELECT count(DISTINCT agent_id) FROM pybatch.heartbeats").fetchone()
    assert agents_staged == (100,) and staged(conn) in (100, 150)
    assert flush(conn).agents_updated == 100


ENTRIES = by_surface(SQL, CLIENT)


@pytest.mark.parametrize("entry", ENTRIES, ids=[e.id for e in ENTRIES])
def test_bad_input(entry: BadInput, dsn: str, conn: psycopg.Connection) -> None:
    scenario: Scenario = globals()[entry.id]
    scenario(entry, dsn, conn)


def test_every_error_entry_names_a_pattern_and_every_scenario_exists() -> None:
    for entry in ENTRIES:
        assert callable(globals().get(entry.id)), entry.id
