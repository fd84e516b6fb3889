# The one source of the client tests: tests/integration/test_client.py runs every case here
# against HeartbeatClient and is generated from this file by `python tools/async_to_sync.py`.
"""AsyncHeartbeatClient against a real database: both modes, every way to connect, bad input."""

from __future__ import annotations

import os
import re
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import psutil
import psycopg
import psycopg_pool
import pytest
from psycopg_pool import AsyncConnectionPool

from pybatch import (
    AsyncHeartbeatClient,
    ClientClosed,
    ConfigError,
    InvalidAgentId,
    InvalidHeartbeat,
    InvalidTimestamp,
    UnknownAgent,
)
from pybatch.flush import flush
from tests.helpers import make_agents

if True:  # ASYNC
    import asyncio
    import functools
    from collections.abc import Coroutine
    from typing import Any, ParamSpec

    P = ParamSpec("P")

    def run_async(test: Callable[P, Coroutine[Any, Any, None]]) -> Callable[P, None]:
        """Run an async test in an event loop of its own (no pytest plugin needed)."""

        @functools.wraps(test)
        def run(*args: P.args, **kwargs: P.kwargs) -> None:
            asyncio.run(test(*args, **kwargs))

        return run
else:
    import threading

REPLICA_A = uuid.UUID(int=1)
REPLICA_B = uuid.UUID(int=2)

Staged = tuple[uuid.UUID, uuid.UUID | None, datetime]


def staged(conn: psycopg.Connection) -> list[Staged]:
    rows = conn.execute(
        "SELECT agent_id, replica_id, beat_at FROM pybatch.heartbeats ORDER BY agent_id, beat_at"
    ).fetchall()
    return [(r[0], r[1], r[2]) for r in rows]


def agent_row(conn: psycopg.Connection, agent: uuid.UUID) -> tuple[datetime | None, datetime | None, uuid.UUID | None]:
    row = conn.execute(
        "SELECT last_connected_at, disconnected_at, last_connected_replica_id FROM public.workspace_agents "
        "WHERE id = %s",
        (agent,),
    ).fetchone()
    assert row is not None
    return row[0], row[1], row[2]


