"""HeartbeatClient against a real database: both modes, every way to connect, bad input."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import psycopg
import pytest
from psycopg_pool import AsyncConnectionPool, ConnectionPool

from pybatch import (
    ClientClosed,
    ConfigError,
    HeartbeatClient,
    InvalidAgentId,
    InvalidHeartbeat,
    InvalidTimestamp,
    UnknownAgent,
)
from pybatch.flush import flush

REPLICA_A = uuid.UUID(int=1)
REPLICA_B = uuid.UUID(int=2)


def make_agents(conn: psycopg.Connection, n: int) -> list[uuid.UUID]:
    ids = [uuid.uuid4() for _ in range(n)]
    conn.execute("INSERT INTO public.workspace_agents (id) SELECT unnest(%s::uuid[])", (ids,))
    return ids


def staged(conn: psycopg.Connection) -> list[tuple[uuid.UUID, uuid.UUID | None, datetime]]:
    return [tuple(r) for r in conn.execute(  # type: ignore[misc]
        "SELECT agent_id, replica_id, beat_at FROM pybatch.heartbeats ORDER BY agent_id, beat_at").fetchall()]


def agent_row(conn: psycopg.Connection, agent: uuid.UUID) -> tuple[datetime | None, datetime | None, uuid.UUID | None]:
    row = conn.execute(
        "SELECT last_connected_at, disconnected_at, last_connected_replica_id FROM public.workspace_agents "
        "WHERE id = %s", (agent,)).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


@pytest.fixture
def agents(conn: psycopg.Connection) -> list[uuid.UUID]:
    return make_agents(conn, 3)


@pytest.fixture
def pool(dsn: str) -> Iterator[ConnectionPool]:
    with ConnectionPool(dsn, min_size=1, max_size=4, open=True) as p:
        yield p


# -- immediate mode ------------------------------------------------------------------------


def test_immediate_beat_is_committed_with_server_clock(dsn: str, conn: psycopg.Connection,
                                                        agents: list[uuid.UUID]) -> None:
    a = agents[0]
    before = conn.execute("SELECT now()").fetchone()[0]  # type: ignore[index]
    with HeartbeatClient(dsn) as hb:
        hb.beat(a, replica_id=REPLICA_A)
        hb.beat(str(agents[1]), replica_id=str(REPLICA_B))
        assert len(staged(conn)) == 2  # committed before beat() returned
        stats = hb.stats
    rows = {r[0]: r for r in staged(conn)}
    assert rows[a][1] == REPLICA_A and rows[agents[1]][1] == REPLICA_B
    assert rows[a][2] >= before
    assert stats.beats_accepted == 2 and stats.rows_written == 2 and stats.write_failures == 0
    assert stats.buffer_size == 0 and stats.last_write_at is not None


def test_immediate_beat_keeps_explicit_at(dsn: str, conn: psycopg.Connection, agents: list[uuid.UUID]) -> None:
    at = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    with HeartbeatClient(dsn) as hb:
        hb.beat(agents[0], at=at)
    assert staged(conn) == [(agents[0], None, at)]


def test_immediate_with_pool(pool: ConnectionPool, conn: psycopg.Connection, agents: list[uuid.UUID]) -> None:
    with HeartbeatClient(pool=pool) as hb:
        hb.beat(agents[0])
        assert [r[0] for r in staged(conn)] == [agents[0]]
        assert hb.disconnect(agents[1]) is True
    assert agent_row(conn, agents[1])[1] is not None
    assert not pool.closed  # the pool belongs to the caller


def test_immediate_with_connection_joins_the_callers_transaction(
        dsn: str, conn: psycopg.Connection, agents: list[uuid.UUID]) -> None:
    with psycopg.connect(dsn) as caller:
        hb = HeartbeatClient(connection=caller)
        with caller.transaction():
            hb.beat(agents[0])
            assert staged(conn) == []  # not yet committed: the block commits it
        assert [r[0] for r in staged(conn)] == [agents[0]]
        with caller.transaction(force_rollback=True):
            hb.beat(agents[1])
        assert [r[0] for r in staged(conn)] == [agents[0]]  # rolled back with the caller
        hb.close()
        assert not caller.closed


def test_bad_input_leaves_the_callers_transaction_usable(dsn: str, conn: psycopg.Connection,
                                                         agents: list[uuid.UUID]) -> None:
    with psycopg.connect(dsn) as caller:
        hb = HeartbeatClient(connection=caller)
        with caller.transaction():
            hb.beat(agents[0])
            with pytest.raises(InvalidAgentId):
                hb.beat("nope")
            with pytest.raises(InvalidTimestamp):
                hb.beat(agents[1], at=datetime.now(UTC) + timedelta(hours=1))
            hb.beat(agents[2])
    assert sorted(r[0] for r in staged(conn)) == sorted([agents[0], agents[2]])


def test_buffered_mode_refuses_a_single_connection(dsn: str) -> None:
    with psycopg.connect(dsn) as caller, pytest.raises(ConfigError, match=r"buffered.*single connection"):
        HeartbeatClient(mode="buffered", connection=caller)


def test_constructor_rejects_bad_options(dsn: str) -> None:
    with pytest.raises(ConfigError, match="mode"):
        HeartbeatClient(dsn, mode="sometimes")
    with pytest.raises(ConfigError, match=r"write_interval.*'soon'"):
        HeartbeatClient(dsn, mode="buffered", write_interval="soon")
    with pytest.raises(ConfigError, match="max_batch"):
        HeartbeatClient(dsn, mode="buffered", max_batch=0)
    with pytest.raises(ConfigError, match="only one of dsn, pool or connection"), psycopg.connect(dsn) as c:
        HeartbeatClient(dsn, connection=c)


def test_async_pool_is_refused_with_a_pointer_to_the_async_client(dsn: str) -> None:
    pool = AsyncConnectionPool(dsn, open=False)
    with pytest.raises(ConfigError, match="AsyncHeartbeatClient"):
        HeartbeatClient(pool=pool)  # type: ignore[arg-type]


def test_dsn_is_resolved_like_the_cli(dsn: str, conn: psycopg.Connection, agents: list[uuid.UUID],
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PYBATCH_DSN", dsn)
    with HeartbeatClient() as hb:
        hb.beat(agents[0])
    assert [r[0] for r in staged(conn)] == [agents[0]]


# -- disconnect ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["immediate", "buffered"])
def test_disconnect_is_direct_and_maps_errors(dsn: str, conn: psycopg.Connection, agents: list[uuid.UUID],
                                              mode: str) -> None:
    with HeartbeatClient(dsn, mode=mode) as hb:
        assert hb.disconnect(agents[0]) is True
        assert agent_row(conn, agents[0])[1] is not None  # at once, no flush needed
        assert hb.disconnect(agents[0], at=datetime(2000, 1, 1, tzinfo=UTC)) is False  # older: no change
        missing = uuid.uuid4()
        with pytest.raises(UnknownAgent, match=str(missing)) as info:
            hb.disconnect(missing)
        assert isinstance(info.value, LookupError)
        with pytest.raises(InvalidAgentId, match="None"):
            hb.disconnect(None)
        with pytest.raises(InvalidTimestamp, match="naive"):
            hb.disconnect(agents[1], at=datetime(2025, 1, 1))


def test_server_rejection_beyond_tolerance_is_typed(dsn: str, conn: psycopg.Connection,
                                                    agents: list[uuid.UUID]) -> None:
    with HeartbeatClient(dsn) as hb:
        hb.beat(agents[0])  # first connection reads future_tolerance (5 s)
        assert hb.future_tolerance == 5.0
        # The server shrinks its tolerance after the client read it: the server's 22023 is mapped.
        conn.execute("UPDATE pybatch.settings SET future_tolerance = '0'")
        with pytest.raises(InvalidTimestamp, match="future_tolerance"):
            hb.disconnect(agents[0], at=datetime.now(UTC) + timedelta(seconds=3))


def test_future_tolerance_is_read_from_settings(dsn: str, conn: psycopg.Connection,
                                                agents: list[uuid.UUID]) -> None:
    conn.execute("UPDATE pybatch.settings SET future_tolerance = '1 minute'")
    with HeartbeatClient(dsn) as hb:
        hb.beat(agents[0], at=datetime.now(UTC) + timedelta(seconds=30))  # allowed by 1 minute
        assert hb.future_tolerance == 60.0
        with pytest.raises(InvalidTimestamp, match="ahead"):
            hb.beat(agents[0], at=datetime.now(UTC) + timedelta(minutes=5))
    assert len(staged(conn)) == 1


def test_future_tolerance_falls_back_to_five_seconds(dsn: str, conn: psycopg.Connection,
                                                     agents: list[uuid.UUID],
                                                     caplog: pytest.LogCaptureFixture) -> None:
    conn.execute("CREATE ROLE hb_writer LOGIN")
    conn.execute("GRANT USAGE ON SCHEMA pybatch TO hb_writer")
    conn.execute("GRANT INSERT ON pybatch.heartbeats TO hb_writer")  # but no SELECT on settings
    with HeartbeatClient(dsn + " user=hb_writer") as hb:
        hb.beat(agents[0], at=datetime.now(UTC) + timedelta(seconds=3))
        assert hb.future_tolerance == 5.0
        with pytest.raises(InvalidTimestamp):
            hb.beat(agents[0], at=datetime.now(UTC) + timedelta(seconds=30))
    assert any("future_tolerance" in r.getMessage() for r in caplog.records)
    assert len(staged(conn)) == 1
    conn.execute("DROP OWNED BY hb_writer")
    conn.execute("DROP ROLE hb_writer")


# -- buffered mode -------------------------------------------------------------------------


def test_buffered_beat_writes_latest_per_agent_with_client_clock(dsn: str, conn: psycopg.Connection,
                                                                 agents: list[uuid.UUID]) -> None:
    a, b, _ = agents
    t0 = datetime(2025, 6, 1, tzinfo=UTC)
    with HeartbeatClient(dsn, mode="buffered", write_interval="1h") as hb:
        hb.beat(a, at=t0, replica_id=REPLICA_B)
        hb.beat(a, at=t0 + timedelta(seconds=2), replica_id=None)
        hb.beat(a, at=t0 + timedelta(seconds=2), replica_id=REPLICA_A)  # tie: greater replica wins over NULL
        hb.beat(a, at=t0 + timedelta(seconds=1), replica_id=REPLICA_B)  # older: ignored
        before = datetime.now(UTC)
        hb.beat(b)
        after = datetime.now(UTC)
        assert staged(conn) == []  # nothing written before the interval
        assert hb.stats.buffer_size == 2 and hb.stats.beats_accepted == 5
        assert hb.flush_buffer() == 2
        stats = hb.stats
    rows = {r[0]: r for r in staged(conn)}
    assert rows[a] == (a, REPLICA_A, t0 + timedelta(seconds=2))
    assert before <= rows[b][2] <= after  # client clock at beat() time
    assert stats.rows_written == 2 and stats.buffer_size == 0 and stats.last_write_at is not None


def test_buffered_writes_every_interval(dsn: str, conn: psycopg.Connection, agents: list[uuid.UUID]) -> None:
    with HeartbeatClient(dsn, mode="buffered", write_interval="200ms") as hb:
        hb.beat(agents[0])
        deadline = datetime.now(UTC) + timedelta(seconds=10)
        while not staged(conn) and datetime.now(UTC) < deadline:
            threading.Event().wait(0.05)
        assert [r[0] for r in staged(conn)] == [agents[0]]
        assert hb.stats.rows_written == 1


def test_buffered_writes_when_max_batch_agents_wait(dsn: str, conn: psycopg.Connection) -> None:
    many = make_agents(conn, 10)
    with HeartbeatClient(dsn, mode="buffered", write_interval="1h", max_batch=10) as hb:
        for agent in many[:9]:
            hb.beat(agent)
        threading.Event().wait(0.3)
        assert staged(conn) == []  # 9 < max_batch: still waiting for the hour
        hb.beat(many[9])
        deadline = datetime.now(UTC) + timedelta(seconds=10)
        while len(staged(conn)) < 10 and datetime.now(UTC) < deadline:
            threading.Event().wait(0.05)
        assert sorted(r[0] for r in staged(conn)) == sorted(many)


def test_close_does_a_final_write_and_later_calls_raise(dsn: str, conn: psycopg.Connection,
                                                        agents: list[uuid.UUID]) -> None:
    hb = HeartbeatClient(dsn, mode="buffered", write_interval="1h")
    hb.beat(agents[0])
    hb.close()
    assert [r[0] for r in staged(conn)] == [agents[0]]
    hb.close()  # idempotent
    with pytest.raises(ClientClosed):
        hb.beat(agents[1])
    with pytest.raises(ClientClosed):
        hb.disconnect(agents[1])
    with pytest.raises(ClientClosed):
        hb.flush_buffer()
    assert len(staged(conn)) == 1


def test_immediate_calls_after_close_raise(dsn: str, agents: list[uuid.UUID]) -> None:
    with HeartbeatClient(dsn) as hb:
        hb.beat(agents[0])
    with pytest.raises(ClientClosed):
        hb.beat(agents[0])


def test_buffered_with_pool(pool: ConnectionPool, conn: psycopg.Connection, agents: list[uuid.UUID]) -> None:
    with HeartbeatClient(pool=pool, mode="buffered", write_interval="1h") as hb:
        for agent in agents:
            hb.beat(agent)
    assert sorted(r[0] for r in staged(conn)) == sorted(agents)


@pytest.mark.parametrize("mode", ["immediate", "buffered"])
def test_bad_input_never_corrupts_the_buffer_or_loses_good_beats(
        dsn: str, conn: psycopg.Connection, agents: list[uuid.UUID], mode: str) -> None:
    a, b, c = agents
    t0 = datetime.now(UTC) - timedelta(minutes=1)
    with HeartbeatClient(dsn, mode=mode, write_interval="1h") as hb:
        hb.beat(a, at=t0, replica_id=REPLICA_A)
        bad: list[tuple[object, dict[str, object], type[Exception], str]] = [
            (None, {}, InvalidAgentId, "None"),
            ("not-a-uuid", {}, InvalidAgentId, "not-a-uuid"),
            (12345, {}, InvalidAgentId, "12345"),
            (b, {"replica_id": "replica-7"}, InvalidHeartbeat, "replica-7"),
            (b, {"at": datetime(2025, 1, 1)}, InvalidTimestamp, "naive"),
            (b, {"at": "2025-01-01T00:00:00Z"}, InvalidTimestamp, "2025-01-01"),
            (a, {"at": datetime.now(UTC) + timedelta(hours=1)}, InvalidTimestamp, "future_tolerance"),
        ]
        for agent, kwargs, error, text in bad:
            with pytest.raises(error, match=text) as info:
                hb.beat(agent, **kwargs)  # type: ignore[arg-type]
            assert isinstance(info.value, ValueError)
        hb.beat(c, at=t0 + timedelta(seconds=1))
        hb.flush_buffer()
        assert hb.stats.beats_accepted == 2
    assert staged(conn) == sorted([(a, REPLICA_A, t0), (c, None, t0 + timedelta(seconds=1))])


def test_many_threads_beat_at_once(dsn: str, conn: psycopg.Connection) -> None:
    many = make_agents(conn, 200)
    threads_n, rounds = 8, 50
    with HeartbeatClient(dsn, mode="buffered", write_interval="50ms", max_batch=64) as hb:
        def worker(n: int) -> None:
            for r in range(rounds):
                for agent in many[n::threads_n]:
                    hb.beat(agent, at=datetime(2025, 1, 1, tzinfo=UTC) + timedelta(seconds=r))

        threads = [threading.Thread(target=worker, args=(n,)) for n in range(threads_n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    stats = hb.stats
    assert stats.beats_accepted == len(many) * rounds and stats.buffer_size == 0 and stats.write_failures == 0
    assert stats.rows_written == len(staged(conn))
    result = flush(conn)
    assert result.ok and result.agents_updated == len(many)
    last = conn.execute("SELECT DISTINCT last_connected_at FROM public.workspace_agents").fetchall()
    assert last == [(datetime(2025, 1, 1, tzinfo=UTC) + timedelta(seconds=rounds - 1),)]


def test_flushed_state_follows_the_beats_and_respects_disconnect(dsn: str, conn: psycopg.Connection,
                                                                 agents: list[uuid.UUID]) -> None:
    a = agents[0]
    with HeartbeatClient(dsn, mode="buffered", write_interval="1h") as hb:
        hb.beat(a, replica_id=REPLICA_A)
        hb.disconnect(a)  # later than the buffered beat on this client's clock
        hb.flush_buffer()
    flush(conn)
    last, disconnected, replica = agent_row(conn, a)
    assert last is not None and disconnected is not None and disconnected >= last
    assert replica == REPLICA_A
