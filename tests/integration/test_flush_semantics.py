"""pybatch.flush() and pybatch.disconnect() against the reference model (tests/model.py)."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pybatch.flush import flush
from pybatch.local import LocalCluster
from tests.citus_fixtures import citus_cluster, citus_dsn  # noqa: F401 (fixtures)
from tests.conftest import TEMPLATE_DB, _fresh_database
from tests.model import AgentState, Beat, Disconnect, actual_states, expected_states

BASE = datetime(2026, 1, 1, tzinfo=UTC)
REPLICAS = [uuid.UUID(int=n) for n in (1, 2, 0xFFFF_0000_0000_0000_0000_0000_0000_0000)]


# The same tests on plain PostgreSQL and on Citus (coordinator + 2 workers, workspace_agents
# distributed by id, staging/pending/quarantine co-located: the shard-local flush). Not on
# Citus: the 150-example property test (test_any_order_on_citus below runs its body with
# fewer examples: each Citus flush opens a connection per shard group), and the
# statement_timeout test (a coordinator's statement_timeout does not bound the CALLs it sent
# to the workers; docs/citus.md).
PLAIN_ONLY = {"test_any_order_equals_timestamp_order", "test_statement_timeout_mid_flush_is_recorded"}


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "backend" in metafunc.fixturenames:
        backends: list[object] = ["postgres"]
        if metafunc.function.__name__ not in PLAIN_ONLY:
            backends.append(pytest.param("citus", marks=pytest.mark.citus))
        metafunc.parametrize("backend", backends, indirect=True)


@pytest.fixture
def backend(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def dsn(backend: str, request: pytest.FixtureRequest, pg_cluster: LocalCluster) -> Iterator[str]:
    """A fresh migrated database on the backend under test."""
    if backend == "citus":
        yield request.getfixturevalue("citus_dsn")
    else:
        yield from _fresh_database(pg_cluster, TEMPLATE_DB)


def t(seconds: float) -> datetime:
    return BASE + timedelta(seconds=seconds)


def make_agents(conn: psycopg.Connection, n: int) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(n)]
    conn.execute(
        "INSERT INTO public.workspace_agents (id, created_at, updated_at) SELECT unnest(%s::uuid[]), %s, %s",
        (ids, t(-100), t(-100)),
    )
    return ids


def stage(conn: psycopg.Connection, beats: list[Beat]) -> None:
    with conn.cursor() as cur, cur.copy("COPY pybatch.heartbeats (agent_id, replica_id, beat_at) FROM STDIN") as cp:
        for beat in beats:
            cp.write_row((beat.agent_id, beat.replica_id, beat.at))


def disconnect(conn: psycopg.Connection, d: Disconnect) -> bool:
    row = conn.execute("SELECT pybatch.disconnect(%s, %s)", (d.agent_id, d.at)).fetchone()
    assert row is not None
    return bool(row[0])


def staged_count(conn: psycopg.Connection) -> int:
    """Heartbeats not merged yet: in staging, or handed off to pybatch.pending (counted per beat)."""
    row = conn.execute(
        "SELECT (SELECT count(*) FROM pybatch.heartbeats) + (SELECT COALESCE(sum(beats), 0) FROM pybatch.pending)"
    ).fetchone()
    assert row is not None
    return int(row[0])


def test_flush_merges_latest_and_empties_staging(conn: psycopg.Connection) -> None:
    a, b = make_agents(conn, 2)
    stage(conn, [Beat(a, t(1), REPLICAS[0]), Beat(a, t(3), REPLICAS[1]), Beat(a, t(2)), Beat(b, t(5))])
    result = flush(conn)
    assert result.ok and result.rows_staged == 4 and result.agents_updated == 2
    assert result.stale_heartbeats == 0 and result.unknown_heartbeats == 0 and result.future_heartbeats == 0
    assert staged_count(conn) == 0
    states = actual_states(conn, [a, b])
    assert states[a] == AgentState(t(1), t(3), None, REPLICAS[1])
    assert states[b] == AgentState(t(5), t(5), None, None)


def test_null_replica_stays_null_and_overwrites_older_replica(conn: psycopg.Connection) -> None:
    (a,) = make_agents(conn, 1)
    stage(conn, [Beat(a, t(1), REPLICAS[0])])
    flush(conn)
    stage(conn, [Beat(a, t(2), None)])
    flush(conn)
    assert actual_states(conn, [a])[a].last_connected_replica_id is None


def test_older_heartbeat_never_overwrites_newer(conn: psycopg.Connection) -> None:
    (a,) = make_agents(conn, 1)
    stage(conn, [Beat(a, t(10), REPLICAS[1])])
    flush(conn)
    stage(conn, [Beat(a, t(5), REPLICAS[0])])
    result = flush(conn)
    assert result.agents_updated == 1  # only first_connected_at moves back to t(5)
    assert actual_states(conn, [a])[a] == AgentState(t(5), t(10), None, REPLICAS[1])
    stage(conn, [Beat(a, t(7), REPLICAS[2])])
    result = flush(conn)
    assert result.agents_updated == 0 and result.stale_heartbeats == 1


def test_stale_heartbeat_does_not_undo_later_disconnect(conn: psycopg.Connection) -> None:
    (a,) = make_agents(conn, 1)
    stage(conn, [Beat(a, t(1))])
    flush(conn)
    stage(conn, [Beat(a, t(5))])  # waiting in staging...
    assert disconnect(conn, Disconnect(a, t(6)))  # ...when the agent disconnects later
    flush(conn)
    assert actual_states(conn, [a])[a] == AgentState(t(1), t(5), t(6), None)


def test_disconnect_older_than_merged_heartbeat_changes_nothing(conn: psycopg.Connection) -> None:
    (a,) = make_agents(conn, 1)
    stage(conn, [Beat(a, t(10))])
    flush(conn)
    before = conn.execute("SELECT xmin::text FROM public.workspace_agents WHERE id = %s", (a,)).fetchone()
    assert disconnect(conn, Disconnect(a, t(9))) is False
    after = conn.execute("SELECT xmin::text FROM public.workspace_agents WHERE id = %s", (a,)).fetchone()
    assert before == after
    assert actual_states(conn, [a])[a].disconnected_at is None


def test_tie_disconnect_comes_after_heartbeat(conn: psycopg.Connection) -> None:
    (a,) = make_agents(conn, 1)
    assert disconnect(conn, Disconnect(a, t(5)))
    stage(conn, [Beat(a, t(5), REPLICAS[0])])
    flush(conn)
    assert actual_states(conn, [a])[a] == AgentState(t(5), t(5), t(5), REPLICAS[0])


def test_tie_between_heartbeats_greater_replica_wins_null_lowest(conn: psycopg.Connection) -> None:
    (a,) = make_agents(conn, 1)
    stage(conn, [Beat(a, t(5), REPLICAS[1])])
    flush(conn)
    stage(conn, [Beat(a, t(5), None), Beat(a, t(5), REPLICAS[0])])
    flush(conn)
    assert actual_states(conn, [a])[a].last_connected_replica_id == REPLICAS[1]
    stage(conn, [Beat(a, t(5), REPLICAS[2])])
    flush(conn)
    assert actual_states(conn, [a])[a].last_connected_replica_id == REPLICAS[2]


def test_unchanged_rows_are_not_rewritten(conn: psycopg.Connection) -> None:
    (a,) = make_agents(conn, 1)
    stage(conn, [Beat(a, t(5), REPLICAS[0])])
    flush(conn)
    before = conn.execute("SELECT xmin::text, updated_at FROM public.workspace_agents WHERE id = %s", (a,)).fetchone()
    stage(conn, [Beat(a, t(5), REPLICAS[0]), Beat(a, t(5), None)])
    result = flush(conn)
    after = conn.execute("SELECT xmin::text, updated_at FROM public.workspace_agents WHERE id = %s", (a,)).fetchone()
    assert result.agents_updated == 0 and result.stale_heartbeats == 2
    assert before == after


def test_every_beat_of_an_agent_without_a_row_is_counted_unknown(dsn: str, conn: psycopg.Connection) -> None:
    """Carried over in pending or freshly staged, each beat of a deleted agent counts once."""
    kept, doomed = make_agents(conn, 2)
    stage(conn, [Beat(doomed, t(1)), Beat(doomed, t(2)), Beat(kept, t(2))])
    with psycopg.connect(dsn) as app:
        app.execute("SELECT FROM public.workspace_agents WHERE id = %s FOR UPDATE", (doomed,))
        first = flush(conn)
        app.rollback()
    assert (first.agents_updated, first.deferred_agents) == (1, 1)  # doomed's 2 beats wait in pending
    stage(conn, [Beat(doomed, t(3)), Beat(kept, t(3))])
    conn.execute("DELETE FROM public.workspace_agents WHERE id = %s", (doomed,))
    result = flush(conn)
    assert (result.rows_staged, result.unknown_heartbeats, result.agents_updated) == (2, 3, 1)
    assert actual_states(conn, [kept])[kept].last_connected_at == t(3)


def test_updated_at_set_on_changed_rows(conn: psycopg.Connection) -> None:
    (a,) = make_agents(conn, 1)
    stage(conn, [Beat(a, t(5))])
    flush(conn)
    row = conn.execute("SELECT updated_at > created_at FROM public.workspace_agents WHERE id = %s", (a,)).fetchone()
    assert row == (True,)


def test_unknown_and_future_heartbeats_are_dropped_and_counted(conn: psycopg.Connection) -> None:
    (a,) = make_agents(conn, 1)
    now = datetime.now(UTC)
    stage(conn, [Beat(uuid.uuid4(), t(1)), Beat(uuid.uuid4(), t(2)), Beat(a, now + timedelta(hours=1)), Beat(a, t(3))])
    result = flush(conn)
    assert (result.rows_staged, result.unknown_heartbeats, result.future_heartbeats, result.agents_updated) == (
        4,
        2,
        1,
        1,
    )
    assert actual_states(conn, [a])[a].last_connected_at == t(3)
    assert staged_count(conn) == 0


def test_future_tolerance_setting_is_respected(conn: psycopg.Connection) -> None:
    (a,) = make_agents(conn, 1)
    conn.execute("UPDATE pybatch.settings SET future_tolerance = '1 hour'")  # the largest allowed
    soon = datetime.now(UTC) + timedelta(minutes=30)
    stage(conn, [Beat(a, soon)])
    assert flush(conn).future_heartbeats == 0
    assert actual_states(conn, [a])[a].last_connected_at == soon


def test_future_check_uses_the_wall_clock_not_the_transaction_start(dsn: str, conn: psycopg.Connection) -> None:
    (a,) = make_agents(conn, 1)
    conn.execute("UPDATE pybatch.settings SET future_tolerance = '0'")
    with psycopg.connect(dsn) as long_transaction:
        long_transaction.execute("SELECT 1")  # its transaction (and now()) starts here
        time.sleep(0.5)
        conn.execute("INSERT INTO pybatch.heartbeats (agent_id) VALUES (%s)", (a,))  # stamped later
        result = flush(long_transaction)
        long_transaction.commit()
    assert result.future_heartbeats == 0 and result.agents_updated == 1


def test_disconnect_rejects_future_null_and_unknown(conn: psycopg.Connection) -> None:
    (a,) = make_agents(conn, 1)
    with pytest.raises(psycopg.errors.InvalidParameterValue, match="future_tolerance"):
        disconnect(conn, Disconnect(a, datetime.now(UTC) + timedelta(hours=1)))
    with pytest.raises(psycopg.errors.NullValueNotAllowed, match="agent_id must not be NULL"):
        conn.execute("SELECT pybatch.disconnect(NULL)")
    with pytest.raises(psycopg.errors.NullValueNotAllowed, match="at must not be NULL"):
        conn.execute("SELECT pybatch.disconnect(%s, NULL)", (a,))
    with pytest.raises(psycopg.errors.NoDataFound, match="no agent"):
        disconnect(conn, Disconnect(uuid.uuid4(), t(1)))


def test_null_agent_rejected_at_insert(conn: psycopg.Connection, backend: str) -> None:
    # Citus rejects it on the coordinator, before routing, with its own error class.
    expected = psycopg.errors.NullValueNotAllowed if backend == "citus" else psycopg.errors.NotNullViolation
    with pytest.raises(expected):
        conn.execute("INSERT INTO pybatch.heartbeats (agent_id) VALUES (NULL)")


def test_max_rows_drains_partially_and_keeps_the_rest(conn: psycopg.Connection, backend: str) -> None:
    agents = make_agents(conn, 10)
    beats = [Beat(a, t(i)) for i, a in enumerate(agents)]
    stage(conn, beats)
    first = flush(conn, max_rows=4)
    if backend == "citus":
        # The cap is split across the shard groups (which drain in parallel): at most 4 in all.
        assert first.rows_staged is not None and first.rows_staged <= 4
        assert staged_count(conn) == 10 - first.rows_staged
    else:
        assert first.rows_staged == 4 and staged_count(conn) == 6
    flush(conn)
    assert actual_states(conn, agents) == expected_states(beats)


def test_failed_flush_rolls_back_keeps_staging_and_is_logged(conn: psycopg.Connection) -> None:
    (a,) = make_agents(conn, 1)
    # One statement per call: Citus propagates DDL to the workers one statement at a time.
    conn.execute("""
        CREATE FUNCTION public.fail_once() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN RAISE EXCEPTION 'injected failure'; END $$""")
    conn.execute("""
        CREATE TRIGGER fail_once BEFORE UPDATE ON public.workspace_agents
            FOR EACH ROW EXECUTE FUNCTION public.fail_once()""")
    stage(conn, [Beat(a, t(1))])
    failed = flush(conn)
    assert failed.error is not None and "injected failure" in failed.error
    assert staged_count(conn) == 1
    logged = conn.execute("SELECT error FROM pybatch.flush_log WHERE id = %s", (failed.flush_id,)).fetchone()
    assert logged is not None and "injected failure" in logged[0]
    conn.execute("DROP TRIGGER fail_once ON public.workspace_agents")
    ok = flush(conn)
    assert ok.ok and ok.agents_updated == 1 and staged_count(conn) == 0


def test_statement_timeout_mid_flush_is_recorded(conn: psycopg.Connection) -> None:
    agents = make_agents(conn, 1)
    conn.execute("""
        CREATE FUNCTION public.slow() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_sleep(1); RETURN NEW; END $$;
        CREATE TRIGGER slow BEFORE UPDATE ON public.workspace_agents FOR EACH ROW EXECUTE FUNCTION public.slow();
    """)
    stage(conn, [Beat(agents[0], t(1))])
    conn.execute("SET statement_timeout = '200ms'")
    result = flush(conn)
    conn.execute("RESET statement_timeout")
    assert result.error is not None and "statement timeout" in result.error
    assert staged_count(conn) == 1


def test_concurrent_flush_is_skipped_not_zero(dsn: str, conn: psycopg.Connection) -> None:
    with psycopg.connect(dsn) as holder:
        holder.execute("SELECT FROM pybatch.flush_lock FOR UPDATE")
        result = flush(conn)
        assert result.skipped and result.error is None
        holder.rollback()
    assert not flush(conn).skipped


def test_flush_log_is_purged_by_retention(conn: psycopg.Connection) -> None:
    conn.execute("""INSERT INTO pybatch.flush_log (started_at, duration) VALUES (now() - interval '30 days', '1s')""")
    flush(conn)
    row = conn.execute("SELECT count(*) FROM pybatch.flush_log WHERE started_at < now() - interval '7 days'").fetchone()
    assert row == (0,)


# -- the property test: random orders of beats, disconnects and flushes ----------

event_strategy = st.tuples(
    st.sampled_from(["beat", "disc", "flush"]),
    st.integers(0, 2),  # agent index
    st.integers(0, 6),  # time, coarse so ties are common
    st.sampled_from([None, *REPLICAS]),
)


def flush_by(conn: psycopg.Connection, in_transaction: bool, max_rows: int | None = None) -> None:
    """The default committed-pass flush, or SELECT pybatch.flush() inside a transaction block."""
    if in_transaction:
        with conn.transaction():
            flush(conn, max_rows=max_rows)
    else:
        flush(conn, max_rows=max_rows)


def assert_updated_at_follows_events(
    conn: psycopg.Connection, agents: list[uuid.UUID], events: list[Beat | Disconnect]
) -> None:
    """updated_at is never older than the newest event applied, and no newer than the newest event given."""
    rows = conn.execute(
        "SELECT id, updated_at, created_at, last_connected_at, disconnected_at FROM public.workspace_agents"
        " WHERE id = ANY(%s)",
        (agents,),
    ).fetchall()
    for agent, updated_at, created_at, last_connected_at, disconnected_at in rows:
        applied = [x for x in (last_connected_at, disconnected_at) if x is not None]
        assert updated_at >= max(applied, default=created_at), agent
        given_times = [e.at for e in events if e.agent_id == agent]
        assert updated_at <= max([created_at, *given_times]), agent


def play(
    conn: psycopg.Connection,
    agents: list[uuid.UUID],
    script: list[tuple[str, int, int, uuid.UUID]],
    flush_some: Callable[[int | None], object],
) -> list[Beat | Disconnect]:
    """Stage the script's beats, send its disconnects and flush at its flushes (2 rows at most),
    then flush until nothing is left; the events applied, for the model."""
    applied: list[Beat | Disconnect] = []
    for kind, index, second, replica in script:
        agent = agents[index]
        if kind == "beat":
            beat = Beat(agent, t(second), replica)
            stage(conn, [beat])
            applied.append(beat)
        elif kind == "disc":
            disc = Disconnect(agent, t(second))
            disconnect(conn, disc)
            applied.append(disc)
        else:
            flush_some(2)
    while staged_count(conn):
        flush_some(None)
    return applied


@pytest.mark.parametrize("in_transaction", [False, True], ids=["in_passes", "one_transaction"])
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(event_strategy, max_size=25))
def test_any_order_equals_timestamp_order(
    conn: psycopg.Connection, in_transaction: bool, script: list[tuple[str, int, int, uuid.UUID]]
) -> None:
    conn.execute("TRUNCATE public.workspace_agents, pybatch.heartbeats, pybatch.pending, pybatch.quarantine")
    agents = make_agents(conn, 3)
    applied = play(conn, agents, script, lambda max_rows: flush_by(conn, in_transaction, max_rows))
    expected = expected_states(applied)
    actual = actual_states(conn, agents)
    for agent in agents:
        assert actual[agent] == expected.get(agent, AgentState()), agent
    assert_updated_at_follows_events(conn, agents, applied)


# -- concurrency: writers, disconnecters and two flush loops at once ---------------


def test_concurrent_writers_disconnects_and_two_flushers(dsn: str, conn: psycopg.Connection) -> None:
    agents = make_agents(conn, 50)
    events: list[Beat | Disconnect] = []
    lock = threading.Lock()
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        import random

        rng = random.Random(seed)
        try:
            with psycopg.connect(dsn, autocommit=True) as c:
                for _ in range(300):
                    batch = [
                        Beat(rng.choice(agents), t(rng.randint(0, 200)), rng.choice([None, *REPLICAS]))
                        for _ in range(rng.randint(1, 5))
                    ]
                    stage(c, batch)
                    with lock:
                        events.extend(batch)
        except BaseException as exc:
            errors.append(exc)

    def disconnecter(seed: int) -> None:
        import random

        rng = random.Random(seed)
        try:
            with psycopg.connect(dsn, autocommit=True) as c:
                for _ in range(150):
                    d = Disconnect(rng.choice(agents), t(rng.randint(0, 200)))
                    disconnect(c, d)
                    with lock:
                        events.append(d)
        except BaseException as exc:
            errors.append(exc)

    def flusher() -> None:
        try:
            with psycopg.connect(dsn, autocommit=True) as c:
                while not stop.is_set():
                    flush(c, max_rows=500)
        except BaseException as exc:
            errors.append(exc)

    workers = [threading.Thread(target=writer, args=(i,)) for i in range(4)]
    workers += [threading.Thread(target=disconnecter, args=(100 + i,)) for i in range(2)]
    flushers = [threading.Thread(target=flusher) for _ in range(2)]
    for thread in workers + flushers:
        thread.start()
    for thread in workers:
        thread.join()
    stop.set()
    for thread in flushers:
        thread.join()
    assert not errors, errors
    while staged_count(conn):
        flush(conn)
    failed = conn.execute("SELECT count(*) FROM pybatch.flush_log WHERE error IS NOT NULL").fetchone()
    assert failed == (0,)
    expected = expected_states(events)
    assert actual_states(conn, agents) == {a: expected.get(a, AgentState()) for a in agents}
    assert_updated_at_follows_events(conn, agents, events)


@pytest.mark.citus
@pytest.mark.parametrize("in_transaction", [False, True], ids=["in_passes", "one_transaction"])
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(event_strategy, max_size=25))
def test_any_order_on_citus(
    citus_dsn: str,  # noqa: F811 (the fixture)
    in_transaction: bool,
    script: list[tuple[str, int, int, uuid.UUID]],
) -> None:
    """The property test's body on Citus, with fewer examples."""
    with psycopg.connect(citus_dsn, autocommit=True) as conn:
        test_any_order_equals_timestamp_order.hypothesis.inner_test(conn, in_transaction, script)