async def wait_until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll until condition() holds (the background writer keeps running meanwhile)."""
    deadline = time.monotonic() + timeout
    while not condition() and time.monotonic() < deadline:
        await asyncio.sleep(0.05)


@pytest.fixture
def agents(conn: psycopg.Connection) -> list[uuid.UUID]:
    return make_agents(conn, 3)


# -- immediate mode ------------------------------------------------------------------------


@run_async
async def test_immediate_beat_is_committed_with_server_clock(
    dsn: str, conn: psycopg.Connection, agents: list[uuid.UUID]
) -> None:
    a = agents[0]
    now = conn.execute("SELECT now()").fetchone()
    assert now is not None
    before = now[0]
    async with AsyncHeartbeatClient(dsn) as hb:
        await hb.beat(a, replica_id=REPLICA_A)
        await hb.beat(str(agents[1]), replica_id=str(REPLICA_B))
        assert len(staged(conn)) == 2  # committed before beat() returned
        stats = hb.stats
    rows = {r[0]: r for r in staged(conn)}
    assert rows[a][1] == REPLICA_A and rows[agents[1]][1] == REPLICA_B
    assert rows[a][2] >= before
    assert stats.beats_accepted == 2 and stats.rows_written == 2 and stats.write_failures == 0
    assert stats.buffer_size == 0 and stats.last_write_at is not None


@run_async
async def test_immediate_beat_keeps_explicit_at(dsn: str, conn: psycopg.Connection, agents: list[uuid.UUID]) -> None:
    at = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
    async with AsyncHeartbeatClient(dsn) as hb:
        await hb.beat(agents[0], at=at)
    assert staged(conn) == [(agents[0], None, at)]


@run_async
async def test_immediate_beat_and_disconnect(dsn: str, conn: psycopg.Connection, agents: list[uuid.UUID]) -> None:
    async with AsyncHeartbeatClient(dsn) as hb:
        await hb.beat(agents[0], replica_id=REPLICA_A)
        assert [r[:2] for r in staged(conn)] == [(agents[0], REPLICA_A)]  # committed on return
        assert await hb.disconnect(agents[1]) is True
        with pytest.raises(UnknownAgent):
            await hb.disconnect(uuid.uuid4())
        assert hb.stats.rows_written == 1 and hb.stats.beats_accepted == 1
    with pytest.raises(ClientClosed):
        await hb.beat(agents[0])
    assert agent_row(conn, agents[1])[1] is not None


@run_async
async def test_immediate_with_pool(dsn: str, conn: psycopg.Connection, agents: list[uuid.UUID]) -> None:
    async with AsyncConnectionPool(dsn, min_size=1, max_size=4, open=False) as pool:
        async with AsyncHeartbeatClient(pool=pool) as hb:
            await hb.beat(agents[0])
            assert [r[0] for r in staged(conn)] == [agents[0]]
            assert await hb.disconnect(agents[1]) is True
        assert agent_row(conn, agents[1])[1] is not None
        assert not pool.closed  # the pool belongs to the caller


@run_async
async def test_immediate_with_connection_joins_the_callers_transaction(
    dsn: str, conn: psycopg.Connection, agents: list[uuid.UUID]
) -> None:
    async with await psycopg.AsyncConnection.connect(dsn) as caller:
        hb = AsyncHeartbeatClient(connection=caller)
        async with caller.transaction():
            await hb.beat(agents[0])
            assert staged(conn) == []  # not yet committed: the block commits it
        assert [r[0] for r in staged(conn)] == [agents[0]]
        async with caller.transaction(force_rollback=True):
            await hb.beat(agents[1])
        assert [r[0] for r in staged(conn)] == [agents[0]]  # rolled back with the caller
        await hb.close()
        assert not caller.closed


@run_async
async def test_immediate_with_pool_and_with_connection(
    dsn: str, conn: psycopg.Connection, agents: list[uuid.UUID]
) -> None:
    async with AsyncConnectionPool(dsn, min_size=1, max_size=2, open=False) as pool:
        async with AsyncHeartbeatClient(pool=pool) as hb:
            await hb.beat(agents[0])
        async with AsyncHeartbeatClient(pool=pool, mode="buffered", write_interval="1h") as buffered:
            await buffered.beat(agents[0])  # same agent: written again by the final COPY
        assert buffered.stats.rows_written == 1 and not pool.closed
    async with await psycopg.AsyncConnection.connect(dsn) as caller:
        hb = AsyncHeartbeatClient(connection=caller)
        async with caller.transaction(force_rollback=True):
            await hb.beat(agents[1])  # rolled back with the caller's transaction
        async with caller.transaction():
            await hb.beat(agents[2])
        await hb.close()
    assert sorted(r[0] for r in staged(conn)) == sorted([agents[0], agents[0], agents[2]])


@run_async
async def test_bad_input_leaves_the_callers_transaction_usable(
    dsn: str, conn: psycopg.Connection, agents: list[uuid.UUID]
) -> None:
    async with await psycopg.AsyncConnection.connect(dsn) as caller:
        hb = AsyncHeartbeatClient(connection=caller)
        async with caller.transaction():
            await hb.beat(agents[0])
            with pytest.raises(InvalidAgentId):
                await hb.beat("nope")
            with pytest.raises(InvalidTimestamp):
                await hb.beat(agents[1], at=datetime.now(UTC) + timedelta(hours=1))
            await hb.beat(agents[2])
    assert sorted(r[0] for r in staged(conn)) == sorted([agents[0], agents[2]])


@run_async
async def test_buffered_mode_refuses_a_single_connection(dsn: str) -> None:
    async with await psycopg.AsyncConnection.connect(dsn) as caller:
        with pytest.raises(ConfigError, match=r"buffered.*single connection"):
            AsyncHeartbeatClient(mode="buffered", connection=caller)
        assert not caller.closed and not caller.broken  # refused without touching the caller's connection


@run_async
async def test_constructor_rejects_bad_options(dsn: str) -> None:
    with pytest.raises(ConfigError, match="mode"):
        AsyncHeartbeatClient(dsn, mode="sometimes")
    with pytest.raises(ConfigError, match=r"write_interval.*'soon'"):
        AsyncHeartbeatClient(dsn, mode="buffered", write_interval="soon")
    with pytest.raises(ConfigError, match="max_batch"):
        AsyncHeartbeatClient(dsn, mode="buffered", max_batch=0)
    async with await psycopg.AsyncConnection.connect(dsn) as c:
        with pytest.raises(ConfigError, match="only one of dsn, pool or connection"):
            AsyncHeartbeatClient(dsn, connection=c)
        assert not c.closed


@run_async
async def test_a_pool_of_the_other_flavour_is_refused_with_a_pointer_to_the_other_client(dsn: str) -> None:
    if True:  # ASYNC
        wrong_pool = psycopg_pool.ConnectionPool(dsn, open=False)
        expected = "pool: expected a psycopg_pool.AsyncConnectionPool, got ConnectionPool (use HeartbeatClient"
    else:
        wrong_pool = psycopg_pool.AsyncConnectionPool(dsn, open=False)
        expected = "pool: expected a psycopg_pool.ConnectionPool, got AsyncConnectionPool (use AsyncHeartbeatClient"
    with pytest.raises(ConfigError, match=re.escape(expected)):
        AsyncHeartbeatClient(pool=wrong_pool)  # type: ignore[arg-type]


# -- where the database comes from -----------------------------------------------------------


def clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """No PYBATCH_* and no PG* variables: nothing names a database."""
    for name in list(os.environ):
        if name.startswith(("PYBATCH_", "PG")):
            monkeypatch.delenv(name)


@run_async
async def test_dsn_comes_from_pybatch_dsn(
    dsn: str, conn: psycopg.Connection, agents: list[uuid.UUID], monkeypatch: pytest.MonkeyPatch
) -> None:
    clean_environment(monkeypatch)
    monkeypatch.setenv("PYBATCH_DSN", dsn)
    async with AsyncHeartbeatClient() as hb:
        await hb.beat(agents[0])
    assert [r[0] for r in staged(conn)] == [agents[0]]


@run_async
async def test_dsn_comes_from_pg_variables(
    dsn: str, conn: psycopg.Connection, agents: list[uuid.UUID], monkeypatch: pytest.MonkeyPatch
) -> None:
    clean_environment(monkeypatch)
    params = psycopg.conninfo.conninfo_to_dict(dsn)
    for key, variable in (("host", "PGHOST"), ("port", "PGPORT"), ("dbname", "PGDATABASE"), ("user", "PGUSER")):
        monkeypatch.setenv(variable, str(params[key]))
    async with AsyncHeartbeatClient() as hb:  # an empty conninfo: libpq reads PG*
        await hb.beat(agents[0])
    assert [r[0] for r in staged(conn)] == [agents[0]]


@pytest.mark.parametrize("mode", ["immediate", "buffered"])
@run_async
async def test_no_database_given_raises_and_starts_nothing(
    mode: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The library never falls back to the embedded cluster: no initdb, no server, no directory."""
    clean_environment(monkeypatch)
    home = tmp_path / "pybatch-home"
    monkeypatch.setenv("PYBATCH_HOME", str(home))
    with pytest.raises(ConfigError, match=r"no database given: pass dsn=, set PYBATCH_DSN or PG\* variables"):
        AsyncHeartbeatClient(mode=mode)
    assert not home.exists()
    started = []
    for process in psutil.process_iter(["cmdline"]):
        if any(str(home) in part for part in process.info["cmdline"] or ()):
            started.append(process)
    assert started == []


# -- disconnect ----------------------------------------------------------------------------


@pytest.mark.parametrize("mode", ["immediate", "buffered"])
@run_async
async def test_disconnect_is_direct_and_maps_errors(
    dsn: str, conn: psycopg.Connection, agents: list[uuid.UUID], mode: str
) -> None:
    async with AsyncHeartbeatClient(dsn, mode=mode) as hb:
        assert await hb.disconnect(agents[0]) is True
        assert agent_row(conn, agents[0])[1] is not None  # at once, no flush needed
        assert await hb.disconnect(agents[0], at=datetime(2000, 1, 1, tzinfo=UTC)) is False  # older: no change
        missing = uuid.uuid4()
        with pytest.raises(UnknownAgent, match=str(missing)) as info:
            await hb.disconnect(missing)
        assert isinstance(info.value, LookupError)
        with pytest.raises(InvalidAgentId, match="None"):
            await hb.disconnect(None)
        with pytest.raises(InvalidTimestamp, match="naive"):
            await hb.disconnect(agents[1], at=datetime(2025, 1, 1))


@run_async
async def test_server_rejection_beyond_tolerance_is_typed(
    dsn: str, conn: psycopg.Connection, agents: list[uuid.UUID]
) -> None:
    async with AsyncHeartbeatClient(dsn) as hb:
        await hb.beat(agents[0])  # first connection reads future_tolerance (5 s)
        assert hb.future_tolerance == 5.0
        # The server shrinks its tolerance after the client read it: the server's 22023 is mapped.
        conn.execute("UPDATE pybatch.settings SET future_tolerance = '0'")
        with pytest.raises(InvalidTimestamp, match="future_tolerance"):
            await hb.disconnect(agents[0], at=datetime.now(UTC) + timedelta(seconds=3))


@run_async
async def test_future_tolerance_is_read_from_settings(
    dsn: str, conn: psycopg.Connection, agents: list[uuid.UUID]
) -> None:
    conn.execute("UPDATE pybatch.settings SET future_tolerance = '1 minute'")
    async with AsyncHeartbeatClient(dsn) as hb:
        await hb.beat(agents[0], at=datetime.now(UTC) + timedelta(seconds=30))  # allowed by 1 minute
        assert hb.future_tolerance == 60.0
        with pytest.raises(InvalidTimestamp, match="ahead"):
            await hb.beat(agents[0], at=datetime.now(UTC) + timedelta(minutes=5))
    assert len(staged(conn)) == 1


@run_async
async def test_future_tolerance_falls_back_to_five_seconds(
    dsn: str, conn: psycopg.Connection, agents: list[uuid.UUID], caplog: pytest.LogCaptureFixture
) -> None:
    conn.execute("CREATE ROLE hb_writer LOGIN")
    conn.execute("GRANT USAGE ON SCHEMA pybatch TO hb_writer")
    conn.execute("GRANT INSERT ON pybatch.heartbeats TO hb_writer")  # but no SELECT on settings
    async with AsyncHeartbeatClient(dsn + " user=hb_writer") as hb:
        await hb.beat(agents[0], at=datetime.now(UTC) + timedelta(seconds=3))
        assert hb.future_tolerance == 5.0
        with pytest.raises(InvalidTimestamp):
            await hb.beat(agents[0], at=datetime.now(UTC) + timedelta(seconds=30))
    assert any("future_tolerance" in r.getMessage() for r in caplog.records)
    assert len(staged(conn)) == 1
    conn.execute("DROP OWNED BY hb_writer")
    conn.execute("DROP ROLE hb_writer")


# -- buffered mode -------------------------------------------------------------------------


@run_async
async def test_buffered_beat_writes_latest_per_agent_with_client_clock(
    dsn: str, conn: psycopg.Connection, agents: list[uuid.UUID]
) -> None:
    a, b, _ = agents
    t0 = datetime(2025, 6, 1, tzinfo=UTC)
    async with AsyncHeartbeatClient(dsn, mode="buffered", write_interval="1h") as hb:
        await hb.beat(a, at=t0, replica_id=REPLICA_B)
        await hb.beat(a, at=t0 + timedelta(seconds=2), replica_id=None)
        await hb.beat(a, at=t0 + timedelta(seconds=2), replica_id=REPLICA_A)  # tie: greater replica wins over NULL
        await hb.beat(a, at=t0 + timedelta(seconds=1), replica_id=REPLICA_B)  # older: ignored
        before = datetime.now(UTC)
        await hb.beat(b)
        after = datetime.now(UTC)
        assert staged(conn) == []  # nothing written before the interval
        assert hb.stats.buffer_size == 2 and hb.stats.beats_accepted == 5
        assert await hb.flush_buffer() == 2
        stats = hb.stats
    rows = {r[0]: r for r in staged(conn)}
    assert rows[a] == (a, REPLICA_A, t0 + timedelta(seconds=2))
    assert before <= rows[b][2] <= after  # client clock at beat() time
    assert stats.rows_written == 2 and stats.buffer_size == 0 and stats.last_write_at is not None


@run_async
async def test_buffered_keeps_latest_and_writes_on_close(
    dsn: str, conn: psycopg.Connection, agents: list[uuid.UUID]
) -> None:
    a, b, _ = agents
    t0 = datetime.now(UTC) - timedelta(minutes=1)
    hb = AsyncHeartbeatClient(dsn, mode="buffered", write_interval="1h")
    await hb.beat(a, at=t0, replica_id=REPLICA_B)
    await hb.beat(a, at=t0 + timedelta(seconds=1), replica_id=REPLICA_A)
    await hb.beat(a, at=t0 + timedelta(seconds=1), replica_id=None)  # tie: NULL loses
    await hb.beat(b)
    await asyncio.sleep(0.2)
    assert staged(conn) == [] and hb.stats.buffer_size == 2
    await hb.close()
    assert hb.stats.rows_written == 2
    with pytest.raises(ClientClosed):
        await hb.flush_buffer()
    rows = {r[0]: r for r in staged(conn)}
    assert rows[a] == (a, REPLICA_A, t0 + timedelta(seconds=1)) and rows[b][1] is None


@run_async
async def test_buffered_writes_every_interval(dsn: str, conn: psycopg.Connection, agents: list[uuid.UUID]) -> None:
    async with AsyncHeartbeatClient(dsn, mode="buffered", write_interval="200ms") as hb:
        await hb.beat(agents[0])
        # The row is visible in staging once the COPY commits, a moment before the client counts
        # it: wait for the count, which comes after the commit, then check both.
        await wait_until(lambda: hb.stats.rows_written >= 1)
        assert [r[0] for r in staged(conn)] == [agents[0]]
        assert hb.stats.rows_written == 1


@run_async
async def test_buffered_writes_when_max_batch_agents_wait(dsn: str, conn: psycopg.Connection) -> None:
    many = make_agents(conn, 10)
    async with AsyncHeartbeatClient(dsn, mode="buffered", write_interval="1h", max_batch=10) as hb:
        for agent in many[:9]:
            await hb.beat(agent)
        await asyncio.sleep(0.3)
        assert staged(conn) == []  # 9 < max_batch: still waiting for the hour
        await hb.beat(many[9])
        await wait_until(lambda: len(staged(conn)) >= 10)
        assert sorted(r[0] for r in staged(conn)) == sorted(many)


@run_async
async def test_buffered_writes_on_interval_and_at_max_batch(dsn: str, conn: psycopg.Connection) -> None:
    many = make_agents(conn, 5)
    async with AsyncHeartbeatClient(dsn, mode="buffered", write_interval="1h", max_batch=4) as hb:
        for agent in many[:3]:
            await hb.beat(agent)
        await asyncio.sleep(0.3)
        assert staged(conn) == []
        await hb.beat(many[3])  # the 4th waiting agent: write now
        await wait_until(lambda: len(staged(conn)) >= 4)
        assert len(staged(conn)) == 4
    async with AsyncHeartbeatClient(dsn, mode="buffered", write_interval="100ms") as hb:
        await hb.beat(many[4])
        await wait_until(lambda: len(staged(conn)) >= 5)
        assert len(staged(conn)) == 5


@run_async
async def test_close_does_a_final_write_and_later_calls_raise(
    dsn: str, conn: psycopg.Connection, agents: list[uuid.UUID]
) -> None:
    hb = AsyncHeartbeatClient(dsn, mode="buffered", write_interval="1h")
    await hb.beat(agents[0])
    await hb.close()
    assert [r[0] for r in staged(conn)] == [agents[0]]
    await hb.close()  # idempotent
    with pytest.raises(ClientClosed):
        await hb.beat(agents[1])
    with pytest.raises(ClientClosed):
        await hb.disconnect(agents[1])
    with pytest.raises(ClientClosed):
        await hb.flush_buffer()
    assert len(staged(conn)) == 1


@run_async
async def test_immediate_calls_after_close_raise(dsn: str, agents: list[uuid.UUID]) -> None:
    async with AsyncHeartbeatClient(dsn) as hb:
        await hb.beat(agents[0])
    with pytest.raises(ClientClosed):
        await hb.beat(agents[0])


@run_async
async def test_buffered_with_pool(dsn: str, conn: psycopg.Connection, agents: list[uuid.UUID]) -> None:
    async with AsyncConnectionPool(dsn, min_size=1, max_size=4, open=False) as pool:
        async with AsyncHeartbeatClient(pool=pool, mode="buffered", write_interval="1h") as hb:
            for agent in agents:
                await hb.beat(agent)
        assert sorted(r[0] for r in staged(conn)) == sorted(agents)


@pytest.mark.parametrize("mode", ["immediate", "buffered"])
@run_async
async def test_bad_input_never_corrupts_the_buffer_or_loses_good_beats(
    dsn: str, conn: psycopg.Connection, agents: list[uuid.UUID], mode: str
) -> None:
    a, b, c = agents
    t0 = datetime.now(UTC) - timedelta(minutes=1)
    async with AsyncHeartbeatClient(dsn, mode=mode, write_interval="1h") as hb:
        await hb.beat(a, at=t0, replica_id=REPLICA_A)
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
                await hb.beat(agent, **kwargs)  # type: ignore[arg-type]  # deliberately bad arguments
            assert isinstance(info.value, ValueError)
        await hb.beat(c, at=t0 + timedelta(seconds=1))
        await hb.flush_buffer()
        assert hb.stats.beats_accepted == 2
    assert staged(conn) == sorted([(a, REPLICA_A, t0), (c, None, t0 + timedelta(seconds=1))])


@pytest.mark.parametrize("mode", ["immediate", "buffered"])
@run_async
async def test_bad_input_never_corrupts_the_buffer(
    dsn: str, conn: psycopg.Connection, agents: list[uuid.UUID], mode: str
) -> None:
    a, b, c = agents
    t0 = datetime.now(UTC) - timedelta(minutes=1)
    async with AsyncHeartbeatClient(dsn, mode=mode, write_interval="1h") as hb:
        await hb.beat(a, at=t0)
        with pytest.raises(InvalidAgentId, match="None"):
            await hb.beat(None)
        with pytest.raises(InvalidAgentId, match="'zz'"):
            await hb.beat("zz")
        with pytest.raises(InvalidHeartbeat, match="'r'"):
            await hb.beat(b, replica_id="r")
        with pytest.raises(InvalidTimestamp, match="naive"):
            await hb.beat(b, at=datetime(2025, 1, 1))
        with pytest.raises(InvalidTimestamp, match="future_tolerance"):
            await hb.beat(a, at=datetime.now(UTC) + timedelta(hours=1))
        with pytest.raises(InvalidTimestamp, match="naive"):
            await hb.disconnect(b, at=datetime(2025, 1, 1))
        await hb.beat(c, at=t0)
        assert hb.stats.beats_accepted == 2
    assert sorted(staged(conn)) == sorted([(a, None, t0), (c, None, t0)])


@run_async
async def test_many_concurrent_callers_beat_at_once(dsn: str, conn: psycopg.Connection) -> None:
    """Threads for the sync client, tasks for the async one."""
    many = make_agents(conn, 200)
    workers, rounds = 8, 50
    base = datetime(2025, 1, 1, tzinfo=UTC)
    async with AsyncHeartbeatClient(dsn, mode="buffered", write_interval="50ms", max_batch=64) as hb:

        async def worker(n: int) -> None:
            for r in range(rounds):
                for agent in many[n::workers]:
                    await hb.beat(agent, at=base + timedelta(seconds=r))
                if True:  # ASYNC
                    await asyncio.sleep(0)  # let the other tasks and the writer run

        if True:  # ASYNC
            await asyncio.gather(*(worker(n) for n in range(workers)))
        else:
            threads = [threading.Thread(target=worker, args=(n,)) for n in range(workers)]
            for t in threads:
                t.start()
            for t in threads:
                t.join()
    stats = hb.stats
    assert stats.beats_accepted == len(many) * rounds and stats.buffer_size == 0 and stats.write_failures == 0
    assert stats.rows_written == len(staged(conn))
    latest = conn.execute("SELECT agent_id, max(beat_at) FROM pybatch.heartbeats GROUP BY agent_id").fetchall()
    assert dict(latest) == dict.fromkeys(many, base + timedelta(seconds=rounds - 1))
    result = flush(conn)
    assert result.ok and result.agents_updated == len(many)
    last = conn.execute("SELECT DISTINCT last_connected_at FROM public.workspace_agents").fetchall()
    assert last == [(base + timedelta(seconds=rounds - 1),)]


@run_async
async def test_flushed_state_follows_the_beats_and_respects_disconnect(
    dsn: str, conn: psycopg.Connection, agents: list[uuid.UUID]
) -> None:
    a = agents[0]
    async with AsyncHeartbeatClient(dsn, mode="buffered", write_interval="1h") as hb:
        await hb.beat(a, replica_id=REPLICA_A)
        await hb.disconnect(a)  # later than the buffered beat on this client's clock
        await hb.flush_buffer()
    flush(conn)
    last, disconnected, replica = agent_row(conn, a)
    assert last is not None and disconnected is not None and disconnected >= last
    assert replica == REPLICA_A
